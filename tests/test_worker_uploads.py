"""The worker's uploads and deploys as objects (no cluster): what is stored, what is
refused and why, and how deploy_app's arguments become a BioEngineApp."""

from __future__ import annotations

import base64
import random
from pathlib import Path
from typing import Any

import pytest

from bioengine_operator import appfolder
from bioengine_operator.api.app import APP_NAME_MAX, BioEngineAppSpec
from bioengine_operator.bridge import uploads
from bioengine_operator.bridge.uploads import WorkerError

ROOT = Path(__file__).resolve().parents[1]
WS = "ws-user-bioengine-bridge"


def folder_files(folder: Path) -> list[dict[str, str]]:
    """The files of ``folder`` as the BioEngine command-line client uploads them."""
    files = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        name = path.relative_to(folder).as_posix()
        try:
            files.append({"name": name, "content": path.read_text("utf-8"), "type": "text"})
        except UnicodeDecodeError:
            encoded = base64.b64encode(path.read_bytes()).decode()
            files.append({"name": name, "content": encoded, "type": "base64"})
    return files


def with_manifest(files: list[dict[str, str]], manifest: str) -> list[dict[str, str]]:
    return [f for f in files if f["name"] != "manifest.yaml"] + [
        {"name": "manifest.yaml", "content": manifest, "type": "text"}
    ]


def test_an_upload_is_one_configmap_holding_the_app_and_its_rendered_spec() -> None:
    files = folder_files(ROOT / "tests" / "apps" / "package-app")
    (stored_map,) = uploads.upload(files, "bioengine", "alice", "2026-11-30T00:00:00Z")
    stored = uploads.stored(stored_map)
    assert stored_map["metadata"]["namespace"] == "bioengine"
    assert stored_map["metadata"]["labels"][uploads.MANAGED_BY] == uploads.WORKER
    assert stored.app_id == "package-app" and stored.uploaded_by == "alice"
    # Subfolders come back by path (the ConfigMap keys are flattened).
    assert "runtimes/stats.py" in stored.files and "frontend/index.html" in stored.files
    # The stored spec is a valid BioEngineApp spec pointing at this very ConfigMap.
    spec = BioEngineAppSpec.model_validate(stored.spec)
    assert spec.source.config_map is not None
    assert spec.source.config_map.name == stored_map["metadata"]["name"]
    # Tests and caches stay out, as bioengine render leaves them out.
    polluted = [*files, {"name": "tests/test_x.py", "content": "x", "type": "text"}]
    assert uploads.upload(polluted, "ns", "a", "t")[0]["data"] == stored_map["data"]


def test_a_large_upload_is_a_zip_over_configmaps_that_share_its_labels() -> None:
    files = folder_files(ROOT / "apps" / "nucleus-segmentation")
    weights = random.Random(0).randbytes(600_000)
    encoded = base64.b64encode(weights).decode()
    large = [*files, {"name": "weights.bin", "content": encoded, "type": "base64"}]
    config_maps = uploads.upload(large, "ns", "alice", "2026-11-30T00:00:00Z")
    assert len(config_maps) == 4
    for config_map in config_maps:
        labels = config_map["metadata"]["labels"]
        assert labels[uploads.MANAGED_BY] == uploads.WORKER
        assert labels[uploads.ARTIFACT] == "nucleus-segmentation"
        assert appfolder.content_size(config_map) <= appfolder.CONFIG_MAP_LIMIT
    # One version, read from the first ConfigMap: the others are parts of its zip.
    (stored,) = uploads.versions(config_maps)
    assert stored.version == "1.0.0"
    assert stored.files == sorted(f["name"] for f in large if not f["name"].startswith("tests/"))
    names = [c["metadata"]["name"] for c in config_maps]
    assert stored.spec["source"] == {"zip": {"configMaps": names}}
    joined = b"".join(base64.b64decode(c["binaryData"]["part"]) for c in config_maps)
    assert appfolder.unzip(joined)["weights.bin"] == weights
    BioEngineAppSpec.model_validate(stored.spec)


def test_versions_are_kept_apart_and_the_latest_is_the_last_uploaded() -> None:
    files = folder_files(ROOT / "apps" / "nucleus-segmentation")
    manifest = next(f["content"] for f in files if f["name"] == "manifest.yaml")
    newer = with_manifest(files, manifest.replace("version: 1.0.0", "version: 1.1.0"))
    first, second = uploads.versions(
        uploads.upload(files, "ns", "alice", "2026-11-30T10:00:00Z")
        + uploads.upload(newer, "ns", "alice", "2026-11-30T11:00:00Z")
    )
    assert (first.version, second.version) == ("1.0.0", "1.1.0")
    assert first.spec["source"] != second.spec["source"]  # each its own ConfigMap
    artifact = f"{WS}/nucleus-segmentation"
    assert uploads.pick([second, first], artifact, None) is second
    assert uploads.pick([second, first], artifact, "1.0.0") is first
    with pytest.raises(WorkerError, match=r"no version '9' \(uploaded: 1.0.0, 1.1.0\)"):
        uploads.pick([first, second], artifact, "9")
    with pytest.raises(WorkerError, match="not found: upload it with upload_app"):
        uploads.pick([], artifact, None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("format_version: 0.6.0", "format_version: 0.5.0"), "manifest.yaml: format_version"),
        (("entry: segmenter:", "entry: missing:"), "manifest.yaml: entry: module missing"),
        (("id: nucleus-segmentation", "id: Nucleus_Seg"), "manifest.yaml: id: String should"),
        (("type: ray-serve", "deployments: [a]\ntype: ray-serve"), "manifest.yaml: deployments"),
    ],
)
def test_a_bad_manifest_is_refused_at_upload_with_the_field_named(
    change: tuple[str, str], message: str
) -> None:
    files = folder_files(ROOT / "apps" / "nucleus-segmentation")
    manifest = next(f["content"] for f in files if f["name"] == "manifest.yaml")
    with pytest.raises(WorkerError, match=message):
        uploads.upload(with_manifest(files, manifest.replace(*change)), "ns", "a", "t")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([], "files: must be a non-empty list"),
        ([{"name": "../x.py", "content": "", "type": "text"}], "must not leave the app folder"),
        ([{"name": "/etc/x", "content": "", "type": "text"}], r"files\[0\].name"),
        ([{"name": "a.bin", "content": "!!", "type": "base64"}], "a.bin is not valid base64"),
        ([{"name": "a.py", "content": "", "type": "zip"}], "'zip' must be text or base64"),
        ([{"name": "a.py", "content": "", "type": "text"}], "manifest.yaml: not in the upload"),
    ],
)
def test_malformed_uploads_are_refused(files: Any, message: str) -> None:
    with pytest.raises(WorkerError, match=message):
        uploads.upload(files, "ns", "a", "t")


def test_deploy_arguments_become_the_bioengineapp_spec() -> None:
    files = folder_files(ROOT / "apps" / "nucleus-segmentation")
    (source,) = uploads.versions(uploads.upload(files, "ns", "alice", "t"))
    args = {
        "application_kwargs": {"NucleusSegmenter": {"default_sigma": 1.5}},
        "application_env_vars": {"*": {"DEBUG": "1"}, "NucleusSegmenter": {"LEVEL": 3}},
        "disable_gpu": True,
        "authorized_users": {"*": ["alice"], "stats": ["carol"]},
    }
    app = uploads.application(source, "nuclei", "ns", args, "alice", WS)
    spec = app["spec"]
    assert app["metadata"]["name"] == "nuclei" and spec["service"] == {"id": "nuclei"}
    assert spec["classes"]["NucleusSegmenter"] == {
        "initKwargs": {"default_sigma": 1.5},
        "envVars": {"LEVEL": "3"},
    }
    assert spec["envVars"] == {"DEBUG": "1"} and spec["disableGpu"] is True
    assert spec["authorizedUsers"] == ["alice"]
    assert spec["methods"] == {"stats": {"authorizedUsers": ["carol"]}}
    assert app["metadata"]["annotations"][uploads.ARTIFACT] == f"{WS}/nucleus-segmentation"
    assert app["metadata"]["annotations"][uploads.VERSION] == "1.0.0"
    BioEngineAppSpec.model_validate(spec)
    with pytest.raises(WorkerError, match=r"application_kwargs\.X: must map"):
        uploads.application(source, "n", "ns", {"application_kwargs": {"X": 1}}, "a", WS)


def test_application_ids_name_a_bioengineapp() -> None:
    generated = uploads.new_application_id("a" * 63)
    assert len(generated) <= APP_NAME_MAX and uploads.check_application_id(generated)
    for bad in ("Nuclei", "1st", "a" * (APP_NAME_MAX + 1), "with_underscore", 7):
        with pytest.raises(WorkerError, match="application_id"):
            uploads.check_application_id(bad)


def test_artifacts_of_other_workspaces_are_not_on_this_cluster() -> None:
    assert uploads.app_id_of(f"{WS}/nuclei", WS) == "nuclei"
    assert uploads.app_id_of("nuclei", WS) == "nuclei"
    with pytest.raises(WorkerError, match="not stored on this cluster"):
        uploads.app_id_of("bioimage-io/nuclei", WS)
