"""Reconcile latency: from `kubectl apply` of N BioEngineApps to all their children existing.

    .venv/bin/python bench/reconcile_latency.py [--counts 1 100] [--runs 3]

Runs a local control plane with the KubeRay CRDs (not its operator, so only our operator's
work is timed) and the operator as a real process. For each count N it applies N apps in
one request and polls until every app's RayService and entry ConfigMap exist. Baseline in
the same run: applying those same 2N children directly (what the operator writes), so the
ratio shows the operator's own overhead over the API server's write cost on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from bioengine_devtools import cluster as devcluster
from bioengine_devtools import operator_process
from bioengine_operator.api.app import BioEngineAppSpec
from bioengine_operator.builders import meta, rayservice


def app(name: str) -> dict:
    return {
        "apiVersion": "bioengine.bioimage.io/v1alpha1",
        "kind": "BioEngineApp",
        "metadata": {"name": name},
        "spec": {
            "name": name,
            "id": name,
            "description": "A benchmark app.",
            "formatVersion": "0.6.0",
            "entry": "main:App",
            "source": {"image": {}},
        },
    }


def names(dev: devcluster.DevCluster, namespace: str, kind: str) -> set[str]:
    out = dev.kubectl("-n", namespace, "get", kind, "-o", "name").stdout.split()
    return {line.split("/", 1)[1] for line in out}


def timed_apply(dev: devcluster.DevCluster, namespace: str, objects: list[dict]) -> float:
    began = time.monotonic()
    dev.kubectl(
        "-n", namespace, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(objects)
    )
    return began


def wait_children(dev: devcluster.DevCluster, namespace: str, apps: list[str]) -> None:
    want_rs = set(apps)
    want_cm = {f"{a}-bioengine-entry" for a in apps}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if want_rs <= names(dev, namespace, "rayservices") and want_cm <= names(
            dev, namespace, "configmaps"
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"children of {len(apps)} apps did not appear")


def direct_children(namespace: str, apps: list[str]) -> list[dict]:
    objects = []
    for name in apps:
        owner = meta.Owner("BioEngineApp", name, namespace, "00000000-0000-0000-0000-000000000000")
        spec = BioEngineAppSpec.model_validate(app(name)["spec"])
        cm = rayservice.entry_config_map(owner)
        rs = rayservice.ray_service(owner, spec, rayservice.Inputs())
        for obj in (cm, rs):
            del obj["metadata"]["ownerReferences"]  # no owner exists in the baseline
        objects += [cm, rs]
    return objects


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[int, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with devcluster.DevCluster(work / "cluster", kuberay_operator=False) as dev:
            operator_process.install_crds(dev)
            with operator_process.OperatorProcess(
                dev, work / "operator.log", resync_seconds=60, extra_args=("--log-format=text",)
            ):
                for run in range(args.runs):
                    for count in args.counts:
                        apps = [f"app-{i}" for i in range(count)]
                        row = results.setdefault(count, {"operator": [], "direct": []})
                        ns = f"op-{count}-{run}"
                        dev.kubectl("create", "namespace", ns)
                        began = timed_apply(dev, ns, [app(a) for a in apps])
                        wait_children(dev, ns, apps)
                        row["operator"].append(time.monotonic() - began)
                        ns = f"direct-{count}-{run}"
                        dev.kubectl("create", "namespace", ns)
                        began = timed_apply(dev, ns, direct_children(ns, apps))
                        wait_children(dev, ns, apps)
                        row["direct"].append(time.monotonic() - began)
    print(
        f"{'apps':>5} {'operator s (median)':>20} {'direct apply s':>15} {'ratio':>6} "
        f"{'per app ms':>11}"
    )
    for count, row in results.items():
        op, direct = statistics.median(row["operator"]), statistics.median(row["direct"])
        print(
            f"{count:>5} {op:>20.2f} {direct:>15.2f} {op / direct:>6.1f} {1000 * op / count:>11.0f}"
        )


if __name__ == "__main__":
    main()
