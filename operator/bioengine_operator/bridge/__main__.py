"""``bioengine-bridge``: register every ready BioEngine resource as a Hypha service.

Configuration comes from flags or the environment (the chart sets the environment); the
Hypha token comes only from ``HYPHA_TOKEN`` (a Secret in the chart) or ``--token-file``,
and is never logged. The dataset token signing key is a file (a Secret the chart mounts):
the bridge reads no Secret through the Kubernetes API. It writes to the cluster only through
its worker service (``--worker-namespace``): uploads as ConfigMaps and deploys as
BioEngineApps, in that one namespace; the rest of the bridge only watches.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
from pathlib import Path
from typing import Any

import kopf
import prometheus_client

from bioengine_operator import kopf_runner, observability
from bioengine_operator.api.base import DNS_LABEL as DNS_LABEL_PATTERN
from bioengine_operator.api.base import GROUP, VERSION
from bioengine_operator.api.crds import KINDS
from bioengine_operator.bridge import access, hypha, signin
from bioengine_operator.bridge.endpoints import Endpoints
from bioengine_operator.bridge.registry import Limits, Registry
from bioengine_operator.bridge.worker import KubeObjects, Worker
from bioengine_operator.dataserver import tokens

logger = logging.getLogger(__name__)
DNS_LABEL = re.compile(DNS_LABEL_PATTERN)


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
        "--cluster-name",
        default=env("BIOENGINE_CLUSTER_NAME", ""),
        help="this cluster's name, distinct per cluster when several bridges share a workspace: "
        "it names the bridge's Hypha client and its worker service (BIOENGINE_CLUSTER_NAME)",
    )
    parser.add_argument(
        "--client-id",
        default=env("BIOENGINE_BRIDGE_CLIENT_ID"),
        help="Hypha client id (default bioengine-bridge[-<cluster name>])",
    )
    parser.add_argument(
        "--worker-namespace",
        default=env("BIOENGINE_WORKER_NAMESPACE"),
        help="offer the BioEngine worker service, deploying apps to this namespace "
        "(BIOENGINE_WORKER_NAMESPACE); without it there is no worker service",
    )
    parser.add_argument(
        "--worker-admins",
        default=env("BIOENGINE_WORKER_ADMINS", ""),
        help="comma-separated Hypha user ids or emails who may upload, deploy and stop apps "
        "through the worker (BIOENGINE_WORKER_ADMINS)",
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
        "--signing-key-file",
        type=Path,
        default=env("BIOENGINE_SIGNING_KEY_FILE"),
        help="PEM private key (EC P-256) that signs dataset tokens; without it datasets are "
        "not registered",
    )
    parser.add_argument(
        "--call-timeout",
        type=float,
        default=float(env("BIOENGINE_BRIDGE_CALL_TIMEOUT", str(Limits.call_timeout))),
        help="seconds a call to an app, runner or dataset may take",
    )
    parser.add_argument(
        "--discovery-timeout",
        type=float,
        default=float(env("BIOENGINE_BRIDGE_DISCOVERY_TIMEOUT", str(Limits.discovery_timeout))),
        help="seconds an app may take to list its methods before its registration is retried",
    )
    parser.add_argument(
        "--max-read-bytes",
        type=int,
        default=int(env("BIOENGINE_BRIDGE_MAX_READ_BYTES", str(Limits.max_read_bytes))),
        help="largest answer of a dataset's read_file (stream_file has no limit)",
    )
    parser.add_argument("--liveness", default=env("BIOENGINE_LIVENESS"))
    observability.add_flags(parser)
    args = parser.parse_args(argv)
    if not args.server_url or not args.workspace:
        parser.error(
            "--server-url and --workspace (or HYPHA_SERVER_URL, HYPHA_WORKSPACE) are required"
        )
    if args.cluster_name and not DNS_LABEL.match(args.cluster_name):
        parser.error(f"--cluster-name: {args.cluster_name!r} must be a DNS label (a-z, 0-9, -)")
    if not args.client_id:
        args.client_id = "-".join(filter(None, ("bioengine-bridge", args.cluster_name)))
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
    registry: Registry

    async def fresh() -> None:
        registry.after_fresh_connection()

    connection = hypha.HyphaConnection(
        hypha.Settings(args.server_url, args.workspace, read_token(args), args.client_id),
        on_fresh=fresh,
    )
    key = (
        tokens.load_private_key(args.signing_key_file.read_bytes())
        if args.signing_key_file
        else None
    )
    limits = Limits(args.call_timeout, args.discovery_timeout, args.max_read_bytes)
    endpoints = Endpoints.from_file(args.endpoints_file)
    registry = Registry(connection, endpoints, args.workspace, limits, key)
    registry.static.append(signin.definition())  # how people open the workspace's pages
    if args.worker_namespace:
        worker = Worker(
            objects=KubeObjects(args.worker_namespace),
            workspace=args.workspace,
            cluster_name=args.cluster_name,
            client_id=args.client_id,
            admins=access.user_list(args.worker_admins),
            endpoints=endpoints,
            session=lambda: registry.session,
            registered=lambda name: (
                ("BioEngineApp", args.worker_namespace, name) in registry.registered
            ),
        )
        registry.static.append(worker.definition())
    prometheus_client.REGISTRY.register(registry.collector())
    tasks: list[asyncio.Task[None]] = []

    @kopf.on.startup()
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        kopf_runner.configure_watching(settings)
        settings.posting.enabled = False  # no Events: the operator reports on its resources
        # Nor does it remove kopf's default finalizer (left by old operator versions): that
        # is the operator's; with a name of its own the bridge leaves it alone.
        settings.persistence.finalizer = f"{GROUP}/bridge"
        # Connecting runs beside the watches: resources are recorded while Hypha is still
        # out of reach, and registered as soon as it answers.
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

    async def on_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        meta = body["metadata"]
        if event.get("type") == "DELETED":
            registry.forget(body["kind"], meta["namespace"], meta["name"])
        else:
            registry.observe(dict(body))

    for kind in KINDS:
        kopf.on.event(GROUP, VERSION, kind.plural, id=f"watch-{kind.plural}")(on_event)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    observability.start(args)
    install(args)
    kopf_runner.run(args.namespace, args.liveness)


if __name__ == "__main__":
    main()
