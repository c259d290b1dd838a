"""Why a resource's pods are not running, in the scheduler's and the kubelet's words.

A Deployment's status only counts pods; the reason one never starts (no node fits, an
image that cannot be pulled, a container that keeps crashing) is on the pod. The
reconcilers append these to the Ready condition's message, so ``kubectl get -o wide`` and
``kubectl describe`` of the resource say it without looking for the pods.
"""

from __future__ import annotations

from typing import Any

# Waiting reasons that do not pass by themselves.
STUCK = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}
MOST = 3  # problems quoted; the rest are alike


def problems(pods: list[dict[str, Any]]) -> list[str]:
    """One line per stuck pod: unschedulable, or a container waiting for good."""
    found: list[str] = []
    for pod in pods:
        status = pod.get("status") or {}
        name = pod["metadata"]["name"]
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                why = cond.get("message") or cond.get("reason") or "no reason given"
                found.append(f"pod {name} cannot be scheduled: {why}")
        containers = [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]
        for container in containers:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in STUCK:
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                found.append(
                    f"pod {name}, container {container.get('name')}: {waiting['reason']}{detail}"
                )
    return found[:MOST]


def explained(message: str, pods: list[dict[str, Any]]) -> str:
    """``message``, followed by why the pods are stuck, if they are."""
    return "; ".join([message, *problems(pods)])
