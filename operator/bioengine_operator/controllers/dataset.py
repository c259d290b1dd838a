"""Reconcile a BioEngineDataset: its ConfigMap, dataset server and Service."""

from __future__ import annotations

from typing import Any

from bioengine_operator import kube
from bioengine_operator.api.dataset import BioEngineDatasetSpec
from bioengine_operator.builders import dataset as builder
from bioengine_operator.builders import meta
from bioengine_operator.controllers import pods
from bioengine_operator.controllers.outcome import (
    Context,
    Outcome,
    common_status,
    failed,
    with_spec,
)


@with_spec(BioEngineDatasetSpec)
def reconcile(body: dict[str, Any], ctx: Context, spec: BioEngineDatasetSpec) -> Outcome:
    owner = meta.Owner.from_body(body)
    settings = ctx.settings
    try:
        children = builder.children(
            owner, spec, settings.image, settings.host_path_prefixes, settings.token_public_key
        )
    except builder.UnsupportedSource as err:
        return failed(body, ctx, err.reason, str(err))

    name = builder.server_name(owner)
    live = kube.get("apps/v1", "Deployment", owner.namespace, name)
    kube.apply_owned(children, owner.uid, {("Deployment", name): live})

    ready_replicas = ((live or {}).get("status") or {}).get("readyReplicas", 0)
    ready = ready_replicas >= spec.replicas
    phase = "Ready" if ready else ("Degraded" if ready_replicas else "Deploying")
    message = f"{ready_replicas}/{spec.replicas} dataset server pods ready"
    if not ready:
        message = pods.explained(
            message, kube.list_("v1", "Pod", owner.namespace, builder.selector(owner), recent=True)
        )
    outcome = Outcome(
        common_status(
            body,
            ctx,
            ready=ready,
            reason="ServerReady" if ready else "WaitingForServer",
            message=message,
            phase=phase,
            summary=f"{ready_replicas}/{spec.replicas}",
        )
    )
    outcome.status.update({"endpoint": builder.endpoint(owner), "readyReplicas": ready_replicas})
    return outcome
