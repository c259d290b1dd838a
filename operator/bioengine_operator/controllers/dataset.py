"""Reconcile a BioEngineDataset: signing key, manifest, dataset server and its Service."""

from __future__ import annotations

import secrets
from typing import Any

from bioengine_operator.api.dataset import BioEngineDatasetSpec
from bioengine_operator.builders import dataset as builder
from bioengine_operator.builders import meta
from bioengine_operator.controllers import kube
from bioengine_operator.controllers.outcome import (
    Context,
    Outcome,
    common_status,
    invalid_spec,
    with_spec,
)


@with_spec(BioEngineDatasetSpec)
def reconcile(body: dict[str, Any], ctx: Context, spec: BioEngineDatasetSpec) -> Outcome:
    owner = meta.Owner.from_body(body)
    try:
        server = builder.deployment(owner, spec, ctx.settings.image)
    except builder.UnsupportedSource as err:
        return invalid_spec(body, ctx, err)

    # The key is made once and never rotated by a reconcile: tokens already handed out
    # stay valid until they expire. Delete the Secret to rotate it.
    if kube.create_if_missing(builder.key_secret(owner, secrets.token_hex(32))):
        outcome_events = [("Normal", "SigningKeyCreated", "created the token signing key")]
    else:
        outcome_events = []
    kube.apply(builder.manifest_config_map(owner, spec))
    kube.apply(server)
    kube.apply(builder.service(owner))

    live = kube.get("apps/v1", "Deployment", owner.namespace, builder.server_name(owner)) or {}
    ready_replicas = (live.get("status") or {}).get("readyReplicas", 0)
    ready = ready_replicas >= spec.replicas
    phase = "Ready" if ready else ("Degraded" if ready_replicas else "Deploying")
    outcome = Outcome(
        common_status(
            body,
            ctx,
            ready=ready,
            reason="ServerReady" if ready else "WaitingForServer",
            message=f"{ready_replicas}/{spec.replicas} dataset server pods ready",
            phase=phase,
            summary=f"{ready_replicas}/{spec.replicas}",
        ),
        events=outcome_events,
    )
    outcome.status.update({"endpoint": builder.endpoint(owner), "readyReplicas": ready_replicas})
    return outcome
