"""The container image, as far as it can be checked without a container engine.

The Dockerfile's final stage installs the wheel and the locked dependencies with
``tools/image-install.sh``; this test builds the wheel from the same files the builder stage
copies, runs that same script into one clean virtual environment (with every C compiler on
the PATH replaced by a tripwire), and runs each entry point of the image. The rest of the
Dockerfile (slim base, non-root user, entry point) is checked as text.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_SCRIPT = "tools/image-install.sh"
LOCK = ROOT / "requirements.lock"
COMPILERS = ("cc", "gcc", "g++", "c++", "clang", "clang++", "gfortran", "cython")
# Entry points of the image; the bridge's only once its module exists.
ENTRY_POINTS = {
    "bioengine-operator": "bioengine_operator/cli.py",
    "bioengine-dataserver": "bioengine_operator/dataserver/__main__.py",
    "bioengine-bridge": "bioengine_operator/bridge/__main__.py",
}


def stages() -> list[dict[str, object]]:
    """The Dockerfile's stages: base image (ARG defaults resolved) and instructions."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    args: dict[str, str] = {}
    found: list[dict[str, object]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not found and "=" in rest:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        elif instruction == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest)
            found.append({"base": base.split()[0], "lines": []})
        elif found:
            found[-1]["lines"].append((instruction, rest))  # type: ignore[attr-defined]
    return found


def test_dockerfile_final_stage_is_slim_non_root_and_uses_the_install_script() -> None:
    builder, final = stages()
    assert builder["base"] == final["base"] == "python:3.11-slim"
    lines: list[tuple[str, str]] = final["lines"]  # type: ignore[assignment]
    users = [rest for instruction, rest in lines if instruction == "USER"]
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("0", "root")
    entrypoints = [json.loads(rest) for instruction, rest in lines if instruction == "ENTRYPOINT"]
    assert entrypoints[-1] == ["bioengine-operator"]
    runs = " ".join(rest for instruction, rest in lines if instruction == "RUN")
    assert f"/tmp/install/{Path(INSTALL_SCRIPT).name}" in runs
    assert not re.search(r"apt-get|apk |build-essential|gcc|make ", runs), runs
    copies = [rest for instruction, rest in lines if instruction == "COPY"]
    assert any(INSTALL_SCRIPT in c and "requirements.lock" in c for c in copies)
    # Everything the stages copy from the context passes .dockerignore (which drops the rest).
    kept = {
        ln.strip().lstrip("!").rstrip("/")
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.startswith("!")
    }
    for stage in stages():
        for instruction, rest in stage["lines"]:  # type: ignore[attr-defined]
            if instruction == "COPY" and not rest.startswith("--from"):
                for source in shlex.split(rest)[:-1]:
                    assert source.rstrip("/") in kept, f"{source} is not in .dockerignore's list"
    # The script never lets pip build from source, which is what keeps compilers out.
    assert "--only-binary=:all:" in (ROOT / INSTALL_SCRIPT).read_text()


def test_lock_pins_every_dependency_exactly() -> None:
    pins = [ln for ln in LOCK.read_text().splitlines() if ln and not ln.startswith("#")]
    assert pins
    for pin in pins:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+!\-]+", pin), pin
    assert "Python 3.11" in LOCK.read_text(), "lock the image's Python: python:3.11-slim"


def builder_sources() -> list[str]:
    builder = stages()[0]
    sources: list[str] = []
    for instruction, rest in builder["lines"]:  # type: ignore[attr-defined]
        if instruction == "COPY":
            sources += shlex.split(rest)[:-1]
    return sources


@pytest.mark.timeout(900)
def test_image_install_step_in_a_clean_venv(tmp_path: Path) -> None:
    # The builder stage: a wheel from exactly the files it copies.
    src = tmp_path / "src"
    src.mkdir()
    for name in builder_sources():
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-cache-dir",
            "--no-deps",
            "--wheel-dir",
            str(wheels),
            str(src),
        ],
        check=True,
        timeout=600,
    )
    assert [w.name for w in wheels.glob("bioengine_operator-*.whl")]

    # Tripwires: any compiler the install might call records itself and fails.
    shims = tmp_path / "shims"
    shims.mkdir()
    calls = tmp_path / "compiler-calls"
    for name in COMPILERS:
        shim = shims / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >> {calls}\nexit 1\n')
        shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shims}:{os.environ['PATH']}",
        "CC": str(shims / "cc"),
        "CXX": str(shims / "c++"),
    }
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)

    # The final stage: the same script the Dockerfile runs, into one clean venv.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        ["sh", str(ROOT / INSTALL_SCRIPT), str(venv / "bin" / "python"), str(LOCK), str(wheels)],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert not calls.exists(), f"a compiler was invoked: {calls.read_text()}"

    # Installed from the wheel, not from this checkout.
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import bioengine_operator; print(bioengine_operator.__file__)",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout
    assert str(venv) in where and str(ROOT) not in where

    checked = []
    for command, module in ENTRY_POINTS.items():
        if not (ROOT / "operator" / module).exists():
            continue
        result = subprocess.run(
            [str(venv / "bin" / command), "--help"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
        )
        assert result.returncode == 0, f"{command} --help: {result.stderr}"
        assert "usage:" in result.stdout
        checked.append(command)
    assert {"bioengine-operator", "bioengine-dataserver", "bioengine-bridge"} <= set(checked)

    # Only what runs in the image: no development control plane, no test stack.
    shipped = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util as u; print("
            "u.find_spec('bioengine_operator.devcluster'), u.find_spec('bioengine_devtools'))",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout.split()
    assert shipped == ["None", "None"]
    assert not (venv / "bin" / "bioengine-devcluster").exists()
