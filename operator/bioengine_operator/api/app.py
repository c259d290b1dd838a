"""BioEngineApp: a BioEngine app of format 0.6.0, run by Ray Serve on its own RayService.

The spec is the app's ``manifest.yaml`` (:class:`AppManifest`, in Kubernetes' camelCase)
plus what the manifest cannot say: where the code comes from (``source``), the Ray cluster,
mounted datasets, the Hypha service, and a cluster admin's deploy-time overrides
(``classes``, ``methods``, ``envVars``, ``disableGpu``). The fields format 0.6.0 dropped
are refused by name, at ``kubectl apply``, with what replaced them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from pydantic.config import JsonDict

from bioengine_operator.api.base import (
    DNS_1035,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    IMAGE,
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
DEFAULT_RAY_VERSION = "2.60.0"
DEFAULT_RAY_IMAGE = f"rayproject/ray:{DEFAULT_RAY_VERSION}-py311"
# KubeRay refuses RayService names over 47 characters (its RayCluster gets 6 more, up to 53).
APP_NAME_MAX = 47


class Autoscaling(Model):
    min_replicas: int = Field(1, ge=0, le=1000, description="Fewest replicas Ray Serve keeps.")
    max_replicas: int = Field(1, ge=1, le=1000, description="Most replicas Ray Serve may start.")
    target_ongoing_requests: float | None = Field(
        None, gt=0, description="Ongoing requests per replica that Serve scales towards."
    )


class ClassOverride(Model):
    """A cluster admin's deploy-time settings for one ``@bioengine.app`` class, on top of
    what its decorator says."""

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

    num_replicas: int | None = Field(None, ge=1, le=1000, description="A fixed replica count.")
    autoscaling: Autoscaling | None = Field(None, description="Replica autoscaling bounds.")
    init_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the class's constructor (JSON values).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Environment variables of this class's replicas."
    )

    @model_validator(mode="after")
    def _scaling(self) -> ClassOverride:
        if self.autoscaling is not None and self.num_replicas is not None:
            raise ValueError("set numReplicas or autoscaling, not both")
        if self.autoscaling and self.autoscaling.min_replicas > self.autoscaling.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
        return self


class MethodOverride(Model):
    authorized_users: list[str] = Field(
        min_length=1,
        description='Who may call this method (Hypha user ids or emails; "*" for everyone), '
        "instead of the app's authorizedUsers.",
    )


class Author(Model):
    name: str | None = Field(None, description="Full name.")
    affiliation: str | None = Field(None, description="Institution.")
    email: str | None = Field(None, description="Contact address.")
    github_user: str | None = Field(None, description="GitHub user name.")
    orcid: str | None = Field(None, description="ORCID iD.")


class KeyToPath(Model):
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", description="A key of the ConfigMap.")
    path: str = Field(
        pattern=r"^[^/]+(/[^/]+)*$",
        description="Where that file goes in the app's folder, e.g. runtimes/a.py.",
    )


class ConfigMapSource(Model):
    name: str = object_name("ConfigMap whose keys are the app's files (e.g. main.py).")
    items: list[KeyToPath] = Field(
        default_factory=list,
        description="Files in subfolders (ConfigMap keys cannot hold '/'): each key and its "
        "path in the folder. Keys not listed are left out, so `bioengine render` lists "
        "every file once any is in a subfolder.",
    )


class ImageSource(Model):
    python_path: str = Field(
        "/home/ray/app", description="Directory in the image that holds the app's modules."
    )


# Key of each part in a zip source's ConfigMaps (binaryData), and most parts an app may have.
ZIP_PART_KEY = "part"
ZIP_PARTS_MAX = 64


class ZipSource(Model):
    config_maps: list[Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]] = Field(
        min_length=1,
        max_length=ZIP_PARTS_MAX,
        description="ConfigMaps holding the app as one zip split in order: the bytes under "
        f"binaryData key {ZIP_PART_KEY!r} of each, concatenated, are the zip (its root is "
        "the app's folder). An init container of every Ray pod unpacks it where a "
        "configMap source would be mounted.",
    )


class AppSource(OneOf):
    """Where the app's code comes from: exactly one of the four."""

    one_of = ("config_map", "uri", "image", "zip")

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
    zip: ZipSource | None = Field(
        None,
        description="The app as a zip split over ConfigMaps (what `bioengine render` makes "
        "of a folder too large for one ConfigMap), unpacked into every Ray pod.",
    )

    def config_map_names(self) -> list[str]:
        """The ConfigMaps holding the code (none for a URI or image source): the operator
        hashes them, so that changed code rolls the Ray cluster."""
        if self.config_map is not None:
            return [self.config_map.name]
        return list(self.zip.config_maps) if self.zip is not None else []


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
    replicas: int = Field(1, ge=0, le=1000, description="Workers started initially.")
    min_replicas: int = Field(0, ge=0, le=1000, description="Fewest workers the autoscaler keeps.")
    max_replicas: int = Field(1, ge=0, le=1000, description="Most workers the autoscaler may add.")
    resources: RayResources = Field(
        default_factory=RayResources, description="Resources of each worker pod."
    )


class RayClusterSpec(Model):
    ray_version: str = Field(
        DEFAULT_RAY_VERSION, description="Ray version of the image (KubeRay needs it)."
    )
    image: str | None = Field(
        None,
        pattern=IMAGE,
        description="Container image of every Ray pod; unset uses the operator's default "
        f"(--ray-image, {DEFAULT_RAY_IMAGE} unless the chart sets another).",
    )
    head: HeadGroup = Field(default_factory=HeadGroup, description="The Ray head pod.")
    worker_groups: list[WorkerGroup] = Field(
        default_factory=list, max_length=16, description="Worker pools, e.g. a GPU spot pool."
    )
    enable_autoscaling: bool = Field(
        True, description="Run KubeRay's in-tree autoscaler (scales workers with Serve load)."
    )
    idle_timeout_seconds: int = Field(
        60,
        ge=0,
        le=86_400,
        description="Seconds an idle worker lives before the autoscaler removes it.",
    )


MIGRATION = "docs/app-format.md#migrating-from-format-05"
# Fields of format 0.5 manifests that 0.6.0 dropped, and what replaced each.
DROPPED = {
    "deployments": "compose classes through constructor type hints",
    "deployment_config": "use @bioengine.app(...) options, or classes.<Class> overrides",
    "runtime_env": "use @bioengine.app(pip=..., env_vars=...), or envVars",
    "exposed_methods": "mark the methods with @bioengine.method",
}
OBJECT_FIELDS = ("deployment_config", "runtime_env")


def _dropped(name: str, replacement: str) -> tuple[Any, dict[str, Any]]:
    """A field of format 0.5, kept only to be refused with a message that says what to do:
    its Field, and the CEL rule on the spec."""
    wire = "".join(w.capitalize() if i else w for i, w in enumerate(name.split("_")))
    keep: JsonDict | None = (
        {"x-kubernetes-preserve-unknown-fields": True} if name in OBJECT_FIELDS else None
    )
    return Field(
        None,
        description=f"Dropped in format 0.6.0 ({replacement}); refused when set.",
        json_schema_extra=keep,
    ), cel(
        f"!has(self.{wire})",
        f"{wire} is a format 0.5 field that format 0.6.0 dropped: {replacement} (see {MIGRATION})",
    )


class AppManifest(Model):
    """The fields of a format 0.6.0 ``manifest.yaml`` (snake_case there, camelCase here)."""

    name: str = Field(min_length=1, description="Human-readable app name.")
    id: str = Field(
        pattern=DNS_LABEL,
        max_length=63,
        description="App id: lowercase letters, digits and '-'; the default Hypha service id.",
    )
    id_emoji: str = Field("", description="An emoji shown beside the id.")
    description: str = Field(min_length=1, description="What the app does.")
    type: Literal["ray-serve"] = Field("ray-serve", description="App type: ray-serve.")
    format_version: str = Field(
        description="Manifest format: 0.6.0 (0.4 and 0.5 apps must be migrated first).",
    )
    entry: str = Field(
        pattern=IMPORT_PATH,
        description="The entry class as module:Class, a @bioengine.app class whose "
        "@bioengine.method functions the Hypha service offers.",
    )
    version: str | None = Field(None, description="Version of the app.")
    frontend_entry: str | None = Field(
        None,
        pattern=r"^([^./][^/]*/)*[^./][^/]*\.html?$",
        description="An HTML page in the app's folder, served through Hypha as the app's UI.",
    )
    authorized_users: list[str] = Field(
        default_factory=lambda: ["*"],
        description='Users (Hypha user ids or emails) allowed to call the app; "*" (the '
        "default) allows everyone who can reach the service.",
    )
    documentation: str | None = Field(None, description="Documentation file or URL.")
    tutorial: str | None = Field(None, description="Tutorial notebook or URL.")
    authors: list[Author] = Field(default_factory=list, description="Who wrote the app.")
    maintainers: list[str] = Field(default_factory=list, description="Who maintains it.")
    license: str | None = Field(None, description="SPDX license id.")
    git_repo: str | None = Field(None, description="Source repository URL.")
    links: list[str] = Field(default_factory=list, description="Related links.")
    tags: list[str] = Field(default_factory=list, description="Search tags.")
    covers: list[str] = Field(default_factory=list, description="Cover images in the folder.")


FORMAT_RULE = cel(
    "self.formatVersion == '0.6.0'",
    "formatVersion must be 0.6.0: apps of format 0.4/0.5 (deployments lists, "
    f"deploymentConfig) must be migrated first (see {MIGRATION})",
)
_DROPPED = {name: _dropped(name, replacement) for name, replacement in DROPPED.items()}


class BioEngineAppSpec(AppManifest):
    """The manifest, where the code comes from, and what a cluster admin sets at deploy time."""

    model_config = with_rules(FORMAT_RULE, *(rule for _, rule in _DROPPED.values()))

    deployments: list[str] | None = _DROPPED["deployments"][0]
    deployment_config: dict[str, Any] | None = _DROPPED["deployment_config"][0]
    runtime_env: dict[str, Any] | None = _DROPPED["runtime_env"][0]
    exposed_methods: list[str] | None = _DROPPED["exposed_methods"][0]

    source: AppSource = Field(description="Where the app's code comes from.")
    classes: dict[str, ClassOverride] = Field(
        default_factory=dict,
        description="Deploy-time settings per @bioengine.app class name: replicas or "
        "autoscaling, constructor arguments, env vars.",
    )
    methods: dict[str, MethodOverride] = Field(
        default_factory=dict, description="Per-method authorized users, by method name."
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict, description="Environment variables of every replica."
    )
    disable_gpu: bool = Field(
        False, description="Run every class without GPUs, whatever its decorator asks for."
    )
    ray_cluster: RayClusterSpec = Field(
        default_factory=RayClusterSpec, description="The Ray cluster that runs the app."
    )
    datasets: list[Annotated[str, Field(pattern=DNS_1035, max_length=DATASET_NAME_MAX)]] = Field(
        default_factory=list,
        description="BioEngineDatasets (same namespace) mounted read-only into the Ray pods "
        "at /data/<name> (bioengine.datasets.path(name)).",
    )
    service: ServiceSpec = Field(
        default_factory=ServiceSpec,
        description="Hypha service registration (its id defaults to the manifest's id).",
    )
    init_timeout_seconds: int = Field(
        900,
        ge=10,
        le=604_800,
        description="An app not Ready this long after a change is reported Stuck "
        "(condition and Event).",
    )

    @model_validator(mode="after")
    def _format(self) -> BioEngineAppSpec:
        if self.format_version != "0.6.0":
            raise ValueError(FORMAT_RULE["message"])
        for name, (_, rule) in _DROPPED.items():
            if getattr(self, name) is not None:
                raise ValueError(rule["message"])
        return self
