"""The ``bioengine`` authoring API and the codec, as the Ray pods import them, without Ray
(what runs on Ray Serve is tested in tests/test_apps_e2e.py)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import subprocess
from pathlib import Path
from typing import Any

import bioengine  # on pytest's pythonpath (pyproject.toml), as in the Ray pods
import numpy as np
import pytest
from pydantic import Field, ValidationError

from bioengine_operator.builders import rayservice
from bioengine_operator.local import envs
from bioengine_operator.runtime import codec


class Lab:
    @bioengine.method
    async def measure(
        self,
        image: np.ndarray = Field(..., description="The image."),
        sigma: float = Field(2.0, gt=0, description="Smoothing."),
        mode: str = "fast",
        values: list[int] = Field(None, description="Left unset: None, not validated."),
    ) -> dict[str, Any]:
        """Measure things.

        More text."""
        return {"sigma": sigma, "mode": mode, "shape": image.shape, "values": values}

    @bioengine.method(context=True)
    def whoami(self, context: dict[str, Any] | None = None) -> str:
        """Who calls."""
        return str((context or {})["user"]["id"])


def test_a_method_schema_lists_parameters_with_descriptions_and_hides_context() -> None:
    schema = Lab.measure.__schema__
    assert schema["name"] == "measure"
    assert schema["description"].startswith("Measure things.")
    params = schema["parameters"]
    assert params["required"] == ["image"]
    assert params["properties"]["image"] == {"description": "The image."}
    assert params["properties"]["sigma"] == {
        "type": "number",
        "exclusiveMinimum": 0.0,
        "default": 2.0,
        "description": "Smoothing.",
    }
    assert params["properties"]["mode"] == {"type": "string", "default": "fast"}
    assert "context" not in Lab.whoami.__schema__["parameters"]["properties"]


def test_calls_resolve_field_defaults_and_validate_arguments() -> None:
    lab = Lab()
    image = np.zeros((3, 4))
    assert asyncio.run(lab.measure(image)) == {
        "sigma": 2.0,
        "mode": "fast",
        "shape": (3, 4),
        "values": None,
    }
    assert asyncio.run(lab.measure(image, values=["1"]))["values"] == [1]
    assert asyncio.run(lab.measure(image, sigma="0.5"))["sigma"] == 0.5
    with pytest.raises(ValidationError, match="greater than 0"):
        asyncio.run(lab.measure(image, sigma=0))
    with pytest.raises(TypeError, match="missing required argument: 'image'"):
        asyncio.run(lab.measure())
    assert lab.whoami(context={"user": {"id": "alice"}}) == "alice"


def test_a_context_method_must_declare_context() -> None:
    with pytest.raises(TypeError, match="must declare a 'context' parameter"):

        class Bad:
            @bioengine.method(context=True)
            def f(self) -> None: ...


def test_reserved_names_and_duplicate_hooks_are_refused() -> None:
    with pytest.raises(bioengine.ReservedMethodNameError, match="'check_health'"):

        @bioengine.app()
        class Bad:
            def check_health(self) -> None: ...

    with pytest.raises(bioengine.ReservedMethodNameError, match="'check_health'"):

        @bioengine.app()
        class Exposed:
            @bioengine.method
            def check_health(self) -> None: ...

    with pytest.raises(bioengine.ReservedMethodNameError, match=r"two @bioengine\.smoke_test"):

        @bioengine.app()
        class Twice:
            @bioengine.smoke_test
            def a(self) -> None: ...

            @bioengine.smoke_test
            def b(self) -> None: ...


def test_decorator_options_become_serve_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bioengine.GPU_MEMORY_ENV, "16000")

    @bioengine.app(
        num_cpus=2,
        gpu_memory_mb=4000,
        memory_mb=512,
        pip=["numpy", "surely-not-installed-package==1.0"],
        env_vars={"A": 1},
        ray_actor_options={"resources": {"fast": 1}},
        num_replicas=3,
    )
    class App:
        @bioengine.method
        def f(self) -> None: ...

        @bioengine.smoke_test
        def check(self) -> None: ...

    info = vars(App)[bioengine.INFO]
    assert info["options"] == {
        "ray_actor_options": {
            "num_cpus": 2,
            "num_gpus": 0.25,
            "memory": 512 * 1024 * 1024,
            # numpy is installed here: only what is missing is installed by Ray
            "runtime_env": {"pip": ["surely-not-installed-package==1.0"], "env_vars": {"A": "1"}},
            "resources": {"fast": 1},
        },
        "max_ongoing_requests": 10,
        "num_replicas": 3,
    }
    assert info["hooks"] == {"async_init": None, "smoke_test": "check", "health_check": None}
    assert list(info["methods"]) == ["f"]
    assert bioengine.app_class(App) is App


@pytest.mark.parametrize(
    ("memory", "per_gpu", "gpus"),
    [(-1, "16000", 1.0), (8000, "16000", 0.5), (40000, "16000", 1.0), (100, "", 1.0)],
)
def test_gpu_memory_becomes_a_share_of_a_gpu(
    memory: int, per_gpu: str, gpus: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(bioengine.GPU_MEMORY_ENV, per_gpu)
    assert bioengine.gpus_for(memory) == gpus


def test_arrays_pass_the_codec_bit_exact() -> None:
    for array in (
        np.random.default_rng(2).random((256, 256), dtype=np.float32),
        np.arange(60_000, dtype=np.uint16).reshape(200, 300),
        np.array([[np.nan, -0.0, np.inf]], dtype=np.float64),
    ):
        back = codec.loads(codec.dumps({"x": [array]}))["x"][0]
        assert back.dtype == array.dtype and back.shape == array.shape
        assert back.tobytes() == array.tobytes()
    with pytest.raises(TypeError, match="arrays of Python objects"):
        codec.dumps(np.array([object()]))


def test_the_app_folder_is_the_mount_point_not_the_kubelets_folder_behind_it(
    tmp_path: Path,
) -> None:
    """Found with real pods: a mounted ConfigMap's files are links into a folder the kubelet
    names per pod, and the app's folder found on the Ray head is handed to replicas on the
    workers (its frontend's folder, for one): it must be the mount point, as on every pod.
    Run in the Ray environment, where the entry point is imported as the pods import it."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    for name, text in rayservice.RUNTIME_FILES.items():
        (runtime / name).write_text(text)
    mount = tmp_path / "app"  # laid out as the kubelet lays out a ConfigMap volume
    (mount / "..2026_12_06_20_24_44.1816082044").mkdir(parents=True)
    (mount / "..2026_12_06_20_24_44.1816082044" / "lab.py").write_text("X = 1\n")
    (mount / "..data").symlink_to("..2026_12_06_20_24_44.1816082044")
    (mount / "lab.py").symlink_to("..data/lab.py")
    out = subprocess.run(
        [
            str(envs.venv("ray") / "bin" / "python"),
            "-c",
            "import bioengine_serve_entry as e; print(e.app_folder('lab:X'))",
        ],
        env={**os.environ, "PYTHONPATH": f"{runtime}:{mount}"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(mount)


def test_the_runtime_version_is_the_operators() -> None:
    """``from bioengine import __version__``, as upstream apps report it."""
    from bioengine import __version__

    assert __version__ == importlib.metadata.version("bioengine-operator")


def test_utils_import_as_upstream_and_list_a_folder_for_upload(tmp_path: Path) -> None:
    """``bioengine.utils`` is the module shipped beside ``bioengine``; its file list is what
    the worker's ``upload_app`` takes: text as text, other bytes as base64."""
    from bioengine.utils import create_file_list_from_directory

    (tmp_path / "sub").mkdir()
    (tmp_path / "manifest.yaml").write_text("id: x\n")
    (tmp_path / "sub" / "weights.bin").write_bytes(b"\xff\x00\x01")
    assert create_file_list_from_directory(tmp_path) == [
        {"name": "manifest.yaml", "content": "id: x\n", "type": "text"},
        {"name": "sub/weights.bin", "content": "/wAB", "type": "base64"},
    ]
    with pytest.raises(ValueError, match="is not a directory"):
        create_file_list_from_directory(tmp_path / "manifest.yaml")


def test_create_logger_writes_to_its_file_once_however_often_it_is_created(
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "logs" / "app.log"
    for _ in range(2):
        logger = bioengine.utils.create_logger("bioengine-test-app", log_file=log_file)
    logger.info("hello")
    for handler in logger.handlers:
        handler.flush()
    assert log_file.read_text().count("bioengine-test-app - INFO - hello") == 1


def test_check_permissions_admits_listed_users_by_id_or_email() -> None:
    utils = bioengine.utils
    alice = utils.create_context("alice", "alice@example.org")
    utils.check_permissions(alice, ["alice@example.org"], "seg")
    utils.check_permissions(alice, "*", "seg")
    with pytest.raises(PermissionError, match="alice is not authorized to access seg"):
        utils.check_permissions(alice, ["bob"], "seg")
    with pytest.raises(PermissionError):
        utils.check_permissions(alice, [], "seg")
