"""The operator, as a real process, against the real control plane (pods simulated by kwok)."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import (
    app_spec,
    apply,
    condition,
    events,
    get,
    items,
    json_log_records,
    metric,
    resource,
    status,
    wait_for,
    wait_for_warning,
)
from kubernetes import client, watch
from urllib3.exceptions import ProtocolError

from bioengine_devtools import cluster as devcluster
from bioengine_devtools.cluster import READY_DELAY_ANNOTATION
from bioengine_devtools.operator_process import OperatorProcess
from bioengine_operator.builders import triton

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("operator")

MODELS_CM = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "models"},
    "data": {"m__config.pbtxt": 'name: "m"\nbackend: "python"\n', "m__1__model.py": "# model\n"},
}


def runner(name: str, replicas: int = 1, **spec: Any) -> dict[str, Any]:
    return resource(
        "ModelRunner",
        name,
        {
            "modelRepository": {"configMap": {"name": "models"}},
            "models": ["m"],
            "replicas": replicas,
            **spec,
        },
    )


def phase(cluster: devcluster.DevCluster, ns: str, kind: str, name: str) -> str | None:
    return status(cluster, ns, kind, name).get("phase")


def test_examples_are_reconciled(cluster: devcluster.DevCluster, namespace: str) -> None:
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        cluster.kubectl("-n", namespace, "apply", "-f", str(path))
    wait_for(lambda: phase(cluster, namespace, "mr", "unet-runner") == "Ready", "runner Ready")
    runner_status = status(cluster, namespace, "mr", "unet-runner")
    assert runner_status["ready"] == "4/4"
    assert runner_status["serviceId"] == "unet-runner"
    assert runner_status["endpoint"] == f"unet-runner.{namespace}.svc:8001"

    wait_for(lambda: get(cluster, namespace, "rayservice", "zarr-tile-stats"), "RayService created")
    wait_for(lambda: items(cluster, namespace, "raycluster"), "KubeRay created the RayCluster")
    wait_for(lambda: get(cluster, namespace, "deployment", "cell-images-dataset"), "dataset server")
    # The app may have been reconciled before its dataset existed: it resolves on a retry.
    wait_for(
        lambda: (
            condition(status(cluster, namespace, "bea", "zarr-tile-stats"), "DatasetsResolved").get(
                "status"
            )
            == "True"
        ),
        "the app's dataset resolved",
    )
    # The example dataset's PVC does not exist here, so its server cannot start.
    wait_for(lambda: phase(cluster, namespace, "bed", "cell-images") == "Deploying", "Deploying")
    assert status(cluster, namespace, "bed", "cell-images")["ready"] == "0/1"


def test_operator_metrics_and_logs(
    cluster: devcluster.DevCluster, namespace: str, operator: OperatorProcess
) -> None:
    url = operator.metrics_url
    before = metric(url, "bioengine_operator_reconciles_total", kind="ModelRunner", result="ok")
    apply(cluster, namespace, MODELS_CM, runner("counted"))
    wait_for(lambda: phase(cluster, namespace, "mr", "counted") == "Ready", "runner Ready")
    after = metric(url, "bioengine_operator_reconciles_total", kind="ModelRunner", result="ok")
    assert after > before
    assert metric(url, "bioengine_operator_objects", kind="ModelRunner", phase="Ready") >= 1
    assert metric(url, "bioengine_operator_reconcile_duration_seconds_count", kind="ModelRunner")
    # One JSON schema per line, and lines about an object name it.
    records = json_log_records(operator.log)
    about = [r for r in records if r.get("object", {}).get("name") == "counted"]
    assert about and all(r["object"]["namespace"] == namespace for r in about)


class PodRecorder:
    """Follows a runner's pods through a watch and checks the invariants after each event."""

    def __init__(self, api: client.ApiClient, namespace: str, selector: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace, self.selector = namespace, selector
        self.pods: dict[str, dict[str, Any]] = {}
        self.max_pods = 0
        self.min_ready: int | None = None
        self.deletions: list[tuple[str, str]] = []  # (color, revision) in deletion order
        self.watcher = watch.Watch()
        listing = self.core.list_namespaced_pod(namespace, label_selector=selector)
        for pod in listing.items:
            self._record("ADDED", pod)
        self.thread = threading.Thread(
            target=self._run, args=(listing.metadata.resource_version,), daemon=True
        )
        self.thread.start()

    def _record(self, kind: str, pod: client.V1Pod) -> None:
        labels = pod.metadata.labels
        key = (labels[triton.COLOR_LABEL], labels[triton.REVISION_LABEL])
        if kind == "DELETED":
            self.pods.pop(pod.metadata.name, None)
            self.deletions.append(key)
        else:
            ready = pod.metadata.deletion_timestamp is None and any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
            )
            self.pods[pod.metadata.name] = {"ready": ready, "key": key}
        self.max_pods = max(self.max_pods, len(self.pods))
        serving = sum(p["ready"] for p in self.pods.values())
        self.min_ready = serving if self.min_ready is None else min(self.min_ready, serving)

    def _run(self, resource_version: str) -> None:
        stream = self.watcher.stream(
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector=self.selector,
            resource_version=resource_version,
            timeout_seconds=120,
        )
        with contextlib.suppress(ProtocolError):  # how the stream ends when stop() closes it
            for event in stream:
                self._record(event["type"], event["object"])

    def stop(self) -> None:
        self.watcher.stop()
        self.thread.join(timeout=10)


# New pods take 2 s to become Ready, like Triton loading a model: a real window in which an
# operator that replaced both colors at once would leave nothing to serve.
SLOW = {"podAnnotations": {READY_DELAY_ANNOTATION: "2s"}}


def rolled(cluster: devcluster.DevCluster, ns: str, name: str, old: str) -> bool:
    st = status(cluster, ns, "mr", name)
    return (
        st.get("phase") == "Ready"
        and st["revision"] != old
        and st["blue"]["revision"] == st["green"]["revision"] == st["revision"]
    )


def watch_rollout(
    cluster: devcluster.DevCluster,
    api: client.ApiClient,
    namespace: str,
    name: str,
    change: Callable[[], None],
    during: Callable[[], None] = lambda: None,
) -> PodRecorder:
    """Make ``change`` to a Ready 2 x 2 runner, watch every pod until the rollout is done
    (``during`` runs once it started) and check the blue/green invariants on what was seen."""
    wait_for(lambda: phase(cluster, namespace, "mr", name) == "Ready", "runner Ready")
    old_revision = status(cluster, namespace, "mr", name)["revision"]
    recorder = PodRecorder(api, namespace, f"bioengine.bioimage.io/modelrunner={name}")
    try:
        change()
        wait_for(
            lambda: status(cluster, namespace, "mr", name).get("updatingColor") is not None,
            "the update started",
        )
        during()
        wait_for(lambda: rolled(cluster, namespace, name, old_revision), "rolled", timeout=120)
    finally:
        recorder.stop()

    assert recorder.max_pods <= 4, f"surge: {recorder.max_pods} pods for 2 x 2 replicas"
    assert recorder.min_ready is not None and recorder.min_ready >= 1, "zero ready pods"
    # One color at a time: every old pod of the first color went before any of the second.
    colors = [color for color, rev in recorder.deletions if rev == old_revision]
    assert len(colors) == 4
    assert colors[0] == colors[1] and colors[2] == colors[3] and colors[0] != colors[2]

    def ready_endpoints() -> int:
        slices = items(cluster, namespace, "endpointslices", f"kubernetes.io/service-name={name}")
        endpoints = [e for s in slices for e in s.get("endpoints") or []]
        return sum(bool(e["conditions"].get("ready")) for e in endpoints)

    # The EndpointSlice controller follows pod readiness a moment after the Deployments.
    wait_for(lambda: ready_endpoints() == 4, "the Service routes to all four pods")
    return recorder


def test_blue_green_update_keeps_serving_without_surge(
    cluster: devcluster.DevCluster, api: client.ApiClient, namespace: str
) -> None:
    apply(cluster, namespace, MODELS_CM, runner("bg", replicas=2, **SLOW))
    watch_rollout(
        cluster,
        api,
        namespace,
        "bg",
        lambda: apply(
            cluster, namespace, runner("bg", replicas=2, args=["--log-verbose=1"], **SLOW)
        ),
    )
    reasons = {e["reason"] for e in events(cluster, namespace, "bg")}
    assert "UpdatingColor" in reasons


def test_a_changed_model_config_map_rolls_one_color_at_a_time(
    cluster: devcluster.DevCluster, api: client.ApiClient, namespace: str
) -> None:
    """The model ConfigMap is not in the spec, but it shapes the pods: adding a model file
    must roll the runner like a spec change (it used to replace both colors at once)."""
    apply(cluster, namespace, MODELS_CM, runner("cm", replicas=2, **SLOW))
    added = {**MODELS_CM, "data": {**MODELS_CM["data"], "m__2__model.py": "# version 2\n"}}
    watch_rollout(cluster, api, namespace, "cm", lambda: apply(cluster, namespace, added))


def test_an_operator_restart_in_the_middle_of_an_update(
    cluster: devcluster.DevCluster,
    api: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    apply(cluster, namespace, MODELS_CM, runner("mid", replicas=2, **SLOW))
    watch_rollout(
        cluster,
        api,
        namespace,
        "mid",
        lambda: apply(cluster, namespace, runner("mid", replicas=2, args=["--log-info=1"], **SLOW)),
        during=lambda: operator.restart(kill=True),
    )


def test_an_operator_upgrade_that_changes_the_pod_template(
    cluster: devcluster.DevCluster,
    api: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
) -> None:
    """A new operator version with another default Triton image changes every runner's pods
    that names no image of its own: they roll one color at a time, not all at once."""
    apply(cluster, namespace, MODELS_CM, runner("upg", replicas=2, **SLOW))
    default_args = operator.extra_args
    upgraded = "nvcr.io/nvidia/tritonserver:99.99-py3"

    def upgrade() -> None:
        operator.extra_args = (*default_args, f"--triton-image={upgraded}")
        operator.restart()

    try:
        watch_rollout(cluster, api, namespace, "upg", upgrade)
    finally:
        operator.extra_args = default_args
        operator.restart()
    deployment = get(cluster, namespace, "deployment", "upg-blue")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == upgraded


def test_children_are_restored_after_drift(cluster: devcluster.DevCluster, namespace: str) -> None:
    apply(cluster, namespace, MODELS_CM, runner("drift"))
    wait_for(lambda: phase(cluster, namespace, "mr", "drift") == "Ready", "runner Ready")
    old_uid = get(cluster, namespace, "service", "drift")["metadata"]["uid"]

    cluster.kubectl("-n", namespace, "delete", "service", "drift")
    cluster.kubectl("-n", namespace, "delete", "deployment", "drift-green")
    cluster.kubectl("-n", namespace, "scale", "deployment", "drift-blue", "--replicas=3")
    cluster.kubectl("-n", namespace, "delete", "pdb", "drift")

    def restored() -> bool:
        svc = get(cluster, namespace, "service", "drift")
        green = get(cluster, namespace, "deployment", "drift-green")
        blue = get(cluster, namespace, "deployment", "drift-blue")
        pdb = get(cluster, namespace, "pdb", "drift")
        return bool(
            svc
            and svc["metadata"]["uid"] != old_uid
            and green
            and pdb
            and blue["spec"]["replicas"] == 1
        )

    wait_for(restored, "deleted and edited children restored")
    wait_for(lambda: phase(cluster, namespace, "mr", "drift") == "Ready", "runner Ready again")


def test_deleting_the_runner_collects_its_children(
    cluster: devcluster.DevCluster, namespace: str
) -> None:
    apply(cluster, namespace, MODELS_CM, runner("gone"))
    wait_for(lambda: get(cluster, namespace, "deployment", "gone-blue"), "children exist")
    cluster.kubectl("-n", namespace, "delete", "mr", "gone", "--wait=true", "--timeout=60s")
    selector = "bioengine.bioimage.io/modelrunner=gone"
    wait_for(
        lambda: (
            not any(
                items(cluster, namespace, kind, selector)
                for kind in ("deployments", "services", "pdb", "pods")
            )
        ),
        "children garbage-collected",
    )


def test_bad_objects_get_conditions_and_do_not_block_good_ones(
    cluster: devcluster.DevCluster, namespace: str
) -> None:
    # Valid for the API server, wrong for the operator: missing references.
    app = resource(
        "BioEngineApp",
        "orphan",
        app_spec(source={"configMap": {"name": "code"}}, datasets=["nope"]),
    )
    apply(cluster, namespace, app, runner("no-repo"))
    apply(
        cluster,
        namespace,
        MODELS_CM,
        runner("good", modelRepository={"configMap": {"name": "models"}}),
    )
    wait_for(lambda: phase(cluster, namespace, "mr", "good") == "Ready", "good runner Ready")

    def reported() -> bool:
        st = status(cluster, namespace, "bea", "orphan")
        return condition(st, "DatasetsResolved").get("reason") == "DatasetNotFound"

    wait_for(reported, "missing dataset reported")
    message = condition(status(cluster, namespace, "bea", "orphan"), "Ready")["message"]
    assert "nope" in message
    wait_for(
        lambda: "DatasetNotFound" in {e["reason"] for e in events(cluster, namespace, "orphan")},
        "DatasetNotFound Event",  # kopf posts Events from a queue, a moment after the status
    )
    assert not get(cluster, namespace, "rayservice", "orphan")

    # "no-repo" points at the same ConfigMap name "models", created after it: it recovers.
    wait_for(lambda: phase(cluster, namespace, "mr", "no-repo") == "Ready", "recovers")


def test_missing_repository_is_reported(cluster: devcluster.DevCluster, namespace: str) -> None:
    apply(cluster, namespace, runner("lonely", modelRepository={"configMap": {"name": "absent"}}))
    wait_for(
        lambda: (
            condition(status(cluster, namespace, "mr", "lonely"), "Ready").get("reason")
            == "RepositoryNotFound"
        ),
        "RepositoryNotFound condition",
    )
    assert not get(cluster, namespace, "deployment", "lonely-blue")


def test_app_becomes_rayservice_and_kuberay_raycluster(
    cluster: devcluster.DevCluster, namespace: str
) -> None:
    spec = {
        **app_spec(source={"uri": "https://example.org/app.zip"}),
        "classes": {"App": {"numReplicas": 2}},
        "rayCluster": {
            "workerGroups": [
                {
                    "name": "gpu",
                    "replicas": 1,
                    "maxReplicas": 3,
                    "resources": {"gpu": 1},
                    "tolerations": [{"key": "cloud.google.com/gke-spot", "operator": "Exists"}],
                }
            ]
        },
    }
    apply(cluster, namespace, resource("BioEngineApp", "seg", spec))
    wait_for(lambda: items(cluster, namespace, "raycluster"), "RayCluster created by KubeRay")
    (ray_cluster,) = items(cluster, namespace, "raycluster")
    assert [g["groupName"] for g in ray_cluster["spec"]["workerGroupSpecs"]] == ["gpu"]

    def gpu_worker_on_gpu_node() -> bool:
        pods = items(cluster, namespace, "pods", "ray.io/group=gpu")
        return any(p["spec"].get("nodeName") == "gpu-spot-node-0" for p in pods)

    wait_for(gpu_worker_on_gpu_node, "GPU worker scheduled on the GPU spot node")
    rayservice = get(cluster, namespace, "rayservice", "seg")
    assert rayservice["metadata"]["ownerReferences"][0]["kind"] == "BioEngineApp"
    serve = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    assert serve["applications"][0]["args"]["classes"]["App"]["numReplicas"] == 2

    spec["classes"] = {"App": {"numReplicas": 3}}
    apply(cluster, namespace, resource("BioEngineApp", "seg", spec))

    def updated() -> bool:
        rs = get(cluster, namespace, "rayservice", "seg")
        config = yaml.safe_load(rs["spec"]["serveConfigV2"])
        return bool(config["applications"][0]["args"]["classes"]["App"]["numReplicas"] == 3)

    wait_for(updated, "RayService follows the app's spec")
    app_status = status(cluster, namespace, "bea", "seg")
    assert app_status["phase"] == "Deploying"
    assert condition(app_status, "RayServiceReady")  # KubeRay's view, mirrored


def test_app_stuck_initializing_is_reported(cluster: devcluster.DevCluster, namespace: str) -> None:
    # Under kwok KubeRay never reaches the Ray dashboard, so the app really never gets Ready.
    spec = app_spec(initTimeoutSeconds=10)
    apply(cluster, namespace, resource("BioEngineApp", "slow", spec))
    wait_for(lambda: phase(cluster, namespace, "bea", "slow") == "Stuck", "Stuck", timeout=60)
    stuck = condition(status(cluster, namespace, "bea", "slow"), "Stuck")
    assert stuck["status"] == "True" and re.search(r"initTimeoutSeconds=10", stuck["message"])
    wait_for_warning(cluster, namespace, "slow", "InitializingTimeout")


def test_restart_resumes_without_touching_children(
    cluster: devcluster.DevCluster, namespace: str, operator: OperatorProcess
) -> None:
    apply(cluster, namespace, MODELS_CM, runner("steady"))
    wait_for(lambda: phase(cluster, namespace, "mr", "steady") == "Ready", "runner Ready")
    selector = "bioengine.bioimage.io/modelrunner=steady"

    def versions() -> dict[str, str]:
        return {
            f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
            for kind in ("deployments", "services", "pdb")
            for o in items(cluster, namespace, kind, selector)
        }

    before = versions()
    log_size = operator.log.stat().st_size
    operator.restart()

    def resumed() -> bool:
        lines = operator.log.read_text(errors="replace")[log_size:].splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return any(
            r.get("message", "").startswith("reconciled")
            and r.get("object", {}).get("name") == "steady"
            and r.get("object", {}).get("namespace") == namespace
            for r in records
        )

    wait_for(resumed, "operator resumed the runner")
    assert versions() == before, "an idle resume must not rewrite children"


def test_unservable_dataset_source_fails_with_a_clear_condition(
    cluster: devcluster.DevCluster, namespace: str
) -> None:
    """S3 sources pass the schema but this operator version cannot serve them."""
    apply(
        cluster,
        namespace,
        resource(
            "BioEngineDataset",
            "in-s3",
            {
                "source": {"s3": {"uri": "s3://bucket/cells"}},
                "manifest": {"name": "Cells"},
            },
        ),
    )
    wait_for(lambda: phase(cluster, namespace, "bed", "in-s3") == "Failed", "Failed phase")
    ready = condition(status(cluster, namespace, "bed", "in-s3"), "Ready")
    assert ready["reason"] == "InvalidSpec" and "S3" in ready["message"]
    wait_for_warning(cluster, namespace, "in-s3", "InvalidSpec")
    assert not get(cluster, namespace, "deployment", "in-s3-dataset")
