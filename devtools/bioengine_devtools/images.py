"""Container images for the real node, built here: no registry, no Docker engine.

The real node's containerd gets every image from an archive (``ctr images import``), and
every pod names its image with a tag that exists there, so nothing is ever pulled. What is
built, each from inputs in this repository, into a cache outside it
(``~/.cache/bioengine-operator/images``, beside the Go tools) under a tag that is a hash of
those inputs, so a fresh clone reuses them and any change rebuilds what it touches:

* ``base``: Debian 12 from debootstrap, with its Python 3.11 and pip, standing in for
  ``python:3.11-slim`` (the Dockerfile's default base).
* ``operator``: **the project's own Dockerfile**, built with ``PYTHON_IMAGE`` = ``base``: the
  image the chart runs as operator, bridge and dataset servers.
* ``ray``, ``triton``, ``hypha``: stand-ins for ``rayproject/ray``, NVIDIA's Triton image and
  Hypha's, from the Dockerfiles in ``dockerfiles/`` over ``base``, with the same pinned
  requirements as ``bioengine up``'s environments (``local/requirements/``).
* ``pause`` and ``coredns``: one static Go binary each (``tools/pause``, ``tools/coredns``).

The builder is buildah (Debian's package), with chroot isolation and its storage in the cache:
it runs as root without raising any rlimit, which podman's and BuildKit's runners try to do
and this machine's VM refuses. RUN steps reach the package registries with the host's CA
bundle mounted over the image's (only during the build), since this machine's proxy presents
its own CA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bioengine_devtools import tools

HERE = Path(__file__).resolve().parent / "dockerfiles"
REQUIREMENTS = tools.REPO_ROOT / "operator" / "bioengine_operator" / "local" / "requirements"
REGISTRY = "localhost/bioengine-dev"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What python:3.11-slim has that Debian's minbase lacks: Python with pip (and `python`).
BASE_PACKAGES = ("python3", "python3-pip", "python-is-python3", "ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
NAMES = ("pause", "coredns", "base", "operator", "ray", "triton", "hypha")


def cache_root() -> Path:
    return tools.cache_root().parent / "images"


@dataclasses.dataclass(frozen=True)
class Image:
    """A built image: its reference (the tag is a hash of its inputs) and its archive."""

    name: str
    ref: str
    archive: Path


def _digest(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:12]


def _files_digest(root: Path, paths: list[Path]) -> str:
    return _digest(*(f"{p.relative_to(root)}\0".encode() + p.read_bytes() for p in sorted(paths)))


def operator_context_files(root: Path = tools.REPO_ROOT) -> list[Path]:
    """The files the Dockerfile's build context holds: the ``!`` entries of .dockerignore
    (an allow-list), without its ``**/`` exclusions. Their content is the image's input."""
    allowed, excluded = [], []
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line.startswith("!"):
            allowed.append(line[1:].rstrip("/"))
        elif line.startswith("**/"):
            excluded.append(line[3:])
    files: list[Path] = []
    for entry in allowed:
        path = root / entry
        candidates = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files += [
            p
            for p in candidates
            if not any(
                part == pattern or Path(part).match(pattern)
                for part in p.relative_to(root).parts
                for pattern in excluded
            )
        ]
    return files


@dataclasses.dataclass
class Builder:
    """Builds each image once per set of inputs; ``build(name)`` returns it from the cache
    when its archive already exists."""

    cache: Path = dataclasses.field(default_factory=cache_root)
    log: Callable[[str], None] = print

    @property
    def _storage(self) -> list[str]:
        return [
            "buildah",
            f"--root={self.cache / 'buildah' / 'storage'}",
            f"--runroot={self.cache / 'buildah' / 'run'}",
            "--storage-driver=overlay",
        ]

    def build_all(self) -> dict[str, Image]:
        return {name: self.build(name) for name in NAMES}

    def build(self, name: str) -> Image:
        ref = self.ref(name)
        archive = self.cache / f"{name}-{ref.rsplit(':', 1)[1]}.tar"
        if archive.exists():
            return Image(name, ref, archive)
        if name not in ("pause", "coredns", "base"):
            self.build("base")  # before taking the lock, which is not re-entrant
        self.cache.mkdir(parents=True, exist_ok=True)
        with _locked(self.cache / ".lock"):
            if not archive.exists():  # another process may have built it meanwhile
                started = time.monotonic()
                self.log(f"building image {ref} ...")
                getattr(self, f"_build_{name}")(ref)
                partial = archive.with_suffix(".partial")
                partial.unlink(missing_ok=True)
                self._buildah("push", "--quiet", ref, f"docker-archive:{partial}:{ref}")
                partial.rename(archive)
                self._prune(name, archive)
                if name != "base":  # the archive is the image now; base is built upon
                    self._buildah("rmi", ref)
                self.log(f"built image {ref} in {time.monotonic() - started:.0f}s")
        return Image(name, ref, archive)

    # -- what each image is made of (its tag) ------------------------------------------------

    def ref(self, name: str) -> str:
        return f"{REGISTRY}/{name}:{self._inputs(name)}"

    def _inputs(self, name: str) -> str:
        if name in ("pause", "coredns"):
            return _digest(tools.build(tools.TOOLS[name]).name)
        if name == "base":
            return _digest(DEBIAN_SUITE, DEBIAN_MIRROR, *BASE_PACKAGES, "minbase", "v1")
        base = self.ref("base")
        if name == "operator":
            root = tools.REPO_ROOT
            files = [root / "Dockerfile", *operator_context_files(root)]
            return _digest(base, _files_digest(root, files))
        dockerfile = HERE / f"{name}.Dockerfile"
        return _digest(base, dockerfile.read_bytes(), (REQUIREMENTS / f"{name}.txt").read_bytes())

    # -- builders --------------------------------------------------------------------------

    def _build_pause(self, ref: str) -> None:
        self._single_binary(ref, tools.binary("pause"), ["/pause"])

    def _build_coredns(self, ref: str) -> None:
        self._single_binary(ref, tools.binary("coredns"), ["/coredns"])

    def _build_base(self, ref: str) -> None:
        with tempfile.TemporaryDirectory(prefix="base-", dir=self.cache) as tmp:
            rootfs = Path(tmp) / "rootfs"
            self._run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    DEBIAN_SUITE,
                    str(rootfs),
                    DEBIAN_MIRROR,
                ],
                "debootstrap",
            )
            # As in python:3.11-slim: pip may install into the system Python (Debian marks
            # it externally managed), and no package caches or lists are kept; nothing of
            # this machine's (debootstrap copies its resolv.conf and hostname) either.
            for leftover in (
                "etc/resolv.conf",
                "etc/hostname",
                "usr/lib/python3.11/EXTERNALLY-MANAGED",
                "var/cache/apt/archives",
                "var/lib/apt/lists",
                "var/log",
            ):
                path = rootfs / leftover
                if path.is_dir():
                    shutil.rmtree(path)
                    path.mkdir()
                else:
                    path.unlink(missing_ok=True)
            (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True)
            (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True)
            container = self._from_scratch()
            try:
                # tar keeps owners, modes and links as debootstrap made them.
                mount = self._buildah("mount", container).strip()
                _copy_tree(rootfs, Path(mount))
                self._buildah("umount", container)
                self._commit(container, ref, env={"LANG": "C.UTF-8"}, cmd=["python3"])
            finally:
                self._buildah("rm", container)

    def _build_operator(self, ref: str) -> None:
        self._bud(
            ref,
            tools.REPO_ROOT / "Dockerfile",
            tools.REPO_ROOT,
            {"PYTHON_IMAGE": self.build("base").ref},
        )

    def _build_ray(self, ref: str) -> None:
        self._requirements_image(ref, "ray")

    def _build_triton(self, ref: str) -> None:
        self._requirements_image(ref, "triton")

    def _build_hypha(self, ref: str) -> None:
        self._requirements_image(ref, "hypha")

    def _requirements_image(self, ref: str, name: str) -> None:
        """``<name>.Dockerfile`` over ``base``, its context holding ``<name>.txt``."""
        with tempfile.TemporaryDirectory(prefix=f"{name}-", dir=self.cache) as context:
            shutil.copy2(REQUIREMENTS / f"{name}.txt", Path(context) / f"{name}.txt")
            self._bud(ref, HERE / f"{name}.Dockerfile", Path(context), {"BASE_IMAGE": self._base()})

    def _base(self) -> str:
        return self.build("base").ref

    # -- buildah ---------------------------------------------------------------------------

    def _bud(self, ref: str, dockerfile: Path, context: Path, args: dict[str, str]) -> None:
        for base in args.values():
            self._ensure_local(base)
        self._buildah(
            "bud",
            "--quiet",
            "--isolation=chroot",
            "--layers=false",
            f"--volume={HOST_CA_BUNDLE}:/etc/ssl/certs/ca-certificates.crt:ro",
            *(f"--build-arg={key}={value}" for key, value in args.items()),
            f"--file={dockerfile}",
            f"--tag={ref}",
            str(context),
            label=f"buildah bud {dockerfile.name}",
        )

    def _ensure_local(self, ref: str) -> None:
        """Put a built image back into buildah's storage from its archive, if it went."""
        exists = subprocess.run([*self._storage, "inspect", ref], capture_output=True)
        if exists.returncode != 0:
            name = ref.rsplit("/", 1)[1].split(":")[0]
            self._buildah("pull", "--quiet", f"docker-archive:{self.build(name).archive}")

    def _single_binary(self, ref: str, binary: Path, entrypoint: list[str]) -> None:
        container = self._from_scratch()
        try:
            self._buildah("copy", "--quiet", "--chmod=0755", container, str(binary), "/")
            self._commit(container, ref, entrypoint=entrypoint, user="65532:65532")
        finally:
            self._buildah("rm", container)

    def _from_scratch(self) -> str:
        return self._buildah("from", "--quiet", "scratch").strip()

    def _commit(
        self,
        container: str,
        ref: str,
        *,
        env: dict[str, str] | None = None,
        cmd: list[str] | None = None,
        entrypoint: list[str] | None = None,
        user: str | None = None,
    ) -> None:
        config = ["--env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        config += [f"--env={key}={value}" for key, value in (env or {}).items()]
        if cmd is not None:
            config.append(f"--cmd={json.dumps(cmd)}")
        if entrypoint is not None:
            config.append(f"--entrypoint={json.dumps(entrypoint)}")
        if user is not None:
            config.append(f"--user={user}")
        self._buildah("config", *config, container)
        self._buildah("commit", "--quiet", container, ref)

    def _prune(self, name: str, keep: Path) -> None:
        """Older archives of the same image go: each is hundreds of MiB."""
        for old in self.cache.glob(f"{name}-*.tar"):
            if old != keep:
                old.unlink()

    def _buildah(self, *args: str, label: str | None = None) -> str:
        return self._run([*self._storage, *args], label or f"buildah {args[0]}")

    def _run(self, argv: list[str], label: str) -> str:
        env = {**os.environ, "BUILDAH_ISOLATION": "chroot"}
        result = subprocess.run(argv, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-4000:]
            raise RuntimeError(f"{label} failed ({result.returncode}):\n{output}")
        return result.stdout


def _copy_tree(source: Path, target: Path) -> None:
    """Copy a root filesystem with owners, modes, links and device nodes (tar does)."""
    pack = subprocess.Popen(["tar", "-C", str(source), "-cf", "-", "."], stdout=subprocess.PIPE)
    unpack = subprocess.run(["tar", "-C", str(target), "-xpf", "-"], stdin=pack.stdout)
    if pack.wait() != 0 or unpack.returncode != 0:
        raise RuntimeError(f"copying {source} into the image failed")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One build at a time per cache (two pytest sessions may ask at once)."""
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
