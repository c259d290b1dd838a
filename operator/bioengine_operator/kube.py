"""The few Kubernetes API calls the operator (its reconcilers) and the bridge (its worker and
resource list) make, on the official client's ApiClient.

Children are written with server-side apply under one field manager: applying the same
desired object twice is a no-op (the generation does not move), a field someone changed
by hand is set back, and fields other controllers own (status, defaults) are left alone.
That makes every reconcile idempotent; comparing first only saves the writes.

Reads of children come from :data:`CACHE` when the operator's watches have seen them (as
client-go's listers do), and a child is applied only when it differs from what is live: its
annotation holds a hash of what was last applied, and every field applied must still hold
its value (a change by hand is set back). So a reconcile with nothing to do writes nothing,
and the events of a busy cluster cost reads, not writes.

Three rules keep user input from steering a request somewhere else:

* names and namespaces reach a URL only as path parameters, which the client percent-escapes
  (a name such as ``../secrets/x`` stays one path segment, and the server refuses it);
* bodies are UTF-8 JSON, never ASCII-escaped: JSON is also YAML, but YAML has no surrogate
  pairs, so an escaped emoji in an apply patch would be refused;
* a child is applied only if its name is free or already controlled by the same owner
  (:func:`apply_owned`): one resource never takes over another's object.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from bioengine_operator import conditions

FIELD_MANAGER = "bioengine-operator"

# (apiVersion, kind) -> plural. Only what the operator reads or writes.
PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Service"): "services",
    ("v1", "Pod"): "pods",
    ("v1", "Event"): "events",
    ("apps/v1", "Deployment"): "deployments",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("ray.io/v1", "RayService"): "rayservices",
    ("bioengine.bioimage.io/v1alpha1", "BioEngineApp"): "bioengineapps",
    ("bioengine.bioimage.io/v1alpha1", "ModelRunner"): "modelrunners",
    ("bioengine.bioimage.io/v1alpha1", "BioEngineDataset"): "bioenginedatasets",
}
REQUEST_TIMEOUT = 30

Object = dict[str, Any]
Key = tuple[str, str]  # (kind, name) of a child in the owner's namespace

_client: client.ApiClient | None = None
_client_lock = threading.Lock()


class NameConflict(Exception):
    """A child's name is taken by an object the resource does not control."""

    def __init__(self, kind: str, name: str, holder: str) -> None:
        super().__init__(f"{kind} {name!r} already exists and {holder}")
        self.kind, self.name, self.holder = kind, name, holder


class Refused(Exception):
    """The API server refused a child as the spec makes it (invalid, or not allowed): trying
    again cannot help until the spec changes, so it is reported, not retried."""

    STATUSES = (400, 403, 422)

    def __init__(self, kind: str, name: str, status: int, message: str) -> None:
        super().__init__(f"the API server refused {kind} {name!r} ({status}): {message}")
        self.kind, self.name, self.status = kind, name, status


def server_message(err: ApiException) -> str:
    """The message of the API server's Status answer, else the raw body."""
    try:
        return str(json.loads(err.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        return str(err.body or err.reason)[:1000]


def configure(pool_size: int, kubeconfig: str | None = None) -> None:
    """Size the connection pool to the number of reconcile workers (call before the first use).

    urllib3 otherwise keeps 4 connections per host, and busy workers log "Connection pool is
    full" and reconnect for every request. ``kubeconfig``: a file to use instead of the
    in-cluster account or ``KUBECONFIG`` (a benchmark's own cluster).
    """
    global _client
    with _client_lock:
        _client = _new_client(pool_size, kubeconfig)


def _new_client(pool_size: int, kubeconfig: str | None = None) -> client.ApiClient:
    try:
        if kubeconfig:
            raise config.ConfigException("a kubeconfig file was given")
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=kubeconfig)
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def api() -> client.ApiClient:
    """One shared client: in-cluster credentials, else the kubeconfig (KUBECONFIG)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = _new_client(8)
        return _client


def _resource_path(api_version: str, kind: str, named: bool) -> str:
    plural = PLURALS[(api_version, kind)]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{{namespace}}/{plural}"
    return f"{path}/{{name}}" if named else path


def _call(
    method: str,
    api_version: str,
    kind: str,
    namespace: str,
    name: str | None = None,
    *,
    subresource: str = "",
    body: Object | bytes | None = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> Any:
    client_ = api()
    path = _resource_path(api_version, kind, name is not None) + subresource
    params = {"namespace": namespace} if name is None else {"namespace": namespace, "name": name}
    request = client_.param_serialize(
        method,
        path,
        path_params=params,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = client_.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
    response.read()
    if not 200 <= response.status < 300:
        raise ApiException(http_resp=response)
    return json.loads(response.data) if response.data else None


APPLIED = "bioengine.bioimage.io/applied"  # annotation: hash of the child as last applied


class Cache:
    """The operator's children as its watches last saw them (without managedFields, which
    only the API server needs). Filled by the operator's child watches; empty elsewhere,
    where every read goes to the API server."""

    def __init__(self) -> None:
        self._bodies: dict[tuple[str, str, str, str], Object] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(body: Object) -> tuple[str, str, str, str]:
        meta = body["metadata"]
        return (body["apiVersion"], body["kind"], meta.get("namespace", ""), meta["name"])

    def put(self, body: Object) -> None:
        """Remember ``body`` unless a newer version of it is known already."""
        body = {**body, "metadata": {**body["metadata"], "managedFields": None}}
        key = self._key(body)
        with self._lock:
            known = self._bodies.get(key)
            if known is None or not _older(body, known):
                self._bodies[key] = body

    def knows(self, body: Object) -> bool:
        """Whether this very version of ``body`` is cached already."""
        with self._lock:
            known = self._bodies.get(self._key(body))
        version = body["metadata"].get("resourceVersion")
        return known is not None and known["metadata"].get("resourceVersion") == version

    def drop(self, body: Object) -> None:
        with self._lock:
            self._bodies.pop(self._key(body), None)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Object | None:
        with self._lock:
            return self._bodies.get((api_version, kind, namespace, name))


def _older(body: Object, than: Object) -> bool:
    """Whether ``body`` is an older version of the same object (resource versions are etcd
    revisions here; anything else counts as newer)."""
    try:
        return int(body["metadata"]["resourceVersion"]) < int(than["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return False


CACHE = Cache()


def get(api_version: str, kind: str, namespace: str, name: str) -> Object | None:
    """The object from the cache of watched children, else from the API server (None: absent)."""
    cached = CACHE.get(api_version, kind, namespace, name)
    if cached is not None:
        return cached
    try:
        return _call("GET", api_version, kind, namespace, name)  # type: ignore[no-any-return]
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def list_(
    api_version: str,
    kind: str,
    namespace: str,
    selector: Mapping[str, str],
    *,
    recent: bool = False,
) -> list[Object]:
    """Objects of ``kind`` in ``namespace`` whose labels match ``selector`` (all equal).

    ``recent``: from the API server's watch cache (``resourceVersion=0``), which may be a
    moment behind, as an informer's lister is. A quorum read goes to etcd, which reads every
    object of the kind in the namespace to filter them by label: at hundreds of pods per
    namespace, a pod list per reconcile costs the API server and etcd more than the rest of
    the reconcile's requests.
    """
    label_selector = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
    query = [("labelSelector", label_selector)] + ([("resourceVersion", "0")] if recent else [])
    found = _call("GET", api_version, kind, namespace, query=query)
    return list(found.get("items") or [])


def existing(api_version: str, keys: Iterable[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """Which of ``keys`` (kind, namespace, name) exist now: one list per kind and namespace.

    For watchers to drop what was deleted while their watch was reconnecting (a re-list
    reports what exists, never what went away)."""
    found: set[tuple[str, str, str]] = set()
    for kind, namespace in {(k, ns) for k, ns, _ in keys}:
        for obj in list_(api_version, kind, namespace, {}):
            found.add((kind, namespace, obj["metadata"]["name"]))
    return found


def controller_of(obj: Object) -> Mapping[str, Any] | None:
    """The ownerReference marked ``controller``, if any."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def check_owner(live: Object | None, owner_uid: str) -> None:
    """Raise :class:`NameConflict` unless ``live`` is absent or controlled by ``owner_uid``."""
    if live is None:
        return
    ref = controller_of(live)
    if ref is not None and ref.get("uid") == owner_uid:
        return
    holder = (
        f"is controlled by {ref.get('kind')} {ref.get('name')!r}"
        if ref is not None
        else "is not managed by the operator"
    )
    raise NameConflict(live.get("kind", "object"), live["metadata"]["name"], holder)


def apply(obj: Object, field_manager: str = FIELD_MANAGER) -> Object:
    """Server-side apply ``obj`` as ``field_manager`` (the operator's), taking over conflicts;
    :class:`Refused` when the API server will not take it as it is."""
    meta = obj["metadata"]
    try:
        return _call(  # type: ignore[no-any-return]
            "PATCH",
            obj["apiVersion"],
            obj["kind"],
            meta["namespace"],
            meta["name"],
            # Serialized here: the client would ASCII-escape it (see the module docstring).
            body=json.dumps(obj, ensure_ascii=False).encode(),
            query=[("fieldManager", field_manager), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
    except ApiException as err:
        if err.status in Refused.STATUSES:
            raise Refused(obj["kind"], meta["name"], err.status, server_message(err)) from err
        raise


def delete(api_version: str, kind: str, namespace: str, name: str) -> bool:
    """Delete the object (its dependents in the background); False if it was gone."""
    try:
        _call("DELETE", api_version, kind, namespace, name)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True


def apply_owned(
    children: Iterable[Object], owner_uid: str, known: Mapping[Key, Object | None] | None = None
) -> None:
    """Apply every child, after checking that none of their names is taken by someone else.

    ``known`` holds children the caller has just read (by kind and name), so they are not
    read twice. On a name conflict none is applied; an API error while applying may leave
    the first ones applied (the next reconcile applies the rest).
    """
    children = [stamped(c) for c in children]
    known = known or {}
    lives = []
    for child in children:
        key = (child["kind"], child["metadata"]["name"])
        live = (
            known[key]
            if key in known
            else get(child["apiVersion"], child["kind"], child["metadata"]["namespace"], key[1])
        )
        check_owner(live, owner_uid)
        lives.append(live)
    for child, live in zip(children, lives, strict=True):
        if live is None or not holds(live, child):
            CACHE.put(apply(child))


def stamped(child: Object) -> Object:
    """``child`` with the hash of itself in an annotation, so that a later apply of a
    different child is seen even where it only drops a field."""
    digest = hashlib.sha256(json.dumps(child, sort_keys=True).encode()).hexdigest()[:16]
    meta = child["metadata"]
    annotations = {**(meta.get("annotations") or {}), APPLIED: digest}
    return {**child, "metadata": {**meta, "annotations": annotations}}


def holds(live: Any, want: Any) -> bool:
    """Whether ``live`` still has every field of ``want`` with its value (lists item by
    item); an empty or null field of ``want`` may be absent from ``live``."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(
            holds(live[k], v) if k in live else v in ({}, [], None) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(live, list)
            and len(live) == len(want)
            and all(holds(a, b) for a, b in zip(live, want, strict=True))
        )
    return bool(live == want)


def patch_status(api_version: str, kind: str, namespace: str, name: str, status: Object) -> Object:
    """Merge ``status`` into the object's status; returns the object as written."""
    return _call(  # type: ignore[no-any-return]
        "PATCH",
        api_version,
        kind,
        namespace,
        name,
        subresource="/status",
        body={"status": status},
        content_type="application/merge-patch+json",
    )


def post_event(obj: Object, type_: str, reason: str, message: str) -> None:
    """Record a core/v1 Event about ``obj`` (what ``kubectl describe`` shows)."""
    meta = obj["metadata"]
    now = conditions.timestamp()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}"},
        "involvedObject": {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    _call("POST", "v1", "Event", meta["namespace"], body=event)
