"""The chart on real nodes, as a user installs it: for the real-node lane of ``make test``
(``tests/test_real_node.py``) and ``bench/realnode.py``.

A :class:`~bioengine_devtools.cluster.DevCluster` with real nodes; ``helm install`` of the chart
with its bundled Hypha server, the images built here given through the chart's values (the
defaults users get are untouched); a PersistentVolume holding the sample dataset (what a
cluster's storage would provide); ``kubectl apply -f examples/``. From then on nothing is
simulated and nothing is written in anyone's place: the operator, the bridge and Hypha run as
the chart's pods, the runner's Tritons, the dataset server and the app's Ray head and worker
as the operator's and KubeRay's pods; KubeRay makes the RayService Ready from the real Ray.

This process reaches the cluster as a person on the node would: the API server's loopback
relay for ``kubectl`` and ``helm``, and Hypha through a loopback relay to its Service (what an
Ingress would be), with tokens minted from the chart's Hypha secret like an administrator.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

import numpy as np
from hypha_rpc import connect_to_server
from kubernetes import client, config, watch

from bioengine_devtools import cluster as cluster_mod
from bioengine_devtools import images as images_mod
from bioengine_devtools import rollout, tools
from bioengine_devtools.stack import eventually
from bioengine_operator.api.base import GROUP, VERSION
from bioengine_operator.builders import meta
from bioengine_operator.builders.triton import REVISION_LABEL
from bioengine_operator.local import netns, procs, servers

RELEASE = "bioengine"
CHART_NS = "bioengine"  # the chart's namespace
NS = "default"  # where the examples go
WORKSPACE = "bioengine-lab"
CHART = tools.REPO_ROOT / "charts" / "bioengine-operator"
EXAMPLES = tools.REPO_ROOT / "examples"
RUNNER, DATASET, APP = "unet-runner", "cell-images", "zarr-tile-stats"
SERVICES = (RUNNER, DATASET, f"{DATASET}-files", APP, f"{APP}-ui")
FULLNAME = f"{RELEASE}-bioengine-operator"
HYPHA_PORT = 9527  # the chart's default hypha.service.port
SELECTOR = f"{meta.PREFIX}/modelrunner={RUNNER}"
TERMINATED = ("Failed", "Succeeded")


def sigmoid(values: np.ndarray) -> np.ndarray:
    """What the example runner's model computes."""
    return np.asarray(1.0 / (1.0 + np.exp(-values)), dtype=np.float32)


@dataclasses.dataclass
class ChartStack:
    workdir: Path
    cluster: cluster_mod.DevCluster = dataclasses.field(init=False)
    images: dict[str, images_mod.Image] = dataclasses.field(default_factory=dict)
    hypha_url: str = ""
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    _relay: Any = None
    _jwt_secret: str = ""

    def __enter__(self) -> ChartStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 900.0) -> None:
        # Built once: the chart's values name the very images the nodes import.
        self.images = images_mod.Builder().build_all()
        self.cluster = cluster_mod.DevCluster(
            self.workdir / "cluster", name="bioengine-real", node_kind="real", images=self.images
        )
        try:
            began = time.monotonic()
            self.cluster.start(timeout=300)
            self.timings["cluster"] = time.monotonic() - began
            began = time.monotonic()
            self.install()
            self.timings["helm install --wait"] = time.monotonic() - began
            self.add_storage()
            self.cluster.kubectl("apply", "-f", str(EXAMPLES))
            self._relay_hypha()
            self.timings["until serving"] = asyncio.run(self.until_serving(timeout))
            self.timings["helm install to every service callable"] = time.monotonic() - began
        except Exception as err:
            tails = self.log_tails() if self.cluster.pids else ""
            self.stop()
            raise RuntimeError(f"the real-node stack did not start: {err}\n{tails}") from err
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._relay is not None:
            procs.stop_group(self._relay.pid)
            self._relay = None
        self.cluster.stop()

    # -- set-up, as a person would ---------------------------------------------------------

    def helm(self, *args: str) -> str:
        home = self.workdir / "helm"
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        argv = [str(tools.binary("helm")), f"--kubeconfig={self.cluster.kubeconfig}", *args]
        return tools.run(argv, env=env, timeout=900).stdout

    def values(self) -> list[str]:
        """The chart's values of this lane: its bundled Hypha, and the images built here
        (each through the value a user would set for a mirror of their own)."""
        repository, tag = self.images["operator"].ref.rsplit(":", 1)
        hypha, hypha_tag = self.images["hypha"].ref.rsplit(":", 1)
        return [
            f"--set=image.repository={repository}",
            f"--set=image.tag={tag}",
            "--set=hypha.enabled=true",
            f"--set=hypha.image.repository={hypha}",
            f"--set=hypha.image.tag={hypha_tag}",
            f"--set=bridge.hypha.workspace={WORKSPACE}",
            f"--set=operator.tritonImage={self.images['triton'].ref}",
            f"--set=operator.rayImage={self.images['ray'].ref}",
        ]

    def install(self) -> None:
        self.helm(
            "install",
            RELEASE,
            str(CHART),
            f"--namespace={CHART_NS}",
            "--create-namespace",
            "--wait",
            "--timeout=10m",
            *self.values(),
        )

    def add_storage(self) -> None:
        """The sample dataset on a PersistentVolume for the ``cell-images`` claim: a local
        volume both nodes can mount (they share this machine's disk), bound to the claim."""
        data = self.workdir / "cell-images"
        subprocess.run(
            [sys.executable, str(EXAMPLES / "sample_data.py"), str(data)],
            check=True,
            capture_output=True,
        )
        for path in [data, *data.rglob("*")]:  # read by the pods' non-root user
            path.chmod(0o755 if path.is_dir() else 0o644)
        nodes = [node.name for node in self.cluster.real_nodes]
        self.cluster.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolume",
                    "metadata": {"name": DATASET},
                    "spec": {
                        "capacity": {"storage": "1Gi"},
                        "accessModes": ["ReadOnlyMany"],
                        "storageClassName": "",
                        "local": {"path": str(data)},
                        "claimRef": {"namespace": NS, "name": DATASET},
                        "nodeAffinity": {
                            "required": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": "kubernetes.io/hostname",
                                                "operator": "In",
                                                "values": nodes,
                                            }
                                        ]
                                    }
                                ]
                            }
                        },
                    },
                },
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": DATASET, "namespace": NS},
                    "spec": {
                        "storageClassName": "",
                        "accessModes": ["ReadOnlyMany"],
                        "volumeName": DATASET,
                        "resources": {"requests": {"storage": "1Gi"}},
                    },
                },
            ]
        )

    def _relay_hypha(self) -> None:
        service = self.cluster.get(CHART_NS, "service", f"{FULLNAME}-hypha")
        assert self.cluster.namespace is not None
        self._relay, port = netns.relay(
            self.cluster.namespace,
            HYPHA_PORT,
            self.cluster.logs / "hypha-relay.log",
            target_host=service["spec"]["clusterIP"],
        )
        self.hypha_url = f"http://127.0.0.1:{port}"
        secret = self.cluster.get(CHART_NS, "secret", f"{FULLNAME}-hypha")
        self._jwt_secret = base64.b64decode(secret["data"]["HYPHA_JWT_SECRET"]).decode()

    # -- clients ---------------------------------------------------------------------------

    def token(self, user: str = "alice") -> str:
        return servers.mint_token(self._jwt_secret, user, f"{user}@example.org", WORKSPACE, "read")

    async def member(self, user: str = "alice", method_timeout: float = 60) -> Any:
        """A Hypha client of ``user`` (``<user>@example.org``), a member (read) of the
        bridge's workspace."""
        # A reader cannot register hypha-rpc's built-in service; the client logs it and goes on.
        logging.getLogger("RPC").setLevel(logging.CRITICAL)
        return await connect_to_server(
            {
                "server_url": self.hypha_url,
                "token": self.token(user),
                "workspace": WORKSPACE,
                "method_timeout": method_timeout,
            }
        )

    def http(self, service: str, path: str, headers: dict[str, str] | None = None) -> Any:
        """GET an HTTP service of the bridge through Hypha, as alice; the response."""
        request = urllib.request.Request(
            f"{self.hypha_url}/{WORKSPACE}/apps/{service}/{path}",
            headers={"Authorization": f"Bearer {self.token()}", **(headers or {})},
        )
        return urllib.request.urlopen(request, timeout=30)

    async def call_every_service(self) -> dict[str, Any]:
        """One real answer of each example service, as alice sees it."""
        alice = await self.member()
        try:
            probe = np.linspace(-4, 4, 12, dtype=np.float32).reshape(3, 4)
            runner = await alice.get_service(f"{WORKSPACE}/{RUNNER}")
            inferred = await runner.infer(model="unet2d", inputs={"input0": probe})
            dataset = await alice.get_service(f"{WORKSPACE}/{DATASET}")
            app = await alice.get_service(f"{WORKSPACE}/{APP}")
            with self.http(
                f"{DATASET}-files", "files/hela.zarr/zarr.json", {"Range": "bytes=0-9"}
            ) as r:
                ranged = (r.status, r.headers.get("Content-Range"), r.read())
            with self.http(f"{APP}-ui", "") as page:
                ui = (page.status, page.read())
            return {
                RUNNER: (probe, inferred["output0"]),
                DATASET: await dataset.list_files(),
                f"{DATASET}-files": ranged,
                APP: await app.tile_stats(array_path="hela.zarr", tile_size=128),
                f"{APP}-ui": ui,
            }
        finally:
            await alice.disconnect()

    async def until_serving(self, timeout: float) -> float:
        """Seconds until every example service answers through Hypha (TimeoutError past
        ``timeout``, with the last error)."""
        return (await eventually(self.call_every_service, "every service", timeout, 2))[1]

    # -- what happened ----------------------------------------------------------------------

    def log_tails(self) -> str:
        parts = [self.cluster.log_tails(20)]
        for component in ("operator", "bridge", "hypha"):
            out = self.cluster.kubectl(
                "-n", CHART_NS, "logs", f"deploy/{FULLNAME}-{component}", "--tail=30", check=False
            )
            parts.append(f"== {component}\n{out.stdout}{out.stderr}")
        events = self.cluster.kubectl(
            "get", "events", "-A", "--sort-by=.lastTimestamp", check=False
        )
        parts.append("== events\n" + "\n".join(events.stdout.splitlines()[-40:]))
        return "\n".join(parts)

    def node_memory(self) -> dict[str, int]:
        """Resident memory in bytes: the node processes (containerd and the kubelets, with
        kube-proxy) and every pod's containers (the kubelets' cgroups)."""
        node = [
            pid
            for name, pid in self.cluster.pids.items()
            if name.endswith(("-containerd", "-kubelet")) or name == "kube-proxy"
        ]
        pods = 0
        root = Path("/sys/fs/cgroup/memory") / f"bioengine-{self.cluster.name}"
        for node_dir in root.iterdir() if root.is_dir() else []:
            usage = node_dir / "kubepods" / "memory.stat"
            if usage.exists():
                stats = dict(line.split() for line in usage.read_text().splitlines())
                pods += int(stats.get("total_rss", 0)) + int(stats.get("total_cache", 0))
        with_children = [p for pid in node for p in (pid, *procs.descendants(pid))]
        return {"node processes": procs.rss_bytes(with_children), "pods": pods}


@dataclasses.dataclass
class Rollout(rollout.Result):
    min_ready: int = 0  # the fewest Ready runner pods (not terminating) seen meanwhile
    old_revision: str = ""


class PodCounter:
    """A watch of the runner's pods while it runs: the most pods that existed at once
    (terminated ones aside) and the fewest that were Ready and not terminating."""

    def __init__(self, stack: ChartStack) -> None:
        self.core = client.CoreV1Api(
            config.new_client_from_config(config_file=str(stack.cluster.kubeconfig))
        )
        self.pods: dict[str, dict[str, Any]] = {}
        self.peak = 0
        self.min_ready = sys.maxsize
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def __enter__(self) -> PodCounter:
        listed = self.core.list_namespaced_pod(NS, label_selector=SELECTOR)
        assert listed.metadata is not None  # a list always carries its resourceVersion
        for pod in listed.items:
            self._seen("ADDED", self.core.api_client.sanitize_for_serialization(pod))
        self._thread = threading.Thread(
            target=self._watch, args=(listed.metadata.resource_version,), daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.failure is not None:
            raise self.failure

    def _watch(self, version: str) -> None:
        try:
            while not self._stop.is_set():
                stream = watch.Watch().stream(
                    self.core.list_namespaced_pod,
                    NS,
                    label_selector=SELECTOR,
                    resource_version=version,
                    timeout_seconds=2,
                )
                for event in stream:
                    pod = event["raw_object"]
                    version = pod["metadata"]["resourceVersion"]
                    self._seen(event["type"], pod)
        except BaseException as err:  # raised by __exit__
            self.failure = err

    def _seen(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        if kind == "DELETED" or (pod.get("status") or {}).get("phase") in TERMINATED:
            self.pods.pop(name, None)
        else:
            self.pods[name] = pod
        self.peak = max(self.peak, len(self.pods))
        self.min_ready = min(self.min_ready, sum(map(_serving, self.pods.values())))


def _serving(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def rollout_under_load(
    stack: ChartStack, annotations: dict[str, str], callers: int = 4, timeout: float = 600
) -> Rollout:
    """The example runner's pods updated (``spec.podAnnotations``) and rolled out to the
    end by the operator, on the real nodes, while ``callers`` callers keep calling ``infer``
    through Hypha. It ends when the runner is Ready at the new revision with every pod at it
    and Ready."""
    objects = client.CustomObjectsApi(
        config.new_client_from_config(config_file=str(stack.cluster.kubeconfig))
    )
    where = (GROUP, VERSION, NS, "modelrunners", RUNNER)
    # The custom-objects API is typed to return object: it returns the resource's JSON.
    before = cast(dict[str, Any], objects.get_namespaced_custom_object(*where))
    result = Rollout(
        steady_pods=2 * before["spec"]["replicas"], old_revision=before["status"]["revision"]
    )
    with PodCounter(stack) as pods:

        def roll() -> None:
            began = time.monotonic()
            patch = {"spec": {"podAnnotations": annotations}}
            patched = cast(dict[str, Any], objects.patch_namespaced_custom_object(*where, patch))
            generation = patched["metadata"]["generation"]

            def rolled_out() -> bool:
                runner = cast(dict[str, Any], objects.get_namespaced_custom_object(*where))
                status = runner.get("status") or {}
                revision = status.get("revision")
                live = list(pods.pods.values())
                done = (
                    status.get("observedGeneration") == generation
                    and status.get("phase") == "Ready"
                    and revision != result.old_revision
                    and len(live) == result.steady_pods
                    and all(
                        _serving(p) and p["metadata"]["labels"].get(REVISION_LABEL) == revision
                        for p in live
                    )
                )
                if done:
                    result.revision = str(revision)
                return done

            procs.wait_for(rolled_out, "runner rolled out", timeout, interval=0.5)
            result.rollouts = 1
            result.rollout_seconds.append(time.monotonic() - began)

        asyncio.run(
            rollout.under_load(stack.member, f"{WORKSPACE}/{RUNNER}", roll, callers, result)
        )
    result.peak_pods, result.min_ready = pods.peak, pods.min_ready
    return result


def describe(found: dict[str, Any]) -> str:
    """A line per example service: what it answered (for people reading a run)."""
    probe, output = found[RUNNER]
    status, content_range, body = found[f"{DATASET}-files"]
    tiles = found[APP]
    brightest = max(tiles["tiles"], key=lambda t: t["mean"])
    return "\n".join(
        [
            f"{RUNNER}.infer: max |output - sigmoid| = {np.abs(output - sigmoid(probe)).max():.1e}",
            f"{DATASET}.list_files: {', '.join(e['name'] for e in found[DATASET])}",
            f"{DATASET}-files Range: {status} {content_range} {body!r}",
            f"{APP}.tile_stats: {tiles['shape']} in {len(tiles['tiles'])} tiles, brightest "
            f"mean {brightest['mean']:.3f}",
            f"{APP}-ui: {found[f'{APP}-ui'][0]}, {len(found[f'{APP}-ui'][1])} bytes",
        ]
    )
