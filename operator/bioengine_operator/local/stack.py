"""The resources of ``bioengine up`` as processes on this machine, kept equal to the inputs.

What runs, for resources that a cluster would run as pods:

- a BioEngineApp: the Serve application the operator's builder writes into
  ``RayService.serveConfigV2``, deployed to one local Ray (in a loopback-only network
  namespace). Its code and the BioEngine runtime travel as the application's
  ``working_dir`` zip, named after their hash: changed code is a new zip, so Serve
  redeploys that app and leaves the others alone.
- a ModelRunner: a ``tritonserver`` (nvidia-pytriton's, python backend) over the model
  repository. Inside Ray's namespace the runner's Service names
  (``<runner>``, ``<runner>.<namespace>.svc``, ...) resolve to a loopback address of its
  own where its gRPC port (8001) is relayed, so an app's ``triton_url`` is the same as in
  the cluster.
- a BioEngineDataset: the dataset server over the local folder; the folder is what an app
  that lists the dataset finds under ``BIOENGINE_DATA_DIR``.

The bridge registers each resource in Hypha once it serves, as in the cluster.
``apply`` is level-triggered: each resource's digest (spec and files) says whether it
changed, and only what changed is restarted or redeployed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bioengine_operator import conditions
from bioengine_operator.api.app import BioEngineAppSpec
from bioengine_operator.api.base import Condition
from bioengine_operator.api.dataset import BioEngineDatasetSpec
from bioengine_operator.api.serve import serve_condition
from bioengine_operator.api.status import (
    AppStatus,
    ColorStatus,
    CommonStatus,
    DatasetStatus,
    ModelRunnerStatus,
    Phase,
    failed_app_phase,
    qualified_service_id,
    served_in,
    service_id,
)
from bioengine_operator.bridge import hypha, signin
from bioengine_operator.bridge.worker import Worker
from bioengine_operator.builders import dataset as dataset_builder
from bioengine_operator.builders import meta, rayservice, triton
from bioengine_operator.dataserver import tokens
from bioengine_operator.local import envs, procs, servers
from bioengine_operator.local.bridge import LocalBridge
from bioengine_operator.local.resources import Resource
from bioengine_operator.local.worker import LocalObjects

BRIDGE_USER = "bioengine-bridge"
BRIDGE_CLIENT = "bioengine-local-bridge"
# The phase the operator would give what runs here: Starting is Deploying; a runner that
# cannot run (Unavailable) is Failed.
PHASE_OF_STATE: dict[str, Phase] = {
    "Starting": "Deploying",
    "Ready": "Ready",
    "Degraded": "Degraded",
    "Failed": "Failed",
}
# The ports of a runner's and a dataset server's Service, which apps in Ray's namespace reach
# them at, as in the cluster.
SERVICE_PORTS = {"ModelRunner": triton.GRPC_PORT, "BioEngineDataset": dataset_builder.PORT}
SERVER_ID = "bioengine-local"
Key = tuple[str, str, str]
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Remote:
    """A Hypha server of someone else's: the bridge registers there with this token."""

    server_url: str
    workspace: str
    token: str = dataclasses.field(repr=False)


@dataclasses.dataclass
class Running:
    """What runs for one resource, and how it is doing."""

    resource: Resource
    digest: str
    state: str = "Starting"  # Starting, Ready, Degraded, Failed, Unavailable
    message: str = ""
    since: str = dataclasses.field(default_factory=conditions.timestamp)  # last state change
    endpoint: Any = None  # for the bridge: a URL, or blue/green gRPC targets
    processes: list[subprocess.Popen[bytes]] = dataclasses.field(default_factory=list)
    log: Path | None = None
    application: dict[str, Any] | None = None  # an app's Serve application, once built

    def set(self, state: str, message: str = "") -> None:
        """A new state (and why); the time of the change is the Ready condition's."""
        if state != self.state:
            self.since = conditions.timestamp()
        self.state, self.message = state, message

    def body(self) -> dict[str, Any]:
        """The resource as the bridge and the worker service read it: with a uid, as the API
        server gives every object one, and the status the operator would write."""
        meta_ = {**self.resource.body["metadata"], "uid": self.uid}
        return {**self.resource.body, "metadata": meta_, "status": self.status()}

    def status(self) -> dict[str, Any]:
        """The status the operator would write for the resource, made with the same models
        (what the bridge and the worker service read)."""
        ready = self.state == "Ready"
        phase = PHASE_OF_STATE.get(self.state, "Failed")
        condition = Condition(
            type="Ready",
            status="True" if ready else "False",
            reason=self.state,
            message=self.message,
            last_transition_time=self.since,
        )
        kind = self.resource.kind
        status: CommonStatus
        if kind == "BioEngineApp":
            status = AppStatus(phase=phase, conditions=[condition])
        elif kind == "ModelRunner":
            status = ModelRunnerStatus(
                phase=phase,
                conditions=[condition],
                revision=self.digest,
                blue=ColorStatus(ready_replicas=int(ready)),
            )
        else:
            status = DatasetStatus(phase=phase, conditions=[condition], ready_replicas=int(ready))
        return status.dump()

    @property
    def uid(self) -> str:
        """The uid its body gets, as the API server gives every object one (new code, new
        uid: the bridge registers it afresh)."""
        return f"local-{self.digest}"

    def stop(self) -> None:
        for proc in self.processes:
            procs.stop_group(proc.pid)
        self.processes = []


class LocalStack:
    def __init__(
        self,
        state_dir: Path,
        progress: Progress,
        remote: Remote | None = None,
        worker_admins: tuple[str, ...] = (),
    ) -> None:
        self.state = state_dir
        self.worker_admins = worker_admins  # who may deploy through the worker service
        self.logs = state_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.progress, self.remote = progress, remote
        self.running: dict[Key, Running] = {}
        self.hypha: servers.HyphaServer | None = None
        self.ray: servers.RayServe | None = None
        self.bridge: LocalBridge | None = None
        # A runner.s or dataset server.s loopback address inside Ray.s namespace.
        self.addresses: dict[Key, str] = {}
        self.deployed_apps: dict[str, dict[str, Any]] = {}
        # Held by whoever changes the stack: the supervisor's requests, the worker service.
        self.lock = threading.Lock()

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def server_url(self) -> str:
        if self.remote is not None:
            return self.remote.server_url
        assert self.hypha is not None
        return self.hypha.url

    @property
    def started(self) -> bool:
        """Hypha and the bridge run (``start`` succeeded, ``stop`` not yet called)."""
        return self.bridge is not None

    @property
    def workspace(self) -> str:
        return self.remote.workspace if self.remote else f"ws-user-{BRIDGE_USER}"

    def start(self) -> None:
        """Hypha (embedded unless remote) and the bridge."""
        key = tokens.generate_private_key()
        (self.state / dataset_builder.PUBLIC_KEY_FILE).write_text(tokens.public_key_pem(key))
        if self.remote is not None:
            token = self.remote.token
        else:
            envs.ensure("hypha", log=self.progress)
            self.progress("starting Hypha (embedded, 127.0.0.1)")
            self.hypha = servers.HyphaServer(
                self.logs,
                _secret(self.state / "hypha-jwt-secret"),
                secrets.token_urlsafe(48),
                server_id=SERVER_ID,
            )
            try:
                self.hypha.start()
                token = self.hypha.token(BRIDGE_USER, f"{BRIDGE_USER}@example.org")
            except BaseException:
                self.hypha.stop()
                self.hypha = None
                raise
        self.progress(f"connecting the bridge to {self.server_url}, workspace {self.workspace}")
        settings = hypha.Settings(self.server_url, self.workspace, token, BRIDGE_CLIENT)
        self.bridge = bridge = LocalBridge(settings, key)
        objects = LocalObjects(self)
        worker = Worker(
            objects=objects,
            workspace=self.workspace,
            cluster_name="",  # one worker in its workspace: `bioengine-worker`
            client_id=BRIDGE_CLIENT,
            admins=self.worker_admins,
            endpoints=bridge.endpoints,
            session=lambda: bridge.registry.session,
            registered=lambda name: (
                ("BioEngineApp", objects.namespace, name) in bridge.registry.registered
            ),
        )
        bridge.add_service(worker.definition())
        bridge.add_service(signin.definition())

    def stop(self) -> None:
        """Unregister, then stop every process this stack started."""
        if self.bridge is not None:
            try:
                self.bridge.stop()
            except Exception as err:  # Hypha gone or slow: the processes are stopped anyway
                self.progress(f"unregistering the services failed: {err!r}")
            self.bridge = None
        for running in self.running.values():
            running.stop()
        self.running = {}
        if self.ray is not None:
            self.ray.stop()
            self.ray = None
        if self.hypha is not None:
            self.hypha.stop()
            self.hypha = None

    def user_token(self, user: str) -> str:
        """A token for ``user`` (an id or an email) on the embedded Hypha, as a reader of the
        workspace the services are in."""
        if self.hypha is None:
            raise RuntimeError("tokens are minted only by the embedded Hypha")
        email = user if "@" in user else f"{user}@example.org"
        return self.hypha.token(user, email, self.workspace, "read")

    # -- reconciling ----------------------------------------------------------------------

    def apply(self, resources: list[Resource], timeout: float = 900, wait: bool = True) -> None:
        """Start what is new, restart what changed (datasets, then runners, then apps: an
        app may need both), and (``wait``) wait until each serves or has failed."""
        order = {"BioEngineDataset": 0, "ModelRunner": 1, "BioEngineApp": 2}
        given = {r.key for r in resources}
        # Apps not given may mount a dataset that changed: they are checked too.
        others = [r.resource for k, r in self.running.items() if k not in given]
        changed_apps = False
        for resource in sorted([*resources, *others], key=lambda r: order[r.kind]):
            current = self.running.get(resource.key)
            digest = self._digest(resource)
            if current is not None and current.digest == digest:
                continue
            if current is not None:
                self.progress(f"{resource.kind} {resource.name} changed: updating it")
                current.stop()
            running = Running(resource, digest)
            self.running[resource.key] = running
            try:
                if resource.kind == "BioEngineDataset":
                    self._start_dataset(running)
                elif resource.kind == "ModelRunner":
                    self._start_runner(running)
                else:
                    running.application = self._application(running)
                    changed_apps = True
            except Exception as err:  # one resource failing never stops the others
                running.stop()
                running.set("Failed", f"{type(err).__name__}: {err}")
                running.digest = ""  # so that the next `up` tries again
            self._publish(running)
        if changed_apps:
            self._deploy_apps()
        if wait:
            self._wait(timeout)

    def remove(self, key: Key) -> None:
        """Stop a resource and forget it (the worker's ``stop_app``); Serve drops an app
        when it is deployed without it."""
        running = self.running.pop(key, None)
        if running is None:
            return
        running.stop()
        if self.bridge is not None:
            self.bridge.forget(key)
        if key[0] == "BioEngineApp" and self.ray is not None:
            self.deployed_apps.pop(key[2], None)
            self._deploy_apps()

    def _digest(self, resource: Resource) -> str:
        """What the resource's processes depend on: itself, and for an app the datasets it
        mounts (a restarted dataset server has a new address)."""
        digest = resource.digest()
        if resource.kind == "BioEngineApp":
            for name in resource.spec.get("datasets") or []:
                dataset = self.running.get(("BioEngineDataset", resource.namespace, name))
                digest += f"+{dataset.digest if dataset else ''}"
        return hashlib.sha256(digest.encode()).hexdigest()[:16]

    def _publish(self, running: Running) -> None:
        """Tell the bridge the resource's state, as its status would in the cluster."""
        if self.bridge is None:
            return
        self.bridge.observe(running.body(), running.endpoint)

    def _wait(self, timeout: float) -> None:
        """Until every resource serves or has failed, and what serves is registered."""
        deadline = time.monotonic() + timeout
        said = 0.0
        while time.monotonic() < deadline:
            self.refresh()
            pending = [r for r in self.running.values() if r.state == "Starting"]
            registered = self.bridge.registered() if self.bridge else {}
            unregistered = [
                r
                for k, r in self.running.items()
                if r.state == "Ready" and k not in registered and self._served_here(r)
            ]
            if not pending and not unregistered:
                return
            if time.monotonic() - said > 10:
                waiting = [f"{r.resource.name} ({r.message or r.state})" for r in pending]
                waiting += [f"{r.resource.name} (registering in Hypha)" for r in unregistered]
                self.progress("waiting for " + ", ".join(waiting))
                said = time.monotonic()
            time.sleep(0.5)
        self.progress(f"gave up waiting after {timeout:.0f}s; see `bioengine status`")

    def _served_here(self, running: Running) -> bool:
        """Whether the bridge registers the resource (not when it names another workspace)."""
        return served_in(running.resource.body, self.workspace) == self.workspace

    # -- datasets -------------------------------------------------------------------------

    def _start_dataset(self, running: Running) -> None:
        resource = running.resource
        spec = BioEngineDatasetSpec.model_validate(resource.spec)
        owner = meta.Owner(resource.kind, resource.name, resource.namespace, "local")
        folder = self.state / "datasets" / resource.name
        folder.mkdir(parents=True, exist_ok=True)
        manifest = folder / dataset_builder.MANIFEST_FILE
        manifest.write_text(json.dumps(dataset_builder.manifest_document(owner, spec)))
        port = procs.free_port()
        running.log = self.logs / f"dataset-{resource.name}.log"
        self.progress(f"starting the dataset server of {resource.name} over {resource.folder}")
        proc = procs.spawn(
            [
                sys.executable,
                "-m",
                "bioengine_operator.dataserver",
                f"--root={resource.folder}",
                f"--manifest={manifest}",
                f"--token-public-key-file={self.state / dataset_builder.PUBLIC_KEY_FILE}",
                "--host=127.0.0.1",
                f"--port={port}",
            ],
            running.log,
        )
        running.processes.append(proc)
        running.endpoint = f"http://127.0.0.1:{port}"
        self._until_ready(running, f"{running.endpoint}/healthz", proc)
        if self.ray is not None:
            self._expose(running)

    def _until_ready(self, running: Running, url: str, proc: subprocess.Popen[bytes]) -> None:
        try:
            procs.wait_for(
                lambda: servers.answers(url), running.resource.name, 60, proc=proc, log=running.log
            )
        except (RuntimeError, TimeoutError) as err:
            running.set("Failed", str(err).splitlines()[0])
            running.stop()
            return
        running.set("Ready")

    # -- model runners --------------------------------------------------------------------

    def _start_runner(self, running: Running) -> None:
        resource = running.resource
        running.log = self.logs / f"runner-{resource.name}.log"
        try:
            envs.ensure("triton", log=self.progress)
        except RuntimeError as err:
            running.set("Unavailable", f"no tritonserver on this machine (nvidia-pytriton): {err}")
            return
        models = list(resource.spec.get("models") or [])
        if resource.folder is not None:
            repository = resource.folder
        else:
            repository = self.state / "models" / resource.name
            shutil.rmtree(repository, ignore_errors=True)
            files = {k: v.decode() for k, v in resource.files.items()}
            written = servers.write_model_repository(files, repository)
            models = models or written
        self.progress(f"starting tritonserver for {resource.name} (models: {', '.join(models)})")
        server = servers.TritonServer(self.logs, repository, models, name=f"runner-{resource.name}")
        try:
            server.start()
        except (RuntimeError, TimeoutError) as err:
            running.set("Failed", str(err).splitlines()[0])
            server.stop()
            return
        except BaseException:  # stopped meanwhile (Ctrl-C, down)
            server.stop()
            raise
        assert server.proc is not None
        running.processes.append(server.proc)
        running.endpoint = {"blue": server.grpc, "green": server.grpc}
        running.set("Ready")
        if self.ray is not None:
            self._expose(running)

    def _expose(self, running: Running) -> None:
        """Relay a runner's gRPC port or a dataset server's port to a loopback address of its
        own inside Ray's namespace, under its Service's names, so apps reach them at the
        addresses they have in the cluster."""
        assert self.ray is not None
        if running.state != "Ready" or running.resource.kind not in SERVICE_PORTS:
            return
        key = running.resource.key
        address = self.addresses.setdefault(key, f"127.0.1.{len(self.addresses) + 1}")
        if running.resource.kind == "ModelRunner":
            host = running.endpoint["blue"]
        else:
            host = running.endpoint
        port = int(str(host).rsplit(":", 1)[1])
        inside = SERVICE_PORTS[running.resource.kind]
        relay = self.ray.expose((address, inside), port, f"{running.resource.name}-{inside}")
        running.processes.append(relay)
        self._write_hosts()

    def _write_hosts(self) -> None:
        lines = ["127.0.0.1 localhost"]
        for key, address in sorted(self.addresses.items()):
            name, namespace = _service_name(*key), key[1]
            service = f"{name}.{namespace}.svc"
            lines.append(f"{address} {name} {name}.{namespace} {service} {service}.cluster.local")
        hosts = self.state / "hosts"
        with hosts.open("w") as out:  # in place: the bind mount follows the inode
            out.write("\n".join(lines) + "\n")

    # -- apps -----------------------------------------------------------------------------

    def _start_ray(self) -> servers.RayServe:
        envs.ensure("ray", log=self.progress)
        self.progress("starting Ray (in a loopback-only network namespace)")
        ray = servers.RayServe(self.state / "ray")
        ray.workdir.mkdir(parents=True, exist_ok=True)
        try:
            ray.start([], timeout=180)
            self._write_hosts()
            ray.use_hosts(self.state / "hosts")
        except BaseException:
            ray.stop()
            raise
        self.ray = ray
        for running in self.running.values():
            self._expose(running)
        if self.bridge is not None:  # the worker service reads deployments and logs there
            overrides = self.bridge.endpoints.overrides
            overrides[f"raydashboard/{LocalObjects.namespace}/*"] = ray.dashboard_url
        return ray

    def _application(self, running: Running) -> dict[str, Any]:
        """The builder's Serve application, with the app's code as its working_dir zip and
        its datasets' folders under its own BIOENGINE_DATA_DIR."""
        resource = running.resource
        spec = BioEngineAppSpec.model_validate(resource.spec)
        owner = meta.Owner(resource.kind, resource.name, resource.namespace, "local")
        mounts = self.state / "mounts" / resource.name
        shutil.rmtree(mounts, ignore_errors=True)
        mounts.mkdir(parents=True)
        datasets = []
        for name in spec.datasets:
            folder = self.running[("BioEngineDataset", resource.namespace, name)]
            assert folder.resource.folder is not None
            (mounts / name).symlink_to(folder.resource.folder)
            volume = {"hostPath": {"path": str(folder.resource.folder)}}
            # Its Service's address, which Ray's namespace resolves to a relay (_expose).
            server = dataset_builder.endpoint(
                meta.Owner("BioEngineDataset", name, resource.namespace, "local")
            )
            datasets.append(rayservice.MountedDataset(name, server, volume))
        inputs = rayservice.Inputs(datasets=tuple(datasets))
        application = dict(rayservice.serve_config(owner, spec, inputs)["applications"][0])
        application["args"]["envVars"]["BIOENGINE_DATA_DIR"] = str(mounts)
        files = {
            **{k: v.encode() for k, v in rayservice.RUNTIME_FILES.items()},
            **resource.files,
        }
        return servers.with_code(application, files, self.state / "apps")

    def _deploy_apps(self) -> None:
        apps = [r for r in self.running.values() if r.resource.kind == "BioEngineApp"]
        try:
            ray = self.ray or self._start_ray()
        except (RuntimeError, TimeoutError) as err:
            # Ray is never run on every interface instead of in its namespace.
            for running in apps:
                running.set(
                    "Failed",
                    f"Ray did not start: {str(err).splitlines()[0]} (Ray runs in a "
                    "loopback-only network namespace: `unshare --net` as root, or with user "
                    "namespaces)",
                )
                self._publish(running)
            return
        applications = []
        for running in apps:
            if running.application is None:  # failed to build: left out, shown Failed
                continue
            applications.append(running.application)
            running.endpoint = f"http://127.0.0.1:{ray.port}/{running.resource.name}"
            running.log = ray.logs / "serve"
        self.progress(f"deploying {len(applications)} app(s) to Ray Serve")
        try:
            ray.deploy({"applications": applications})
        except (RuntimeError, subprocess.SubprocessError) as err:
            for running in apps:
                running.set("Failed", f"serve deploy: {err}")
                running.digest = ""  # so that the next `up` tries again
                self._publish(running)
            return
        self.deployed_apps = {a["name"]: a for a in applications}

    def refresh(self) -> None:
        """Each app's state from Serve's status, as the operator reads it from KubeRay: a
        replica failing its health check makes its app ``Degraded`` until Serve has replaced
        it (the supervisor calls this between requests too)."""
        if self.ray is None:
            return
        statuses = self.ray.serve_status()
        for running in self.running.values():
            if running.resource.kind == "BioEngineApp":
                self._sync_app(running, statuses.get(running.resource.name) or {})

    def _sync_app(self, running: Running, found: dict[str, Any]) -> None:
        deployed = self.deployed_apps.get(running.resource.name)
        if deployed is None:
            return  # not deployed (it failed before): its state says why
        wanted = deployed["runtime_env"]
        if (found.get("deployed_app_config") or {}).get("runtime_env") != wanted:
            found = {}  # Serve has not taken this version yet: what it says is about another
        app = servers.kuberay_status(found)
        healthy, reason, message = serve_condition(app if found else None)
        if healthy is True:
            new = ("Ready", "")
        elif healthy is False:  # failed to deploy, or deployed and failing health checks
            state = failed_app_phase(reason)
            new = (state, f"{reason}: {message}")
        else:
            new = ("Starting", message or reason)
        if new == (running.state, running.message):
            return
        running.set(*new)
        if running.state == "Ready" and self.bridge is not None:
            # New code may bring new methods: register afresh rather than keep the old list.
            self.bridge.forget(running.resource.key)
        self._publish(running)

    # -- reports --------------------------------------------------------------------------

    def rows(self) -> list[dict[str, str]]:
        """One row per resource: what it is, its state, its Hypha service and page."""
        registered = self.bridge.registered() if self.bridge else {}
        rows = []
        for key, running in sorted(self.running.items()):
            body = running.resource.body
            ids = registered.get(key, [])
            sid = service_id(body)
            page = ""
            if f"{sid}-ui" in [i.rsplit(":", 1)[-1] for i in ids]:
                page = f"{self.server_url}/{self.workspace}/apps/{sid}-ui/"
            rows.append(
                {
                    "kind": running.resource.kind,
                    "name": running.resource.name,
                    "state": running.state,
                    "service": qualified_service_id(body, self.workspace) if ids else "",
                    "page": page,
                    "message": running.message,
                    "log": str(running.log or ""),
                }
            )
        return rows


def _service_name(kind: str, namespace: str, name: str) -> str:
    """The name of a resource's Service in the cluster (what apps connect to)."""
    if kind == "BioEngineDataset":
        return dataset_builder.server_name(meta.Owner(kind, name, namespace, "local"))
    return name


def _secret(path: Path) -> str:
    """A secret kept in the state folder (owner-only), so tokens outlive a restart of the
    stack; written whole or not at all."""
    if path.exists() and path.read_text().strip():
        path.chmod(0o600)
        return path.read_text().strip()
    partial = path.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32))
    partial.replace(path)
    return path.read_text().strip()
