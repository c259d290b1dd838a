"""BioEngineApp → a ConfigMap with the BioEngine runtime, and a KubeRay RayService.

The RayService's ``serveConfigV2`` names the application builder
``bioengine_serve_entry:app`` (see :mod:`bioengine_operator.runtime.serve_entry`) and
hands it :func:`serve_args`: the manifest's entry, the admin's overrides and the
environment. The runtime ConfigMap holds the entry point, the codec and the ``bioengine``
authoring API, the same for every app of one operator version; the app's own files come
from its source (a ConfigMap mounted as a folder; a zip split over ConfigMaps, which an init
container unpacks into that same folder; a zip URL as Ray's ``working_dir``; or the image).
A hash of the code ConfigMaps is a pod annotation, so changed code rolls the Ray cluster
(KubeRay's zero-downtime upgrade) instead of leaving old modules loaded.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
from typing import Any

import yaml

from bioengine_operator.api.app import (
    DEFAULT_RAY_IMAGE,
    ZIP_PART_KEY,
    BioEngineAppSpec,
    RayResources,
    WorkerGroup,
    ZipSource,
)
from bioengine_operator.builders import meta

COMPONENT = "bioengine-app"
ENTRY_MODULE = "bioengine_serve_entry"
ENTRY_DIR = "/home/ray/bioengine"
APP_DIR = "/home/ray/app"
ZIP_DIR = "/home/ray/app-zip"  # a zip source's parts, in the init container that unpacks them
DATASETS_DIR = "/data"
SERVE_PORT = 8000
DASHBOARD_PORT = 8265
CODE_HASH = "bioengine.bioimage.io/code-hash"
_RUNTIME = importlib.resources.files("bioengine_operator.runtime")
# Files of the runtime ConfigMap, as the Ray pods import them.
RUNTIME_FILES = {
    f"{ENTRY_MODULE}.py": _RUNTIME.joinpath("serve_entry.py").read_text(),
    "bioengine_codec.py": _RUNTIME.joinpath("codec.py").read_text(),
    "bioengine.py": _RUNTIME.joinpath("bioengine.py").read_text(),
    "bioengine_utils.py": _RUNTIME.joinpath("bioengine_utils.py").read_text(),
}
# The init container of a zip source (python -c UNZIP FOLDER PART...): the parts joined in
# order are the zip, unpacked into FOLDER. A member that would land outside FOLDER fails the
# pod rather than being renamed (zipfile's own extraction would silently strip the "..").
UNZIP = """\
import io, pathlib, sys, zipfile
target = pathlib.Path(sys.argv[1]).resolve()
data = b"".join(pathlib.Path(part).read_bytes() for part in sys.argv[2:])
with zipfile.ZipFile(io.BytesIO(data)) as archive:
    for name in archive.namelist():
        if target not in (target / name).resolve().parents:
            sys.exit(f"the app's zip holds {name!r}, which leaves the app's folder")
    archive.extractall(target)
"""


@dataclasses.dataclass(frozen=True)
class MountedDataset:
    """A BioEngineDataset an app lists, as the handler resolved it."""

    name: str
    endpoint: str  # in-cluster URL of its dataset server
    volume: dict[str, Any] | None  # a read-only volume source, None if it cannot be mounted
    sub_path: str = ""

    @property
    def mount_path(self) -> str:
        return f"{DATASETS_DIR}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What the app's objects depend on besides its spec."""

    datasets: tuple[MountedDataset, ...] = ()
    code_hash: str = ""  # of the code ConfigMaps' content ("" for a URI or image source)
    gpu_memory_mb: int = 0  # the operator's --gpu-memory-mb
    ray_image: str = DEFAULT_RAY_IMAGE  # the operator's --ray-image, for apps naming none


def entry_config_map_name(owner: meta.Owner) -> str:
    return f"{owner.name}-bioengine-entry"


def entry_config_map(owner: meta.Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.metadata(owner, entry_config_map_name(owner), COMPONENT),
        "data": dict(RUNTIME_FILES),
    }


def route_prefix(owner: meta.Owner) -> str:
    return f"/{owner.name}"


def serve_args(spec: BioEngineAppSpec, inputs: Inputs) -> dict[str, Any]:
    """The ``args`` of the Serve application builder (camelCase, as in the CRD)."""
    env_vars = {
        **spec.env_vars,
        "BIOENGINE_APP_ID": spec.id,
        "BIOENGINE_DATASETS": json.dumps(
            {d.name: {"url": d.endpoint, "mounted": d.volume is not None} for d in inputs.datasets},
            sort_keys=True,
        ),
    }
    args: dict[str, Any] = {
        "entry": spec.entry,
        "envVars": env_vars,
        "gpuMemoryMb": inputs.gpu_memory_mb,
        "disableGpu": spec.disable_gpu,
        "classes": {name: o.dump() for name, o in sorted(spec.classes.items())},
    }
    if spec.frontend_entry:
        args["frontendEntry"] = spec.frontend_entry
    return args


def serve_config(owner: meta.Owner, spec: BioEngineAppSpec, inputs: Inputs) -> dict[str, Any]:
    application: dict[str, Any] = {
        "name": owner.name,
        "route_prefix": route_prefix(owner),
        "import_path": f"{ENTRY_MODULE}:app",
        "args": serve_args(spec, inputs),
    }
    if spec.source.uri is not None:
        application["runtime_env"] = {"working_dir": spec.source.uri}
    return {"applications": [application]}


def _in_app_dir(spec: BioEngineAppSpec) -> bool:
    """Whether the code sits at APP_DIR in the Ray pods: a configMap or zip source."""
    return spec.source.config_map is not None or spec.source.zip is not None


def _python_path(spec: BioEngineAppSpec) -> str:
    paths = [ENTRY_DIR]
    if _in_app_dir(spec):
        paths.append(APP_DIR)
    if spec.source.image is not None:
        paths.append(spec.source.image.python_path)
    return ":".join(paths)


def _unzip(
    source: ZipSource, image: str, resources: RayResources
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The volumes and the init container that put a zip source's files at APP_DIR before
    Ray starts: the parts projected as ordered files, unpacked into an emptyDir (which the
    Ray container mounts read-only, as it would a configMap source)."""
    files = [f"part-{index}" for index in range(len(source.config_maps))]
    parts = [
        {"configMap": {"name": name, "items": [{"key": ZIP_PART_KEY, "path": file}]}}
        for name, file in zip(source.config_maps, files, strict=True)
    ]
    volumes = [
        {"name": "app", "emptyDir": {}},
        {"name": "app-zip", "projected": {"sources": parts}},
    ]
    container = {
        "name": "unzip-app",
        "image": image,
        "command": ["python", "-c", UNZIP, APP_DIR, *(f"{ZIP_DIR}/{file}" for file in files)],
        # The pod's requests are the larger of its init and Ray containers': these add nothing.
        "resources": meta.resources(resources.cpu, resources.memory),
        "volumeMounts": [
            {"name": "app", "mountPath": APP_DIR},
            {"name": "app-zip", "mountPath": ZIP_DIR, "readOnly": True},
        ],
        "securityContext": meta.container_security_context(),
    }
    return volumes, container


def _pod_template(
    owner: meta.Owner,
    spec: BioEngineAppSpec,
    inputs: Inputs,
    container_name: str,
    resources: RayResources,
    ports: list[dict[str, Any]],
    placement: WorkerGroup | None = None,
) -> dict[str, Any]:
    volumes = [
        {"name": "bioengine-entry", "configMap": {"name": entry_config_map_name(owner)}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "bioengine-entry", "mountPath": ENTRY_DIR, "readOnly": True},
    ]
    image = spec.ray_cluster.image or inputs.ray_image
    init_containers: list[dict[str, Any]] = []
    source = spec.source.config_map
    if source is not None:
        code: dict[str, Any] = {"name": source.name}
        if source.items:
            code["items"] = [item.dump() for item in source.items]
        volumes.append({"name": "app", "configMap": code})
    if spec.source.zip is not None:
        zip_volumes, unzip = _unzip(spec.source.zip, image, resources)
        volumes += zip_volumes
        init_containers.append(unzip)
    if _in_app_dir(spec):
        mounts.append({"name": "app", "mountPath": APP_DIR, "readOnly": True})
    for dataset in inputs.datasets:
        if dataset.volume is None:
            continue
        volume_name = f"dataset-{dataset.name}"[:63]
        volumes.append({"name": volume_name, **dataset.volume})
        mount = {"name": volume_name, "mountPath": dataset.mount_path, "readOnly": True}
        if dataset.sub_path:
            mount["subPath"] = dataset.sub_path
        mounts.append(mount)
    scratch, scratch_mounts = meta.scratch_volumes(shm_limit=str(resources.memory))
    container = {
        "name": container_name,
        "image": image,
        "ports": ports,
        "env": [
            {"name": "PYTHONPATH", "value": _python_path(spec)},
            {"name": "BIOENGINE_DATA_DIR", "value": DATASETS_DIR},
        ],
        "resources": meta.resources(resources.cpu, resources.memory, resources.gpu),
        "volumeMounts": [*mounts, *scratch_mounts],
        "securityContext": meta.container_security_context(),
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": [*volumes, *scratch],
        "securityContext": meta.pod_security_context(),
        "enableServiceLinks": False,
    }
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if placement is not None:
        pod_spec["nodeSelector"] = dict(placement.node_selector)
        pod_spec["tolerations"] = meta.tolerations(placement.tolerations, resources.gpu)
    metadata: dict[str, Any] = {"labels": meta.labels(owner, COMPONENT)}
    if inputs.code_hash:
        metadata["annotations"] = {CODE_HASH: inputs.code_hash}
    return {"metadata": metadata, "spec": pod_spec}


def ray_service(owner: meta.Owner, spec: BioEngineAppSpec, inputs: Inputs) -> dict[str, Any]:
    cluster = spec.ray_cluster
    head_ports = [
        {"name": "gcs-server", "containerPort": 6379},
        {"name": "dashboard", "containerPort": DASHBOARD_PORT},
        {"name": "client", "containerPort": 10001},
        {"name": "serve", "containerPort": SERVE_PORT},
    ]
    ray_cluster: dict[str, Any] = {
        "rayVersion": cluster.ray_version,
        "enableInTreeAutoscaling": cluster.enable_autoscaling,
        "headGroupSpec": {
            # The head takes no Serve replicas: a GPU app's replicas belong on workers.
            "rayStartParams": {"num-cpus": "0"} if cluster.worker_groups else {},
            "template": _pod_template(
                owner, spec, inputs, "ray-head", cluster.head.resources, head_ports
            ),
        },
        "workerGroupSpecs": [
            {
                "groupName": group.name,
                "replicas": group.replicas,
                "minReplicas": group.min_replicas,
                "maxReplicas": group.max_replicas,
                "rayStartParams": {},
                "template": _pod_template(
                    owner, spec, inputs, "ray-worker", group.resources, [], group
                ),
            }
            for group in cluster.worker_groups
        ],
    }
    if cluster.enable_autoscaling:
        ray_cluster["autoscalerOptions"] = {
            "idleTimeoutSeconds": cluster.idle_timeout_seconds,
            "securityContext": meta.container_security_context(),
        }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": meta.metadata(owner, owner.name, COMPONENT),
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config(owner, spec, inputs), sort_keys=True),
            "rayClusterConfig": ray_cluster,
        },
    }


def children(owner: meta.Owner, spec: BioEngineAppSpec, inputs: Inputs) -> list[dict[str, Any]]:
    """The whole desired set: the runtime ConfigMap and the RayService."""
    return [entry_config_map(owner), ray_service(owner, spec, inputs)]


def serve_endpoint(owner: meta.Owner) -> str:
    """KubeRay's Serve Service for a RayService is ``<name>-serve-svc``."""
    return f"http://{owner.name}-serve-svc.{owner.namespace}.svc:{SERVE_PORT}{route_prefix(owner)}"


def dashboard_endpoint(owner: meta.Owner) -> str:
    """The Ray dashboard of a RayService's active cluster: KubeRay's ``<name>-head-svc``,
    which follows the active cluster across upgrades."""
    return f"http://{owner.name}-head-svc.{owner.namespace}.svc:{DASHBOARD_PORT}"
