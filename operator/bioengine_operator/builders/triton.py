"""ModelRunner → two Triton Deployments (blue, green), one Service, one PodDisruptionBudget.

Both colors serve in steady state; the Service selects the runner's pods of either color and
Kubernetes routes only to Ready ones. Each color's Deployment uses the Recreate strategy:
a color is replaced in place, never surged, so a runner never holds more pods (or GPUs)
than ``2 x replicas``. Which color may change when is decided in :mod:`bluegreen`, from the
revision: a hash of the pod templates this module renders, as Kubernetes' Deployment
controller hashes a pod template (``pod-template-hash``), so that anything that changes a
pod, from the spec, the model ConfigMap or the operator itself, is a new revision.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bioengine_operator.api.modelrunner import ModelRunnerSpec
from bioengine_operator.bluegreen import COLORS, Color
from bioengine_operator.builders import meta

COMPONENT = "model-runner"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
REPO_MOUNT = "/models"
COLOR_LABEL = f"{meta.PREFIX}/color"
REVISION_LABEL = f"{meta.PREFIX}/revision"
REPOSITORY_ANNOTATION = f"{meta.PREFIX}/model-repository-hash"
DRAIN_SECONDS = 5  # a deleted pod's grace before Triton stops (see pod_template)


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Everything besides the spec that shapes a runner's pods, as the reconciler found it."""

    triton_image: str  # the operator's default, for runners that name no image
    config_map_keys: tuple[str, ...] = ()  # keys of a ConfigMap repository
    config_map_hash: str | None = None  # digest of its content: a changed model rolls pods


def deployment_name(owner: meta.Owner, color: Color) -> str:
    return f"{owner.name}-{color}"


def selector(owner: meta.Owner) -> dict[str, str]:
    """Pods of this runner, either color: what the Service and the PDB select."""
    return {f"{meta.PREFIX}/modelrunner": owner.name, "app.kubernetes.io/name": COMPONENT}


def model_repository(
    spec: ModelRunnerSpec, config_map_keys: tuple[str, ...]
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Repository location for ``--model-repository``, plus volumes, mounts and envFrom."""
    repo = spec.model_repository
    if repo.s3 is not None:
        location = repo.s3.uri
        if repo.s3.endpoint:
            # Triton's form for S3-compatible stores: s3://host:port/bucket/prefix
            host = repo.s3.endpoint.split("://", 1)[1].rstrip("/")
            location = f"s3://{host}/{repo.s3.uri.removeprefix('s3://')}"
        env_from = [{"secretRef": {"name": repo.s3.secret_ref.name}}] if repo.s3.secret_ref else []
        return location, [], [], env_from
    if repo.pvc is not None:
        volume = {
            "name": "models",
            "persistentVolumeClaim": {"claimName": repo.pvc.claim_name, "readOnly": True},
        }
        mount = {"name": "models", "mountPath": REPO_MOUNT, "readOnly": True}
        if repo.pvc.sub_path:
            mount["subPath"] = repo.pvc.sub_path
        return REPO_MOUNT, [volume], [mount], []
    assert repo.config_map is not None  # the CRD's CEL rule guarantees exactly one source
    items = [{"key": key, "path": key.replace("__", "/")} for key in sorted(config_map_keys)]
    volume = {"name": "models", "configMap": {"name": repo.config_map.name, "items": items}}
    return REPO_MOUNT, [volume], [{"name": "models", "mountPath": REPO_MOUNT, "readOnly": True}], []


def triton_args(spec: ModelRunnerSpec, repository: str) -> list[str]:
    return [
        "tritonserver",
        f"--model-repository={repository}",
        "--model-control-mode=explicit",
        *(f"--load-model={model}" for model in spec.models),
        # Ready only when every listed model is loaded: the Service then never routes a
        # request to a pod that would answer "model not found".
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        f"--allow-gpu-metrics={'true' if spec.resources.gpu else 'false'}",
        *spec.args,
    ]


def pod_template(
    owner: meta.Owner, spec: ModelRunnerSpec, inputs: Inputs, color: Color
) -> dict[str, Any]:
    """The pod template of one color, without its revision label (the revision hashes it)."""
    repository, volumes, mounts, env_from = model_repository(spec, inputs.config_map_keys)
    scratch, scratch_mounts = meta.scratch_volumes()
    other_color = {
        "labelSelector": {
            "matchLabels": selector(owner),
            "matchExpressions": [{"key": COLOR_LABEL, "operator": "NotIn", "values": [color]}],
        },
        "topologyKey": "kubernetes.io/hostname",
    }
    affinity = (
        {"requiredDuringSchedulingIgnoredDuringExecution": [other_color]}
        if spec.color_anti_affinity == "required"
        else {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": other_color}
            ]
        }
    )
    probe_port = {"port": "http"}
    container: dict[str, Any] = {
        "name": "triton",
        "image": spec.image or inputs.triton_image,
        "args": triton_args(spec, repository),
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT},
            {"name": "grpc", "containerPort": GRPC_PORT},
            {"name": "metrics", "containerPort": METRICS_PORT},
        ],
        "resources": meta.resources(spec.resources.cpu, spec.resources.memory, spec.resources.gpu),
        "startupProbe": {
            "httpGet": {"path": "/v2/health/ready", **probe_port},
            "periodSeconds": 5,
            "failureThreshold": max(1, spec.startup_timeout_seconds // 5),
        },
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", **probe_port},
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", **probe_port},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "volumeMounts": [*mounts, *scratch_mounts],
        "securityContext": meta.container_security_context(),
        # A deleted pod keeps serving for a moment before Triton hears SIGTERM and unloads its
        # models: the EndpointSlice controller and every node's kube-proxy first stop sending
        # it calls, and the other color's new pods, just Ready, become reachable meanwhile.
        # Without it, real pods lost calls during updates (tests/test_real_node.py).
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
    }
    if env_from:
        container["envFrom"] = env_from
    annotations = dict(spec.pod_annotations)
    if inputs.config_map_hash is not None:
        annotations[REPOSITORY_ANNOTATION] = inputs.config_map_hash
    return {
        "metadata": {"labels": {**selector(owner), COLOR_LABEL: color}, "annotations": annotations},
        "spec": {
            "containers": [container],
            "volumes": [*volumes, *scratch],
            "affinity": {"podAntiAffinity": affinity},
            "nodeSelector": dict(spec.node_selector),
            "tolerations": meta.tolerations(spec.tolerations, spec.resources.gpu),
            "securityContext": meta.pod_security_context(),
            "enableServiceLinks": False,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 30,
        },
    }


def revision(owner: meta.Owner, spec: ModelRunnerSpec, inputs: Inputs) -> str:
    """Hash of both colors' pod templates: replica counts and Hypha settings roll no pod."""
    return meta.digest([pod_template(owner, spec, inputs, color) for color in COLORS])


def deployment(
    owner: meta.Owner, spec: ModelRunnerSpec, inputs: Inputs, color: Color, rev: str
) -> dict[str, Any]:
    template = pod_template(owner, spec, inputs, color)
    template["metadata"]["labels"][REVISION_LABEL] = rev
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta.metadata(
            owner,
            deployment_name(owner, color),
            COMPONENT,
            extra_labels={COLOR_LABEL: color, REVISION_LABEL: rev},
        ),
        "spec": {
            "replicas": spec.replicas,
            # Recreate: the old pods of this color go before new ones start, so an update
            # needs no extra GPU; the other color serves meanwhile.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {**selector(owner), COLOR_LABEL: color}},
            "template": template,
        },
    }


def children(
    owner: meta.Owner,
    spec: ModelRunnerSpec,
    inputs: Inputs,
    rev: str,
    moving: tuple[Color, ...],
) -> list[dict[str, Any]]:
    """The whole desired set: the Deployments of the colors ``moving`` to (or staying at)
    revision ``rev`` (a color left out keeps its Deployment untouched), the Services and
    the PodDisruptionBudget."""
    return [
        *(deployment(owner, spec, inputs, color, rev) for color in moving),
        service(owner),
        *(color_service(owner, color) for color in COLORS),
        pod_disruption_budget(owner, spec),
    ]


def service(owner: meta.Owner) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.metadata(owner, owner.name, COMPONENT),
        "spec": {
            "selector": selector(owner),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }


def color_service(owner: meta.Owner, color: Color) -> dict[str, Any]:
    """One Service per color: the bridge sends a call to one color and, if it fails, to the
    other; through the shared Service a retry could land on the same dying pod."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.metadata(
            owner, deployment_name(owner, color), COMPONENT, extra_labels={COLOR_LABEL: color}
        ),
        "spec": {
            "selector": {**selector(owner), COLOR_LABEL: color},
            "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"}],
        },
    }


def pod_disruption_budget(owner: meta.Owner, spec: ModelRunnerSpec) -> dict[str, Any]:
    """Voluntary disruptions (drains, spot rebalancing) may take at most one color's worth."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta.metadata(owner, owner.name, COMPONENT),
        "spec": {"minAvailable": spec.replicas, "selector": {"matchLabels": selector(owner)}},
    }


def grpc_endpoint(owner: meta.Owner, color: Color | None = None) -> str:
    """gRPC address of the runner's Service, or of one color's."""
    name = deployment_name(owner, color) if color else owner.name
    return f"{name}.{owner.namespace}.svc:{GRPC_PORT}"
