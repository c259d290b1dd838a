"""What one reconcile produced, and how it is written back: status and Events.

A reconciler is ``(body, context) -> Outcome``: it reads and applies children itself but
never touches the owner's status. :func:`run` writes the status only when it changed,
posts an Event when the phase changes (and any the reconciler asked for), and turns a
child name taken by another object into a ``NameConflict`` status, and a child the API
server refuses into an ``ApplyFailed`` one (with the server's message). When to reconcile
again (retries, resyncs, checks due later) is :mod:`bioengine_operator.controllers.loop`'s
business.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from bioengine_operator import conditions, kube, logs
from bioengine_operator.api.app import DEFAULT_RAY_IMAGE
from bioengine_operator.api.modelrunner import DEFAULT_TRITON_IMAGE
from bioengine_operator.api.status import qualified_service_id

logger = logging.getLogger(__name__)

BAD_PHASES = {"Degraded", "Stuck", "Failed"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Operator-wide settings (from the CLI/environment, see ``bioengine_operator.cli``)."""

    image: str = "ghcr.io/bioimage-io/bioengine-operator:0.1.0"
    # The Triton image of ModelRunners that name none: an operator upgrade that changes it
    # rolls those runners, one color at a time.
    triton_image: str = DEFAULT_TRITON_IMAGE
    # The Ray image of BioEngineApps that name none (a new one upgrades their Ray clusters).
    ray_image: str = DEFAULT_RAY_IMAGE
    resync_seconds: float = 30.0
    hypha_workspace: str | None = None
    # Node directories hostPath datasets may serve (and below): none unless a cluster admin
    # allows them, since a hostPath can expose anything on the node.
    host_path_prefixes: tuple[str, ...] = ()
    # PEM public key (or certificate) of the bridge's token signing key, given to every
    # dataset server to check the tokens the bridge mints; None: datasets open to "*" only.
    token_public_key: str | None = None
    # GPU memory of one GPU in the cluster's Ray worker pools, in MiB: how an app's
    # @bioengine.app(gpu_memory_mb=...) becomes a share of a GPU; 0 gives such apps whole GPUs.
    gpu_memory_mb: int = 0


@dataclasses.dataclass
class Context:
    settings: Settings
    now: datetime.datetime

    @property
    def now_text(self) -> str:
        return conditions.timestamp(self.now)


@dataclasses.dataclass
class Outcome:
    status: dict[str, Any]
    events: list[tuple[str, str, str]] = dataclasses.field(
        default_factory=list
    )  # type, reason, msg
    # Reconcile again after this many seconds (a check that is due then), besides the resync.
    requeue_in: float | None = None

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self.events.append(("Warning" if warning else "Normal", reason, message))


Reconciler = Callable[[dict[str, Any], Context], Outcome]
SpecT = TypeVar("SpecT", bound=BaseModel)
TypedReconciler = Callable[[dict[str, Any], Context, SpecT], Outcome]

# The phase each object was last reconciled into (by uid). A reconcile may start from a
# body older than the status it wrote last time; comparing against this instead of the
# body keeps one transition from being announced twice.
_last_phase: dict[str, str] = {}


def forget(uid: str) -> None:
    """The object is gone: drop what was remembered about it."""
    _last_phase.pop(uid, None)


def service_id(body: dict[str, Any], settings: Settings) -> str:
    return qualified_service_id(body, settings.hypha_workspace or None)


def common_status(
    body: dict[str, Any],
    ctx: Context,
    *,
    ready: bool,
    reason: str,
    message: str,
    phase: str,
    summary: str,
    extra_conditions: tuple[tuple[str, bool | str, str, str], ...] = (),
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


def failed(body: dict[str, Any], ctx: Context, reason: str, message: str) -> Outcome:
    """The operator cannot act on this object as it stands: say why; nothing to retry."""
    status = common_status(
        body, ctx, ready=False, reason=reason, message=message, phase="Failed", summary="False"
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
                return failed(body, ctx, "InvalidSpec", f"invalid spec: {err}")
            return reconcile(body, ctx, spec)

        return typed

    return decorate


def run(
    reconciler: Reconciler, body: dict[str, Any], settings: Settings
) -> tuple[Outcome, dict[str, Any] | None]:
    """Reconcile ``body`` and write back the outcome; returns it and the object as written
    (None when the status did not change)."""
    meta = body["metadata"]
    ctx = Context(settings, datetime.datetime.now(datetime.UTC))
    try:
        outcome = reconciler(body, ctx)
    except kube.NameConflict as err:
        outcome = failed(body, ctx, "NameConflict", f"{err}; rename this {body['kind']}")
    except kube.Refused as err:
        # Not retried: the next change of the spec (or the resync) tries again.
        outcome = failed(body, ctx, "ApplyFailed", f"{err}; change the spec")
    old = body.get("status") or {}
    changed = {k: v for k, v in outcome.status.items() if old.get(k) != v}
    written = None
    if changed:
        written = kube.patch_status(
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
        try:
            kube.post_event(body, type_, reason, message)
        except Exception as err:  # an Event is best effort; the status already says it
            logger.warning("cannot post Event %s: %s", reason, err, extra=logs.object_ref(body))
    return outcome, written
