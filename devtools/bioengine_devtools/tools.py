"""Build the Go tools of the local control plane once, into a cache keyed by their pins.

No Kubernetes binaries can be downloaded on our machines, so each tool is a Go module
dependency pinned in ``tools/<module>/go.mod`` and compiled with ``go build``. The output
directory's name carries a hash of that module's ``go.mod``, ``go.sum`` and link flags: a
pin change builds into a new directory, an unchanged pin reuses the old one, and a fresh
clone on the same machine (CI) finds everything already built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = REPO_ROOT / "tools"


def cache_root() -> Path:
    """Where built binaries live: outside the repository so fresh clones reuse them."""
    override = os.environ.get("BIOENGINE_TOOLS_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bioengine-operator" / "bin"


def _k8s_version_flags(version: str) -> tuple[str, ...]:
    # Without these the binaries report v0.0.0-master, which breaks `kubectl version`
    # and the apiserver's emulation-version checks.
    major, minor = version.lstrip("v").split(".")[:2]
    flags: list[str] = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return tuple(flags)


@dataclasses.dataclass(frozen=True)
class GoTool:
    """One Go module under ``tools/`` and the binaries built from it."""

    module: str  # directory under tools/
    main_module: str  # the required module whose version is the pin
    binaries: dict[str, str]  # binary name -> package path
    # Built without cgo: the binary goes alone into a container image (no libc there).
    static: bool = False

    @property
    def module_dir(self) -> Path:
        return TOOLS_DIR / self.module

    def version(self) -> str:
        if self.main_module == self.module_path():
            return "local"  # built from this repository's own main.go
        gomod = (self.module_dir / "go.mod").read_text()
        match = re.search(
            rf"^\s*(?:require\s+)?{re.escape(self.main_module)}\s+(v\S+)", gomod, re.M
        )
        if not match:
            raise RuntimeError(f"{self.main_module} is not required in {self.module_dir}/go.mod")
        return match.group(1)

    def module_path(self) -> str:
        match = re.search(r"^module\s+(\S+)", (self.module_dir / "go.mod").read_text(), re.M)
        return match.group(1) if match else ""

    def ldflags(self) -> tuple[str, ...]:
        if self.module == "k8s":
            return _k8s_version_flags(self.version())
        if self.module == "helm":
            return (f"-X helm.sh/helm/v3/internal/version.version={self.version()}",)
        return ()

    def cache_dir(self) -> Path:
        digest = hashlib.sha256()
        for name in ("go.mod", "go.sum"):
            if (self.module_dir / name).exists():  # a module without dependencies has no sum
                digest.update((self.module_dir / name).read_bytes())
        for source in sorted(self.module_dir.glob("*.go")):  # a module's own main package
            digest.update(source.name.encode() + source.read_bytes())
        digest.update("\n".join(self.ldflags()).encode())
        if self.static:
            digest.update(b"CGO_ENABLED=0")
        return cache_root() / f"{self.module}-{self.version()}-{digest.hexdigest()[:12]}"


TOOLS: dict[str, GoTool] = {
    tool.module: tool
    for tool in (
        GoTool("etcd", "go.etcd.io/etcd/server/v3", {"etcd": "go.etcd.io/etcd/server/v3"}),
        GoTool(
            "k8s",
            "k8s.io/kubernetes",
            {
                name: f"k8s.io/kubernetes/cmd/{name}"
                for name in (
                    "kube-apiserver",
                    "kube-controller-manager",
                    "kube-scheduler",
                    # the real node (--nodes real)
                    "kubelet",
                    "kube-proxy",
                )
            },
        ),
        GoTool("kwok", "sigs.k8s.io/kwok", {"kwok": "sigs.k8s.io/kwok/cmd/kwok"}),
        GoTool(
            "kuberay",
            "github.com/ray-project/kuberay/ray-operator",
            {"kuberay-operator": "github.com/ray-project/kuberay/ray-operator"},
        ),
        GoTool("helm", "helm.sh/helm/v3", {"helm": "helm.sh/helm/v3/cmd/helm"}),
        # The real node's cluster DNS and pod sandbox, each alone in a container image.
        GoTool(
            "coredns",
            "github.com/coredns/coredns",
            {"coredns": "bioengine-operator/tools/coredns"},
            static=True,
        ),
        GoTool(
            "pause",
            "bioengine-operator/tools/pause",
            {"pause": "bioengine-operator/tools/pause"},
            static=True,
        ),
    )
}


def build(tool: GoTool, log: bool = True) -> Path:
    """Build ``tool`` unless its cache directory already holds every binary; return it."""
    target = tool.cache_dir()
    if all((target / name).is_file() for name in tool.binaries):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{tool.module}-", dir=target.parent))
    try:
        for name, package in tool.binaries.items():
            started = time.monotonic()
            if log:
                print(f"building {name} ({tool.main_module} {tool.version()}) ...", flush=True)
            subprocess.run(
                [
                    "go",
                    "build",
                    "-trimpath",
                    "-ldflags",
                    " ".join(("-s", "-w", *tool.ldflags())),
                    "-o",
                    str(staging / name),
                    package,
                ],
                cwd=tool.module_dir,
                env={**os.environ, "CGO_ENABLED": "0"} if tool.static else None,
                check=True,
            )
            if log:
                print(f"built {name} in {time.monotonic() - started:.0f}s", flush=True)
        # Rename is atomic: a concurrent or interrupted build never leaves a half directory.
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def binary(name: str) -> Path:
    """Path of a built binary, building its module first if needed."""
    for tool in TOOLS.values():
        if name in tool.binaries:
            return build(tool) / name
    raise KeyError(name)


def module_source(module: str, tool_module: str) -> Path:
    """Directory of ``module`` in the Go module cache (downloaded if missing).

    Used for data that ships inside a pinned module: KubeRay's CRDs and kwok's stages.
    """
    out = subprocess.run(
        ["go", "mod", "download", "-json", module],
        cwd=TOOLS[tool_module].module_dir,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r'"Dir":\s*"([^"]+)"', out)
    if not match:
        raise RuntimeError(f"go mod download gave no directory for {module}: {out}")
    return Path(match.group(1))


def run(
    argv: list[str],
    *,
    check: bool = True,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a command line tool (kubectl, ctr, helm) and capture its output; with ``check``, a
    failure raises with the tool's own words."""
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result


def build_all() -> dict[str, Path]:
    return {name: build(tool) for name, tool in TOOLS.items()}
