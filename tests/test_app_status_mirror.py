"""An app's status follows its RayService's, including Ready.

Under kwok no RayService can become Ready (KubeRay asks the Ray dashboard in the head pod,
which does not run). So this module runs its own control plane with the KubeRay CRDs but
without the KubeRay operator, and the test writes the RayService status itself, the way
KubeRay would: a simulation of KubeRay's status writes, named as such.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import app_spec, apply, condition, get, resource, status, wait_for

from bioengine_devtools import cluster as devcluster
from bioengine_devtools import operator_process
from bioengine_devtools.stack import simulate_rayservice_status


@pytest.fixture(scope="module")
def no_kuberay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devcluster.DevCluster]:
    workdir = tmp_path_factory.mktemp("no-kuberay")
    with devcluster.DevCluster(workdir, name="no-kuberay", kuberay_operator=False) as dev:
        operator_process.install_crds(dev)
        with operator_process.OperatorProcess(dev, workdir / "operator.log"):
            yield dev


def test_app_ready_follows_rayservice(no_kuberay: devcluster.DevCluster) -> None:
    dev = no_kuberay
    apply(
        dev,
        "default",
        resource(
            "BioEngineApp",
            "mirror",
            app_spec(),
        ),
    )
    wait_for(lambda: get(dev, "default", "rayservice", "mirror"), "RayService created")

    simulate_rayservice_status(dev, "default", "mirror", True, "NonZeroServeEndpoints")
    wait_for(lambda: status(dev, "default", "bea", "mirror").get("phase") == "Ready", "app Ready")
    st = status(dev, "default", "bea", "mirror")
    assert st["ready"] == "True"
    assert condition(st, "RayServiceReady")["reason"] == "NonZeroServeEndpoints"
    assert condition(st, "RayServiceUpgradeInProgress")["status"] == "False"
    assert "deployingSince" not in st

    simulate_rayservice_status(dev, "default", "mirror", False, "ZeroServeEndpoints")

    def lost() -> bool:
        now = status(dev, "default", "bea", "mirror")
        return now.get("phase") == "Deploying" and condition(now, "Ready")["reason"] == (
            "ZeroServeEndpoints"
        )

    wait_for(lost, "loss of readiness mirrored")
    assert status(dev, "default", "bea", "mirror")["deployingSince"]
