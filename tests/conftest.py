"""Session-wide fixtures: one real control plane for the whole run, a namespace per test.

When a test fails, the tail of every control-plane component's log is attached to its
report, so CI output shows what the API server, controllers, kwok and KubeRay said.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from bioengine_operator.devcluster import cluster as devcluster

_CLUSTER: devcluster.DevCluster | None = None


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devcluster.DevCluster]:
    global _CLUSTER
    dev = devcluster.DevCluster(tmp_path_factory.mktemp("cluster"), name="bioengine-test")
    dev.start()
    _CLUSTER = dev
    try:
        yield dev
    finally:
        _CLUSTER = None
        dev.stop()


@pytest.fixture(scope="session")
def api(cluster: devcluster.DevCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture
def namespace(cluster: devcluster.DevCluster, api: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed and _CLUSTER is not None:
        report.sections.append(("control plane logs", _CLUSTER.log_tails()))
    return report


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
