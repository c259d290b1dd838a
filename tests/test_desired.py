"""Which Hypha service the bridge wants for a resource, decided with no cluster and no Hypha.

``desired`` is the bridge's whole policy: whether a resource is registered at all, and under
which id, visibility and users. A mistake here publishes a service that cannot answer, one
meant for another workspace, or one open to the wrong users, so each rule is pinned here.

The resources are plain dicts shaped like the custom objects the watch delivers, and the
backends' addresses come from a fake registry: an :class:`Endpoints` built from its
``overrides`` (the seam the end-to-end tests use under kwok), so nothing resolves a name.
"""

from __future__ import annotations

from typing import Any

import pytest

from bioengine_operator.api.status import serviceable
from bioengine_operator.bridge.desired import Desired, desired
from bioengine_operator.bridge.endpoints import Endpoints

WORKSPACE = "ws-lab"
NAMESPACE = "lab"
APP_URL = "http://app.lab.test:8000"
DATASET_URL = "http://data.lab.test:9000"
BLUE, GREEN = "blue.lab.test:8001", "green.lab.test:8001"


def fake_registry(**missing: bool) -> Endpoints:
    """A fake registry of backends: every app and dataset of the namespace has an address,
    and every runner a blue and a green one, unless ``missing`` names the kind (``app=True``,
    ``dataset=True``) whose backends are nowhere to be found."""
    overrides: dict[str, Any] = {f"modelrunner/{NAMESPACE}/*": {"blue": BLUE, "green": GREEN}}
    if not missing.get("app"):
        overrides[f"bioengineapp/{NAMESPACE}/*"] = APP_URL
    if not missing.get("dataset"):
        overrides[f"bioenginedataset/{NAMESPACE}/*"] = DATASET_URL
    return Endpoints(overrides)


def resource(
    kind: str, name: str, spec: dict[str, Any] | None = None, status: Any = None
) -> dict[str, Any]:
    """A custom object as the watch delivers it (``status`` None: nothing written yet)."""
    body: dict[str, Any] = {
        "apiVersion": "bioengine.bioimage.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}"},
        "spec": spec or {},
    }
    if status is not None:
        body["status"] = status
    return body


def app(name: str = "nucleus", phase: str | None = "Ready", **spec: Any) -> dict[str, Any]:
    """A BioEngineApp (manifest fields flat in its spec, as the CRD has them)."""
    return resource("BioEngineApp", name, spec, {"phase": phase} if phase else None)


def runner(name: str = "unet", blue: int = 1, green: int = 0, **spec: Any) -> dict[str, Any]:
    """A ModelRunner with ``blue`` / ``green`` Ready pods in its colors."""
    status = {"blue": {"readyReplicas": blue}, "green": {"readyReplicas": green}}
    return resource("ModelRunner", name, {"models": ["unet"], **spec}, status)


def dataset(name: str = "cells", ready: int = 1, **spec: Any) -> dict[str, Any]:
    """A BioEngineDataset with ``ready`` Ready server pods."""
    manifest = {"name": "Cell images", **spec.pop("manifest", {})}
    return resource(
        "BioEngineDataset", name, {"manifest": manifest, **spec}, {"readyReplicas": ready}
    )


def want(body: dict[str, Any], endpoints: Endpoints | None = None) -> Desired:
    """The service ``body`` should have; fails the test when it should have none."""
    found = desired(body, endpoints or fake_registry(), WORKSPACE)
    assert found is not None, f"{body['kind']} {body['metadata']['name']} got no service"
    return found


# -- whether a resource can serve --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "can_serve"),
    [
        (app(phase="Ready"), True),
        (app(phase="Degraded"), True),  # an unhealthy replica: the others still answer
        (app(phase="Deploying"), False),
        (app(phase="Updating"), False),
        (app(phase="Failed"), False),
        (app(phase=None), False),  # no status written yet
        (runner(blue=1, green=0), True),
        (runner(blue=0, green=2), True),
        (runner(blue=1, green=1), True),  # an update in progress still serves
        (runner(blue=0, green=0), False),
        (resource("ModelRunner", "fresh", {"models": ["unet"]}), False),  # no status
        (dataset(ready=1), True),
        (dataset(ready=0), False),
        (resource("BioEngineDataset", "fresh", {"manifest": {"name": "x"}}), False),
    ],
    ids=lambda v: v["kind"] + ":" + str(v.get("status")) if isinstance(v, dict) else str(v),
)
def test_a_resource_gets_a_service_only_while_it_can_serve(
    body: dict[str, Any], can_serve: bool
) -> None:
    """Registering a resource that cannot answer would hand callers errors; dropping one
    that can (a Degraded app, a runner half-way through an update) would cut them off."""
    assert serviceable(body) is can_serve
    assert (desired(body, fake_registry(), WORKSPACE) is not None) is can_serve


def test_a_resource_being_deleted_has_no_service() -> None:
    """Its backends are going away with it: the service goes at once, not when they fail."""
    body = app(phase="Ready")
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert desired(body, fake_registry(), WORKSPACE) is None


def test_only_the_three_kinds_get_services() -> None:
    """Only apps, runners and datasets are services, whatever else a body says (a phase)."""
    assert (
        desired(resource("RayService", "ray", {}, {"phase": "Ready"}), fake_registry(), WORKSPACE)
        is None
    )


# -- which bridge serves it --------------------------------------------------------------


@pytest.mark.parametrize("make", [app, runner, dataset])
def test_a_resource_meant_for_another_workspace_is_left_to_that_bridge(make: Any) -> None:
    """Each bridge is connected to one workspace; registering another's resource here would
    publish it where its owner did not ask for it."""
    assert desired(make(service={"workspace": "ws-other"}), fake_registry(), WORKSPACE) is None
    assert want(make(service={"workspace": WORKSPACE})).key == want(make()).key


# -- where the backends are --------------------------------------------------------------


def test_the_service_carries_the_backends_addresses() -> None:
    """An app or dataset has one address; a runner both colors', to fail over between."""
    assert want(app()).endpoints == (APP_URL,)
    assert want(dataset()).endpoints == (DATASET_URL,)
    assert want(runner()).endpoints == (BLUE, GREEN)


def test_an_app_address_may_come_from_its_status() -> None:
    """In a cluster the operator writes the address to the status; nothing overrides it."""
    body = app()
    body["status"]["endpoint"] = "http://nucleus-serve.lab.svc:8000"
    assert want(body, Endpoints()).endpoints == ("http://nucleus-serve.lab.svc:8000",)


@pytest.mark.parametrize(("make", "kind"), [(app, "app"), (dataset, "dataset")])
def test_a_resource_whose_backend_cannot_be_found_has_no_service(make: Any, kind: str) -> None:
    """Ready but with no known address (the status not written yet): a service registered
    now would have nowhere to send calls."""
    assert desired(make(), fake_registry(**{kind: True}), WORKSPACE) is None


# -- the service's id, visibility and users ----------------------------------------------


def test_the_service_id_is_the_chosen_one_else_the_app_id_else_the_name() -> None:
    """Clients find a service by id; it must not change under them when a field is added."""
    assert want(app("nucleus", id="nucleus-seg", service={"id": "seg"})).service_id == "seg"
    assert want(app("nucleus", id="nucleus-seg")).service_id == "nucleus-seg"
    assert want(app("nucleus")).service_id == "nucleus"
    assert want(runner("unet", service={"id": "triton"})).service_id == "triton"
    assert want(runner("unet", id="not-an-app")).service_id == "unet"  # only apps have an id
    assert want(dataset("cells", manifest={"id": "cell-images"})).service_id == "cells"


def test_visibility_is_protected_unless_public_is_asked_for() -> None:
    """Protected by default: a resource is not opened to everyone by leaving a field out."""
    assert want(app()).visibility == "protected"
    assert want(runner()).visibility == "protected"
    assert want(dataset()).visibility == "protected"
    assert want(app(service={"visibility": "public"})).visibility == "public"
    assert want(dataset(service={"id": "cells"})).visibility == "protected"


def test_authorized_users_default_per_kind() -> None:
    """An app is open to every caller unless it names users (the manifest's default); a
    runner is guarded by visibility alone; a dataset's readers come from its manifest."""
    assert want(app()).authorized_users == ("*",)
    assert want(app(authorizedUsers=["alice", "bob"])).authorized_users == ("alice", "bob")
    assert want(app(authorizedUsers=[])).authorized_users == ()  # said so: nobody
    assert want(runner()).authorized_users == ()
    assert want(runner(authorizedUsers=["alice"])).authorized_users == ()
    assert want(dataset()).authorized_users == ()
    cells = dataset(manifest={"authorizedUsers": ["carol"]})
    assert want(cells).authorized_users == ("carol",)


def test_a_method_may_have_its_own_users() -> None:
    """An admin may let fewer (or other) users call one method than the whole app."""
    found = want(
        app(
            authorizedUsers=["alice", "carol"],
            methods={
                "stats": {"authorizedUsers": ["carol"]},
                "segment": {"authorizedUsers": ["alice"]},
            },
        )
    )
    assert found.users_of("segment") == ("alice",)
    assert found.users_of("stats") == ("carol",)
    assert found.users_of("ping") == ("alice", "carol")  # no override: the app's users
    assert found.method_users == (("segment", ("alice",)), ("stats", ("carol",)))  # sorted
    assert want(app()).method_users == ()


def test_an_apps_datasets_go_with_its_service() -> None:
    """Each call to the app carries the caller's tokens for these datasets."""
    assert want(app(datasets=["cells", "nuclei"])).datasets == ("cells", "nuclei")
    assert want(app()).datasets == ()


def test_a_dataset_is_named_by_its_manifest_id_else_its_name() -> None:
    """Tokens and listings name a dataset by this id; apps and runners have none."""
    assert want(dataset("cells", manifest={"id": "cell-images"})).dataset_id == "cell-images"
    assert want(dataset("cells")).dataset_id == "cells"
    assert want(app()).dataset_id is None
    assert want(runner()).dataset_id is None


def test_the_description_and_key() -> None:
    """What a service listing shows, and the key the bridge tracks the service under."""
    assert want(app(description="Segments nuclei.")).description == "Segments nuclei."
    assert want(runner(models=["unet", "cellpose"])).description == "Triton models: unet, cellpose"
    assert want(dataset(manifest={"description": "Cells."})).description == "Cells."
    assert want(dataset()).description == "Cell images"  # else the manifest's name
    assert want(runner("unet")).key == ("ModelRunner", NAMESPACE, "unet")


def test_a_change_that_matters_changes_the_desired_value() -> None:
    """The bridge registers again when the value changes, and only then: equal for the same
    resource, different when the users change."""
    assert want(app()) == want(app())
    assert want(app()) != want(app(authorizedUsers=["alice"]))
