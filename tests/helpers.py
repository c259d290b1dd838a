"""Small test helpers over kubectl and the official client."""

from __future__ import annotations

import json
from typing import Any

import yaml

from bioengine_devtools import cluster as devcluster
from bioengine_devtools import procs

GROUP_VERSION = "bioengine.bioimage.io/v1alpha1"
TIMEOUT = 60.0


def wait_for(condition: Any, what: str, timeout: float = TIMEOUT) -> None:
    procs.wait_for(condition, what, timeout)


def apply(cluster: devcluster.DevCluster, namespace: str, *objects: dict[str, Any]) -> None:
    cluster.kubectl("-n", namespace, "apply", "-f", "-", stdin=yaml.safe_dump_all(objects))


def get(cluster: devcluster.DevCluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return cluster.get(namespace, kind, name)


def items(cluster: devcluster.DevCluster, namespace: str, kind: str, selector: str = ""):  # type: ignore[no-untyped-def]
    args = ["-n", namespace, "get", kind, "-o", "json"]
    if selector:
        args += ["-l", selector]
    return json.loads(cluster.kubectl(*args).stdout)["items"]


def status(cluster: devcluster.DevCluster, namespace: str, kind: str, name: str) -> dict[str, Any]:
    return dict(get(cluster, namespace, kind, name).get("status") or {})


def condition(obj_status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj_status.get("conditions", []) if c["type"] == type_), {})


def events(cluster: devcluster.DevCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    return [e for e in items(cluster, namespace, "events") if e["involvedObject"]["name"] == name]


def resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": GROUP_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}
