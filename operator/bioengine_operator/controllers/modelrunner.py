"""Reconcile a ModelRunner: observe both colors, plan the next blue/green step, apply it."""

from __future__ import annotations

from typing import Any

from bioengine_operator import bluegreen
from bioengine_operator.api.modelrunner import ModelRunnerSpec
from bioengine_operator.builders import meta, triton
from bioengine_operator.controllers import kube
from bioengine_operator.controllers.outcome import (
    Context,
    Outcome,
    common_status,
    with_spec,
)


def observe(deployment: dict[str, Any] | None) -> bluegreen.Observed:
    """A color is settled when its controller saw the latest template and every pod of it,
    and only of it, is Ready."""
    if deployment is None:
        return bluegreen.ABSENT
    want = deployment["spec"].get("replicas", 1)
    status = deployment.get("status") or {}
    ready = status.get("readyReplicas", 0)
    settled = (
        status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
        and status.get("updatedReplicas", 0) == want
        and status.get("replicas", 0) == want
        and ready == want
    )
    revision = deployment["metadata"].get("labels", {}).get(triton.REVISION_LABEL)
    return bluegreen.Observed(True, revision, settled, ready)


@with_spec(ModelRunnerSpec)
def reconcile(body: dict[str, Any], ctx: Context, spec: ModelRunnerSpec) -> Outcome:
    owner = meta.Owner.from_body(body)

    keys: tuple[str, ...] = ()
    if spec.model_repository.config_map is not None:
        name = spec.model_repository.config_map.name
        config_map = kube.get("v1", "ConfigMap", owner.namespace, name)
        if config_map is None:
            message = f"ConfigMap {name!r} with the model repository does not exist"
            outcome = Outcome(
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
            outcome.retry_in, outcome.retry_reason = ctx.settings.resync_seconds, message
            return outcome
        keys = tuple(sorted((config_map.get("data") or {}) | (config_map.get("binaryData") or {})))

    desired = triton.revision(spec)
    live = {
        c: kube.get("apps/v1", "Deployment", owner.namespace, triton.deployment_name(owner, c))
        for c in bluegreen.COLORS
    }
    observed = {color: observe(dep) for color, dep in live.items()}
    step = bluegreen.plan(desired, observed)

    outcome = Outcome({})
    for color, target in step.targets.items():
        if target is None:
            continue  # this color keeps serving its old revision for now
        if observed[color].exists and observed[color].revision != target:
            outcome.event("UpdatingColor", f"rolling {color} to revision {target}")
        kube.apply(triton.deployment(owner, spec, color, keys))
    kube.apply(triton.service(owner))
    for color in bluegreen.COLORS:
        kube.apply(triton.color_service(owner, color))
    kube.apply(triton.pod_disruption_budget(owner, spec))

    total = 2 * spec.replicas
    ready = sum(o.ready_replicas for o in observed.values())
    outcome.status = common_status(
        body,
        ctx,
        ready=step.phase == "Ready",
        reason=step.reason,
        message=step.message,
        phase=step.phase,
        summary=f"{ready}/{total}",
        extra_conditions=[
            ("UpdateInProgress", step.updating is not None, step.reason, step.message)
        ],
    )
    outcome.status.update(
        {
            "revision": desired,
            "updatingColor": step.updating,
            "models": list(spec.models),
            "endpoint": triton.grpc_endpoint(owner),
            **{
                color: {
                    "revision": observed[color].revision,
                    "replicas": (live[color] or {}).get("spec", {}).get("replicas", 0),
                    "readyReplicas": observed[color].ready_replicas,
                }
                for color in bluegreen.COLORS
            },
        }
    )
    return outcome
