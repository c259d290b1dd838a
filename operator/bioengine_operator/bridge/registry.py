"""Keeps the registered Hypha services equal to the desired ones, one resource at a time.

Watch events only record what each resource wants (:func:`desired.desired`) and kick that
resource's convergence; each resource converges in a task of its own, so an app whose
ingress never answers delays no other service: its discovery call times out after
``discovery_timeout`` seconds and is retried on a later round. At most one task runs per
resource; an event arriving meanwhile makes it go round once more, so the last state wins.
A periodic round retries what failed (an ingress not answering yet, Hypha down).

After a fresh Hypha connection the services registered on the old one are gone; each
registration remembers the connection generation it was made on, and a stale one is made
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import prometheus_client

from bioengine_operator import kube, metrics
from bioengine_operator.api.base import API_VERSION
from bioengine_operator.bridge import access, services
from bioengine_operator.bridge.backends import AppClient, DatasetClient, TritonPair
from bioengine_operator.bridge.desired import Desired, desired
from bioengine_operator.bridge.endpoints import Endpoints
from bioengine_operator.bridge.hypha import HyphaConnection
from bioengine_operator.dataserver import tokens

logger = logging.getLogger(__name__)
Key = tuple[str, str, str]
STATUS_FIELDS = ("phase", "ready", "serviceId", "conditions", "endpoint")
# A dataset token a call carries outlives the call's own time limit by this much.
TOKEN_MARGIN_SECONDS = 60

REGISTRATION_ERRORS = prometheus_client.Counter(
    "bioengine_bridge_registration_errors",
    "Registrations that failed and will be retried, by kind.",
    ["kind"],
)


@dataclasses.dataclass(frozen=True)
class Limits:
    call_timeout: float = 300.0  # one call to an app, runner or dataset
    discovery_timeout: float = 10.0  # asking an app for its methods, per attempt
    max_read_bytes: int = 64 * 2**20  # read_file's largest answer (stream_file has none)


@dataclasses.dataclass
class Registration:
    want: Desired
    generation: int  # of the Hypha connection it was made on
    service_ids: list[str]
    closers: list[TritonPair]


class Registry:
    def __init__(
        self,
        hypha: HyphaConnection,
        endpoints: Endpoints,
        workspace: str,
        limits: Limits,
        signing_key: tokens.PrivateKey | None,
        resync_seconds: float = 5.0,
        existing: Callable[[list[Key]], set[Key]] | None = None,
    ) -> None:
        """``existing`` tells which resources still exist (default: list them in the
        cluster); ``bioengine up`` passes its own, as it has no cluster."""
        self.hypha, self.endpoints, self.workspace = hypha, endpoints, workspace
        self.limits, self.signing_key = limits, signing_key
        self.resync_seconds = resync_seconds
        self.existing = existing or _kube_existing
        self.bodies: dict[Key, dict[str, Any]] = {}
        self.seen: dict[Key, float] = {}  # when each body last arrived (monotonic)
        self.wanted: dict[Key, Desired] = {}
        self.registered: dict[Key, Registration] = {}
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._again: set[Key] = set()
        self.leftover: dict[str, int] = {}  # service id -> connection generation
        self.session: aiohttp.ClientSession | None = None
        # Services of the bridge itself (the worker), and the connection they were made on.
        self.static: list[dict[str, Any]] = []
        self._static_generation = 0
        self._static_task: asyncio.Task[None] | None = None

    # -- inputs (on the event loop) -----------------------------------------------------

    def observe(self, body: dict[str, Any]) -> None:
        key = (body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])
        previous = self.bodies.get(key) or {}
        self.bodies[key] = body
        self.seen[key] = time.monotonic()
        registration = self.registered.get(key)
        if registration and _revision(previous) != _revision(body):
            for pair in registration.closers:
                pair.forget_metadata()
        want = desired(body, self.endpoints, self.workspace)
        if want is None:
            self.wanted.pop(key, None)
        else:
            self.wanted[key] = want
        self.kick(key)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        key = (kind, namespace, name)
        self.bodies.pop(key, None)
        self.seen.pop(key, None)
        self.wanted.pop(key, None)
        self.kick(key)

    def after_fresh_connection(self) -> None:
        """A new Hypha client holds none of the old registrations: converge everything."""
        for key in {*self.wanted, *self.registered}:
            self.kick(key)
        if self.static:
            self._static_task = asyncio.create_task(self._register_static())

    async def _register_static(self) -> None:
        generation = self.hypha.generation
        if not self.static or self._static_generation == generation or self.hypha.server is None:
            return
        try:
            for definition in self.static:
                await asyncio.wait_for(self.hypha.register(definition), timeout=30)
        except Exception as err:  # retried on the next round
            logger.warning("cannot register the bridge's own services yet: %s", _text(err))
            return
        self._static_generation = generation
        logger.info("registered %s", ", ".join(d["id"] for d in self.static))

    # -- convergence --------------------------------------------------------------------

    def kick(self, key: Key) -> None:
        """Converge ``key`` now, or once more after the round already running for it."""
        task = self._tasks.get(key)
        if task is not None and not task.done():
            self._again.add(key)
            return
        self._tasks[key] = asyncio.create_task(self._converge(key), name=f"register {key}")

    async def run(self, prune_every: int = 2) -> None:
        """Open the HTTP session and retry what has not converged, every few seconds; every
        ``prune_every`` rounds, drop resources deleted while the watch was reconnecting (a
        re-list after an API server restart reports what exists, not what went away, so
        their services would stay in Hypha until then)."""
        self.session = aiohttp.ClientSession()
        try:
            for round_ in itertools.count(1):
                await asyncio.sleep(self.resync_seconds)
                if round_ % prune_every == 0:
                    await self._prune()
                for key in {*self.wanted, *self.registered}:
                    if not self._converged(key):
                        self.kick(key)
                await self._register_static()
                for service_id, generation in list(self.leftover.items()):
                    await self._remove([service_id], generation)
        finally:
            await self.session.close()

    async def _prune(self) -> None:
        listed_at = time.monotonic()
        try:
            existing = await asyncio.to_thread(self.existing, list(self.bodies))
        except Exception as err:  # best effort; tried again next time
            logger.warning("cannot list the watched resources: %s", _text(err))
            return
        for key in list(self.bodies):
            if key not in existing and self.seen.get(key, 0.0) < listed_at:
                self.forget(*key)

    def _converged(self, key: Key) -> bool:
        registration = self.registered.get(key)
        if registration is None:
            return key not in self.wanted
        return (
            registration.want == self.wanted.get(key)
            and registration.generation == self.hypha.generation
        )

    async def _converge(self, key: Key) -> None:
        try:
            while True:
                self._again.discard(key)
                await self._step(key)
                if key not in self._again:
                    return
        finally:
            self._tasks.pop(key, None)

    async def _step(self, key: Key) -> None:
        if self.hypha.server is None or self.session is None:
            return  # not connected yet: the round after connecting converges it
        registration = self.registered.get(key)
        if registration is not None and not self._converged(key):
            await self._unregister(key, registration)
        want = self.wanted.get(key)
        if want is not None and key not in self.registered:
            await self._register(key, want)

    async def _unregister(self, key: Key, registration: Registration) -> None:
        del self.registered[key]
        await self._remove(registration.service_ids, registration.generation)
        await _close(registration)
        logger.info("unregistered %s %s/%s", *key)

    async def _remove(self, service_ids: list[str], generation: int) -> None:
        """Unregister ``service_ids`` made on connection ``generation``; what fails is kept
        in ``leftover`` and tried again every round, while that connection lasts (a fresh
        connection holds none of them)."""
        for service_id in service_ids:
            self.leftover.pop(service_id, None)
            if generation != self.hypha.generation:
                continue
            try:
                await asyncio.wait_for(self.hypha.unregister(service_id), timeout=10)
            except Exception as err:
                if "not found" in str(err).lower():
                    continue  # never made, or gone already: nothing to remove
                logger.info("unregistering %s failed, will retry: %s", service_id, _text(err))
                self.leftover[service_id] = generation

    async def _register(self, key: Key, want: Desired) -> None:
        generation = self.hypha.generation
        closers: list[TritonPair] = []
        ids: list[str] = []
        try:
            definitions, closers = await self._build(key, want)
            for definition in definitions:
                # Counted as made before the call returns: a timeout may come after Hypha
                # registered it.
                ids.append(definition["id"])
                if definition.get("type") != "asgi":
                    definition = services.with_load(definition)
                await asyncio.wait_for(self.hypha.register(definition), timeout=30)
            if self.hypha.generation != generation:
                raise ConnectionError("the Hypha connection was renewed while registering")
        except Exception as err:  # undone, and retried on a later round
            REGISTRATION_ERRORS.labels(want.kind).inc()
            logger.warning("cannot register %s %s/%s yet: %s", *key, _text(err))
            await self._remove(ids, generation)
            for pair in closers:
                await pair.close()
            return
        self.registered[key] = Registration(want, generation, ids, closers)
        logger.info("registered %s %s/%s as %s", *key, ", ".join(ids))

    async def _build(
        self, key: Key, want: Desired
    ) -> tuple[list[dict[str, Any]], list[TritonPair]]:
        assert self.session is not None
        limits = self.limits

        def get_status() -> dict[str, Any]:
            status = (self.bodies.get(key) or {}).get("status") or {}
            return {k: status[k] for k in STATUS_FIELDS if k in status}

        if want.kind == "BioEngineApp":
            client = AppClient(want.endpoints[0], self.session, limits.call_timeout)
            description = await client.describe(limits.discovery_timeout)
            found = [
                services.app_service(
                    want, client, description, get_status, self._dataset_tokens(want)
                )
            ]
            if description.get("frontend"):
                found.append(services.app_frontend_service(want, client))
            return found, []
        if want.kind == "ModelRunner":
            pair = TritonPair(list(want.endpoints), limits.call_timeout)
            return [services.runner_service(want, pair, get_status)], [pair]
        if self.signing_key is None:
            raise LookupError("the bridge has no dataset token signing key (--signing-key-file)")
        dataset = DatasetClient(
            want.endpoints[0],
            want.dataset_id or want.name,
            self.signing_key,
            self.session,
            limits.call_timeout,
        )
        manifest = {**self.bodies[key]["spec"]["manifest"], "id": want.dataset_id}
        return [
            services.dataset_service(want, dataset, manifest, get_status, limits.max_read_bytes),
            services.dataset_http_service(want, dataset),
        ], []

    def _dataset_tokens(self, want: Desired) -> services.DatasetTokens:
        """For each call of ``want``'s app, the caller's tokens for its datasets that serve
        now: minted as the dataset's server recognizes the caller (id, or the email its list
        names), or as the caller's id when it does not list them (the server refuses then,
        and the app sees why)."""
        ttl = int(self.limits.call_timeout) + TOKEN_MARGIN_SECONDS

        def for_caller(context: dict[str, Any] | None) -> dict[str, str]:
            found: dict[str, str] = {}
            for name in want.datasets:
                dataset = self.wanted.get(("BioEngineDataset", want.namespace, name))
                if dataset is None or self.signing_key is None:
                    continue
                try:
                    user = access.authorize(dataset.authorized_users, context, name)
                except PermissionError:
                    user = access.caller_id(context)
                found[name] = tokens.mint(
                    self.signing_key,
                    user=user,
                    dataset=dataset.dataset_id or name,
                    ttl_seconds=ttl,
                )
            return found

        return for_caller

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *filter(None, [self._static_task])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for key, registration in list(self.registered.items()):
            await self._unregister(key, registration)

    def collector(self) -> metrics.Computed:
        return metrics.Computed(
            (
                "bioengine_bridge_services",
                "Resources registered as Hypha services.",
                ("kind",),
                self._services_by_kind,
            )
        )

    def _services_by_kind(self) -> dict[tuple[str, ...], float]:
        counts: dict[tuple[str, ...], float] = {}
        for kind, _, _ in list(self.registered):
            counts[(kind,)] = counts.get((kind,), 0) + 1
        return counts


def _kube_existing(keys: list[Key]) -> set[Key]:
    return kube.existing(API_VERSION, keys)


def _text(err: BaseException) -> str:
    """An error's message, or its repr when it has none (a bare TimeoutError)."""
    return str(err) or repr(err)


def _revision(body: dict[str, Any]) -> str | None:
    return (body.get("status") or {}).get("revision")


async def _close(registration: Registration) -> None:
    for pair in registration.closers:
        with contextlib.suppress(Exception):  # closing a dead channel may fail; nothing to keep
            await pair.close()
