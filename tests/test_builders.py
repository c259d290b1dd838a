"""Pure builders: spec in, manifests out, checked without a cluster."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from bioengine_operator import conditions
from bioengine_operator.api.app import BioEngineAppSpec
from bioengine_operator.api.dataset import BioEngineDatasetSpec
from bioengine_operator.api.modelrunner import ModelRunnerSpec
from bioengine_operator.builders import dataset, meta, rayservice, triton

OWNER = meta.Owner("ModelRunner", "unet", "lab", "uid-1")
APP_OWNER = meta.Owner("BioEngineApp", "seg", "lab", "uid-2")
DS_OWNER = meta.Owner("BioEngineDataset", "cells", "lab", "uid-3")


def runner(**changes: Any) -> ModelRunnerSpec:
    base = {"modelRepository": {"configMap": {"name": "models"}}, "models": ["unet2d", "cp"]}
    return ModelRunnerSpec.model_validate({**base, **changes})


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_triton_loads_listed_models_per_pod_with_strict_readiness() -> None:
    args = container(triton.deployment(OWNER, runner(), "blue"))["args"]
    assert "--model-control-mode=explicit" in args
    assert [a for a in args if a.startswith("--load-model=")] == [
        "--load-model=unet2d",
        "--load-model=cp",
    ]
    assert "--strict-readiness=true" in args


def test_each_color_recreates_in_place_and_avoids_the_other() -> None:
    dep = triton.deployment(OWNER, runner(replicas=2), "green")
    assert dep["metadata"]["name"] == "unet-green"
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert dep["spec"]["replicas"] == 2
    term = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ][0]["podAffinityTerm"]
    assert term["labelSelector"]["matchExpressions"] == [
        {"key": triton.COLOR_LABEL, "operator": "NotIn", "values": ["green"]}
    ]
    required = triton.deployment(OWNER, runner(colorAntiAffinity="required"), "blue")
    assert (
        "requiredDuringSchedulingIgnoredDuringExecution"
        in (required["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"])
    )


def test_probes_use_triton_health_endpoints() -> None:
    c = container(triton.deployment(OWNER, runner(startupTimeoutSeconds=300), "blue"))
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] == 300


def test_pods_are_non_root_with_read_only_root() -> None:
    dep = triton.deployment(OWNER, runner(), "blue")
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    security = container(dep)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False


def test_gpu_runner_requests_gpus_and_tolerates_the_gpu_taint() -> None:
    dep = triton.deployment(OWNER, runner(resources={"gpu": 1}), "blue")
    assert container(dep)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert meta.GPU_TOLERATION in dep["spec"]["template"]["spec"]["tolerations"]
    cpu = triton.deployment(OWNER, runner(), "blue")
    assert cpu["spec"]["template"]["spec"]["tolerations"] == []


def test_config_map_repository_keys_become_paths() -> None:
    keys = ("unet2d__config.pbtxt", "unet2d__1__model.py")
    dep = triton.deployment(OWNER, runner(), "blue", keys)
    volume = dep["spec"]["template"]["spec"]["volumes"][0]
    assert volume["configMap"]["items"] == [
        {"key": "unet2d__1__model.py", "path": "unet2d/1/model.py"},
        {"key": "unet2d__config.pbtxt", "path": "unet2d/config.pbtxt"},
    ]


def test_s3_repository_with_endpoint_and_secret() -> None:
    spec = runner(
        modelRepository={
            "s3": {
                "uri": "s3://bucket/models",
                "endpoint": "http://minio:9000",
                "secretRef": {"name": "s3-creds"},
            }
        }
    )
    c = container(triton.deployment(OWNER, spec, "blue"))
    assert "--model-repository=s3://minio:9000/bucket/models" in c["args"]
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


def test_revision_ignores_scaling_but_not_pod_changes() -> None:
    rev = triton.revision(runner())
    assert triton.revision(runner(replicas=3)) == rev
    assert triton.revision(runner(service={"id": "other"})) == rev
    assert triton.revision(runner(args=["--log-verbose=1"])) != rev
    assert triton.revision(runner(image="triton:next")) != rev


def test_service_and_pdb_select_both_colors() -> None:
    svc = triton.service(OWNER)
    assert triton.COLOR_LABEL not in svc["spec"]["selector"]
    pdb = triton.pod_disruption_budget(OWNER, runner(replicas=3))
    assert pdb["spec"]["minAvailable"] == 3
    assert pdb["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    pod_labels = triton.deployment(OWNER, runner(), "blue")["spec"]["template"]["metadata"]
    assert svc["spec"]["selector"].items() <= pod_labels["labels"].items()


def test_color_services_select_one_color_each() -> None:
    for color in triton.COLORS:
        svc = triton.color_service(OWNER, color)
        assert svc["metadata"]["name"] == f"unet-{color}"
        assert svc["spec"]["selector"][triton.COLOR_LABEL] == color
        assert triton.grpc_endpoint(OWNER, color) == f"unet-{color}.lab.svc:8001"


def test_children_are_owned_by_the_resource() -> None:
    ref = triton.service(OWNER)["metadata"]["ownerReferences"][0]
    assert ref == {
        "apiVersion": "bioengine.bioimage.io/v1alpha1",
        "kind": "ModelRunner",
        "name": "unet",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


APP = {
    "entry": "segmenter:CellSegmenter",
    "deployments": ["helpers.pre:Pre"],
    "source": {"configMap": {"name": "code"}},
    "deploymentConfig": {
        "rayActorOptions": {"numCpus": 2, "numGpus": 1, "memory": 1024},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
        "maxOngoingRequests": 7,
    },
    "runtimeEnv": {"pip": ["numpy"], "envVars": {"MODE": "fast"}},
    "rayCluster": {
        "workerGroups": [
            {
                "name": "gpu",
                "replicas": 1,
                "maxReplicas": 2,
                "resources": {"gpu": 1},
                "nodeSelector": {"pool": "gpu"},
            }
        ]
    },
}
CELLS = rayservice.MountedDataset(
    "cells", "http://cells-dataset.lab.svc:8080", {"persistentVolumeClaim": {"claimName": "c"}}
)


def app_service(**changes: Any) -> dict[str, Any]:
    spec = BioEngineAppSpec.model_validate({**APP, **changes})
    return rayservice.ray_service(APP_OWNER, spec, [CELLS])


def test_serve_config_follows_the_manifest() -> None:
    config = yaml.safe_load(app_service()["spec"]["serveConfigV2"])
    (application,) = config["applications"]
    assert application["import_path"] == "bioengine_serve_entry:app"
    assert application["route_prefix"] == "/seg"
    (entry,) = application["deployments"]
    assert entry == {
        "name": "CellSegmenter",
        "max_ongoing_requests": 7,
        "ray_actor_options": {"num_cpus": 2, "num_gpus": 1, "memory": 1024},
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 3},
    }
    env = application["runtime_env"]
    assert env["pip"] == ["numpy"]
    assert env["env_vars"]["MODE"] == "fast"
    assert json.loads(env["env_vars"]["BIOENGINE_DATASETS"]) == {
        "cells": {"url": "http://cells-dataset.lab.svc:8080", "path": "/data/cells"}
    }
    assert "working_dir" not in env


def test_uri_source_becomes_working_dir() -> None:
    rs = app_service(source={"uri": "https://hypha.example.org/app.zip"})
    env = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["runtime_env"]
    assert env["working_dir"] == "https://hypha.example.org/app.zip"


def test_code_and_datasets_are_mounted_read_only() -> None:
    head = app_service()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in head["containers"][0]["volumeMounts"]}
    for path in (rayservice.ENTRY_DIR, rayservice.APP_DIR, "/data/cells"):
        assert mounts[path]["readOnly"] is True
    env = {e["name"]: e["value"] for e in head["containers"][0]["env"]}
    assert env["PYTHONPATH"] == f"{rayservice.ENTRY_DIR}:{rayservice.APP_DIR}"


def test_gpu_worker_group() -> None:
    ray_cluster = app_service()["spec"]["rayClusterConfig"]
    (group,) = ray_cluster["workerGroupSpecs"]
    assert (group["groupName"], group["replicas"], group["maxReplicas"]) == ("gpu", 1, 2)
    pod = group["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert meta.GPU_TOLERATION in pod["tolerations"]
    assert ray_cluster["headGroupSpec"]["rayStartParams"] == {"num-cpus": "0"}
    assert ray_cluster["enableInTreeAutoscaling"] is True


def test_entry_config_map_carries_the_entry_module() -> None:
    spec = BioEngineAppSpec.model_validate(APP)
    cm = rayservice.entry_config_map(APP_OWNER, spec)
    assert "def build(" in cm["data"]["bioengine_serve_entry.py"]
    assert "def dumps(" in cm["data"]["bioengine_codec.py"]
    assert json.loads(cm["data"]["bioengine-app.json"]) == {
        "entry": "segmenter:CellSegmenter",
        "deployments": ["helpers.pre:Pre"],
        "exposedMethods": [],
    }


DATASET = {
    "source": {"pvc": {"claimName": "cells", "subPath": "v1"}},
    "manifest": {"name": "Cells", "authorizedUsers": ["alice"]},
}


def test_dataset_server_mounts_files_read_only() -> None:
    spec = BioEngineDatasetSpec.model_validate(DATASET)
    dep = dataset.deployment(DS_OWNER, spec, "img:1")
    c = container(dep)
    assert c["image"] == "img:1"
    assert c["command"][0] == "bioengine-dataserver"
    data = next(m for m in c["volumeMounts"] if m["name"] == "data")
    assert data == {"name": "data", "mountPath": "/data", "readOnly": True, "subPath": "v1"}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["readOnly"] is True


def test_dataset_manifest_change_rolls_the_server() -> None:
    spec = BioEngineDatasetSpec.model_validate(DATASET)
    other = BioEngineDatasetSpec.model_validate(
        {**DATASET, "manifest": {**DATASET["manifest"], "authorizedUsers": ["alice", "bob"]}}
    )
    key = f"{meta.PREFIX}/manifest-hash"

    def annotations(s: BioEngineDatasetSpec) -> dict[str, str]:
        return dataset.deployment(DS_OWNER, s, "img")["spec"]["template"]["metadata"]["annotations"]

    assert annotations(spec)[key] != annotations(other)[key]
    cm = dataset.manifest_config_map(DS_OWNER, other)
    assert json.loads(cm["data"]["manifest.json"])["id"] == "cells"


def test_s3_dataset_is_refused_clearly() -> None:
    spec = BioEngineDatasetSpec.model_validate(
        {**DATASET, "source": {"s3": {"uri": "s3://bucket/cells"}}}
    )
    with pytest.raises(dataset.UnsupportedSource, match="S3"):
        dataset.deployment(DS_OWNER, spec, "img")


def test_condition_transition_time_moves_only_on_change() -> None:
    first = conditions.set_condition([], "Ready", False, "Waiting", "", now="t1")
    same = conditions.set_condition(first, "Ready", False, "StillWaiting", "x", now="t2")
    assert same[0]["lastTransitionTime"] == "t1"
    flipped = conditions.set_condition(same, "Ready", True, "Done", "", now="t3")
    assert flipped[0]["lastTransitionTime"] == "t3"
    assert len(flipped) == 1


def test_digest_ignores_key_order() -> None:
    assert meta.digest({"a": 1, "b": [1, 2]}) == meta.digest({"b": [1, 2], "a": 1})
    assert meta.digest({"a": 1}) != meta.digest({"a": 2})
