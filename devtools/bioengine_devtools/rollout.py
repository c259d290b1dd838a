"""A ModelRunner spec update rolled out under a steady stream of ``infer`` calls through the
bridge, while one color's Triton is killed: for ``tests/test_rollout_load.py`` (a few
rounds, asserting the invariants) and ``bench/chaos.py`` (the full count, printing it).

kwok pods run no containers, so :class:`RunnerKubelet` plays the kubelet for the runner's
pods (a simulation, named as such) with the stack's two real Tritons, one per color, each
standing for every pod of its color:

* a color's Triton runs while the color has a scheduled pod that is not being deleted: when
  the rollout deletes the color's pods, its Triton is stopped (SIGTERM, as the kubelet stops
  a deleted pod's containers), and it is started again for the new pods;
* a pod is Ready only while its color's Triton answers, as the kubelet's probes have it
  written: Ready at the first startup probe (one every ``periodSeconds`` of the pod's
  ``startupProbe`` from the container's start) that finds the Triton answering; NotReady at
  once when the Triton is killed (SIGKILL: its container or node dying, which the kubelet
  sees without a probe), until the kubelet has restarted it after a short back-off.

kwok would make new pods Ready on its own (its pod-ready stage, at once), before any Triton
answers, so the update gives the pods kwok's ready-delay annotation of a day: the
simulation alone takes them out of Pending. That stage selects Pending pods only, so kwok
never reverts what the simulation writes to a Running pod's status.

What stays out of the simulation: a Ready pod gets no IP (kwok's stage would have given it
one), so no EndpointSlice lists it; the bridge reaches each color's Triton through its
endpoints file, as everywhere in the stack.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import threading
import time
import urllib.error
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, cast

import numpy as np
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from bioengine_devtools.cluster import READY_DELAY_ANNOTATION
from bioengine_devtools.stack import NS, RUNNER, WORKSPACE, BridgeStack
from bioengine_operator import conditions
from bioengine_operator.api.base import GROUP, VERSION
from bioengine_operator.bluegreen import COLORS, Color
from bioengine_operator.builders import meta, triton
from bioengine_operator.local import servers

logger = logging.getLogger(__name__)
SELECTOR = f"{meta.PREFIX}/modelrunner={RUNNER}"
# Changed on every update: a new pod template, hence a new revision.
ROUND_ANNOTATION = f"{meta.PREFIX}/chaos-round"
# kwok's ready delay on the runner's pods: longer than any run, so only the simulation
# makes them Running and Ready.
NOT_BY_KWOK = "24h"
TERMINATED = ("Failed", "Succeeded")
TICK = 0.05  # seconds between two looks of the simulated kubelet, when no pod event wakes it


Object = dict[str, Any]


def _ready(pod: Object) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _labels(pod: Object) -> dict[str, str]:
    return dict(pod["metadata"].get("labels") or {})


def _phase(pod: Object) -> str | None:
    return (pod.get("status") or {}).get("phase")


def _other(color: Color) -> Color:
    return "green" if color == "blue" else "blue"


@dataclasses.dataclass
class _Color:
    """What the simulated kubelet knows of one color's Triton."""

    triton: servers.TritonServer
    up: bool  # started, and not killed or stopped since
    ready_at: float = 0.0  # the first startup probe that finds it answering
    restart_at: float | None = None  # after a kill: when the kubelet starts it again


@dataclasses.dataclass(frozen=True)
class _Kill:
    revision: str  # what the runner is rolling to
    not_before: float  # time.monotonic()
    down: float  # seconds until the kubelet restarts the killed container


class RunnerKubelet:
    """Plays the kubelet for the stack's runner (a simulation; see the module docstring):
    a watch of the runner's pods (which also counts the most pods that existed at once), and
    one thread per color starting and stopping its Triton and writing its pods' readiness.
    Used as a context manager: its threads are stopped and joined on the way out, and a
    failure in one of them is raised there (and by :meth:`check` meanwhile)."""

    def __init__(self, stack: BridgeStack) -> None:
        self.core = client.CoreV1Api(
            config.new_client_from_config(config_file=str(stack.cluster.kubeconfig))
        )
        self.pods: dict[str, Object] = {}  # by name, as last watched
        self.peak = 0  # the most runner pods that existed at once (terminated ones aside)
        self.kills = 0
        self.failure: BaseException | None = None
        self._colors = {
            c: _Color(stack.tritons[c], up=stack.tritons[c].proc is not None) for c in COLORS
        }
        # The Ready value each pod's status holds: the simulation is its only writer, once
        # a pod is past kwok (the pods of the stack's start were made Ready by kwok).
        self._shown: dict[str, bool] = {}
        self._kill: _Kill | None = None
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> RunnerKubelet:
        version = self._list()
        self._threads = [
            threading.Thread(target=self._guarded, args=(self._watch, version), daemon=True),
            *(
                threading.Thread(target=self._guarded, args=(self._run, c), daemon=True)
                for c in COLORS
            ),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        for thread in self._threads:
            thread.join()
        if error is None:
            self.check()

    def _guarded(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except BaseException as err:
            with self._lock:
                self.failure = self.failure or err
                self._lock.notify_all()

    def check(self) -> None:
        """Raise what stopped one of the simulation's threads, if anything did."""
        if self.failure is not None:
            raise RuntimeError("the simulated kubelet failed") from self.failure

    # -- what the scenario asks --------------------------------------------------------

    def kill_when_covered(self, revision: str, delay: float, down: float) -> None:
        """Kill one color's Triton (SIGKILL) ``delay`` seconds from now or at the first
        moment after that at which the other color covers for it until it is back: the
        other color serves (all its pods Ready, its Triton up) and the operator will not
        replace it, since its pods are at ``revision`` already, or since the killed color
        has not served since its pods were replaced (the operator moves the second color
        only once the first serves). A kill at any other moment would leave no color
        answering, whatever the operator does. The kubelet restarts it after ``down`` s."""
        with self._lock:
            assert self._kill is None, "one kill at a time"
            self._kill = _Kill(revision, time.monotonic() + delay, down)
            self._lock.notify_all()

    def serving(self, revision: str, pods: int) -> bool:
        """Whether the runner has exactly ``pods`` pods, all at ``revision`` and Ready, no
        kill pending, and both Tritons up and answering."""
        with self._lock:
            live = [p for c in COLORS for p in self._live(c)]
            settled = (
                self._kill is None
                and all(s.up for s in self._colors.values())
                and len(live) == len(self.pods) == pods
                and all(
                    self._shown.get(p["metadata"]["name"])
                    and _labels(p).get(triton.REVISION_LABEL) == revision
                    for p in live
                )
            )
            urls = [s.triton.http for s in self._colors.values()]
        try:
            return settled and all(servers.answers(f"{url}/v2/health/ready") for url in urls)
        except (urllib.error.URLError, OSError):
            return False

    def describe(self) -> str:
        """The pods and the Tritons as the simulation sees them (for a timeout's message)."""
        with self._lock:
            pods = [
                f"{name} {_labels(p).get(triton.COLOR_LABEL)} "
                f"{_labels(p).get(triton.REVISION_LABEL)} {_phase(p)} "
                f"{'Ready' if self._shown.get(name) else 'NotReady'}"
                f"{' deleting' if p['metadata'].get('deletionTimestamp') else ''}"
                for name, p in self.pods.items()
            ]
            colors = [
                f"{c}: {'up' if s.up else 'down'}"
                f"{' (restart pending)' if s.restart_at is not None else ''}"
                for c, s in self._colors.items()
            ]
            return f"pods {pods}; tritons {colors}; kill pending: {self._kill is not None}"

    # -- the watch ---------------------------------------------------------------------

    def _list(self) -> str:
        listing = self.core.api_client.sanitize_for_serialization(
            self.core.list_namespaced_pod(NS, label_selector=SELECTOR)
        )
        with self._lock:
            self.pods = {p["metadata"]["name"]: p for p in listing["items"]}
            for name, pod in self.pods.items():
                self._shown.setdefault(name, _ready(pod))
            self._seen()
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> None:
        while not self._stopping.is_set():
            watcher = watch.Watch()
            try:
                # Short watches: the stop flag is looked at between two of them.
                for event in watcher.stream(
                    self.core.list_namespaced_pod,
                    NS,
                    label_selector=SELECTOR,
                    resource_version=version,
                    timeout_seconds=1,
                ):
                    self._record(event["type"], event["raw_object"])
            except ApiException as err:
                if err.status != 410:
                    raise
                version = self._list()  # too old to resume from: start over
            else:
                version = watcher.resource_version or version

    def _record(self, kind: str, pod: Object) -> None:
        name = pod["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                self.pods.pop(name, None)
                self._shown.pop(name, None)
            else:
                self.pods[name] = pod
                self._shown.setdefault(name, _ready(pod))
            self._seen()
            self._lock.notify_all()

    def _seen(self) -> None:
        alive = [p for p in self.pods.values() if _phase(p) not in TERMINATED]
        self.peak = max(self.peak, len(alive))

    # -- one color ---------------------------------------------------------------------

    def _live(self, color: Color) -> list[Object]:
        """The color's pods its Triton stands for: scheduled, not being deleted, running."""
        return [
            p
            for p in self.pods.values()
            if _labels(p).get(triton.COLOR_LABEL) == color
            and p["spec"].get("nodeName")
            and not p["metadata"].get("deletionTimestamp")
            and _phase(p) not in TERMINATED
        ]

    def _run(self, color: Color) -> None:
        state = self._colors[color]
        while not self._stopping.is_set():
            action = self._step(color)
            if action == "stop":
                logger.info("simulated kubelet: %s pods deleted, stopping its Triton", color)
                state.triton.stop()
            elif action == "start":
                logger.info("simulated kubelet: starting %s's Triton", color)
                began = time.monotonic()
                state.triton.start()
                with self._lock:
                    period = self._probe_period(color)
                    probes = math.ceil((time.monotonic() - began) / period)
                    state.up, state.restart_at = True, None
                    state.ready_at = began + probes * period
                logger.info("simulated kubelet: %s's Triton answers", color)
            else:
                with self._lock:
                    self._lock.wait(TICK)

    def _step(self, color: Color) -> Literal["start", "stop"] | None:
        """One look at the color: what to do with its Triton outside the lock, if anything
        (starting and stopping take seconds); kills and readiness are done here."""
        with self._lock:
            state = self._colors[color]
            pods = self._live(color)
            if not pods:  # the pods it stood for were deleted
                state.restart_at = None
                if state.triton.proc is None:
                    return None
                state.up = False
                return "stop"
            kill = self._kill_due(color)
            if kill is not None:
                logger.info("simulated kubelet: %s's Triton killed", color)
                state.triton.kill()
                state.up, state.restart_at = False, time.monotonic() + kill.down
                self._kill = None
                self.kills += 1
                self._show(pods, ready=False)
                return None
            if not state.up:
                due = state.restart_at is None or time.monotonic() >= state.restart_at
                return "start" if due else None
            if time.monotonic() >= state.ready_at:
                self._show(pods, ready=True)
            return None

    def _probe_period(self, color: Color) -> float:
        """Seconds between two startup probes of the color's pods (Kubernetes' default: 10)."""
        probes = [
            c.get("startupProbe") or {} for p in self._live(color) for c in p["spec"]["containers"]
        ]
        return float(next((p["periodSeconds"] for p in probes if "periodSeconds" in p), 10))

    def _kill_due(self, color: Color) -> _Kill | None:
        """The pending kill, if it is due and may hit this color now."""
        kill, other = self._kill, _other(color)
        if kill is None or time.monotonic() < kill.not_before or not self._colors[color].up:
            return None
        others = self._live(other)
        serves = (
            self._colors[other].up
            and bool(others)
            and all(self._shown.get(p["metadata"]["name"]) for p in others)
        )
        if not serves:
            return None
        if all(_labels(p).get(triton.REVISION_LABEL) == kill.revision for p in others):
            return kill
        never_served = not any(self._shown.get(p["metadata"]["name"]) for p in self._live(color))
        return kill if never_served else None

    def _show(self, pods: list[Object], ready: bool) -> None:
        """Write the pods' readiness as the kubelet does after a readiness probe (Ready and
        ContainersReady; their containers' statuses are left out)."""
        now = conditions.timestamp()
        flag = "True" if ready else "False"
        probed = [
            {"type": kind, "status": value, "lastTransitionTime": now}
            for kind, value in (
                ("PodScheduled", "True"),
                ("Initialized", "True"),
                ("ContainersReady", flag),
                ("Ready", flag),
            )
        ]
        body = {"status": {"phase": "Running", "conditions": probed}}
        for pod in pods:
            name = pod["metadata"]["name"]
            if self._shown.get(name) == ready:
                continue
            try:
                self.core.patch_namespaced_pod_status(
                    name, NS, body, _content_type="application/merge-patch+json"
                )
            except ApiException as err:
                if err.status != 404:  # deleted meanwhile: nothing left to show
                    raise
            self._shown[name] = ready
            logger.info("simulated kubelet: pod %s %s", name, "Ready" if ready else "NotReady")


# -- the scenario ------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    calls: int = 0  # infer calls made through Hypha and the bridge
    failed: list[str] = dataclasses.field(default_factory=list)  # what each failed call raised
    rollouts: int = 0  # updates rolled out to the end
    kills: int = 0
    peak_pods: int = 0  # the most runner pods that existed at once
    steady_pods: int = 0  # both colors' replicas
    revision: str = ""  # the runner's revision at the end
    rollout_seconds: list[float] = dataclasses.field(default_factory=list)


def rollout_under_load(
    stack: BridgeStack,
    rounds: int,
    callers: int = 4,
    seed: int = 0,
    kill_within: float = 15.0,
    down: float = 1.0,
    timeout: float = 180.0,
) -> Result:
    """``rounds`` updates of the runner's spec (a new ``podAnnotations`` value), each rolled
    out to the end while ``callers`` callers keep calling ``infer`` through the bridge; in
    each, one color's Triton is killed at a random moment within ``kill_within`` seconds
    (see :meth:`RunnerKubelet.kill_when_covered`) and restarted ``down`` seconds later.
    A rollout ends when the runner is Ready at the new revision with every pod at it and
    Ready, and both Tritons answer."""
    rng = random.Random(seed)
    objects = client.CustomObjectsApi(
        config.new_client_from_config(config_file=str(stack.cluster.kubeconfig))
    )
    result = Result(steady_pods=2 * _runner(objects)["spec"]["replicas"])
    with RunnerKubelet(stack) as kubelet:

        def roll() -> None:
            for _ in range(rounds):
                began = time.monotonic()
                result.revision = _roll_once(
                    objects, kubelet, result.steady_pods, rng.uniform(0, kill_within), down, timeout
                )
                result.rollouts += 1
                result.rollout_seconds.append(time.monotonic() - began)

        async def load() -> None:
            await stack.services_back([RUNNER], timeout)
            await under_load(stack.member, f"{WORKSPACE}/{RUNNER}", roll, callers, result)

        asyncio.run(load())
    result.kills, result.peak_pods = kubelet.kills, kubelet.peak
    return result


def _roll_once(
    objects: client.CustomObjectsApi,
    kubelet: RunnerKubelet,
    pods: int,
    kill_in: float,
    down: float,
    timeout: float,
) -> str:
    """One update rolled out with one kill; the new revision."""
    annotations = {READY_DELAY_ANNOTATION: NOT_BY_KWOK, ROUND_ANNOTATION: uuid.uuid4().hex[:8]}
    patch = {"spec": {"podAnnotations": annotations}}
    generation = _runner(objects, patch)["metadata"]["generation"]

    def status() -> dict[str, Any]:
        return dict(_runner(objects).get("status") or {})

    _until(
        lambda: status().get("observedGeneration") == generation, "update seen", timeout, kubelet
    )
    revision = str(status()["revision"])
    kubelet.kill_when_covered(revision, kill_in, down)

    def rolled_out() -> bool:
        now = status()
        return (
            now.get("observedGeneration") == generation
            and now.get("phase") == "Ready"
            and now.get("revision") == revision
            and kubelet.serving(revision, pods)
        )

    _until(rolled_out, f"rolled out to {revision}", timeout, kubelet)
    return revision


def _runner(objects: client.CustomObjectsApi, patch: Object | None = None) -> Object:
    """The runner (merge-patched with ``patch`` first, if given)."""
    where = (GROUP, VERSION, NS, "modelrunners", RUNNER)
    if patch is None:
        return cast(Object, objects.get_namespaced_custom_object(*where))
    return cast(Object, objects.patch_namespaced_custom_object(*where, patch))


def _until(
    condition: Callable[[], bool], what: str, timeout: float, kubelet: RunnerKubelet
) -> None:
    """Poll ``condition``; fail as soon as the simulated kubelet does, or past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        kubelet.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f}s; {kubelet.describe()}")
        time.sleep(0.1)


async def under_load(
    member: Callable[[], Awaitable[Any]],
    service_id: str,
    roll: Callable[[], None],
    callers: int,
    result: Result,
) -> None:
    """Run ``roll`` (blocking, in a thread) while ``callers`` callers call ``infer`` of the
    example runner at ``service_id`` as the Hypha client ``member()`` makes, each one call
    after the other, counting calls and failures (or wrong outputs) in ``result``."""
    alice = await member()
    try:
        runner = await alice.get_service(service_id)
        image = np.ones((64, 64), dtype=np.float32)
        expected = 1 / (1 + np.exp(-image))  # the example model's sigmoid
        done = asyncio.Event()

        async def call() -> None:
            while not done.is_set():
                result.calls += 1
                try:
                    out = await runner.infer(model="unet2d", inputs={"input0": image})
                except Exception as err:
                    logger.info("infer failed: %r", err)
                    result.failed.append(repr(err))
                    continue
                if not np.allclose(out["output0"], expected):
                    result.failed.append(f"wrong output: {out['output0']!r}")

        tasks = [asyncio.create_task(call()) for _ in range(callers)]
        try:
            await asyncio.to_thread(roll)
        finally:
            done.set()
            await asyncio.gather(*tasks)
    finally:
        await alice.disconnect()
