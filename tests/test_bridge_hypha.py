"""The bridge's Hypha connection against a real Hypha server (no cluster needed)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypha_rpc import connect_to_server

from bioengine_devtools import servers
from bioengine_operator.bridge import hypha


@pytest.fixture
def server(tmp_path: Path) -> Iterator[servers.HyphaServer]:
    running = servers.HyphaServer(tmp_path, secrets.token_urlsafe(32), secrets.token_urlsafe(48))
    running.start()
    try:
        yield running
    finally:
        running.stop()


async def fresh_connection(server: servers.HyphaServer, workspace: str) -> hypha.HyphaConnection:
    async def nothing() -> None:
        return None

    connection = hypha.HyphaConnection(
        hypha.Settings(server.url, workspace, server.root_token, "bridge-test"), on_fresh=nothing
    )
    await connection.connect()
    return connection


def test_bridge_creates_its_missing_workspace_with_an_admin_token(
    server: servers.HyphaServer,
) -> None:
    """The chart's bundled server keeps workspaces in memory: after a restart the bridge's
    workspace is gone, and the bridge (holding the root token) makes it again."""

    async def scenario() -> None:
        connection = await fresh_connection(server, "bioengine-lab")
        assert connection.server.config.workspace == "bioengine-lab"

        async def ping(context: dict[str, Any] | None = None) -> str:
            return "pong"

        await connection.register(
            {"id": "svc", "config": {"visibility": "public", "require_context": True}, "ping": ping}
        )
        caller = await connect_to_server({"server_url": server.url})
        try:
            service = await caller.get_service("bioengine-lab/svc")
            assert await service.ping() == "pong"
        finally:
            await caller.disconnect()
            await connection.server.disconnect()

    asyncio.run(scenario())


def test_a_token_without_rights_gets_the_servers_refusal(server: servers.HyphaServer) -> None:
    """Someone else's workspace: the bridge can neither create it nor get a token for it."""

    async def scenario() -> None:
        alice = await connect_to_server(
            {"server_url": server.url, "token": server.token("alice", "alice@example.org")}
        )
        try:
            settings = hypha.Settings(
                server.url,
                alice.config.workspace,
                server.token("someone", "someone@example.org"),
                "bridge-test",
            )
            connection = hypha.HyphaConnection(settings, on_fresh=asyncio.sleep)  # never called
            with pytest.raises(Exception, match=r"PermissionError"):
                await connection.connect()
        finally:
            await alice.disconnect()

    asyncio.run(scenario())
