"""The operator at scale: hundreds of each kind applied at once, against the direct writes.

    .venv/bin/python bench/scale.py [--apps 500] [--runners 500] [--datasets 100]
                                    [--workers 8] [--steady 60]

One local control plane (KubeRay CRDs, not its operator; kwok nodes, so Deployments get
pods that never run a container) with request auditing. Two runs, each in a namespace of
its own, the objects created the same way (server-side apply through the Python Kubernetes
client, ``--workers`` at a time):

* **operator**: the real operator process (``--workers`` reconcile workers, resync 30 s).
  Timed until every child exists and every resource's status reports a phase for its
  current generation.
* **direct** (the baseline): no operator; the same reconcile code called once per object,
  ``--workers`` at a time, in this process: the same reads, children and status writes
  through the same client, without the watches, queue and re-reconciles an operator needs.
  That is the limit the operator can approach.

Everything shares this machine's cores: the cluster's own controllers making the pods of
the Deployments compete with what is measured. They start on the baseline's Deployments as
they appear but finish most of that work after the baseline's clock stops, while the
operator's run, longer, carries more of its own. So the table also gives the time until
every pod is Ready as well (both runs then include all of the controllers' work), the CPU
seconds each process used during each run, and every client's requests.

Also reported: API requests per object (from the API server's audit log, by user agent),
the operator's and the bridge's resident memory with everything in place (the bridge
watches without a Hypha server to register with), and the operator's requests per minute
in steady state (every runner and dataset Ready, nothing changing; apps stay Deploying, as
no KubeRay operator runs here).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bioengine_devtools import cluster as devcluster
from bioengine_devtools import operator_process
from bioengine_devtools.chaos import CHILDREN, MODELS, reported
from bioengine_operator import kube
from bioengine_operator.api.base import API_VERSION
from bioengine_operator.controllers import outcome
from bioengine_operator.handlers import RECONCILERS
from bioengine_operator.local import procs

BENCH_AGENT = "bioengine-bench"
DATA = "/srv/datasets"
WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def resources(namespace: str, apps: int, runners: int, datasets: int) -> list[dict[str, Any]]:
    small = {"cpu": "10m", "memory": "16Mi"}
    out: list[dict[str, Any]] = [{**MODELS, "metadata": {"name": "models", "namespace": namespace}}]
    for i in range(apps):
        out.append(
            _resource(
                namespace,
                "BioEngineApp",
                f"app-{i}",
                {
                    "name": f"App {i}",
                    "id": f"app-{i}",
                    "description": "A benchmark app.",
                    "formatVersion": "0.6.0",
                    "entry": "main:App",
                    "source": {"image": {}},
                },
            )
        )
    for i in range(runners):
        spec = {
            "modelRepository": {"configMap": {"name": "models"}},
            "models": ["m"],
            "resources": small,
        }
        out.append(_resource(namespace, "ModelRunner", f"runner-{i}", spec))
    for i in range(datasets):
        spec = {
            "source": {"hostPath": {"path": f"{DATA}/{i}"}},
            "manifest": {"name": f"Dataset {i}"},
        }
        out.append(_resource(namespace, "BioEngineDataset", f"data-{i}", spec))
    return out


def _resource(namespace: str, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace}
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec}


def apply_all(objects: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda o: kube.apply(o, BENCH_AGENT), objects))


def converged(namespace: str, objects: list[dict[str, Any]]) -> bool:
    """Every child exists and every resource reports a phase for its current generation.

    Statuses first, and the children only once every status is reported: polling must cost
    the API server little, as it shares the machine with what it measures."""
    for kind in CHILDREN:
        if not all(reported(b) for b in kube.list_(API_VERSION, kind, namespace, {}, recent=True)):
            return False
    listed: dict[tuple[str, str], set[str]] = {}
    for api_version, kind, _ in {c for children in CHILDREN.values() for c in children}:
        found = kube.list_(api_version, kind, namespace, {}, recent=True)
        listed[(api_version, kind)] = {o["metadata"]["name"] for o in found}
    for obj in objects:
        for api_version, kind, suffix in CHILDREN.get(obj["kind"], []):
            if obj["metadata"]["name"] + suffix not in listed[(api_version, kind)]:
                return False
    return True


def deployments_done(namespace: str) -> bool:
    return all(
        (d.get("status") or {}).get("readyReplicas", 0) == d["spec"].get("replicas", 1)
        for d in kube.list_("apps/v1", "Deployment", namespace, {})
    )


def settled(namespace: str) -> bool:
    """Runners and datasets Ready (apps stay Deploying: no KubeRay operator runs here)."""
    return all(
        (body.get("status") or {}).get("phase") == "Ready"
        for kind in ("ModelRunner", "BioEngineDataset")
        for body in kube.list_(API_VERSION, kind, namespace, {})
    )


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time ``pid`` has used so far (its own threads, not children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def cpu_used(before: dict[str, float], after: dict[str, float]) -> str:
    used = {name: after[name] - before[name] for name in before}
    return ", ".join(f"{name} {s:.0f}" for name, s in sorted(used.items(), key=lambda i: -i[1]))


def audit_lines(dev: devcluster.DevCluster) -> int:
    return len(dev.audit_log.read_text().splitlines())


def answered(dev: devcluster.DevCluster, since: int, until: int) -> Iterator[dict[str, Any]]:
    """The audit log's completed requests between two of its line counts."""
    for line in dev.audit_log.read_text().splitlines()[since:until]:
        event = json.loads(line)
        if event.get("stage") == "ResponseComplete":
            yield event


def requests(
    dev: devcluster.DevCluster, since: int, until: int, who: Callable[[str], bool]
) -> Counter[tuple[str, str]]:
    """Requests made by the user agents ``who`` accepts, by verb and resource."""
    counted: Counter[tuple[str, str]] = Counter()
    for event in answered(dev, since, until):
        if who(event.get("userAgent", "")):
            ref = event.get("objectRef") or {}
            sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
            counted[(event["verb"], ref.get("resource", "") + sub)] += 1
    return counted


def by_client(dev: devcluster.DevCluster, since: int, until: int) -> str:
    """Every client's requests in the window (the operator's, the cluster's own controllers'
    making pods for its Deployments, the benchmark's), the most frequent first."""
    counted = Counter(
        e.get("userAgent", "").split("/")[0] or "?" for e in answered(dev, since, until)
    )
    return ", ".join(f"{who} {n}" for who, n in counted.most_common(6))


def by_verb(counted: Counter[tuple[str, str]]) -> Counter[str]:
    verbs: Counter[str] = Counter()
    for (verb, _), n in counted.items():
        verbs[verb] += n
    return verbs


def operator_agent(agent: str) -> bool:
    return agent.startswith(("OpenAPI-Generator", "kopf"))


def direct(
    dev: devcluster.DevCluster,
    objects: list[dict[str, Any]],
    workers: int,
    settings: outcome.Settings,
) -> Counter[tuple[str, str]]:
    """One reconcile per object, as the operator's reconcilers do it, without the operator;
    the requests those reconciles made."""
    bodies = apply_all(objects, workers)
    start_line = audit_lines(dev)
    resources_ = [b for b in bodies if b["kind"] in RECONCILERS]
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda b: outcome.run(RECONCILERS[b["kind"]], b, settings), resources_))
    return requests(dev, start_line, audit_lines(dev), lambda agent: agent == BENCH_AGENT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=500)
    parser.add_argument("--runners", type=int, default=500)
    parser.add_argument("--datasets", type=int, default=100)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of steady state")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    count = args.apps + args.runners + args.datasets
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Room for every pod of both runs (kwok nodes take 110 pods each).
        pods = 2 * (2 * args.runners + args.datasets)
        nodes = [
            devcluster.NodeSpec(f"bench-node-{i}", cpu="1000", memory="4Ti")
            for i in range(pods // 100 + 1)
        ]
        with devcluster.DevCluster(
            work / "cluster", name="scale", kuberay_operator=False, audit=True, nodes=nodes
        ) as dev:
            operator_process.install_crds(dev)
            kube.configure(args.workers, str(dev.kubeconfig))
            kube.api().user_agent = BENCH_AGENT
            settings = outcome.Settings(host_path_prefixes=(DATA,))
            for ns in ("direct", "operator"):
                dev.kubectl("create", "namespace", ns)

            # The baseline first, on a quiet control plane.
            objects = resources("direct", args.apps, args.runners, args.datasets)
            watched = {**dev.pids, "bench": os.getpid()}
            start_line, began, cpu_before = audit_lines(dev), time.monotonic(), cpu_of(watched)
            direct_requests = direct(dev, objects, args.workers, settings)
            direct_s = time.monotonic() - began
            direct_cpu = cpu_used(cpu_before, cpu_of(watched))
            direct_clients = by_client(dev, start_line, audit_lines(dev))
            assert converged("direct", objects), "the direct writes left something out"
            # The cluster's own controllers finish with the baseline's Deployments first, so
            # that they do not compete with the operator's run.
            procs.wait_for(lambda: deployments_done("direct"), "baseline pods", args.timeout)
            direct_pods_s = time.monotonic() - began

            operator = operator_process.OperatorProcess(
                dev,
                work / "operator.log",
                resync_seconds=30,
                verbose=False,
                extra_args=(
                    "--log-format=json",
                    f"--workers={args.workers}",
                    f"--host-path-prefix={DATA}",
                ),
            )
            bridge_log = work / "bridge.log"
            token = work / "token"
            token.write_text("not-a-token")  # no Hypha: the bridge only watches
            bridge: subprocess.Popen[bytes] | None = None
            with operator:
                try:
                    objects = resources("operator", args.apps, args.runners, args.datasets)
                    assert operator.proc is not None
                    watched = {**dev.pids, "operator": operator.proc.pid, "bench": os.getpid()}
                    start_line, began = audit_lines(dev), time.monotonic()
                    cpu_before = cpu_of(watched)
                    apply_all(objects, args.workers)
                    procs.wait_for(
                        lambda: converged("operator", objects),
                        "everything reconciled",
                        args.timeout,
                        interval=1.0,
                    )
                    operator_s = time.monotonic() - began
                    operator_cpu = cpu_used(cpu_before, cpu_of(watched))
                    operator_clients = by_client(dev, start_line, audit_lines(dev))
                    operator_requests = requests(dev, start_line, audit_lines(dev), operator_agent)
                    procs.wait_for(
                        lambda: deployments_done("operator"), "operator's pods", args.timeout
                    )
                    operator_pods_s = time.monotonic() - began
                    operator_rss = procs.rss_bytes([operator.proc.pid])
                    # Started now, so that it does not compete with the timed run; it lists
                    # everything when it starts.
                    bridge = procs.spawn(
                        [
                            sys.executable,
                            "-m",
                            "bioengine_operator.bridge",
                            f"--server-url=http://127.0.0.1:{devcluster.free_port()}",
                            "--workspace=bench",
                            f"--token-file={token}",
                            "--log-format=json",
                        ],
                        bridge_log,
                        env={**os.environ, "KUBECONFIG": str(dev.kubeconfig)},
                    )
                    # Steady state: once the pods are up and every runner has both colors.
                    procs.wait_for(
                        lambda: settled("operator"), "runners and datasets Ready", args.timeout
                    )
                    steady_from = audit_lines(dev)
                    time.sleep(args.steady)  # measuring a quiet period: nothing to wait for
                    steady = requests(dev, steady_from, audit_lines(dev), operator_agent)
                    bridge_rss = procs.rss_bytes([bridge.pid])
                finally:
                    if bridge is not None:
                        procs.stop_group(bridge.pid)

    minutes = args.steady / 60

    def per_object(counted: Counter[tuple[str, str]]) -> str:
        total = sum(counted.values())
        verbs = ", ".join(f"{v} {n / count:.1f}" for v, n in by_verb(counted).most_common())
        return f"{total / count:.1f} ({verbs})"

    def top(counted: Counter[tuple[str, str]]) -> str:
        return ", ".join(f"{v} {r} {n / count:.2f}" for (v, r), n in counted.most_common(8))

    def per_minute(counted: Counter[tuple[str, str]], writes: bool) -> str:
        chosen = Counter({k: n for k, n in counted.items() if (k[0] in WRITES) == writes})
        top = ", ".join(f"{v} {r} {n / minutes:.0f}" for (v, r), n in chosen.most_common(3))
        return f"{sum(chosen.values()) / minutes:.1f}" + (f" ({top})" if top else "")

    rows += [
        ("objects", f"{args.apps} apps, {args.runners} runners, {args.datasets} datasets"),
        ("direct writes, no operator (baseline)", f"{direct_s:.1f} s"),
        ("operator, apply → all children and statuses", f"{operator_s:.1f} s"),
        ("ratio operator / direct", f"{operator_s / direct_s:.2f}"),
        (
            "until every pod is Ready too, direct / operator",
            f"{direct_pods_s:.1f} s / {operator_pods_s:.1f} s, "
            f"ratio {operator_pods_s / direct_pods_s:.2f}",
        ),
        ("CPU seconds, direct run", direct_cpu),
        ("CPU seconds, operator run", operator_cpu),
        ("all requests in the direct run, by client", direct_clients),
        ("all requests in the operator run, by client", operator_clients),
        ("API requests per object, direct", per_object(direct_requests)),
        ("API requests per object, operator", per_object(operator_requests)),
        ("operator requests, most frequent", top(operator_requests)),
        ("operator RSS", f"{operator_rss / 2**20:.0f} MiB"),
        ("bridge RSS (watching, no Hypha)", f"{bridge_rss / 2**20:.0f} MiB"),
        ("operator writes per minute, steady", per_minute(steady, writes=True)),
        ("operator reads per minute, steady", per_minute(steady, writes=False)),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
