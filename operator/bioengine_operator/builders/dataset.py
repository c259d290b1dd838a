"""BioEngineDataset → a ConfigMap, the dataset server Deployment and its Service.

The server (:mod:`bioengine_operator.dataserver`, same image as the operator) mounts the
files read-only and checks tokens against the public key of the bridge's signing key. The
ConfigMap holds the manifest and that public key; the operator never holds or reads a
secret for a dataset (the private key stays with the bridge).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from typing import Any

from bioengine_operator.api.dataset import BioEngineDatasetSpec
from bioengine_operator.api.status import dataset_id_of
from bioengine_operator.builders import meta

COMPONENT = "dataset-server"
PORT = 8080
DATA_DIR = "/data"
CONFIG_DIR = "/etc/bioengine"
MANIFEST_FILE, PUBLIC_KEY_FILE = "manifest.json", "token-public-key.pem"


class UnsupportedSource(ValueError):
    """A source the schema accepts but this operator cannot (or may not) serve."""

    reason = "InvalidSpec"


class HostPathNotAllowed(UnsupportedSource):
    """A hostPath outside the directories the cluster admin allowed (or none allowed)."""

    reason = "HostPathNotAllowed"


def selector(owner: meta.Owner) -> dict[str, str]:
    """The dataset server's pods: what its Deployment and Service select."""
    return {f"{meta.PREFIX}/bioenginedataset": owner.name, "app.kubernetes.io/name": COMPONENT}


def server_name(owner: meta.Owner) -> str:
    return f"{owner.name}-dataset"


def manifest_document(owner: meta.Owner, spec: BioEngineDatasetSpec) -> dict[str, Any]:
    document = spec.manifest.dump()
    document["id"] = dataset_id_of(document.get("id"), owner.name)
    return document


def host_path_allowed(path: str, prefixes: Sequence[str]) -> bool:
    """Whether ``path`` is one of ``prefixes`` or below one (after normalizing ``..``)."""
    normal = posixpath.normpath(path)
    return any(
        normal == root or normal.startswith(root.rstrip("/") + "/")
        for root in (posixpath.normpath(p) for p in prefixes)
    )


def volume(
    spec: BioEngineDatasetSpec, host_path_prefixes: Sequence[str]
) -> tuple[dict[str, Any], str]:
    """Read-only volume source of the files and the sub-path inside it."""
    source = spec.source
    if source.pvc is not None:
        claim = {"claimName": source.pvc.claim_name, "readOnly": True}
        return {"persistentVolumeClaim": claim}, source.pvc.sub_path
    if source.host_path is not None:
        path = source.host_path.path
        if not host_path_allowed(path, host_path_prefixes):
            allowed = ", ".join(host_path_prefixes) or "none (the operator's --host-path-prefix)"
            raise HostPathNotAllowed(
                f"hostPath {path} is not under a directory this cluster allows for datasets: "
                f"{allowed}"
            )
        return {"hostPath": {"path": path, "type": "Directory"}}, ""
    raise UnsupportedSource(
        "S3 dataset sources are not served by this operator version; use a PVC or hostPath"
    )


def config_map_name(owner: meta.Owner) -> str:
    return f"{owner.name}-dataset"


def config_map(
    owner: meta.Owner, spec: BioEngineDatasetSpec, public_key: str | None
) -> dict[str, Any]:
    data = {MANIFEST_FILE: json.dumps(manifest_document(owner, spec), indent=2, sort_keys=True)}
    if public_key:
        data[PUBLIC_KEY_FILE] = public_key
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.metadata(owner, config_map_name(owner), COMPONENT),
        "data": data,
    }


def deployment(
    owner: meta.Owner,
    spec: BioEngineDatasetSpec,
    image: str,
    host_path_prefixes: Sequence[str],
    public_key: str | None,
) -> dict[str, Any]:
    source, sub_path = volume(spec, host_path_prefixes)
    data_mount: dict[str, Any] = {"name": "data", "mountPath": DATA_DIR, "readOnly": True}
    if sub_path:
        data_mount["subPath"] = sub_path
    scratch, scratch_mounts = meta.scratch_volumes(shm_limit="64Mi")
    # Roll the pods when the manifest or the key changes: both are read once at start.
    config_hash = meta.digest(config_map(owner, spec, public_key)["data"])
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10}
    command = [
        "bioengine-dataserver",
        f"--root={DATA_DIR}",
        f"--manifest={CONFIG_DIR}/{MANIFEST_FILE}",
        "--host=0.0.0.0",
        f"--port={PORT}",
        "--log-format=json",
    ]
    if public_key:
        command.append(f"--token-public-key-file={CONFIG_DIR}/{PUBLIC_KEY_FILE}")
    container = {
        "name": "server",
        "image": spec.image or image,
        "command": command,
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 3},
        "resources": meta.resources("250m", "256Mi"),
        "volumeMounts": [
            data_mount,
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
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
            "selector": {"matchLabels": selector(owner)},
            "template": {
                "metadata": {
                    "labels": {**meta.labels(owner, COMPONENT), **selector(owner)},
                    "annotations": {
                        f"{meta.PREFIX}/config-hash": config_hash,
                        **meta.scrape_annotations(PORT),
                    },
                },
                "spec": {
                    "containers": [container],
                    "volumes": [
                        {"name": "data", **source},
                        {"name": "config", "configMap": {"name": config_map_name(owner)}},
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


def children(
    owner: meta.Owner,
    spec: BioEngineDatasetSpec,
    image: str,
    host_path_prefixes: Sequence[str],
    public_key: str | None,
) -> list[dict[str, Any]]:
    """The whole desired set; raises :class:`UnsupportedSource` for a source it cannot serve."""
    return [
        config_map(owner, spec, public_key),
        deployment(owner, spec, image, host_path_prefixes, public_key),
        service(owner),
    ]


def service(owner: meta.Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.metadata(owner, server_name(owner), COMPONENT),
        "spec": {
            "selector": selector(owner),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http"}],
        },
    }


def endpoint(owner: meta.Owner) -> str:
    return f"http://{server_name(owner)}.{owner.namespace}.svc:{PORT}"
