"""Turn a pydantic model's JSON Schema into a structural OpenAPI v3 schema for a CRD.

Kubernetes accepts only *structural* schemas: no ``$ref``, no ``anyOf`` of differently typed
branches, a ``type`` on every node. Pydantic emits all of those, so this module inlines
references, folds ``X | None`` into ``X`` (optional = not required), turns ``int | str``
into ``x-kubernetes-int-or-string`` and keeps only the keywords the API server knows.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_KEEP = {
    "type",
    "description",
    "default",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "nullable",
}
_FORMATS = {"date-time", "int32", "int64", "byte"}


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(schema, schema.get("$defs", {}))


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, defs)
    branches = node.get("anyOf") or node.get("oneOf")
    if branches is not None:
        node = _fold_union(node, branches, defs)

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _KEEP or key.startswith("x-kubernetes-"):
            out[key] = value
    if out.get("format") not in _FORMATS:
        out.pop("format", None)
    if out.get("default", 0) is None:  # "optional": absent, not null
        del out["default"]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            # JSON Schema 2020 has numeric exclusive bounds; OpenAPI v3.0 has boolean flags.
            out[plain], out[bound] = out[bound], True
    if "const" in node:
        out["enum"] = [node["const"]]
    if node.get("type") == "object" or "properties" in node:
        out["type"] = "object"
        props = node.get("properties", {})
        if props:
            out["properties"] = {name: _convert(sub, defs) for name, sub in props.items()}
            for name, sub in out["properties"].items():
                if name not in out.get("required", []) and _defaults_to_empty_object(
                    props[name], sub
                ):
                    # A nested model with a default_factory: `{}` lets the API server fill
                    # in its own defaults, so `kubectl get -o yaml` shows the effective spec.
                    sub["default"] = {}
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = _convert(extra, defs)
        if (
            not props
            and not isinstance(extra, dict)
            and "x-kubernetes-preserve-unknown-fields" not in out
        ):
            out["x-kubernetes-preserve-unknown-fields"] = True
        if not out.get("required"):
            out.pop("required", None)
    if node.get("type") == "array":
        out["items"] = _convert(node.get("items", {}), defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def _defaults_to_empty_object(source: dict[str, Any], converted: dict[str, Any]) -> bool:
    return (
        converted.get("type") == "object"
        and "properties" in converted
        and "default" not in source
        and not converted.get("required")
    )


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline a ``$ref`` (or a single-element ``allOf``), keeping the referrer's own keys."""
    ref = node.get("$ref")
    if ref is None and len(node.get("allOf", [])) == 1:
        ref = node["allOf"][0].get("$ref")
    if ref is None:
        return node
    target = defs[ref.rsplit("/", 1)[-1]]
    merged = {**target, **{k: v for k, v in node.items() if k not in ("$ref", "allOf")}}
    return _resolve(merged, defs)


def _fold_union(
    node: dict[str, Any], branches: list[dict[str, Any]], defs: dict[str, Any]
) -> dict[str, Any]:
    rest = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
    typed = [_resolve(b, defs) for b in branches if b.get("type") != "null"]
    types = {b.get("type") for b in typed}
    if len(typed) == 1:
        return {**typed[0], **rest}
    if types == {"integer", "string"}:
        return {**rest, "x-kubernetes-int-or-string": True}
    raise ValueError(f"cannot express union {branches} structurally")


def missing_descriptions(schema: dict[str, Any], path: str = "spec") -> list[str]:
    """Paths of properties without a description (``kubectl explain`` would be empty there)."""
    missing = []
    for name, sub in schema.get("properties", {}).items():
        where = f"{path}.{name}"
        if not sub.get("description"):
            missing.append(where)
        missing += missing_descriptions(sub, where)
        if "items" in sub:
            missing += missing_descriptions(sub["items"], f"{where}[]")
    return missing
