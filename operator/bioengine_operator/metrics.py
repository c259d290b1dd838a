"""Prometheus metrics of the operator, the bridge and the dataset server.

Each process defines its metrics in its own module with the ``bioengine_`` prefix and serves
them with :func:`serve` on its own port (the dataset server on its data port, under
``/metrics``). The chart annotates the pods for scraping and can create a ServiceMonitor.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence

import prometheus_client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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


Gauge = tuple[str, str, Sequence[str], Callable[[], Mapping[tuple[str, ...], float]]]


class Computed(Collector):
    """Gauges read from the process's own state at scrape time (objects by phase, registered
    services), so they can never disagree with it. Each gauge is (name, help, label names,
    a function returning value by label values)."""

    def __init__(self, *gauges: Gauge) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, documentation, labels, values in self.gauges:
            family = GaugeMetricFamily(name, documentation, labels=list(labels))
            for label_values, value in sorted(values().items()):
                family.add_metric(list(label_values), value)
            yield family
