"""Keeps the registered Hypha services equal to the desired ones.

Watch events only record what each resource wants (:func:`desired.desired`) and wake the
sync loop; the loop registers what is missing or changed and unregisters what is no longer
wanted. A registration that fails (an app whose ingress does not answer yet, Hypha down)
is retried on the next round, so the loop converges however events and failures interleave.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
from typing import Any

import aiohttp

from bioengine_operator.bridge import services
from bioengine_operator.bridge.backends import AppClient, DatasetClient, TritonPair
from bioengine_operator.bridge.desired import Desired, desired
from bioengine_operator.bridge.endpoints import Endpoints
from bioengine_operator.bridge.hypha import HyphaConnection
from bioengine_operator.builders import dataset as dataset_builder
from bioengine_operator.builders import meta
from bioengine_operator.controllers import kube

logger = logging.getLogger(__name__)
Key = tuple[str, str, str]
STATUS_FIELDS = ("phase", "ready", "serviceId", "conditions", "endpoint")


@dataclasses.dataclass
class Registration:
    want: Desired
    service_ids: list[str]
    closers: list[Any]


class Registry:
    def __init__(
        self,
        hypha: HyphaConnection,
        endpoints: Endpoints,
        workspace: str,
        call_timeout: float,
        resync_seconds: float = 5.0,
    ) -> None:
        self.hypha, self.endpoints, self.workspace = hypha, endpoints, workspace
        self.call_timeout, self.resync_seconds = call_timeout, resync_seconds
        self.bodies: dict[Key, dict[str, Any]] = {}
        self.wanted: dict[Key, Desired] = {}
        self.registered: dict[Key, Registration] = {}
        self.wakeup = asyncio.Event()
        self.lock = asyncio.Lock()
        self.session: aiohttp.ClientSession | None = None

    # -- inputs ------------------------------------------------------------------------

    def observe(self, body: dict[str, Any]) -> None:
        key = (body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])
        previous = self.bodies.get(key) or {}
        self.bodies[key] = body
        registration = self.registered.get(key)
        if registration and _revision(previous) != _revision(body):
            for closer in registration.closers:
                if isinstance(closer, TritonPair):
                    closer.forget_metadata()
        want = desired(body, self.endpoints, self.workspace)
        if want is None:
            self.wanted.pop(key, None)
        else:
            self.wanted[key] = want
        self.wakeup.set()

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self.bodies.pop((kind, namespace, name), None)
        self.wanted.pop((kind, namespace, name), None)
        self.wakeup.set()

    async def after_fresh_connection(self) -> None:
        """A new Hypha client holds none of the old registrations: register all again."""
        async with self.lock:
            for registration in self.registered.values():
                await _close(registration)
            self.registered.clear()
        self.wakeup.set()

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        self.session = aiohttp.ClientSession()
        try:
            while True:
                with contextlib.suppress(TimeoutError):  # a periodic round retries failures
                    await asyncio.wait_for(self.wakeup.wait(), timeout=self.resync_seconds)
                self.wakeup.clear()
                await self.sync()
        finally:
            await self.session.close()

    async def sync(self) -> None:
        if self.hypha.server is None:
            return
        async with self.lock:
            for key in list(self.registered):
                if self.registered[key].want != self.wanted.get(key):
                    await self._unregister(key)
            for key, want in list(self.wanted.items()):
                if key not in self.registered:
                    await self._register(key, want)

    async def _unregister(self, key: Key) -> None:
        registration = self.registered.pop(key)
        for service_id in registration.service_ids:
            try:
                await self.hypha.unregister(service_id)
            except Exception as err:  # already gone with a dropped connection
                logger.info("unregistering %s: %s", service_id, err)
        await _close(registration)
        logger.info("unregistered %s %s/%s", *key)

    async def _register(self, key: Key, want: Desired) -> None:
        try:
            definitions, closers = await self._build(key, want)
            ids = [await self.hypha.register(d) for d in definitions]
        except Exception as err:  # retried on the next round
            logger.warning("cannot register %s %s/%s yet: %s", *key, err)
            return
        self.registered[key] = Registration(want, ids, closers)
        logger.info("registered %s %s/%s as %s", *key, ", ".join(ids))

    async def _build(self, key: Key, want: Desired) -> tuple[list[dict[str, Any]], list[Any]]:
        assert self.session is not None

        def get_status() -> dict[str, Any]:
            status = (self.bodies.get(key) or {}).get("status") or {}
            return {k: status[k] for k in STATUS_FIELDS if k in status}

        if want.kind == "BioEngineApp":
            client = AppClient(want.endpoints[0], self.session, self.call_timeout)
            methods = await client.describe()
            return [services.app_service(want, client, methods, get_status)], []
        if want.kind == "ModelRunner":
            pair = TritonPair(list(want.endpoints), self.call_timeout)
            return [services.runner_service(want, pair, get_status)], [pair]
        body = self.bodies[key]
        owner = meta.Owner.from_body(body)
        key_bytes = await asyncio.to_thread(_signing_key, owner)
        client = DatasetClient(
            want.endpoints[0],
            want.dataset_id or want.name,
            key_bytes,
            self.session,
            self.call_timeout,
        )
        manifest = {**body["spec"]["manifest"], "id": want.dataset_id}
        return [
            services.dataset_service(want, client, manifest, get_status),
            services.dataset_http_service(want, client),
        ], []

    async def close(self) -> None:
        async with self.lock:
            for key in list(self.registered):
                await self._unregister(key)


def _revision(body: dict[str, Any]) -> str | None:
    return (body.get("status") or {}).get("revision")


def _signing_key(owner: meta.Owner) -> bytes:
    secret = kube.get("v1", "Secret", owner.namespace, dataset_builder.key_secret_name(owner))
    if secret is None:
        raise LookupError(f"no signing key Secret for dataset {owner.namespace}/{owner.name}")
    return base64.b64decode(secret["data"][dataset_builder.KEY_FIELD]).rstrip(b"\r\n")


async def _close(registration: Registration) -> None:
    for closer in registration.closers:
        try:
            await closer.close()
        except Exception as err:  # closing a dead channel may fail; nothing to keep
            logger.debug("closing a backend client: %s", err)
