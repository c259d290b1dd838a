"""Promises that must hold whatever users send and whether the operator runs: deletes that
need no operator, names the API server refuses before they can do harm, child names one
resource cannot take from another, and any Unicode value reaching the cluster intact."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from helpers import app_spec, apply, condition, get, resource, status, wait_for, wait_for_warning

from bioengine_devtools import cluster as devcluster
from bioengine_devtools.operator_process import OperatorProcess

pytestmark = pytest.mark.usefixtures("operator")
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
MODELS_CM = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "models"},
    "data": {"m__config.pbtxt": 'name: "m"\nbackend: "python"\n', "m__1__model.py": "# model\n"},
}


def runner(name: str, **spec: Any) -> dict[str, Any]:
    base = {"modelRepository": {"configMap": {"name": "models"}}, "models": ["m"]}
    return resource("ModelRunner", name, {**base, **spec})


def app(name: str, **spec: Any) -> dict[str, Any]:
    return resource("BioEngineApp", name, app_spec(**spec))


def dataset(name: str) -> dict[str, Any]:
    return resource(
        "BioEngineDataset",
        name,
        {"source": {"pvc": {"claimName": "cells"}}, "manifest": {"name": "Cells"}},
    )


def one_of_each(prefix: str) -> list[dict[str, Any]]:
    return [MODELS_CM, runner(f"{prefix}-mr"), app(f"{prefix}-app"), dataset(f"{prefix}-ds")]


def assert_refused(
    cluster: devcluster.DevCluster, namespace: str, obj: dict[str, Any], message: str
) -> None:
    """``kubectl apply`` of ``obj`` fails, and the API server's answer says ``message``."""
    refused = cluster.kubectl(
        "-n", namespace, "apply", "-f", "-", stdin=yaml.safe_dump(obj), check=False
    )
    assert refused.returncode != 0
    assert message in refused.stderr, refused.stderr


def reconciled(cluster: devcluster.DevCluster, ns: str, kind: str, name: str) -> bool:
    return bool(status(cluster, ns, kind, name).get("phase"))


# -- deletion ----------------------------------------------------------------------------


def test_resources_carry_no_finalizer_and_delete_without_the_operator(
    cluster: devcluster.DevCluster, namespace: str, operator: OperatorProcess
) -> None:
    apply(cluster, namespace, *one_of_each("del"))
    kinds = (("mr", "del-mr"), ("bea", "del-app"), ("bed", "del-ds"))
    for kind, name in kinds:
        wait_for(lambda k=kind, n=name: reconciled(cluster, namespace, k, n), f"{name} seen")
        assert not get(cluster, namespace, kind, name)["metadata"].get("finalizers")
    operator.stop()
    try:
        for kind, name in kinds:
            cluster.kubectl("-n", namespace, "delete", kind, name, "--wait", "--timeout=30s")
            assert not get(cluster, namespace, kind, name)
    finally:
        operator.start()


def test_a_namespace_with_resources_deletes_without_the_operator(
    cluster: devcluster.DevCluster, operator: OperatorProcess
) -> None:
    ns = "doomed"
    cluster.kubectl("create", "namespace", ns)
    apply(cluster, ns, *one_of_each("ns"))
    wait_for(lambda: reconciled(cluster, ns, "mr", "ns-mr"), "runner seen")
    operator.stop()
    try:
        # The namespace controller deletes everything in it; nothing may block that.
        cluster.kubectl("delete", "namespace", ns, "--wait", "--timeout=60s")
        assert cluster.kubectl("get", "namespace", ns, check=False).returncode != 0
    finally:
        operator.start()


def test_the_finalizer_of_earlier_versions_is_removed(
    cluster: devcluster.DevCluster, namespace: str
) -> None:
    old = runner("legacy")
    old["metadata"]["finalizers"] = [KOPF_FINALIZER]
    apply(cluster, namespace, MODELS_CM, old)
    wait_for(
        lambda: not get(cluster, namespace, "mr", "legacy")["metadata"].get("finalizers"),
        "the old finalizer removed",
    )
    cluster.kubectl("-n", namespace, "delete", "mr", "legacy", "--wait", "--timeout=30s")


# -- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (app("a" * 48), "at most 47 characters"),
        (runner("r" * 58), "at most 57 characters"),
        (dataset("d" * 56), "at most 55 characters"),
        (runner("1-starts-with-a-digit"), "DNS-1035 label"),
        (runner("has.dots"), "DNS-1035 label"),
        (app("reaches", datasets=["../modelrunners/good-runner"]), "spec.datasets[0]"),
        (runner("path", modelRepository={"configMap": {"name": "../secrets/x"}}), "name"),
        (
            runner("claim", modelRepository={"pvc": {"claimName": "/etc"}}),
            "claimName",
        ),
        (
            runner(
                "secret",
                modelRepository={"s3": {"uri": "s3://b/m", "secretRef": {"name": "a/b"}}},
            ),
            "secretRef.name",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else v["metadata"]["name"][:20],
)
def test_names_that_cannot_be_used_are_refused_at_apply(
    cluster: devcluster.DevCluster, namespace: str, obj: dict[str, Any], message: str
) -> None:
    assert_refused(cluster, namespace, obj, message)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"formatVersion": "0.5.0"},
            "formatVersion must be 0.6.0: apps of format 0.4/0.5 (deployments lists, "
            "deploymentConfig) must be migrated first",
        ),
        (
            {"deployments": ["helpers:Pre"], "deploymentConfig": {"numReplicas": 2}},
            "deployments is a format 0.5 field that format 0.6.0 dropped: compose classes "
            "through constructor type hints",
        ),
    ],
    ids=["format-0.5", "deployments-list"],
)
def test_a_format_05_app_is_refused_at_apply_with_the_migration(
    cluster: devcluster.DevCluster, namespace: str, spec: dict[str, Any], message: str
) -> None:
    refused = cluster.kubectl(
        "-n",
        namespace,
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump(app("old-app", **spec)),
        check=False,
    )
    assert refused.returncode != 0
    assert message in refused.stderr, refused.stderr
    assert "docs/app-format.md#migrating-from-format-05" in refused.stderr


def reconciles(operator: OperatorProcess, namespace: str, name: str) -> int:
    """How many reconciles of ``namespace/name`` the operator has logged."""
    lines = operator.log.read_text(errors="replace").splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    return sum(
        r.get("message", "").startswith("reconciled")
        and r.get("object", {}).get("namespace") == namespace
        and r.get("object", {}).get("name") == name
        for r in records
    )


def test_a_child_name_owned_by_another_resource_is_never_taken(
    cluster: devcluster.DevCluster, namespace: str, operator: OperatorProcess
) -> None:
    """Dataset "clash" owns the Service "clash-dataset"; a runner named "clash-dataset" wants
    a Service of that name too. The runner reports the conflict and touches nothing."""
    apply(cluster, namespace, MODELS_CM, dataset("clash"))
    wait_for(lambda: get(cluster, namespace, "service", "clash-dataset"), "dataset Service")
    before = get(cluster, namespace, "service", "clash-dataset")["metadata"]

    apply(cluster, namespace, runner("clash-dataset"))

    def conflict() -> dict[str, Any]:
        return condition(status(cluster, namespace, "mr", "clash-dataset"), "Ready")

    wait_for(lambda: conflict().get("reason") == "NameConflict", "NameConflict condition")
    assert "BioEngineDataset 'clash'" in conflict()["message"]
    assert status(cluster, namespace, "mr", "clash-dataset")["phase"] == "Failed"
    wait_for_warning(cluster, namespace, "clash-dataset", "NameConflict", "clash")
    # Three more reconciles of each (the test operator resyncs every 2 s): nothing flipped.
    counts = {n: reconciles(operator, namespace, n) for n in ("clash", "clash-dataset")}
    wait_for(
        lambda: all(reconciles(operator, namespace, n) >= c + 3 for n, c in counts.items()),
        "three more reconciles of both",
    )
    after = get(cluster, namespace, "service", "clash-dataset")["metadata"]
    assert after["resourceVersion"] == before["resourceVersion"]
    assert after["ownerReferences"] == before["ownerReferences"]
    assert not get(cluster, namespace, "deployment", "clash-dataset-blue")


def test_any_unicode_value_reaches_the_cluster_intact(
    cluster: devcluster.DevCluster, namespace: str
) -> None:
    note = "HeLa 🦠 cells, ünïcødé, 細胞, \U0001f9ec"
    apply(
        cluster,
        namespace,
        MODELS_CM,
        runner("uni", args=[f"--log-file=/tmp/🦠{note[-1]}.log"], podAnnotations={"note": note}),
    )
    wait_for(lambda: get(cluster, namespace, "deployment", "uni-blue"), "Deployment applied")
    template = get(cluster, namespace, "deployment", "uni-blue")["spec"]["template"]
    assert template["metadata"]["annotations"]["note"] == note
    assert f"--log-file=/tmp/🦠{note[-1]}.log" in template["spec"]["containers"][0]["args"]


def test_host_path_datasets_are_refused_unless_allowed(
    cluster: devcluster.DevCluster, namespace: str
) -> None:
    """The test operator allows no hostPath directory, like the chart's default."""
    spec = {"source": {"hostPath": {"path": "/etc"}}, "manifest": {"name": "Node files"}}
    apply(cluster, namespace, resource("BioEngineDataset", "node-files", spec))

    def ready() -> dict[str, Any]:
        return condition(status(cluster, namespace, "bed", "node-files"), "Ready")

    wait_for(lambda: ready().get("reason") == "HostPathNotAllowed", "HostPathNotAllowed")
    assert "/etc" in ready()["message"]
    wait_for_warning(cluster, namespace, "node-files", "HostPathNotAllowed")
    assert not get(cluster, namespace, "deployment", "node-files-dataset")


# -- nothing silent ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (runner("q1", resources={"cpu": "lots"}), "spec.resources.cpu in body should match"),
        (runner("q2", resources={"memory": -1}), "spec.resources.memory in body should be greater"),
        (runner("ns1", nodeSelector={"bad key!": "x"}), "every nodeSelector key must be a label"),
        (
            runner("ns2", nodeSelector={"pool": "a b"}),
            "spec.nodeSelector.pool in body should match",
        ),
        (
            runner("t1", tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]),
            "a toleration with operator Exists takes no value",
        ),
        (
            runner("t2", tolerations=[{"key": "k", "tolerationSeconds": 5}]),
            "tolerationSeconds needs effect NoExecute",
        ),
        (runner("t3", tolerations=[{"value": "v"}]), "a toleration without a key must have"),
        (runner("big", startupTimeoutSeconds=2**62), "spec.startupTimeoutSeconds: Invalid value"),
        (runner("img", image=" tritonserver"), "spec.image in body should match"),
        (runner("ann", podAnnotations={"a b": "x"}), "every podAnnotations key must be a label"),
        (
            runner("sp1", modelRepository={"pvc": {"claimName": "c", "subPath": "/etc"}}),
            "spec.modelRepository.pvc.subPath in body should match",
        ),
        (
            runner("sp2", modelRepository={"pvc": {"claimName": "c", "subPath": "a/../../b"}}),
            "subPath must not contain '..'",
        ),
        (app("gpus", rayCluster={"head": {"resources": {"cpu": "1x"}}}), "cpu in body should"),
    ],
    ids=lambda v: v if isinstance(v, str) else v["metadata"]["name"],
)
def test_values_a_pod_could_not_take_are_refused_at_apply(
    cluster: devcluster.DevCluster, namespace: str, obj: dict[str, Any], message: str
) -> None:
    assert_refused(cluster, namespace, obj, message)


def test_a_child_the_api_server_refuses_is_reported_not_retried_silently(
    cluster: devcluster.DevCluster, namespace: str
) -> None:
    """Pod annotations within every per-key limit, but over Kubernetes' 256 KiB in total: the
    API server takes the ModelRunner and refuses its Deployments. The runner says so, with
    the server's message, as a condition and a Warning Event; a good runner beside it is
    reconciled as usual."""
    heavy = {f"example.org/note-{i}": "x" * 4096 for i in range(64)}
    apply(cluster, namespace, MODELS_CM, runner("light"))
    # Created, not applied: kubectl apply would copy the whole object into an annotation
    # of the runner itself, which is then over the limit first.
    heavy_runner = runner("heavy", podAnnotations=heavy)
    cluster.kubectl("-n", namespace, "create", "-f", "-", stdin=json.dumps(heavy_runner))
    wait_for(lambda: status(cluster, namespace, "mr", "light").get("phase") == "Ready", "light")

    def refused() -> bool:
        ready = condition(status(cluster, namespace, "mr", "heavy"), "Ready")
        return ready.get("reason") == "ApplyFailed"

    wait_for(refused, "ApplyFailed reported")
    st = status(cluster, namespace, "mr", "heavy")
    assert st["phase"] == "Failed"
    message = condition(st, "Ready")["message"]
    assert "the API server refused Deployment 'heavy-" in message
    assert "may not be more than 262144 bytes" in message, message
    wait_for_warning(cluster, namespace, "heavy", "ApplyFailed")
    # Fixed by the user: it recovers without anyone restarting anything.
    cluster.kubectl(
        "-n", namespace, "patch", "mr", "heavy", "--type=json",
        "-p", json.dumps([{"op": "remove", "path": "/spec/podAnnotations"}]),
    )  # fmt: skip
    wait_for(lambda: status(cluster, namespace, "mr", "heavy").get("phase") == "Ready", "fixed")


def test_pods_that_cannot_be_scheduled_say_why_in_the_status(
    cluster: devcluster.DevCluster, namespace: str
) -> None:
    apply(cluster, namespace, MODELS_CM, runner("nowhere", nodeSelector={"pool": "none"}))

    def explained() -> bool:
        ready = condition(status(cluster, namespace, "mr", "nowhere"), "Ready")
        return "cannot be scheduled" in ready.get("message", "")

    wait_for(explained, "the scheduler's reason in the status")
    message = condition(status(cluster, namespace, "mr", "nowhere"), "Ready")["message"]
    assert "didn't match Pod's node affinity/selector" in message, message
    assert status(cluster, namespace, "mr", "nowhere")["phase"] == "Deploying"
