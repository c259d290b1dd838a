"""The log and metrics flags of the operator's and the bridge's command lines, apart from
either, so that each process imports only its own code."""

from __future__ import annotations

import argparse
import os

from bioengine_operator import logs, metrics


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``--log-format``, ``-v`` and ``--metrics-address`` (with their environment variables,
    which the chart sets)."""
    env = os.environ.get
    parser.add_argument(
        "--log-format", choices=logs.FORMATS, default=env("BIOENGINE_LOG_FORMAT", "text")
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--metrics-address",
        default=env("BIOENGINE_METRICS_ADDRESS"),
        help="serve Prometheus metrics at http://<address>/metrics, e.g. 0.0.0.0:9090",
    )


def start(args: argparse.Namespace) -> None:
    """Configure logging and serve the metrics, as the flags say."""
    logs.configure(args.log_format, args.verbose)
    if args.metrics_address:
        metrics.serve(args.metrics_address)
