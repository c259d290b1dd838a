"""Everything the bridge needs, running for real on this machine (tests and benchmarks).

A control plane (KubeRay CRDs, no KubeRay operator: the stack plays KubeRay's status writes,
since no RayService can become Ready under kwok), the operator, a Hypha server, the
shipped examples applied, and their backends as real local processes: two Triton servers
for the runner's blue and green pods, the dataset server over real files, and Ray Serve
running the app from exactly the RayService and ConfigMaps the operator wrote. The bridge
learns where those backends are from an endpoints file, since kwok pods have no network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zarr

from bioengine_devtools import cluster as devcluster
from bioengine_devtools import operator_process, procs, servers, tools
from bioengine_operator.builders import dataset as dataset_builder
from bioengine_operator.dataserver import tokens

NS = "default"
EXAMPLES = tools.REPO_ROOT / "examples"
BRIDGE_USER = "bioengine-bridge"
WORKSPACE = f"ws-user-{BRIDGE_USER}"  # the bridge user's own workspace: Hypha recreates it
APP, RUNNER, DATASET = "cell-segmenter", "unet-runner", "cell-images"


def example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def simulate_rayservice_status(
    cluster: devcluster.DevCluster, namespace: str, name: str, ready: bool, reason: str
) -> None:
    """Write the RayService status KubeRay would write (a simulation, named as such)."""
    cond = {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": reason,
        "message": f"simulated: {reason}",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    upgrade = {**cond, "type": "UpgradeInProgress", "status": "False", "reason": "NoPendingCluster"}
    patch = {"status": {"conditions": [cond, upgrade], "numServeEndpoints": int(ready)}}
    cluster.kubectl(
        "-n",
        namespace,
        "patch",
        "rayservice",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(patch),
    )


@dataclasses.dataclass
class BridgeStack:
    workdir: Path
    with_app: bool = True
    hypha_deflate: bool = True
    procs_: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)

    def wait(self, condition: Any, what: str, timeout: float = 60) -> None:
        procs.wait_for(condition, what, timeout)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._stoppers: list[Any] = []
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        self.cluster = devcluster.DevCluster(
            self.workdir / "cluster", name="bridge", kuberay_operator=False
        )
        self.cluster.start()
        self._stoppers.append(self.cluster.stop)
        operator_process.install_crds(self.cluster)
        # The bridge's dataset token key pair, as the chart makes it: the private key for the
        # bridge, the public key for the operator to hand to dataset servers.
        signing_key = tokens.generate_private_key()
        self.signing_key_file = self.workdir / "bridge-signing-key.pem"
        self.signing_key_file.write_text(tokens.private_key_pem(signing_key))
        self.signing_key_file.chmod(0o600)
        self.public_key_file = self.workdir / "token-public-key.pem"
        self.public_key_file.write_text(tokens.public_key_pem(signing_key))
        self.operator = operator_process.OperatorProcess(
            self.cluster,
            self.workdir / "op.log",
            extra_args=(
                f"--token-public-key-file={self.public_key_file}",
                f"--host-path-prefix={self.workdir}",
            ),
        )
        self.operator.start()
        self._stoppers.append(self.operator.stop)
        self.hypha = servers.HyphaServer(
            self.workdir,
            secrets.token_urlsafe(32),
            # 64 characters: Hypha refuses shorter root tokens that happen to contain "abc".
            secrets.token_urlsafe(48),
            deflate=self.hypha_deflate,
        )
        self.hypha.start()
        self._stoppers.append(self.hypha.stop)
        self._start_runner()
        self._start_dataset()
        if self.with_app:
            self._start_app()
        self.start_bridge()

    def stop(self) -> None:
        for name in list(self.procs_):
            procs.stop_group(self.procs_.pop(name).pid)
        for stopper in reversed(getattr(self, "_stoppers", [])):
            stopper()
        self._stoppers = []

    def __enter__(self) -> BridgeStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- backends ----------------------------------------------------------------------

    def _start_runner(self) -> None:
        objects = example("modelrunner.yaml")
        self.cluster.apply([{**o, "metadata": {**o["metadata"], "namespace": NS}} for o in objects])
        self.wait(
            lambda: self.cluster.get(NS, "mr", RUNNER).get("status", {}).get("phase") == "Ready",
            "runner Ready",
        )
        models = servers.write_model_repository(objects[0]["data"], self.workdir / "models")
        self.tritons = {}
        for color in ("blue", "green"):
            triton = servers.TritonServer(
                self.workdir, self.workdir / "models", models, name=f"triton-{color}"
            )
            triton.start()
            self._stoppers.append(triton.stop)
            self.tritons[color] = triton

    def _start_dataset(self) -> None:
        files = self.workdir / "dataset"
        files.mkdir()
        (files / "README.txt").write_text("HeLa cells, 2 channels.\n")
        self.image = np.random.default_rng(7).random((256, 256), dtype=np.float32)
        array = zarr.create_array(
            store=str(files / "hela.zarr"), shape=self.image.shape, chunks=(64, 64), dtype="float32"
        )
        array[:] = self.image
        dataset = {
            "apiVersion": "bioengine.bioimage.io/v1alpha1",
            "kind": "BioEngineDataset",
            "metadata": {"name": DATASET, "namespace": NS},
            "spec": {
                "source": {"hostPath": {"path": str(files)}},
                "manifest": {
                    "name": "Cell images",
                    "description": "HeLa cells as zarr",
                    "files": [{"path": "hela.zarr", "description": "256 x 256"}],
                    "authorizedUsers": ["alice"],
                },
                "service": {"visibility": "public"},
            },
        }
        self.cluster.apply([dataset])
        # What the dataset server's pod would mount: the ConfigMap the operator wrote.
        name = f"{DATASET}-dataset"
        self.wait(lambda: self.cluster.get(NS, "configmap", name), "dataset ConfigMap")
        config = self.cluster.get(NS, "configmap", name)["data"]
        for key, text in config.items():
            (self.workdir / key).write_text(text)
        self.dataset_port = devcluster.free_port()
        self.procs_["dataserver"] = procs.spawn(
            [
                sys.executable,
                "-m",
                "bioengine_operator.dataserver",
                f"--root={files}",
                f"--manifest={self.workdir / dataset_builder.MANIFEST_FILE}",
                f"--token-public-key-file={self.workdir / dataset_builder.PUBLIC_KEY_FILE}",
                f"--port={self.dataset_port}",
                "--log-format=json",
            ],
            self.workdir / "dataserver.log",
        )
        url = f"http://127.0.0.1:{self.dataset_port}/healthz"
        self.wait(lambda: urllib.request.urlopen(url, timeout=2).status == 200, "dataset server")
        self.wait(
            lambda: self.cluster.get(NS, "bed", DATASET).get("status", {}).get("phase") == "Ready",
            "dataset Ready",
        )

    def _start_app(self) -> None:
        code, app = example("bioengineapp.yaml")
        spec = dict(app["spec"])
        # What cannot run here: pip installs (no network in Ray's namespace), GPUs, the
        # example's dataset. Everything else is the example as shipped.
        spec.pop("runtimeEnv")
        spec.pop("datasets")
        spec["deploymentConfig"] = {"rayActorOptions": {"numCpus": 0.5}}
        spec["rayCluster"] = {}
        self.cluster.apply(
            [
                {**code, "metadata": {**code["metadata"], "namespace": NS}},
                {**app, "metadata": {**app["metadata"], "namespace": NS}, "spec": spec},
            ]
        )
        self.wait(lambda: self.cluster.get(NS, "rayservice", APP), "RayService")
        entry_cm = self.cluster.get(NS, "configmap", f"{APP}-bioengine-entry")
        entry_dir, code_dir = self.workdir / "entry", self.workdir / "code"
        for directory, data in ((entry_dir, entry_cm["data"]), (code_dir, code["data"])):
            directory.mkdir()
            for key, text in data.items():
                (directory / key).write_text(text)
        self.ray = servers.RayServe(self.workdir)
        self.ray.start([entry_dir, code_dir])
        self._stoppers.append(self.ray.stop)
        rayservice = self.cluster.get(NS, "rayservice", APP)
        self.ray.deploy(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
        url = f"http://127.0.0.1:{self.ray.port}/{APP}/__describe__"
        self.wait(lambda: urllib.request.urlopen(url, timeout=5).status == 200, "Serve app", 180)
        simulate_rayservice_status(self.cluster, NS, APP, True, "NonZeroServeEndpoints")
        self.wait(
            lambda: self.cluster.get(NS, "bea", APP).get("status", {}).get("phase") == "Ready",
            "app Ready",
        )

    # -- the bridge --------------------------------------------------------------------

    def endpoints(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            f"modelrunner/{NS}/{RUNNER}": {c: t.grpc for c, t in self.tritons.items()},
            f"bioenginedataset/{NS}/{DATASET}": f"http://127.0.0.1:{self.dataset_port}",
        }
        if self.with_app:
            found[f"bioengineapp/{NS}/{APP}"] = f"http://127.0.0.1:{self.ray.port}/{APP}"
        return found

    def start_bridge(
        self, extra_args: tuple[str, ...] = (), extra_endpoints: dict[str, str] | None = None
    ) -> None:
        token_file = self.workdir / "bridge.token"
        token_file.write_text(self.hypha.token(BRIDGE_USER, "bridge@example.org"))
        token_file.chmod(0o600)
        endpoints = self.workdir / "endpoints.json"
        endpoints.write_text(json.dumps({**self.endpoints(), **(extra_endpoints or {})}))
        self.bridge_log = self.workdir / "bridge.log"
        self.bridge_metrics = f"http://127.0.0.1:{devcluster.free_port()}/metrics"
        env = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig)}
        self.procs_["bridge"] = procs.spawn(
            [
                sys.executable,
                "-m",
                "bioengine_operator.bridge",
                f"--server-url={self.hypha.url}",
                f"--workspace={WORKSPACE}",
                f"--token-file={token_file}",
                f"--endpoints-file={endpoints}",
                f"--signing-key-file={self.signing_key_file}",
                f"--metrics-address={self.bridge_metrics.split('/')[2]}",
                "--call-timeout=60",
                "--log-format=json",
                *extra_args,
            ],
            self.bridge_log,
            env=env,
        )

    def stop_bridge(self, kill: bool = False) -> None:
        proc = self.procs_.pop("bridge")
        if kill:
            os.killpg(proc.pid, 9)
        procs.stop_group(proc.pid)

    def service_ids(self) -> list[str]:
        ids = [RUNNER, DATASET, f"{DATASET}-files"]
        return [APP, *ids] if self.with_app else ids

    def log_tails(self) -> str:
        logs = sorted(self.workdir.glob("*.log")) + sorted(self.cluster.logs.glob("*.log"))
        return "\n".join(procs.tail(log, 25) for log in logs)
