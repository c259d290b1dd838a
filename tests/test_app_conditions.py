"""``ServeApplicationHealthy`` from the Serve status KubeRay copies into a RayService."""

from __future__ import annotations

from typing import Any

from bioengine_operator.controllers.app import serve_condition

TRACEBACK = (
    "The deployment failed to start 3 times in a row. Error:\n"
    '  File "/home/ray/bioengine/bioengine.py", line 394, in __init__\n'
    "ValueError: no cells\n\nThe above exception was the direct cause:\n"
    "bioengine.SmokeTestFailed: smoke test Seg.check failed: ValueError: no cells"
)


def ray_service(state: str, deployments: dict[str, Any], side: str = "active") -> dict[str, Any]:
    app = {"status": state, "message": "", "serveDeploymentStatuses": deployments}
    return {
        "status": {
            f"{side}ServiceStatus": {"rayClusterName": "rc", "applicationStatuses": {"seg": app}}
        }
    }


def test_running_is_healthy_and_no_status_yet_is_unknown() -> None:
    assert serve_condition(ray_service("RUNNING", {}), "seg")[0] is True
    assert serve_condition(None, "seg")[:2] == ("Unknown", "NotDeployed")
    assert serve_condition(ray_service("DEPLOYING", {}), "seg")[:2] == ("Unknown", "Deploying")


def test_a_failed_smoke_test_quotes_the_apps_error_line() -> None:
    failed = ray_service(
        "DEPLOY_FAILED",
        {
            "Ingress": {"status": "HEALTHY"},
            "Seg": {"status": "DEPLOY_FAILED", "message": TRACEBACK},
        },
    )
    assert serve_condition(failed, "seg") == (
        False,
        "SmokeTestFailed",
        "Seg: SmokeTestFailed: smoke test Seg.check failed: ValueError: no cells",
    )


def test_an_unhealthy_app_and_a_failed_constructor() -> None:
    unhealthy = ray_service(
        "UNHEALTHY", {"Seg": {"status": "UNHEALTHY", "message": "A replica's health check failed."}}
    )
    assert serve_condition(unhealthy, "seg")[:2] == (False, "HealthCheckFailed")
    crashed = ray_service(
        "DEPLOY_FAILED", {"Seg": {"status": "DEPLOY_FAILED", "message": "TypeError: bad init"}}
    )
    assert serve_condition(crashed, "seg") == (False, "DeployFailed", "Seg: TypeError: bad init")


def test_the_pending_cluster_of_an_upgrade_is_the_one_reported() -> None:
    body = ray_service("RUNNING", {})
    pending = ray_service(
        "DEPLOY_FAILED", {"Seg": {"status": "DEPLOY_FAILED", "message": TRACEBACK}}, "pending"
    )
    body["status"].update(pending["status"])
    assert serve_condition(body, "seg")[1] == "SmokeTestFailed"
