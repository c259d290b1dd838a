"""BioEngineApp: a Ray Serve application in the BioEngine app manifest's terms.

The manifest fields (``entry``, ``deployments``, ``deploymentConfig``, ``runtimeEnv``,
``authorizedUsers``, ``description``, ``version``) follow the BioEngine app manifest
(format 0.6) in Kubernetes' camelCase; ``source``, ``rayCluster``, ``datasets`` and
``service`` say where the code comes from and where and how it runs.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from bioengine_operator.api.base import (
    DNS_1035,
    DNS_LABEL,
    Model,
    OneOf,
    Placement,
    Quantity,
    Resources,
    ServiceSpec,
    cel,
    object_name,
    with_rules,
)
from bioengine_operator.api.dataset import DATASET_NAME_MAX

IMPORT_PATH = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
ImportPath = Annotated[str, Field(pattern=IMPORT_PATH)]
DEFAULT_RAY_VERSION = "2.60.0"
DEFAULT_RAY_IMAGE = f"rayproject/ray:{DEFAULT_RAY_VERSION}-py311"
# KubeRay refuses RayService names over 47 characters (its RayCluster gets 6 more, up to 53).
APP_NAME_MAX = 47


class RayActorOptions(Model):
    num_cpus: float = Field(1, ge=0, description="CPUs reserved per replica (Ray num_cpus).")
    num_gpus: float = Field(0, ge=0, description="GPUs reserved per replica (Ray num_gpus).")
    memory: int | None = Field(
        None, ge=0, description="Memory reserved per replica in bytes (Ray memory)."
    )


class Autoscaling(Model):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas Ray Serve keeps.")
    max_replicas: int = Field(1, ge=1, description="Most replicas Ray Serve may start.")
    target_ongoing_requests: float | None = Field(
        None, gt=0, description="Ongoing requests per replica that Serve scales towards."
    )


class DeploymentConfig(Model):
    """Ray Serve options applied to the entry deployment."""

    model_config = with_rules(
        cel(
            "!has(self.autoscaling) || "
            "self.autoscaling.minReplicas <= self.autoscaling.maxReplicas",
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        ),
        cel(
            "!(has(self.autoscaling) && has(self.numReplicas))",
            "set numReplicas or autoscaling, not both",
        ),
    )

    ray_actor_options: RayActorOptions = Field(
        default_factory=RayActorOptions, description="Resources reserved per replica."
    )
    num_replicas: int | None = Field(
        None, ge=1, description="Fixed replica count (leave unset when autoscaling)."
    )
    autoscaling: Autoscaling | None = Field(None, description="Replica autoscaling bounds.")
    max_ongoing_requests: int = Field(
        5, ge=1, description="Concurrent requests one replica accepts before queueing."
    )


class RuntimeEnv(Model):
    pip: list[str] = Field(default_factory=list, description="pip requirements installed by Ray.")
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Environment variables for the app's replicas."
    )


class ConfigMapSource(Model):
    name: str = object_name("ConfigMap whose keys are the app's files (e.g. main.py).")


class ImageSource(Model):
    python_path: str = Field(
        "/home/ray/app", description="Directory in the image that holds the app's modules."
    )


class AppSource(OneOf):
    """Where the app's code comes from: exactly one of the three."""

    one_of = ("config_map", "uri", "image")

    config_map: ConfigMapSource | None = Field(
        None, description="App files in a ConfigMap, mounted read-only into every Ray pod."
    )
    uri: str | None = Field(
        None,
        pattern=r"^(https?|s3|gs)://\S+\.zip$",
        description="A zip of the app (http(s), s3, gs or a Hypha artifact URL), used as "
        "Ray's runtime_env working_dir.",
    )
    image: ImageSource | None = Field(
        None, description="The code is baked into the Ray image of rayCluster.image."
    )


class RayResources(Resources):
    """Resources of one Ray pod: Ray wants more memory than the common default."""

    memory: Quantity = Field("4Gi", description="Memory request and limit, e.g. 16Gi.")


class HeadGroup(Model):
    resources: RayResources = Field(
        default_factory=lambda: RayResources(cpu="1", memory="4Gi"),
        description="Resources of the Ray head pod.",
    )


class WorkerGroup(Placement):
    model_config = with_rules(
        cel("self.minReplicas <= self.maxReplicas", "minReplicas must not exceed maxReplicas"),
        cel(
            "self.minReplicas <= self.replicas && self.replicas <= self.maxReplicas",
            "replicas must lie between minReplicas and maxReplicas",
        ),
    )

    name: str = Field(pattern=DNS_LABEL, max_length=40, description="Worker group name.")
    replicas: int = Field(1, ge=0, description="Workers started initially.")
    min_replicas: int = Field(0, ge=0, description="Fewest workers the autoscaler keeps.")
    max_replicas: int = Field(1, ge=0, description="Most workers the autoscaler may add.")
    resources: RayResources = Field(
        default_factory=RayResources, description="Resources of each worker pod."
    )


class RayClusterSpec(Model):
    ray_version: str = Field(
        DEFAULT_RAY_VERSION, description="Ray version of the image (KubeRay needs it)."
    )
    image: str = Field(DEFAULT_RAY_IMAGE, description="Container image of every Ray pod.")
    head: HeadGroup = Field(default_factory=HeadGroup, description="The Ray head pod.")
    worker_groups: list[WorkerGroup] = Field(
        default_factory=list, max_length=16, description="Worker pools, e.g. a GPU spot pool."
    )
    enable_autoscaling: bool = Field(
        True, description="Run KubeRay's in-tree autoscaler (scales workers with Serve load)."
    )
    idle_timeout_seconds: int = Field(
        60, ge=0, description="Seconds an idle worker lives before the autoscaler removes it."
    )


class BioEngineAppSpec(Model):
    name: str | None = Field(None, description="Human-readable app name.")
    description: str = Field("", description="What the app does (shown on its Hypha service).")
    version: str | None = Field(None, description="Version of the app.")
    entry: str = Field(
        pattern=IMPORT_PATH,
        description="Entry deployment as module:Class; its public methods become the "
        "service's functions.",
    )
    deployments: list[ImportPath] = Field(
        default_factory=list,
        description="Further deployments (module:Class), passed to the entry class as "
        "DeploymentHandle arguments named after their module.",
    )
    exposed_methods: list[str] = Field(
        default_factory=list,
        description="Methods of the entry class the Hypha service offers; empty offers every "
        "public method.",
    )
    deployment_config: DeploymentConfig = Field(
        default_factory=DeploymentConfig, description="Ray Serve options of the entry deployment."
    )
    runtime_env: RuntimeEnv = Field(
        default_factory=RuntimeEnv, description="Ray runtime environment of the app."
    )
    authorized_users: list[str] = Field(
        default_factory=list,
        description='Users (Hypha user ids or emails) allowed to call the app; "*" allows '
        "everyone; empty allows only the service's workspace.",
    )
    source: AppSource = Field(description="Where the app's code comes from.")
    ray_cluster: RayClusterSpec = Field(
        default_factory=RayClusterSpec, description="The Ray cluster that runs the app."
    )
    datasets: list[Annotated[str, Field(pattern=DNS_1035, max_length=DATASET_NAME_MAX)]] = Field(
        default_factory=list,
        description="BioEngineDatasets (same namespace) mounted read-only into the Ray pods.",
    )
    service: ServiceSpec = Field(
        default_factory=ServiceSpec, description="Hypha service registration."
    )
    init_timeout_seconds: int = Field(
        900,
        ge=10,
        description="An app not Ready this long after a change is reported Stuck "
        "(condition and Event).",
    )
