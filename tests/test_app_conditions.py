"""``ServeApplicationHealthy`` / ``ServeUpgradeHealthy`` from the Serve statuses KubeRay
copies into a RayService."""

from __future__ import annotations

from typing import Any

from bioengine_operator.api.serve import NO_UPGRADE, serve_conditions

TRACEBACK = (
    "The deployment failed to start 3 times in a row. Error:\n"
    '  File "/home/ray/bioengine/bioengine.py", line 394, in __init__\n'
    "ValueError: no cells\n\nThe above exception was the direct cause:\n"
    "bioengine.SmokeTestFailed: smoke test Seg.check failed: ValueError: no cells"
)
SMOKE = {"Ingress": {"status": "HEALTHY"}, "Seg": {"status": "DEPLOY_FAILED", "message": TRACEBACK}}


def side(state: str, deployments: dict[str, Any]) -> dict[str, Any]:
    app = {"status": state, "message": "", "serveDeploymentStatuses": deployments}
    return {"rayClusterName": "rc", "applicationStatuses": {"seg": app}}


def ray_service(**sides: dict[str, Any]) -> dict[str, Any]:
    return {"status": {f"{name}ServiceStatus": value for name, value in sides.items()}}


def test_running_is_healthy_and_no_status_yet_is_unknown() -> None:
    assert serve_conditions(ray_service(active=side("RUNNING", {})), "seg")[0][0] is True
    assert serve_conditions(None, "seg")[0][:2] == ("Unknown", "NotDeployed")
    deploying = ray_service(active=side("DEPLOYING", {}))
    assert serve_conditions(deploying, "seg")[0][:2] == ("Unknown", "Deploying")


def test_a_failed_smoke_test_quotes_the_apps_error_line() -> None:
    current, upgrade = serve_conditions(ray_service(active=side("DEPLOY_FAILED", SMOKE)), "seg")
    assert current == (
        False,
        "SmokeTestFailed",
        "Seg: SmokeTestFailed: smoke test Seg.check failed: ValueError: no cells",
    )
    assert upgrade == NO_UPGRADE


def test_a_first_deployment_is_read_from_the_pending_cluster() -> None:
    current, _ = serve_conditions(ray_service(pending=side("DEPLOY_FAILED", SMOKE)), "seg")
    assert current[1] == "SmokeTestFailed"


def test_an_unhealthy_app_and_a_failed_constructor() -> None:
    unhealthy = side("UNHEALTHY", {"Seg": {"status": "UNHEALTHY", "message": "A replica failed."}})
    assert serve_conditions(ray_service(active=unhealthy), "seg")[0][:2] == (
        False,
        "HealthCheckFailed",
    )
    crashed = side("DEPLOY_FAILED", {"Seg": {"status": "DEPLOY_FAILED", "message": "TypeError: x"}})
    assert serve_conditions(ray_service(active=crashed), "seg")[0] == (
        False,
        "DeployFailed",
        "Seg: TypeError: x",
    )


def test_a_failing_upgrade_is_reported_apart_from_the_serving_cluster() -> None:
    body = ray_service(active=side("RUNNING", {}), pending=side("DEPLOY_FAILED", SMOKE))
    current, upgrade = serve_conditions(body, "seg")
    assert current[0] is True
    assert upgrade[:2] == (False, "SmokeTestFailed")


PIP_FAILURE = (
    "The deployment failed to start 3 times in a row. Error:\n"
    "Exception when allocating Replica(id='6vxs3f40', deployment='PipApp', app='pip'): "
    "Failed to set up runtime environment.\n"
    "ray._private.runtime_env.utils.SubprocessCalledProcessError: Run cmd[13] failed with "
    "the following details.\nLast 50 lines of stdout:\n"
    "    ERROR: Could not find a version that satisfies the requirement tabulate==9.9 "
    "(from versions: 0.8.10, 0.9.0)\n"
    "    ERROR: No matching distribution found for tabulate==9.9\n"
)


def test_a_requirement_pip_cannot_install_quotes_pips_error_line() -> None:
    """As Ray's runtime_env agent reports it: the app's own name, then pip's last word."""
    failed = side("DEPLOY_FAILED", {"PipApp": {"status": "DEPLOY_FAILED", "message": PIP_FAILURE}})
    assert serve_conditions(ray_service(active=failed), "seg")[0] == (
        False,
        "DeployFailed",
        "PipApp: pip could not install the app's requirements: "
        "No matching distribution found for tabulate==9.9",
    )
