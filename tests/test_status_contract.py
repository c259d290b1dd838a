"""The rules the operator, the bridge and ``bioengine up`` share (``api/status.py``), and
the statuses ``bioengine up`` writes with the operator's models."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest

from bioengine_operator.api import status
from bioengine_operator.api.status import AppStatus, DatasetStatus, ModelRunnerStatus
from bioengine_operator.local.resources import Resource
from bioengine_operator.local.stack import Running


def body(kind: str, name: str = "seg", **spec: Any) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": "lab"}, "spec": spec}


def test_a_service_id_is_the_chosen_id_else_the_manifest_id_else_the_name() -> None:
    assert status.service_id(body("ModelRunner", service={"id": "unet"})) == "unet"
    assert status.service_id(body("BioEngineApp", id="cellpose")) == "cellpose"
    assert status.service_id(body("ModelRunner", id="not-for-runners")) == "seg"


def test_the_workspace_is_the_resources_own_else_the_bridges() -> None:
    elsewhere = body("BioEngineApp", service={"workspace": "ws-other"})
    assert status.served_in(elsewhere, "ws-lab") == "ws-other"
    assert status.qualified_service_id(elsewhere, "ws-lab") == "ws-other/seg"
    assert status.qualified_service_id(body("BioEngineApp"), "ws-lab") == "ws-lab/seg"
    assert status.qualified_service_id(body("BioEngineApp"), None) == "seg"


def test_serviceable_by_kind() -> None:
    def with_status(kind: str, **fields: Any) -> dict[str, Any]:
        return {**body(kind), "status": fields}

    assert status.serviceable(with_status("BioEngineApp", phase="Degraded"))
    assert not status.serviceable(with_status("BioEngineApp", phase="Failed"))
    assert status.serviceable(with_status("ModelRunner", green={"readyReplicas": 1}))
    assert not status.serviceable(with_status("ModelRunner", blue={"readyReplicas": 0}))
    assert status.serviceable(with_status("BioEngineDataset", readyReplicas=1))


def test_a_dataset_id_is_its_manifests_else_its_name() -> None:
    assert status.dataset_id(body("BioEngineDataset", manifest={"id": "cells-2024"})) == (
        "cells-2024"
    )
    assert status.dataset_id(body("BioEngineDataset", manifest={})) == "seg"


def test_every_phase_has_a_serve_status_and_failures_map_to_phases() -> None:
    assert set(status.SERVE_STATUS_OF_PHASE) == set(typing.get_args(status.Phase))
    assert status.failed_app_phase("SmokeTestFailed") == "Failed"
    assert status.failed_app_phase("DeployFailed") == "Failed"
    assert status.failed_app_phase("HealthCheckFailed") == "Degraded"


@pytest.mark.parametrize(
    ("state", "phase"),
    [
        ("Starting", "Deploying"),
        ("Ready", "Ready"),
        ("Degraded", "Degraded"),
        ("Unavailable", "Failed"),
    ],
)
def test_bioengine_up_writes_the_operators_status_models(state: str, phase: str) -> None:
    """What the bridge and the worker service read from ``bioengine up`` validates against
    the models the operator writes with, for every kind."""
    models = {
        "BioEngineApp": AppStatus,
        "ModelRunner": ModelRunnerStatus,
        "BioEngineDataset": DatasetStatus,
    }
    for kind, model in models.items():
        running = Running(Resource(body(kind), "test", {}, Path(".")), "digest")
        running.set(state, "why")
        written = running.status()
        parsed = model.model_validate(written)
        assert parsed.phase == phase
        (ready,) = parsed.conditions
        assert (ready.type, ready.status, ready.message) == (
            "Ready",
            "True" if state == "Ready" else "False",
            "why",
        )
        assert status.serviceable({**body(kind), "status": written}) == (
            state == "Ready" or (kind == "BioEngineApp" and state == "Degraded")
        )
