"""The bridge's Hypha connection against a real Hypha server (no cluster needed)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypha_rpc import connect_to_server

from bioengine_devtools import tools
from bioengine_operator.bridge import hypha
from bioengine_operator.local import servers


@pytest.fixture
def server(tmp_path: Path) -> Iterator[servers.HyphaServer]:
    running = servers.HyphaServer(tmp_path, secrets.token_urlsafe(32), secrets.token_urlsafe(48))
    running.start()
    try:
        yield running
    finally:
        running.stop()


async def fresh_connection(
    server: servers.HyphaServer, workspace: str, token: str
) -> hypha.HyphaConnection:
    async def nothing() -> None:
        return None

    connection = hypha.HyphaConnection(
        hypha.Settings(server.url, workspace, token, "bioengine-bridge"), on_fresh=nothing
    )
    await connection.connect()
    return connection


def charts_bridge_token(server: servers.HyphaServer, tmp_path: Path) -> str:
    """Run the bundled-Hypha chart's init container command here: it mints the bridge's token
    from the server's JWT secret (the Hypha image's python is the hypha venv's here)."""
    rendered = subprocess.run(
        [
            str(tools.binary("helm")),
            "template",
            "bioengine",
            str(tools.REPO_ROOT / "charts" / "bioengine-operator"),
            "--kube-version=1.34.10",
            "--set=hypha.enabled=true",
            "--set=bridge.hypha.workspace=bioengine-lab",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    bridge = next(
        o
        for o in yaml.safe_load_all(rendered)
        if o and o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-bridge")
    )
    (init,) = bridge["spec"]["template"]["spec"]["initContainers"]
    env = {e["name"]: e.get("value") for e in init["env"]}
    token_file = tmp_path / "token"
    env.update(
        HYPHA_JWT_SECRET=server.jwt_secret,
        TOKEN_FILE=str(token_file),
        HOME=str(tmp_path),
        PATH=f"{servers.venv('hypha') / 'bin'}:{os.environ['PATH']}",
    )
    subprocess.run([*init["command"], *init["args"]], env=env, check=True, timeout=120)
    return token_file.read_text()


async def found(caller: Any, service_id: str, timeout: float = 30) -> Any:
    """The service once another client can get it: right after a server restart, on a busy
    machine, a registration in a workspace made moments ago takes a moment to be listed."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await caller.get_service(service_id)
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


def test_the_charts_bridge_token_is_a_user_token_that_makes_its_workspace(
    server: servers.HyphaServer, tmp_path: Path
) -> None:
    """The chart's bundled server keeps workspaces in memory: after a restart the bridge's
    workspace is gone, and the bridge makes it again, with the token of its own Hypha user
    (never the root token)."""
    token = charts_bridge_token(server, tmp_path)

    async def scenario() -> None:
        connection = await fresh_connection(server, "bioengine-lab", token)
        assert connection.server.config.workspace == "bioengine-lab"
        assert "admin" not in connection.server.config.user.get("roles", [])

        async def ping(context: dict[str, Any] | None = None) -> str:
            return "pong"

        await connection.register(
            {"id": "svc", "config": {"visibility": "public", "require_context": True}, "ping": ping}
        )
        caller = await connect_to_server({"server_url": server.url})
        alice = await connect_to_server(
            {"server_url": server.url, "token": server.token("alice", "alice@example.org")}
        )
        try:
            service = await found(caller, "bioengine-lab/svc")
            assert await service.ping() == "pong"
            # Not an admin: another user's workspace stays out of reach.
            with pytest.raises(Exception, match="PermissionError"):
                await connection.server.generate_token({"workspace": alice.config.workspace})
        finally:
            for client in (caller, alice, connection.server):
                await client.disconnect()

    asyncio.run(scenario())
    server.stop()
    server.start()  # in memory: the workspace is gone, the JWT secret (and so the token) stays
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
