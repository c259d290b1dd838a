"""An app folder (``manifest.yaml`` + code) → the objects ``kubectl apply`` takes (no I/O
beyond reading the folder).

The folder's files go into a ConfigMap, which Kubernetes caps at 1 MiB: text files as
``data``, others as ``binaryData``. ConfigMap keys cannot hold ``/``, so when a file sits
in a subfolder every file gets a flattened key and ``source.configMap.items`` says where
each goes (the kubelet rebuilds the tree). A folder over the limit is refused with a
pointer to the other source: a zip at a URL that Ray downloads as its ``working_dir``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import zipfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bioengine_operator.api.app import APP_NAME_MAX, DROPPED, MIGRATION, AppManifest
from bioengine_operator.api.base import API_VERSION

MANIFEST = "manifest.yaml"
# Kubernetes refuses objects over 1 MiB (etcd's request limit): keep room for metadata.
CONFIG_MAP_LIMIT = 1024 * 1024 - 16 * 1024
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
    size = sum(len(v.encode()) for v in data.values()) + sum(len(v) for v in binary.values())
    if size > CONFIG_MAP_LIMIT:
        raise AppFolderError(
            f"the app's files take {size} bytes in a ConfigMap, over Kubernetes' limit of "
            f"{CONFIG_MAP_LIMIT}: zip the folder (bioengine render --zip app.zip), upload it "
            "(an http(s), s3 or gs URL, e.g. a Hypha artifact) and render with --source-uri URL"
        )
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "bioengine"}},
        "data": data,
    }
    if binary:
        body["binaryData"] = binary
    nested = package is not None or any(keys[p] != p for p in files)
    items = [{"key": keys[p], "path": p} for p in files] if nested else []
    if package is not None:
        items += [{"key": keys[p], "path": f"{package}/{p}"} for p in files]
    return body, items


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
    """The BioEngineApp for ``folder`` (and the ConfigMap with its code, unless the code
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
    manifest in errors, ``code_name`` the code ConfigMap (default ``<name>-code``)."""
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
        code, items = config_map(
            code_name or f"{resource}-code", files, package if in_package else None
        )
        source = {"configMap": {"name": code["metadata"]["name"]}}
        if items:
            source["configMap"]["items"] = items
        objects.append(code)
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
