"""The backends as local processes: Hypha, Triton and Ray Serve (``bioengine up``, and the
bridge tests and benchmarks).

Each runs from its own virtual environment (:mod:`bioengine_operator.local.envs`) because
their pins conflict, and each is a managed process stopped by process group. Ray binds
every interface, so it runs in a :class:`~bioengine_operator.local.netns.LoopbackNamespace`
and is reached through a relay.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sysconfig
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bioengine_operator import appfolder
from bioengine_operator.local import netns, procs
from bioengine_operator.local.envs import venv
from bioengine_operator.local.procs import free_port

# Hypha server settings for a server that a bridge registers with (also set by the chart).
logger = logging.getLogger(__name__)
DASHBOARD_PORT = 8265  # Ray's dashboard (and Serve's REST API), inside Ray's namespace
BRIDGE_RATE_LIMITS = {"HYPHA_WS_MSG_RATE_LIMIT": "10000", "HYPHA_WS_MSG_BURST_LIMIT": "20000"}


def _site_packages(env: Path) -> Path:
    return next((env / "lib").glob("python3*/site-packages"))


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 (a readiness probe)."""
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


class ManagedServer:
    """A server process owned by a test: stopped by process group, or killed like a crash."""

    proc: subprocess.Popen[bytes] | None

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop_group(self.proc.pid)
            self.proc = None

    def kill(self) -> None:
        """Die abruptly (SIGKILL), as on a node failure."""
        if self.proc is not None:
            os.killpg(self.proc.pid, 9)
            self.stop()


@dataclasses.dataclass
class HyphaServer(ManagedServer):
    """A Hypha server on loopback with a fixed server id and JWT secret, so clients and
    tokens survive a restart. ``deflate=False`` turns off WebSocket per-message deflate."""

    workdir: Path
    jwt_secret: str
    root_token: str
    server_id: str = "bioengine-test"
    deflate: bool = True
    extra_env: dict[str, str] = dataclasses.field(default_factory=dict)  # HYPHA_<ARG> options
    port: int = dataclasses.field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        python = venv("hypha") / "bin" / "python"
        env = {
            **os.environ,
            "HYPHA_JWT_SECRET": self.jwt_secret,
            "HYPHA_SERVER_ID": self.server_id,
            "HYPHA_ROOT_TOKEN": self.root_token,
            # The bridge carries every user's calls on one connection; Hypha's default of
            # 200 messages/s per connection disconnects it under modest load.
            **BRIDGE_RATE_LIMITS,
            **self.extra_env,
        }
        # uvicorn directly: `python -m hypha.server` offers no switch for the deflate setting.
        argv = [
            str(python),
            "-m",
            "uvicorn",
            "hypha.server:app",
            "--host=127.0.0.1",
            f"--port={self.port}",
            "--ws-per-message-deflate",
            str(self.deflate).lower(),
        ]
        log = self.workdir / f"hypha-{self.port}.log"
        self.proc = procs.spawn(argv, log, env=env, cwd=self.workdir)
        procs.wait_for(
            lambda: answers(f"{self.url}/health/readiness"),
            "hypha",
            timeout,
            proc=self.proc,
            log=log,
        )

    def token(
        self, user_id: str, email: str, workspace: str | None = None, permission: str = "read_write"
    ) -> str:
        """A token for ``user_id``, minted offline with the server's JWT secret."""
        return mint_token(self.jwt_secret, user_id, email, workspace, permission)


def mint_token(
    jwt_secret: str,
    user_id: str,
    email: str,
    workspace: str | None = None,
    permission: str = "read_write",
) -> str:
    """A token of a Hypha server for ``user_id``, minted offline from its JWT secret (as
    ``python -m hypha generate-token`` does, in the Hypha environment)."""
    argv = [
        str(venv("hypha") / "bin" / "python"),
        "-m",
        "hypha",
        "generate-token",
        f"--user-id={user_id}",
        f"--email={email}",
        "--role=user",
        f"--permission={permission}",
        "--expires-in=86400",
    ]
    if workspace:
        argv.append(f"--workspace={workspace}")
    out = subprocess.run(
        argv,
        env={**os.environ, "HYPHA_JWT_SECRET": jwt_secret},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return out.strip().splitlines()[-1].split()[-1]


def write_model_repository(files: dict[str, str], destination: Path) -> list[str]:
    """Lay out a ModelRunner ConfigMap (``a__b`` keys for ``a/b``) as a Triton repository.

    The python-backend stub shipped with nvidia-pytriton does not see the venv's packages
    (NumPy), so each ``model.py`` gets that site-packages prepended to ``sys.path``: needed
    for nvidia-pytriton's server (tests, ``bioengine up``), not in a Triton image.
    """
    site = _site_packages(venv("triton"))
    models = set()
    for key, text in files.items():
        path = destination / key.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "model.py":
            text = f"import sys\nsys.path.insert(0, {str(site)!r})\n" + text
        path.write_text(text)
        models.add(key.split("__", 1)[0])
    return sorted(models)


@dataclasses.dataclass
class TritonServer(ManagedServer):
    """tritonserver from nvidia-pytriton, python backend, CPU, explicit model control."""

    workdir: Path
    repository: Path
    models: list[str]
    name: str = "triton"
    grpc_port: int = dataclasses.field(default_factory=free_port)
    http_port: int = dataclasses.field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _backends(self) -> Path:
        """The python backend plus the stub for this Python (pytriton keeps them apart)."""
        pytriton = _site_packages(venv("triton")) / "pytriton" / "tritonserver"
        backends = self.workdir / "triton-backends"
        if not (backends / "python" / "triton_python_backend_stub").exists():
            shutil.copytree(
                pytriton / "backends" / "python", backends / "python", dirs_exist_ok=True
            )
            shutil.copy2(
                pytriton / "python_backend_stubs" / "3.11" / "triton_python_backend_stub",
                backends / "python" / "triton_python_backend_stub",
            )
        return backends

    def start(self, timeout: float = 60.0) -> None:
        site = _site_packages(venv("triton"))
        binary = site / "pytriton" / "tritonserver" / "bin" / "tritonserver"
        libs = f"{site / 'nvidia_pytriton.libs'}:{sysconfig.get_config_var('LIBDIR')}"
        argv = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self._backends()}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={free_port()}",
            "--allow-gpu-metrics=false",
            "--model-control-mode=explicit",
            "--strict-readiness=true",
            *(f"--load-model={m}" for m in self.models),
        ]
        log = self.workdir / f"{self.name}.log"
        self.proc = procs.spawn(argv, log, env={**os.environ, "LD_LIBRARY_PATH": libs})
        procs.wait_for(
            lambda: answers(f"{self.http}/v2/health/ready"),
            self.name,
            timeout,
            proc=self.proc,
            log=log,
        )


def with_code(application: dict[str, Any], files: dict[str, bytes], folder: Path) -> dict[str, Any]:
    """A Serve application (as the operator writes it into ``serveConfigV2``) running
    ``files`` as its ``working_dir``: a zip under ``folder`` named after its content, so
    changed code is a new working_dir, which Serve redeploys (and unchanged code is not)."""
    content = appfolder.zip_of(files, top="app")  # one top folder: Ray strips it
    zipped = folder / f"{application['name']}-{hashlib.sha256(content).hexdigest()[:12]}.zip"
    zipped.parent.mkdir(parents=True, exist_ok=True)
    zipped.write_bytes(content)
    return {**application, "runtime_env": {"working_dir": f"file://{zipped}"}}


def kuberay_status(app: dict[str, Any]) -> dict[str, Any]:
    """One Serve application's status (from the dashboard's API) in the shape KubeRay
    copies into ``RayService.status``, which the operator reads."""
    return {
        "status": app.get("status", ""),
        "message": app.get("message", ""),
        "serveDeploymentStatuses": {
            name: {"status": d.get("status"), "message": d.get("message", "")}
            for name, d in (app.get("deployments") or {}).items()
        },
    }


@dataclasses.dataclass
class RayServe:
    """A Ray head with Serve in a loopback-only namespace, reachable through a relay."""

    workdir: Path
    namespace: netns.LoopbackNamespace | None = None
    head: subprocess.Popen[bytes] | None = None
    relay: subprocess.Popen[bytes] | None = None
    port: int = 0  # host port of the relay to Serve's HTTP proxy
    dashboard_port: int = 0  # host port of the relay to Ray's dashboard (Serve's REST API)

    def start(
        self,
        python_path: list[Path],
        timeout: float = 120.0,
        env: dict[str, str] | None = None,
        num_cpus: int = 8,
    ) -> None:
        """``env``: what a Ray pod's container env would add (the workers inherit it).
        ``num_cpus``: logical CPUs, more than this machine's when several apps' replicas
        share it. A head that crashes while starting is started once more, in a fresh
        namespace: ``ray start`` was seen to abort now and then (SIGABRT from gRPC's poller,
        "epoll_wait error: Bad file descriptor") on a loaded machine."""
        for attempt in (1, 2):
            try:
                self._start(python_path, timeout, env, num_cpus)
                return
            except RuntimeError as err:  # the head exited: a timeout is not retried
                if attempt == 2 or "process exited" not in str(err):
                    raise
                logger.warning("Ray's head exited while starting; starting it again: %s", err)

    def _start(
        self, python_path: list[Path], timeout: float, env: dict[str, str] | None, num_cpus: int
    ) -> None:
        self.relays: list[subprocess.Popen[bytes]] = []
        self.namespace = netns.LoopbackNamespace(self.workdir)
        self.namespace.start()
        ray = venv("ray") / "bin"
        # A short temp dir: Ray's socket paths must stay under the 107-byte limit.
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
        # Apps' pip= requirements: Ray's runtime_env pip installs them inside, through a proxy
        # that reaches the package index and nothing else.
        proxy, proxy_port = netns.index_proxy(
            self.namespace, self.workdir / "index-proxy.log", netns.package_index_hosts()
        )
        self.relays.append(proxy)
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": ":".join(str(p) for p in python_path),
            "PIP_PROXY": f"http://127.0.0.1:{proxy_port}",
            **(env or {}),
        }
        log = self.workdir / "ray.log"
        try:
            self.head = procs.spawn(
                [
                    *self.namespace.enter(),
                    str(ray / "ray"),
                    "start",
                    "--head",
                    "--block",
                    f"--num-cpus={num_cpus}",
                    "--object-store-memory=200000000",
                    f"--temp-dir={self.temp}",
                    "--dashboard-host=127.0.0.1",
                    "--disable-usage-stats",
                ],
                log,
                env=self.env,
            )
            procs.wait_for(
                lambda: self._inside(
                    ["curl", "-sf", f"http://127.0.0.1:{DASHBOARD_PORT}/api/version"]
                ),
                "ray dashboard",
                timeout,
                proc=self.head,
                log=log,
            )
            self.relay, self.port = netns.relay(self.namespace, 8000, self.workdir / "relay.log")
            # Serve's status is read often (every second by `bioengine up`'s supervisor):
            # over a relay, not a process entering the namespace each time.
            dashboard, self.dashboard_port = netns.relay(
                self.namespace, DASHBOARD_PORT, self.workdir / "dashboard.log"
            )
            self.relays.append(dashboard)
        except BaseException:
            self.stop()
            raise

    def _inside(self, argv: list[str]) -> bool:
        assert self.namespace is not None
        result = subprocess.run(
            [*self.namespace.enter(), *argv], capture_output=True, env=self.env, timeout=120
        )
        return result.returncode == 0

    def deploy(self, serve_config: dict[str, Any]) -> None:
        """``serve deploy`` the applications list a RayService's serveConfigV2 holds."""
        config = self.workdir / "serve-config.yaml"
        config.write_text(yaml.safe_dump(serve_config))
        serve = venv("ray") / "bin" / "serve"
        if not self._inside(
            [str(serve), "deploy", str(config), "--address", f"http://127.0.0.1:{DASHBOARD_PORT}"]
        ):
            raise RuntimeError(f"serve deploy failed\n{procs.tail(self.workdir / 'ray.log')}")

    def reach(self, port: int) -> None:
        """Let code inside reach ``127.0.0.1:port`` of the host (as a pod reaches a Service)."""
        assert self.namespace is not None
        log = self.workdir / f"reverse-relay-{port}.log"
        self.relays.append(netns.reverse_relay(self.namespace, port, log))

    def expose(self, address: tuple[str, int], port: int, name: str) -> subprocess.Popen[bytes]:
        """Let code inside reach host ``127.0.0.1:port`` at ``address`` (a loopback address
        and port inside, as a Service's); the caller stops the relay it returns."""
        assert self.namespace is not None
        return netns.reverse_relay(
            self.namespace, port, self.workdir / f"relay-{name}.log", listen=address
        )

    def use_hosts(self, hosts: Path) -> None:
        """Resolve names inside from ``hosts`` (bind-mounted over /etc/hosts in the
        namespace's own mounts; rewrite the file in place to change them)."""
        if not self._inside(["mount", "--bind", str(hosts), "/etc/hosts"]):
            raise RuntimeError("cannot mount a hosts file in Ray's namespace")

    @property
    def logs(self) -> Path:
        """Ray's log folder (``serve/`` holds each replica's log)."""
        return Path(self.temp) / "session_latest" / "logs"

    @property
    def dashboard_url(self) -> str:
        """Ray's dashboard from this machine (where the worker service reads Serve's
        deployments and replica logs, as it reads an app's head Service in a cluster)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def serve_status(self) -> dict[str, Any]:
        """Serve's applications (status, message, deployments) from the dashboard's API
        ({} while it does not answer)."""
        url = f"{self.dashboard_url}/api/serve/applications/"
        try:
            with urllib.request.urlopen(url, timeout=60) as answer:
                return dict(json.loads(answer.read()).get("applications") or {})
        except (OSError, ValueError):  # URLError and timeouts are OSErrors
            return {}

    def stop(self) -> None:
        """Ending the namespace ends all of Ray at once (a graceful ``ray stop`` takes a
        minute here and keeps nothing worth keeping); then the processes on the host side."""
        if self.namespace is not None:
            self.namespace.stop()
            self.namespace = None
        for proc in [*getattr(self, "relays", []), self.relay, self.head]:
            if proc is not None:
                procs.stop_group(proc.pid)
        self.relays, self.relay, self.head = [], None, None
        shutil.rmtree(getattr(self, "temp", ""), ignore_errors=True)
