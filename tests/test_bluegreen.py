"""The blue/green protocol: the planner step by step, then whole rollouts in a simulation.

The simulation runs the operator's own pure code (``modelrunner.step``: the Triton builder,
the revision hash, the pod-based observation and the planner) against a model of what it
does not control: each color's Deployment controller (which replaces pods when the *whole*
pod template changes, as Kubernetes' ``pod-template-hash`` does, with the strategy the
builder asked for), a scheduler with a limited number of GPU slots (so pods stay Pending and
colors are partly Ready), pods that take their time to start and to terminate, spec changes,
scale changes, model ConfigMap changes and operator upgrades arriving mid-rollout, and an
operator that may crash between any two of its writes. Events interleave at random.

After every event it checks the invariants of :mod:`bioengine_operator.bluegreen`; the last
tests break the protocol on purpose and check that the invariants catch it.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import pytest

from bioengine_operator import bluegreen
from bioengine_operator.api.modelrunner import ModelRunnerSpec
from bioengine_operator.bluegreen import ABSENT, COLORS, Observed, plan
from bioengine_operator.builders import meta, triton
from bioengine_operator.controllers import modelrunner


def ready(rev: str) -> Observed:
    return Observed(True, rev, 2, True)


def rolling(rev: str) -> Observed:
    return Observed(True, rev, 0, False)


def partly(rev: str) -> Observed:
    """One of two pods Ready, the other Pending (no GPU free)."""
    return Observed(True, rev, 1, False)


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


def test_second_color_waits_until_the_first_serves() -> None:
    step = plan("r2", {"blue": ready("r1"), "green": rolling("r2")})
    assert step.targets["blue"] is None
    step = plan("r2", {"blue": ready("r1"), "green": partly("r2")})
    assert step.targets == {"blue": "r2", "green": "r2"} and step.updating == "blue"


def test_a_partly_ready_color_is_serving_and_protected() -> None:
    # blue has 1 of 2 pods Ready, the other Pending: it is the only color serving.
    step = plan("r2", {"blue": partly("r1"), "green": rolling("r1")})
    assert step.targets == {"green": "r2", "blue": None}
    step = plan("r2", {"blue": partly("r1"), "green": rolling("r2")})
    assert step.targets["blue"] is None


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


def test_the_second_color_starting_is_the_update_not_a_fault() -> None:
    """Found with real pods: while the second color's new pods start, the runner is still
    Updating; Degraded (a Warning Event) is for a color whose pods fail after its rollout."""
    starting = dataclasses.replace(rolling("r2"), rolling=True)
    step = plan("r2", {"blue": starting, "green": ready("r2")})
    assert (step.phase, step.reason) == ("Updating", "WaitingForColor")
    crashed = plan("r2", {"blue": rolling("r2"), "green": ready("r2")})
    assert crashed.phase == "Degraded"


def test_a_color_rolls_until_its_deployment_has_rolled_out() -> None:
    def deployment(
        observed: int = 2, updated: int = 2, replicas: int = 2, reason: str | None = None
    ) -> dict[str, Any]:
        progressing = [{"type": "Progressing", "status": "True", "reason": reason}]
        return {
            "metadata": {"generation": 2},
            "spec": {"replicas": 2},
            "status": {
                "observedGeneration": observed,
                "updatedReplicas": updated,
                "replicas": replicas,
                "conditions": progressing if reason else [],
            },
        }

    done = "NewReplicaSetAvailable"
    assert not modelrunner.rolling(deployment(reason=done))
    assert modelrunner.rolling(deployment(observed=1, reason=done))  # template not seen yet
    # Recreate: old pods terminating, no new ReplicaSet yet, the condition still the old one's
    assert modelrunner.rolling(deployment(updated=0, replicas=0, reason=done))
    assert modelrunner.rolling(deployment(updated=0, replicas=2, reason=done))
    assert modelrunner.rolling(deployment(reason="ReplicaSetUpdated"))  # new pods starting
    assert modelrunner.rolling(deployment(reason=None))


def test_terminated_pods_do_not_keep_a_color_from_settling() -> None:
    deployment = {
        "metadata": {"labels": {triton.REVISION_LABEL: "r1"}},
        "spec": {"replicas": 1},
    }

    def pod(phase: str, ready: str) -> dict[str, Any]:
        return {
            "metadata": {"labels": {triton.REVISION_LABEL: "r1"}},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]},
        }

    evicted = pod("Failed", "False")
    assert modelrunner.observe(deployment, [pod("Running", "True"), evicted]).settled
    assert not modelrunner.observe(
        deployment, [pod("Running", "True"), pod("Pending", "False")]
    ).settled


# -- the revision ------------------------------------------------------------------------

OWNER = meta.Owner("ModelRunner", "sim", "ns", "uid-1")
IMAGE = "triton:1"


def runner_spec(replicas: int = 2, args: tuple[str, ...] = ()) -> ModelRunnerSpec:
    return ModelRunnerSpec.model_validate(
        {
            "modelRepository": {"configMap": {"name": "models"}},
            "models": ["m"],
            "replicas": replicas,
            "args": list(args),
        }
    )


def test_revision_follows_the_pod_template_not_the_spec_alone() -> None:
    spec = runner_spec()
    base = triton.Inputs(IMAGE, ("m__config.pbtxt",), "h1")
    rev = triton.revision(OWNER, spec, base)
    changed = {
        "a ConfigMap key": dataclasses.replace(base, config_map_keys=("a", "m__config.pbtxt")),
        "ConfigMap content": dataclasses.replace(base, config_map_hash="h2"),
        "the operator's default image": dataclasses.replace(base, triton_image="triton:2"),
    }
    for what, inputs in changed.items():
        assert triton.revision(OWNER, spec, inputs) != rev, what
    assert triton.revision(OWNER, runner_spec(args=("--log-verbose=1",)), base) != rev
    # Scaling is not a new revision: no pod is replaced to change the replica count.
    assert triton.revision(OWNER, runner_spec(replicas=5), base) == rev
    assert triton.revision(OWNER, spec, base) == rev


# -- the simulation ----------------------------------------------------------------------


class Violation(AssertionError):
    """An invariant of the blue/green protocol did not hold."""


@dataclasses.dataclass
class Pod:
    name: str
    color: str
    revision: str
    template_hash: str
    born: int
    state: str = "pending"  # pending (no GPU slot yet), ready, terminating
    had_slot: bool = False

    def as_api(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": self.name,
            "labels": {triton.COLOR_LABEL: self.color, triton.REVISION_LABEL: self.revision},
        }
        if self.state == "terminating":
            metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        ready = "True" if self.state == "ready" else "False"
        return {
            "metadata": metadata,
            "status": {"conditions": [{"type": "Ready", "status": ready}]},
        }


@dataclasses.dataclass
class SimDeployment:
    obj: dict[str, Any]
    replicas_since: list[tuple[int, int]]  # (time, replicas) each time the count changed

    @property
    def template_hash(self) -> str:
        return meta.digest(self.obj["spec"]["template"])


class Simulation:
    """One runner, its two Deployments, their pods and a scheduler with ``capacity`` slots."""

    def __init__(self, rng: random.Random, capacity: int) -> None:
        self.rng, self.capacity = rng, capacity
        self.spec = runner_spec(self.random_replicas(rng))
        self.inputs = triton.Inputs(IMAGE, ("m__config.pbtxt",), "h0")
        self.deployments: dict[str, SimDeployment] = {}
        self.pods: list[Pod] = []
        self.time = 0
        self.served = False
        self.names = (f"pod-{i}" for i in range(10**6))

    def random_replicas(self, rng: random.Random) -> int:
        """A replica count with at least one GPU slot more than a color needs, so an update
        can always make progress; below 2 x replicas, some pods stay Pending for good."""
        return rng.randint(1, min(3, self.capacity - 1))

    # -- the operator --------------------------------------------------------------------

    def reconcile(self, crash: bool) -> bluegreen.Plan:
        live = {c: (self.deployments[c].obj if c in self.deployments else None) for c in COLORS}
        pods = [p.as_api() for p in self.pods]
        now = modelrunner.step(OWNER, self.spec, self.inputs, live, pods)  # type: ignore[arg-type]
        writes = [c for c in now.children if c["kind"] == "Deployment"]
        self.check_one_color_at_a_time(writes)
        if crash:  # the operator dies after some of its writes
            writes = writes[: self.rng.randrange(len(writes) + 1)]
        for obj in writes:
            self.apply(obj)
        return now.plan

    def apply(self, obj: dict[str, Any]) -> None:
        color = obj["metadata"]["labels"][triton.COLOR_LABEL]
        replicas = obj["spec"]["replicas"]
        current = self.deployments.get(color)
        if current is None:
            self.deployments[color] = SimDeployment(obj, [(self.time, replicas)])
            return
        if current.obj["spec"]["replicas"] != replicas:
            current.replicas_since.append((self.time, replicas))
        current.obj = obj

    # -- what Kubernetes does ------------------------------------------------------------

    def deployment_controller(self, color: str) -> None:
        deployment = self.deployments.get(color)
        if deployment is None:
            return
        spec = deployment.obj["spec"]
        mine = [p for p in self.pods if p.color == color]
        old = [p for p in mine if p.template_hash != deployment.template_hash]
        if spec["strategy"]["type"] == "Recreate":
            if old:  # every old pod goes, and none is created until they are gone
                for pod in old:
                    pod.state = "terminating"
                return
        else:  # RollingUpdate: new pods first, old ones once new ones are ready
            new_ready = [p for p in mine if p not in old and p.state == "ready"]
            for pod in old[: len(new_ready)]:
                pod.state = "terminating"
        live = [p for p in mine if p not in old and p.state != "terminating"]
        for _ in range(spec["replicas"] - len(live)):
            labels = spec["template"]["metadata"]["labels"]
            self.pods.append(
                Pod(
                    next(self.names),
                    color,
                    labels[triton.REVISION_LABEL],
                    deployment.template_hash,
                    self.time,
                )
            )
        # Scaling down, the ReplicaSet controller deletes Pending pods before Ready ones.
        for pod in sorted(live, key=lambda p: p.state != "ready")[spec["replicas"] :]:
            pod.state = "terminating"

    def schedule_one(self) -> None:
        pending = [p for p in self.pods if p.state == "pending"]
        if pending and sum(p.had_slot for p in self.pods) < self.capacity:
            pod = self.rng.choice(pending)
            pod.state, pod.had_slot = "ready", True

    def finish_one_termination(self) -> None:
        terminating = [p for p in self.pods if p.state == "terminating"]
        if terminating:
            self.pods.remove(self.rng.choice(terminating))

    # -- invariants ----------------------------------------------------------------------

    def ready_of(self, color: str) -> int:
        deployment = self.deployments.get(color)
        if deployment is None:
            return 0
        return sum(
            p.state == "ready" and p.template_hash == deployment.template_hash
            for p in self.pods
            if p.color == color
        )

    def check_one_color_at_a_time(self, writes: list[dict[str, Any]]) -> None:
        """A color that serves gets a new template only while the other serves, unchanged."""
        changed = [
            obj["metadata"]["labels"][triton.COLOR_LABEL]
            for obj in writes
            if obj["metadata"]["labels"][triton.COLOR_LABEL] in self.deployments
            and meta.digest(obj["spec"]["template"])
            != self.deployments[obj["metadata"]["labels"][triton.COLOR_LABEL]].template_hash
        ]
        for color in changed:
            other = "green" if color == "blue" else "blue"
            if self.ready_of(color) and (other in changed or not self.ready_of(other)):
                raise Violation(f"t={self.time}: {color} replaced while the only color serving")

    def check(self) -> None:
        # Serving pods: Ready and of their Deployment's current template. A pod of an older
        # template may still turn Ready before its controller gets to it, but it is doomed.
        ready_now = sum(self.ready_of(c) for c in COLORS)
        if self.served and ready_now == 0:
            raise Violation(f"t={self.time}: no Ready pod serves after the runner had served")
        self.served = self.served or ready_now > 0
        for color in COLORS:
            mine = [p for p in self.pods if p.color == color]
            if len({p.template_hash for p in mine}) > 1:
                raise Violation(f"t={self.time}: {color} has pods of two templates at once")
            if mine:
                oldest = min(p.born for p in mine)
                history = self.deployments[color].replicas_since
                window = [r for t, r in history if t >= oldest]
                window += [r for t, r in history if t < oldest][-1:]
                if len(mine) > max(window):
                    raise Violation(
                        f"t={self.time}: {color} holds {len(mine)} pods, more than any replica "
                        f"count it had since its oldest pod was made ({max(window)})"
                    )

    # -- changes from outside ------------------------------------------------------------

    def change(self) -> None:
        what = self.rng.choice(["args", "scale", "args+scale", "configmap", "operator"])
        if "args" in what:
            flag = f"--log-verbose={self.rng.randrange(1000)}"
            self.spec = runner_spec(self.spec.replicas, (flag,))
        if "scale" in what:
            self.spec = runner_spec(self.random_replicas(self.rng), tuple(self.spec.args))
        if what == "configmap":
            self.inputs = dataclasses.replace(self.inputs, config_map_hash=str(self.time))
        if what == "operator":
            self.inputs = dataclasses.replace(self.inputs, triton_image=f"triton:{self.time}")

    def event(self, changes_allowed: bool) -> None:
        roll = self.rng.random()
        if roll < 0.25:
            self.reconcile(crash=self.rng.random() < 0.3)
        elif roll < 0.5:
            self.deployment_controller(self.rng.choice(COLORS))
        elif roll < 0.72:
            self.schedule_one()
        elif roll < 0.95:
            self.finish_one_termination()
        elif changes_allowed:
            self.change()
        self.time += 1
        self.check()

    def settle(self) -> bluegreen.Plan:
        """Let everything finish without further changes; the last plan."""
        for _ in range(400):
            self.event(changes_allowed=False)
        for _ in range(20):  # then every actor in turn, until nothing moves
            self.reconcile(crash=False)
            for color in COLORS:
                self.deployment_controller(color)
            for _ in range(len(self.pods)):
                self.schedule_one()
                self.finish_one_termination()
            self.check()
        return self.reconcile(crash=False)


def simulate(seed: int) -> Simulation:
    rng = random.Random(seed)
    sim = Simulation(rng, capacity=rng.randint(2, 7))
    for _ in range(300):
        sim.event(changes_allowed=True)
    final = sim.settle()
    replicas = sim.spec.replicas
    revision = triton.revision(OWNER, sim.spec, sim.inputs)
    assert final.targets == {"blue": revision, "green": revision}, f"seed {seed}: not rolled"
    assert {p.revision for p in sim.pods} == {revision}, f"seed {seed}: old pods left"
    assert sum(p.state == "ready" for p in sim.pods) == min(2 * replicas, sim.capacity)
    if sim.capacity >= 2 * replicas:
        assert final.phase == "Ready", f"seed {seed}: {final.phase} {final.message}"
    return sim


@pytest.mark.parametrize("seed", range(40))
def test_simulated_rollouts_keep_the_invariants(seed: int) -> None:
    simulate(seed)


# -- the invariants can fail -------------------------------------------------------------

ORIGINAL_PLAN = bluegreen.plan
ORIGINAL_DEPLOYMENT = triton.deployment


def serving_means_settled(desired: str, observed: dict[Any, Observed]) -> bluegreen.Plan:
    """The old rule: a color with some pods still Pending counted as not serving."""
    strict = {
        c: dataclasses.replace(o, ready=o.ready if o.settled else 0) for c, o in observed.items()
    }
    return ORIGINAL_PLAN(desired, strict)


def both_at_once(desired: str, observed: dict[Any, Observed]) -> bluegreen.Plan:
    found = ORIGINAL_PLAN(desired, observed)
    return dataclasses.replace(found, targets={c: desired for c in COLORS})


def spec_only_revision(owner: meta.Owner, spec: ModelRunnerSpec, inputs: triton.Inputs) -> str:
    """The old revision: a hash of the spec, blind to the ConfigMap and the operator."""
    return meta.digest({k: v for k, v in spec.dump().items() if k != "replicas"})


def rolling_update(*args: Any) -> dict[str, Any]:
    obj = ORIGINAL_DEPLOYMENT(*args)
    obj["spec"]["strategy"] = {"type": "RollingUpdate"}
    return obj


BROKEN: dict[str, tuple[Any, str, Callable[..., Any]]] = {
    "a partly Ready color counted as not serving": (bluegreen, "plan", serving_means_settled),
    "both colors moved at once": (bluegreen, "plan", both_at_once),
    "the revision hashes the spec only": (triton, "revision", spec_only_revision),
    "Deployments that surge": (triton, "deployment", rolling_update),
}


@pytest.mark.parametrize("broken", BROKEN)
def test_the_invariants_catch_a_broken_protocol(
    broken: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, name, replacement = BROKEN[broken]
    monkeypatch.setattr(module, name, replacement)
    failures = (seed for seed in range(40) if _fails(seed))
    assert next(failures, None) is not None, f"{broken}: no seed broke an invariant"


def _fails(seed: int) -> bool:
    try:
        simulate(seed)
    except AssertionError:  # a Violation, or a rollout that never completes
        return True
    return False
