"""Which Hypha service a resource should have right now, if any (no I/O).

A resource gets a service while it can serve: an app while its RayService is Ready, a model
runner while at least one of its colors has a Ready pod (an update in progress still
serves), a dataset while a server pod is Ready. The :class:`Desired` value holds everything
the registration depends on; when it changes the service is registered again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bioengine_operator.api.status import dataset_id, served_in, service_id, serviceable
from bioengine_operator.bridge.endpoints import Endpoints

KINDS = ("BioEngineApp", "ModelRunner", "BioEngineDataset")


@dataclasses.dataclass(frozen=True)
class Desired:
    kind: str
    namespace: str
    name: str
    service_id: str
    visibility: str
    authorized_users: tuple[str, ...]
    description: str
    endpoints: tuple[str, ...]  # app / dataset: one URL; runner: blue and green gRPC targets
    dataset_id: str | None = None
    # An app's per-method authorized users (spec.methods), instead of authorized_users.
    method_users: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # An app's datasets (spec.datasets): each call carries the caller's tokens for them.
    datasets: tuple[str, ...] = ()

    def users_of(self, method: str) -> tuple[str, ...]:
        return dict(self.method_users).get(method, self.authorized_users)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


def desired(body: dict[str, Any], endpoints: Endpoints, workspace: str) -> Desired | None:
    """The service ``body`` should have, or None (not ready, or meant for another workspace)."""
    if body.get("kind") not in KINDS or body["metadata"].get("deletionTimestamp"):
        return None
    if not serviceable(body):
        return None
    spec = body.get("spec") or {}
    service = spec.get("service") or {}
    if served_in(body, workspace) != workspace:
        return None  # another bridge, connected to that workspace, serves it
    kind, meta = body["kind"], body["metadata"]
    method_users: tuple[tuple[str, tuple[str, ...]], ...] = ()
    datasets: tuple[str, ...] = ()
    if kind == "BioEngineApp":
        found: tuple[str | None, ...] = (endpoints.app(body),)
        users = spec.get("authorizedUsers", ["*"])
        description = spec.get("description") or ""
        dataset = None
        method_users = tuple(
            (name, tuple(m.get("authorizedUsers") or []))
            for name, m in sorted((spec.get("methods") or {}).items())
        )
        datasets = tuple(spec.get("datasets") or [])
    elif kind == "ModelRunner":
        found = endpoints.runner(body)
        users = []  # model runners are guarded by visibility alone
        description = f"Triton models: {', '.join(spec.get('models') or [])}"
        dataset = None
    else:
        found = (endpoints.dataset(body),)
        manifest = spec.get("manifest") or {}
        users = manifest.get("authorizedUsers") or []
        description = manifest.get("description") or manifest.get("name") or ""
        dataset = dataset_id(body)
    if not all(found):
        return None
    return Desired(
        kind=kind,
        namespace=meta["namespace"],
        name=meta["name"],
        service_id=service_id(body),
        visibility=service.get("visibility") or "protected",
        authorized_users=tuple(users),
        description=description,
        endpoints=tuple(str(e) for e in found),
        dataset_id=dataset,
        method_users=method_users,
        datasets=datasets,
    )
