"""The bridge's connection to Hypha, kept alive across Hypha restarts.

hypha-rpc reconnects by itself and re-registers the services it holds, but it gives up for
good when the server refuses the reconnection (e.g. the bridge's workspace vanished with a
restarted in-memory server). A probe therefore checks the connection every second; after
two failures the bridge drops the client and connects afresh, and the registry re-registers
everything. Either way services are back within a few seconds of Hypha answering again.

WebSocket per-message deflate is switched off on the bridge's connection: for array
payloads it costs several times the transfer it saves (measured in ``bench/bridge.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from hypha_rpc import connect_to_server, websocket_client

logger = logging.getLogger(__name__)


def disable_compression() -> None:
    """Make hypha-rpc open its WebSockets without permessage-deflate.

    hypha-rpc has no option for it, so this wraps its (private) connect-arguments hook; if a
    future hypha-rpc renames it, the bridge still works, only slower for large payloads.
    """
    cls = websocket_client.WebsocketRPCConnection
    original = getattr(cls, "_ws_connect_kwargs", None)
    if original is None or getattr(original, "_bioengine_no_deflate", False):
        if original is None:
            logger.warning("cannot disable WebSocket compression in this hypha-rpc version")
        return

    def without_deflate(self: Any) -> dict[str, Any]:
        return {**original(self), "compression": None}

    without_deflate._bioengine_no_deflate = True  # type: ignore[attr-defined]
    cls._ws_connect_kwargs = without_deflate


# Connection refusals that a token allowed to create workspaces can fix by itself.
WORKSPACE_ERRORS = ("does not exist", "does not match the specified workspace")
WORKSPACE_TOKEN_TTL = 30 * 24 * 3600  # made anew on every fresh connection


@dataclasses.dataclass
class Settings:
    server_url: str
    workspace: str
    token: str = dataclasses.field(repr=False)  # never printed
    client_id: str = "bioengine-bridge"
    method_timeout: float = 30.0


class HyphaConnection:
    def __init__(self, settings: Settings, on_fresh: Callable[[], Awaitable[None]]) -> None:
        self.settings = settings
        self.on_fresh = on_fresh  # re-register everything after a fresh connection
        self.server: Any = None
        self.generation = 0  # bumped per fresh connection

    def _config(self, workspace: str | None, token: str) -> dict[str, Any]:
        config = {
            "server_url": self.settings.server_url,
            "token": token,
            "client_id": self.settings.client_id,
            "method_timeout": self.settings.method_timeout,
        }
        return {**config, "workspace": workspace} if workspace else config

    async def connect(self) -> None:
        workspace = self.settings.workspace
        try:
            self.server = await connect_to_server(self._config(workspace, self.settings.token))
        except Exception as err:
            # A user token of the bridge's own (the chart mints one with the bundled server)
            # for a workspace that does not exist yet, or that an in-memory server lost in a
            # restart.
            if not any(text in str(err) for text in WORKSPACE_ERRORS):
                raise
            token = await self._workspace_token()
            self.server = await connect_to_server(self._config(workspace, token))
        self.generation += 1
        logger.info("connected to Hypha %s, workspace %s", self.settings.server_url, workspace)

    async def _workspace_token(self) -> str:
        """Make sure the workspace exists (the bridge's user then owns it), and get a token
        for it."""
        workspace = self.settings.workspace
        owner = await connect_to_server(self._config(None, self.settings.token))
        try:
            try:
                await owner.create_workspace(
                    {
                        "id": workspace,
                        "persistent": True,
                        "description": "BioEngine services registered by the bioengine-bridge",
                    },
                    overwrite=False,
                )
                logger.info("created Hypha workspace %s", workspace)
            except Exception as err:  # it exists already: fine
                logger.debug("workspace %s not created: %s", workspace, err)
            return str(
                await owner.generate_token(
                    {
                        "workspace": workspace,
                        "permission": "admin",
                        "expires_in": WORKSPACE_TOKEN_TTL,
                    }
                )
            )
        finally:
            await owner.disconnect()

    async def _alive(self) -> bool:
        try:
            await asyncio.wait_for(self.server.echo("ping"), timeout=2)
        except Exception:  # any failure means: not usable now
            return False
        return True

    async def keep_alive(self, interval: float = 1.0) -> None:
        """Run forever: connect, probe, and reconnect from scratch when the client is stuck."""
        if self.server is None:
            await self._reconnect()
        failures = 0
        while True:
            await asyncio.sleep(interval)
            if self.server is not None and await self._alive():
                failures = 0
                continue
            failures += 1
            if failures < 2:
                continue
            await self._reconnect()
            failures = 0

    async def _reconnect(self) -> None:
        old, self.server = self.server, None
        if old is not None:
            try:
                await asyncio.wait_for(old.disconnect(), timeout=2)
            except Exception as err:  # the old client may be half dead; it is dropped anyway
                logger.debug("dropping the old Hypha client: %s", err)
        try:
            await self.connect()
        except Exception as err:
            logger.warning("Hypha not reachable yet: %s", err)
            return
        await self.on_fresh()

    async def register(self, service: dict[str, Any]) -> str:
        info = await self.server.register_service(service, {"overwrite": True})
        return str(info["id"])

    async def unregister(self, service_id: str) -> None:
        await self.server.unregister_service(service_id)
