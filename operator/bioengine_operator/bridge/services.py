"""Hypha service definitions for each kind: what a client sees after ``get_service``.

* app: one function per method of the entry class (name, docstring and signature from the
  app itself), plus ``get_status()``;
* model runner: ``infer(model, inputs, outputs=None, version=None)``, ``list_models()``,
  ``get_model_config(model)``, ``get_status()``;
* dataset: ``list_files(path="")``, ``read_file(path, offset=0, length=None)``,
  ``get_manifest()``, ``get_status()``; and a second, HTTP service ``<id>-files`` (Hypha
  type ``asgi``) at ``<hypha>/<workspace>/apps/<id>-files/files/<path>`` with Range
  requests, which zarr and fsspec open directly with the caller's Hypha token.

Every function asks Hypha for the request context and checks the caller first.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from bioengine_operator.bridge import access
from bioengine_operator.bridge.backends import AppClient, DatasetClient, TritonPair
from bioengine_operator.bridge.desired import Desired

Status = Callable[[], dict[str, Any]]
# Headers a dataset server answer keeps on its way back through Hypha.
PASSED_HEADERS = (
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
)


def _base(want: Desired, get_status: Status) -> dict[str, Any]:
    async def status(context: dict[str, Any] | None = None) -> dict[str, Any]:
        """Phase, conditions and readiness of the resource behind this service."""
        access.authorize(want.authorized_users, context, want.service_id)
        return get_status()

    config: dict[str, Any] = {"visibility": want.visibility, "require_context": True}
    if want.visibility == "protected" and access.user_workspaces(want.authorized_users):
        config["authorized_workspaces"] = access.user_workspaces(want.authorized_users)
    return {
        "id": want.service_id,
        "name": f"{want.name} ({want.kind})",
        "description": want.description,
        "config": config,
        "get_status": status,
    }


def _app_method(want: Desired, client: AppClient, name: str, info: dict[str, str]) -> Any:
    async def method(*args: Any, context: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        access.authorize(want.authorized_users, context, want.service_id)
        return await client.call(name, list(args), kwargs)

    method.__name__ = name
    method.__doc__ = f"{info.get('doc') or name}\n\nSignature: {name}{info.get('signature', '')}"
    return method


def app_service(
    want: Desired, client: AppClient, methods: dict[str, dict[str, str]], get_status: Status
) -> dict[str, Any]:
    service = _base(want, get_status)
    for name, info in methods.items():
        if name in service:
            continue  # a method called get_status, id, ... cannot shadow the service's own
        service[name] = _app_method(want, client, name, info)
    return service


def runner_service(want: Desired, pair: TritonPair, get_status: Status) -> dict[str, Any]:
    def guarded(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, context: dict[str, Any] | None = None, **kwargs: Any) -> Any:
            access.authorize(want.authorized_users, context, want.service_id)
            return await fn(*args, **kwargs)

        call.__name__, call.__doc__ = fn.__name__, fn.__doc__
        return call

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
    want: Desired, client: DatasetClient, manifest: dict[str, Any], get_status: Status
) -> dict[str, Any]:
    async def list_files(path: str = "", context: dict[str, Any] | None = None) -> list[Any]:
        """Files and directories under ``path`` (a zarr store is a directory)."""
        user = access.authorize(want.authorized_users, context, want.service_id)
        status, _, body = await client.get("/files", user, params={"path": path})
        return list(_json_or_raise(status, body)["entries"])

    async def read_file(
        path: str, offset: int = 0, length: int | None = None, context: dict[str, Any] | None = None
    ) -> bytes:
        """Bytes of ``path`` from ``offset``, ``length`` of them (all when None)."""
        user = access.authorize(want.authorized_users, context, want.service_id)
        end = "" if length is None else str(offset + length - 1)
        headers = {"Range": f"bytes={offset}-{end}"} if offset or length is not None else {}
        status, _, body = await client.get(f"/files/{path}", user, headers=headers)
        if status not in (200, 206):
            _json_or_raise(status, body)
        return body

    async def get_manifest(context: dict[str, Any] | None = None) -> dict[str, Any]:
        """The dataset's manifest: name, description, described files, license, tags."""
        access.authorize(want.authorized_users, context, want.service_id)
        return manifest

    service = _base(want, get_status)
    service.update(list_files=list_files, read_file=read_file, get_manifest=get_manifest)
    return service


def dataset_http_service(want: Desired, client: DatasetClient) -> dict[str, Any]:
    """The dataset's files over HTTP (GET/HEAD with Range) as a Hypha ASGI service."""

    async def app(scope: dict[str, Any], receive: Any, send: Any, user: str) -> None:
        path = scope.get("path", "/")
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD") or not path.startswith("/files"):
            await _respond(send, 405 if method not in ("GET", "HEAD") else 404, {}, b"")
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        forward = {"Range": headers["range"]} if "range" in headers else {}
        params = dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode()))
        params.pop("token", None)  # the bridge mints the dataset token itself
        status, answer_headers, body = await client.get(path, user, headers=forward, params=params)
        kept = {k: v for k, v in answer_headers.items() if k.lower() in PASSED_HEADERS}
        await _respond(send, status, kept, b"" if method == "HEAD" else body)

    async def serve(args: dict[str, Any], context: dict[str, Any] | None = None) -> None:
        try:
            user = access.authorize(want.authorized_users, context, want.service_id)
        except PermissionError as err:
            await _respond(args["send"], 403, {"content-type": "text/plain"}, str(err).encode())
            return
        await app(args["scope"], args["receive"], args["send"], user)

    config = _base(want, dict)["config"]
    return {"id": f"{want.service_id}-files", "type": "asgi", "config": config, "serve": serve}


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
