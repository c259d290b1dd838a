"""Files and app folders → the resources ``bioengine up`` runs, all checked before anything
starts (no processes, no network: only reading the inputs).

The inputs are what ``kubectl apply -f`` takes: YAML files of BioEngineApp, ModelRunner and
BioEngineDataset resources and the ConfigMaps they use, folders of such files (not
recursive, as kubectl), and BioEngine app folders (a ``manifest.yaml``; a folder of app
folders, such as ``apps/``, is each of them). Every resource is checked against the same
models the CRDs are generated from, and every reference (a code or model ConfigMap, a
dataset an app lists, a volume) must be resolvable on this machine. A problem raises
:class:`InputError` naming the file and the field.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bioengine_operator import appfolder
from bioengine_operator.api.app import ZIP_PART_KEY
from bioengine_operator.api.base import API_VERSION, DNS_1035, DNS_LABEL, DNS_SUBDOMAIN
from bioengine_operator.api.crds import KINDS, Kind

DEFAULT_NAMESPACE = "default"
YAML_SUFFIXES = (".yaml", ".yml", ".json")
RUNS = ", ".join(k.kind for k in KINDS)
CONFIG_MAP_KEY = r"^[-._a-zA-Z0-9]+$"


class InputError(ValueError):
    """An input cannot run; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class Resource:
    """One resource to run, with what it references resolved to local things."""

    body: dict[str, Any]  # as applied: apiVersion, kind, metadata (namespace set), spec
    origin: str  # the file (or app folder) it came from
    files: dict[str, bytes]  # app code (path → content) or model repository (key → content)
    folder: Path | None = None  # a dataset's or a volume repository's local folder

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.body.get("spec") or {})

    def digest(self) -> str:
        """Changes whenever what runs would change: the spec, the files, the folder."""
        hashed = hashlib.sha256(json.dumps(self.spec, sort_keys=True).encode())
        for path, content in sorted(self.files.items()):
            hashed.update(path.encode() + b"\0" + hashlib.sha256(content).digest())
        hashed.update(str(self.folder).encode())
        return hashed.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Document:
    origin: str
    body: dict[str, Any]


def load(paths: list[Path], volumes: dict[str, Path]) -> list[Resource]:
    """Every resource of ``paths``, checked and resolved. ``volumes`` maps a
    PersistentVolumeClaim's name to the local folder that stands in for it."""
    documents: list[Document] = []
    for path in paths:
        documents += _documents(path)
    return _resources(documents, volumes, set())


def from_objects(
    bodies: list[dict[str, Any]], origin: str, running_datasets: set[tuple[str, str]]
) -> list[Resource]:
    """The resources among objects handed over in memory (the worker service's: an app and
    its code ConfigMaps), checked as files are; ``running_datasets`` (namespace, name) may be
    listed by an app without being among them."""
    documents = [Document(origin, _checked(body, origin)) for body in bodies]
    return _resources(documents, {}, running_datasets)


def _resources(
    documents: list[Document], volumes: dict[str, Path], running_datasets: set[tuple[str, str]]
) -> list[Resource]:
    config_maps: dict[tuple[str, str], Document] = {}
    resources: dict[tuple[str, str, str], Document] = {}
    for doc in documents:
        key = (doc.body["kind"], doc.body["metadata"]["namespace"], doc.body["metadata"]["name"])
        seen = config_maps.get(key[1:]) if key[0] == "ConfigMap" else resources.get(key)
        if seen is not None:
            raise InputError(f"{doc.origin}: {key[0]} {key[2]} is also defined in {seen.origin}")
        if key[0] == "ConfigMap":
            config_maps[key[1:]] = doc
        else:
            resources[key] = doc
    by_name: dict[tuple[str, str], tuple[str, str, str]] = {}
    for key, doc in resources.items():
        other = by_name.setdefault((key[0], key[2]), key)
        if other != key:
            # One machine has one of each name (folders, logs, Serve's application names).
            raise InputError(
                f"{doc.origin}: {key[0]} {key[2]} is also in namespace {other[1]} "
                f"({resources[other].origin}): names must differ on one machine"
            )
    datasets = {(ns, name) for kind, ns, name in resources if kind == "BioEngineDataset"}
    datasets |= running_datasets
    return [
        _resolve(doc, config_maps, datasets, volumes)
        for _, doc in sorted(resources.items(), key=lambda item: item[0])
    ]


def _documents(path: Path) -> list[Document]:
    if path.is_dir():
        if (path / appfolder.MANIFEST).is_file():
            return _app_folder(path)
        found: list[Document] = []
        for child in sorted(path.iterdir()):
            if child.is_dir() and (child / appfolder.MANIFEST).is_file():
                found += _app_folder(child)
            elif child.is_file() and child.suffix in YAML_SUFFIXES:
                found += _yaml_file(child)
        if not found:
            raise InputError(f"{path}: holds no resources and no app folders")
        return found
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    return _yaml_file(path)


def _app_folder(folder: Path) -> list[Document]:
    try:
        rendered = appfolder.render(folder, namespace=DEFAULT_NAMESPACE)
    except appfolder.AppFolderError as err:
        raise InputError(str(err)) from None
    origin = str(folder / appfolder.MANIFEST)
    return [Document(origin, body) for body in rendered.objects]


def _yaml_file(path: Path) -> list[Document]:
    try:
        bodies = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise InputError(f"{path}: not valid YAML: {err}") from None
    found = []
    for index, body in enumerate(bodies, 1):
        where = f"{path}: document {index}" if len(bodies) > 1 else str(path)
        found.append(Document(where, _checked(body, where)))
    return found


def _kind(body: dict[str, Any]) -> Kind | None:
    return next((k for k in KINDS if k.kind == body.get("kind")), None)


def _checked(body: Any, where: str) -> dict[str, Any]:
    """The document's kind, apiVersion and name, with its namespace defaulted."""
    if not isinstance(body, dict):
        raise InputError(f"{where}: not a Kubernetes object (a mapping with kind and metadata)")
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if kind == "ConfigMap" and api_version == "v1":
        pass
    elif _kind(body) is None:
        raise InputError(
            f"{where}: kind: {kind!r} cannot run here (bioengine up runs {RUNS}, "
            "and the ConfigMaps they use)"
        )
    elif api_version != API_VERSION:
        raise InputError(f"{where}: apiVersion: {api_version!r} for {kind}, expected {API_VERSION}")
    meta = body.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise InputError(f"{where}: metadata.name: required")
    namespace = meta.get("namespace") or DEFAULT_NAMESPACE
    found = _kind(body)
    # The rules the API server and the CRDs apply: names end up in paths and process names.
    if found is not None:
        if len(meta["name"]) > found.max_name or not re.match(DNS_1035, meta["name"]):
            raise InputError(f"{where}: metadata.name: {found.name_rule()['message']}")
    elif len(meta["name"]) > 253 or not re.match(DNS_SUBDOMAIN, meta["name"]):
        raise InputError(f"{where}: metadata.name: must be a DNS subdomain (lowercase, '-', '.')")
    if not isinstance(namespace, str) or len(namespace) > 63 or not re.match(DNS_LABEL, namespace):
        raise InputError(f"{where}: metadata.namespace: must be a DNS label")
    return {**body, "metadata": {**meta, "namespace": namespace}}


def _validated(doc: Document, kind: Kind) -> dict[str, Any]:
    """The spec, checked, in its wire form (camelCase, whatever spelling the file used)."""
    where = f"{doc.origin}: {kind.kind} {doc.body['metadata']['name']}"
    try:
        model = kind.spec.model_validate(doc.body.get("spec") or {})
        return model.model_dump(by_alias=True, exclude_none=True, mode="json")
    except ValidationError as err:
        fields = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise InputError(f"{where}: {fields}") from None


def _config_map_files(doc: Document) -> dict[str, bytes]:
    data, binary = doc.body.get("data") or {}, doc.body.get("binaryData") or {}
    if not isinstance(data, dict) or not isinstance(binary, dict):
        raise InputError(f"{doc.origin}: data, binaryData: must map keys to contents")
    for key in [*data, *binary]:
        if not isinstance(key, str) or not re.match(CONFIG_MAP_KEY, key):
            raise InputError(f"{doc.origin}: data: {key!r} is not a valid ConfigMap key")
    files = {k: str(v).encode() for k, v in data.items()}
    for key, value in binary.items():
        try:
            files[key] = base64.b64decode(str(value), validate=True)
        except binascii.Error:
            raise InputError(f"{doc.origin}: binaryData.{key}: not base64") from None
    return files


def _app_files(
    where: str, source: dict[str, Any], config_map: Callable[[str, str], dict[str, bytes]]
) -> dict[str, bytes]:
    """The app's folder as a Ray pod sees it at APP_DIR: a configMap source's keys placed by
    its items, or a zip source's parts joined and unpacked (as its init container does).
    ``config_map(field, name)`` is the files of a ConfigMap among the inputs."""
    if "zip" in source:
        parts = []
        for index, name in enumerate(source["zip"]["configMaps"]):
            field = f"spec.source.zip.configMaps[{index}]"
            part = config_map(field, name).get(ZIP_PART_KEY)
            if part is None:
                raise InputError(f"{where}: {field}: ConfigMap {name} has no key {ZIP_PART_KEY}")
            parts.append(part)
        try:
            return appfolder.unzip(b"".join(parts))
        except appfolder.AppFolderError as err:
            raise InputError(f"{where}: spec.source.zip: {err}") from None
    if "configMap" not in source:
        raise InputError(
            f"{where}: spec.source: only a configMap or zip source runs on one machine "
            "(give the app's folder instead)"
        )
    code = config_map("spec.source.configMap.name", source["configMap"]["name"])
    items = source["configMap"].get("items") or [{"key": k, "path": k} for k in code]
    files = {}
    for item in items:
        if item["key"] not in code:
            raise InputError(f"{where}: spec.source.configMap.items: no key {item['key']}")
        files[item["path"]] = code[item["key"]]
    return files


def _resolve(
    doc: Document,
    config_maps: dict[tuple[str, str], Document],
    datasets: set[tuple[str, str]],
    volumes: dict[str, Path],
) -> Resource:
    kind = _kind(doc.body)
    assert kind is not None
    spec = _validated(doc, kind)
    body = {**doc.body, "spec": spec}
    namespace = body["metadata"]["namespace"]
    where = f"{doc.origin}: {kind.kind} {body['metadata']['name']}"

    def config_map(field: str, name: str) -> dict[str, bytes]:
        found = config_maps.get((namespace, name))
        if found is None:
            raise InputError(f"{where}: {field}: ConfigMap {name} is not among the inputs")
        return _config_map_files(found)

    def volume(field: str, source: dict[str, Any]) -> Path:
        if "hostPath" in source:
            folder = Path(source["hostPath"]["path"])
        elif "pvc" in source:
            claim = source["pvc"]["claimName"]
            if claim not in volumes:
                raise InputError(
                    f"{where}: {field}.pvc: PersistentVolumeClaim {claim} has no folder on "
                    f"this machine: give one with --volume {claim}=PATH"
                )
            sub_path = source["pvc"].get("subPath", "")
            if sub_path and not appfolder.inside(sub_path):
                raise InputError(f"{where}: {field}.pvc.subPath: must stay inside the volume")
            folder = volumes[claim] / sub_path
        else:
            raise InputError(
                f"{where}: {field}: only hostPath and pvc (with --volume) run on one machine"
            )
        if not folder.is_dir():
            raise InputError(f"{where}: {field}: {folder} is not a folder")
        return folder.resolve()

    if kind.kind == "BioEngineApp":
        files = _app_files(where, spec["source"], config_map)
        for index, name in enumerate(spec.get("datasets") or []):
            if (namespace, name) not in datasets:
                raise InputError(
                    f"{where}: spec.datasets[{index}]: BioEngineDataset {name} is not among "
                    "the inputs"
                )
        return Resource(body, doc.origin, files)
    if kind.kind == "ModelRunner":
        repository = spec["modelRepository"]
        if "configMap" in repository:
            name = repository["configMap"]["name"]
            files = config_map("spec.modelRepository.configMap", name)
            for key, content in files.items():
                if not appfolder.inside(key.replace("__", "/")):
                    raise InputError(
                        f"{where}: spec.modelRepository.configMap: key {key!r} leaves the "
                        "model repository"
                    )
                try:
                    content.decode()
                except UnicodeDecodeError:
                    raise InputError(
                        f"{where}: spec.modelRepository.configMap: {key} is binary: put "
                        "binary models on a volume (pvc with --volume)"
                    ) from None
            return Resource(body, doc.origin, files)
        return Resource(body, doc.origin, {}, volume("spec.modelRepository", repository))
    return Resource(body, doc.origin, {}, volume("spec.source", spec["source"]))
