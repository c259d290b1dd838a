"""Apps uploaded through the worker service, and the BioEngineApps deployed from them (no I/O).

An upload is kept in the cluster as ``bioengine render``'s code ConfigMap, named after the
app and a hash of its version (a large app: the parts of its zip, ``<name>-0``, ``-1``, ...),
so it survives bridge restarts, is visible to ``kubectl``, and a deploy only points a
BioEngineApp at it. Every ConfigMap of an upload carries its app's labels, by which deleting
the app finds them all. The app is checked as format 0.6.0 when it is uploaded, by the same code
as ``bioengine render``; the spec rendered from it rides along in an annotation of the first
ConfigMap (the one a listing reads), so a deploy need not parse again.
Artifact ids are ``<workspace>/<manifest id>``, as the artifact manager names them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import re
import secrets
from typing import Any

from pydantic import ValidationError

from bioengine_operator import appfolder
from bioengine_operator.api.app import APP_NAME_MAX, BioEngineAppSpec
from bioengine_operator.api.base import API_VERSION

GROUP = "bioengine.bioimage.io"
MANAGED_BY = "app.kubernetes.io/managed-by"
WORKER = "bioengine-worker"
ARTIFACT = f"{GROUP}/artifact"  # label: the manifest id of the app
VERSION = f"{GROUP}/artifact-version"
SPEC = f"{GROUP}/app-spec"  # the spec rendered at upload (manifest fields and source)
FILES = f"{GROUP}/files"  # the paths in a zip source (its parts are not readable one by one)
UPLOADED_AT, UPLOADED_BY = f"{GROUP}/uploaded-at", f"{GROUP}/uploaded-by"
DEPLOYED_BY = f"{GROUP}/deployed-by"
APPLICATION_ID = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# What a deploy may set beyond the manifest; everything else is refused by name.
DEPLOY_ARGS = ("application_kwargs", "application_env_vars", "disable_gpu", "authorized_users")


class WorkerError(ValueError):
    """A refused request; the message says why, and is what the caller sees."""


@dataclasses.dataclass(frozen=True)
class Stored:
    """One uploaded version of an app, read back from its ConfigMap."""

    app_id: str
    version: str
    uploaded_at: str
    uploaded_by: str
    spec: dict[str, Any]
    files: list[str]

    def artifact_id(self, workspace: str) -> str:
        return f"{workspace}/{self.app_id}"


def _file_bytes(entry: Any, index: int) -> tuple[str, bytes]:
    where = f"files[{index}]"
    if not isinstance(entry, dict):
        raise WorkerError(f"{where}: must be {{name, content, type}}")
    name, content, kind = entry.get("name"), entry.get("content"), entry.get("type", "text")
    if not isinstance(name, str) or not name or name.startswith("/"):
        raise WorkerError(f"{where}.name: must be a path inside the app folder")
    if ".." in name.split("/") or "\\" in name:
        raise WorkerError(f"{where}.name: {name!r} must not leave the app folder")
    if not isinstance(content, str):
        raise WorkerError(f"{where}.content: must be a string ({name})")
    if kind == "text":
        return name, content.encode("utf-8")
    if kind == "base64":
        try:
            return name, base64.b64decode(content, validate=True)
        except binascii.Error:
            raise WorkerError(f"{where}.content: {name} is not valid base64") from None
    raise WorkerError(f"{where}.type: {kind!r} must be text or base64 ({name})")


def decode_files(files: Any) -> dict[str, bytes]:
    """The upload's files by path, without what an app folder leaves out (caches, tests)."""
    if not isinstance(files, list) or not files:
        raise WorkerError("files: must be a non-empty list of {name, content, type}")
    found: dict[str, bytes] = {}
    for index, entry in enumerate(files):
        name, content = _file_bytes(entry, index)
        if not appfolder.skipped(tuple(name.split("/"))):
            found[name] = content
    return found


def code_name(app_id: str, version: str) -> str:
    digest = hashlib.sha256(version.encode()).hexdigest()[:10]
    return f"bioengine-app-{app_id}-{digest}"


def upload(files: Any, namespace: str, user: str, now: str) -> list[dict[str, Any]]:
    """The ConfigMaps that store an upload (one, or a large app's zip parts; the first is
    annotated), after checking it as ``bioengine render`` does."""
    decoded = decode_files(files)
    where = appfolder.MANIFEST
    try:
        if appfolder.MANIFEST not in decoded:
            raise appfolder.AppFolderError(f"{where}: not in the upload (an app holds one)")
        manifest, _ = appfolder.parse_manifest(decoded[appfolder.MANIFEST], where)
        version = (
            manifest.version
            or hashlib.sha256(
                json.dumps(sorted((k, v.hex()) for k, v in decoded.items())).encode()
            ).hexdigest()[:12]
        )
        objects = appfolder.render_files(
            decoded,
            where,
            # Checked here for the manifest id; each deploy names its own application.
            name=manifest.id[:APP_NAME_MAX],
            namespace=namespace,
            code_name=code_name(manifest.id, version),
        ).objects
    except appfolder.AppFolderError as err:
        raise WorkerError(str(err)) from None
    *codes, app = objects
    for code in codes:
        code["metadata"]["labels"] |= {MANAGED_BY: WORKER, ARTIFACT: manifest.id}
    codes[0]["metadata"]["annotations"] = {
        VERSION: version,
        SPEC: json.dumps(app["spec"], sort_keys=True),
        UPLOADED_AT: now,
        UPLOADED_BY: user,
    }
    if "zip" in app["spec"]["source"]:
        codes[0]["metadata"]["annotations"][FILES] = json.dumps(sorted(decoded))
    return codes


def stored(config_map: dict[str, Any]) -> Stored:
    """The upload whose (first) ConfigMap is ``config_map``."""
    meta = config_map["metadata"]
    notes = meta.get("annotations") or {}
    spec = json.loads(notes[SPEC])
    source = spec.get("source") or {}
    items = (source.get("configMap") or {}).get("items") or []
    if FILES in notes:
        files = json.loads(notes[FILES])
    else:
        files = sorted({i["path"] for i in items} if items else _keys(config_map))
    return Stored(
        app_id=meta["labels"][ARTIFACT],
        version=notes[VERSION],
        uploaded_at=notes.get(UPLOADED_AT, ""),
        uploaded_by=notes.get(UPLOADED_BY, ""),
        spec=spec,
        files=files,
    )


def versions(config_maps: list[dict[str, Any]]) -> list[Stored]:
    """The uploads among ``config_maps`` (the worker's, found by label): only an upload's
    first ConfigMap is annotated, the others hold parts of its zip; one labelled but not as
    an upload (edited by hand) is skipped too."""
    return [stored(c) for c in config_maps if SPEC in (c["metadata"].get("annotations") or {})]


def _keys(config_map: dict[str, Any]) -> set[str]:
    return {*(config_map.get("data") or {}), *(config_map.get("binaryData") or {})}


def app_id_of(artifact_id: Any, workspace: str) -> str:
    """The manifest id in ``artifact_id`` (``<workspace>/<id>``, or the bare id)."""
    if not isinstance(artifact_id, str) or not artifact_id:
        raise WorkerError("artifact_id: must be '<workspace>/<app id>'")
    owner, _, app_id = artifact_id.rpartition("/")
    if owner and owner != workspace:
        raise WorkerError(
            f"artifact {artifact_id} is not stored on this cluster (its apps are "
            f"{workspace}/<id>): upload it to this worker with upload_app"
        )
    return app_id


def pick(versions: list[Stored], artifact_id: str, version: str | None) -> Stored:
    """The requested version, or the latest upload."""
    if not versions:
        raise WorkerError(f"artifact {artifact_id} not found: upload it with upload_app")
    if version is None:
        return max(versions, key=lambda s: s.uploaded_at)
    for candidate in versions:
        if candidate.version == str(version):
            return candidate
    known = ", ".join(sorted(s.version for s in versions))
    raise WorkerError(f"artifact {artifact_id} has no version {version!r} (uploaded: {known})")


def new_application_id(app_id: str) -> str:
    suffix = secrets.token_hex(3)
    return f"{app_id[: APP_NAME_MAX - len(suffix) - 1].rstrip('-')}-{suffix}"


def check_application_id(application_id: Any) -> str:
    if (
        not isinstance(application_id, str)
        or len(application_id) > APP_NAME_MAX
        or not APPLICATION_ID.match(application_id)
    ):
        raise WorkerError(
            f"application_id: {application_id!r} must be lowercase letters, digits and '-', "
            f"start with a letter and be at most {APP_NAME_MAX} characters (it names the "
            "BioEngineApp and its Hypha service)"
        )
    return application_id


def _string_map(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise WorkerError(f"{where}: must map names to values")
    return {k: str(v) for k, v in value.items()}


def overrides(args: dict[str, Any]) -> dict[str, Any]:
    """The deploy arguments as BioEngineApp spec fields.

    ``application_kwargs``: ``{Class: {kwarg: value}}`` → ``classes.<Class>.initKwargs``;
    ``application_env_vars``: ``{"*": {...}}`` → ``envVars``, ``{Class: {...}}`` →
    ``classes.<Class>.envVars``; ``authorized_users``: a list, or ``{"*": [...], method:
    [...]}`` → ``authorizedUsers`` and ``methods``."""
    spec: dict[str, Any] = {}
    classes: dict[str, dict[str, Any]] = {}
    for name, kwargs in (args.get("application_kwargs") or {}).items():
        if not isinstance(kwargs, dict):
            raise WorkerError(f"application_kwargs.{name}: must map argument names to values")
        classes.setdefault(name, {})["initKwargs"] = kwargs
    for name, env in (args.get("application_env_vars") or {}).items():
        values = _string_map(env, f"application_env_vars.{name}")
        if name == "*":
            spec["envVars"] = values
        else:
            classes.setdefault(name, {})["envVars"] = values
    if classes:
        spec["classes"] = classes
    if args.get("disable_gpu"):
        spec["disableGpu"] = True
    users = args.get("authorized_users")
    if isinstance(users, list):
        spec["authorizedUsers"] = [str(u) for u in users]
    elif isinstance(users, dict):
        if "*" in users:
            spec["authorizedUsers"] = [str(u) for u in users["*"]]
        methods = {m: {"authorizedUsers": [str(u) for u in v]} for m, v in users.items()}
        methods.pop("*", None)
        if methods:
            spec["methods"] = methods
    elif users is not None:
        raise WorkerError("authorized_users: must be a list of users or {method: [users]}")
    return spec


def application(
    source: Stored,
    application_id: str,
    namespace: str,
    args: dict[str, Any],
    user: str,
    workspace: str,
) -> dict[str, Any]:
    """The BioEngineApp that runs ``source`` as ``application_id`` (its Hypha service id)."""
    spec = {**source.spec, **overrides(args), "service": {"id": application_id}}
    try:
        BioEngineAppSpec.model_validate(spec)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise WorkerError(f"deploy_app: {where}: {first['msg']}") from None
    return {
        "apiVersion": API_VERSION,
        "kind": "BioEngineApp",
        "metadata": {
            "name": application_id,
            "namespace": namespace,
            "labels": {MANAGED_BY: WORKER, ARTIFACT: source.app_id},
            "annotations": {
                ARTIFACT: source.artifact_id(workspace),
                VERSION: source.version,
                DEPLOYED_BY: user,
            },
        },
        "spec": spec,
    }
