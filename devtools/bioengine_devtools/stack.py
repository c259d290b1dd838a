"""Everything the bridge needs, running for real on this machine (tests and benchmarks).

A control plane (KubeRay CRDs, no KubeRay operator: the stack plays KubeRay's part, since no
RayService can become Ready under kwok), the operator, a Hypha server, the shipped examples
applied, and their backends as real local processes: two Triton servers for the runner's
blue and green pods, the dataset server over real files, and one Ray Serve running the
apps of ``apps/`` — each rendered from its folder (``bioengine render``), applied, and
deployed from exactly the RayService and ConfigMaps the operator wrote.

Playing KubeRay means: ``serve deploy`` the RayServices' ``serveConfigV2`` (all apps in one
Ray cluster, where KubeRay gives each its own), and copy Serve's application statuses into
each RayService's status as KubeRay does (:meth:`BridgeStack.sync_rayservices`). Playing
the kubelet means: the code ConfigMaps are written out as folders (``items`` applied), a
dataset an app lists is linked under the folder ``BIOENGINE_DATA_DIR`` names, and the
Triton ports are relayed into Ray's network namespace as a Service would be reachable.
The bridge learns where the backends are from an endpoints file, since kwok pods have no
network.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml
import zarr
from hypha_rpc import connect_to_server

from bioengine_devtools import cluster as devcluster
from bioengine_devtools import operator_process, tools
from bioengine_operator import appfolder
from bioengine_operator.api.app import ZIP_PART_KEY
from bioengine_operator.builders import dataset as dataset_builder
from bioengine_operator.builders import meta, rayservice
from bioengine_operator.dataserver import tokens
from bioengine_operator.local import procs, servers

NS = "default"
EXAMPLES = tools.REPO_ROOT / "examples"
BRIDGE_USER = "bioengine-bridge"
WORKSPACE = f"ws-user-{BRIDGE_USER}"  # the bridge user's own workspace: Hypha recreates it
RUNNER, DATASET = "unet-runner", "cell-images"
APPS_DIR = tools.REPO_ROOT / "apps"
TEST_APPS = tools.REPO_ROOT / "tests" / "apps"
# The apps of apps/ the stack runs: the nucleus app guards its methods (alice may segment,
# carol may only read its stats), the composed one reaches the blue Triton, the tile one
# reads the example dataset.
APP, COMPOSED, TILES = "nucleus-segmentation", "probability-segmentation", "zarr-tile-stats"


T = TypeVar("T")


async def eventually(
    attempt: Callable[[], Awaitable[T]], what: str, timeout: float, interval: float
) -> tuple[T, float]:
    """Await ``attempt()`` every ``interval`` seconds until it returns instead of raising:
    its result and the seconds that took (TimeoutError past ``timeout``, with the last error)."""
    started = time.monotonic()
    while True:
        try:
            return await attempt(), time.monotonic() - started
        except Exception as err:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"{what}: not after {timeout:.0f}s: {err!r}") from err
            await asyncio.sleep(interval)


def example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]


def simulate_rayservice_status(
    cluster: devcluster.DevCluster,
    namespace: str,
    name: str,
    ready: bool,
    reason: str,
    applications: dict[str, Any] | None = None,
) -> None:
    """Write the RayService status KubeRay would write (a simulation, named as such);
    ``applications`` are Serve's statuses as KubeRay copies them."""
    cond = {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": reason,
        "message": f"simulated: {reason}",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    upgrade = {**cond, "type": "UpgradeInProgress", "status": "False", "reason": "NoPendingCluster"}
    status: dict[str, Any] = {"conditions": [cond, upgrade], "numServeEndpoints": int(ready)}
    if applications is not None:
        status["activeServiceStatus"] = {
            "rayClusterName": f"{name}-raycluster",
            "applicationStatuses": applications,
        }
    patch = {"status": status}
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


def _cluster_spec(rayservice_body: dict[str, Any]) -> str:
    return json.dumps(rayservice_body["spec"], sort_keys=True)


@dataclasses.dataclass
class BridgeStack:
    """``examples``: the runner, the dataset and the three apps (else none: a cluster for
    apps deployed through the worker); ``hypha``: a server shared with other stacks (one
    workspace over several clusters), else one of its own; ``bridge_args``: extra flags of
    every bridge started (e.g. the worker's)."""

    workdir: Path
    with_app: bool = True
    hypha_deflate: bool = True
    examples: bool = True
    hypha: servers.HyphaServer | None = None
    name: str = "bridge"
    bridge_args: tuple[str, ...] = ()
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
            self.workdir / "cluster", name=self.name, kuberay_operator=False
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
        if self.hypha is None:
            self.hypha = servers.HyphaServer(
                self.workdir,
                secrets.token_urlsafe(32),
                # 64 characters: Hypha refuses shorter root tokens that happen to contain "abc".
                secrets.token_urlsafe(48),
                deflate=self.hypha_deflate,
            )
            self.hypha.start()
            self._stoppers.append(self.hypha.stop)
        self.tritons: dict[str, servers.TritonServer] = {}
        self.deployed: dict[str, str] = {}
        self.applied: set[str] = set()  # apps whose code folder is on Ray's PYTHONPATH
        if self.examples:
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
        self.ray = servers.RayServe(self.workdir)
        mounts = self.workdir / "mounts"
        mounts.mkdir()
        if self.examples:
            (mounts / DATASET).symlink_to(self.workdir / "dataset")
        # One Ray cluster runs every app, where each gets its own on Kubernetes: the folder
        # of each app applied from apps/ and tests/apps/ (whose module names do not clash)
        # is on its PYTHONPATH; apps deployed otherwise (through the worker) bring their
        # code as a working_dir zip.
        folders = sorted(APPS_DIR.glob("*/manifest.yaml")) + sorted(
            TEST_APPS.glob("*/manifest.yaml")
        )
        code = [self.workdir / "code" / path.parent.name for path in folders]
        entry = self.workdir / "entry"
        entry.mkdir()
        for key, text in rayservice.RUNTIME_FILES.items():
            (entry / key).write_text(text)
        self.ray.start([entry, *code], env={"BIOENGINE_DATA_DIR": str(mounts)})
        self._stoppers.append(self.ray.stop)
        if not self.examples:
            return
        self.ray.reach(self.tritons["blue"].grpc_port)
        self._expose_dataset_server()
        for name in (APP, COMPOSED, TILES):
            self.apply_app(APPS_DIR / name, self.app_overrides(name))
        self.deploy_apps()
        for name in (APP, COMPOSED, TILES):
            self.wait_app(name, "Ready")

    def _expose_dataset_server(self) -> None:
        """The dataset server at its Service's name and port inside Ray's namespace, where
        apps read it over HTTP (``bioengine.datasets.get_file``), as in the cluster."""
        assert self.ray is not None
        owner = meta.Owner("BioEngineDataset", DATASET, NS, "")
        address = ("127.0.1.1", dataset_builder.PORT)
        relay = self.ray.expose(address, self.dataset_port, "dataset")
        self._stoppers.append(lambda: procs.stop_group(relay.pid))
        hosts = self.workdir / "hosts"
        name = dataset_builder.server_name(owner)
        hosts.write_text(f"127.0.0.1 localhost\n{address[0]} {name}.{NS}.svc\n")
        self.ray.use_hosts(hosts)

    def app_overrides(self, name: str) -> dict[str, Any]:
        """What a cluster admin would set for the apps here (the rest is each folder's own)."""
        overrides: dict[str, dict[str, Any]] = {
            APP: {
                "authorizedUsers": ["alice"],
                "methods": {"stats": {"authorizedUsers": ["carol"]}},
                "classes": {"NucleusSegmenter": {"initKwargs": {"default_sigma": 2.0}}},
            },
            COMPOSED: {
                "classes": {
                    "TritonModel": {"initKwargs": {"triton_url": self.tritons["blue"].grpc}}
                }
            },
            TILES: {
                "datasets": [DATASET],
                "classes": {"TileStatistics": {"initKwargs": {"dataset": DATASET}}},
            },
        }
        return overrides[name]

    def apply_app(self, folder: Path, overrides: dict[str, Any]) -> str:
        """Render ``folder`` as ``bioengine render`` does, apply it, and write out the code
        ConfigMap as the kubelet mounts it (keys placed by ``items``)."""
        objects = appfolder.render(folder, namespace=NS, overrides=overrides).objects
        self.cluster.apply(objects)
        name = objects[-1]["metadata"]["name"]
        self.wait(lambda: self.cluster.get(NS, "rayservice", name), f"RayService {name}")
        # The operator's runtime ConfigMap is what the Ray pods import.
        runtime = self.cluster.get(NS, "configmap", f"{name}-bioengine-entry")
        assert runtime["data"] == rayservice.RUNTIME_FILES
        target = self.workdir / "code" / name
        shutil.rmtree(target, ignore_errors=True)
        for path, content in self.mounted_code(name).items():
            (target / path).parent.mkdir(parents=True, exist_ok=True)
            (target / path).write_bytes(content)
        self.applied.add(name)
        return str(name)

    @contextlib.contextmanager
    def running_app(self, folder: Path, overrides: dict[str, Any]) -> Iterator[str]:
        """The app of ``folder`` applied (as :meth:`apply_app`) and deployed for as long as
        the block runs; then deleted (:meth:`delete_app`). Its name."""
        name = self.apply_app(folder, overrides)
        try:
            self.deploy_apps()
            yield name
        finally:
            self.delete_app(name)

    def delete_app(self, name: str) -> None:
        """``kubectl delete`` the BioEngineApp; once its RayService is collected, Serve runs
        the other apps only."""
        self.cluster.kubectl("-n", NS, "delete", "bea", name, "--wait=true")
        self.wait(lambda: not self.cluster.get(NS, "rayservice", name), "RayService collected")
        self.deploy_apps()

    def mounted_code(self, name: str) -> dict[str, bytes]:
        """The app's code as a Ray pod finds it at APP_DIR: the code ConfigMap as the kubelet
        mounts it (``items`` placed; a key may be placed twice, for an entry importing the
        folder as a package), or the parts of a zip source joined and unpacked, as its init
        container does."""
        source = self.cluster.get(NS, "bea", name)["spec"]["source"]
        if "zip" in source:
            parts = [self.cluster.get(NS, "configmap", n) for n in source["zip"]["configMaps"]]
            return appfolder.unzip(
                b"".join(base64.b64decode(p["binaryData"][ZIP_PART_KEY]) for p in parts)
            )
        code = self.cluster.get(NS, "configmap", source["configMap"]["name"])
        files = {k: v.encode() for k, v in (code.get("data") or {}).items()}
        files |= {k: base64.b64decode(v) for k, v in (code.get("binaryData") or {}).items()}
        items = source["configMap"].get("items") or [{"key": key, "path": key} for key in files]
        return {item["path"]: files[item["key"]] for item in items}

    def deploy_apps(self) -> None:
        """``serve deploy`` every app's current serveConfigV2, as KubeRay would each one's;
        an app whose code is not on Ray's path gets it as a working_dir zip."""
        applications = []
        self.deployed = {}
        for body in self.cluster.list(NS, "rayservice"):
            name = body["metadata"]["name"]
            if body["metadata"].get("deletionTimestamp"):
                continue
            found = yaml.safe_load(body["spec"]["serveConfigV2"])["applications"]
            if name not in self.applied:  # as bioengine up deploys an app
                code = self.mounted_code(name)
                found = [servers.with_code(a, code, self.workdir / "zips") for a in found]
            applications += found
            self.deployed[name] = _cluster_spec(body)
        self.ray.deploy({"applications": applications})

    def sync_rayservices(self) -> None:
        """Copy Serve's application statuses into the RayServices, as KubeRay does; a
        RayService that is new, gone, or changed (its Serve config, or its pods: new code
        makes a new Ray cluster) is deployed again first."""
        listed = self.cluster.list(NS, "rayservice")
        current = {
            b["metadata"]["name"]: b for b in listed if not b["metadata"].get("deletionTimestamp")
        }
        if {n: _cluster_spec(b) for n, b in current.items()} != self.deployed:
            self.deploy_apps()
        statuses = self.ray.serve_status()
        for name in current:
            app = statuses.get(name)
            if app is None:
                continue
            state = app["status"]
            kuberay = {name: servers.kuberay_status(app)}
            serving = state in ("RUNNING", "UNHEALTHY")
            reason = "NonZeroServeEndpoints" if serving else "Initializing"
            simulate_rayservice_status(self.cluster, NS, name, serving, reason, kuberay)

    def wait_app(self, name: str, phase: str, timeout: float = 300) -> dict[str, Any]:
        """Play KubeRay until the BioEngineApp ``name`` reaches ``phase``; its body."""

        def reached() -> bool:
            self.sync_rayservices()
            return bool(self.cluster.get(NS, "bea", name).get("status", {}).get("phase") == phase)

        self.wait(reached, f"app {name} {phase}", timeout)
        return self.cluster.get(NS, "bea", name)

    # -- the bridge --------------------------------------------------------------------

    def endpoints(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.examples:
            found[f"modelrunner/{NS}/{RUNNER}"] = {c: t.grpc for c, t in self.tritons.items()}
            found[f"bioenginedataset/{NS}/{DATASET}"] = f"http://127.0.0.1:{self.dataset_port}"
        if self.with_app:
            # Every app is a route of the one Serve; its Ray dashboard is that Ray's.
            found[f"bioengineapp/{NS}/*"] = f"http://127.0.0.1:{self.ray.port}/{{name}}"
            # Ray's dashboard, as the bridge reaches it at <app>-head-svc:8265 in a cluster.
            found[f"raydashboard/{NS}/*"] = self.ray.dashboard_url
        return found

    def start_bridge(
        self, extra_args: tuple[str, ...] = (), extra_endpoints: dict[str, Any] | None = None
    ) -> None:
        assert self.hypha is not None
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
                *self.bridge_args,
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
        ids = [RUNNER, DATASET, f"{DATASET}-files"] if self.examples else []
        apps = [APP, COMPOSED, TILES, f"{TILES}-ui"] if self.examples else []
        return [*apps, *ids] if self.with_app else ids

    async def member(self, user: str = "alice", method_timeout: float = 30) -> Any:
        """A Hypha client of ``user``, a member (read) of the bridge's workspace."""
        assert self.hypha is not None
        token = self.hypha.token(user, f"{user}@example.org", WORKSPACE, "read")
        return await connect_to_server(
            {
                "server_url": self.hypha.url,
                "token": token,
                "workspace": WORKSPACE,
                "method_timeout": method_timeout,
            }
        )

    async def registered(self, service_id: str) -> bool:
        """Whether alice, a member of the workspace, finds ``service_id`` there."""
        alice = await self.member()
        try:
            await alice.get_service(f"{WORKSPACE}/{service_id}")
        except Exception:
            return False
        finally:
            await alice.disconnect()
        return True

    async def services_back(self, ids: list[str], timeout: float) -> float:
        """Seconds until alice, a member of the workspace, can get and call every service in
        ``ids`` (each one's ``get_status`` where it has one); TimeoutError past ``timeout``."""

        async def attempt() -> None:
            alice = await self.member()
            try:
                for sid in ids:
                    service = await alice.get_service(f"{WORKSPACE}/{sid}")
                    if "get_status" in service:
                        await service.get_status()
            finally:
                await alice.disconnect()

        return (await eventually(attempt, f"services {ids} back", timeout, 0.25))[1]

    def log_tails(self) -> str:
        logs = sorted(self.workdir.glob("*.log")) + sorted(self.cluster.logs.glob("*.log"))
        return "\n".join(procs.tail(log, 25) for log in logs)
