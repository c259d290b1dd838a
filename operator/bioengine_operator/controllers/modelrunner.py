"""Reconcile a ModelRunner: observe both colors, plan the next blue/green step, apply it.

observe (the model ConfigMap, both Deployments, the runner's pods) → :func:`step` (pure:
revision, plan, the whole desired set) → apply the set → status.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from bioengine_operator import bluegreen, kube
from bioengine_operator.api.modelrunner import ModelRunnerSpec
from bioengine_operator.api.status import ColorStatus
from bioengine_operator.builders import meta, triton
from bioengine_operator.controllers import pods
from bioengine_operator.controllers.outcome import Context, Outcome, common_status, with_spec

Object = dict[str, Any]
TERMINATED = ("Failed", "Succeeded")


def _pod_ready(pod: Object) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def observe(deployment: Object | None, pods: list[Object]) -> bluegreen.Observed:
    """A color from its Deployment and its pods (the pods of this color only).

    Pods are counted, not the Deployment's status: right after a template change the status
    still reports the old pods Ready, and they are about to go. Pods that have terminated
    (evicted, or stopped by a node shutdown: phase Failed or Succeeded) wait for garbage
    collection but hold nothing and are replaced, so they do not count.
    """
    if deployment is None:
        return bluegreen.ABSENT
    pods = [p for p in pods if (p.get("status") or {}).get("phase") not in TERMINATED]
    revision = deployment["metadata"].get("labels", {}).get(triton.REVISION_LABEL)
    wanted = deployment["spec"].get("replicas", 1)
    current = [
        p for p in pods if p["metadata"].get("labels", {}).get(triton.REVISION_LABEL) == revision
    ]
    ready = sum(_pod_ready(p) for p in current)
    settled = len(pods) == len(current) == ready == wanted
    return bluegreen.Observed(True, revision, ready, settled, rolling(deployment))


def rolling(deployment: Object) -> bool:
    """Whether the Deployment controller is still rolling out the Deployment's template, as
    ``kubectl rollout status`` tells: it has not seen the latest template yet, pods of the
    template are missing or old ones remain (with Recreate: while the old pods terminate,
    before the new ReplicaSet exists, its Progressing condition still says the previous
    rollout's "NewReplicaSetAvailable"), or the new pods are not all available yet."""
    status = deployment.get("status") or {}
    if status.get("observedGeneration", 0) < deployment["metadata"].get("generation", 0):
        return True
    updated = status.get("updatedReplicas", 0)
    if updated < deployment["spec"].get("replicas", 1) or status.get("replicas", 0) > updated:
        return True
    progressing = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), None
    )
    return progressing is None or progressing.get("reason") != "NewReplicaSetAvailable"


@dataclasses.dataclass(frozen=True)
class Step:
    revision: str
    plan: bluegreen.Plan
    observed: dict[bluegreen.Color, bluegreen.Observed]
    children: list[Object]


def step(
    owner: meta.Owner,
    spec: ModelRunnerSpec,
    inputs: triton.Inputs,
    deployments: Mapping[bluegreen.Color, Object | None],
    pods: list[Object],
) -> Step:
    """What to apply now, from what was observed (no I/O)."""
    rev = triton.revision(owner, spec, inputs)
    observed = {
        color: observe(
            deployments[color],
            [p for p in pods if p["metadata"].get("labels", {}).get(triton.COLOR_LABEL) == color],
        )
        for color in bluegreen.COLORS
    }
    plan = bluegreen.plan(rev, observed)
    moving = tuple(c for c, target in plan.targets.items() if target is not None)
    return Step(rev, plan, observed, triton.children(owner, spec, inputs, rev, moving))


def repository_inputs(
    owner: meta.Owner, spec: ModelRunnerSpec, ctx: Context
) -> triton.Inputs | None:
    """What the model repository adds to the pods; None when its ConfigMap is missing."""
    if spec.model_repository.config_map is None:
        return triton.Inputs(ctx.settings.triton_image)
    config_map = kube.get("v1", "ConfigMap", owner.namespace, spec.model_repository.config_map.name)
    if config_map is None:
        return None
    content = {
        "data": config_map.get("data") or {},
        "binaryData": config_map.get("binaryData") or {},
    }
    keys = tuple(sorted({**content["data"], **content["binaryData"]}))
    return triton.Inputs(ctx.settings.triton_image, keys, meta.digest(content))


@with_spec(ModelRunnerSpec)
def reconcile(body: Object, ctx: Context, spec: ModelRunnerSpec) -> Outcome:
    owner = meta.Owner.from_body(body)
    inputs = repository_inputs(owner, spec, ctx)
    if inputs is None:
        name = spec.model_repository.config_map.name  # type: ignore[union-attr]
        message = f"ConfigMap {name!r} with the model repository does not exist"
        return Outcome(
            common_status(
                body,
                ctx,
                ready=False,
                reason="RepositoryNotFound",
                message=message,
                phase="Pending",
                summary="0/0",
            )
        )

    names = {c: triton.deployment_name(owner, c) for c in bluegreen.COLORS}
    live = {c: kube.get("apps/v1", "Deployment", owner.namespace, n) for c, n in names.items()}
    listed = kube.list_("v1", "Pod", owner.namespace, triton.selector(owner), recent=True)
    now = step(owner, spec, inputs, live, listed)
    outcome = Outcome({})
    for color, target in now.plan.targets.items():
        if (
            target is not None
            and now.observed[color].exists
            and now.observed[color].revision != target
        ):
            outcome.event("UpdatingColor", f"rolling {color} to revision {target}")
    known = {("Deployment", names[c]): live[c] for c in bluegreen.COLORS}
    kube.apply_owned(now.children, owner.uid, known)

    ready = sum(o.ready for o in now.observed.values())
    outcome.status = common_status(
        body,
        ctx,
        ready=now.plan.phase == "Ready",
        reason=now.plan.reason,
        message=now.plan.message
        if now.plan.phase == "Ready"
        else pods.explained(now.plan.message, listed),
        phase=now.plan.phase,
        summary=f"{ready}/{2 * spec.replicas}",
        extra_conditions=(
            ("UpdateInProgress", now.plan.updating is not None, now.plan.reason, now.plan.message),
        ),
    )
    colors: dict[str, Any] = {
        color: ColorStatus(
            revision=now.observed[color].revision,
            replicas=(live[color] or {}).get("spec", {}).get("replicas", 0),
            ready_replicas=now.observed[color].ready,
            endpoint=triton.grpc_endpoint(owner, color),
        ).model_dump(by_alias=True, mode="json")  # None included: a merge patch clears it
        for color in bluegreen.COLORS
    }
    outcome.status.update(
        {
            "revision": now.revision,
            "updatingColor": now.plan.updating,
            "models": list(spec.models),
            "endpoint": triton.grpc_endpoint(owner),
            **colors,
        }
    )
    return outcome
