"""The three CustomResourceDefinitions, generated from the spec and status models.

``python -m bioengine_operator.api.crds crds/`` writes ``crds/<plural>.yaml``; a test
regenerates them and fails when the committed files differ (drift), and the chart's copy
is checked against ``crds/`` the same way.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.config import JsonDict

from bioengine_operator.api import app, dataset, modelrunner, status
from bioengine_operator.api.base import DNS_1035, GROUP, VERSION, cel
from bioengine_operator.api.openapi import structural_schema


@dataclasses.dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    columns: tuple[dict[str, Any], ...]
    max_name: int  # longest name whose derived child names stay within Kubernetes' limits
    derived: str  # which derived name sets that limit, for the refusal message

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    def name_rule(self) -> JsonDict:
        """CEL on metadata.name: a DNS-1035 label short enough for every derived name."""
        return cel(
            f"self.metadata.name.size() <= {self.max_name} && "
            f"self.metadata.name.matches('{DNS_1035}')",
            f"metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', "
            f"starting with a letter) of at most {self.max_name} characters: {self.derived}",
        )


def _columns(*extra: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    return (
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
        *extra,
        {"name": "Service", "type": "string", "jsonPath": ".status.serviceId"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    )


APP = Kind(
    "BioEngineApp",
    "bioengineapps",
    ("bea",),
    app.BioEngineAppSpec,
    status.AppStatus,
    "A BioEngine app: a Ray Serve application run on its own KubeRay RayService.",
    _columns(),
    app.APP_NAME_MAX,
    "KubeRay names the RayCluster '<name>-' plus 5 characters, at most 53",
)
MODEL_RUNNER = Kind(
    "ModelRunner",
    "modelrunners",
    ("mr",),
    modelrunner.ModelRunnerSpec,
    status.ModelRunnerStatus,
    "Triton Inference Server run as a blue/green pair of Deployments with no-surge updates.",
    _columns({"name": "Revision", "type": "string", "jsonPath": ".status.revision", "priority": 1}),
    modelrunner.RUNNER_NAME_MAX,
    "the per-color Service '<name>-green' is a Service name, at most 63",
)
DATASET = Kind(
    "BioEngineDataset",
    "bioenginedatasets",
    ("bed",),
    dataset.BioEngineDatasetSpec,
    status.DatasetStatus,
    "A read-only dataset (files and zarr over HTTP with Range requests) apps can mount.",
    _columns(),
    dataset.DATASET_NAME_MAX,
    "the dataset server's Service '<name>-dataset' is a Service name, at most 63",
)
KINDS = (APP, MODEL_RUNNER, DATASET)


def crd(kind: Kind) -> dict[str, Any]:
    status_schema = structural_schema(kind.status)
    status_schema["x-kubernetes-preserve-unknown-fields"] = True
    status_schema["description"] = "Observed state, written by the operator."
    spec_schema = structural_schema(kind.spec)
    spec_schema["description"] = f"Desired state of the {kind.kind}."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": ["bioengine"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": list(kind.columns),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": kind.description,
                            "required": ["spec"],
                            "x-kubernetes-validations": [kind.name_rule()],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version."},
                                "kind": {"type": "string", "description": "Kind."},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render(kind: Kind) -> str:
    header = "# Generated by `make crds` from bioengine_operator.api; do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=100)


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in KINDS:
        path = directory / f"{kind.plural}.yaml"
        path.write_text(render(kind))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write(Path(sys.argv[1] if len(sys.argv) > 1 else "crds")):
        print(written)
