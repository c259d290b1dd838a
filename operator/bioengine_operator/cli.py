"""``bioengine-operator``: run the reconcilers under kopf.

A wrapper rather than ``kopf run operator.py`` so the image has one stable entry point
whose flags (and environment variables, for the chart) are documented here.
"""

from __future__ import annotations

import argparse
import logging
import os

import kopf

from bioengine_operator import handlers
from bioengine_operator.controllers.outcome import Settings

LOG_FORMATS = {
    "plain": kopf.LogFormat.PLAIN,
    "full": kopf.LogFormat.FULL,
    "json": kopf.LogFormat.JSON,
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="bioengine-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; glob patterns allowed)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (the default without --namespace)",
    )
    parser.add_argument(
        "--liveness",
        default=env("BIOENGINE_LIVENESS"),
        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--log-format", choices=sorted(LOG_FORMATS), default=env("BIOENGINE_LOG_FORMAT", "plain")
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--image",
        default=env("BIOENGINE_OPERATOR_IMAGE", Settings.image),
        help="image of the dataset servers (the operator's own image)",
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=float(env("BIOENGINE_RESYNC_SECONDS", Settings.resync_seconds)),
        help="period of the level-triggered resync of every object",
    )
    parser.add_argument(
        "--hypha-workspace",
        default=env("BIOENGINE_HYPHA_WORKSPACE"),
        help="default Hypha workspace shown in status.serviceId",
    )
    return parser.parse_args(argv)


def configure_logging(verbose: bool, log_format: str) -> None:
    # hypha-rpc calls logging.basicConfig() when imported; without dropping that root handler
    # every line would be printed twice, once plain and once in kopf's format.
    for handler in list(logging.root.handlers):
        logging.root.removeHandler(handler)
    kopf.configure(verbose=verbose, log_format=LOG_FORMATS[log_format])
    logging.getLogger("kubernetes").setLevel(logging.WARNING)


def run_kopf(namespaces: list[str], liveness: str | None) -> None:
    """Run the registered handlers: one process per cluster, so no peering (standalone)."""
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    configure_logging(args.verbose, args.log_format)
    handlers.configure(
        Settings(
            image=args.image,
            resync_seconds=args.resync_seconds,
            hypha_workspace=args.hypha_workspace,
        )
    )
    handlers.register_all()
    run_kopf(args.namespace, args.liveness)


if __name__ == "__main__":
    main()
