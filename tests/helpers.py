"""Small test helpers over kubectl and the official client."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from bioengine_devtools import cluster as devcluster
from bioengine_devtools import tools
from bioengine_operator.local import envs, procs

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


def wait_for_warning(
    cluster: devcluster.DevCluster, namespace: str, name: str, reason: str, text: str = ""
) -> None:
    """Wait until a Warning Event with ``reason`` (and ``text`` in its message) is about
    ``name``; Events are posted a moment after the status is written."""
    wait_for(
        lambda: any(
            e["type"] == "Warning" and e["reason"] == reason and text in e["message"]
            for e in events(cluster, namespace, name)
        ),
        f"{reason} Warning Event",
    )


def resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": GROUP_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}


def metric(url: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus text endpoint (0 when absent)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


def json_log_records(path: Any) -> list[dict[str, Any]]:
    """Every line of a JSON log, parsed; each must carry the shared schema's keys."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    return records


def app_spec(**fields: Any) -> dict[str, Any]:
    """A minimal BioEngineApp spec of format 0.6.0 (code in the image), with ``fields``."""
    return {
        "name": "App",
        "id": "app",
        "description": "A test app.",
        "formatVersion": "0.6.0",
        "entry": "main:App",
        "source": {"image": {}},
        **fields,
    }


def absent_from_ray(module: str) -> bool:
    """Whether the Ray environment lacks ``module`` (so an app needing it must install it)."""
    python = envs.venv("ray", tools.REPO_ROOT) / "bin" / "python"
    found = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True)
    return found.returncode != 0
