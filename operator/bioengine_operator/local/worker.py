"""The BioEngine worker service of ``bioengine up``: the bridge's worker
(:class:`bioengine_operator.bridge.worker.Worker`, the same functions and answers) with this
machine's stack behind it instead of a namespace of a cluster.

The worker keeps uploads as ConfigMaps and applications as BioEngineApps; here they are
kept in memory, and an application applied or deleted is started or stopped by the stack
as if ``bioengine up`` had been given it (its state is what ``bioengine status`` shows).
Uploads live as long as the stack: ``bioengine down`` ends them with everything else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from bioengine_operator.bridge.uploads import WorkerError
from bioengine_operator.local import resources

if TYPE_CHECKING:
    from bioengine_operator.local.stack import LocalStack, Running


class LocalObjects:
    """The worker's objects on one machine (see :class:`bridge.worker.Objects`)."""

    namespace = resources.DEFAULT_NAMESPACE

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        # (kind, name) → body: the worker's uploads (ConfigMaps) and applications.
        self.kept: dict[tuple[str, str], dict[str, Any]] = {}

    def _running(self, kind: str, name: str) -> Running | None:
        return dict(self.stack.running).get((kind, self.namespace, name))

    def _with_status(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` as the stack shows what runs for it to the bridge (with its uid and
        status); a ConfigMap as kept; an app not running (yet): Pending."""
        running = self._running(body["kind"], body["metadata"]["name"])
        if running is not None:
            return running.body()
        return body if body["kind"] == "ConfigMap" else {**body, "status": {"phase": "Pending"}}

    async def list(
        self, api_version: str, kind: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        if kind == "BioEngineDataset":  # what `bioengine up` runs: the worker makes none
            running = sorted(dict(self.stack.running).items())
            return [r.body() for (k, _, _), r in running if k == kind]
        return [
            self._with_status(body)
            for (found, _), body in sorted(self.kept.items())
            if found == kind
            and all((body["metadata"].get("labels") or {}).get(k) == v for k, v in labels.items())
        ]

    async def get(self, api_version: str, kind: str, name: str) -> dict[str, Any] | None:
        """The worker's object, or one ``bioengine up`` was given (which the worker then
        refuses to change, as it does a BioEngineApp applied with kubectl)."""
        running = self._running(kind, name)
        if running is not None:
            return running.body()
        body = self.kept.get((kind, name))
        return None if body is None else self._with_status(body)

    async def apply(self, body: dict[str, Any]) -> None:
        kind, name = body["kind"], body["metadata"]["name"]
        if kind == "BioEngineApp":
            source = body["spec"].get("source") or {}
            names = [str((source.get("configMap") or {}).get("name"))]
            names += (source.get("zip") or {}).get("configMaps") or []
            code = [self.kept[("ConfigMap", n)] for n in names if ("ConfigMap", n) in self.kept]
            datasets = {(ns, n) for k, ns, n in dict(self.stack.running) if k == "BioEngineDataset"}
            try:
                found = resources.from_objects(
                    [*code, body], f"application {name}", running_datasets=datasets
                )
            except resources.InputError as err:
                raise WorkerError(str(err)) from None
            await asyncio.to_thread(self._locked, lambda: self.stack.apply(found, wait=False))
        self.kept[(kind, name)] = body

    async def delete(self, api_version: str, kind: str, name: str) -> None:
        self.kept.pop((kind, name), None)
        if kind == "BioEngineApp":
            key = (kind, self.namespace, name)
            await asyncio.to_thread(self._locked, lambda: self.stack.remove(key))

    def _locked(self, change: Callable[[], None]) -> None:
        """A change to the stack, once no request of the supervisor is changing it (in a
        thread: an ``up`` may hold the stack for minutes)."""
        with self.stack.lock:
            change()
