"""Ray Serve's application statuses (as KubeRay copies them into a RayService, or as
Serve's REST API reports them under ``bioengine up``) → a BioEngineApp's serving conditions,
quoting the app's own error: one reading for the operator and for ``bioengine up``.
"""

from __future__ import annotations

import re
from typing import Any

# The runtime's own failures, as they end the traceback Serve reports.
APP_ERROR = re.compile(r"(?:SmokeTestFailed|HealthCheckFailed|BioEngineUserError|\w+Error): .*")
# pip's last error line, as Ray's runtime_env agent quotes pip's output when an install fails.
PIP_ERROR = re.compile(r"^\s*ERROR: (.*)$", re.MULTILINE)
MESSAGE_LIMIT = 600


def _app_error(message: str) -> str:
    """The line of a Serve failure message that says what the app did wrong: pip's own
    error when an app's ``pip=`` requirements could not be installed (Ray wraps it in a
    traceback of its runtime_env agent), else the app's exception."""
    pip = PIP_ERROR.findall(message)
    if pip:
        return f"pip could not install the app's requirements: {pip[-1].strip()}"[:MESSAGE_LIMIT]
    found = APP_ERROR.findall(message)
    text = found[-1] if found else message.strip().splitlines()[0] if message.strip() else ""
    return text[:MESSAGE_LIMIT]


Condition = tuple[bool | str, str, str]
NO_UPGRADE: Condition = ("Unknown", "NoUpgrade", "no upgrade in progress")


def serve_conditions(
    ray_service: dict[str, Any] | None, app_name: str
) -> tuple[Condition, Condition]:
    """``ServeApplicationHealthy`` and ``ServeUpgradeHealthy`` from the Serve statuses KubeRay
    copied into the RayService: the cluster that serves (the pending one until a first one
    is up), and the pending cluster of an upgrade, if any."""
    status = (ray_service or {}).get("status") or {}
    pending_side = status.get("pendingServiceStatus") or {}
    pending = _app(pending_side, app_name) if pending_side.get("rayClusterName") else None
    active = _app(status.get("activeServiceStatus") or {}, app_name)
    if active is None:
        return serve_condition(pending), NO_UPGRADE
    return serve_condition(active), NO_UPGRADE if pending is None else serve_condition(pending)


def _app(side: dict[str, Any], app_name: str) -> dict[str, Any] | None:
    found = (side.get("applicationStatuses") or {}).get(app_name)
    return dict(found) if found else None


def serve_condition(app: dict[str, Any] | None) -> Condition:
    """Healthy (True), failed (False, quoting the app's error), or on its way (Unknown)."""
    if not app:
        return "Unknown", "NotDeployed", "Ray Serve reported no status for the app yet"
    state = app.get("status", "")
    if state == "RUNNING":
        return True, "Running", "every deployment is healthy"
    if state not in ("DEPLOY_FAILED", "UNHEALTHY"):
        return "Unknown", state.title().replace("_", "") or "Deploying", app.get("message", "")
    failing = [
        (name, d.get("message", ""))
        for name, d in sorted((app.get("serveDeploymentStatuses") or {}).items())
        if d.get("status") in ("DEPLOY_FAILED", "UNHEALTHY")
    ] or [("", app.get("message", ""))]
    name, text = failing[0]
    if "SmokeTestFailed" in text:
        reason = "SmokeTestFailed"
    elif state == "UNHEALTHY":
        reason = "HealthCheckFailed"
    else:
        reason = "DeployFailed"
    return False, reason, f"{name}: {_app_error(text)}" if name else _app_error(text)
