"""Clients from the bridge to the backends inside the cluster.

* :class:`TritonPair` speaks gRPC to a model runner's two colors and fails a call over to
  the other color when one does not answer (a pod being replaced, a node going away), so a
  color dying under load loses no call.
* :class:`AppClient` speaks HTTP to an app's Ray Serve ingress (see
  :mod:`bioengine_operator.runtime.serve_entry`) with the msgpack codec: no Ray client, so
  no exact Ray version match between the bridge and the app.
* :class:`DatasetClient` reads from a dataset server with a token it mints per call.

Connection attempts are short (a dead backend fails in seconds, not after Hypha's 60 s);
the call itself may take as long as the model or app needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import prometheus_client
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from bioengine_operator.dataserver import tokens
from bioengine_operator.runtime import codec

logger = logging.getLogger(__name__)

# gRPC status codes after which the same request may safely go to the other color: the
# server never ran it (unreachable, shutting down) or the connection died.
FAILOVER_STATUSES = {
    "StatusCode.UNAVAILABLE",
    "StatusCode.CANCELLED",
    "StatusCode.UNKNOWN",
    "StatusCode.DEADLINE_EXCEEDED",
}
# A Triton shutting down (its pod being replaced) unloads its models first and answers
# "unknown model" for a second or two: the other color is asked too, and only when every
# color says so is it the caller's error.
NOT_FOUND = "StatusCode.NOT_FOUND"
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # gRPC waits up to 2 minutes between reconnects to a server that was down; a color back
    # after a rollout step must be used within a second, before the other color is replaced.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
FAILOVERS = prometheus_client.Counter(
    "bioengine_bridge_failovers",
    "Model runner calls that one color did not answer and were sent to the other.",
)


class BackendError(RuntimeError):
    """A backend answered with an error meant for the caller (bad input, app exception)."""


class BackendUnavailable(RuntimeError):
    """No backend could be reached."""


class TritonPair:
    """Both colors of one model runner; calls rotate between them and fail over."""

    def __init__(self, targets: list[str], call_timeout: float) -> None:
        self.targets = list(targets)
        self.call_timeout = call_timeout
        self._clients = {
            t: triton_grpc.InferenceServerClient(t, channel_args=CHANNEL_ARGS) for t in self.targets
        }
        self._turn = itertools.count()
        # Output names per (model, version): asked once, not on every call (a round trip).
        self._outputs: dict[tuple[str, str], list[str]] = {}

    def forget_metadata(self) -> None:
        """The runner rolled to a new revision: its models' outputs may have changed."""
        self._outputs.clear()

    def _order(self) -> list[str]:
        start = next(self._turn) % len(self.targets)
        return self.targets[start:] + self.targets[:start]

    async def _each(self, call: Any) -> Any:
        errors = []
        not_found: list[InferenceServerException] = []
        for target in self._order():
            try:
                return await call(self._clients[target])
            except InferenceServerException as err:
                if str(err.status()) == NOT_FOUND:
                    not_found.append(err)
                elif str(err.status()) not in FAILOVER_STATUSES:
                    raise BackendError(err.message()) from err
                errors.append(f"{target}: {err.status()}")
                FAILOVERS.inc()
                logger.info(
                    "triton %s unavailable (%s); trying the other color", target, err.status()
                )
        if len(not_found) == len(self.targets):
            raise BackendError(not_found[0].message()) from not_found[0]
        raise BackendUnavailable(f"no model runner color answered: {'; '.join(errors)}")

    async def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        outputs: list[str] | None = None,
        version: str | None = None,
    ) -> dict[str, np.ndarray]:
        requests = []
        for name, value in inputs.items():
            array = np.asarray(value)
            tensor = triton_grpc.InferInput(
                name, list(array.shape), np_to_triton_dtype(array.dtype)
            )
            tensor.set_data_from_numpy(array)
            requests.append(tensor)

        async def call(client: triton_grpc.InferenceServerClient) -> dict[str, np.ndarray]:
            wanted = outputs or self._outputs.get((model, version or ""))
            if wanted is None:
                metadata = await client.get_model_metadata(
                    model,
                    model_version=version or "",
                    as_json=True,
                    client_timeout=self.call_timeout,
                )
                wanted = [o["name"] for o in metadata["outputs"]]
                self._outputs[(model, version or "")] = wanted
            result = await client.infer(
                model,
                requests,
                model_version=version or "",
                outputs=[triton_grpc.InferRequestedOutput(n) for n in wanted],
                client_timeout=self.call_timeout,
            )
            return {name: result.as_numpy(name) for name in wanted}

        return await self._each(call)  # type: ignore[no-any-return]

    async def list_models(self) -> list[dict[str, Any]]:
        async def call(client: triton_grpc.InferenceServerClient) -> list[dict[str, Any]]:
            index = await client.get_model_repository_index(
                as_json=True, client_timeout=self.call_timeout
            )
            return list(index.get("models", []))

        return await self._each(call)  # type: ignore[no-any-return]

    async def get_model_config(self, model: str) -> dict[str, Any]:
        async def call(client: triton_grpc.InferenceServerClient) -> dict[str, Any]:
            config = await client.get_model_config(
                model, as_json=True, client_timeout=self.call_timeout
            )
            return dict(config.get("config", config))

        return await self._each(call)  # type: ignore[no-any-return]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._clients.values()))


class AppClient:
    """HTTP client of one app's Serve ingress."""

    def __init__(self, endpoint: str, session: aiohttp.ClientSession, call_timeout: float) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=call_timeout, sock_connect=5)

    async def describe(self, timeout: float) -> dict[str, Any]:
        """The app's methods with their schemas, and its frontend page if it has one; an
        ingress that does not answer within ``timeout`` is skipped for now (its registration
        is retried) instead of holding up for a whole call time."""
        limit = aiohttp.ClientTimeout(total=timeout, sock_connect=min(5.0, timeout))
        try:
            async with self.session.get(f"{self.endpoint}/__describe__", timeout=limit) as r:
                if r.status != 200:
                    raise BackendUnavailable(f"app ingress answered {r.status} to describe")
                return dict(await r.json())
        except (aiohttp.ClientConnectionError, TimeoutError) as err:
            raise BackendUnavailable(f"app ingress did not describe itself: {err!r}") from err

    @contextlib.asynccontextmanager
    async def frontend(self, path: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """A file of the app's frontend folder, its body not read yet."""
        url = f"{self.endpoint}/__frontend__/{urllib.parse.quote(path)}"
        async with streamed(self.session, "app", url, timeout=self.timeout) as response:
            yield response

    async def call(
        self,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any],
        dataset_tokens: dict[str, str] | None = None,
    ) -> Any:
        """``dataset_tokens``: the caller's, for the app's datasets (the runtime's header)."""
        headers = {"Content-Type": codec.CONTENT_TYPE}
        if dataset_tokens:
            headers[codec.DATASET_TOKENS_HEADER] = json.dumps(dataset_tokens)
        try:
            async with self.session.post(
                f"{self.endpoint}/{method}",
                data=codec.dumps([args, kwargs]),
                headers=headers,
                timeout=self.timeout,
            ) as response:
                body = await response.read()
                if response.status == 200:
                    return codec.loads(body)
                if response.status in (500, 404):
                    raise BackendError(_error_text(body, response.status))
                raise BackendUnavailable(f"app answered {response.status}")
        except (aiohttp.ClientConnectionError, TimeoutError) as err:
            raise BackendUnavailable(f"app unreachable: {err}") from err


class DatasetClient:
    """Reads one dataset through its server, as a given (already authorized) user.

    The bridge signs a short-lived token per request with its private key; the dataset
    server checks it with the public key, so no secret is shared with the server.
    """

    def __init__(
        self,
        endpoint: str,
        dataset_id: str,
        key: tokens.PrivateKey,
        session: aiohttp.ClientSession,
        call_timeout: float,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.dataset_id, self.key, self.session = dataset_id, key, session
        # No total limit: a stream of any size may take its time, as long as bytes keep coming.
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=call_timeout)

    def token(self, user: str, ttl_seconds: int = 300) -> str:
        return tokens.mint(self.key, user=user, dataset=self.dataset_id, ttl_seconds=ttl_seconds)

    @contextlib.asynccontextmanager
    async def open(
        self,
        path: str,
        user: str,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The server's response, its body not read yet (callers stream or cap it)."""
        request_headers = {"Authorization": f"Bearer {self.token(user)}", **(headers or {})}
        async with streamed(
            self.session,
            "dataset server",
            f"{self.endpoint}{path}",
            headers=request_headers,
            params=params,
            timeout=self.timeout,
        ) as response:
            yield response

    async def get(
        self,
        path: str,
        user: str,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """Status and whole body of a small answer (a listing, an error)."""
        async with self.open(path, user, headers, params) as response:
            return response.status, await response.read()


@contextlib.asynccontextmanager
async def streamed(
    session: aiohttp.ClientSession, what: str, url: str, **options: Any
) -> AsyncIterator[aiohttp.ClientResponse]:
    """A GET's response, its body not read yet; a backend that cannot be reached (or stops
    answering) is ``BackendUnavailable``, naming ``what`` it is."""
    try:
        async with session.get(url, **options) as response:
            yield response
    except (aiohttp.ClientConnectionError, TimeoutError) as err:
        raise BackendUnavailable(f"{what} unreachable: {err}") from err


def _error_text(body: bytes, status: int) -> str:
    """The ingress's ``{"error": ...}``, or what else the failing side sent."""
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}: {body[:500]!r}"
