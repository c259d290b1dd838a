"""BioEngineDataset → manifest ConfigMap, dataset server Deployment and Service.

The server (:mod:`bioengine_operator.dataserver`, same image as the operator) mounts the
files read-only and checks signed tokens with a per-dataset key; the Secret holding that
key is created once by the handler (random bytes are not a pure function's business) and
read by the bridge to mint tokens for the users it authenticated.
"""

from __future__ import annotations

import json
from typing import Any

from bioengine_operator.api.dataset import BioEngineDatasetSpec
from bioengine_operator.builders import meta

COMPONENT = "dataset-server"
PORT = 8080
DATA_DIR = "/data"
MANIFEST_DIR = "/etc/bioengine"
KEY_DIR = "/var/run/bioengine"
KEY_FIELD = "signing-key"


class UnsupportedSource(ValueError):
    """A source the schema accepts but this operator version cannot serve."""


def server_name(owner: meta.Owner) -> str:
    return f"{owner.name}-dataset"


def key_secret_name(owner: meta.Owner) -> str:
    return f"{owner.name}-dataset-key"


def manifest_document(owner: meta.Owner, spec: BioEngineDatasetSpec) -> dict[str, Any]:
    document = spec.manifest.dump()
    document.setdefault("id", owner.name)
    return document


def volume(spec: BioEngineDatasetSpec) -> tuple[dict[str, Any], str]:
    """Read-only volume source of the files and the sub-path inside it."""
    source = spec.source
    if source.pvc is not None:
        claim = {"claimName": source.pvc.claim_name, "readOnly": True}
        return {"persistentVolumeClaim": claim}, source.pvc.sub_path
    if source.host_path is not None:
        return {"hostPath": {"path": source.host_path.path, "type": "Directory"}}, ""
    raise UnsupportedSource(
        "S3 dataset sources are not served by this operator version; use a PVC or hostPath"
    )


def key_secret(owner: meta.Owner, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": meta.metadata(owner, key_secret_name(owner), COMPONENT),
        "stringData": {KEY_FIELD: key},
    }


def manifest_config_map(owner: meta.Owner, spec: BioEngineDatasetSpec) -> dict[str, Any]:
    document = json.dumps(manifest_document(owner, spec), indent=2, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.metadata(owner, f"{owner.name}-dataset-manifest", COMPONENT),
        "data": {"manifest.json": document},
    }


def deployment(owner: meta.Owner, spec: BioEngineDatasetSpec, image: str) -> dict[str, Any]:
    source, sub_path = volume(spec)
    data_mount: dict[str, Any] = {"name": "data", "mountPath": DATA_DIR, "readOnly": True}
    if sub_path:
        data_mount["subPath"] = sub_path
    scratch, scratch_mounts = meta.scratch_volumes(shm_limit="64Mi")
    selector = {f"{meta.PREFIX}/bioenginedataset": owner.name, "app.kubernetes.io/name": COMPONENT}
    # Roll the pods when the manifest changes: it is read once at start.
    manifest_hash = meta.digest(manifest_document(owner, spec))
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10}
    container = {
        "name": "server",
        "image": spec.image or image,
        "command": [
            "bioengine-dataserver",
            f"--root={DATA_DIR}",
            f"--manifest={MANIFEST_DIR}/manifest.json",
            f"--signing-key-file={KEY_DIR}/{KEY_FIELD}",
            "--host=0.0.0.0",
            f"--port={PORT}",
        ],
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 3},
        "resources": meta.resources("250m", "256Mi"),
        "volumeMounts": [
            data_mount,
            {"name": "manifest", "mountPath": MANIFEST_DIR, "readOnly": True},
            {"name": "key", "mountPath": KEY_DIR, "readOnly": True},
            *scratch_mounts,
        ],
        "securityContext": meta.container_security_context(),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta.metadata(owner, server_name(owner), COMPONENT),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {
                    "labels": {**meta.labels(owner, COMPONENT), **selector},
                    "annotations": {f"{meta.PREFIX}/manifest-hash": manifest_hash},
                },
                "spec": {
                    "containers": [container],
                    "volumes": [
                        {"name": "data", **source},
                        {
                            "name": "manifest",
                            "configMap": {"name": f"{owner.name}-dataset-manifest"},
                        },
                        {"name": "key", "secret": {"secretName": key_secret_name(owner)}},
                        *scratch,
                    ],
                    "nodeSelector": dict(spec.node_selector),
                    "tolerations": meta.tolerations(spec.tolerations, 0),
                    "securityContext": meta.pod_security_context(),
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                },
            },
        },
    }


def service(owner: meta.Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.metadata(owner, server_name(owner), COMPONENT),
        "spec": {
            "selector": {
                f"{meta.PREFIX}/bioenginedataset": owner.name,
                "app.kubernetes.io/name": COMPONENT,
            },
            "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
        },
    }


def endpoint(owner: meta.Owner) -> str:
    return f"http://{server_name(owner)}.{owner.namespace}.svc:{PORT}"
