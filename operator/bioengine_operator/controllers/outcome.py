"""What one reconcile produced, and how it is written back: status, Events, retry.

A reconciler is ``(body, context) -> Outcome``: it reads and applies children itself but
never touches the owner's status. This module writes the status only when it changed,
posts an Event when the phase changes (and any the reconciler asked for), and turns a
temporary problem into a kopf retry. The same path serves kopf's change handlers, the
periodic resync and child-object events, under one lock per object.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel, ValidationError

from bioengine_operator import conditions
from bioengine_operator.controllers import kube

logger = logging.getLogger(__name__)

BAD_PHASES = {"Degraded", "Stuck", "Failed"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Operator-wide settings (from the CLI/environment, see ``bioengine_operator.cli``)."""

    image: str = "ghcr.io/bioimage-io/bioengine-operator:0.1.0"
    resync_seconds: float = 30.0
    hypha_workspace: str | None = None


@dataclasses.dataclass
class Context:
    settings: Settings
    now: datetime.datetime

    @property
    def now_text(self) -> str:
        return self.now.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class Outcome:
    status: dict[str, Any]
    events: list[tuple[str, str, str]] = dataclasses.field(
        default_factory=list
    )  # type, reason, msg
    retry_in: float | None = None
    retry_reason: str = ""

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self.events.append(("Warning" if warning else "Normal", reason, message))


Reconciler = Callable[[dict[str, Any], Context], Outcome]
SpecT = TypeVar("SpecT", bound=BaseModel)
TypedReconciler = Callable[[dict[str, Any], Context, SpecT], Outcome]

_locks: dict[str, threading.Lock] = {}
# The phase each object was last reconciled into. Several paths (a change handler and a
# child event) may reconcile one object from equally old bodies; comparing against this
# instead of the body keeps one transition from being announced twice.
_last_phase: dict[str, str] = {}
_locks_guard = threading.Lock()


def _lock(uid: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(uid, threading.Lock())


def service_id(body: dict[str, Any], settings: Settings) -> str:
    service = body.get("spec", {}).get("service") or {}
    workspace = service.get("workspace") or settings.hypha_workspace
    sid = service.get("id") or body["metadata"]["name"]
    return f"{workspace}/{sid}" if workspace else sid


def common_status(
    body: dict[str, Any],
    ctx: Context,
    *,
    ready: bool,
    reason: str,
    message: str,
    phase: str,
    summary: str,
    extra_conditions: list[tuple[str, bool | str, str, str]] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    """Status fields every kind has, with the Ready condition and any kind-specific ones."""
    generation = body["metadata"].get("generation")
    conds = list((body.get("status") or {}).get("conditions") or [])
    for type_, value, why, text in (("Ready", ready, reason, message), *extra_conditions):
        conds = conditions.set_condition(
            conds, type_, value, why, text, now=ctx.now_text, generation=generation
        )
    return {
        "phase": phase,
        "ready": summary,
        "observedGeneration": generation,
        "serviceId": service_id(body, ctx.settings),
        "conditions": conds,
    }


def invalid_spec(body: dict[str, Any], ctx: Context, error: Exception) -> Outcome:
    """A spec the API server accepted but the operator cannot use: say so, do not retry."""
    status = common_status(
        body,
        ctx,
        ready=False,
        reason="InvalidSpec",
        message=f"invalid spec: {error}",
        phase="Failed",
        summary="False",
    )
    return Outcome(status)


def with_spec(model: type[SpecT]) -> Callable[[TypedReconciler[SpecT]], Reconciler]:
    """Parse ``body["spec"]`` with ``model`` before calling the reconciler; a spec the API
    server let through but the model refuses becomes an InvalidSpec status, not a crash."""

    def decorate(reconcile: TypedReconciler[SpecT]) -> Reconciler:
        @functools.wraps(reconcile)
        def typed(body: dict[str, Any], ctx: Context) -> Outcome:
            try:
                spec = model.model_validate(body["spec"])
            except ValidationError as err:
                return invalid_spec(body, ctx, err)
            return reconcile(body, ctx, spec)

        return typed

    return decorate


def run(
    reconciler: Reconciler,
    body: dict[str, Any],
    settings: Settings,
    *,
    patch: kopf.Patch | None = None,
) -> Outcome:
    """Reconcile ``body`` and write back the outcome (via ``patch`` inside kopf handlers)."""
    meta = body["metadata"]
    with _lock(meta["uid"]):
        ctx = Context(settings, datetime.datetime.now(datetime.UTC))
        outcome = reconciler(body, ctx)
        old = body.get("status") or {}
        changed = {k: v for k, v in outcome.status.items() if old.get(k) != v}
        if changed:
            if patch is not None:
                patch.status.update(changed)
            else:
                kube.patch_status(
                    body["apiVersion"], body["kind"], meta["namespace"], meta["name"], changed
                )
        new_phase = outcome.status.get("phase")
        old_phase = _last_phase.get(meta["uid"], old.get("phase"))
        if new_phase:
            _last_phase[meta["uid"]] = new_phase
        if new_phase and new_phase != old_phase:
            ready = conditions.find(outcome.status.get("conditions", []), "Ready") or {}
            outcome.event(
                ready.get("reason", new_phase),
                f"phase {old_phase or 'None'} -> {new_phase}: {ready.get('message', '')}",
                warning=new_phase in BAD_PHASES,
            )
        for type_, reason, message in outcome.events:
            kopf.event(body, type=type_, reason=reason, message=message)
    if outcome.retry_in is not None and patch is not None:
        raise kopf.TemporaryError(outcome.retry_reason, delay=outcome.retry_in)
    return outcome
