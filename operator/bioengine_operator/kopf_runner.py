"""How the operator and the bridge run kopf: shared settings and the one entry into it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base for processes that register only event handlers: none.

    kopf deep-copies every object it is told about to diff it against the last handled
    state, which only change handlers (``on.create``/``on.update``) use; at hundreds of
    objects and their children that copy was about a sixth of the operator's CPU (py-spy).
    With no change handler registered, nothing reads it and nothing is stored on the
    objects either way.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def configure_watching(settings: kopf.OperatorSettings) -> None:
    """kopf settings the operator and the bridge share.

    Watches that silently stop delivering events are a known kopf failure mode without
    explicit timeouts (nolar/kopf#585, #957): reconnect well within the server's limit.
    """
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.persistence.diffbase_storage = NoDiffBase()


def run(namespaces: list[str], liveness: str | None) -> None:
    """Run the registered handlers: one process per cluster, so no peering (standalone)."""
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
