"""Building blocks shared by the three kinds' spec models.

The pydantic models in this package are the single source of truth for the CRD schemas:
``crds/*.yaml`` is generated from them (``make crds``) and a test fails when the two drift.
Python attributes are snake_case; the Kubernetes API sees camelCase (API conventions), via
the alias generator below. A field's ``description`` becomes its ``kubectl explain`` text,
and ``x-kubernetes-validations`` given through ``json_schema_extra`` become CEL rules that
the API server checks at ``kubectl apply``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

GROUP = "bioengine.bioimage.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Kubernetes' quantity grammar (resource.Quantity), unsigned: requests are never negative.
QUANTITY = (
    r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def _quantity(value: int | str) -> int | str:
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{value} is negative")
    if isinstance(value, str) and not re.match(QUANTITY, value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
    return value


# A Kubernetes resource quantity ("500m", "4Gi", 2): int-or-string in the schema, checked
# at apply (a bad one would otherwise reach the API server only inside a Pod template).
Quantity = Annotated[
    int | str,
    AfterValidator(_quantity),
    Field(
        json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY, "minimum": 0}
    ),
]
# Label and annotation keys (an optional DNS prefix, then a name of at most 63 characters)
# and label values; "[.]" rather than an escaped dot, so the same text works inside CEL.
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
DNS_PART = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
LABEL_KEY = rf"^({DNS_PART}([.]{DNS_PART})*/)?{LABEL_NAME}$"
LABEL_VALUE = rf"^({LABEL_NAME})?$"
# A container image reference: no spaces (the kubelet would refuse it only at pod start).
IMAGE = r"^[^\s]+$"
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


def sub_path(what: str) -> Any:
    """A directory inside a volume: relative, never leaving it."""
    return Field(
        "",
        pattern=r"^([^/].*)?$",
        max_length=1024,
        description=f"Directory inside the {what}; empty for its root.",
        json_schema_extra={
            "x-kubernetes-validations": [
                cel("!self.matches('(^|/)[.][.](/|$)')", "subPath must not contain '..'")
            ]
        },
    )


class SecretRef(Model):
    name: str = object_name("Name of a Secret in the resource's namespace.")


def keys_rule(what: str) -> JsonDict:
    """CEL on a map: every key a label/annotation key (a schema cannot check map keys)."""
    return cel(
        f"self.all(k, k.size() <= 317 && k.matches('{LABEL_KEY}'))",
        f"every {what} key must be a label key: an optional DNS prefix and '/', then at most "
        "63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit",
    )


def check_keys(keys: Any, what: str) -> None:
    for key in keys:
        if len(key) > 317 or not re.match(LABEL_KEY, key):
            raise ValueError(f"{what} key {key!r} is not a valid label key")


TOLERATION_RULES = (
    cel(
        "self.operator != 'Exists' || !has(self.value) || self.value == ''",
        "a toleration with operator Exists takes no value",
    ),
    cel(
        "has(self.key) && self.key != '' || self.operator == 'Exists'",
        "a toleration without a key must have operator Exists",
    ),
    cel(
        "!has(self.tolerationSeconds) || has(self.effect) && self.effect == 'NoExecute'",
        "tolerationSeconds needs effect NoExecute",
    ),
)


class Toleration(Model):
    model_config = with_rules(*TOLERATION_RULES)

    key: str | None = Field(
        None, pattern=LABEL_KEY, max_length=317, description="Taint key the toleration applies to."
    )
    operator: Literal["Exists", "Equal"] = Field(
        "Equal", description="Exists matches any value; Equal matches `value`."
    )
    value: str | None = Field(
        None,
        pattern=LABEL_VALUE,
        max_length=63,
        description="Taint value to match when operator is Equal.",
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None,
        ge=0,
        le=31_536_000,
        description="For NoExecute: how long the pod stays bound after the taint appears.",
    )

    @model_validator(mode="after")
    def _rules(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists takes no value")
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without a key must have operator Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds needs effect NoExecute")
        return self


class Resources(Model):
    """Compute resources of one container, as requests (limits equal requests)."""

    cpu: Quantity = Field("1", description="CPU request and limit, e.g. 500m or 2.")
    memory: Quantity = Field("2Gi", description="Memory request and limit, e.g. 4Gi.")
    gpu: int = Field(0, ge=0, le=64, description="NVIDIA GPUs (nvidia.com/gpu); 0 for CPU only.")


class Placement(Model):
    node_selector: dict[str, Annotated[str, Field(pattern=LABEL_VALUE, max_length=63)]] = Field(
        default_factory=dict,
        max_length=64,
        description="Node labels the pods must match (e.g. a GPU pool).",
        json_schema_extra={"x-kubernetes-validations": [keys_rule("nodeSelector")]},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=64,
        description="Taints the pods tolerate (e.g. GPU or spot taints).",
    )

    @model_validator(mode="after")
    def _label_keys(self) -> Placement:
        check_keys(self.node_selector, "nodeSelector")
        return self


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
