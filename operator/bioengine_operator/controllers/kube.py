"""The few Kubernetes API calls the reconcilers make, on the official client.

Children are written with server-side apply under one field manager: applying the same
desired object twice is a no-op (the generation does not move), a field someone changed
by hand is set back, and fields other controllers own (status, defaults) are left alone.
That makes every reconcile idempotent without comparing objects ourselves.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

FIELD_MANAGER = "bioengine-operator"

# (apiVersion, kind) -> plural. Only what the operator reads or writes.
PLURALS = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("v1", "Service"): "services",
    ("apps/v1", "Deployment"): "deployments",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("ray.io/v1", "RayService"): "rayservices",
    ("bioengine.bioimage.io/v1alpha1", "BioEngineApp"): "bioengineapps",
    ("bioengine.bioimage.io/v1alpha1", "ModelRunner"): "modelrunners",
    ("bioengine.bioimage.io/v1alpha1", "BioEngineDataset"): "bioenginedatasets",
}

_client: client.ApiClient | None = None
_client_lock = threading.Lock()


def api() -> client.ApiClient:
    """One shared client: in-cluster credentials, else the kubeconfig (KUBECONFIG)."""
    global _client
    with _client_lock:
        if _client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            _client = client.ApiClient()
        return _client


def path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    plural = PLURALS[(api_version, kind)]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    out = f"{prefix}/namespaces/{namespace}/{plural}"
    return f"{out}/{name}" if name else out


def _call(
    method: str,
    url: str,
    *,
    body: Any = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> Any:
    client_ = api()
    request = client_.param_serialize(
        method,
        url,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = client_.call_api(*request, _request_timeout=30)
    response.read()
    if not 200 <= response.status < 300:
        raise ApiException(http_resp=response)
    return json.loads(response.data) if response.data else None


def get(api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _call("GET", path(api_version, kind, namespace, name))  # type: ignore[no-any-return]
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def apply(obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply ``obj`` as the operator's field manager, taking over conflicts."""
    meta = obj["metadata"]
    url = path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
    return _call(  # type: ignore[no-any-return]
        "PATCH",
        url,
        body=json.dumps(obj),  # sent as is: JSON is YAML
        query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        content_type="application/apply-patch+yaml",
    )


def create_if_missing(obj: dict[str, Any]) -> bool:
    """Create ``obj`` unless it exists (for objects whose content must never be replaced)."""
    meta = obj["metadata"]
    try:
        _call("POST", path(obj["apiVersion"], obj["kind"], meta["namespace"]), body=obj)
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    return True


def patch_status(
    api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
) -> None:
    url = path(api_version, kind, namespace, name) + "/status"
    _call("PATCH", url, body={"status": status}, content_type="application/merge-patch+json")
