"""Session-wide fixtures: one real control plane and one operator process for the whole run,
a namespace per test.

When a test fails, the tail of every component's log (API server, controllers, kwok, KubeRay
and the operator) is attached to its report, so CI output shows what each of them said.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from bioengine_devtools import cluster as devcluster
from bioengine_devtools import operator_process, tools
from bioengine_operator.local import procs

# Log tails to attach to a failing test's report, registered by the fixtures that own them.
_LOG_SOURCES: list[Callable[[], str]] = []


@contextlib.contextmanager
def register_logs(source: Callable[[], str]) -> Iterator[None]:
    """Attach ``source()`` to the report of every test that fails inside the block."""
    _LOG_SOURCES.append(source)
    try:
        yield
    finally:
        _LOG_SOURCES.remove(source)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where tests keep what a person looks at afterwards (screenshots): ``test-artifacts/``
    at the repository's root, kept between runs (git ignores it)."""
    folder = tools.REPO_ROOT / "test-artifacts"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devcluster.DevCluster]:
    dev = devcluster.DevCluster(tmp_path_factory.mktemp("cluster"), name="bioengine-test")
    dev.start()
    _LOG_SOURCES.append(dev.log_tails)
    try:
        yield dev
    finally:
        _LOG_SOURCES.remove(dev.log_tails)
        dev.stop()


@pytest.fixture(scope="session")
def api(cluster: devcluster.DevCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(cluster.kubeconfig))


@pytest.fixture(scope="session")
def operator(
    cluster: devcluster.DevCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[operator_process.OperatorProcess]:
    operator_process.install_crds(cluster)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    running = operator_process.OperatorProcess(cluster, log)
    running.start()

    def tail() -> str:
        return procs.tail(log, 60)

    _LOG_SOURCES.append(tail)
    try:
        yield running
    finally:
        _LOG_SOURCES.remove(tail)
        running.stop()


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
    if report.failed:
        for source in _LOG_SOURCES:
            report.sections.append(("component logs", source()))
    return report
