"""Prometheus metrics of the operator, the bridge and the dataset server.

Each process defines its metrics in its own module with the ``bioengine_`` prefix and serves
them with :func:`serve` on its own port (the dataset server on its data port, under
``/metrics``). The chart annotates the pods for scraping and can create a ServiceMonitor.
"""

from __future__ import annotations

import urllib.parse

import prometheus_client

# Call latencies from a millisecond (a small model) to minutes (an app processing a volume).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


def serve(address: str) -> None:
    """Serve ``/metrics`` on ``address`` (``host:port``) from a background thread."""
    parsed = urllib.parse.urlsplit(f"//{address}")
    if parsed.port is None:
        raise ValueError(f"metrics address {address!r} needs a port, e.g. 0.0.0.0:9090")
    prometheus_client.start_http_server(parsed.port, addr=parsed.hostname or "0.0.0.0")
