"""The chaos scenarios of ``bench/chaos.py``, a few rounds each, asserting their invariants
(the full counts and the figures are the benchmark's; no timing is asserted here)."""

from __future__ import annotations

import pytest
from kubernetes import client

from bioengine_devtools import chaos
from bioengine_devtools import cluster as devcluster
from bioengine_devtools.operator_process import OperatorProcess


@pytest.fixture
def target(api: client.ApiClient, namespace: str) -> chaos.Cluster:
    cluster = chaos.Cluster(api, namespace)
    cluster.create(chaos.MODELS)
    return cluster


def test_generated_and_odd_resources_are_refused_or_reported(
    cluster: devcluster.DevCluster, operator: OperatorProcess, target: chaos.Cluster
) -> None:
    specs = [(kind, spec) for kind in chaos.CHILDREN for spec in chaos.generated(kind, 12, seed=1)]
    specs += [(body["kind"], body["spec"]) for body in chaos.mutated(24, seed=2)]
    result = chaos.fuzz(target, operator, specs)
    assert result.applied == len(specs) and result.refused < result.applied
    assert not result.refusals_without_message
    assert not result.silent, f"accepted but never reported: {result.silent}"
    assert result.reported == result.applied - result.refused


def test_kill_9_during_churn_converges_without_orphans_duplicates_or_drift(
    cluster: devcluster.DevCluster, operator: OperatorProcess, target: chaos.Cluster
) -> None:
    result = chaos.churn(target, operator, resources=8, kills=3, seed=3)
    assert result.kills == 3
    assert not result.orphans and not result.duplicates, (result.orphans, result.duplicates)
    assert not result.stuck, result.stuck
    assert not result.drift, f"a fresh operator changed {result.drift}"
