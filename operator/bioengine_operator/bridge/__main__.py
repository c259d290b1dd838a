"""``bioengine-bridge``: register every ready BioEngine resource as a Hypha service.

Configuration comes from flags or the environment (the chart sets the environment); the
Hypha token comes only from ``HYPHA_TOKEN`` (a Secret in the chart) or ``--token-file``,
and is never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import kopf

from bioengine_operator import cli
from bioengine_operator.api.base import GROUP, VERSION
from bioengine_operator.api.crds import KINDS
from bioengine_operator.bridge import hypha
from bioengine_operator.bridge.endpoints import Endpoints
from bioengine_operator.bridge.registry import Registry

logger = logging.getLogger(__name__)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="bioengine-bridge", description=__doc__)
    parser.add_argument(
        "--server-url", default=env("HYPHA_SERVER_URL"), help="Hypha server URL (HYPHA_SERVER_URL)"
    )
    parser.add_argument(
        "--workspace",
        default=env("HYPHA_WORKSPACE"),
        help="Hypha workspace the services are registered in (HYPHA_WORKSPACE)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=env("HYPHA_TOKEN_FILE"),
        help="file holding the Hypha token (else HYPHA_TOKEN)",
    )
    parser.add_argument(
        "--client-id", default=env("BIOENGINE_BRIDGE_CLIENT_ID", "bioengine-bridge")
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default: all",
    )
    parser.add_argument(
        "--endpoints-file",
        type=Path,
        default=env("BIOENGINE_BRIDGE_ENDPOINTS"),
        help="test seam: backend addresses by resource (see bridge.endpoints)",
    )
    parser.add_argument(
        "--call-timeout",
        type=float,
        default=float(env("BIOENGINE_BRIDGE_CALL_TIMEOUT", "300")),
        help="seconds a call to an app, runner or dataset may take",
    )
    parser.add_argument("--liveness", default=env("BIOENGINE_LIVENESS"))
    parser.add_argument(
        "--log-format",
        choices=sorted(cli.LOG_FORMATS),
        default=env("BIOENGINE_LOG_FORMAT", "plain"),
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if not args.server_url or not args.workspace:
        parser.error(
            "--server-url and --workspace (or HYPHA_SERVER_URL, HYPHA_WORKSPACE) are required"
        )
    return args


def read_token(args: argparse.Namespace) -> str:
    token = args.token_file.read_text().strip() if args.token_file else env_token()
    if not token:
        raise SystemExit("no Hypha token: set HYPHA_TOKEN or --token-file")
    return token


def env_token() -> str:
    return os.environ.get("HYPHA_TOKEN", "").strip()


def install(args: argparse.Namespace) -> None:
    """Register kopf handlers bound to one bridge's state."""
    hypha.disable_compression()
    connection: hypha.HyphaConnection
    registry: Registry

    async def fresh() -> None:
        await registry.after_fresh_connection()

    connection = hypha.HyphaConnection(
        hypha.Settings(args.server_url, args.workspace, read_token(args), args.client_id),
        on_fresh=fresh,
    )
    registry = Registry(
        connection, Endpoints.from_file(args.endpoints_file), args.workspace, args.call_timeout
    )
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.startup()
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.posting.enabled = False  # read-only: the bridge writes nothing to the cluster
        while True:
            try:
                await connection.connect()
                break
            except Exception as err:
                logger.warning("Hypha not reachable yet (%s); retrying", err)
                await asyncio.sleep(1)
        tasks.append(asyncio.create_task(registry.run()))
        tasks.append(asyncio.create_task(connection.keep_alive()))

    @kopf.on.cleanup()
    async def stop(**_: Any) -> None:
        for task in tasks:
            task.cancel()
        await registry.close()

    @kopf.on.probe(id="services")
    def registered(**_: Any) -> int:
        return len(registry.registered)

    for kind in KINDS:

        @kopf.on.event(GROUP, VERSION, kind.plural, id=f"watch-{kind.plural}")
        def on_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
            meta = body["metadata"]
            if event.get("type") == "DELETED":
                registry.forget(body["kind"], meta["namespace"], meta["name"])
            else:
                registry.observe(dict(body))


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    cli.configure_logging(args.verbose, args.log_format)
    install(args)
    cli.run_kopf(args.namespace, args.liveness)


if __name__ == "__main__":
    main()
