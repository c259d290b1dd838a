"""ModelRunner: NVIDIA Triton Inference Server as a blue/green pair of Deployments.

Models are named explicitly and loaded by each pod at start (``--model-control-mode=explicit``
with ``--load-model``), never through the Service: a load request sent to a Service reaches
one pod only (triton-inference-server/server#3001).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from bioengine_operator.api.base import (
    IMAGE,
    Model,
    OneOf,
    Placement,
    Resources,
    SecretRef,
    ServiceSpec,
    cel,
    keys_rule,
    object_name,
    sub_path,
)

# The per-color Services are "<name>-blue" and "<name>-green": at most 63 characters.
RUNNER_NAME_MAX = 63 - len("-green")

DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.08-py3"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
# Flags the operator owns: setting them through `args` would break the update protocol.
RESERVED_ARGS = (
    "--model-repository",
    "--model-control-mode",
    "--load-model",
    "--strict-readiness",
    "--http-port",
    "--grpc-port",
    "--metrics-port",
)


class S3Repository(Model):
    uri: str = Field(
        pattern=r"^s3://\S+$",
        description="s3://bucket/prefix of the model repository (Triton reads it directly).",
    )
    secret_ref: SecretRef | None = Field(
        None,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and optionally AWS_DEFAULT_REGION, AWS_SESSION_TOKEN).",
    )
    endpoint: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        description="S3-compatible endpoint (MinIO, Ceph); becomes part of the repository URL.",
    )


class PvcRepository(Model):
    claim_name: str = object_name("PersistentVolumeClaim holding the model repository.")
    sub_path: str = sub_path("volume")


class ConfigMapRepository(Model):
    name: str = object_name(
        "ConfigMap holding small models. Keys use `__` for `/`, e.g. "
        "`unet2d__config.pbtxt` and `unet2d__1__model.py`."
    )


class ModelRepository(OneOf):
    one_of = ("s3", "pvc", "config_map")

    s3: S3Repository | None = Field(None, description="Repository in S3 or an S3-compatible store.")
    pvc: PvcRepository | None = Field(None, description="Repository on a PersistentVolumeClaim.")
    config_map: ConfigMapRepository | None = Field(
        None, description="Repository in a ConfigMap (small python-backend models)."
    )


class ModelRunnerSpec(Placement):
    image: str | None = Field(
        None,
        pattern=IMAGE,
        description="Triton Inference Server image; unset uses the operator's default "
        f"(--triton-image, {DEFAULT_TRITON_IMAGE} unless the chart sets another), so an "
        "operator upgrade can move runners to a newer Triton, one color at a time.",
    )
    model_repository: ModelRepository = Field(description="Where the models are stored.")
    models: list[Annotated[str, Field(pattern=MODEL_NAME)]] = Field(
        min_length=1,
        max_length=64,
        description="Models every pod loads at start; a pod is Ready only when all are loaded.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    replicas: int = Field(
        1, ge=1, le=32, description="Pods per color; steady state runs twice this (blue+green)."
    )
    resources: Resources = Field(
        default_factory=Resources, description="Resources of each Triton pod."
    )
    args: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list,
        max_length=64,
        description="Extra tritonserver flags, e.g. --log-verbose=1. The operator owns "
        + ", ".join(RESERVED_ARGS)
        + ".",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.all(a, "
                    + " && ".join(f"!a.startsWith('{flag}')" for flag in RESERVED_ARGS)
                    + ")",
                    "args may not set flags the operator owns: " + ", ".join(RESERVED_ARGS),
                )
            ]
        },
    )
    pod_annotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=64,
        description="Annotations added to every Triton pod (e.g. for metrics scraping).",
        json_schema_extra={"x-kubernetes-validations": [keys_rule("podAnnotations")]},
    )
    color_anti_affinity: Literal["preferred", "required"] = Field(
        "preferred",
        description="Keep blue and green pods on different nodes: required (never share a "
        "node; needs two suitable nodes) or preferred (share only when nothing else fits).",
    )
    startup_timeout_seconds: int = Field(
        600,
        ge=10,
        le=86_400,
        description="How long a pod may take to load its models before it is restarted.",
    )
    service: ServiceSpec = Field(
        default_factory=ServiceSpec, description="Hypha service registration."
    )
