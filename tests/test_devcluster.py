"""The local control plane behaves like a real cluster where our operator depends on it.

Everything here talks to the real kube-apiserver; pods are simulated by kwok (they are
scheduled, bound and marked Running/Ready, but no container runs), except in the last test,
which starts a real node to crash its owner.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from bioengine_devtools import cluster as devcluster
from bioengine_devtools import node, tools
from bioengine_operator.local import procs

TIMEOUT = 60


def wait_for(condition: Any, what: str, timeout: float = TIMEOUT) -> None:
    procs.wait_for(condition, what, timeout)


def deployment(name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "example.invalid/none:1"}]},
            },
        },
    }


def ready_pods(core: client.CoreV1Api, namespace: str, selector: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    return [
        pod
        for pod in pods
        if pod.status.phase == "Running"
        and pod.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    ]


def test_version_is_stamped(cluster: devcluster.DevCluster) -> None:
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == "v1.34.10"


def test_deployment_pods_become_ready_and_scale(api: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("web", 2))
    wait_for(lambda: len(ready_pods(core, namespace, "app=web")) == 2, "2 ready pods")
    nodes = {pod.spec.node_name for pod in ready_pods(core, namespace, "app=web")}
    assert nodes <= {"cpu-node-0", "cpu-node-1"}, "plain pods must avoid the tainted GPU node"

    apps.patch_namespaced_deployment_scale(
        namespace=namespace, name="web", body={"spec": {"replicas": 4}}
    )
    wait_for(lambda: len(ready_pods(core, namespace, "app=web")) == 4, "scale up to 4")
    wait_for(
        lambda: apps.read_namespaced_deployment("web", namespace).status.ready_replicas == 4,
        "deployment status reports 4 ready",
    )
    apps.patch_namespaced_deployment_scale(
        namespace=namespace, name="web", body={"spec": {"replicas": 1}}
    )
    wait_for(
        lambda: len(core.list_namespaced_pod(namespace, label_selector="app=web").items) == 1,
        "scale down to 1",
    )


def test_owner_deletion_garbage_collects_children(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid, controller=True
    )
    for i in range(3):
        core.create_namespaced_config_map(
            namespace,
            client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=f"child-{i}", owner_references=[ref])
            ),
        )
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="bystander"))
    )
    core.delete_namespaced_config_map("owner", namespace)

    def children_left() -> list[str]:
        names = [cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items]
        return [n for n in names if n.startswith("child-")]

    wait_for(lambda: children_left() == [], "children garbage-collected")
    core.read_namespaced_config_map("bystander", namespace)  # unowned objects stay


def test_deployment_deletion_removes_replicasets_and_pods(
    api: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    apps.create_namespaced_deployment(namespace, deployment("gone", 2))
    wait_for(lambda: len(ready_pods(core, namespace, "app=gone")) == 2, "2 ready pods")
    apps.delete_namespaced_deployment("gone", namespace, propagation_policy="Background")
    wait_for(lambda: not apps.list_namespaced_replica_set(namespace).items, "replicasets collected")
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, "pods collected")


GPU_TOLERATIONS = [
    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    {
        "key": "cloud.google.com/gke-spot",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    },
]


def gpu_pod(name: str, tolerations: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "tolerations": tolerations,
            "containers": [
                {
                    "name": "c",
                    "image": "example.invalid/gpu:1",
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }


def test_gpu_pod_needs_toleration(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, gpu_pod("tolerating", GPU_TOLERATIONS))
    core.create_namespaced_pod(namespace, gpu_pod("intolerant", []))

    def running_on_gpu() -> bool:
        pod = core.read_namespaced_pod("tolerating", namespace)
        return pod.status.phase == "Running" and pod.spec.node_name == "gpu-spot-node-0"

    wait_for(running_on_gpu, "tolerating GPU pod running on the GPU node")

    def unschedulable() -> bool:
        pod = core.read_namespaced_pod("intolerant", namespace)
        return any(
            c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
            for c in pod.status.conditions or []
        )

    wait_for(unschedulable, "GPU pod without toleration reported Unschedulable")
    pod = core.read_namespaced_pod("intolerant", namespace)
    assert pod.spec.node_name is None
    assert pod.status.phase == "Pending"


def rayservice(name: str, workers: list[dict[str, Any]]) -> dict[str, Any]:
    container = {"name": "ray", "image": "rayproject/ray:2.60.0"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name},
        "spec": {
            "serveConfigV2": yaml.safe_dump(
                {"applications": [{"name": "app", "import_path": "model:app", "route_prefix": "/"}]}
            ),
            "rayClusterConfig": {
                "rayVersion": "2.60.0",
                "headGroupSpec": {
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [container]}},
                },
                "workerGroupSpecs": workers,
            },
        },
    }


def worker_group(name: str, replicas: Any, gpus: int = 0) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "ray-worker", "image": "rayproject/ray:2.60.0"}
    spec: dict[str, Any] = {"containers": [container]}
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
        spec["tolerations"] = GPU_TOLERATIONS
    return {
        "groupName": name,
        "replicas": replicas,
        "minReplicas": 0,
        "maxReplicas": 4,
        "rayStartParams": {},
        "template": {"spec": spec},
    }


def test_rayservice_schema_and_kuberay_creates_raycluster(
    cluster: devcluster.DevCluster, namespace: str
) -> None:
    bad = rayservice("bad", [worker_group("cpu", "two")])
    rejected = cluster.kubectl(
        "-n", namespace, "apply", "-f", "-", stdin=yaml.safe_dump(bad), check=False
    )
    assert rejected.returncode != 0
    assert "replicas" in rejected.stderr and "Invalid value" in rejected.stderr

    good = rayservice("seg", [worker_group("cpu", 1), worker_group("gpu", 1, gpus=1)])
    cluster.kubectl("-n", namespace, "apply", "-f", "-", stdin=yaml.safe_dump(good))

    def rayclusters() -> list[dict[str, Any]]:
        out = cluster.kubectl("-n", namespace, "get", "rayclusters", "-o", "json").stdout
        return list(json.loads(out)["items"])

    wait_for(lambda: len(rayclusters()) == 1, "KubeRay creates the RayCluster")
    raycluster = rayclusters()[0]
    assert raycluster["metadata"]["ownerReferences"][0]["kind"] == "RayService"
    groups = {g["groupName"]: g for g in raycluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/gpu": "1"
    }

    def pods_by_group() -> dict[str, str]:
        out = cluster.kubectl("-n", namespace, "get", "pods", "-o", "json").stdout
        return {
            pod["metadata"]["labels"].get("ray.io/group", "?"): pod["spec"].get("nodeName", "")
            for pod in json.loads(out)["items"]
            if pod["status"].get("phase") == "Running"
        }

    wait_for(
        lambda: {"headgroup", "cpu", "gpu"} <= set(pods_by_group()), "head and worker pods run"
    )
    assert pods_by_group()["gpu"] == "gpu-spot-node-0"


def test_rbac_denies_serviceaccount_without_rights(
    cluster: devcluster.DevCluster, namespace: str
) -> None:
    cluster.kubectl("-n", namespace, "create", "serviceaccount", "nobody")
    token = cluster.kubectl("-n", namespace, "create", "token", "nobody").stdout.strip()
    context = ssl.create_default_context(cafile=str(cluster.pki.ca_cert))

    def get_pods() -> int:
        request = urllib.request.Request(
            f"{cluster.server}/api/v1/namespaces/{namespace}/pods",
            headers={"Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return err.code

    assert get_pods() == 403  # authenticated (not 401) but not authorized
    cluster.kubectl(
        "-n", namespace, "create", "role", "pod-reader", "--verb=list", "--resource=pods"
    )
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:nobody",
    )
    wait_for(lambda: get_pods() == 200, "the RoleBinding grants list pods")


def test_tools_cache_is_keyed_by_pins(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    kwok = tools.TOOLS["kwok"]
    before = kwok.cache_dir()
    assert before.name.startswith("kwok-v0.8.0-")
    assert kwok.cache_dir() == before  # stable for the same pins
    monkeypatch.setenv("BIOENGINE_TOOLS_CACHE", str(tmp_path))
    assert kwok.cache_dir().parent == tmp_path


def test_second_cluster_side_by_side_via_cli(cluster: devcluster.DevCluster, tmp_path: Any) -> None:
    """`make cluster-up` / `make cluster-down` (the CLI) next to the session's cluster."""
    workdir = tmp_path / "side"
    cli = [sys.executable, "-m", "bioengine_devtools"]
    args = ["--name", "side", "--workdir", str(workdir)]
    try:
        up = subprocess.run(
            [*cli, "up", *args, "--no-kuberay"], capture_output=True, text=True, timeout=300
        )
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={workdir / 'kubeconfig'}" in up.stdout
        state = json.loads((workdir / "state.json").read_text())
        side = subprocess.run(
            ["kubectl", f"--kubeconfig={workdir / 'kubeconfig'}", "get", "nodes", "-o", "name"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "node/gpu-spot-node-0" in side.stdout
        assert cluster.kubectl("version").returncode == 0  # the first cluster still answers
    finally:
        down = subprocess.run([*cli, "down", *args], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert not any(procs.alive(pid) for pid in state["pids"].values())


CRASHING_OWNER = """
import sys, time
from pathlib import Path
from bioengine_devtools import cluster
dev = cluster.DevCluster(
    Path(sys.argv[1]), name="crash", node_kind="real", real_node_count=1, with_kuberay=False
)
dev.start()
print("up", flush=True)
time.sleep(3600)
"""


def test_a_real_node_leaves_nothing_behind_when_its_owner_is_killed(tmp_path: Path) -> None:
    """A real node's owner SIGKILLed (a crashed pytest): every process of the node and its
    containers ends with it (they live in the node's PID namespace, whose holder dies with
    its owner), its mounts never reach this machine's mount table, and the kubelet's
    cgroups, which are global, go with `down` (or the next start of that cluster)."""
    workdir = tmp_path / "crash"
    owner = subprocess.Popen(
        [sys.executable, "-c", CRASHING_OWNER, str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert owner.stdout is not None
        output = []
        for line in owner.stdout:  # its build and start messages, then "up"
            if line == "up\n":
                break
            output.append(line)
        else:
            raise AssertionError(f"the owner exited before the node was up:\n{''.join(output)}")
        state = json.loads((workdir / "state.json").read_text())
        assert {"node-0-containerd", "node-0-kubelet", "node-namespace"} <= set(state["pids"])
        assert node_processes("crash"), f"no container runs in the node's cgroups: {output}"
        assert str(workdir) not in Path("/proc/self/mountinfo").read_text()
    finally:
        owner.kill()
        owner.wait()
    wait_for(
        lambda: (
            not node_processes("crash")
            and not any(procs.alive(pid) for pid in state["pids"].values())
        ),
        "every process of the node gone",
    )
    assert str(workdir) not in Path("/proc/self/mountinfo").read_text()
    down = subprocess.run(
        [
            sys.executable,
            "-m",
            "bioengine_devtools",
            "down",
            "--name=crash",
            f"--workdir={workdir}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert down.returncode == 0, down.stderr
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{node.cgroup_name('crash')}"))
    assert not list(workdir.glob("node-*/containerd"))  # gigabytes of unpacked images


def node_processes(cluster_name: str) -> list[str]:
    """PIDs in the kubelets' cgroups of ``cluster_name`` (containers and their sandboxes)."""
    top = Path("/sys/fs/cgroup/pids") / node.cgroup_name(cluster_name)
    return [
        pid for procs_file in top.rglob("cgroup.procs") for pid in procs_file.read_text().split()
    ]
