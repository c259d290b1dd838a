"""Real Kubernetes nodes on this machine: containerd, runc and the kubelet per node, with
kube-proxy, CNI bridge networking and CoreDNS, in namespaces of their own
(``DevCluster(node_kind="real")``).

Where they live: one holder process (:class:`NodeNamespace`) makes a network, PID and mount
namespace; the nodes and the whole control plane run inside, entered with ``nsenter``:

* network: the kubelet refuses a loopback node address, and nothing may be bound on this
  machine's own interfaces, so each node's address (:attr:`RealNode.ip`) sits on the
  namespace's loopback and its pods get addresses of its own /24 on a CNI bridge of its own
  inside it. The nodes share the namespace as two hosts share a routed network: pods of one
  reach pods of the other, and one kube-proxy programs every Service into its iptables.
  Nothing is added to the host's network: clients outside reach the API server (and, in
  tests, Hypha) only through loopback relays.
* two nodes, not one: each kubelet reports this machine's 2 CPUs, and the operator, the
  bridge, Hypha, a model runner's two colors and an app's Ray cluster ask for more than 2
  together; two nodes also spread pods over nodes, as a cluster does.
* PID: the holder's child, PID 1 inside, is the pause binary (it reaps orphans such as
  containerd's shims). When the holder dies (stopped, or its owner killed: it gets SIGKILL
  with its parent) the kernel ends every process inside, containers included.
* mounts: private, so what the kubelets and containerd mount (volumes, pod network
  namespaces) vanishes with the namespace and never reaches the host's mount table. The
  places they write by fixed paths are the namespace's own: ``/run`` a tmpfs (containerd's
  and the shims' sockets, runc's state), ``/var/lib`` and ``/var/log`` folders of the
  cluster's work directory (the kubelets' root directories, the CNI cache, pod logs).
  Node processes resolve names through the cluster DNS (KubeRay asks Ray dashboards by
  Service name, as it would in a pod).

What stays on the host after a crash is only the kubelets' cgroups (cgroupfs is global),
under ``/<cgroup subsystem>/bioengine-<cluster>``, and files in the cluster's work directory:
:func:`remove_cgroups` clears the cgroups before a start, :func:`remove_leftovers` the cgroups
and the containerds' unpacked images after a stop (and at ``down``).

Settings that mattered on this machine (a VM, cgroup v1, root without CAP_SYS_RESOURCE) are
commented where they are set; ../shared/PLATFORM.md "A real node" has the measurements.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from bioengine_devtools import images as images_mod
from bioengine_devtools import pki as pki_mod
from bioengine_devtools import tools
from bioengine_operator.local import netns, procs

if TYPE_CHECKING:
    from bioengine_devtools.cluster import DevCluster

POD_CIDR = "198.18.0.0/16"  # node i's pods: 198.18.i.0/24; node addresses: 198.18.255.x
SERVICE_CIDR = "198.19.0.0/16"  # every dev cluster's Services
CLUSTER_DNS = "198.19.0.10"
CLUSTER_DOMAIN = "cluster.local"
API_PORT = 6443  # the API server's port inside the namespace, on every address
API_IP = "198.18.255.1"  # the first node's address: the control plane's host
CGROUP_ROOT = Path("/sys/fs/cgroup")
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
NODE_LABELS = {"bioengine.bioimage.io/pool": "cpu"}
T = TypeVar("T")


class NodeNamespace(netns.LoopbackNamespace):
    """The node's network, PID and mount namespaces (see the module docstring)."""

    def __init__(self, workdir: Path, tie_to_parent: bool, addresses: list[str]) -> None:
        super().__init__(workdir, tie_to_parent)
        self.addresses = addresses
        self.resolv_conf = workdir / "node-resolv.conf"
        self.var = workdir / "node-var"  # the namespace's /var/lib and /var/log

    def script(self) -> str:
        for name in ("lib", "log"):
            (self.var / name).mkdir(parents=True, exist_ok=True)
        self.resolv_conf.write_text(
            f"nameserver {CLUSTER_DNS}\n"
            f"search default.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
            "options ndots:5\n"
        )
        return " && ".join(
            [
                "set -e",
                "ip link set lo up",
                *(f"ip addr add {address}/32 dev lo" for address in self.addresses),
                # Services are reached from the node itself too (KubeRay asks Ray dashboards
                # by Service): a route for the range lets kube-proxy's NAT rewrite it.
                f"ip route add {SERVICE_CIDR} dev lo src {API_IP}",
                # Pods reach each other and the node only if the namespace forwards.
                "sysctl -qw net.ipv4.ip_forward=1",
                f"mount --bind {self.resolv_conf} /etc/resolv.conf",
                "mount -t tmpfs -o mode=0755 node-run /run",
                f"mount --bind {self.var / 'lib'} /var/lib",
                f"mount --bind {self.var / 'log'} /var/log",
                f"exec {tools.binary('pause')}",
            ]
        )


def in_namespace(net_path: str, call: Callable[[], T]) -> T:
    """Run ``call`` on a thread that joined the network namespace at ``net_path``, so that
    the sockets it opens are the namespace's (setns changes only the calling thread)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            netns.setns(net_path)
            outcome["value"] = call()
        except BaseException as err:  # handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=target, name="in-node-namespace", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def cgroup_name(cluster_name: str) -> str:
    return f"bioengine-{cluster_name}"


def remove_cgroups(cluster_name: str) -> None:
    """Remove the kubelet's cgroups of this cluster (deepest first); their processes are gone
    with the node's PID namespace. A cgroup still holding a process is left and named."""
    busy: list[str] = []
    for subsystem in CGROUP_ROOT.iterdir():
        top = subsystem / cgroup_name(cluster_name)
        if not top.is_dir():
            continue
        for directory in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
        ):
            _rmdir(directory, busy)
        _rmdir(top, busy)
    if busy:
        raise RuntimeError(f"cgroups still in use: {', '.join(busy[:5])}")


def remove_leftovers(cluster_name: str, workdir: Path) -> None:
    """What the nodes leave once their namespaces are gone: the kubelets' cgroups, and the
    containerds' roots (every image unpacked, gigabytes per node); the logs stay."""
    remove_cgroups(cluster_name)
    for root in workdir.glob("node-*/containerd"):
        shutil.rmtree(root, ignore_errors=True)


def _rmdir(directory: Path, busy: list[str]) -> None:
    # A cgroup whose last process just exited can stay busy for a moment.
    for _ in range(50):
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
    busy.append(str(directory))


def make_cgroups(cluster_name: str, node_name: str) -> str:
    """A kubelet's --cgroup-root, which must exist in every hierarchy (a new cpuset cgroup
    needs its CPUs and memory nodes before anything can join it); returned as the kubelet
    names it."""
    path = f"{cgroup_name(cluster_name)}/{node_name}"
    for subsystem in CGROUP_ROOT.iterdir():
        if subsystem.name == "unified" or not (subsystem / "cgroup.procs").exists():
            continue
        parent = subsystem
        for part in path.split("/"):
            directory = parent / part
            directory.mkdir(exist_ok=True)
            if subsystem.name == "cpuset":
                for name in ("cpuset.cpus", "cpuset.mems"):
                    (directory / name).write_text((parent / name).read_text())
            parent = directory
    return f"/{path}"


def addresses(count: int) -> list[str]:
    return [f"198.18.255.{index + 1}" for index in range(count)]


@dataclasses.dataclass
class RealNode:
    """containerd and the kubelet of node ``index``, started through ``cluster``."""

    cluster: DevCluster
    index: int
    images: dict[str, images_mod.Image]

    @property
    def name(self) -> str:
        return f"node-{self.index}"

    @property
    def ip(self) -> str:
        return addresses(self.index + 1)[-1]

    @property
    def pod_cidr(self) -> str:
        return f"198.18.{self.index}.0/24"

    @property
    def dir(self) -> Path:
        return self.cluster.workdir / self.name

    @property
    def socket(self) -> Path:
        """containerd's socket, inside the namespace (a short path: sockets' are limited)."""
        return Path("/run/containerd") / f"{self.name}.sock"

    def start_runtime(self, timeout: float) -> None:
        """containerd, with every image imported."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._start_containerd(timeout)
        self._import_images()

    def start_kubelet(self, timeout: float) -> None:
        cert = pki_mod.client_cert(
            self.cluster.pki, self.name, f"/O=system:nodes/CN=system:node:{self.name}"
        )
        kubelet = tools.build(tools.TOOLS["k8s"]) / "kubelet"
        self._start_kubelet(kubelet, cert, make_cgroups(self.cluster.name, self.name), timeout)

    # -- containerd ----------------------------------------------------------------------

    def _start_containerd(self, timeout: float) -> None:
        base = self.dir / "containerd"
        base.mkdir(parents=True, exist_ok=True)
        cni = self.dir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        (cni / "net.d" / "10-bioengine.conflist").write_text(json.dumps(self._cni_config()))
        cri = {
            "sandbox_image": self.images["pause"].ref,
            # Streaming (logs, exec, port-forward) answers the API server inside the node.
            "stream_server_address": "127.0.0.1",
            "stream_server_port": "0",
            # The VM refuses negative OOM scores and has no AppArmor.
            "restrict_oom_score_adj": True,
            "disable_apparmor": True,
            # Pod network namespaces under the state folder, not the host's /var/run/netns.
            "netns_mounts_under_state_dir": True,
            "containerd": {
                "snapshotter": "overlayfs",
                "default_runtime_name": "runc",
                "runtimes": {
                    "runc": {
                        "runtime_type": "io.containerd.runc.v2",
                        # runc's state apart from the other node's containerd
                        "options": {"SystemdCgroup": False, "Root": str(base / "runc")},
                    }
                },
            },
            "cni": {"bin_dir": str(CNI_BIN), "conf_dir": str(cni / "net.d")},
        }
        config = {
            "version": 2,
            "root": str(base / "root"),
            "state": str(base / "state"),
            "grpc": {"address": str(self.socket)},
            "disabled_plugins": [
                "io.containerd.internal.v1.opt",
                "io.containerd.snapshotter.v1.aufs",
                "io.containerd.snapshotter.v1.btrfs",
                "io.containerd.snapshotter.v1.devmapper",
                "io.containerd.snapshotter.v1.zfs",
                "io.containerd.tracing.processor.v1.otlp",
            ],
            "plugins": {"io.containerd.grpc.v1.cri": cri},
        }
        path = base / "config.toml"
        path.write_text(_toml(config))
        self.cluster.spawn(f"{self.name}-containerd", ["containerd", f"--config={path}"])
        self.cluster._wait(
            f"{self.name}-containerd",
            lambda: self.ctr("version", check=False).returncode == 0,
            timeout,
        )

    def _cni_config(self) -> dict[str, Any]:
        return {
            "cniVersion": "0.4.0",
            "name": "bioengine",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": f"cni{self.index}",
                    "isGateway": True,
                    "ipMasq": False,  # nowhere to masquerade to: no route out of the node
                    "hairpinMode": True,  # a pod reaches itself through its Service
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(self.dir / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.cluster.namespace is not None
        enter = self.cluster.namespace.enter()
        ctr = ["ctr", f"--address={self.socket}", "--namespace=k8s.io", *args]
        return tools.run([*enter, *ctr], check=check, timeout=600)

    def _import_images(self) -> None:
        """Every image from its archive, in parallel: no registry is ever asked."""
        _in_parallel(
            lambda image: self.ctr("images", "import", str(image.archive)),
            [i for name, i in self.images.items() if name != "base"],  # no pod runs base
        )

    # -- kubelet -------------------------------------------------------------------------

    def _start_kubelet(
        self, kubelet: Path, cert: tuple[Path, Path], cgroup_root: str, timeout: float
    ) -> None:
        root = f"/var/lib/kubelet/{self.name}"  # the namespace's /var/lib
        kubeconfig = self.cluster.write_kubeconfig(self.dir / "kubelet.kubeconfig", *cert)
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.ip,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": self.ip,
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.cluster.pki.ca_cert)},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": cgroup_root,
            # This machine has cgroup v1 only; 1.35 turns this default to true.
            "failCgroupV1": False,
            "failSwapOn": False,
            # iptables chains are kube-proxy's business; the VM cannot lower OOM scores.
            "makeIPTablesUtilChains": False,
            "oomScoreAdj": 0,
            "clusterDNS": [CLUSTER_DNS],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": "",  # pods get the cluster DNS only; this machine's resolver stays out
            "volumePluginDir": str(self.dir / "volume-plugins"),
            # A shared development disk: evict only when it is really full.
            "evictionHard": {
                "memory.available": "200Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
                "nodefs.inodesFree": "2%",
            },
            "imageGCHighThresholdPercent": 99,
            "imageGCLowThresholdPercent": 98,
            "serializeImagePulls": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "nodeStatusReportFrequency": "10s",
        }
        path = self.dir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        labels = ",".join(f"{k}={v}" for k, v in NODE_LABELS.items())
        self.cluster.spawn(
            f"{self.name}-kubelet",
            [
                str(kubelet),
                f"--config={path}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={root}",
                f"--cert-dir={self.dir / 'kubelet-pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.ip}",
                f"--node-labels={labels}",
                "--v=1",
            ],
        )
        self.cluster._wait(
            f"{self.name}-kubelet",
            lambda: kubectl_ok(self.cluster, "wait", "--for=condition=Ready", f"node/{self.name}"),
            timeout,
        )


def start_nodes(cluster: DevCluster, nodes: list[RealNode], timeout: float) -> None:
    """The nodes' runtimes (image imports in parallel), kubelets, kube-proxy and the DNS."""
    _in_parallel(lambda node: node.start_runtime(timeout), nodes)
    for node in nodes:
        node.start_kubelet(timeout)
    start_kube_proxy(cluster, timeout)
    install_dns(cluster, nodes[0].images["coredns"].ref, timeout)


def start_kube_proxy(cluster: DevCluster, timeout: float) -> None:
    """One kube-proxy for the namespace the nodes share: Services for every pod."""
    cert = pki_mod.client_cert(cluster.pki, "kube-proxy", "/CN=system:kube-proxy")
    kubeconfig = cluster.write_kubeconfig(cluster.workdir / "kube-proxy.kubeconfig", *cert)
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": "node-0",
        "clusterCIDR": POD_CIDR,
        "bindAddress": API_IP,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        # Leave the kernel's conntrack sysctls alone: they are not the namespace's own.
        "conntrack": {"maxPerCore": 0, "min": 0},
    }
    path = cluster.workdir / "kube-proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    proxy = tools.build(tools.TOOLS["k8s"]) / "kube-proxy"
    cluster.spawn("kube-proxy", [str(proxy), f"--config={path}"])
    cluster._wait(
        "kube-proxy",
        lambda: cluster.get_inside("http://127.0.0.1:10256/healthz").startswith(b"{"),
        timeout,
    )


def install_dns(cluster: DevCluster, image: str, timeout: float) -> None:
    cluster.apply(coredns_manifests(image))
    procs.wait_for(
        lambda: kubectl_ok(
            cluster, "-n", "kube-system", "wait", "--for=condition=Available", "deployment/coredns"
        ),
        "coredns",
        timeout,
        proc=cluster._procs["kube-proxy"],
        log=cluster.logs / "node-0-kubelet.log",
    )


def kubectl_ok(cluster: DevCluster, *args: str) -> bool:
    return cluster.kubectl(*args, "--timeout=5s", check=False).returncode == 0


def _in_parallel(call: Callable[[Any], object], items: list[Any]) -> None:
    """``call`` on every item, each in a thread of its own; the first error is raised."""
    with concurrent.futures.ThreadPoolExecutor(max(1, len(items))) as pool:
        for future in [pool.submit(call, item) for item in items]:
            future.result()


def coredns_manifests(image: str) -> list[dict[str, Any]]:
    """Cluster DNS as clusters ship it: a Deployment in kube-system behind a Service at
    :data:`CLUSTER_DNS`, reading Services and EndpointSlices with a role of its own. It
    listens on 1053 as a non-root user; the Service maps port 53 to it."""
    labels = {"k8s-app": "kube-dns"}
    meta = {"name": "coredns", "namespace": "kube-system"}
    corefile = f"""\
.:1053 {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
    loadbalance
}}
"""
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "bioengine-dev:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "bioengine-dev:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "bioengine-dev:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", **meta}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": corefile}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {**meta, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "dnsPolicy": "Default",
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 65532,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "coredns",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "args": ["-conf", "/etc/coredns/Corefile"],
                                "ports": [
                                    {"name": "dns", "containerPort": 1053, "protocol": "UDP"},
                                    {"name": "dns-tcp", "containerPort": 1053},
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/ready", "port": 8181},
                                    "periodSeconds": 2,
                                },
                                "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                                "resources": {
                                    "requests": {"cpu": "50m", "memory": "64Mi"},
                                    "limits": {"memory": "128Mi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                            }
                        ],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {
                "clusterIP": CLUSTER_DNS,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"},
                ],
            },
        },
    ]


def _toml(config: dict[str, Any], prefix: str = "") -> str:
    """The subset of TOML containerd's config needs: tables, strings, numbers, booleans and
    lists of strings (the standard library reads TOML but does not write it)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in config.items():
        if isinstance(value, dict):
            tables.append((f"{prefix}.{_key(key)}" if prefix else _key(key), value))
        else:
            lines.append(f"{_key(key)} = {json.dumps(value)}")
    out = "\n".join(lines)
    for name, table in tables:
        out += f"\n\n[{name}]\n" + _toml(table, name)
    return out.strip() + "\n" if not prefix else out


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)
