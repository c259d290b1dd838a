"""The aiohttp application: read-only file access to one dataset directory.

Two middlewares run before any handler: the first refuses every method but GET and HEAD, so
no route can ever write; the second checks the caller's token against the manifest. The
server holds only the token public key (or none: then it accepts no token and serves only a
dataset open to everyone), so it can check tokens but never mint one. Paths
from clients are never trusted: ``..`` and absolute paths are refused before touching the
file system, and every path is resolved (following symlinks) and must land inside the root.
Refusals of paths are 404, never 403, so nobody can probe what exists outside the dataset.

``/healthz`` and ``/metrics`` need no token, for the kubelet and Prometheus: the metrics are
counts by method, status and refusal reason, never users or paths.
"""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from pathlib import Path
from typing import Any, Literal

import prometheus_client
from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger, AbstractStreamWriter
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest
from prometheus_client import exposition

from bioengine_operator.dataserver import tokens
from bioengine_operator.dataserver.manifest import DatasetFile, DatasetManifest

log = logging.getLogger(__name__)

ROOT = web.AppKey("root", Path)
MANIFEST = web.AppKey("manifest", DatasetManifest)
# The manifest's id, which tokens must name.
DATASET_ID = web.AppKey("dataset_id", str)
# None when no key is configured: the server then accepts no token at all.
TOKEN_KEY: web.AppKey[tokens.PublicKey | None] = web.AppKey("token_key")
FILE_ENTRIES = web.AppKey("file_entries", dict[str, DatasetFile])
# Set on each request that presented a valid token, for the access log. (RequestKey is new in
# aiohttp 3.14; plain string keys warn there.)
USER = web.RequestKey("user", str)

_READ_METHODS = frozenset({hdrs.METH_GET, hdrs.METH_HEAD})
# For probes and scrapers: no token needed, and not counted as requests (scrapes would swamp
# the traffic they measure).
_INFRASTRUCTURE_PATHS = frozenset({"/healthz", "/metrics"})

# Module-level, so they are registered once per process however many apps it builds.
REQUESTS = prometheus_client.Counter(
    "bioengine_dataserver_requests_total",
    "HTTP requests answered, refused ones included, by method and status code.",
    ["method", "status"],
)
RESPONSE_BYTES = prometheus_client.Counter(
    "bioengine_dataserver_response_bytes_total",
    "File body bytes sent by downloads; a Range request counts only its range.",
)
DENIALS = prometheus_client.Counter(
    "bioengine_dataserver_denials_total",
    "Requests refused access: no_token (none sent, none allowed), invalid_token (or a "
    "malformed Authorization header, or any token on a server without a key), forbidden "
    "(a valid token for a user the manifest does not list).",
    ["reason"],
)
_Denial = Literal["no_token", "invalid_token", "forbidden"]


def build_app(
    root: Path, manifest: DatasetManifest, public_key: tokens.PublicKey | None
) -> web.Application:
    """The server for the dataset under ``root``, readable by the users ``manifest`` allows.

    Tokens are checked against ``public_key``; without one, no token is accepted.
    """
    if not manifest.id:
        raise ValueError("the manifest needs an id: tokens name the dataset by it")
    resolved = root.resolve(strict=True)
    if not resolved.is_dir():
        raise ValueError(f"dataset root {root} is not a directory")
    if public_key is None and not manifest.allows(None):
        log.warning(
            "no token public key configured: dataset %r is not open to everyone ('*'), "
            "so nobody can read it",
            manifest.id,
        )
    app = web.Application(middlewares=[_read_only, _authenticate])
    app[ROOT] = resolved
    app[MANIFEST] = manifest
    app[DATASET_ID] = manifest.id
    app[TOKEN_KEY] = public_key
    app[FILE_ENTRIES] = _index_entries(manifest)
    app.on_response_prepare.append(_count_request)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/manifest", _manifest)
    app.router.add_get("/files", _list_files)
    app.router.add_get("/files/", _list_files)
    app.router.add_get("/files/{path:.+}", _get_file)
    return app


class AccessLogger(AbstractAccessLogger):
    """One line per request with method, path, status, user and duration.

    aiohttp's default access log prints the request line with its query string, which can
    carry ``?token=``; this one never logs the query or any header. The fields are also passed
    as ``extra=``, so :mod:`bioengine_operator.logs`'s JSON lines carry them as keys.
    """

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        user = request.get(USER)
        self.logger.info(
            "%s %s %d user=%s %.1fms",
            request.method,
            request.path,
            response.status,
            user or "-",
            time * 1000,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "user": user,
                "duration_ms": round(time * 1000, 3),
            },
        )


class _ExactFileResponse(web.FileResponse):
    """A FileResponse that always sends the named file's own bytes, and counts them.

    aiohttp swaps in a sibling ``<name>.gz`` or ``<name>.br`` when the client accepts that
    encoding. In a dataset those are separate files, and byte ranges must address the named
    file, so the Accept-Encoding header is hidden from it.
    """

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        headers = request.headers.copy()
        headers.popall(hdrs.ACCEPT_ENCODING, None)
        writer = await super().prepare(request.clone(headers=headers))
        # The body has been sent in full once prepare returns (a dropped connection raises,
        # and is not counted). Only 200 and 206 to a GET have a body; content_length is then
        # what was sent: the whole file, or the range.
        if request.method == hdrs.METH_GET and self.status in (200, 206):
            RESPONSE_BYTES.inc(self.content_length or 0)
        return writer


@web.middleware
async def _read_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method not in _READ_METHODS:
        raise _error(
            web.HTTPMethodNotAllowed,
            f"{request.method} is not allowed: this server is read-only",
            method=request.method,
            allowed_methods=sorted(_READ_METHODS),
        )
    return await handler(request)


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in _INFRASTRUCTURE_PATHS:
        _authorize(request)
    return await handler(request)


def _authorize(request: web.Request) -> None:
    manifest = request.app[MANIFEST]
    token = _token_of(request)
    if token is None:
        if manifest.allows(None):
            return
        raise _denied(
            "no_token",
            web.HTTPUnauthorized,
            "a token is required: send 'Authorization: Bearer <token>' or '?token=<token>'",
            headers={hdrs.WWW_AUTHENTICATE: "Bearer"},
        )
    dataset = request.app[DATASET_ID]
    claims = _verify(request.app[TOKEN_KEY], token, dataset)
    # Recorded before the check below, so the access log shows who was refused.
    request[USER] = claims.user
    if not manifest.allows(claims.user):
        log.info("refused user=%s path=%s", claims.user, request.path)
        raise _denied(
            "forbidden",
            web.HTTPForbidden,
            f"user {claims.user!r} is not authorized to read dataset {dataset!r}",
        )


def _verify(public_key: tokens.PublicKey | None, token: str, dataset: str) -> tokens.Claims:
    """The token's claims, or the 401 to answer with."""
    if public_key is None:
        message = "this server has no token key configured, so it accepts no token"
    else:
        try:
            return tokens.verify(public_key, token, dataset=dataset)
        except tokens.TokenError as exc:
            message = str(exc)
    raise _denied(
        "invalid_token",
        web.HTTPUnauthorized,
        message,
        headers={hdrs.WWW_AUTHENTICATE: 'Bearer error="invalid_token"'},
    )


def _token_of(request: web.Request) -> str | None:
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None:
        return request.query.get("token") or None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise _denied(
            "invalid_token",
            web.HTTPUnauthorized,
            "the Authorization header must be 'Bearer <token>'",
            headers={hdrs.WWW_AUTHENTICATE: "Bearer"},
        )
    return credentials.strip()


async def _count_request(request: web.Request, response: web.StreamResponse) -> None:
    """Count every answered request, refusals and errors included, by its final status.

    A response-prepare signal rather than a middleware: a file response settles its status
    (200, 206, 304 or 416) only while it is prepared, after the middlewares have returned.
    """
    if request.path not in _INFRASTRUCTURE_PATHS:
        REQUESTS.labels(method=request.method, status=str(response.status)).inc()


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _metrics(request: web.Request) -> web.Response:
    # The format the scraper asks for (Prometheus text or OpenMetrics), as the client's own
    # exporter chooses it.
    encode, content_type = exposition.choose_encoder(request.headers.get(hdrs.ACCEPT, ""))
    return web.Response(
        body=encode(prometheus_client.REGISTRY), headers={hdrs.CONTENT_TYPE: content_type}
    )


async def _manifest(request: web.Request) -> web.Response:
    return web.json_response(request.app[MANIFEST].model_dump(mode="json", by_alias=True))


async def _list_files(request: web.Request) -> web.Response:
    root = request.app[ROOT]
    located = await asyncio.to_thread(_locate, root, request.query.get("path", ""))
    if located is None:
        raise _error(web.HTTPNotFound, "no such directory")
    relative, directory = located
    if not directory.is_dir():
        raise _error(web.HTTPBadRequest, "not a directory: download it from /files/<path> instead")
    described = request.app[FILE_ENTRIES]
    if request.query.get("recursive", "false").lower() in ("true", "1"):
        entries = await asyncio.to_thread(_list_tree, root, directory, relative, described)
    else:
        entries = await asyncio.to_thread(_list_directory, root, directory, relative, described)
    return web.json_response({"path": relative, "entries": entries})


async def _get_file(request: web.Request) -> web.StreamResponse:
    located = await asyncio.to_thread(_locate, request.app[ROOT], request.match_info["path"])
    # Directories are listed through /files?path=; sockets and devices are never served.
    if located is None or not located[1].is_file():
        raise _error(web.HTTPNotFound, "no such file")
    return _ExactFileResponse(located[1])


def _locate(root: Path, raw: str) -> tuple[str, Path] | None:
    """The normalized relative path and the real path that a client's path names.

    None when the path is refused or does not exist: callers answer both with 404.
    """
    parts = _relative_parts(raw)
    if parts is None:
        return None
    resolved = _resolve_inside(root, root.joinpath(*parts))
    return None if resolved is None else ("/".join(parts), resolved)


def _relative_parts(raw: str) -> tuple[str, ...] | None:
    """The segments of a client-supplied path, or None if it may not be served at all.

    ``..`` is refused outright instead of resolved: no request may name anything by climbing,
    whatever the directory layout. Symlinks are checked later, by :func:`_resolve_inside`.
    """
    # A NUL byte would make the os calls raise ValueError rather than OSError.
    if raw.startswith("/") or "\x00" in raw:
        return None
    parts = tuple(part for part in raw.split("/") if part not in ("", "."))
    return None if ".." in parts else parts


def _resolve_inside(root: Path, path: Path) -> Path | None:
    """The real path of ``path`` if it exists and lies inside ``root`` (already resolved)."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop (RuntimeError before 3.13)
        return None
    return resolved if resolved.is_relative_to(root) else None


def _list_directory(
    root: Path, directory: Path, relative: str, described: dict[str, DatasetFile]
) -> list[dict[str, Any]]:
    entries = []
    for child in sorted(directory.iterdir(), key=lambda child: child.name):
        path = f"{relative}/{child.name}" if relative else child.name
        entry = _describe(root, child, path, described.get(path))
        if entry is not None:
            entries.append(entry)
    return entries


def _list_tree(
    root: Path, directory: Path, relative: str, described: dict[str, DatasetFile]
) -> list[dict[str, Any]]:
    """Every file below ``directory``, depth first, as :func:`_list_directory` lists one
    folder (a folder reached twice through symlinks is listed once)."""
    found: list[dict[str, Any]] = []
    seen: set[Path] = set()
    pending = [(directory, relative)]
    while pending:
        folder, prefix = pending.pop()
        real = folder.resolve()
        if real in seen:
            continue
        seen.add(real)
        for entry in _list_directory(root, folder, prefix, described):
            if entry["type"] == "directory":
                pending.append((folder / entry["name"], entry["path"]))
            else:
                found.append(entry)
    return sorted(found, key=lambda entry: str(entry["path"]))


def _describe(
    root: Path, child: Path, path: str, described: DatasetFile | None
) -> dict[str, Any] | None:
    """A listing entry, or None for what the server would refuse to serve.

    Symlinks leaving the dataset, dangling symlinks and special files are left out, so the
    listing never hints at anything outside the root.
    """
    target = _resolve_inside(root, child)
    if target is None:
        return None
    try:
        info = target.stat()
    except OSError:  # removed since it was resolved
        return None
    if stat.S_ISDIR(info.st_mode):
        entry: dict[str, Any] = {"name": child.name, "path": path, "type": "directory"}
    elif stat.S_ISREG(info.st_mode):
        entry = {"name": child.name, "path": path, "type": "file", "size": info.st_size}
    else:
        return None
    entry["description"] = described.description if described else ""
    entry["version"] = described.version if described else None
    return entry


def _index_entries(manifest: DatasetManifest) -> dict[str, DatasetFile]:
    """The manifest's file entries keyed by their normalized path, as listings spell it."""
    index = {}
    for entry in manifest.files:
        parts = _relative_parts(entry.path.removeprefix("/"))
        if parts:
            index["/".join(parts)] = entry
    return index


def _denied(
    reason: _Denial, exception: type[web.HTTPException], message: str, **kwargs: Any
) -> web.HTTPException:
    """An access refusal, counted by ``reason``; otherwise like :func:`_error`."""
    DENIALS.labels(reason=reason).inc()
    return _error(exception, message, **kwargs)


def _error(exception: type[web.HTTPException], message: str, **kwargs: Any) -> web.HTTPException:
    """An HTTP error whose body is ``{"error": message}``, so clients can parse every failure."""
    return exception(text=json.dumps({"error": message}), content_type="application/json", **kwargs)
