"""Pure builders: spec in, manifests out, checked without a cluster."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bioengine_operator import appfolder, conditions
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


INPUTS = triton.Inputs("triton:default")


def deployment(
    spec: ModelRunnerSpec, color: triton.Color, inputs: triton.Inputs = INPUTS
) -> dict[str, Any]:
    return triton.deployment(OWNER, spec, inputs, color, triton.revision(OWNER, spec, inputs))


def test_triton_loads_listed_models_per_pod_with_strict_readiness() -> None:
    args = container(deployment(runner(), "blue"))["args"]
    assert "--model-control-mode=explicit" in args
    assert [a for a in args if a.startswith("--load-model=")] == [
        "--load-model=unet2d",
        "--load-model=cp",
    ]
    assert "--strict-readiness=true" in args


def test_each_color_recreates_in_place_and_avoids_the_other() -> None:
    dep = deployment(runner(replicas=2), "green")
    assert dep["metadata"]["name"] == "unet-green"
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert dep["spec"]["replicas"] == 2
    term = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ][0]["podAffinityTerm"]
    assert term["labelSelector"]["matchExpressions"] == [
        {"key": triton.COLOR_LABEL, "operator": "NotIn", "values": ["green"]}
    ]
    required = deployment(runner(colorAntiAffinity="required"), "blue")
    assert (
        "requiredDuringSchedulingIgnoredDuringExecution"
        in (required["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"])
    )


def test_probes_use_triton_health_endpoints() -> None:
    c = container(deployment(runner(startupTimeoutSeconds=300), "blue"))
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] == 300


def test_pods_are_non_root_with_read_only_root() -> None:
    dep = deployment(runner(), "blue")
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    security = container(dep)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False


def test_gpu_runner_requests_gpus_and_tolerates_the_gpu_taint() -> None:
    dep = deployment(runner(resources={"gpu": 1}), "blue")
    assert container(dep)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert meta.GPU_TOLERATION in dep["spec"]["template"]["spec"]["tolerations"]
    cpu = deployment(runner(), "blue")
    assert cpu["spec"]["template"]["spec"]["tolerations"] == []


def test_config_map_repository_keys_become_paths() -> None:
    keys = ("unet2d__config.pbtxt", "unet2d__1__model.py")
    dep = deployment(runner(), "blue", triton.Inputs("triton:default", keys))
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
    c = container(deployment(spec, "blue"))
    assert "--model-repository=s3://minio:9000/bucket/models" in c["args"]
    assert c["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]


def test_revision_ignores_scaling_but_not_pod_changes() -> None:
    def revision(spec: ModelRunnerSpec) -> str:
        return triton.revision(OWNER, spec, INPUTS)

    rev = revision(runner())
    assert revision(runner(replicas=3)) == rev
    assert revision(runner(service={"id": "other"})) == rev
    assert revision(runner(args=["--log-verbose=1"])) != rev
    assert revision(runner(image="triton:next")) != rev


def test_the_operator_image_is_the_default_and_pods_carry_the_revision() -> None:
    dep = deployment(runner(), "blue")
    assert container(dep)["image"] == "triton:default"
    assert container(deployment(runner(image="mine:1"), "blue"))["image"] == "mine:1"
    rev = triton.revision(OWNER, runner(), INPUTS)
    assert dep["spec"]["template"]["metadata"]["labels"][triton.REVISION_LABEL] == rev
    assert dep["metadata"]["labels"][triton.REVISION_LABEL] == rev


def test_a_deleted_triton_pod_drains_before_triton_stops() -> None:
    """Found with real pods: without the drain, calls failed during updates."""
    pod = deployment(runner(), "blue")["spec"]["template"]["spec"]
    lifecycle = pod["containers"][0]["lifecycle"]
    assert lifecycle == {"preStop": {"sleep": {"seconds": triton.DRAIN_SECONDS}}}
    assert pod["terminationGracePeriodSeconds"] > triton.DRAIN_SECONDS


def test_model_config_map_content_is_in_the_pod_template() -> None:
    inputs = triton.Inputs("triton:default", ("m__config.pbtxt",), "content-hash")
    annotations = deployment(runner(), "blue", inputs)["spec"]["template"]["metadata"]
    assert annotations["annotations"][triton.REPOSITORY_ANNOTATION] == "content-hash"


def test_held_colors_are_left_out_of_the_desired_set() -> None:
    rev = triton.revision(OWNER, runner(), INPUTS)
    kinds = [
        (c["kind"], c["metadata"]["name"])
        for c in triton.children(OWNER, runner(), INPUTS, rev, ("green",))
    ]
    assert ("Deployment", "unet-green") in kinds and ("Deployment", "unet-blue") not in kinds
    assert {("Service", "unet"), ("Service", "unet-blue"), ("PodDisruptionBudget", "unet")} <= set(
        kinds
    )


def test_service_and_pdb_select_both_colors() -> None:
    svc = triton.service(OWNER)
    assert triton.COLOR_LABEL not in svc["spec"]["selector"]
    pdb = triton.pod_disruption_budget(OWNER, runner(replicas=3))
    assert pdb["spec"]["minAvailable"] == 3
    assert pdb["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    pod_labels = deployment(runner(), "blue")["spec"]["template"]["metadata"]
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
    "name": "Cell segmenter",
    "id": "cell-segmenter",
    "description": "Segments cells.",
    "formatVersion": "0.6.0",
    "entry": "segmenter:CellSegmenter",
    "frontendEntry": "ui/index.html",
    "source": {
        "configMap": {
            "name": "code",
            "items": [
                {"key": "segmenter.py", "path": "segmenter.py"},
                {"key": "helpers--pre.py", "path": "helpers/pre.py"},
            ],
        }
    },
    "classes": {
        "CellSegmenter": {"autoscaling": {"minReplicas": 1, "maxReplicas": 3}},
        "Pre": {"numReplicas": 2, "initKwargs": {"scale": 0.5}, "envVars": {"MODE": "fast"}},
    },
    "envVars": {"LAB": "kth"},
    "disableGpu": True,
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
APP_INPUTS = rayservice.Inputs((CELLS,), code_hash="abc123", gpu_memory_mb=24576)


def app_service(inputs: rayservice.Inputs = APP_INPUTS, **changes: Any) -> dict[str, Any]:
    spec = BioEngineAppSpec.model_validate({**APP, **changes})
    return rayservice.ray_service(APP_OWNER, spec, inputs)


def test_the_operators_ray_image_is_the_default() -> None:
    def images(service: dict[str, Any]) -> set[str]:
        cluster = service["spec"]["rayClusterConfig"]
        pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        return {p["template"]["spec"]["containers"][0]["image"] for p in pods}

    mirrored = rayservice.Inputs((CELLS,), ray_image="mirror.example/ray:2.60.0")
    assert images(app_service(mirrored)) == {"mirror.example/ray:2.60.0"}
    assert images(app_service()) == {rayservice.DEFAULT_RAY_IMAGE}
    named = {**APP["rayCluster"], "image": "mine/ray:1"}  # type: ignore[dict-item]
    assert images(app_service(mirrored, rayCluster=named)) == {"mine/ray:1"}


def test_serve_config_hands_the_manifest_and_overrides_to_the_runtime() -> None:
    config = yaml.safe_load(app_service()["spec"]["serveConfigV2"])
    (application,) = config["applications"]
    assert application["import_path"] == "bioengine_serve_entry:app"
    assert application["route_prefix"] == "/seg"
    args = application["args"]
    assert args["entry"] == "segmenter:CellSegmenter"
    assert args["frontendEntry"] == "ui/index.html"
    assert (args["gpuMemoryMb"], args["disableGpu"]) == (24576, True)
    assert args["classes"] == {
        "CellSegmenter": {
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
            "initKwargs": {},
            "envVars": {},
        },
        "Pre": {"numReplicas": 2, "initKwargs": {"scale": 0.5}, "envVars": {"MODE": "fast"}},
    }
    env = args["envVars"]
    assert (env["LAB"], env["BIOENGINE_APP_ID"]) == ("kth", "cell-segmenter")
    assert json.loads(env["BIOENGINE_DATASETS"]) == {
        "cells": {"url": "http://cells-dataset.lab.svc:8080", "mounted": True}
    }
    assert "runtime_env" not in application


def test_uri_source_becomes_working_dir() -> None:
    rs = app_service(source={"uri": "https://hypha.example.org/app.zip"})
    application = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    assert application["runtime_env"] == {"working_dir": "https://hypha.example.org/app.zip"}


def test_code_and_datasets_are_mounted_read_only_with_the_folder_tree() -> None:
    template = app_service()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    head = template["spec"]
    mounts = {m["mountPath"]: m for m in head["containers"][0]["volumeMounts"]}
    for path in (rayservice.ENTRY_DIR, rayservice.APP_DIR, "/data/cells"):
        assert mounts[path]["readOnly"] is True
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes["app"]["configMap"]["items"][1] == {
        "key": "helpers--pre.py",
        "path": "helpers/pre.py",
    }
    env = {e["name"]: e["value"] for e in head["containers"][0]["env"]}
    assert env["PYTHONPATH"] == f"{rayservice.ENTRY_DIR}:{rayservice.APP_DIR}"
    assert env["BIOENGINE_DATA_DIR"] == "/data"
    assert template["metadata"]["annotations"] == {rayservice.CODE_HASH: "abc123"}


def test_changed_code_changes_every_ray_pod_template() -> None:
    def templates(code_hash: str) -> list[Any]:
        cluster = app_service(rayservice.Inputs((CELLS,), code_hash))["spec"]["rayClusterConfig"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        return [g["template"] for g in groups]

    for before, after in zip(templates("one"), templates("two"), strict=True):
        assert before != after


ZIP_SOURCE = {"zip": {"configMaps": ["seg-code-0", "seg-code-1", "seg-code-2"]}}


def pod_templates(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    return [g["template"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]]


def test_a_zip_source_is_unpacked_into_every_ray_pod_where_a_config_map_is_mounted() -> None:
    templates = pod_templates(app_service(source=ZIP_SOURCE))
    assert len(templates) == 2  # the head and the GPU worker group
    for template in templates:
        pod = template["spec"]
        (ray,) = pod["containers"]
        (unzip,) = pod["initContainers"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["app"] == {"name": "app", "emptyDir": {}}
        assert volumes["app-zip"]["projected"]["sources"] == [
            {
                "configMap": {
                    "name": f"seg-code-{i}",
                    "items": [{"key": "part", "path": f"part-{i}"}],
                }
            }
            for i in range(3)
        ]
        app_mount = {"name": "app", "mountPath": rayservice.APP_DIR}
        assert {**app_mount, "readOnly": True} in ray["volumeMounts"]
        assert app_mount in unzip["volumeMounts"]  # writable there only
        parts = [f"{rayservice.ZIP_DIR}/part-{i}" for i in range(3)]
        assert unzip["command"] == ["python", "-c", rayservice.UNZIP, rayservice.APP_DIR, *parts]
        assert unzip["image"] == ray["image"]
        assert unzip["securityContext"] == ray["securityContext"]
        assert ray["securityContext"]["readOnlyRootFilesystem"] is True
        assert "nvidia.com/gpu" not in unzip["resources"]["limits"]
        env = {e["name"]: e["value"] for e in ray["env"]}
        assert env["PYTHONPATH"] == f"{rayservice.ENTRY_DIR}:{rayservice.APP_DIR}"
    assert all("initContainers" not in t["spec"] for t in pod_templates(app_service()))


def run_unzip(tmp_path: Path, files: dict[str, bytes]) -> subprocess.CompletedProcess[str]:
    """The init container's command of a zip source, run here: its folders moved under
    ``tmp_path``, the zip of ``files`` split over the three part files."""
    (unzip,) = pod_templates(app_service(source=ZIP_SOURCE))[0]["spec"]["initContainers"]
    _, flag, script, target, *parts = unzip["command"]
    assert target == rayservice.APP_DIR
    content = appfolder.zip_of(files)
    size = len(content) // len(parts) + 1
    local_parts = []
    for index, part in enumerate(parts):
        local = tmp_path / "zip" / Path(part).name
        local.parent.mkdir(exist_ok=True)
        local.write_bytes(content[index * size : (index + 1) * size])
        local_parts.append(str(local))
    app = tmp_path / "app"
    app.mkdir()
    command = [sys.executable, flag, script, str(app), *local_parts]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_the_init_container_unpacks_the_parts_into_the_app_folder(tmp_path: Path) -> None:
    files = {"main.py": b"import bioengine\n", "lib/data.bin": random.Random(1).randbytes(5000)}
    result = run_unzip(tmp_path, files)
    assert result.returncode == 0, result.stderr
    found = {p.relative_to(tmp_path / "app").as_posix() for p in (tmp_path / "app").rglob("*")}
    assert found == {"main.py", "lib", "lib/data.bin"}
    for path, content in files.items():
        assert (tmp_path / "app" / path).read_bytes() == content


def test_the_init_container_refuses_a_file_that_leaves_the_app_folder(tmp_path: Path) -> None:
    result = run_unzip(tmp_path, {"main.py": b"", "../escape.py": b"x"})
    assert result.returncode != 0
    assert "the app's zip holds '../escape.py', which leaves the app's folder" in result.stderr
    assert not (tmp_path / "escape.py").exists()
    assert list((tmp_path / "app").iterdir()) == []  # refused before anything is written


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


def test_runtime_config_map_carries_the_entry_the_codec_and_the_authoring_api() -> None:
    cm = rayservice.entry_config_map(APP_OWNER)
    assert "def app(" in cm["data"]["bioengine_serve_entry.py"]
    assert "def dumps(" in cm["data"]["bioengine_codec.py"]
    assert "def app(" in cm["data"]["bioengine.py"]
    assert "def create_logger(" in cm["data"]["bioengine_utils.py"]  # bioengine.utils
    assert set(cm["data"]) == {
        "bioengine_serve_entry.py",
        "bioengine_codec.py",
        "bioengine.py",
        "bioengine_utils.py",
    }


DATASET = {
    "source": {"pvc": {"claimName": "cells", "subPath": "v1"}},
    "manifest": {"name": "Cells", "authorizedUsers": ["alice"]},
}


def test_dataset_server_mounts_files_read_only() -> None:
    spec = BioEngineDatasetSpec.model_validate(DATASET)
    dep = dataset.deployment(DS_OWNER, spec, "img:1", (), "PUBLIC KEY PEM")
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
    key = f"{meta.PREFIX}/config-hash"

    def annotations(s: BioEngineDatasetSpec, public_key: str | None = "k1") -> dict[str, str]:
        dep = dataset.deployment(DS_OWNER, s, "img", (), public_key)
        return dict(dep["spec"]["template"]["metadata"]["annotations"])

    assert annotations(spec)[key] != annotations(other)[key]
    assert annotations(spec)[key] != annotations(spec, "k2")[key]  # a rotated key rolls too
    cm = dataset.config_map(DS_OWNER, other, "k1")
    assert json.loads(cm["data"]["manifest.json"])["id"] == "cells"
    assert cm["data"][dataset.PUBLIC_KEY_FILE] == "k1"


def test_dataset_server_checks_tokens_only_with_a_public_key() -> None:
    spec = BioEngineDatasetSpec.model_validate(DATASET)
    with_key = container(dataset.deployment(DS_OWNER, spec, "img", (), "k1"))["command"]
    assert f"--token-public-key-file=/etc/bioengine/{dataset.PUBLIC_KEY_FILE}" in with_key
    without = container(dataset.deployment(DS_OWNER, spec, "img", (), None))["command"]
    assert not any(a.startswith("--token-public-key-file") for a in without)
    assert dataset.PUBLIC_KEY_FILE not in dataset.config_map(DS_OWNER, spec, None)["data"]


@pytest.mark.parametrize(
    ("path", "prefixes", "allowed"),
    [
        ("/srv/data/cells", ("/srv/data",), True),
        ("/srv/data", ("/srv/data/",), True),
        ("/srv/database", ("/srv/data",), False),
        ("/srv/data/../etc", ("/srv/data",), False),
        ("/srv/data/cells", (), False),
    ],
)
def test_host_path_datasets_only_under_allowed_directories(
    path: str, prefixes: tuple[str, ...], allowed: bool
) -> None:
    spec = BioEngineDatasetSpec.model_validate({**DATASET, "source": {"hostPath": {"path": path}}})
    if allowed:
        assert dataset.volume(spec, prefixes)[0]["hostPath"]["path"] == path
    else:
        with pytest.raises(dataset.HostPathNotAllowed, match="not under a directory"):
            dataset.volume(spec, prefixes)


def test_s3_dataset_is_refused_clearly() -> None:
    spec = BioEngineDatasetSpec.model_validate(
        {**DATASET, "source": {"s3": {"uri": "s3://bucket/cells"}}}
    )
    with pytest.raises(dataset.UnsupportedSource, match="S3"):
        dataset.children(DS_OWNER, spec, "img", (), None)


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
