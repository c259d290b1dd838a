"""kopf handlers: thin glue from Kubernetes events to the reconcilers.

Every kind is reconciled, level-triggered, from four directions:

* create, resume (operator restart) and spec updates — kopf's change handlers, which retry
  with a delay when the reconciler reports a temporary problem;
* a periodic resync timer, which notices drift nothing told us about and runs the time-based
  checks (a stuck app);
* events on the children the operator labelled as its own (Deployments, Services, PDBs,
  ConfigMaps, RayServices): a child deleted or edited by hand is restored at once, and a
  Deployment that became Ready moves a blue/green update on without waiting for the timer.

One object's failure raises only inside its own handler: kopf retries that object and keeps
serving the others.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from bioengine_operator.api.base import API_VERSION, GROUP, VERSION
from bioengine_operator.api.crds import APP, DATASET, MODEL_RUNNER, Kind
from bioengine_operator.builders.meta import MANAGED_BY, MANAGED_BY_LABEL
from bioengine_operator.controllers import app, dataset, kube, modelrunner, outcome

logger = logging.getLogger(__name__)

RECONCILERS: dict[str, outcome.Reconciler] = {
    APP.kind: app.reconcile,
    MODEL_RUNNER.kind: modelrunner.reconcile,
    DATASET.kind: dataset.reconcile,
}
SETTINGS = outcome.Settings()


def configure(settings: outcome.Settings) -> None:
    global SETTINGS
    SETTINGS = settings


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Progress and diff-base in annotations under our own prefix, not in .status: the
    # status belongs to users and `kubectl get`.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    # Watches that silently stop delivering events are a known kopf failure mode without
    # explicit timeouts (nolar/kopf#585, #957): reconnect well within the server's limit.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 20
    settings.batching.error_delays = (1, 2, 5, 10, 30, 60)


@kopf.on.probe(id="reconcilers")
def probe(**_: Any) -> str:
    return ", ".join(RECONCILERS)


def _register(kind: Kind) -> None:
    resource = (GROUP, VERSION, kind.plural)
    reconciler = RECONCILERS[kind.kind]

    def changed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        outcome.run(reconciler, dict(body), SETTINGS, patch=patch)

    def resync(body: kopf.Body, **_: Any) -> None:
        # No patch here: a timer that raised for a temporary problem would only be retried,
        # and it runs again anyway.
        outcome.run(reconciler, dict(body), SETTINGS)

    kopf.on.resume(*resource, id="reconcile")(changed)
    kopf.on.create(*resource, id="reconcile")(changed)
    kopf.on.update(*resource, id="reconcile", field="spec")(changed)
    kopf.timer(*resource, id="resync", interval=SETTINGS.resync_seconds)(resync)


def owner_of(body: kopf.Body) -> tuple[str, str] | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("apiVersion") == API_VERSION:
            return ref["kind"], ref["name"]
    return None


def child_changed(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
    owner = owner_of(body)
    if owner is None or owner[0] not in RECONCILERS:
        return
    kind, name = owner
    namespace = body["metadata"]["namespace"]
    owner_body = kube.get(API_VERSION, kind, namespace, name)
    if owner_body is None or owner_body["metadata"].get("deletionTimestamp"):
        return  # the owner is gone: garbage collection removes the children
    try:
        outcome.run(RECONCILERS[kind], owner_body, SETTINGS)
    except ApiException as err:
        logger.warning(
            "reconciling %s %s/%s after a child event failed: %s", kind, namespace, name, err.reason
        )


CHILD_RESOURCES = (
    ("apps/v1", "deployments"),
    ("v1", "services"),
    ("v1", "configmaps"),
    ("policy/v1", "poddisruptionbudgets"),
    ("ray.io/v1", "rayservices"),
)


def register_all() -> None:
    """Register every handler with kopf's default registry (done once, by the CLI)."""
    for kind in (APP, MODEL_RUNNER, DATASET):
        _register(kind)
    for api_version, plural in CHILD_RESOURCES:
        kopf.on.event(
            api_version, plural, id=f"child-{plural}", labels={MANAGED_BY_LABEL: MANAGED_BY}
        )(child_changed)
