"""The blue/green planner, step by step and in a simulated rollout with adversarial timing."""

from __future__ import annotations

import random

import pytest

from bioengine_operator import bluegreen
from bioengine_operator.bluegreen import ABSENT, Observed, plan


def ready(rev: str, n: int = 2) -> Observed:
    return Observed(True, rev, True, n)


def rolling(rev: str) -> Observed:
    return Observed(True, rev, False, 0)


def test_first_creation_makes_both_colors() -> None:
    step = plan("r1", {"blue": ABSENT, "green": ABSENT})
    assert step.targets == {"blue": "r1", "green": "r1"}
    assert step.phase == "Deploying"


def test_steady_state() -> None:
    step = plan("r1", {"blue": ready("r1"), "green": ready("r1")})
    assert step.phase == "Ready" and step.updating is None


def test_update_starts_with_one_color_only() -> None:
    step = plan("r2", {"blue": ready("r1"), "green": ready("r1")})
    assert step.targets == {"green": "r2", "blue": None}
    assert step.updating == "green"


def test_second_color_waits_for_the_first() -> None:
    step = plan("r2", {"blue": ready("r1"), "green": rolling("r2")})
    assert step.targets["blue"] is None
    step = plan("r2", {"blue": ready("r1"), "green": ready("r2")})
    assert step.targets == {"blue": "r2", "green": "r2"} and step.updating == "blue"


def test_a_color_that_does_not_serve_is_moved_first() -> None:
    step = plan("r2", {"blue": rolling("r1"), "green": ready("r1")})
    assert step.targets == {"blue": "r2", "green": None}


def test_nothing_serving_moves_both() -> None:
    step = plan("r2", {"blue": rolling("r1"), "green": rolling("r1")})
    assert step.targets == {"blue": "r2", "green": "r2"}


def test_deleted_color_is_recreated_while_the_other_serves() -> None:
    step = plan("r1", {"blue": ready("r1"), "green": ABSENT})
    assert step.targets == {"blue": "r1", "green": "r1"}
    step = plan("r2", {"blue": ready("r1"), "green": ABSENT})
    assert step.targets == {"green": "r2", "blue": None}


def test_new_revision_during_an_update_restarts_safely() -> None:
    # r2 was rolling on green when r3 arrived: blue still serves r1, so only green moves.
    step = plan("r3", {"blue": ready("r1"), "green": rolling("r2")})
    assert step.targets == {"green": "r3", "blue": None}


class SimulatedColor:
    """A Deployment with the Recreate strategy: old pods go, then new pods become Ready one
    at a time, at moments the test chooses at random."""

    def __init__(self, rev: str, replicas: int) -> None:
        self.rev, self.replicas, self.ready = rev, replicas, replicas

    def set_revision(self, rev: str) -> None:
        if rev != self.rev:
            self.rev, self.ready = rev, 0  # Recreate: every pod of this color goes first

    def tick(self) -> None:
        self.ready = min(self.replicas, self.ready + 1)

    def observed(self) -> Observed:
        return Observed(True, self.rev, self.ready == self.replicas, self.ready)


@pytest.mark.parametrize("seed", range(25))
def test_simulated_rollouts_keep_the_invariants(seed: int) -> None:
    rng = random.Random(seed)
    replicas = rng.randint(1, 3)
    colors = {c: SimulatedColor("r0", replicas) for c in bluegreen.COLORS}
    revisions = ["r1", "r2", "r3"][: rng.randint(1, 3)]
    target_index = 0
    for _ in range(200):
        if target_index < len(revisions) - 1 and rng.random() < 0.05:
            target_index += 1  # a new spec arrives mid-rollout
        desired = revisions[target_index]
        step = plan(desired, {c: colors[c].observed() for c in bluegreen.COLORS})
        for color, target in step.targets.items():
            if target is not None:
                colors[color].set_revision(target)
        serving = sum(c.ready for c in colors.values())
        assert serving >= 1, f"no ready pod at some moment (seed {seed})"
        assert sum(c.replicas for c in colors.values()) <= 2 * replicas  # never a surge
        rng.choice(list(colors.values())).tick()
    final = plan(revisions[-1], {c: colors[c].observed() for c in bluegreen.COLORS})
    assert final.phase == "Ready"
    assert {c.rev for c in colors.values()} == {revisions[-1]}
