"""How the operator and the bridge run kopf: shared settings and the one entry into it."""

from __future__ import annotations

import kopf


def configure_watching(settings: kopf.OperatorSettings) -> None:
    """kopf settings the operator and the bridge share.

    Watches that silently stop delivering events are a known kopf failure mode without
    explicit timeouts (nolar/kopf#585, #957): reconnect well within the server's limit.
    """
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60


def run(namespaces: list[str], liveness: str | None) -> None:
    """Run the registered handlers: one process per cluster, so no peering (standalone)."""
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
