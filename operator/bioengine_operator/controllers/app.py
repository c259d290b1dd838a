"""Reconcile a BioEngineApp: resolve its code and datasets, apply its RayService, mirror
its status.

KubeRay's conditions are copied with a ``RayService`` prefix, so ``kubectl describe`` on
the app shows why it is not Ready without looking at the RayService. The Serve
application's own status (which KubeRay copies from Ray) becomes ``ServeApplicationHealthy``:
a failed smoke test or constructor (``DEPLOY_FAILED``) makes the app ``Failed`` and a
failing health check (``UNHEALTHY``) ``Degraded``, quoting the app's error. A new version
that fails while KubeRay upgrades (``ServeUpgradeHealthy``) makes it ``Degraded`` too: the
previous cluster keeps serving, and the bridge keeps a ``Degraded`` app's service. An app that
stays not Ready longer than ``initTimeoutSeconds`` after a change is reported ``Stuck`` (a
condition and a Warning Event): a RayService stuck initializing is the most common KubeRay
complaint, and otherwise it just sits there silently.
"""

from __future__ import annotations

import datetime
from typing import Any

from pydantic import ValidationError

from bioengine_operator import kube
from bioengine_operator.api.app import BioEngineAppSpec
from bioengine_operator.api.dataset import BioEngineDatasetSpec
from bioengine_operator.api.serve import serve_conditions
from bioengine_operator.api.status import failed_app_phase
from bioengine_operator.builders import dataset as dataset_builder
from bioengine_operator.builders import meta, rayservice
from bioengine_operator.conditions import TIME_FORMAT
from bioengine_operator.controllers.outcome import (
    Context,
    Outcome,
    common_status,
    with_spec,
)

DATASET_API = ("bioengine.bioimage.io/v1alpha1", "BioEngineDataset")
# A dataset or code ConfigMap applied with the app may come a moment later: look again soon
# rather than at the next resync.
MISSING_RETRY_SECONDS = 5.0


def resolve_datasets(
    owner: meta.Owner, names: list[str], host_path_prefixes: tuple[str, ...]
) -> tuple[list[rayservice.MountedDataset], list[str]]:
    """The app's datasets as mounts, and those that cannot be used (missing, or with a spec
    the operator refuses), each named with the reason."""
    found: list[rayservice.MountedDataset] = []
    missing: list[str] = []
    for name in names:
        body = kube.get(*DATASET_API, owner.namespace, name)
        if body is None:
            missing.append(name)
            continue
        ds_owner = meta.Owner.from_body(body)
        try:
            spec = BioEngineDatasetSpec.model_validate(body["spec"])
        except ValidationError:
            missing.append(f"{name} (its spec is invalid)")
            continue
        volume: dict[str, Any] | None
        try:
            volume, sub_path = dataset_builder.volume(spec, host_path_prefixes)
        except dataset_builder.UnsupportedSource:
            # Not mountable here (the app still reaches it through its dataset server).
            volume, sub_path = None, ""
        found.append(
            rayservice.MountedDataset(name, dataset_builder.endpoint(ds_owner), volume, sub_path)
        )
    return found, missing


def code_hash(owner: meta.Owner, spec: BioEngineAppSpec) -> tuple[str, str | None]:
    """A hash of the ConfigMaps holding the code ("" for a URI or image source), or the
    first of them that does not exist."""
    contents = []
    for name in spec.source.config_map_names():
        body = kube.get("v1", "ConfigMap", owner.namespace, name)
        if body is None:
            return "", name
        contents.append({"data": body.get("data"), "binaryData": body.get("binaryData")})
    if not contents:
        return "", None
    # One ConfigMap hashes as before zip sources existed: an upgrade rolls no Ray cluster.
    return meta.digest(contents[0] if spec.source.config_map is not None else contents), None


def _parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=datetime.UTC)


def mirrored_conditions(ray_service: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    if ray_service is None:
        return [("RayServiceReady", "Unknown", "NotCreated", "the RayService does not exist yet")]
    out: list[tuple[str, str, str, str]] = []
    for cond in (ray_service.get("status") or {}).get("conditions") or []:
        out.append(
            (
                f"RayService{cond['type']}",
                cond.get("status", "Unknown"),
                cond.get("reason") or "Unknown",
                cond.get("message", ""),
            )
        )
    if not out:
        out.append(("RayServiceReady", "Unknown", "Initializing", "KubeRay reported no status yet"))
    return out


@with_spec(BioEngineAppSpec)
def reconcile(body: dict[str, Any], ctx: Context, spec: BioEngineAppSpec) -> Outcome:
    owner = meta.Owner.from_body(body)
    old_status = body.get("status") or {}

    datasets, missing = resolve_datasets(owner, spec.datasets, ctx.settings.host_path_prefixes)
    if missing:
        message = f"datasets not found in namespace {owner.namespace}: {', '.join(missing)}"
        return Outcome(
            common_status(
                body,
                ctx,
                ready=False,
                reason="DatasetNotFound",
                message=message,
                phase="Pending",
                summary="False",
                extra_conditions=(("DatasetsResolved", False, "DatasetNotFound", message),),
            ),
            requeue_in=MISSING_RETRY_SECONDS,
        )

    code, missing_code = code_hash(owner, spec)
    if missing_code is not None:
        message = f"ConfigMap {missing_code} (the app's code) does not exist"
        return Outcome(
            common_status(
                body,
                ctx,
                ready=False,
                reason="CodeNotFound",
                message=message,
                phase="Pending",
                summary="False",
            ),
            requeue_in=MISSING_RETRY_SECONDS,
        )

    live = kube.get("ray.io/v1", "RayService", owner.namespace, owner.name)
    inputs = rayservice.Inputs(
        tuple(datasets), code, ctx.settings.gpu_memory_mb, ctx.settings.ray_image
    )
    kube.apply_owned(
        rayservice.children(owner, spec, inputs), owner.uid, {("RayService", owner.name): live}
    )
    mirrored = mirrored_conditions(live)
    (serving, serve_reason, serve_message), upgrade = serve_conditions(live, owner.name)
    ray_ready = any(t == "RayServiceReady" and s == "True" for t, s, _, _ in mirrored)
    ready = ray_ready and serving is not False

    # How long has the app been trying? Since the last spec change or loss of readiness.
    generation = body["metadata"].get("generation")
    since = old_status.get("deployingSince")
    if ready:
        since = None
    elif since is None or old_status.get("observedGeneration") != generation:
        since = ctx.now_text
    waited = (ctx.now - _parse_time(since)).total_seconds() if since else 0.0
    stuck = not ready and waited > spec.init_timeout_seconds

    if ready and upgrade[0] is False:  # KubeRay keeps the previous cluster serving
        phase, reason = "Degraded", upgrade[1]
        message = f"the new version failed, the previous one keeps serving: {upgrade[2]}"
    elif ready:
        phase, reason, message = "Ready", "RayServiceReady", "the Ray Serve app is running"
    elif serving is False:
        phase = failed_app_phase(serve_reason)
        reason, message = serve_reason, serve_message
    elif stuck:
        phase, reason = "Stuck", "InitializingTimeout"
        message = (
            f"not ready {waited:.0f}s after the last change "
            f"(initTimeoutSeconds={spec.init_timeout_seconds})"
        )
    else:
        ray_cond = next((m for m in mirrored if m[0] == "RayServiceReady"), None)
        phase = "Deploying"
        reason = ray_cond[2] if ray_cond else "Initializing"
        message = ray_cond[3] if ray_cond else ""

    outcome = Outcome(
        common_status(
            body,
            ctx,
            ready=ready,
            reason=reason,
            message=message,
            phase=phase,
            summary="True" if ready else "False",
            extra_conditions=(
                ("DatasetsResolved", True, "Resolved", f"{len(datasets)} dataset(s) mounted"),
                ("Stuck", stuck, reason if stuck else "Progressing", message if stuck else ""),
                ("ServeApplicationHealthy", serving, serve_reason, serve_message),
                ("ServeUpgradeHealthy", *upgrade),
                *mirrored,
            ),
        )
    )
    if not ready and not stuck:
        # Look again when the app would become Stuck (the resync may come later than that).
        outcome.requeue_in = spec.init_timeout_seconds - waited + 1
    outcome.status.update(
        {
            "rayServiceName": owner.name,
            "endpoint": rayservice.serve_endpoint(owner),
            "dashboard": rayservice.dashboard_endpoint(owner),
            "deployingSince": since,
        }
    )
    return outcome
