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
    refused = cluster.kubectl(
        "-n", namespace, "apply", "-f", "-", stdin=yaml.safe_dump(obj), check=False
    )
    assert refused.returncode != 0
    assert message in refused.stderr, refused.stderr


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
