"""App folders too large for one ConfigMap: shipped as a zip split over several (``source.zip``).

The pieces without a cluster: the operator's code hash over every part, and ``bioengine up``
loading such an app from its folder or its rendered YAML. Then end to end, on the dev
harness (a real control plane, the operator, Hypha, Ray Serve and the bridge with its worker
service): a 1.5 MB app rendered and applied with ``kubectl apply``, and the same app uploaded
through the worker, each answering with the hash of its data file, proving it arrived whole.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import register_logs
from helpers import wait_for
from test_worker_e2e import until, worker_of
from test_worker_uploads import folder_files

from bioengine_devtools.stack import NS, WORKSPACE, BridgeStack
from bioengine_operator import appfolder, kube
from bioengine_operator.api.app import BioEngineAppSpec
from bioengine_operator.bridge import uploads
from bioengine_operator.builders import meta, rayservice
from bioengine_operator.controllers import app as app_controller
from bioengine_operator.local import resources
from bioengine_operator.runtime import codec

NAME = "large-app"
PARTS = [f"{NAME}-code-{i}" for i in range(9)]  # 1.5 MB of zip in parts of PART_SIZE
BLOB = random.Random(0).randbytes(1_500_000)  # incompressible: the zip is as large
MANIFEST = f"""\
name: Large App
id: {NAME}
id_emoji: "📦"
description: An app with a data file too large for one ConfigMap.
type: ray-serve
format_version: 0.6.0
entry: large_app_main:LargeApp
"""
CODE = '''\
import hashlib
from pathlib import Path

import bioengine


@bioengine.app(num_cpus=0, memory_mb=128)
class LargeApp:
    @bioengine.method
    async def digest(self) -> dict:
        """The sha256 and size of the data file shipped in the app's folder."""
        blob = (Path(__file__).parent / "data" / "blob.bin").read_bytes()
        return {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
'''
EXPECTED = {"sha256": hashlib.sha256(BLOB).hexdigest(), "size": len(BLOB)}


def large_app(root: Path) -> Path:
    folder = root / NAME
    (folder / "data").mkdir(parents=True)
    (folder / "manifest.yaml").write_text(MANIFEST)
    (folder / "large_app_main.py").write_text(CODE)
    (folder / "data" / "blob.bin").write_bytes(BLOB)
    return folder


# -- the operator's code hash ------------------------------------------------------------


def test_the_code_hash_covers_every_part_and_names_a_missing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = appfolder.render(large_app(tmp_path), namespace=NS).objects
    stored = {o["metadata"]["name"]: o for o in objects[:-1]}
    assert list(stored) == PARTS
    monkeypatch.setattr(kube, "get", lambda api, kind, namespace, name: stored.get(name))
    owner = meta.Owner("BioEngineApp", NAME, NS, "uid")
    spec = BioEngineAppSpec.model_validate(objects[-1]["spec"])
    first, missing = app_controller.code_hash(owner, spec)
    assert first and missing is None
    # Changed bytes in the last part (the zip's file list lives there) change the hash.
    stored[PARTS[-1]] = {**stored[PARTS[-1]], "binaryData": {"part": "AAAA"}}
    changed, missing = app_controller.code_hash(owner, spec)
    assert changed != first and missing is None
    del stored[PARTS[3]]
    assert app_controller.code_hash(owner, spec) == ("", PARTS[3])


def test_a_config_map_source_hashes_as_before_zip_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """Upgrading the operator must not roll every app's Ray cluster."""
    code = {"data": {"main.py": "x = 1\n"}}
    monkeypatch.setattr(kube, "get", lambda *_: code)
    spec = BioEngineAppSpec.model_validate(
        {
            "name": "A",
            "id": "a",
            "description": "A.",
            "formatVersion": "0.6.0",
            "entry": "main:A",
            "source": {"configMap": {"name": "a-code"}},
        }
    )
    owner = meta.Owner("BioEngineApp", "a", NS, "uid")
    before = meta.digest({"data": code["data"], "binaryData": None})
    assert app_controller.code_hash(owner, spec) == (before, None)


# -- bioengine up: loading an app whose code is a zip ------------------------------------


def test_bioengine_up_runs_a_large_folder_and_its_rendered_yaml_with_the_same_files(
    tmp_path: Path,
) -> None:
    folder = large_app(tmp_path)
    (from_folder,) = resources.load([folder], {})
    assert from_folder.spec["source"] == {"zip": {"configMaps": PARTS}}
    assert from_folder.files == appfolder.files_of(folder)
    rendered = tmp_path / "large-app.yaml"
    rendered.write_text(yaml.safe_dump_all(appfolder.render(folder).objects))
    (from_yaml,) = resources.load([rendered], {})
    assert from_yaml.files == from_folder.files
    assert from_yaml.digest() == from_folder.digest()


def test_a_missing_or_corrupt_part_is_refused_naming_the_file_and_field(tmp_path: Path) -> None:
    objects = appfolder.render(large_app(tmp_path)).objects
    missing = tmp_path / "missing.yaml"
    missing.write_text(
        yaml.safe_dump_all([o for o in objects if o["metadata"]["name"] != PARTS[2]])
    )
    with pytest.raises(resources.InputError) as refused:
        resources.load([missing], {})
    assert str(refused.value) == (
        f"{missing}: document 9: BioEngineApp {NAME}: spec.source.zip.configMaps[2]: "
        f"ConfigMap {PARTS[2]} is not among the inputs"
    )
    corrupt = tmp_path / "corrupt.yaml"
    objects[-2]["binaryData"]["part"] = base64.b64encode(b"not the end of a zip").decode()
    corrupt.write_text(yaml.safe_dump_all(objects))
    with pytest.raises(resources.InputError) as refused:
        resources.load([corrupt], {})
    assert str(refused.value).startswith(
        f"{corrupt}: document 10: BioEngineApp {NAME}: spec.source.zip: not a valid zip"
    )


# -- end to end: kubectl apply, and the worker's upload_app ------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeStack]:
    """Ray, Hypha and a bridge offering the worker service (alice is its admin); no examples."""
    with (
        BridgeStack(
            tmp_path_factory.mktemp("large"),
            examples=False,
            bridge_args=(
                "--cluster-name=large",
                f"--worker-namespace={NS}",
                "--worker-admins=alice",
            ),
        ) as running,
        register_logs(running.log_tails),
    ):
        yield running


def test_a_large_folder_rendered_and_applied_runs_with_its_files_intact(
    stack: BridgeStack, tmp_path: Path
) -> None:
    objects = appfolder.render(large_app(tmp_path), namespace=NS).objects
    stack.cluster.apply(objects)  # kubectl apply, client side: each part fits its annotation
    try:
        wait_for(lambda: stack.cluster.get(NS, "rayservice", NAME), "RayService")
        ray_cluster = stack.cluster.get(NS, "rayservice", NAME)["spec"]["rayClusterConfig"]
        template = ray_cluster["headGroupSpec"]["template"]
        # The operator read every part (its hash) and unpacks them before Ray starts.
        assert template["metadata"]["annotations"][rayservice.CODE_HASH]
        (unzip,) = template["spec"]["initContainers"]
        assert unzip["command"][4:] == [f"{rayservice.ZIP_DIR}/part-{i}" for i in range(len(PARTS))]
        stack.deploy_apps()
        stack.wait_app(NAME, "Ready")
        request = urllib.request.Request(
            f"http://127.0.0.1:{stack.ray.port}/{NAME}/digest",
            data=codec.dumps([[], {}]),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert codec.loads(answer.read()) == EXPECTED
    finally:
        stack.delete_app(NAME)


def test_a_large_app_uploaded_through_the_worker_runs_and_is_deleted_whole(
    stack: BridgeStack, tmp_path: Path
) -> None:
    artifact = f"{WORKSPACE}/{NAME}"

    def stored() -> list[str]:
        """The ConfigMaps holding the app's uploads, found by its label."""
        selector = f"{uploads.ARTIFACT}={NAME}"
        found = stack.cluster.kubectl("-n", NS, "get", "configmap", "-l", selector, "-o", "name")
        return found.stdout.split()

    async def scenario() -> None:
        alice = await stack.member()
        worker = await worker_of(alice, "large")
        assert await worker.upload_app(files=folder_files(large_app(tmp_path))) == artifact
        assert len(stored()) == len(PARTS)
        assert "data/blob.bin" in (await worker.list_apps())[artifact]["files"]
        await worker.deploy_app(artifact_id=artifact, application_id="large")

        async def digest() -> Any:
            return await (await alice.get_service(f"{WORKSPACE}/large")).digest()

        assert await until(stack, digest, "large serving") == EXPECTED
        await worker.stop_app(application_id="large")
        gone = "BioEngineApp large deleted"
        await asyncio.to_thread(wait_for, lambda: not stack.cluster.get(NS, "bea", "large"), gone)
        await worker.delete_app(artifact)
        assert stored() == []
        await alice.disconnect()

    asyncio.run(scenario())
