"""Chaos scenarios against the real operator, for ``tests/test_chaos.py`` (a few rounds,
asserting the invariants) and ``bench/chaos.py`` (the full counts, printing figures).

* :func:`fuzz`: resources generated from the CRD schemas (hypothesis-jsonschema) and odd
  mutations of the examples, applied one by one: each is refused by the API server with a
  message, or accepted and given a status for its generation by the operator; the operator
  never restarts, and a good resource applied afterwards is reconciled as usual.
* :func:`churn`: creates, spec updates and deletes of runners and datasets while the
  operator is killed with SIGKILL at random moments; after the last restart everything
  converges: no orphaned or duplicate children, nothing stuck in a non-final phase (runners
  Ready; the S3 datasets Failed with their reason: this operator version does not serve
  S3), and a fresh operator finds nothing to change.
* :func:`control_plane_restarts`: kube-apiserver and etcd restarted under the bridge stack's
  running operator and bridge; after each restart a runner created then becomes Ready and
  callable through Hypha, and one deleted then leaves Hypha, without restarting either.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import dataclasses
import json
import random
import time
import urllib.request
from typing import Any, cast

import hypothesis
import yaml
from hypothesis import HealthCheck, Phase
from hypothesis_jsonschema import from_schema
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bioengine_devtools import operator_process, tools
from bioengine_devtools.stack import NS, BridgeStack, example
from bioengine_operator.api.base import API_VERSION, GROUP, VERSION
from bioengine_operator.api.crds import KINDS, crd
from bioengine_operator.local import procs

Object = dict[str, Any]
MODELS = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "models"},
    "data": {"m__config.pbtxt": 'name: "m"\nbackend: "python"\n', "m__1__model.py": "# m\n"},
}
# The children each kind gets, by API version, kind and name suffix.
CHILDREN: dict[str, list[tuple[str, str, str]]] = {
    "BioEngineApp": [("ray.io/v1", "RayService", ""), ("v1", "ConfigMap", "-bioengine-entry")],
    "ModelRunner": [
        ("apps/v1", "Deployment", "-blue"),
        ("apps/v1", "Deployment", "-green"),
        ("v1", "Service", ""),
        ("v1", "Service", "-blue"),
        ("v1", "Service", "-green"),
        ("policy/v1", "PodDisruptionBudget", ""),
    ],
    "BioEngineDataset": [("apps/v1", "Deployment", "-dataset"), ("v1", "Service", "-dataset")],
}
PLURAL = {k.kind: k.plural for k in KINDS}
MANAGED = "app.kubernetes.io/managed-by=bioengine-operator"
# Where a resource may rest: serving, or refused with its reason (an S3 dataset here).
FINAL = ("Ready", "Failed")


class Cluster:
    """The few calls the scenarios make, through the official client."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.core, self.apps = client.CoreV1Api(api), client.AppsV1Api(api)
        self.namespace = namespace

    def create(self, body: Object) -> Object:
        if body["kind"] == "ConfigMap":
            # The client's validate_call turns the dict body into the V1ConfigMap it is typed as.
            created = self.core.create_namespaced_config_map(self.namespace, body)  # type: ignore[arg-type]
            return dict(created.to_dict())
        plural = PLURAL[body["kind"]]
        # The custom-objects API is typed to return object: it returns the resource's JSON.
        return dict(
            cast(
                Object,
                self.objects.create_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, plural, body
                ),
            )
        )

    def patch_spec(self, kind: str, name: str, spec: Object) -> None:
        self.objects.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL[kind], name, {"spec": spec}
        )

    def delete(self, kind: str, name: str) -> None:
        self.objects.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL[kind], name
        )

    def list(self, kind: str) -> list[Object]:
        found = cast(
            Object,
            self.objects.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL[kind]
            ),
        )
        return list(found["items"])

    # builtins.list: in the class body, ``list`` is the method above.
    def children(self) -> builtins.list[Object]:
        """Every object the operator labelled as its own in the namespace."""
        found: list[Object] = []
        for deployment in self.apps.list_namespaced_deployment(
            self.namespace, label_selector=MANAGED
        ).items:
            found.append({**deployment.to_dict(), "kind": "Deployment"})
        for service in self.core.list_namespaced_service(
            self.namespace, label_selector=MANAGED
        ).items:
            found.append({**service.to_dict(), "kind": "Service"})
        return found


# -- generated and mutated resources -------------------------------------------------------


def _spec_schema(kind: str) -> Object:
    definition = next(k for k in KINDS if k.kind == kind)
    version = crd(definition)["spec"]["versions"][0]
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


def generated(kind: str, count: int, seed: int) -> list[Object]:
    """``count`` specs generated from the CRD's own schema for ``kind``."""
    found: list[Object] = []

    @hypothesis.seed(seed)
    @hypothesis.settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(from_schema(_spec_schema(kind)))
    def collect(spec: Object) -> None:
        found.append(spec)

    collect()
    return found[:count]


def examples() -> list[Object]:
    return [
        doc
        for path in sorted((tools.REPO_ROOT / "examples").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc.get("apiVersion") == API_VERSION
    ]


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _leaves(v, (*path, i))] or [path]
    return [path]


def _set(node: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value


def mutated(count: int, seed: int) -> list[Object]:
    """The examples with one odd change each: a wrong type, a huge or odd string, a
    negative number, deep nesting."""
    rng = random.Random(seed)
    deep: Any = "bottom"
    for _ in range(60):
        deep = {"x": deep}
    odd_values = [
        "x" * 100_000,
        "ünïcödé 🧫 \u202e\u0000",
        -1,
        -(2**62),
        2**62,
        3.5,
        True,
        None,
        [],
        {},
        deep,
        ["a"] * 1000,
    ]
    out = []
    bases = examples()
    for _ in range(count):
        body = copy.deepcopy(rng.choice(bases))
        leaves = [p for p in _leaves(body["spec"]) if p]
        _set(body["spec"], rng.choice(leaves), rng.choice(odd_values))
        out.append(body)
    return out


# -- scenarios ------------------------------------------------------------------------------


@dataclasses.dataclass
class FuzzResult:
    applied: int = 0
    refused: int = 0
    reported: int = 0
    silent: list[str] = dataclasses.field(default_factory=list)
    refusals_without_message: list[str] = dataclasses.field(default_factory=list)
    good_seconds: float = 0.0


def reported(body: Object) -> bool:
    """Whether the operator wrote a phase for the resource's current generation."""
    status = body.get("status") or {}
    return bool(status.get("phase")) and status.get("observedGeneration") == body["metadata"].get(
        "generation"
    )


def fuzz(
    cluster: Cluster,
    operator: operator_process.OperatorProcess,
    specs: list[tuple[str, Object]],
    timeout: float = 120.0,
) -> FuzzResult:
    """Apply each (kind, spec); then wait for every accepted one to be reported."""
    result = FuzzResult()
    assert operator.proc is not None
    pid = operator.proc.pid
    accepted: dict[str, str] = {}  # name -> kind
    for index, (kind, spec) in enumerate(specs):
        name = f"fz-{index}"
        body = {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name}, "spec": spec}
        result.applied += 1
        try:
            cluster.create(body)
        except ApiException as err:
            result.refused += 1
            message = _message(err)
            if err.status not in (400, 422) or not message:
                result.refusals_without_message.append(f"{name}: {err.status} {message!r}")
            continue
        accepted[name] = kind

    def everyone_reported() -> bool:
        bodies = {b["metadata"]["name"]: b for k in CHILDREN for b in cluster.list(k)}
        return all(reported(bodies[n]) for n in accepted if n in bodies)

    with contextlib.suppress(TimeoutError):  # who was not reported is counted below
        procs.wait_for(everyone_reported, "every accepted resource reported", timeout)
    bodies = {b["metadata"]["name"]: b for k in CHILDREN for b in cluster.list(k)}
    result.reported = sum(1 for n in accepted if n in bodies and reported(bodies[n]))
    result.silent = sorted(n for n in accepted if n not in bodies or not reported(bodies[n]))
    assert operator.proc is not None and operator.proc.pid == pid, "the operator restarted"
    assert operator.proc.poll() is None, "the operator exited"
    # A good resource beside all of that is reconciled as usual.
    began = time.monotonic()
    cluster.create(_runner("fz-good", replicas=1))
    procs.wait_for(
        lambda: (
            next(b for b in cluster.list("ModelRunner") if b["metadata"]["name"] == "fz-good")
            .get("status", {})
            .get("phase")
            == "Ready"
        ),
        "a good runner Ready beside the fuzzed ones",
        timeout,
    )
    result.good_seconds = time.monotonic() - began
    return result


def _message(err: ApiException) -> str:
    try:
        return str(json.loads(err.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return ""


def _runner(name: str, replicas: int = 1, note: str = "") -> Object:
    spec: Object = {
        "modelRepository": {"configMap": {"name": "models"}},
        "models": ["m"],
        "replicas": replicas,
        "resources": {"cpu": "10m", "memory": "16Mi"},
    }
    if note:
        spec["podAnnotations"] = {"example.org/note": note}
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelRunner",
        "metadata": {"name": name},
        "spec": spec,
    }


def _dataset(name: str) -> Object:
    spec = {"source": {"s3": {"uri": f"s3://bucket/{name}"}}, "manifest": {"name": name}}
    return {
        "apiVersion": API_VERSION,
        "kind": "BioEngineDataset",
        "metadata": {"name": name},
        "spec": spec,
    }


@dataclasses.dataclass
class ChurnResult:
    operations: int = 0
    kills: int = 0
    converged_seconds: float = 0.0
    orphans: list[str] = dataclasses.field(default_factory=list)
    duplicates: list[str] = dataclasses.field(default_factory=list)
    stuck: list[str] = dataclasses.field(default_factory=list)
    drift: list[str] = dataclasses.field(default_factory=list)


def churn(
    cluster: Cluster,
    operator: operator_process.OperatorProcess,
    resources: int,
    kills: int,
    seed: int,
    timeout: float = 300.0,
) -> ChurnResult:
    """Random creates, spec updates and deletes of ``resources`` runners and datasets, with
    ``kills`` SIGKILLs of the operator in between; then the invariants."""
    rng = random.Random(seed)
    result = ChurnResult()
    alive: dict[str, str] = {}  # name -> kind
    names = [f"ch-{i}" for i in range(resources)]
    steps = max(resources * 3, kills * 4)
    kill_at = set(rng.sample(range(steps), kills))
    for step in range(steps):
        name = rng.choice(names)
        try:
            if name not in alive:
                kind = rng.choice(["ModelRunner", "ModelRunner", "BioEngineDataset"])
                cluster.create(_runner(name) if kind == "ModelRunner" else _dataset(name))
                alive[name] = kind
            elif rng.random() < 0.6 and alive[name] == "ModelRunner":
                cluster.patch_spec("ModelRunner", name, _runner(name, note=f"v{step}")["spec"])
            else:
                cluster.delete(alive.pop(name), name)
        except ApiException as err:
            if err.status not in (404, 409):  # a delete still finishing: tried again later
                raise
        result.operations += 1
        if step in kill_at:
            time.sleep(rng.uniform(0, 1.0))  # a random moment of the operator's work
            operator.restart(kill=True)
            result.kills += 1
    began = time.monotonic()

    def done() -> bool:
        check(cluster, alive, result)
        return not (result.orphans or result.duplicates or result.stuck)

    try:
        procs.wait_for(done, "churn converged", timeout, interval=1.0)
    except TimeoutError:
        return result  # the lists say what did not converge
    result.converged_seconds = time.monotonic() - began
    result.drift = fresh_operator_changes(cluster, operator, len(alive))
    return result


def check(cluster: Cluster, alive: dict[str, str], result: ChurnResult) -> None:
    """Fill ``result``'s orphans, duplicates and stuck resources as the cluster is now."""
    owners = {b["metadata"]["uid"]: b for k in CHILDREN for b in cluster.list(k)}
    children = cluster.children()
    result.orphans = sorted(
        c["metadata"]["name"]
        for c in children
        if not any(r["uid"] in owners for r in c["metadata"].get("owner_references") or [])
    )
    counts: dict[tuple[str, str], int] = {}
    for child in children:
        key = (child["kind"], child["metadata"]["name"])
        counts[key] = counts.get(key, 0) + 1
    expected = {
        (kind, name + suffix)
        for name, owner_kind in alive.items()
        for _, kind, suffix in CHILDREN[owner_kind]
        if kind in ("Deployment", "Service")
    }
    result.duplicates = sorted(f"{k} {n} x{c}" for (k, n), c in counts.items() if c > 1)
    result.duplicates += sorted(
        f"unexpected {k} {n}" for (k, n) in counts if (k, n) not in expected
    )
    bodies = {
        b["metadata"]["name"]: b
        for k in ("ModelRunner", "BioEngineDataset")
        for b in cluster.list(k)
    }
    result.stuck = []
    for name in sorted(alive):
        body = bodies.get(name)
        phase = ((body or {}).get("status") or {}).get("phase")
        if body is None or phase not in FINAL or not reported(body):
            result.stuck.append(f"{alive[name]} {name}: {phase or 'no status'}")


def _specs(cluster: Cluster) -> dict[str, str]:
    return {
        f"{c['kind']} {c['metadata']['name']}": json.dumps(
            c.get("spec"), sort_keys=True, default=str
        )
        for c in cluster.children()
    }


def fresh_operator_changes(
    cluster: Cluster, operator: operator_process.OperatorProcess, owners: int
) -> list[str]:
    """Children whose spec a freshly started operator changes once it has reconciled every
    one of the ``owners`` (none: nothing had drifted)."""
    before = _specs(cluster)
    operator.restart()

    def reconciled_all() -> bool:
        return _reconciles(operator) >= owners

    procs.wait_for(reconciled_all, "a fresh operator's first reconciles", 120)
    after = _specs(cluster)
    return sorted(k for k in before if after.get(k) != before[k])


def _reconciles(operator: operator_process.OperatorProcess) -> float:
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as answer:
        text = answer.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bioengine_operator_reconciles_total{")
    )


# -- the control plane restarted under the operator and the bridge --------------------------


@dataclasses.dataclass
class Recovery:
    """Seconds from a restarted component answering again until: ``operator``: a runner
    created then has a status for its spec (the operator's watches are back); ``bridge``:
    the runner deleted then has left Hypha (the bridge's watches are back); ``ready``: the
    new runner is Ready and callable through Hypha (this also waits for the cluster's own
    controllers to make its pods)."""

    component: str
    operator: float
    bridge: float
    ready: float


@dataclasses.dataclass
class RestartResult:
    recoveries: list[Recovery] = dataclasses.field(default_factory=list)
    operator_restarted: bool = False
    bridge_restarted: bool = False


def control_plane_restarts(
    stack: BridgeStack, apiservers: int, etcds: int, down: float = 2.0, timeout: float = 300.0
) -> RestartResult:
    """Restart kube-apiserver ``apiservers`` times and etcd ``etcds`` times (each down for
    ``down`` seconds), etcd in the middle. After each restart a new runner is created and
    the previous one deleted: the operator must reconcile the new one (its watches came
    back by themselves) and the bridge must drop the deleted one from Hypha and register
    the new one once Ready (its watches came back too). Neither process is restarted."""
    result = RestartResult()
    # Every runner of the namespace is served by the stack's two Tritons.
    tritons = {color: triton.grpc for color, triton in stack.tritons.items()}
    stack.stop_bridge()
    stack.start_bridge(extra_endpoints={f"modelrunner/{NS}/*": tritons})
    operator, bridge = stack.operator.proc, stack.procs_["bridge"]
    runner = next(o for o in example("modelrunner.yaml") if o["kind"] == "ModelRunner")
    spec = {k: v for k, v in runner["spec"].items() if k != "service"}  # service id = name

    def create(name: str) -> None:
        body = {**runner, "metadata": {"name": name, "namespace": NS}, "spec": spec}
        # Right after etcd comes back the API server may still be reconnecting to it.
        procs.wait_for(lambda: _applied(stack, body), f"{name} applied", timeout)

    def registered(name: str) -> bool:
        return asyncio.run(stack.registered(name))

    order = ["kube-apiserver"] * apiservers
    order[len(order) // 2 : len(order) // 2] = ["etcd"] * etcds
    create("restart-0")
    procs.wait_for(lambda: registered("restart-0"), "restart-0 registered", timeout)
    for index, component in enumerate(order):
        stack.cluster.restart(component, down=down)
        began = time.monotonic()
        old, new = f"restart-{index}", f"restart-{index + 1}"
        create(new)
        stack.cluster.kubectl("-n", NS, "delete", "mr", old, "--wait=false")
        reached = _milestones(
            {
                "operator": lambda n=new: reported(stack.cluster.get(NS, "mr", n)),
                "bridge": lambda o=old: not registered(o),
                # got and called (its get_status) through Hypha; raises until then
                "ready": lambda n=new: asyncio.run(stack.services_back([n], timeout=0)) >= 0,
            },
            f"recovery after restarting {component}",
            timeout,
        )
        result.recoveries.append(
            Recovery(component, *(reached[k] - began for k in ("operator", "bridge", "ready")))
        )
    stack.cluster.kubectl("-n", NS, "delete", "mr", f"restart-{len(order)}")
    asyncio.run(stack.services_back(stack.service_ids(), timeout))
    result.operator_restarted = (
        operator is None or stack.operator.proc is not operator or operator.poll() is not None
    )
    result.bridge_restarted = stack.procs_.get("bridge") is not bridge or bridge.poll() is not None
    return result


def _milestones(checks: dict[str, Any], what: str, timeout: float) -> dict[str, float]:
    """When (monotonic) each check first held, checking the ones still pending in turn (a
    check that raises has not held yet)."""
    reached: dict[str, float] = {}

    def all_reached() -> bool:
        for key, check in checks.items():
            with contextlib.suppress(Exception):
                if key not in reached and check():
                    reached[key] = time.monotonic()
        return len(reached) == len(checks)

    try:
        procs.wait_for(all_reached, what, timeout, interval=0.2)
    except TimeoutError as err:
        raise TimeoutError(f"{err}; reached: {sorted(reached)} of {sorted(checks)}") from err
    return reached


def _applied(stack: BridgeStack, body: Object) -> bool:
    out = stack.cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body), check=False)
    return out.returncode == 0
