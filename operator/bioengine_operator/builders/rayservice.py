"""BioEngineApp → a ConfigMap with the Serve entry point, and a KubeRay RayService.

The RayService's ``serveConfigV2`` imports ``bioengine_serve_entry:app`` (see
:mod:`bioengine_operator.runtime.serve_entry`), which binds the manifest's entry class and
extra deployments. ``deploymentConfig`` becomes the Serve per-deployment overrides of the
entry class, and ``runtimeEnv`` the application's runtime_env (snake_case, as Ray wants it).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
from typing import Any

import yaml

from bioengine_operator.api.app import BioEngineAppSpec, RayResources, WorkerGroup
from bioengine_operator.builders import meta

COMPONENT = "bioengine-app"
ENTRY_MODULE = "bioengine_serve_entry"
ENTRY_DIR = "/home/ray/bioengine"
APP_DIR = "/home/ray/app"
DATASETS_DIR = "/data"
SERVE_PORT = 8000
_RUNTIME = importlib.resources.files("bioengine_operator.runtime")
# Files of the entry ConfigMap, as the Ray pods import them.
RUNTIME_FILES = {
    f"{ENTRY_MODULE}.py": _RUNTIME.joinpath("serve_entry.py").read_text(),
    "bioengine_codec.py": _RUNTIME.joinpath("codec.py").read_text(),
}


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


def entry_config_map_name(owner: meta.Owner) -> str:
    return f"{owner.name}-bioengine-entry"


def entry_config_map(owner: meta.Owner, spec: BioEngineAppSpec) -> dict[str, Any]:
    config = {
        "entry": spec.entry,
        "deployments": list(spec.deployments),
        "exposedMethods": list(spec.exposed_methods),
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.metadata(owner, entry_config_map_name(owner), COMPONENT),
        "data": {
            **RUNTIME_FILES,
            "bioengine-app.json": json.dumps(config, indent=2, sort_keys=True),
        },
    }


def route_prefix(owner: meta.Owner) -> str:
    return f"/{owner.name}"


def serve_config(
    owner: meta.Owner, spec: BioEngineAppSpec, datasets: list[MountedDataset]
) -> dict[str, Any]:
    cfg = spec.deployment_config
    actor = cfg.ray_actor_options
    options: dict[str, Any] = {
        "name": spec.entry.rsplit(":", 1)[1],
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": actor.num_cpus, "num_gpus": actor.num_gpus},
    }
    if actor.memory is not None:
        options["ray_actor_options"]["memory"] = actor.memory
    if cfg.autoscaling is not None:
        scaling: dict[str, float] = {
            "min_replicas": cfg.autoscaling.min_replicas,
            "max_replicas": cfg.autoscaling.max_replicas,
        }
        if cfg.autoscaling.target_ongoing_requests is not None:
            scaling["target_ongoing_requests"] = cfg.autoscaling.target_ongoing_requests
        options["autoscaling_config"] = scaling
    elif cfg.num_replicas is not None:
        options["num_replicas"] = cfg.num_replicas

    env_vars = dict(spec.runtime_env.env_vars)
    env_vars["BIOENGINE_APP_ID"] = owner.name
    env_vars["BIOENGINE_DATASETS"] = json.dumps(
        {
            d.name: {"url": d.endpoint, **({"path": d.mount_path} if d.volume else {})}
            for d in datasets
        },
        sort_keys=True,
    )
    runtime_env: dict[str, Any] = {"env_vars": env_vars}
    if spec.runtime_env.pip:
        runtime_env["pip"] = list(spec.runtime_env.pip)
    if spec.source.uri is not None:
        runtime_env["working_dir"] = spec.source.uri
    return {
        "applications": [
            {
                "name": owner.name,
                "route_prefix": route_prefix(owner),
                "import_path": f"{ENTRY_MODULE}:app",
                "runtime_env": runtime_env,
                "deployments": [options],
            }
        ]
    }


def _python_path(spec: BioEngineAppSpec) -> str:
    paths = [ENTRY_DIR]
    if spec.source.config_map is not None:
        paths.append(APP_DIR)
    if spec.source.image is not None:
        paths.append(spec.source.image.python_path)
    return ":".join(paths)


def _pod_template(
    owner: meta.Owner,
    spec: BioEngineAppSpec,
    datasets: list[MountedDataset],
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
    if spec.source.config_map is not None:
        volumes.append({"name": "app", "configMap": {"name": spec.source.config_map.name}})
        mounts.append({"name": "app", "mountPath": APP_DIR, "readOnly": True})
    for dataset in datasets:
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
        "image": spec.ray_cluster.image,
        "ports": ports,
        "env": [{"name": "PYTHONPATH", "value": _python_path(spec)}],
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
    if placement is not None:
        pod_spec["nodeSelector"] = dict(placement.node_selector)
        pod_spec["tolerations"] = meta.tolerations(placement.tolerations, resources.gpu)
    return {"metadata": {"labels": meta.labels(owner, COMPONENT)}, "spec": pod_spec}


def ray_service(
    owner: meta.Owner, spec: BioEngineAppSpec, datasets: list[MountedDataset]
) -> dict[str, Any]:
    cluster = spec.ray_cluster
    head_ports = [
        {"name": "gcs-server", "containerPort": 6379},
        {"name": "dashboard", "containerPort": 8265},
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
                owner, spec, datasets, "ray-head", cluster.head.resources, head_ports
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
                    owner, spec, datasets, "ray-worker", group.resources, [], group
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
            "serveConfigV2": yaml.safe_dump(serve_config(owner, spec, datasets), sort_keys=True),
            "rayClusterConfig": ray_cluster,
        },
    }


def children(
    owner: meta.Owner, spec: BioEngineAppSpec, datasets: list[MountedDataset]
) -> list[dict[str, Any]]:
    """The whole desired set: the entry ConfigMap and the RayService."""
    return [entry_config_map(owner, spec), ray_service(owner, spec, datasets)]


def serve_endpoint(owner: meta.Owner) -> str:
    """KubeRay's Serve Service for a RayService is ``<name>-serve-svc``."""
    return f"http://{owner.name}-serve-svc.{owner.namespace}.svc:{SERVE_PORT}{route_prefix(owner)}"
