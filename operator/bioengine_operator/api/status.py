"""Status models: what the operator writes under ``.status`` of each kind, and the rules
every process reads statuses and specs by.

The CRDs keep ``x-kubernetes-preserve-unknown-fields`` on ``status`` so nothing kopf or a
future operator version writes there is pruned; these typed fields are what users read.

Three processes meet here: the operator writes statuses, the Hypha bridge reads them to
decide what to register and where the backends are, and ``bioengine up`` writes them for
what it runs on one machine. So the rules they share live beside the models, not in any of
them: a resource's Hypha service id and the workspace it is served in
(:func:`service_id`, :func:`qualified_service_id`, :func:`served_in`), whether it can serve
(:func:`serviceable`), a dataset's id (:func:`dataset_id`), and how Ray Serve's states map
to phases (:func:`failed_app_phase`, :data:`SERVE_STATUS_OF_PHASE`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from bioengine_operator.api.base import Condition, Model

Phase = Literal["Pending", "Deploying", "Updating", "Ready", "Degraded", "Stuck", "Failed"]


class CommonStatus(Model):
    phase: Phase | None = Field(None, description="Summary of the conditions.")
    ready: str | None = Field(None, description="Ready summary shown by kubectl get.")
    observed_generation: int | None = Field(
        None, description="The .metadata.generation the operator last reconciled."
    )
    service_id: str | None = Field(
        None, description="Hypha service id (workspace/id) the bridge registers."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Latest observations: Ready, Reconciled, and kind-specific ones.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class AppStatus(CommonStatus):
    ray_service_name: str | None = Field(None, description="The RayService running the app.")
    endpoint: str | None = Field(
        None, description="In-cluster HTTP address of the app's Ray Serve route."
    )
    deploying_since: str | None = Field(
        None,
        description="When the app last started deploying (spec change or loss of "
        "readiness); the Stuck condition counts initTimeoutSeconds from here.",
    )
    dashboard: str | None = Field(
        None,
        description="In-cluster address of the Ray dashboard of the serving cluster "
        "(Serve's deployments and replica logs, which the worker service shows).",
    )


class ColorStatus(Model):
    revision: str | None = Field(None, description="Spec revision this color runs.")
    replicas: int = Field(0, description="Pods of this color.")
    ready_replicas: int = Field(0, description="Ready pods (every model loaded) of this color.")
    endpoint: str | None = Field(
        None,
        description="In-cluster gRPC address of this color's Service (the bridge fails "
        "over between the two).",
    )


class ModelRunnerStatus(CommonStatus):
    revision: str | None = Field(None, description="Hash of the spec that pods should run.")
    blue: ColorStatus = Field(default_factory=ColorStatus, description="The blue color.")
    green: ColorStatus = Field(default_factory=ColorStatus, description="The green color.")
    updating_color: Literal["blue", "green"] | None = Field(
        None, description="Color being rolled to the new revision, if any."
    )
    models: list[str] = Field(default_factory=list, description="Models every pod serves.")
    endpoint: str | None = Field(None, description="In-cluster gRPC address of the Service.")


class DatasetStatus(CommonStatus):
    endpoint: str | None = Field(None, description="In-cluster HTTP address of the server.")
    ready_replicas: int = Field(0, description="Ready dataset server pods.")


# -- the rules the operator, the bridge and `bioengine up` share --------------------------

COLORS: tuple[Literal["blue"], Literal["green"]] = ("blue", "green")
# Serve's application states (what BioEngine's clients know), from a BioEngineApp's phase.
SERVE_STATUS_OF_PHASE: dict[str, str] = {
    "Ready": "RUNNING",
    "Degraded": "UNHEALTHY",
    "Pending": "DEPLOYING",
    "Deploying": "DEPLOYING",
    "Updating": "DEPLOYING",
    "Stuck": "DEPLOY_FAILED",
    "Failed": "DEPLOY_FAILED",
}
# Serve's reasons for an app that never started (the others, a failing health check, are a
# running app's trouble).
NEVER_STARTED = ("SmokeTestFailed", "DeployFailed")


def service_id(body: dict[str, Any]) -> str:
    """The Hypha service id of a resource within its workspace: ``spec.service.id``, else an
    app's manifest id, else the resource's name."""
    spec = body.get("spec") or {}
    chosen = (spec.get("service") or {}).get("id")
    if not chosen and body.get("kind") == "BioEngineApp":
        chosen = spec.get("id")
    return str(chosen or body["metadata"]["name"])


def served_in(body: dict[str, Any], default_workspace: str | None) -> str | None:
    """The workspace a resource's service belongs in: ``spec.service.workspace``, else the
    bridge's (``default_workspace``)."""
    chosen = ((body.get("spec") or {}).get("service") or {}).get("workspace")
    return str(chosen) if chosen else default_workspace


def qualified_service_id(body: dict[str, Any], default_workspace: str | None) -> str:
    """``workspace/id``, as Hypha clients name the service (the bare id without a
    workspace)."""
    workspace = served_in(body, default_workspace)
    return f"{workspace}/{service_id(body)}" if workspace else service_id(body)


def serviceable(body: dict[str, Any]) -> bool:
    """Whether the resource can answer calls now: an app that is Ready or Degraded (an
    unhealthy replica, or a failed upgrade while the previous version serves), a model
    runner with a Ready pod in either color (an update in progress still serves), a dataset
    with a Ready server pod."""
    status = body.get("status") or {}
    kind = body["kind"]
    if kind == "BioEngineApp":
        return status.get("phase") in ("Ready", "Degraded")
    if kind == "ModelRunner":
        return sum(int((status.get(c) or {}).get("readyReplicas", 0)) for c in COLORS) > 0
    return int(status.get("readyReplicas", 0)) > 0


def dataset_id(body: dict[str, Any]) -> str:
    """The id tokens and listings name a dataset by (see :func:`dataset_id_of`)."""
    manifest = (body.get("spec") or {}).get("manifest") or {}
    return dataset_id_of(manifest.get("id"), body["metadata"]["name"])


def dataset_id_of(manifest_id: str | None, name: str) -> str:
    """A dataset's id: its manifest's ``id``, else the BioEngineDataset's name."""
    return str(manifest_id or name)


def failed_app_phase(reason: str) -> Phase:
    """The phase of an app Serve reports failing: ``Failed`` when it never started (its
    deployment or smoke test failed), ``Degraded`` when it runs but a health check fails."""
    return "Failed" if reason in NEVER_STARTED else "Degraded"
