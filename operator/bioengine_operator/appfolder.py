"""An app folder (``manifest.yaml`` + code) → the objects ``kubectl apply`` takes (no I/O
beyond reading the folder).

The folder's files go into a ConfigMap: text files as ``data``, others as ``binaryData``.
ConfigMap keys cannot hold ``/``, so when a file sits in a subfolder every file gets a
flattened key and ``source.configMap.items`` says where each goes (the kubelet rebuilds the
tree). A folder too large for one ConfigMap (see :data:`CONFIG_MAP_LIMIT`) goes as a zip
split over several (``source.zip``), which an init container of every Ray pod unpacks: the
same command and the same ``kubectl apply``, whatever the folder's size.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import posixpath
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bioengine_operator.api.app import (
    APP_NAME_MAX,
    DROPPED,
    MIGRATION,
    ZIP_PART_KEY,
    ZIP_PARTS_MAX,
    AppManifest,
)
from bioengine_operator.api.base import API_VERSION

MANIFEST = "manifest.yaml"
# Bytes of files one ConfigMap holds (as JSON). Kubernetes refuses objects over 1 MiB, but
# `kubectl apply` (client side, the default) also copies the whole object into an annotation,
# which it caps at 256 KiB: stay under that, with room for metadata and Go's JSON escapes.
CONFIG_MAP_LIMIT = 224 * 1024
# Bytes of the zip in each part: their base64 (4 characters per 3 bytes), with its key and
# quotes, stays within CONFIG_MAP_LIMIT.
PART_SIZE = (CONFIG_MAP_LIMIT - 1024) // 4 * 3
KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# Not needed to run the app: caches, environments, and the app's own tests.
SKIPPED_DIRS = {"__pycache__", "venv", "node_modules", "tests"}
ZIP_TIME = (2020, 1, 1, 0, 0, 0)


class AppFolderError(ValueError):
    """The folder cannot be turned into an app; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class Rendered:
    objects: list[dict[str, Any]]
    warnings: list[str]


def skipped(parts: tuple[str, ...]) -> bool:
    """Whether the file at ``parts`` (its path in the folder) is left out of the app:
    hidden files, caches, environments and tests."""
    hidden = any(p.startswith(".") or p in SKIPPED_DIRS for p in parts)
    return hidden or parts[-1].endswith(".pyc")


def files_of(folder: Path) -> dict[str, bytes]:
    """Every file of the app, by its path in the folder (see :func:`skipped`)."""
    found: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not skipped(relative.parts) and path.is_file():
            found[relative.as_posix()] = path.read_bytes()
    return found


def parse_manifest(content: bytes, where: str) -> tuple[AppManifest, list[str]]:
    """``content`` of a ``manifest.yaml`` checked as format 0.6.0 (errors name ``where`` and
    the field); and warnings about keys left out."""
    try:
        raw = yaml.safe_load(content.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise AppFolderError(f"{where}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise AppFolderError(f"{where}: must be a mapping of manifest fields")
    for name, replacement in DROPPED.items():
        if name in raw:
            raise AppFolderError(
                f"{where}: {name}: a format 0.5 field that format 0.6.0 dropped: "
                f"{replacement} (see {MIGRATION})"
            )
    version = str(raw.get("format_version", ""))
    if version != "0.6.0":
        raise AppFolderError(
            f"{where}: format_version: is {version or 'missing'}, must be 0.6.0: apps of "
            f"format 0.4/0.5 must be migrated first (see {MIGRATION})"
        )
    known = set(AppManifest.model_fields)
    unknown = [key for key in raw if key not in known]
    warnings = [f"{where}: {key}: not a format 0.6.0 field, left out" for key in unknown]
    try:
        manifest = AppManifest.model_validate({k: v for k, v in raw.items() if k in known})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(snake_case(str(p)) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise AppFolderError(f"{where}: {problems}") from None
    return manifest, warnings


def snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _keys(paths: list[str]) -> dict[str, str]:
    """ConfigMap key of each path: the path itself when it is a valid key, else a
    flattened one (``runtimes/a.py`` → ``runtimes--a.py``)."""
    keys: dict[str, str] = {}
    seen: dict[str, str] = {}
    for path in paths:
        key = path if KEY.match(path) else re.sub(r"[^-._a-zA-Z0-9]", "_", path.replace("/", "--"))
        if key in seen:
            raise AppFolderError(
                f"{path} and {seen[key]} would share the ConfigMap key {key!r}: rename one"
            )
        seen[key] = path
        keys[path] = key
    return keys


def _config_map(name: str, data: dict[str, str], binary: dict[str, str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "bioengine"}},
        "data": data,
    }
    if binary:
        body["binaryData"] = binary
    return body


def content_size(body: dict[str, Any]) -> int:
    """Bytes of a ConfigMap's files as ``kubectl apply`` sends them (JSON, escapes and
    base64 included): what :data:`CONFIG_MAP_LIMIT` bounds."""
    contents = [body.get("data") or {}, body.get("binaryData") or {}]
    return len(json.dumps(contents, ensure_ascii=False).encode())


def config_map(
    name: str, files: dict[str, bytes], package: str | None = None
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The ConfigMap holding ``files``, and the items that rebuild their folder tree (also
    under ``package/`` when the entry imports the folder as that package)."""
    keys = _keys(list(files))
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    for path, content in files.items():
        try:
            data[keys[path]] = content.decode("utf-8")
        except UnicodeDecodeError:
            binary[keys[path]] = base64.b64encode(content).decode()
    nested = package is not None or any(keys[p] != p for p in files)
    items = [{"key": keys[p], "path": p} for p in files] if nested else []
    if package is not None:
        items += [{"key": keys[p], "path": f"{package}/{p}"} for p in files]
    return _config_map(name, data, binary), items


def zip_config_maps(
    name: str, files: dict[str, bytes], package: str | None = None
) -> list[dict[str, Any]]:
    """The folder as one zip (with the ``package/`` copy, as :func:`config_map` places it)
    split in order over the ConfigMaps ``<name>-0``, ``<name>-1``, ..., each part under
    the binaryData key ``part``: the ``source.zip`` of a folder too large for one."""
    placed = dict(files)
    if package is not None:
        placed |= {f"{package}/{path}": content for path, content in files.items()}
    content = zip_of(placed)
    parts = [content[start : start + PART_SIZE] for start in range(0, len(content), PART_SIZE)]
    if len(parts) > ZIP_PARTS_MAX:
        raise AppFolderError(
            f"the app's files zip to {len(content)} bytes, over the {ZIP_PARTS_MAX * PART_SIZE} "
            "that ConfigMaps carry: put large data in a BioEngineDataset (or models in a "
            "ModelRunner), or upload the zip (bioengine render --zip app.zip) to an http(s), "
            "s3 or gs URL and render with --source-uri URL"
        )
    return [
        _config_map(f"{name}-{index}", {}, {ZIP_PART_KEY: base64.b64encode(part).decode()})
        for index, part in enumerate(parts)
    ]


def inside(path: str) -> bool:
    """Whether ``path`` is relative and stays inside its folder."""
    clean = posixpath.normpath(path)
    return bool(path) and not path.startswith("/") and clean != ".." and not clean.startswith("../")


def unzip(content: bytes) -> dict[str, bytes]:
    """The files of an app's zip by path (what a zip source's init container unpacks);
    :class:`AppFolderError` for a corrupt zip or a file that would land outside the folder."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            files = {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}
    except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as err:
        raise AppFolderError(f"not a valid zip: {err}") from None
    outside = [path for path in files if not inside(path)]
    if outside:
        raise AppFolderError(f"the zip's {outside[0]!r} leaves the app's folder")
    return files


def _has_module(files: dict[str, bytes], module: str) -> bool:
    return f"{module}.py" in files or f"{module}/__init__.py" in files


def zip_of(files: dict[str, bytes], top: str = "") -> bytes:
    """The folder as a zip whose root is the app's folder (Ray's working_dir layout), or
    inside one ``top`` folder (which Ray strips); sorted, with fixed timestamps, so the
    same files make the same bytes."""
    buffer = io.BytesIO()
    prefix = f"{top}/" if top else ""
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, content in sorted(files.items()):
            archive.writestr(zipfile.ZipInfo(prefix + path, ZIP_TIME), content)
    return buffer.getvalue()


def render(
    folder: Path,
    *,
    name: str | None = None,
    namespace: str | None = None,
    source_uri: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Rendered:
    """The BioEngineApp for ``folder`` (and the ConfigMaps with its code, unless the code
    comes from ``source_uri``), with a cluster admin's ``overrides`` merged into its spec."""
    return render_files(
        files_of(folder),
        str(folder / MANIFEST),
        name=name,
        namespace=namespace,
        source_uri=source_uri,
        overrides=overrides,
    )


def render_files(
    files: dict[str, bytes],
    where: str,
    *,
    name: str | None = None,
    namespace: str | None = None,
    source_uri: str | None = None,
    overrides: dict[str, Any] | None = None,
    code_name: str | None = None,
) -> Rendered:
    """:func:`render` for an app's files held in memory (an upload); ``where`` names its
    manifest in errors, ``code_name`` the code ConfigMap (default ``<name>-code``; a zip's
    parts are ``<code_name>-0``, ``-1``, ...)."""
    if MANIFEST not in files:
        raise AppFolderError(f"{where}: not found (an app folder holds a {MANIFEST})")
    manifest, warnings = parse_manifest(files[MANIFEST], where)
    if manifest.frontend_entry and manifest.frontend_entry not in files:
        raise AppFolderError(
            f"{where}: frontend_entry: {manifest.frontend_entry} is not in the folder"
        )
    module = manifest.entry.partition(":")[0].replace(".", "/")
    # Some apps name their entry inside the folder as a package named after the id
    # (demo_app.deployment:DemoApp for the folder demo-app): the folder is mounted as that too.
    package = manifest.id.replace("-", "_")
    in_package = module.startswith(f"{package}/") and not _has_module(files, module)
    if in_package:
        module = module.removeprefix(f"{package}/")
    if not _has_module(files, module):
        raise AppFolderError(
            f"{where}: entry: module {manifest.entry.partition(':')[0]} is not in the folder"
        )
    resource = name or manifest.id
    if len(resource) > APP_NAME_MAX:
        raise AppFolderError(
            f"{where}: id: {resource!r} is longer than {APP_NAME_MAX} characters, "
            "the longest BioEngineApp name: give a shorter --name"
        )
    objects: list[dict[str, Any]] = []
    if source_uri:
        source: dict[str, Any] = {"uri": source_uri}
    else:
        code_name = code_name or f"{resource}-code"
        copy_as = package if in_package else None
        code, items = config_map(code_name, files, copy_as)
        size = content_size(code)
        if size <= CONFIG_MAP_LIMIT:
            source = {"configMap": {"name": code_name}}
            if items:
                source["configMap"]["items"] = items
            objects.append(code)
        else:
            parts = zip_config_maps(code_name, files, copy_as)
            source = {"zip": {"configMaps": [part["metadata"]["name"] for part in parts]}}
            objects += parts
            warnings.append(
                f"{where}: the app's files take {size} bytes, over the {CONFIG_MAP_LIMIT} of "
                f"one ConfigMap: shipped as a zip over {len(parts)} ConfigMaps (source.zip)"
            )
    fields = manifest.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    spec = {**fields, "source": source, **(overrides or {})}
    app: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "BioEngineApp",
        "metadata": {"name": resource},
        "spec": spec,
    }
    objects.append(app)
    if namespace:
        for obj in objects:
            obj["metadata"]["namespace"] = namespace
    return Rendered(objects, warnings)
