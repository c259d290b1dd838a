"""The spec models, the generated CRDs and the examples agree (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from bioengine_operator.api import app, crds, dataset, modelrunner, openapi

ROOT = Path(__file__).resolve().parents[1]
SPECS = {
    "BioEngineApp": app.BioEngineAppSpec,
    "ModelRunner": modelrunner.ModelRunnerSpec,
    "BioEngineDataset": dataset.BioEngineDatasetSpec,
}


@pytest.mark.parametrize("kind", crds.KINDS, ids=lambda k: k.kind)
def test_committed_crd_matches_models(kind: crds.Kind) -> None:
    committed = (ROOT / "crds" / f"{kind.plural}.yaml").read_text()
    assert committed == crds.render(kind), "crds/ drifted from the models: run `make crds`"


@pytest.mark.parametrize("kind", crds.KINDS, ids=lambda k: k.kind)
def test_every_field_has_a_description(kind: crds.Kind) -> None:
    schema = crds.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert openapi.missing_descriptions(schema["properties"]["spec"]) == []
    assert openapi.missing_descriptions(schema["properties"]["status"], "status") == []


def test_status_keeps_unknown_fields() -> None:
    for kind in crds.KINDS:
        schema = crds.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert schema["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


def test_schema_is_structural() -> None:
    """No $ref, anyOf or null defaults survive; every node has a type, or is int-or-string,
    or keeps any value (the format 0.5 fields, kept only to be refused by name)."""

    def walk(node: dict, where: str) -> None:
        assert not {"$ref", "anyOf", "oneOf", "allOf", "$defs", "title"} & set(node), where
        assert node.get("default", 0) is not None, where
        assert (
            "type" in node
            or node.get("x-kubernetes-int-or-string")
            or node.get("x-kubernetes-preserve-unknown-fields")
        ), where
        for name, sub in node.get("properties", {}).items():
            walk(sub, f"{where}.{name}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{where}.*")
        if "items" in node:
            walk(node["items"], f"{where}[]")

    for kind in crds.KINDS:
        schema = crds.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        walk(schema["properties"]["spec"], f"{kind.kind}.spec")


def example_objects() -> list[dict]:
    docs = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_examples_cover_every_kind_and_validate() -> None:
    kinds = set()
    for doc in example_objects():
        if doc["kind"] in SPECS:
            SPECS[doc["kind"]].model_validate(doc["spec"])
            kinds.add(doc["kind"])
    assert kinds == set(SPECS)


MINIMAL_APP = {
    "name": "App",
    "id": "app",
    "description": "An app.",
    "formatVersion": "0.6.0",
    "entry": "main:App",
    "source": {"configMap": {"name": "code"}},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"entry": "not an import path"}, "String should match pattern"),
        ({"id": "Not_An_Id"}, "String should match pattern"),
        ({"source": {}}, "exactly one of configMap, uri, image, zip"),
        ({"source": {"zip": {"configMaps": []}}}, "at least 1 item"),
        ({"source": {"zip": {"configMaps": ["Code_0"]}}}, "String should match pattern"),
        ({"source": {"uri": "https://x/app.zip", "image": {}}}, "exactly one of"),
        ({"source": {"uri": "ftp://x/app.zip"}}, "String should match pattern"),
        ({"datasets": "cells"}, "valid list"),
        ({"unknownField": 1}, "Extra inputs are not permitted"),
        ({"formatVersion": "0.5.0"}, "formatVersion must be 0.6.0"),
        ({"deployments": ["a:B"]}, "deployments is a format 0.5 field .* constructor type hints"),
        ({"deploymentConfig": {}}, "deploymentConfig is a format 0.5 field"),
        ({"classes": {"A": {"numReplicas": 2, "autoscaling": {}}}}, "numReplicas or autoscaling"),
        ({"frontendEntry": "/etc/passwd"}, "String should match pattern"),
        ({"frontendEntry": "ui/../../x.html"}, "String should match pattern"),
        ({"methods": {"train": {"authorizedUsers": []}}}, "at least 1 item"),
    ],
)
def test_invalid_app_specs_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        app.BioEngineAppSpec.model_validate({**MINIMAL_APP, **change})


def test_defaults_fill_a_minimal_app() -> None:
    spec = app.BioEngineAppSpec.model_validate(MINIMAL_APP)
    assert spec.service.visibility == "protected"
    assert spec.authorized_users == ["*"]
    assert spec.type == "ray-serve" and spec.classes == {} and spec.disable_gpu is False
    assert spec.ray_cluster.ray_version == app.DEFAULT_RAY_VERSION


def test_model_runner_requires_models_and_one_repository() -> None:
    base = {"modelRepository": {"pvc": {"claimName": "m"}}, "models": ["a"]}
    modelrunner.ModelRunnerSpec.model_validate(base)
    with pytest.raises(ValidationError, match="at least 1 item"):
        modelrunner.ModelRunnerSpec.model_validate({**base, "models": []})
    with pytest.raises(ValidationError, match="exactly one of s3, pvc, configMap"):
        modelrunner.ModelRunnerSpec.model_validate({**base, "modelRepository": {}})


def test_cel_rules_are_in_the_crds() -> None:
    text = "".join(crds.render(kind) for kind in crds.KINDS)
    for message in (
        "exactly one of configMap, uri, image, zip must be set",
        "exactly one of s3, pvc, configMap must be set",
        "exactly one of pvc, hostPath, s3 must be set",
        "minReplicas must not exceed maxReplicas",
        "args may not set flags the operator owns",
        "formatVersion must be 0.6.0",
        "exposedMethods is a format 0.5 field",
    ):
        assert message in text
