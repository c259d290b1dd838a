"""Status models: what the operator writes under ``.status`` of each kind.

The CRDs keep ``x-kubernetes-preserve-unknown-fields`` on ``status`` so nothing kopf or a
future operator version writes there is pruned; these typed fields are what users read.
"""

from __future__ import annotations

from typing import Literal

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


class ColorStatus(Model):
    revision: str | None = Field(None, description="Spec revision this color runs.")
    replicas: int = Field(0, description="Pods of this color.")
    ready_replicas: int = Field(0, description="Ready pods (every model loaded) of this color.")


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
