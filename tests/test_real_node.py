"""The real-node lane: the chart and every child running as real pods.

Two real nodes (containerd, runc, kubelets, kube-proxy, CoreDNS; ``bioengine_devtools.node``)
run the images built here from the project's own Dockerfile and pinned requirements
(``bioengine_devtools.images``). ``helm install`` of the chart (operator, bridge and bundled
Hypha as pods with the chart's security settings), ``kubectl apply -f examples/``; then, with
no endpoints file and no status written by the tests, every example service answers through
Hypha, a runner update rolls one color at a time under a stream of calls, and ``kubectl
delete`` cleans up. ``bench/realnode.py`` prints the figures (time to serve, rollout, memory).
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import register_logs
from helpers import events, wait_for

from bioengine_devtools import node as node_mod
from bioengine_devtools import realstack
from bioengine_devtools.realstack import APP, DATASET, NS, RUNNER, SERVICES, WORKSPACE
from bioengine_operator.builders import triton

ROOT = Path(__file__).resolve().parents[1]
# The module's first test also starts the nodes, installs the chart and waits for the apps.
pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[realstack.ChartStack]:
    with (
        realstack.ChartStack(tmp_path_factory.mktemp("real-node")) as running,
        register_logs(running.log_tails),
    ):
        yield running


def test_every_example_serves_through_hypha_from_real_pods(
    stack: realstack.ChartStack,
) -> None:
    found = asyncio.run(stack.call_every_service())
    probe, output = found[RUNNER]
    np.testing.assert_allclose(output, realstack.sigmoid(probe), rtol=1e-6)
    assert "hela.zarr" in {entry["name"] for entry in found[DATASET]}
    status, content_range, body = found[f"{DATASET}-files"]
    assert (status, len(body)) == (206, 10) and content_range.startswith("bytes 0-9/")
    tiles = found[APP]
    assert tiles["shape"] == [512, 512] and len(tiles["tiles"]) == 16
    assert found[f"{APP}-ui"][0] == 200 and b"<html" in found[f"{APP}-ui"][1]

    # Nothing simulated: KubeRay made the RayService Ready from the Ray pods' own dashboard,
    # every pod is a container of a real node, and the pods are spread over both nodes.
    rayservice = stack.cluster.get(NS, "rayservice", APP)
    ready = {c["type"]: c["status"] for c in rayservice["status"]["conditions"]}
    assert ready["Ready"] == "True"
    pods = stack.cluster.list(NS, "pods")
    assert pods and all(p["status"]["containerStatuses"][0]["containerID"] for p in pods)
    assert {p["spec"]["nodeName"] for p in pods} == {"node-0", "node-1"}
    colors = {p["metadata"]["labels"].get(triton.COLOR_LABEL) for p in pods}
    assert {"blue", "green"} <= colors
    registered = asyncio.run(_service_ids(stack))
    assert set(SERVICES) <= registered


async def _service_ids(stack: realstack.ChartStack) -> set[str]:
    alice = await stack.member()
    try:
        return {s["id"].split(":")[-1] for s in await alice.list_services(WORKSPACE)}
    finally:
        await alice.disconnect()


def test_the_chart_pods_run_as_the_chart_says(stack: realstack.ChartStack) -> None:
    """The chart's security settings hold in running containers: not root, a read-only
    root filesystem, no capabilities."""
    for component in ("operator", "bridge", "hypha"):
        deployment = f"deploy/{realstack.FULLNAME}-{component}"
        probe = "id -u; touch /probe 2>&1 || true; grep CapEff /proc/self/status"
        out = stack.cluster.kubectl(
            "-n", realstack.CHART_NS, "exec", deployment, "--", "sh", "-c", probe
        ).stdout
        uid, touched, caps = out.strip().splitlines()
        assert uid == "1000", (component, out)
        assert "Read-only file system" in touched, (component, out)
        assert caps.split()[1] == "0000000000000000", (component, out)


def test_outside_the_node_only_hypha_is_reachable(stack: realstack.ChartStack) -> None:
    """The nodes' addresses exist only inside their namespace; this machine's network
    carries none of them, and Hypha answers on a loopback relay."""
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    node_ranges = [
        ipaddress.ip_network(node_mod.POD_CIDR),
        ipaddress.ip_network(node_mod.SERVICE_CIDR),
    ]
    for line in out.splitlines():
        address = ipaddress.ip_interface(line.split()[3]).ip
        assert not any(address in network for network in node_ranges), line
    assert ipaddress.ip_address(stack.hypha_url.split("//")[1].split(":")[0]).is_loopback


def test_runner_update_rolls_one_color_at_a_time_under_load(
    stack: realstack.ChartStack,
) -> None:
    result = realstack.rollout_under_load(
        stack, {"bioengine.bioimage.io/round": uuid.uuid4().hex[:8]}
    )
    failed = len(result.failed)
    assert failed == 0, f"{failed} of {result.calls} failed, e.g. {result.failed[0][-240:]}"
    assert result.calls > 20
    assert result.steady_pods == 4 and result.peak_pods <= result.steady_pods
    # One color at a time: some pod was Ready and not terminating at every moment (the
    # protocol moves the second color once the first serves with one Ready pod or more).
    assert result.min_ready >= 1, result
    assert result.revision != result.old_revision
    # An update is not a fault: the runner never went Degraded (a Warning Event) on the way.
    warnings = [
        f"{e['reason']}: {e['message']}"
        for e in events(stack.cluster, NS, RUNNER)
        if e["type"] == "Warning" and e["involvedObject"]["kind"] == "ModelRunner"
    ]
    assert not warnings, warnings


def test_kubectl_delete_cleans_up(stack: realstack.ChartStack) -> None:
    """Deleting the examples takes every child and pod with them (owner references and
    garbage collection, no finalizer) and their services out of Hypha."""
    stack.cluster.kubectl("delete", "-f", str(ROOT / "examples"), "--timeout=300s")

    def gone() -> bool:
        left = stack.cluster.kubectl(
            "-n",
            NS,
            "get",
            "pods,deployments,services,rayservices,rayclusters,pdb,configmaps",
            "-l",
            "app.kubernetes.io/part-of=bioengine",
            "-o",
            "name",
        ).stdout
        return not left.strip()

    wait_for(gone, "every child and pod of the examples deleted", timeout=300)
    wait_for(
        lambda: not set(SERVICES) & asyncio.run(_service_ids(stack)),
        "the examples' services gone from Hypha",
        timeout=60,
    )
