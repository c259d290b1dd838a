"""Where the backends of a resource are, seen from the bridge.

In a cluster the answer comes from the resource's status, where the operator writes each
backend's in-cluster address (so the bridge needs none of the operator's builders). Under
kwok, pods have no network, so tests run the real backends on
loopback and tell the bridge where they are with an endpoints file: the one seam between
the bridge and the simulated pods. Its JSON maps ``<kind>/<namespace>/<name>`` to a URL
(apps, datasets) or to ``{"blue": "host:port", "green": "host:port"}`` (model runners);
``raydashboard/<namespace>/<name>`` to an app's Ray dashboard. A ``*`` name matches every
resource of that kind and namespace, with ``{name}`` in its URL replaced by the resource's
(apps deployed while the bridge runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bioengine_operator.api.status import COLORS


class Endpoints:
    def __init__(self, overrides: dict[str, Any] | None = None) -> None:
        self.overrides = overrides or {}

    @classmethod
    def from_file(cls, path: Path | None) -> Endpoints:
        return cls(json.loads(path.read_text()) if path else None)

    def _override(self, kind: str, namespace: str, name: str) -> Any:
        found = self.overrides.get(f"{kind.lower()}/{namespace}/{name}")
        if found is not None:
            return found
        pattern = self.overrides.get(f"{kind.lower()}/{namespace}/*")
        return pattern.replace("{name}", name) if isinstance(pattern, str) else pattern

    def app(self, body: dict[str, Any]) -> str | None:
        meta_ = body["metadata"]
        found = self._override("BioEngineApp", meta_["namespace"], meta_["name"])
        return found or (body.get("status") or {}).get("endpoint")

    def dataset(self, body: dict[str, Any]) -> str | None:
        meta_ = body["metadata"]
        found = self._override("BioEngineDataset", meta_["namespace"], meta_["name"])
        return found or (body.get("status") or {}).get("endpoint")

    def runner(self, body: dict[str, Any]) -> tuple[str | None, ...]:
        """Each color's gRPC address, as the operator writes it into the status (None until
        it has)."""
        meta = body["metadata"]
        found = self._override("ModelRunner", meta["namespace"], meta["name"]) or {}
        status = body.get("status") or {}
        return tuple(found.get(c) or (status.get(c) or {}).get("endpoint") for c in COLORS)

    def dashboard(self, body: dict[str, Any]) -> str | None:
        """The Ray dashboard of an app (Serve's replicas and their logs), from its status."""
        meta = body["metadata"]
        found = self._override("RayDashboard", meta["namespace"], meta["name"])
        return found or (body.get("status") or {}).get("dashboard")
