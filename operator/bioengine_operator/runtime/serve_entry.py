"""Ray Serve entry point of every BioEngineApp, mounted into its Ray pods by the operator.

It runs in the app's Ray image, not in the operator's, so it imports only the standard
library, Ray, Starlette (part of Ray Serve) and the two modules mounted beside it:
:mod:`bioengine` (the authoring API apps import) and :mod:`bioengine_codec`.
``serveConfigV2`` names :func:`app` as an application builder and passes the app's
settings as its ``args`` (see :func:`bioengine_operator.builders.rayservice.serve_args`):
the manifest's ``entry`` and ``frontendEntry``, the environment every deployment gets, and
the cluster admin's per-class overrides. Being part of the
RayService, a change to any of them makes KubeRay update the Serve app.

The application is the entry class with every class it composes (constructor parameters
annotated with another ``@bioengine.app`` class, bound recursively, each class once),
behind a small HTTP ingress:

* ``GET <route>/__describe__``: the ``@bioengine.method`` functions of the entry class with
  their JSON schemas (built here, where the app's code is importable), and whether the app
  has a frontend;
* ``POST <route>/<method>``: a call, msgpack-encoded ``[args, kwargs]``; the header
  ``X-BioEngine-Dataset-Tokens`` (JSON, dataset name → token) carries the caller's tokens
  for the app's datasets, which ``bioengine.datasets`` sends to the dataset servers;
* ``GET <route>/__frontend__/<path>``: files of the folder holding ``frontend_entry``.

The Hypha bridge speaks to that ingress over plain HTTP, so it needs no Ray client (whose
versions must match Ray's exactly).
"""

from __future__ import annotations

import importlib
import inspect
import json
import mimetypes
import os
import traceback
from pathlib import Path
from typing import Any

import bioengine
import bioengine_codec as codec
from ray import serve
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

DESCRIBE = "__describe__"
FRONTEND = "__frontend__"


def load(import_path: str) -> Any:
    module, _, attribute = import_path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def app_folder(entry: str) -> Path:
    """The app's folder: where the entry module's top-level package or module lies (the
    mounted ConfigMap, Ray's working_dir for a zip, or the image's folder).

    Absolute but with its links kept: a mounted ConfigMap's files are links into a folder
    the kubelet names per pod (``..2026_12_06_20_24_44.18...``), and the path is handed to
    replicas in other pods, where only the mount point's name is the same."""
    module = entry.partition(":")[0]
    path = Path(os.path.abspath(inspect.getfile(importlib.import_module(module))))
    depth = module.count(".") + (1 if path.name == "__init__.py" else 0)
    return path.parents[depth]


def composed(cls: Any) -> dict[str, Any]:
    """Constructor parameters annotated with a ``@bioengine.app`` class: name → deployment.

    Annotations are evaluated one by one in the class's module (``typing.get_type_hints``
    refuses them: the name of a decorated class is bound to its Serve deployment, not a type)."""
    init = inspect.unwrap(cls.__init__)  # the app's own, not the runtime's wrapper
    found = {}
    for name, param in inspect.signature(init).parameters.items():
        hint = param.annotation
        if isinstance(hint, str):  # deferred by `from __future__ import annotations`
            try:
                hint = eval(hint, init.__globals__)
            except Exception:
                continue  # a name only a type checker knows
        if bioengine.app_class(hint) is not None:
            found[name] = hint
    return found


def with_overrides(
    deployment: Any, override: dict[str, Any], env_vars: dict[str, str], disable_gpu: bool
) -> Any:
    """The admin's deploy-time settings on top of the decorator's. The environment is set
    on every deployment: Serve does not add the application's env_vars to a deployment
    that sets its own."""
    actor = dict(deployment.ray_actor_options or {})
    if disable_gpu:
        actor["num_gpus"] = 0
    runtime_env = dict(actor.get("runtime_env") or {})
    runtime_env["env_vars"] = {
        **(runtime_env.get("env_vars") or {}),
        **env_vars,
        **(override.get("envVars") or {}),
    }
    actor["runtime_env"] = runtime_env
    options: dict[str, Any] = {"ray_actor_options": actor}
    if "numReplicas" in override:
        options.update(num_replicas=override["numReplicas"], autoscaling_config=None)
    if "autoscaling" in override:
        scaling = override["autoscaling"]
        options["autoscaling_config"] = {
            "min_replicas": scaling.get("minReplicas", 1),
            "max_replicas": scaling.get("maxReplicas", 1),
            **(
                {"target_ongoing_requests": scaling["targetOngoingRequests"]}
                if "targetOngoingRequests" in scaling
                else {}
            ),
        }
        options["num_replicas"] = "auto"
    return deployment.options(**options)


class Graph:
    """Binds the entry deployment and everything it composes, each class exactly once."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.overrides: dict[str, dict[str, Any]] = config.get("classes") or {}
        self.disable_gpu = bool(config.get("disableGpu"))
        self.env_vars: dict[str, str] = config.get("envVars") or {}
        self.bound: dict[type, Any] = {}

    def bind(self, target: Any, path: tuple[str, ...] = ()) -> Any:
        cls = bioengine.app_class(target)
        if cls is None:
            raise bioengine.BioEngineUserError(
                f"{getattr(target, '__qualname__', target)!r} is not a @bioengine.app class"
            )
        if cls.__name__ in path:
            chain = " -> ".join((*path, cls.__name__))
            raise bioengine.CompositionCycleError(f"deployments compose in a cycle: {chain}")
        if cls in self.bound:
            return self.bound[cls]
        override = self.overrides.get(cls.__name__, {})
        kwargs = dict(override.get("initKwargs") or {})
        for name, hint in composed(cls).items():
            kwargs[name] = self.bind(hint, (*path, cls.__name__))
        deployment = with_overrides(target, override, self.env_vars, self.disable_gpu)
        self.bound[cls] = deployment.bind(**kwargs)
        return self.bound[cls]


@serve.deployment(name="BioEngineIngress", ray_actor_options={"num_cpus": 0})
class Ingress:
    """Turns HTTP requests from the bridge into calls on the entry deployment."""

    def __init__(self, entry: Any, description: dict[str, Any], frontend_dir: str | None) -> None:
        self.entry = entry
        self.description = description
        # Resolved per request: a mounted ConfigMap's files move when the kubelet updates it.
        self.frontend_dir = Path(frontend_dir) if frontend_dir else None

    def frontend_file(self, relative: str) -> Response:
        if self.frontend_dir is None:
            return JSONResponse({"error": "this app has no frontend"}, status_code=404)
        folder = self.frontend_dir.resolve()
        target = (folder / relative).resolve()
        if not target.is_relative_to(folder) or not target.is_file():
            return JSONResponse({"error": f"no file {relative!r}"}, status_code=404)
        media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        return FileResponse(target, media_type=media_type)

    async def __call__(self, request: Request) -> Response:
        path, route = request.url.path, request.scope.get("root_path", "")
        if route and path.startswith(route):
            path = path[len(route) :]
        path = path.strip("/")
        if request.method == "GET" and path == DESCRIBE:
            return JSONResponse(self.description)
        if request.method == "GET" and path.split("/", 1)[0] == FRONTEND:
            return self.frontend_file(path.partition("/")[2] or self.description["frontend"])
        name = path.rsplit("/", 1)[-1]
        if request.method != "POST" or name not in self.description["methods"]:
            return JSONResponse({"error": f"no method {name!r}"}, status_code=404)
        try:
            args, kwargs = codec.loads(await request.body())
            tokens = json.loads(request.headers.get(codec.DATASET_TOKENS_HEADER) or "{}")
            result = await bioengine.call_method(self.entry, name, args, kwargs, tokens)
            return Response(codec.dumps(result), media_type=codec.CONTENT_TYPE)
        except Exception as err:  # the caller gets the app's error, not a bare 500
            detail = "".join(traceback.format_exception_only(err)).strip()
            return JSONResponse({"error": detail}, status_code=500)


def app(args: dict[str, Any]) -> Any:
    """The application builder ``serveConfigV2`` names; ``args`` as the operator wrote them."""
    # Read by @bioengine.app(gpu_memory_mb=...) when the entry's modules are imported below.
    os.environ[bioengine.GPU_MEMORY_ENV] = str(args.get("gpuMemoryMb") or 0)
    entry = load(args["entry"])
    cls = bioengine.app_class(entry)
    if cls is None:
        raise bioengine.BioEngineUserError(
            f"entry {args['entry']} is not a @bioengine.app class (format 0.6.0 apps "
            "decorate their classes with @bioengine.app)"
        )
    info = vars(cls)[bioengine.INFO]
    frontend = args.get("frontendEntry")
    frontend_dir = None
    if frontend:
        root = app_folder(args["entry"])
        if not (root / frontend).resolve().is_relative_to(root):
            raise bioengine.BioEngineUserError(f"frontendEntry {frontend} leaves the app's folder")
        frontend_dir = str((root / frontend).parent)
    description = {
        "methods": info["methods"],
        "frontend": Path(frontend).name if frontend else None,
    }
    # @serve.deployment made Ingress a Deployment, which type checkers cannot see.
    return Ingress.bind(Graph(args).bind(entry), description, frontend_dir)  # type: ignore[attr-defined]
