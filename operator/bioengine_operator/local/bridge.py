"""The Hypha bridge inside ``bioengine up``: the cluster bridge's registry, fed by the
local stack instead of a Kubernetes watch.

The registry is asyncio code (hypha-rpc); the stack that starts processes is plain blocking
code. The registry therefore runs on an event loop in a thread of its own, and the stack
hands it resource bodies (with the status the local processes earn them) through
thread-safe calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from bioengine_operator.bridge import hypha
from bioengine_operator.bridge.endpoints import Endpoints
from bioengine_operator.bridge.registry import Key, Limits, Registry
from bioengine_operator.dataserver import tokens

T = TypeVar("T")


class LocalBridge:
    def __init__(self, settings: hypha.Settings, signing_key: tokens.PrivateKey) -> None:
        hypha.disable_compression()
        self.loop = asyncio.new_event_loop()
        self.endpoints = Endpoints()  # filled in as the backends start
        self.connection = hypha.HyphaConnection(settings, on_fresh=self._fresh)
        self.registry = Registry(
            self.connection,
            self.endpoints,
            settings.workspace,
            Limits(),
            signing_key,
            resync_seconds=1.0,
            # Nothing goes away behind its back: the stack forgets resources itself.
            existing=set,
        )
        self.thread = threading.Thread(target=self.loop.run_forever, name="bridge", daemon=True)
        self.thread.start()
        self.tasks = [
            self._call(self._start(self.registry.run())),
            self._call(self._start(self.connection.keep_alive())),
        ]

    async def _fresh(self) -> None:
        self.registry.after_fresh_connection()

    @staticmethod
    async def _start(coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.create_task(coroutine)

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def observe(self, body: dict[str, Any], endpoint: Any) -> None:
        """Record ``body`` (with its status) and where its backend answers."""
        meta = body["metadata"]
        key = f"{body['kind'].lower()}/{meta['namespace']}/{meta['name']}"
        self.endpoints.overrides[key] = endpoint
        self.loop.call_soon_threadsafe(self.registry.observe, body)

    def add_service(self, definition: dict[str, Any]) -> None:
        """Register a service of the bridge's own (the worker) with the others, now and on
        every fresh connection."""
        self.loop.call_soon_threadsafe(self.registry.static.append, definition)

    def forget(self, key: Key) -> None:
        self.loop.call_soon_threadsafe(self.registry.forget, *key)

    def registered(self) -> dict[Key, list[str]]:
        """The services registered now, by resource (on the live connection)."""

        async def snapshot() -> dict[Key, list[str]]:
            generation = self.connection.generation
            return {
                key: list(r.service_ids)
                for key, r in self.registry.registered.items()
                if r.generation == generation and self.connection.server is not None
            }

        return self._call(snapshot())

    def stop(self) -> None:
        """Unregister every service, disconnect, and end the thread."""

        async def close() -> None:
            for task in self.tasks:
                task.cancel()
            await self.registry.close()
            if self.connection.server is not None:
                await self.connection.server.disconnect()

        try:
            self._call(close(), timeout=30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)
