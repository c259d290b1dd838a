"""``bioengine render``: an app folder → what ``kubectl apply`` takes, and clear refusals."""

from __future__ import annotations

import base64
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from bioengine_operator import appfolder
from bioengine_operator.api.app import BioEngineAppSpec

ROOT = Path(__file__).parents[1]
MANIFEST = """\
name: Demo
id: demo-app
id_emoji: "⚙️"
description: A demo.
type: ray-serve
format_version: 0.6.0
entry: demo.main:DemoApp
"""


def bioengine(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bioengine_operator.user_cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def make_app(tmp_path: Path, manifest: str = MANIFEST) -> Path:
    folder = tmp_path / "demo-app"
    (folder / "demo").mkdir(parents=True)
    (folder / "manifest.yaml").write_text(manifest)
    (folder / "demo" / "main.py").write_text("import bioengine\n")
    (folder / "cover.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (folder / "tests").mkdir()
    (folder / "tests" / "test_demo.py").write_text("")
    return folder


def test_a_folder_renders_to_a_config_map_and_an_app_the_crd_accepts(tmp_path: Path) -> None:
    result = bioengine("render", str(make_app(tmp_path)), "-n", "lab")
    assert result.returncode == 0, result.stderr
    code, app = yaml.safe_load_all(result.stdout)
    assert code["kind"] == "ConfigMap" and code["metadata"]["namespace"] == "lab"
    assert set(code["data"]) == {"manifest.yaml", "demo--main.py"}
    assert set(code["binaryData"]) == {"cover.png"}
    items = app["spec"]["source"]["configMap"]["items"]
    assert {"key": "demo--main.py", "path": "demo/main.py"} in items
    assert app["metadata"]["name"] == "demo-app"
    spec = BioEngineAppSpec.model_validate(app["spec"])
    assert (spec.id, spec.entry, spec.id_emoji) == ("demo-app", "demo.main:DemoApp", "⚙️")


def test_a_flat_folder_needs_no_items(tmp_path: Path) -> None:
    folder = tmp_path / "flat"
    folder.mkdir()
    (folder / "manifest.yaml").write_text(MANIFEST.replace("demo.main:", "main:"))
    (folder / "main.py").write_text("")
    objects = appfolder.render(folder).objects
    assert objects[-1]["spec"]["source"] == {"configMap": {"name": "demo-app-code"}}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: m.replace("0.6.0", "0.5.0"),
            "manifest.yaml: format_version: is 0.5.0, must be 0.6.0",
        ),
        (
            lambda m: m + "deployments: [main:A]\n",
            "manifest.yaml: deployments: a format 0.5 field that format 0.6.0 dropped: compose "
            "classes through constructor type hints",
        ),
        (lambda m: m.replace("id: demo-app", "id: Demo_App"), "manifest.yaml: id: String should"),
        (lambda m: m.replace("description: A demo.\n", ""), "manifest.yaml: description: Field"),
        (lambda m: m + "frontend_entry: ui/index.html\n", "frontend_entry: ui/index.html is not"),
        (lambda m: m.replace("demo.main:", "demo.missing:"), "entry: module demo.missing is not"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_file_and_field(
    tmp_path: Path, edit: object, message: str
) -> None:
    folder = make_app(tmp_path, edit(MANIFEST))  # type: ignore[operator]
    result = bioengine("render", str(folder))
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert str(folder / "manifest.yaml") in result.stderr


def test_bad_overrides_are_refused_naming_the_file(tmp_path: Path) -> None:
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("classes:\n  DemoApp: {numReplicas: 0}\n")
    result = bioengine("render", str(make_app(tmp_path)), "--overrides", str(overrides))
    assert result.returncode == 2
    assert f"{overrides}: classes.DemoApp.numReplicas" in result.stderr


def test_an_entry_inside_the_folder_as_a_package_mounts_the_folder_as_that_package_too(
    tmp_path: Path,
) -> None:
    folder = make_app(tmp_path, MANIFEST.replace("demo.main:", "demo_app.demo.main:"))
    app = appfolder.render(folder).objects[-1]
    items = app["spec"]["source"]["configMap"]["items"]
    assert {"key": "demo--main.py", "path": "demo/main.py"} in items
    assert {"key": "demo--main.py", "path": "demo_app/demo/main.py"} in items


def large_app(tmp_path: Path, manifest: str = MANIFEST) -> Path:
    """The demo app with 600 kB of incompressible data: over one ConfigMap's limit."""
    folder = make_app(tmp_path, manifest)
    (folder / "weights.bin").write_bytes(random.Random(0).randbytes(600_000))
    return folder


def parts_of(objects: list[dict[str, Any]]) -> bytes:
    """The zip a zip source's ConfigMaps hold, joined in the order the app lists them."""
    config_maps = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}
    names = objects[-1]["spec"]["source"]["zip"]["configMaps"]
    return b"".join(base64.b64decode(config_maps[n]["binaryData"]["part"]) for n in names)


def test_a_folder_over_one_config_map_ships_as_a_zip_split_over_several(tmp_path: Path) -> None:
    folder = large_app(tmp_path)
    result = bioengine("render", str(folder), "-n", "lab")
    assert result.returncode == 0, result.stderr
    *parts, app = yaml.safe_load_all(result.stdout)
    names = [f"demo-app-code-{i}" for i in range(4)]  # 600 kB of zip in parts of PART_SIZE
    assert [p["metadata"]["name"] for p in parts] == names
    assert app["spec"]["source"] == {"zip": {"configMaps": names}}
    for part in parts:
        assert part["metadata"]["namespace"] == "lab"
        assert set(part["binaryData"]) == {"part"} and not part["data"]
        assert appfolder.content_size(part) <= appfolder.CONFIG_MAP_LIMIT
    assert parts_of([*parts, app]) == appfolder.zip_of(appfolder.files_of(folder))
    assert "shipped as a zip over 4 ConfigMaps" in result.stderr
    BioEngineAppSpec.model_validate(app["spec"])


def test_a_zip_holds_the_folder_as_a_package_too_when_the_entry_imports_it(
    tmp_path: Path,
) -> None:
    folder = large_app(tmp_path, MANIFEST.replace("demo.main:", "demo_app.demo.main:"))
    files = appfolder.unzip(parts_of(appfolder.render(folder).objects))
    assert files["demo/main.py"] == files["demo_app/demo/main.py"] == b"import bioengine\n"
    assert files["weights.bin"] == (folder / "weights.bin").read_bytes()


def test_a_folder_too_large_even_for_a_zip_points_to_the_uri_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(appfolder, "ZIP_PARTS_MAX", 3)
    with pytest.raises(appfolder.AppFolderError, match=r"over the \d+ that ConfigMaps carry"):
        appfolder.render(large_app(tmp_path))
    folder = tmp_path / "demo-app"
    zipped = tmp_path / "app.zip"
    result = bioengine(
        "render", str(folder), "--source-uri", "https://x.org/app.zip", "--zip", str(zipped)
    )
    assert result.returncode == 0, result.stderr
    (app,) = yaml.safe_load_all(result.stdout)
    assert app["spec"]["source"] == {"uri": "https://x.org/app.zip"}
    with zipfile.ZipFile(zipped) as archive:
        assert "demo/main.py" in archive.namelist()
        assert "weights.bin" in archive.namelist()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ("../escape.py", "'../escape.py' leaves the app's folder"),
        ("/etc/escape.py", "'/etc/escape.py' leaves the app's folder"),
        ("a/../../escape.py", "leaves the app's folder"),
    ],
)
def test_a_zip_with_a_file_outside_the_folder_is_refused(member: str, message: str) -> None:
    content = appfolder.zip_of({"main.py": b"", member: b"x"})
    with pytest.raises(appfolder.AppFolderError, match=re.escape(message)):
        appfolder.unzip(content)


def test_a_corrupt_zip_is_refused() -> None:
    content = appfolder.zip_of({"main.py": b"print(1)\n" * 100})
    with pytest.raises(appfolder.AppFolderError, match="not a valid zip"):
        appfolder.unzip(content[: len(content) // 2])


def test_the_example_app_is_the_rendered_apps_folder() -> None:
    rendered = appfolder.render(
        ROOT / "apps" / "zarr-tile-stats",
        overrides=yaml.safe_load((ROOT / "examples/overrides/zarr-tile-stats.yaml").read_text()),
    ).objects
    shipped = [d for d in yaml.safe_load_all((ROOT / "examples/bioengineapp.yaml").read_text())]
    assert shipped == rendered, "regenerate examples/bioengineapp.yaml (see its header)"


@pytest.mark.parametrize(
    "name", ["nucleus-segmentation", "probability-segmentation", "zarr-tile-stats"]
)
def test_every_app_in_apps_renders(name: str) -> None:
    objects = appfolder.render(ROOT / "apps" / name).objects
    BioEngineAppSpec.model_validate(objects[-1]["spec"])
    assert objects[-1]["metadata"]["name"] == name
