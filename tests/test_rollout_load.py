"""A ModelRunner update rolled out under a stream of ``infer`` calls through the bridge while
one color's Triton is killed (``bioengine_devtools.rollout``; the stack's kwok pods are given
their readiness by a simulated kubelet from the real Tritons): a few rounds, asserting the
invariants; ``bench/chaos.py --rollouts`` runs the full count. No timing is asserted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import register_logs
from helpers import items, status

from bioengine_devtools import rollout
from bioengine_devtools.stack import NS, RUNNER, BridgeStack
from bioengine_operator.builders import triton


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeStack]:
    with (
        BridgeStack(tmp_path_factory.mktemp("rollout"), with_app=False) as running,
        register_logs(running.log_tails),
    ):
        yield running


def test_updates_with_a_color_killed_lose_no_call_and_need_no_extra_pod(
    stack: BridgeStack,
) -> None:
    result = rollout.rollout_under_load(stack, rounds=2, seed=1)
    failed = len(result.failed)
    assert failed == 0, f"{failed} of {result.calls} failed, e.g. ...{result.failed[0][-240:]}"
    assert result.rollouts == result.kills == 2
    assert result.calls > 20
    assert result.steady_pods == 4 and result.peak_pods <= result.steady_pods
    final = status(stack.cluster, NS, "mr", RUNNER)
    assert final["phase"] == "Ready" and final["revision"] == result.revision
    pods = items(stack.cluster, NS, "pods", rollout.SELECTOR)
    assert len(pods) == 4
    assert {p["metadata"]["labels"][triton.REVISION_LABEL] for p in pods} == {result.revision}
