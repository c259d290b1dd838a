"""A real Kubernetes control plane on this machine, with kwok nodes or a real node.

What runs: etcd, kube-apiserver (TLS, RBAC, service-account tokens), kube-controller-manager,
kube-scheduler, the KubeRay operator with its CRDs, and the nodes:

* ``node_kind="kwok"`` (the default, and the 1100-object scale runs): everything on loopback;
  kwok marks scheduled pods Running and Ready without starting any container, so pods have
  no processes and no network. Pod and node IPs come from 198.18.0.0/15 (reserved for
  benchmarks, never routed) and nothing ever connects to them.
* ``node_kind="real"``: one real node (:mod:`bioengine_devtools.node`: containerd, runc, the
  kubelet, kube-proxy, CNI, CoreDNS) whose pods run images built here
  (:mod:`bioengine_devtools.images`). The control plane runs inside the node's network
  namespace, as it would on a control-plane node, and the API server is relayed to a
  loopback port of the host: clients outside use that address, pods the ``kubernetes``
  Service.

Each component listens on a free port, so two clusters can run side by side, and writes its
log to ``<workdir>/logs/<component>.log``. ``state.json`` in the work directory records the
PIDs so ``python -m bioengine_devtools down`` can stop a cluster that another process started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bioengine_devtools import images as images_mod
from bioengine_devtools import node as node_mod
from bioengine_devtools import pki as pki_mod
from bioengine_devtools import tools
from bioengine_operator.local import netns, procs
from bioengine_operator.local.procs import free_port as free_port  # re-exported: callers use it

KWOK_STAGES = (
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
)
READY_STAGE = "kustomize/stage/pod/fast/pod-ready.yaml"
# kwok's fast pod-ready stage, delayed by this pod annotation (e.g. "2s") where present:
# containers that take a while to become Ready, such as Triton loading its models.
READY_DELAY_ANNOTATION = "bioengine.bioimage.io/kwok-ready-delay"
NAMESPACE = "node-namespace"  # the real node's namespace holder, among the recorded processes
KUBERAY_CRDS = ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml", "ray.io_rayservices.yaml")
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
POD_CIDR = "198.18.0.0/16"
SERVICE_CIDR = node_mod.SERVICE_CIDR
# `make cluster-up` keeps its state here; gitignored.
DEFAULT_WORKDIR = tools.REPO_ROOT / ".devcluster"


@dataclasses.dataclass(frozen=True)
class NodeSpec:
    """A fake node: name, capacity, labels and taints (a GPU pool has a GPU count and taints)."""

    name: str
    cpu: str = "16"
    memory: str = "64Gi"
    gpus: int = 0
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()


# One plain pool, and one GPU spot pool tainted like GKE's (GPU taint plus spot taint).
DEFAULT_NODES = (
    NodeSpec("cpu-node-0", labels={"bioengine.bioimage.io/pool": "cpu"}),
    NodeSpec("cpu-node-1", labels={"bioengine.bioimage.io/pool": "cpu"}),
    NodeSpec(
        "gpu-spot-node-0",
        cpu="8",
        memory="32Gi",
        gpus=4,
        labels={
            "bioengine.bioimage.io/pool": "gpu",
            "nvidia.com/gpu.present": "true",
            "cloud.google.com/gke-spot": "true",
        },
        taints=(
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
            {"key": "cloud.google.com/gke-spot", "value": "true", "effect": "NoSchedule"},
        ),
    ),
)


def node_manifest(node: NodeSpec, index: int) -> dict[str, Any]:
    capacity = {"cpu": node.cpu, "memory": node.memory, "pods": "110"}
    if node.gpus:
        capacity["nvidia.com/gpu"] = str(node.gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **node.labels,
            },
        },
        "spec": {"taints": [dict(t) for t in node.taints]},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": f"198.19.255.{index + 1}"},
                {"type": "Hostname", "address": node.name},
            ],
        },
    }


@dataclasses.dataclass
class DevCluster:
    """One local control plane. Use as a context manager, or ``start()``/``stop()``."""

    workdir: Path
    name: str = "bioengine-dev"
    nodes: Sequence[NodeSpec] = DEFAULT_NODES
    with_kuberay: bool = True  # the KubeRay CRDs ...
    kuberay_operator: bool = True  # ... and its operator (off: tests play KubeRay themselves)
    tie_to_parent: bool = True
    audit: bool = False  # log every request's user, verb and resource to logs/audit.log
    node_kind: str = "kwok"  # or "real": real nodes instead of the kwok nodes
    real_node_count: int = 2
    # The real nodes' images; built (or found in the cache) at start when not given.
    images: dict[str, images_mod.Image] = dataclasses.field(default_factory=dict)
    pids: dict[str, int] = dataclasses.field(default_factory=dict)
    executables: dict[str, str] = dataclasses.field(default_factory=dict)
    _procs: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    # How each component was started and how to tell it is ready, for restart().
    _argv: dict[str, tuple[list[str], dict[str, Any]]] = dataclasses.field(default_factory=dict)
    _ready: dict[str, Any] = dataclasses.field(default_factory=dict)
    api_port: int = 0  # where clients on this machine reach the API server
    etcd_url: str = ""
    pki: pki_mod.Pki = dataclasses.field(init=False)
    # nodes="real": the node's namespaces, the API server's relay, the node and its images
    namespace: node_mod.NodeNamespace | None = None
    real_nodes: list[node_mod.RealNode] = dataclasses.field(default_factory=list)

    @property
    def is_real(self) -> bool:
        return self.node_kind == "real"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def inner_kubeconfig(self) -> Path:
        """The admin kubeconfig of the components (inside the node's namespace when real)."""
        return self.workdir / "inner-kubeconfig" if self.is_real else self.kubeconfig

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    def __enter__(self) -> DevCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        """Start every component and return once each one reports ready."""
        bins = tools.build_all()
        if self.is_real and not self.images:
            self.images = images_mod.Builder().build_all()
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.logs.mkdir(parents=True)
        self.pki = pki_mod.create(self.workdir / "pki")
        self.api_port = free_port()
        try:
            if self.is_real:
                node_mod.remove_cgroups(self.name)  # what a crashed run may have left
                self._start_namespace()
                self.write_kubeconfig(self.inner_kubeconfig, server=self.inner_server)
            self.write_kubeconfig(self.kubeconfig)
            self._start_etcd(bins["etcd"] / "etcd", timeout)
            self._start_apiserver(bins["k8s"] / "kube-apiserver", timeout)
            self._start_controllers(bins["k8s"], timeout)
            if self.is_real:
                self.real_nodes = [
                    node_mod.RealNode(self, i, self.images) for i in range(self.real_node_count)
                ]
                node_mod.start_nodes(self, self.real_nodes, timeout)
            else:
                self._start_kwok(bins["kwok"] / "kwok", timeout)
            if self.with_kuberay:
                self._install_kuberay_crds()
            if self.with_kuberay and self.kuberay_operator:
                self._start_kuberay(bins["kuberay"] / "kuberay-operator", timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every component, newest first, by process group; safe to call twice. A real
        node's namespaces go last: every process left inside ends with them."""
        for name in reversed(list(self.pids)):
            _stop(name, self.pids.pop(name))
            self._procs.pop(name, None)
        if self.namespace is not None:
            self.namespace = None
            node_mod.remove_leftovers(self.name, self.workdir)
        self._save_state()

    def _start_namespace(self) -> None:
        """The real node's namespaces, and the API server's relay to the host's loopback."""
        self.namespace = node_mod.NodeNamespace(
            self.workdir, self.tie_to_parent, node_mod.addresses(self.real_node_count)
        )
        self.namespace.start()
        assert self.namespace.holder is not None
        self._record(NAMESPACE, self.namespace.holder, "unshare")
        relay, self.api_port = netns.relay(
            self.namespace, node_mod.API_PORT, self.logs / "apiserver-relay.log"
        )
        self._record("apiserver-relay", relay, sys.executable)

    @property
    def inner_server(self) -> str:
        """The API server as the components see it."""
        return f"https://127.0.0.1:{node_mod.API_PORT}" if self.is_real else self.server

    def get_inside(self, url: str, context: ssl.SSLContext | None = None) -> bytes:
        """GET ``url`` from where the components run (the node's namespace when real)."""
        if self.namespace is None:
            return _get(url, context)
        return node_mod.in_namespace(self.namespace.net_path, lambda: _get(url, context))

    def restart(self, name: str, down: float = 0.0, timeout: float = 120.0) -> None:
        """Stop one component (``kube-apiserver``, ``etcd``, ...) by its process group, keep
        it down ``down`` seconds, start it again as it was started and wait until it is ready
        (an upgrade or a crash of a control-plane process, for chaos scenarios)."""
        procs.stop_group(self.pids[name])
        if down:
            time.sleep(down)  # the outage itself: what the clients must ride out
        argv, kwargs = self._argv[name]
        self.spawn(name, argv, **kwargs)
        self._wait(name, self._ready[name], timeout)

    def spawn(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process that belongs to this cluster: logged, recorded, stopped with it
        (inside the node's namespaces when the node is real)."""
        self._argv[name] = (argv, kwargs)
        argv = [*(self.namespace.enter() if self.namespace is not None else []), *argv]
        proc = procs.spawn(
            argv, self.logs / f"{name}.log", tie_to_parent=self.tie_to_parent, **kwargs
        )
        # What the process runs, as launched (reading /proc now could race the exec).
        self._record(name, proc, argv[0])
        return proc

    def _record(self, name: str, proc: subprocess.Popen[bytes], executable: str) -> None:
        self._procs[name] = proc
        self.pids[name] = proc.pid
        self.executables[name] = executable
        self._save_state()

    def _wait(self, name: str, check: Any, timeout: float) -> None:
        self._ready[name] = check
        procs.wait_for(check, name, timeout, proc=self._procs[name], log=self.logs / f"{name}.log")

    def _save_state(self) -> None:
        if self.workdir.exists():
            state = {
                "name": self.name,
                "kubeconfig": str(self.kubeconfig),
                "pids": self.pids,
                "executables": {n: self.executables[n] for n in self.pids},
            }
            self.state_file.write_text(json.dumps(state, indent=2))

    # -- components ----------------------------------------------------------------------

    def _start_etcd(self, etcd: Path, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self.spawn(
            "etcd",
            [
                str(etcd),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait(
            "etcd",
            lambda: b'"health":"true"' in self.get_inside(f"{self.etcd_url}/health"),
            timeout,
        )

    def _start_apiserver(self, apiserver: Path, timeout: float) -> None:
        pki = self.pki
        if self.is_real:
            # Inside the node's namespace; the `kubernetes` Service leads pods to the node.
            where = [
                "--bind-address=0.0.0.0",
                f"--advertise-address={node_mod.API_IP}",
                f"--secure-port={node_mod.API_PORT}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                # logs, exec and port-forward: the API server calls the kubelet as an admin
                f"--kubelet-client-certificate={pki.admin_cert}",
                f"--kubelet-client-key={pki.admin_key}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
        else:
            where = [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.api_port}",
                "--authorization-mode=RBAC",
                # The `kubernetes` Service would point at 127.0.0.1, which Endpoints reject;
                # no pod runs to use it anyway.
                "--endpoint-reconciler-type=none",
            ]
        self.spawn(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers={self.etcd_url}",
                *where,
                f"--tls-cert-file={pki.server_cert}",
                f"--tls-private-key-file={pki.server_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--profiling=false",
                *self._audit_flags(),
            ],
        )
        self._wait(
            "kube-apiserver", lambda: _get(f"{self.server}/readyz", self._tls()) == b"ok", timeout
        )

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.log"

    def _audit_flags(self) -> list[str]:
        """Who did what, one JSON line per request (metadata only: no bodies, no secrets)."""
        if not self.audit:
            return []
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    "omitStages": ["RequestReceived"],
                    "rules": [{"level": "Metadata"}],
                }
            )
        )
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ]

    def _start_controllers(self, bindir: Path, timeout: float) -> None:
        kubeconfig = str(self.inner_kubeconfig)
        common = [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
        ]
        cm_port, sched_port = free_port(), free_port()
        self.spawn(
            "kube-controller-manager",
            [
                str(bindir / "kube-controller-manager"),
                *common,
                f"--secure-port={cm_port}",
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--root-ca-file={self.pki.ca_cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # After a restart of the API server this controller manager can take a minute
                # or more to catch up, and would then take the kwok nodes' leases for stale
                # and mark their pods NotReady, which a real kubelet sets back at its next
                # sync but kwok never does.
                "--node-monitor-grace-period=10m",
            ],
        )
        self.spawn(
            "kube-scheduler",
            [
                str(bindir / "kube-scheduler"),
                *common,
                f"--secure-port={sched_port}",
            ],
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        for name, port in (("kube-controller-manager", cm_port), ("kube-scheduler", sched_port)):
            self._wait(
                name,
                lambda p=port: self.get_inside(f"https://127.0.0.1:{p}/healthz", insecure) == b"ok",
                timeout,
            )
        # Pods are refused until the ServiceAccount controller made `default/default`.
        self._wait(
            "kube-controller-manager",
            lambda: self.kubectl("get", "serviceaccount", "default", check=False).returncode == 0,
            timeout,
        )

    def _start_kwok(self, kwok: Path, timeout: float) -> None:
        stages = tools.module_source("sigs.k8s.io/kwok", "kwok")
        ready = yaml.safe_load((stages / READY_STAGE).read_text())
        ready["spec"]["delay"] = {
            "durationMilliseconds": 0,
            "durationFrom": {
                "expressionFrom": f'.metadata.annotations["{READY_DELAY_ANNOTATION}"]'
            },
        }
        ready_stage = self.workdir / "pod-ready-stage.yaml"
        ready_stage.write_text(yaml.safe_dump(ready))
        self.spawn(
            "kwok",
            [
                str(kwok),
                f"--kubeconfig={self.kubeconfig}",
                *(f"--config={stages / stage}" for stage in KWOK_STAGES),
                f"--config={ready_stage}",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                f"--cidr={POD_CIDR}",
            ],
        )
        self.apply([node_manifest(node, i) for i, node in enumerate(self.nodes)])
        names = [f"node/{node.name}" for node in self.nodes]
        self._wait(
            "kwok",
            lambda: (
                self.kubectl(
                    "wait", "--for=condition=Ready", "--timeout=5s", *names, check=False
                ).returncode
                == 0
            ),
            timeout,
        )

    def _install_kuberay_crds(self) -> None:
        crd_dir = tools.module_source("github.com/ray-project/kuberay/ray-operator", "kuberay")
        for crd in KUBERAY_CRDS:
            # Server-side apply: these CRDs are too large for the last-applied annotation.
            self.kubectl("apply", "--server-side", "-f", str(crd_dir / "config/crd/bases" / crd))
        self.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            *(
                f"crd/{crd.removeprefix('ray.io_').removesuffix('.yaml')}.ray.io"
                for crd in KUBERAY_CRDS
            ),
        )

    def _start_kuberay(self, operator: Path, timeout: float) -> None:
        probe = free_port()
        self.spawn(
            "kuberay-operator",
            [
                str(operator),
                f"--metrics-addr=127.0.0.1:{free_port()}",
                f"--health-probe-bind-address=127.0.0.1:{probe}",
                "--enable-leader-election=false",
                "--log-stdout-encoder=console",
            ],
            env={**os.environ, "KUBECONFIG": str(self.inner_kubeconfig)},
        )
        self._wait(
            "kuberay-operator",
            lambda: self.get_inside(f"http://127.0.0.1:{probe}/readyz") == b"ok",
            timeout,
        )

    # -- clients -------------------------------------------------------------------------

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def write_kubeconfig(
        self,
        path: Path,
        cert: Path | None = None,
        key: Path | None = None,
        *,
        server: str | None = None,
    ) -> Path:
        """A kubeconfig for ``server`` (default: the address clients on this machine use;
        components get :attr:`inner_server`) as the admin, or as ``cert``'s subject."""
        if server is None:
            server = self.server if cert is None else self.inner_server
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": self.name,
                    "cluster": {"server": server, "certificate-authority": str(self.pki.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": f"{self.name}-user",
                    "user": {
                        "client-certificate": str(cert or self.pki.admin_cert),
                        "client-key": str(key or self.pki.admin_key),
                    },
                }
            ],
            "contexts": [
                {"name": self.name, "context": {"cluster": self.name, "user": f"{self.name}-user"}}
            ],
            "current-context": self.name,
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return tools.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args], check=check, stdin=stdin
        )

    def get(self, namespace: str, kind: str, name: str) -> dict[str, Any]:
        """The object as JSON, or ``{}`` when it does not exist (yet)."""
        out = self.kubectl("-n", namespace, "get", kind, name, "-o", "json", check=False)
        return dict(json.loads(out.stdout)) if out.returncode == 0 else {}

    def list(self, namespace: str, kind: str) -> list[dict[str, Any]]:
        out = self.kubectl("-n", namespace, "get", kind, "-o", "json")
        return list(json.loads(out.stdout)["items"])

    def apply(self, objects: Sequence[dict[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))

    def log_tails(self, lines: int = 30) -> str:
        return "\n".join(procs.tail(log, lines) for log in sorted(self.logs.glob("*.log")))


def _get(url: str, context: ssl.SSLContext | None = None) -> bytes:
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        return bytes(response.read())


def stop_recorded(workdir: Path) -> list[str]:
    """Stop the processes recorded in ``workdir/state.json`` (a cluster another process started).

    A PID is signalled only while it still runs the executable recorded for it, so a PID the
    kernel has since given to an unrelated program is left alone.
    """
    state_file = workdir / "state.json"
    if not state_file.exists():
        return []
    state = json.loads(state_file.read_text())
    stopped = []
    for name, pid in reversed(list(state["pids"].items())):
        recorded = state["executables"].get(name)
        if recorded and procs.executable_of(pid) == recorded:
            _stop(name, pid)
            stopped.append(name)
    state_file.unlink()
    if NAMESPACE in state["pids"]:
        node_mod.remove_leftovers(state["name"], workdir)
    return stopped


def _stop(name: str, pid: int) -> None:
    """Stop one recorded process by its process group. The real node's namespace holder
    and its PID 1 ignore SIGTERM and hold nothing to flush: SIGKILL, and the kernel ends
    every process in the node's namespaces with them."""
    if name == NAMESPACE:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    procs.stop_group(pid)
