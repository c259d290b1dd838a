"""Hypha service definitions for each kind: what a client sees after ``get_service``.

* app: one function per ``@bioengine.method`` of the entry class, with the JSON schema the
  app's runtime built from its signature and ``Field`` descriptions (what ``schema_function``
  clients and MCP read), each guarded by its authorized users (``spec.methods``, else the
  app's), plus ``get_status()``; and, when the manifest has a ``frontend_entry``, an HTTP
  service ``<id>-ui`` serving that page;
* model runner: ``infer(model, inputs, outputs=None, version=None)``, ``list_models()``,
  ``get_model_config(model)``, ``get_status()``;
* dataset: ``list_files(path="")``, ``read_file(path, offset=0, length=None)`` (at most
  ``max_read_bytes``), ``stream_file(path, offset=0, length=None)`` (an async generator of
  chunks, for files of any size), ``get_manifest()``, ``get_status()``; and a second, HTTP
  service ``<id>-files`` (Hypha type ``asgi``) at
  ``<hypha>/<workspace>/apps/<id>-files/files/<path>`` with Range requests, which zarr and
  fsspec open directly with the caller's Hypha token.

Every function asks Hypha for the request context and checks the caller first. File bodies
pass through the bridge in chunks: memory stays bounded whatever the file size. The HTTP
services answer CORS preflights and send CORS headers, so web pages on other origins can
read them (a ranged, authorized zarr read from a notebook's or a viewer's page).
"""

from __future__ import annotations

import functools
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import prometheus_client

from bioengine_operator import metrics
from bioengine_operator.bridge import access
from bioengine_operator.bridge.backends import AppClient, DatasetClient, TritonPair
from bioengine_operator.bridge.desired import Desired

CHUNK = 2**20
CALLS = prometheus_client.Counter(
    "bioengine_bridge_calls",
    "Calls to registered services, by kind, function and result (ok, denied, error).",
    ["kind", "function", "result"],
)
LATENCY = prometheus_client.Histogram(
    "bioengine_bridge_call_duration_seconds",
    "Time from a call reaching the bridge to its answer, by kind and function.",
    ["kind", "function"],
    buckets=metrics.LATENCY_BUCKETS,
)

Status = Callable[[], dict[str, Any]]
# The caller's (its request context's) tokens for an app's datasets, by dataset name.
DatasetTokens = Callable[[dict[str, Any] | None], dict[str, str]]
# Headers a dataset server answer keeps on its way back through Hypha.
PASSED_HEADERS = (
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
)


def instrumented(kind: str, name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    """``fn`` counted and timed in the bridge's metrics, keeping its name and docstring."""

    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        result = "error"
        try:
            answer = await fn(*args, **kwargs)
            result = "ok"
            return answer
        except PermissionError:
            result = "denied"
            raise
        finally:
            CALLS.labels(kind, name, result).inc()
            LATENCY.labels(kind, name).observe(time.monotonic() - started)

    return call


def with_load(service: dict[str, Any]) -> dict[str, Any]:
    """``service`` with every function counted while it runs, and ``get_load()``: how many
    calls this instance serves now. When several clusters' bridges register the same
    service id, a client picks the least busy with ``{"mode": "select:min:get_load"}``."""
    running = 0

    def counted(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(fn)
        async def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal running
            running += 1
            try:
                return await fn(*args, **kwargs)
            finally:
                running -= 1

        return call

    async def get_load(context: dict[str, Any] | None = None) -> float:
        """Calls this instance of the service is serving now (lower is less busy)."""
        return float(running)

    counted_service = {k: counted(v) if callable(v) else v for k, v in service.items()}
    return {**counted_service, "get_load": get_load}


def _base(want: Desired, get_status: Status) -> dict[str, Any]:
    async def status(context: dict[str, Any] | None = None) -> dict[str, Any]:
        """Phase, conditions and readiness of the resource behind this service."""
        access.authorize(want.authorized_users, context, want.service_id)
        return get_status()

    config: dict[str, Any] = {"visibility": want.visibility, "require_context": True}
    # Everyone some function lets in must reach the service first (per-method users too).
    listed = [*want.authorized_users, *(u for _, users in want.method_users for u in users)]
    workspaces = sorted(set(access.user_workspaces(listed)))
    if want.visibility == "protected" and workspaces:
        config["authorized_workspaces"] = workspaces
    return {
        "id": want.service_id,
        "name": f"{want.name} ({want.kind})",
        "description": want.description,
        "config": config,
        "get_status": instrumented(want.kind, "get_status", status),
    }


def _caller(context: dict[str, Any] | None) -> dict[str, Any]:
    """What a ``@bioengine.method(context=True)`` receives: the caller Hypha vouches for."""
    context = context or {}
    user = context.get("user") or {}
    kept = ("id", "email", "roles", "is_anonymous", "scope")
    return {
        "user": {k: user[k] for k in kept if k in user},
        "ws": context.get("ws"),
        "from": context.get("from"),
    }


def _app_method(
    want: Desired, client: AppClient, name: str, info: dict[str, Any], tokens: DatasetTokens
) -> Any:
    users = want.users_of(name)
    wants_context = bool(info.get("context"))

    async def method(*args: Any, context: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        access.authorize(users, context, f"{want.service_id}.{name}")
        if wants_context:
            kwargs["context"] = _caller(context)
        return await client.call(name, list(args), kwargs, tokens(context))

    schema = dict(info.get("schema") or {"name": name, "parameters": {"type": "object"}})
    method.__name__ = name
    method.__doc__ = schema.get("description") or name
    method.__schema__ = schema  # type: ignore[attr-defined]  # what Hypha publishes
    return instrumented(want.kind, name, method)


def app_service(
    want: Desired,
    client: AppClient,
    description: dict[str, Any],
    get_status: Status,
    tokens: DatasetTokens,
) -> dict[str, Any]:
    """One function per ``@bioengine.method`` of the entry class, each with its schema;
    each call carries ``tokens(context)``, the caller's tokens for the app's datasets."""
    service = _base(want, get_status)
    for name, info in description.get("methods", {}).items():
        if name in service:
            continue  # a method called get_status, id, ... cannot shadow the service's own
        service[name] = _app_method(want, client, name, info, tokens)
    return service


def app_frontend_service(want: Desired, client: AppClient) -> dict[str, Any]:
    """The app's ``frontend_entry`` page and the files beside it, as a Hypha ASGI service
    (``<hypha>/<workspace>/apps/<id>-ui/``), fetched from the app's Serve ingress."""

    async def app(scope: dict[str, Any], send: Any, user: str) -> None:
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            await _respond(send, 405, {}, b"")
            return
        path = scope.get("path", "/").lstrip("/")
        async with client.frontend(path) as answer:
            kept = {k: v for k, v in answer.headers.items() if k.lower() in PASSED_HEADERS}
            await _stream(send, answer, kept, scope.get("method") == "GET")

    return http_service(want, f"{want.service_id}-ui", want.authorized_users, app)


def runner_service(want: Desired, pair: TritonPair, get_status: Status) -> dict[str, Any]:
    def guarded(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, context: dict[str, Any] | None = None, **kwargs: Any) -> Any:
            access.authorize(want.authorized_users, context, want.service_id)
            return await fn(*args, **kwargs)

        call.__name__, call.__doc__ = fn.__name__, fn.__doc__
        return instrumented(want.kind, fn.__name__, call)

    async def infer(
        model: str,
        inputs: dict[str, Any],
        outputs: list[str] | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Run ``model`` on ``inputs`` (name -> array); returns output name -> array.

        ``outputs`` limits the returned outputs; ``version`` picks a model version."""
        return await pair.infer(model, inputs, outputs, version)

    async def list_models() -> list[dict[str, Any]]:
        """Models in the runner's repository with their state (READY when loaded)."""
        return await pair.list_models()

    async def get_model_config(model: str) -> dict[str, Any]:
        """Triton's configuration of ``model`` (inputs, outputs, backend, batching)."""
        return await pair.get_model_config(model)

    service = _base(want, get_status)
    for fn in (infer, list_models, get_model_config):
        service[fn.__name__] = guarded(fn)
    return service


def dataset_service(
    want: Desired,
    client: DatasetClient,
    manifest: dict[str, Any],
    get_status: Status,
    max_read_bytes: int,
) -> dict[str, Any]:
    async def list_files(path: str = "", context: dict[str, Any] | None = None) -> list[Any]:
        """Files and directories under ``path`` (a zarr store is a directory)."""
        user = access.authorize(want.authorized_users, context, want.service_id)
        status, body = await client.get("/files", user, params={"path": path})
        return list(_json_or_raise(status, body)["entries"])

    async def read_file(
        path: str, offset: int = 0, length: int | None = None, context: dict[str, Any] | None = None
    ) -> bytes:
        """Bytes of ``path`` from ``offset``, ``length`` of them (all when None); larger
        answers than the bridge's limit are refused: use ``stream_file`` for those."""
        user = access.authorize(want.authorized_users, context, want.service_id)
        async with client.open(f"/files/{path}", user, headers=_range(offset, length)) as answer:
            await _raise_for_status(answer)
            size = answer.content_length
            if size is not None and size > max_read_bytes:
                raise ValueError(_too_large(path, size, max_read_bytes))
            data = bytearray()
            async for chunk in answer.content.iter_chunked(CHUNK):
                data += chunk
                if len(data) > max_read_bytes:
                    raise ValueError(_too_large(path, len(data), max_read_bytes))
            return bytes(data)

    async def stream_file(
        path: str, offset: int = 0, length: int | None = None, context: dict[str, Any] | None = None
    ) -> AsyncIterator[bytes]:
        """Bytes of ``path`` from ``offset`` (``length`` of them, or to the end), as chunks of
        up to 1 MiB: ``async for chunk in await ds.stream_file(path)``."""
        user = access.authorize(want.authorized_users, context, want.service_id)

        async def chunks() -> AsyncIterator[bytes]:
            async with client.open(
                f"/files/{path}", user, headers=_range(offset, length)
            ) as answer:
                await _raise_for_status(answer)
                async for chunk in answer.content.iter_chunked(CHUNK):
                    yield chunk

        return chunks()

    async def get_manifest(context: dict[str, Any] | None = None) -> dict[str, Any]:
        """The dataset's manifest: name, description, described files, license, tags."""
        access.authorize(want.authorized_users, context, want.service_id)
        return manifest

    service = _base(want, get_status)
    for fn in (list_files, read_file, stream_file, get_manifest):
        service[fn.__name__] = instrumented(want.kind, fn.__name__, fn)
    return service


def dataset_http_service(want: Desired, client: DatasetClient) -> dict[str, Any]:
    """The dataset's files over HTTP (GET/HEAD with Range) as a Hypha ASGI service; bodies
    are passed on chunk by chunk as they arrive from the dataset server."""

    async def app(scope: dict[str, Any], send: Any, user: str) -> None:
        path = scope.get("path", "/")
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD") or not path.startswith("/files"):
            await _respond(send, 405 if method not in ("GET", "HEAD") else 404, {}, b"")
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        forward = {"Range": headers["range"]} if "range" in headers else {}
        params = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode()))
        params.pop("token", None)  # the bridge mints the dataset token itself
        async with client.open(path, user, headers=forward, params=params) as answer:
            kept = {k: v for k, v in answer.headers.items() if k.lower() in PASSED_HEADERS}
            await _stream(send, answer, kept, method == "GET")

    return http_service(want, f"{want.service_id}-files", want.authorized_users, app)


HttpApp = Callable[[dict[str, Any], Any, str], Awaitable[None]]


def http_service(
    want: Desired, service_id: str, users: tuple[str, ...], app: HttpApp
) -> dict[str, Any]:
    """A Hypha ASGI service that pages on any origin can use: a CORS preflight is answered
    before any authorization (browsers send it without credentials), every answer carries
    the CORS headers, and the caller is authorized before ``app`` runs."""

    async def serve(args: dict[str, Any], context: dict[str, Any] | None = None) -> None:
        scope, send = args["scope"], args["send"]
        request = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        cors = cors_headers(request)
        if scope.get("method") == "OPTIONS":
            await _respond(send, 204, {**cors, **preflight_headers(request)}, b"")
            return

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.lower().encode(), v.encode()) for k, v in cors.items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            user = access.authorize(users, context, service_id)
        except PermissionError as err:
            await _respond(send_with_cors, 403, {"content-type": "text/plain"}, str(err).encode())
            return
        await app(scope, send_with_cors, user)

    return {
        "id": service_id,
        "type": "asgi",
        "config": _base(want, dict)["config"],
        "serve": instrumented(want.kind, "http", serve),
    }


# What a browser script may read of an answer: sizes and ranges, for zarr and fsspec.
EXPOSED_HEADERS = "Content-Range, Content-Length, Accept-Ranges, ETag, Last-Modified"


def cors_headers(request: dict[str, str]) -> dict[str, str]:
    """Any origin may read, but without credentials: a page sends the user's Hypha token as
    ``Authorization`` itself, and a cookie the browser would add on its own never counts
    (otherwise any site could read what the logged-in user may)."""
    if not request.get("origin"):
        return {}
    return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": EXPOSED_HEADERS}


def preflight_headers(request: dict[str, str]) -> dict[str, str]:
    return {
        "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
        "Access-Control-Allow-Headers": request.get(
            "access-control-request-headers", "Authorization, Range"
        ),
        "Access-Control-Max-Age": "600",
    }


async def _stream(
    send: Any, answer: aiohttp.ClientResponse, headers: dict[str, str], body: bool
) -> None:
    raw = [(k.lower().encode(), str(v).encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": answer.status, "headers": raw})
    if body:
        async for chunk in answer.content.iter_chunked(CHUNK):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def _range(offset: int, length: int | None) -> dict[str, str]:
    if not offset and length is None:
        return {}
    end = "" if length is None else str(offset + length - 1)
    return {"Range": f"bytes={offset}-{end}"}


def _too_large(path: str, size: int, limit: int) -> str:
    return (
        f"{path}: {size} bytes is more than read_file returns ({limit}); read it in ranges "
        "(offset, length) or with stream_file"
    )


async def _raise_for_status(answer: aiohttp.ClientResponse) -> None:
    if answer.status not in (200, 206):
        _json_or_raise(answer.status, await answer.read())


async def _respond(send: Any, status: int, headers: dict[str, str], body: bytes) -> None:
    raw = [(k.lower().encode(), str(v).encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _json_or_raise(status: int, body: bytes) -> dict[str, Any]:
    if status == 200:
        return dict(json.loads(body))
    try:
        message = json.loads(body).get("error", "")
    except ValueError:
        message = body[:200].decode(errors="replace")
    if status in (401, 403):
        raise PermissionError(message)
    if status == 404:
        raise FileNotFoundError(message)
    raise RuntimeError(f"dataset server answered {status}: {message}")
