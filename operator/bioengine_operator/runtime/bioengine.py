"""The ``bioengine`` authoring API of BioEngine app format 0.6.0, as an app's Ray pods import it.

Apps written for BioEngine ``import bioengine`` and decorate their classes; that package is
in no registry the cluster reaches, so the operator mounts this module as ``bioengine.py``
beside the Serve entry point (:mod:`bioengine_operator.runtime.serve_entry`) and apps run
unmodified. It needs only the standard library, pydantic and Ray; without Ray (an app's own
unit tests) ``@bioengine.app`` leaves the class a plain class that can be instantiated.

What each decorator becomes on Ray Serve:

* ``@bioengine.app(...)``: ``serve.deployment`` of the class. ``num_cpus``, ``memory_mb``
  (in bytes), ``pip`` and ``env_vars`` go into ``ray_actor_options`` (the replica's
  ``runtime_env``), ``ray_actor_options`` is merged on top, every other keyword
  (``num_replicas``, ``autoscaling_config``, ``health_check_period_s``, ...) is a Serve
  deployment option. GPUs: ``num_gpus``, or ``gpu_memory_mb`` as a fraction of one GPU of
  ``BIOENGINE_GPU_MEMORY_MB`` (the cluster's setting; -1 is one whole GPU). pip requirements
  the image already satisfies are left out, so an app runs on an air-gapped cluster whose
  Ray image carries its packages.
* ``@bioengine.method`` / ``@bioengine.method(context=True)``: a method clients may call,
  its arguments validated by pydantic (``Field(..., description=)`` defaults resolved), its
  JSON schema built from the signature for the Hypha service.
* ``@bioengine.async_init`` runs once when a replica starts, before Serve sends it traffic;
  ``@bioengine.smoke_test`` runs right after it, and if it raises the replica never starts
  (Serve reports the deployment failed, quoting the error).
* ``@bioengine.health_check`` is called by Serve's periodic ``check_health``.
* ``@bioengine.multiplexed(max_models=)`` (and its newer name ``@bioengine.cached``) is
  Serve's model multiplexing with ``max_num_models_per_replica``.
* A constructor parameter annotated with another ``@bioengine.app`` class is that
  deployment, bound by the entry point; its methods are awaited without ``.remote()``.
* ``bioengine.datasets``: the app's datasets, mounted (``path``) or read over HTTP from
  their servers (``list_files``, ``get_file``) with the token of the user whose call is
  served, which the Hypha bridge mints per call and the ingress passes on.
* ``bioengine.__version__`` is the version of this runtime (the operator's), and
  ``bioengine.utils`` the upstream helpers apps import (:mod:`bioengine_utils`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import importlib.metadata
import inspect
import json
import logging
import math
import os
import sys
import types
import typing
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import pydantic
from pydantic.fields import FieldInfo

try:  # Ray is in every Ray pod; an app's unit tests may run without it.
    from ray import serve
    from ray.serve.handle import DeploymentHandle
except ImportError:  # pragma: no cover - exercised by the apps' own tests
    serve = None
    DeploymentHandle = None

try:  # shipped beside this module; `import bioengine.utils` finds it in sys.modules
    import bioengine_utils as utils
except ImportError:  # pragma: no cover - this file alone, as an app's own tests may copy it
    pass
else:
    sys.modules[f"{__name__}.utils"] = utils

# The runtime's version, the operator's (tests/test_runtime.py keeps the two equal).
__version__ = "0.1.0"
__all__ = [
    "BioEngineUserError",
    "DataServerError",
    "MissingDataServerError",
    "ReservedMethodNameError",
    "__version__",
    "app",
    "async_init",
    "cached",
    "datasets",
    "health_check",
    "logger",
    "method",
    "multiplexed",
    "smoke_test",
]

KIND = "_bioengine_kind"
WANTS_CONTEXT = "_bioengine_wants_context"
SCHEMA = "__schema__"
INFO = "__bioengine__"
# Names Serve or BioEngine call by themselves: an app marks its own method with a decorator.
RESERVED = ("check_health", "async_init", "test_deployment", "reconfigure")
HOOKS = ("async_init", "smoke_test", "health_check")
GPU_MEMORY_ENV = "BIOENGINE_GPU_MEMORY_MB"
DATASETS_ENV = "BIOENGINE_DATASETS"
DATA_DIR_ENV = "BIOENGINE_DATA_DIR"
# The ingress hands a call's dataset tokens (the caller's, minted by the Hypha bridge) to the
# replica through this method of every app class; composed calls pass them on the same way.
CALL_WITH_TOKENS = "_bioengine_call"
DATASET_TIMEOUT_SECONDS = 60.0
# Dataset name -> the caller's token for it, for the call being served.
_caller_tokens: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "bioengine_dataset_tokens", default=types.MappingProxyType({})
)
_ARBITRARY = pydantic.ConfigDict(arbitrary_types_allowed=True)

logger = logging.getLogger("ray.serve" if serve is not None else "bioengine.app")


class BioEngineUserError(Exception):
    """An app is written against the API in a way it does not support."""


class ReservedMethodNameError(BioEngineUserError):
    """A class defines a method whose name the runtime owns."""


class CompositionCycleError(BioEngineUserError):
    """Deployments that need each other through their constructors."""


class MissingDataServerError(BioEngineUserError):
    """The app asked for a dataset the app's resource does not list, or for one over HTTP
    outside a call (no caller, no token)."""


class DataServerError(RuntimeError):
    """A dataset server refused or failed a request: ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class SmokeTestFailed(RuntimeError):
    """Raised from a replica's constructor: Serve shows the message in the app's status."""


class HealthCheckFailed(RuntimeError):
    """Raised from ``check_health``: Serve restarts the replica."""


# -- method markers --------------------------------------------------------------------


def _parameter_schema(param: inspect.Parameter) -> tuple[dict[str, Any], bool]:
    """JSON schema of one parameter (a ``Field`` default gives its description, default and
    constraints) and whether it is required."""
    default = param.default
    field = default if isinstance(default, FieldInfo) else None
    annotation = Any if param.annotation is inspect.Parameter.empty else param.annotation
    try:
        target: Any = Annotated[annotation, field] if field is not None else annotation
        schema = pydantic.TypeAdapter(target, config=_ARBITRARY).json_schema()
    except (pydantic.PydanticUserError, TypeError):
        schema = {}  # e.g. numpy arrays: sent as arrays, described only by their text
    schema.pop("title", None)
    if field is not None:
        if field.description:
            schema["description"] = field.description
        required = field.is_required()
    else:
        required = default is inspect.Parameter.empty
        if not required:
            schema["default"] = default
    try:
        json.dumps(schema)
    except (TypeError, ValueError):
        schema.pop("default", None)  # a default JSON cannot carry
    return schema, required


def method_schema(fn: Callable[..., Any], hidden: tuple[str, ...] = ("self",)) -> dict[str, Any]:
    """The function schema Hypha's ``schema_function`` clients and MCP read: name, the first
    docstring paragraph's text as description, and the parameters as a JSON object schema."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in signature(fn).parameters.items():
        if name in hidden or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        properties[name], needed = _parameter_schema(param)
        if needed:
            required.append(name)
    parameters: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        parameters["required"] = required
    return {"name": fn.__name__, "description": inspect.getdoc(fn) or "", "parameters": parameters}


def resolve_annotations(fn: Callable[..., Any]) -> None:
    """Replace string annotations (``from __future__ import annotations``) by what they name,
    while ``fn``'s module is at hand: Serve ships the class to its replicas by value, with
    only the globals the code itself uses, so ``"np.ndarray"`` could not be resolved there."""
    # A name only a type checker knows leaves the annotations as they are.
    with contextlib.suppress(NameError, SyntaxError, TypeError):
        fn.__annotations__ = typing.get_type_hints(fn, include_extras=True)


@functools.lru_cache(maxsize=1024)
def signature(fn: Callable[..., Any]) -> inspect.Signature:
    """``fn``'s signature (its annotations resolved by :func:`resolve_annotations`)."""
    return inspect.signature(fn)


@functools.lru_cache(maxsize=512)
def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(annotation, config=_ARBITRARY)


def _arguments(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args`` and ``kwargs`` bound to ``fn``'s signature: pydantic ``Field`` defaults
    resolved, annotated arguments validated (and coerced, as pydantic does)."""
    found = signature(fn)
    bound = found.bind(*args, **kwargs)
    given = set(bound.arguments)  # defaults are not validated (as pydantic does not)
    for name, param in found.parameters.items():
        if name in bound.arguments or not isinstance(param.default, FieldInfo):
            continue
        if param.default.is_required():
            raise TypeError(f"{fn.__name__}() missing required argument: {name!r}")
        bound.arguments[name] = param.default.get_default(call_default_factory=True)
    for name, value in bound.arguments.items():
        if name not in given:
            continue
        param = found.parameters[name]
        variadic = param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD)
        if variadic or (
            param.annotation is param.empty and not isinstance(param.default, FieldInfo)
        ):
            continue
        annotation = Any if param.annotation is param.empty else param.annotation
        if isinstance(param.default, FieldInfo):  # its constraints (ge=1, ...) apply too
            annotation = Annotated[annotation, param.default]
        try:
            adapter = _adapter(annotation)
        except TypeError:  # an unhashable annotation: not cached
            adapter = pydantic.TypeAdapter(annotation, config=_ARBITRARY)
        bound.arguments[name] = adapter.validate_python(value)
    return bound.args, bound.kwargs


def validated(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its arguments checked against its signature on every call.

    Not ``pydantic.validate_call``: Serve ships a decorated class to its replicas by value
    (the module's name for it is the deployment, not the class), and the validator objects
    ``validate_call`` keeps cannot be unpickled. This wrapper holds only ``fn``."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def call_async(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = _arguments(fn, args, kwargs)
            return await fn(*args, **kwargs)

        return call_async

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = _arguments(fn, args, kwargs)
        return fn(*args, **kwargs)

    return call


def method(fn: Callable[..., Any] | None = None, *, context: bool = False) -> Any:
    """Expose a method to clients. With ``context=True`` the method receives the caller's
    Hypha context (``context["user"]["id"]``, ...) as its ``context`` argument, which is not
    part of its published schema."""

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        if context and "context" not in inspect.signature(f).parameters:
            raise TypeError(
                f"@bioengine.method(context=True) on {f.__qualname__}: the method must "
                "declare a 'context' parameter"
            )
        resolve_annotations(f)
        schema = method_schema(f, ("self", "context"))
        wrapped = validated(f)
        setattr(wrapped, KIND, "method")
        setattr(wrapped, WANTS_CONTEXT, context)
        setattr(wrapped, SCHEMA, schema)
        return wrapped

    return mark(fn) if fn is not None else mark


def _hook(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, KIND, kind)
        return fn

    mark.__name__ = kind
    mark.__doc__ = f"Mark a method as the app's {kind.replace('_', ' ')} hook."
    return mark


async_init = _hook("async_init")
smoke_test = _hook("smoke_test")
health_check = _hook("health_check")


def cached(*, max_models: int = 3) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A model loader keyed by its first argument, at most ``max_models`` kept per replica
    (Serve's model multiplexing; a request's model id reaches it as that argument)."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        if serve is None:
            return fn
        return serve.multiplexed(max_num_models_per_replica=max_models)(fn)  # type: ignore[no-any-return]

    return mark


def multiplexed(*, max_models: int = 3) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The name older apps use for :func:`cached`."""
    return cached(max_models=max_models)


# -- @bioengine.app --------------------------------------------------------------------


def gpus_for(gpu_memory_mb: int) -> float:
    """GPUs Ray reserves for ``gpu_memory_mb`` of GPU memory, given the cluster's per-GPU
    memory: a share of one GPU (several replicas share it), at most one whole GPU."""
    if gpu_memory_mb == -1:
        return 1.0
    per_gpu = int(os.environ.get(GPU_MEMORY_ENV) or 0)
    if per_gpu <= 0:
        return 1.0  # the cluster did not say how much a GPU holds: give a whole one
    return min(1.0, math.ceil(gpu_memory_mb * 100 / per_gpu) / 100)  # whole percents, up


def unsatisfied(requirements: list[str]) -> list[str]:
    """The pip requirements the running Python does not already satisfy."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - packaging comes with Ray
        return list(requirements)
    missing = []
    for text in requirements:
        try:
            wanted = Requirement(text)
            have = importlib.metadata.version(wanted.name)
        except (InvalidRequirement, importlib.metadata.PackageNotFoundError):
            missing.append(text)
            continue
        if wanted.url or (wanted.specifier and have not in wanted.specifier):
            missing.append(text)
    return missing


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def actor_options(
    num_cpus: float,
    num_gpus: float | None,
    gpu_memory_mb: int | None,
    memory_mb: int | None,
    pip: list[str] | None,
    env_vars: dict[str, str] | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    gpus = gpus_for(gpu_memory_mb) if gpu_memory_mb else (num_gpus or 0)
    options: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": gpus}
    if memory_mb is not None:
        options["memory"] = int(memory_mb) * 1024 * 1024
    runtime_env: dict[str, Any] = {}
    missing = unsatisfied(list(pip or []))
    if missing:
        runtime_env["pip"] = missing
    if env_vars:
        runtime_env["env_vars"] = {k: str(v) for k, v in env_vars.items()}
    if runtime_env:
        options["runtime_env"] = runtime_env
    return _merge(options, extra or {})


def _scan(cls: type) -> dict[str, Any]:
    for name in RESERVED:
        member = cls.__dict__.get(name)
        if member is not None and getattr(member, KIND, None) not in HOOKS:
            raise ReservedMethodNameError(
                f"{cls.__module__}.{cls.__qualname__} defines {name!r}, a name the runtime "
                "owns: name it otherwise (a lifecycle hook: mark it with "
                "@bioengine.async_init, @bioengine.smoke_test or @bioengine.health_check)"
            )
    hooks: dict[str, str | None] = dict.fromkeys(HOOKS)
    methods: dict[str, dict[str, Any]] = {}
    for name, member in inspect.getmembers(cls):
        kind = getattr(member, KIND, None)
        if kind == "method":
            methods[name] = {
                "schema": {**getattr(member, SCHEMA), "name": name},
                "context": bool(getattr(member, WANTS_CONTEXT, False)),
            }
        elif kind in hooks:
            if hooks[kind] is not None:
                raise ReservedMethodNameError(
                    f"{cls.__qualname__} has two @bioengine.{kind} methods: "
                    f"{hooks[kind]!r} and {name!r}"
                )
            hooks[kind] = name
    return {"hooks": hooks, "methods": methods}


async def _call(fn: Callable[..., Any]) -> Any:
    result = fn()
    return await result if inspect.isawaitable(result) else result


def _with_lifecycle(cls: Any, hooks: dict[str, str | None]) -> None:
    """Wrap the constructor (handles → runtime handles, then async_init and smoke_test)
    and give Serve a ``check_health`` that runs the app's health check."""
    original = cls.__init__
    # The hooks themselves, taken now: check_health is replaced below, and may be a hook's name.
    run = {kind: getattr(cls, name) for kind, name in hooks.items() if name}

    @functools.wraps(original)
    async def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        args = tuple(_runtime_handle(a) for a in args)
        kwargs = {k: _runtime_handle(v) for k, v in kwargs.items()}
        result = original(self, *args, **kwargs)
        if inspect.isawaitable(result):
            await result
        if "async_init" in run:
            await _call(functools.partial(run["async_init"], self))
        if "smoke_test" in run:
            try:
                await _call(functools.partial(run["smoke_test"], self))
            except Exception as err:
                raise SmokeTestFailed(
                    f"smoke test {cls.__name__}.{hooks['smoke_test']} failed: "
                    f"{type(err).__name__}: {err}"
                ) from err

    async def check_health(self: Any) -> None:
        if "health_check" in run:
            try:
                await _call(functools.partial(run["health_check"], self))
            except Exception as err:
                logger.error("health check of %s failed: %r", cls.__name__, err)
                raise HealthCheckFailed(
                    f"health check {cls.__name__}.{hooks['health_check']} failed: "
                    f"{type(err).__name__}: {err}"
                ) from err

    cls.__init__ = __init__
    cls.check_health = check_health
    setattr(cls, CALL_WITH_TOKENS, _call_with_tokens)


async def _call_with_tokens(
    self: Any, method: str, tokens: dict[str, str], args: list[Any], kwargs: dict[str, Any]
) -> Any:
    """``self.<method>(*args, **kwargs)`` with the caller's dataset tokens set. At module
    level, so Ray pickles the class's reference to it by name: a closure would carry the
    context variable, which cannot be pickled."""
    reset = _caller_tokens.set(dict(tokens))
    try:
        result = getattr(self, method)(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result
    finally:
        _caller_tokens.reset(reset)


def app(
    *,
    num_cpus: float = 1,
    num_gpus: float | None = None,
    gpu_memory_mb: int | None = None,
    memory_mb: int | None = None,
    pip: list[str] | None = None,
    env_vars: dict[str, str] | None = None,
    max_ongoing_requests: int = 10,
    ray_actor_options: dict[str, Any] | None = None,
    **serve_options: Any,
) -> Callable[[type], Any]:
    """Make a class a BioEngine app deployment (see the module docstring for the mapping)."""

    def decorate(cls: type) -> Any:
        if not inspect.isclass(cls):
            raise TypeError(f"@bioengine.app applies to a class, not {type(cls).__name__}")
        info = _scan(cls)
        options = actor_options(
            num_cpus, num_gpus, gpu_memory_mb, memory_mb, pip, env_vars, ray_actor_options
        )
        info["options"] = {
            "ray_actor_options": options,
            "max_ongoing_requests": max_ongoing_requests,
            **serve_options,
        }
        setattr(cls, INFO, info)
        if serve is None:
            return cls
        _with_lifecycle(cls, info["hooks"])
        return serve.deployment(name=cls.__name__, **info["options"])(cls)

    return decorate


def app_class(target: Any) -> type | None:
    """The user class behind ``target`` if it is a ``@bioengine.app`` (deployment or class)."""
    inner = getattr(target, "func_or_class", target)
    return inner if inspect.isclass(inner) and INFO in vars(inner) else None


# -- composition -----------------------------------------------------------------------


class _Method:
    """One method of another deployment; a call made while serving a caller carries that
    caller's dataset tokens along."""

    __slots__ = ("_handle", "_name")

    def __init__(self, handle: Any, name: str) -> None:
        self._handle, self._name = handle, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.remote(*args, **kwargs)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return call_method(self._handle, self._name, list(args), kwargs, _caller_tokens.get())

    def options(self, **options: Any) -> _Method:
        return _Method(self._handle.options(**options), self._name)


def call_method(
    handle: Any, name: str, args: list[Any], kwargs: dict[str, Any], tokens: Mapping[str, str]
) -> Any:
    """``handle.<name>.remote(...)``, through the app class's token-setting method when
    there are dataset tokens to pass on (so calls without them run exactly as before)."""
    if tokens:
        return getattr(handle, CALL_WITH_TOKENS).remote(name, dict(tokens), args, kwargs)
    return getattr(handle, name).remote(*args, **kwargs)


class RuntimeHandle:
    """Another deployment of the app, called like a local object: ``await handle.f(x)``.
    The Serve ``DeploymentHandle`` stays reachable as ``handle._raw``."""

    __slots__ = ("_raw",)

    def __init__(self, handle: Any) -> None:
        self._raw = handle

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Method(self._raw, name)

    def __repr__(self) -> str:
        return f"<bioengine runtime handle {self._raw.deployment_name}>"


def _runtime_handle(value: Any) -> Any:
    if DeploymentHandle is not None and isinstance(value, DeploymentHandle):
        return RuntimeHandle(value)
    return value


# -- datasets --------------------------------------------------------------------------


class Datasets:
    """The BioEngineDatasets the app's resource lists (``spec.datasets``).

    Two ways in: :meth:`path` is the dataset mounted read-only into every Ray pod (what the
    cluster admin granted the app), and :meth:`list_files` / :meth:`get_file` read it from
    its dataset server over HTTP as upstream BioEngine apps do, with the token of the user
    whose call is being served (minted by the Hypha bridge for that call), so the dataset's
    ``authorizedUsers`` decide per caller; ``token=`` names another one."""

    def _all(self) -> dict[str, dict[str, Any]]:
        return dict(json.loads(os.environ.get(DATASETS_ENV) or "{}"))

    def _known(self, dataset_id: str) -> dict[str, Any]:
        known = self._all()
        if dataset_id not in known:
            raise MissingDataServerError(
                f"dataset {dataset_id!r} is not among this app's datasets "
                f"({', '.join(sorted(known)) or 'none'}): list it in spec.datasets"
            )
        return known[dataset_id]

    async def list_datasets(self) -> dict[str, dict[str, Any]]:
        """Dataset name → what the app knows of it (its in-cluster ``url``)."""
        return self._all()

    def path(self, dataset_id: str) -> Path:
        """Where ``dataset_id`` is mounted in this pod."""
        if not self._known(dataset_id).get("mounted"):
            raise MissingDataServerError(
                f"dataset {dataset_id!r} has a source that cannot be mounted into Ray pods: "
                "read it with bioengine.datasets.get_file"
            )
        return Path(os.environ.get(DATA_DIR_ENV) or "/data") / dataset_id

    async def list_files(
        self,
        dataset_id: str,
        dir_path: str | None = None,
        recursive: bool = True,
        token: str | None = None,
    ) -> list[str]:
        """Paths (from the dataset's root) of the files under ``dir_path``; not
        ``recursive``: its files and folders, folders ending in ``/``."""
        flag = "true" if recursive else "false"
        query = urllib.parse.urlencode({"path": dir_path or "", "recursive": flag})
        body = await self._get(dataset_id, f"/files?{query}", token)
        entries = json.loads(body)["entries"]
        return [e["path"] + ("/" if e["type"] == "directory" else "") for e in entries]

    async def get_file(self, dataset_id: str, file_path: str, token: str | None = None) -> Any:
        """A file's bytes; for a zarr store (a path ending in ``.zarr``) a read-only zarr
        store over HTTP that ``zarr.open`` takes, reading only the chunks it needs."""
        if file_path.rstrip("/").endswith(".zarr"):
            return _zarr_store(self, dataset_id, file_path.rstrip("/"), token)
        return await self._get(dataset_id, f"/files/{urllib.parse.quote(file_path)}", token)

    async def _get(
        self, dataset_id: str, target: str, token: str | None, byte_range: str | None = None
    ) -> bytes:
        url = str(self._known(dataset_id)["url"]).rstrip("/") + target
        token = token or _caller_tokens.get().get(dataset_id)
        if not token:
            raise MissingDataServerError(
                f"no token for dataset {dataset_id!r}: read it over HTTP within a call "
                "(the caller's token), or pass token="
            )
        headers = {"Authorization": f"Bearer {token}"}
        if byte_range:
            headers["Range"] = byte_range
        return await asyncio.to_thread(_fetch, url, headers)


def _fetch(url: str, headers: dict[str, str]) -> bytes:
    """GET ``url``: the body, or DataServerError quoting the server (with its status: the
    zarr store reads a 404 as a chunk never written)."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=DATASET_TIMEOUT_SECONDS) as answer:
            return bytes(answer.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode("utf-8", "replace")[:300]
        raise DataServerError(f"dataset server answered {err.code}: {detail}", err.code) from None


def _zarr_store(source: Datasets, dataset_id: str, root: str, token: str | None) -> Any:
    """A read-only zarr (v3 API) store over the dataset server; the caller's token is taken
    now, so the store keeps working when handed to a thread."""
    from zarr.abc.store import (  # in the app's environment: apps reading zarr list it
        ByteRequest,
        OffsetByteRequest,
        RangeByteRequest,
        Store,
        SuffixByteRequest,
    )
    from zarr.core.buffer import Buffer, BufferPrototype

    token = token or _caller_tokens.get().get(dataset_id)

    def header(byte_range: ByteRequest | None) -> str | None:
        if isinstance(byte_range, RangeByteRequest):
            return f"bytes={byte_range.start}-{byte_range.end - 1}"
        if isinstance(byte_range, OffsetByteRequest):
            return f"bytes={byte_range.offset}-"
        if isinstance(byte_range, SuffixByteRequest):
            return f"bytes=-{byte_range.suffix}"
        return None

    class HttpZarrStore(Store):
        supports_writes = supports_deletes = supports_partial_writes = False
        supports_listing = True

        def __init__(self) -> None:
            super().__init__(read_only=True)

        def __eq__(self, other: object) -> bool:
            return other is self

        async def get(
            self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
        ) -> Buffer | None:
            target = f"/files/{urllib.parse.quote(f'{root}/{key}')}"
            try:
                data = await source._get(dataset_id, target, token, header(byte_range))
            except DataServerError as err:
                if err.status == 404:
                    return None  # a chunk never written: zarr fills it
                raise
            return prototype.buffer.from_bytes(data)

        async def get_partial_values(
            self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
        ) -> list[Buffer | None]:
            return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

        async def exists(self, key: str) -> bool:
            return key in [p.removeprefix(f"{root}/") for p in await self._files(root)]

        async def _files(self, folder: str) -> list[str]:
            return await source.list_files(dataset_id, folder, recursive=True, token=token)

        async def list(self) -> AsyncIterator[str]:
            for path in await self._files(root):
                yield path.removeprefix(f"{root}/")

        async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
            async for key in self.list():
                if key.startswith(prefix):
                    yield key

        async def list_dir(self, prefix: str) -> AsyncIterator[str]:
            folder = f"{root}/{prefix.rstrip('/')}" if prefix else root
            for path in await source.list_files(dataset_id, folder, False, token):
                yield path.removeprefix(f"{folder}/").rstrip("/")

        async def set(self, key: str, value: Buffer) -> None:
            raise PermissionError("datasets are read-only")

        async def delete(self, key: str) -> None:
            raise PermissionError("datasets are read-only")

    return HttpZarrStore()


datasets = Datasets()
