"""kopf handlers: thin glue from watch events to the reconcile loop.

kopf watches our three kinds and the children the operator labelled as its own (Deployments,
Services, PDBs, ConfigMaps, RayServices), keeps the children in
:data:`~bioengine_operator.kube.CACHE` for the reconcilers to read, and hands
each event to :class:`~bioengine_operator.controllers.loop.Loop`, which decides what to
reconcile when.
Only event handlers are registered: kopf then needs no finalizer (it removes the one older
operator versions added) and stores nothing on the objects.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
import prometheus_client

from bioengine_operator import kopf_runner, kube
from bioengine_operator.api.base import API_VERSION, GROUP, VERSION
from bioengine_operator.api.crds import APP, DATASET, KINDS, MODEL_RUNNER
from bioengine_operator.builders.meta import MANAGED_BY, MANAGED_BY_LABEL
from bioengine_operator.controllers import app, dataset, loop, modelrunner, outcome

logger = logging.getLogger(__name__)

RECONCILERS: dict[str, outcome.Reconciler] = {
    APP.kind: app.reconcile,
    MODEL_RUNNER.kind: modelrunner.reconcile,
    DATASET.kind: dataset.reconcile,
}
CHILD_RESOURCES = (
    ("apps/v1", "deployments"),
    ("v1", "services"),
    ("v1", "configmaps"),
    ("policy/v1", "poddisruptionbudgets"),
    ("ray.io/v1", "rayservices"),
)


def owner_of(body: kopf.Body) -> loop.Key | None:
    """The BioEngine resource controlling ``body``, as a loop key."""
    ref = kube.controller_of(dict(body))
    if ref is None or ref.get("apiVersion") != API_VERSION:
        return None
    return (ref["kind"], body["metadata"]["namespace"], ref["name"])


def register_all(settings: outcome.Settings, workers: int) -> loop.Loop:
    """Register every handler with kopf's default registry (done once, by the CLI)."""
    reconcile_loop = loop.Loop(RECONCILERS, settings, workers)
    prometheus_client.REGISTRY.register(reconcile_loop.collector())

    @kopf.on.startup()
    async def start(settings: kopf.OperatorSettings, **_: Any) -> None:
        kopf_runner.configure_watching(settings)
        reconcile_loop.start()

    @kopf.on.cleanup()
    async def stop(**_: Any) -> None:
        await reconcile_loop.stop()

    @kopf.on.probe(id="queued")
    def queued(**_: Any) -> int:
        return len(reconcile_loop.queue)

    async def resource_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event.get("type") == "DELETED":
            reconcile_loop.forget(loop.key_of(body))
        else:
            reconcile_loop.observe(dict(body))

    async def child_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        child = dict(body)
        if event.get("type") == "DELETED":
            kube.CACHE.drop(child)
        elif kube.CACHE.knows(child):
            return  # the echo of the operator's own apply (cached from its answer)
        else:
            kube.CACHE.put(child)
        owner = owner_of(body)
        if owner is not None:
            reconcile_loop.child_changed(owner)

    for kind in KINDS:
        kopf.on.event(GROUP, VERSION, kind.plural, id="observe")(resource_event)
    for api_version, plural in CHILD_RESOURCES:
        kopf.on.event(
            api_version, plural, id=f"child-{plural}", labels={MANAGED_BY_LABEL: MANAGED_BY}
        )(child_event)
    return reconcile_loop
