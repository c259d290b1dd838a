"""Building blocks shared by the three kinds' spec models.

The pydantic models in this package are the single source of truth for the CRD schemas:
``crds/*.yaml`` is generated from them (``make crds``) and a test fails when the two drift.
Python attributes are snake_case; the Kubernetes API sees camelCase (API conventions), via
the alias generator below. A field's ``description`` becomes its ``kubectl explain`` text,
and ``x-kubernetes-validations`` given through ``json_schema_extra`` become CEL rules that
the API server checks at ``kubectl apply``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

GROUP = "bioengine.bioimage.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# A Kubernetes resource quantity ("500m", "4Gi", 2): int-or-string in the schema.
Quantity = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A DNS-1035 label: what a Service name (and so every name a Service is derived from) must be.
DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A DNS-1123 subdomain: the name of a ConfigMap, Secret or PersistentVolumeClaim.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def object_name(description: str) -> Any:
    """A field naming another object in the same namespace: checked as a DNS-1123 subdomain,
    so it can only ever be one name, never a path."""
    return Field(pattern=DNS_SUBDOMAIN, min_length=1, max_length=253, description=description)


def cel(rule: str, message: str) -> JsonDict:
    return {"rule": rule, "message": message}


class Model(BaseModel):
    """Base for every spec model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    def dump(self) -> dict[str, Any]:
        """The wire form (camelCase, unset optionals left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def with_rules(*rules: JsonDict) -> ConfigDict:
    """The configuration of a :class:`Model` subclass whose objects carry CEL ``rules``."""
    return ConfigDict(
        **Model.model_config, json_schema_extra={"x-kubernetes-validations": [*rules]}
    )


class OneOf(Model):
    """A choice of sources: exactly one of the fields named in ``one_of`` must be set.

    The rule is stated once and checked twice: as a CEL rule in the generated CRD (so
    ``kubectl apply`` refuses it) and by the model (so the operator never acts on it).
    """

    one_of: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _wire_names(cls) -> list[str]:
        return [to_camel(name) for name in cls.one_of]

    @model_validator(mode="after")
    def _exactly_one(self) -> OneOf:
        chosen = [name for name in self.one_of if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"exactly one of {', '.join(self._wire_names())} must be set")
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(core_schema)
        target = handler.resolve_ref_schema(json_schema)
        names = cls._wire_names()
        terms = ", ".join(f"has(self.{name})" for name in names)
        rule = cel(
            f"[{terms}].filter(x, x).size() == 1", f"exactly one of {', '.join(names)} must be set"
        )
        target.setdefault("x-kubernetes-validations", []).append(rule)
        return json_schema


class SecretRef(Model):
    name: str = object_name("Name of a Secret in the resource's namespace.")


class Toleration(Model):
    key: str | None = Field(None, description="Taint key the toleration applies to.")
    operator: Literal["Exists", "Equal"] = Field(
        "Equal", description="Exists matches any value; Equal matches `value`."
    )
    value: str | None = Field(None, description="Taint value to match when operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class Resources(Model):
    """Compute resources of one container, as requests (limits equal requests)."""

    cpu: Quantity = Field("1", description="CPU request and limit, e.g. 500m or 2.")
    memory: Quantity = Field("2Gi", description="Memory request and limit, e.g. 4Gi.")
    gpu: int = Field(0, ge=0, description="NVIDIA GPUs (nvidia.com/gpu); 0 for CPU only.")


class Placement(Model):
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the pods must match (e.g. a GPU pool)."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Taints the pods tolerate (e.g. GPU or spot taints)."
    )


class ServiceSpec(Model):
    """How the Hypha bridge registers this resource as a Hypha service."""

    id: str | None = Field(
        None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Hypha service id; defaults to the resource's name.",
    )
    workspace: str | None = Field(
        None, description="Hypha workspace; defaults to the bridge's configured workspace."
    )
    visibility: Literal["protected", "public"] = Field(
        "protected",
        description="protected: only authorized users (and the workspace) may call it; "
        "public: anyone who can reach the Hypha server.",
    )


class Condition(Model):
    type: str = Field(description="Condition type, e.g. Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field("", description="Human-readable details.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = Field(
        None, description="The .metadata.generation the condition was computed from."
    )


def default_service_id(body: dict[str, Any]) -> str:
    """The Hypha service id of a resource: ``spec.service.id``, else an app's manifest id,
    else the resource's name."""
    spec = body.get("spec") or {}
    chosen = (spec.get("service") or {}).get("id")
    if not chosen and body.get("kind") == "BioEngineApp":
        chosen = spec.get("id")
    return str(chosen or body["metadata"]["name"])
