"""The virtual environments of the local backends: Hypha, Ray and Triton.

Their pins conflict (Hypha wants an older FastAPI than Ray Serve; Triton's python backend
wants NumPy 1), so each gets its own venv, ``<root>/.venv-<name>``, installed from the
pinned requirements shipped in this package. A stamp file named after the requirements'
hash marks a finished install: an interrupted or outdated one is installed again.

``bioengine up`` keeps them under ``$BIOENGINE_ENVS_DIR`` (default
``~/.cache/bioengine/envs``); the repository's Makefile and test harness use the
repository root, so ``make test`` and ``make demo`` share one set.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BACKENDS = ("hypha", "ray", "triton")
ENVS_DIR = "BIOENGINE_ENVS_DIR"


def default_root() -> Path:
    # Absolute: programs entering Ray's namespace (nsenter) start in another folder.
    return Path(os.environ.get(ENVS_DIR) or Path.home() / ".cache" / "bioengine" / "envs").resolve()


def requirements(name: str) -> str:
    return (
        importlib.resources.files("bioengine_operator.local")
        .joinpath(f"requirements/{name}.txt")
        .read_text()
    )


def path(name: str, root: Path | None = None) -> Path:
    return (root or default_root()) / f".venv-{name}"


def _stamp(name: str, root: Path | None) -> Path:
    digest = hashlib.sha256(requirements(name).encode()).hexdigest()[:12]
    return path(name, root) / f".installed-{digest}"


def installed(name: str, root: Path | None = None) -> bool:
    return _stamp(name, root).exists()


def venv(name: str, root: Path | None = None) -> Path:
    """The venv of ``name``; FileNotFoundError, saying how to make it, if it is not ready."""
    if not installed(name, root):
        raise FileNotFoundError(
            f"{path(name, root)} is not installed: run `make backends` (tests) or "
            "`bioengine up` (installs it on first use)"
        )
    return path(name, root)


def ensure(name: str, root: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Install the venv of ``name`` unless its stamp says it is current; pip's output goes
    to ``<venv>.log``, so a failure can be read there."""
    if installed(name, root):
        return path(name, root)
    target = path(name, root)
    target.parent.mkdir(parents=True, exist_ok=True)
    pip_log = target.with_name(f"{target.name}.log")
    wanted = target.with_name(f"{target.name}.requirements.txt")
    wanted.write_text(requirements(name))
    log(f"installing the {name} environment into {target} (first use; pip log: {pip_log})")
    started = time.monotonic()
    with pip_log.open("ab") as out:
        for argv in (
            [sys.executable, "-m", "venv", str(target)],
            [str(target / "bin" / "python"), "-m", "pip", "install", "-r", str(wanted)],
        ):
            with subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT) as proc:
                while proc.poll() is None:
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:  # a minute of pip is not silence
                        log(f"still installing {name} ({time.monotonic() - started:.0f} s)")
            if proc.returncode != 0:
                raise RuntimeError(f"installing the {name} environment failed: see {pip_log}")
    for old in target.glob(".installed-*"):
        old.unlink()
    _stamp(name, root).touch()
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description="install the local backends' environments")
    parser.add_argument("--root", type=Path, default=None, help=f"default: ${ENVS_DIR}")
    parser.add_argument("names", nargs="*", choices=BACKENDS, default=list(BACKENDS))
    args = parser.parse_args()
    for name in args.names:
        ensure(name, args.root)


if __name__ == "__main__":
    main()
