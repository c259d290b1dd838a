"""Names, labels, owner references and pod security shared by every builder.

Builders are pure: they take a typed spec (and whatever the handler looked up) and return
the desired manifests as plain dicts, which the handler server-side-applies. Nothing here
talks to the API server, so every builder is unit-tested without a cluster.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from bioengine_operator.api.base import API_VERSION, GROUP

MANAGED_BY = "bioengine-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PREFIX = GROUP  # label and annotation prefix: bioengine.bioimage.io/...
NON_ROOT_UID = 1000


@dataclasses.dataclass(frozen=True)
class Owner:
    """The custom resource that owns the children being built."""

    kind: str
    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(body["kind"], meta["name"], meta["namespace"], meta["uid"])

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def labels(owner: Owner, component: str) -> dict[str, str]:
    """Recommended labels, plus the owner's kind and name for selectors and watches."""
    return {
        "app.kubernetes.io/name": component,
        "app.kubernetes.io/instance": owner.name,
        "app.kubernetes.io/part-of": "bioengine",
        MANAGED_BY_LABEL: MANAGED_BY,
        f"{PREFIX}/{owner.kind.lower()}": owner.name,
    }


def metadata(
    owner: Owner,
    name: str,
    component: str,
    *,
    extra_labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**labels(owner, component), **(extra_labels or {})},
        "ownerReferences": [owner.reference()],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def digest(value: Any, length: int = 10) -> str:
    """Stable short hash of a JSON-serialisable value (key order does not matter)."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]


def scrape_annotations(port: int, path: str = "/metrics") -> dict[str, str]:
    """The conventional annotations by which Prometheus finds a pod's metrics."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": path,
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "runAsGroup": NON_ROOT_UID,
        "fsGroup": NON_ROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def resources(cpu: int | str, memory: int | str, gpu: int = 0) -> dict[str, Any]:
    """Requests equal limits: predictable placement, and GPUs can only be limits anyway."""
    amounts: dict[str, Any] = {"cpu": str(cpu), "memory": str(memory)}
    if gpu:
        amounts["nvidia.com/gpu"] = str(gpu)
    return {"requests": dict(amounts), "limits": dict(amounts)}


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def tolerations(declared: list[Any], gpu: int) -> list[dict[str, Any]]:
    """The declared tolerations, plus the standard GPU taint's when GPUs are requested.

    GKE adds that toleration itself (ExtendedResourceToleration); other clusters do not, so
    a GPU pod would otherwise stay Pending on a tainted GPU pool.
    """
    out = [t.dump() for t in declared]
    if gpu and GPU_TOLERATION not in out:
        out.append(dict(GPU_TOLERATION))
    return out


def scratch_volumes(shm_limit: str = "1Gi") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Writable /tmp and /dev/shm for containers whose root filesystem is read-only."""
    volumes = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_limit}},
    ]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "shm", "mountPath": "/dev/shm"}]
    return volumes, mounts
