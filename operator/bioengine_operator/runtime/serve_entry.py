"""Ray Serve entry point of every BioEngineApp, mounted into its Ray pods by the operator.

It runs in the app's Ray image, not in the operator's, so it imports only the standard
library, Ray, and :mod:`bioengine_codec` (mounted beside it). The operator writes
``bioengine-app.json`` next to it (entry, extra deployments, exposed methods);
``serveConfigV2`` points at ``bioengine_serve_entry:app``.

The application is the manifest's entry class, bound with the extra deployments as keyword
arguments named after their module (as the BioEngine manifest specifies), behind a small
HTTP ingress: ``GET <route>/__describe__`` lists the callable methods with their docstrings
and signatures (read here, where the app's code is importable), and ``POST <route>/<method>``
calls one with msgpack-encoded ``[args, kwargs]``. The Hypha bridge speaks to that ingress
over plain HTTP, so it needs no Ray client (whose versions must match Ray's exactly).
"""

from __future__ import annotations

import importlib
import inspect
import json
import traceback
from pathlib import Path
from typing import Any

import bioengine_codec as codec
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

CONFIG_FILE = Path(__file__).with_name("bioengine-app.json")
DESCRIBE = "__describe__"
# Called by the BioEngine runtime, not by users.
LIFECYCLE = {"async_init", "test_deployment", "check_health", "reconfigure"}


def load(import_path: str) -> Any:
    module, _, attribute = import_path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def as_deployment(target: Any) -> Any:
    """A plain class becomes a deployment named after it; a decorated one is kept."""
    return target if isinstance(target, serve.Deployment) else serve.deployment(target)


def user_class(target: Any) -> Any:
    return target.func_or_class if isinstance(target, serve.Deployment) else target


def describe(cls: Any, exposed: list[str]) -> dict[str, dict[str, str]]:
    """Public methods of ``cls`` (or only ``exposed`` ones), with docstring and signature."""
    methods = {}
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith("_") or name in LIFECYCLE or (exposed and name not in exposed):
            continue
        signature = inspect.signature(member)
        params = [p for p in signature.parameters.values() if p.name != "self"]
        methods[name] = {
            "doc": inspect.getdoc(member) or "",
            "signature": str(signature.replace(parameters=params)),
        }
    return methods


@serve.deployment(name="BioEngineIngress")
class Ingress:
    """Turns HTTP requests from the bridge into calls on the entry deployment."""

    def __init__(self, entry: Any, methods: dict[str, dict[str, str]]) -> None:
        self.entry = entry
        self.methods = methods

    async def __call__(self, request: Request) -> Response:
        name = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if request.method == "GET" and name == DESCRIBE:
            return JSONResponse(self.methods)
        if request.method != "POST" or name not in self.methods:
            return JSONResponse({"error": f"no method {name!r}"}, status_code=404)
        try:
            args, kwargs = codec.loads(await request.body())
            result = await getattr(self.entry, name).remote(*args, **kwargs)
            return Response(codec.dumps(result), media_type=codec.CONTENT_TYPE)
        except Exception as err:  # the caller gets the app's error, not a bare 500
            detail = "".join(traceback.format_exception_only(err)).strip()
            return JSONResponse({"error": detail}, status_code=500)


def build(config: dict[str, Any]) -> Any:
    handles = {
        path.partition(":")[0].rsplit(".", 1)[-1]: as_deployment(load(path)).bind()
        for path in config.get("deployments", [])
    }
    entry = load(config["entry"])
    methods = describe(user_class(entry), config.get("exposedMethods", []))
    # @serve.deployment made Ingress a Deployment, which type checkers cannot see.
    return Ingress.bind(as_deployment(entry).bind(**handles), methods)  # type: ignore[attr-defined]


app = build(json.loads(CONFIG_FILE.read_text()))
