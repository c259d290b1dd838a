"""The aiohttp application: read-only file access to one dataset directory.

Two middlewares run before any handler: the first refuses every method but GET and HEAD, so
no route can ever write; the second checks the caller's token against the manifest. Paths
from clients are never trusted: ``..`` and absolute paths are refused before touching the
file system, and every path is resolved (following symlinks) and must land inside the root.
Refusals of paths are 404, never 403, so nobody can probe what exists outside the dataset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import stat
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractAccessLogger, AbstractStreamWriter
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest

from bioengine_operator.dataserver import tokens
from bioengine_operator.dataserver.manifest import DatasetFile, DatasetManifest

log = logging.getLogger(__name__)

ROOT = web.AppKey("root", Path)
MANIFEST = web.AppKey("manifest", DatasetManifest)
SIGNING_KEY = web.AppKey("signing_key", bytes)
FILE_ENTRIES = web.AppKey("file_entries", dict[str, DatasetFile])
# Set on each request that presented a valid token, for the access log. (RequestKey is new in
# aiohttp 3.14; plain string keys warn there.)
USER = web.RequestKey("user", str)

_READ_METHODS = frozenset({hdrs.METH_GET, hdrs.METH_HEAD})
_UNAUTHENTICATED_PATHS = frozenset({"/healthz"})


def build_app(root: Path, manifest: DatasetManifest, signing_key: bytes) -> web.Application:
    """The server for the dataset under ``root``, readable by the users ``manifest`` allows."""
    if not signing_key:
        raise ValueError("the signing key must not be empty")
    resolved = root.resolve(strict=True)
    if not resolved.is_dir():
        raise ValueError(f"dataset root {root} is not a directory")
    app = web.Application(middlewares=[_read_only, _authenticate])
    app[ROOT] = resolved
    app[MANIFEST] = manifest
    app[SIGNING_KEY] = signing_key
    app[FILE_ENTRIES] = _index_entries(manifest)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/manifest", _manifest)
    app.router.add_get("/files", _list_files)
    app.router.add_get("/files/", _list_files)
    app.router.add_get("/files/{path:.+}", _get_file)
    return app


class AccessLogger(AbstractAccessLogger):
    """One line per request with method, path, status and user.

    aiohttp's default access log prints the request line with its query string, which can
    carry ``?token=``; this one never logs the query or any header.
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
    """A FileResponse that always sends the named file's own bytes.

    aiohttp swaps in a sibling ``<name>.gz`` or ``<name>.br`` when the client accepts that
    encoding. In a dataset those are separate files, and byte ranges must address the named
    file, so the Accept-Encoding header is hidden from it.
    """

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        headers = request.headers.copy()
        headers.popall(hdrs.ACCEPT_ENCODING, None)
        return await super().prepare(request.clone(headers=headers))


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
    if request.path not in _UNAUTHENTICATED_PATHS:
        _authorize(request)
    return await handler(request)


def _authorize(request: web.Request) -> None:
    manifest = request.app[MANIFEST]
    token = _token_of(request)
    if token is None:
        if manifest.allows(None):
            return
        raise _error(
            web.HTTPUnauthorized,
            "a token is required: send 'Authorization: Bearer <token>' or '?token=<token>'",
            headers={hdrs.WWW_AUTHENTICATE: "Bearer"},
        )
    try:
        claims = tokens.verify(request.app[SIGNING_KEY], token, dataset=manifest.id)
    except tokens.TokenError as exc:
        raise _error(
            web.HTTPUnauthorized,
            str(exc),
            headers={hdrs.WWW_AUTHENTICATE: 'Bearer error="invalid_token"'},
        ) from None
    # Recorded before the check below, so the access log shows who was refused.
    request[USER] = claims.user
    if not manifest.allows(claims.user):
        log.info("refused user=%s path=%s", claims.user, request.path)
        raise _error(
            web.HTTPForbidden,
            f"user {claims.user!r} is not authorized to read dataset {manifest.id!r}",
        )


def _token_of(request: web.Request) -> str | None:
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is None:
        return request.query.get("token") or None
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise _error(
            web.HTTPUnauthorized,
            "the Authorization header must be 'Bearer <token>'",
            headers={hdrs.WWW_AUTHENTICATE: "Bearer"},
        )
    return credentials.strip()


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


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
    entries = await asyncio.to_thread(
        _list_directory, root, directory, relative, request.app[FILE_ENTRIES]
    )
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


def _error(exception: type[web.HTTPException], message: str, **kwargs: Any) -> web.HTTPException:
    """An HTTP error whose body is ``{"error": message}``, so clients can parse every failure."""
    return exception(text=json.dumps({"error": message}), content_type="application/json", **kwargs)
