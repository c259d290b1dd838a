"""Chaos scenarios with their full counts, each printing its figure.

    .venv/bin/python bench/chaos.py [--kills 50] [--resources 200] [--fuzz 1000]
                                    [--hypha-restarts 10] [--apiserver-restarts 5]
                                    [--etcd-restarts 1] [--rollouts 10] [--seed 0]

On a local control plane (kwok pods) with the real operator process:

* **kill -9 during churn**: creates, spec updates and deletes of ``--resources`` runners
  and datasets, the operator SIGKILLed ``--kills`` times at random moments; after the last
  restart: orphaned children, duplicates, resources stuck in a non-final phase, children a
  fresh operator changes (drift), and the time to converge.
* **Hypha restarted** ``--hypha-restarts`` times under the bridge (the bridge stack with a
  model runner on two real Tritons and a dataset server; no Ray): seconds from Hypha
  answering again until every service can be got and called again, per restart.
* **the control plane restarted**: kube-apiserver ``--apiserver-restarts`` times and etcd
  ``--etcd-restarts`` times (each down 2 s) under the bridge stack's running operator and
  bridge: after each, seconds until a runner created then has a status for its spec (the
  operator's watches are back), until the one deleted then has left Hypha (the bridge's),
  and until the new one is Ready and callable (this waits for the cluster's own
  controllers too); whether either process had to be restarted.
* **updates rolled out under load**: ``--rollouts`` spec updates of the bridge stack's
  runner, each rolled out while four callers keep calling ``infer`` through Hypha and the
  bridge, and one color's Triton is SIGKILLed at a random moment (the kwok pods get their
  readiness from a simulated kubelet over the two real Tritons): failed calls (goal 0),
  the most runner pods at once against both colors' replicas, and the median seconds from
  an update to both colors serving it.
* **generated resources**: ``--fuzz`` resources, half generated from the CRD schemas
  (hypothesis-jsonschema), half odd mutations of the examples, applied one by one: how many
  the API server refused (each with a message), how many were accepted and reported in
  status, how many stayed silent, whether the operator restarted, and how long a good
  runner applied afterwards took to be Ready.

The scenarios are ``bioengine_devtools.chaos`` (and ``.rollout``); ``tests/test_chaos.py``
(and ``tests/test_rollout_load.py``) runs them with a few rounds each and asserts their
invariants.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import tempfile
import time
from pathlib import Path

from kubernetes import config

from bioengine_devtools import chaos, operator_process, rollout
from bioengine_devtools import cluster as devcluster
from bioengine_devtools.stack import BridgeStack


def hypha_restarts(count: int) -> list[float]:
    """Seconds until every service is back, after each of ``count`` Hypha restarts."""
    with tempfile.TemporaryDirectory() as tmp, BridgeStack(Path(tmp), with_app=False) as stack:
        assert stack.hypha is not None
        asyncio.run(stack.services_back(stack.service_ids(), timeout=120))
        back = []
        for _ in range(count):
            stack.hypha.stop()
            stack.hypha.start()
            back.append(asyncio.run(stack.services_back(stack.service_ids(), timeout=120)))
        return back


def control_plane_restarts(apiservers: int, etcds: int) -> chaos.RestartResult:
    with tempfile.TemporaryDirectory() as tmp, BridgeStack(Path(tmp), with_app=False) as stack:
        return chaos.control_plane_restarts(stack, apiservers, etcds)


def rollouts(count: int, seed: int) -> rollout.Result:
    with tempfile.TemporaryDirectory() as tmp, BridgeStack(Path(tmp), with_app=False) as stack:
        return rollout.rollout_under_load(stack, count, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--fuzz", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hypha-restarts", type=int, default=10)
    parser.add_argument("--apiserver-restarts", type=int, default=5)
    parser.add_argument("--etcd-restarts", type=int, default=1)
    parser.add_argument("--rollouts", type=int, default=10)
    args = parser.parse_args()
    if args.hypha_restarts:
        back = hypha_restarts(args.hypha_restarts)
        within = sum(1 for s in back if s <= 10)
        print(
            f"Hypha restarted {len(back)} times: every service back after "
            f"{min(back):.1f} / {statistics.median(back):.1f} / {max(back):.1f} s "
            f"(min / median / max); within 10 s: {within}/{len(back)}"
        )
    if args.apiserver_restarts or args.etcd_restarts:
        restarted = control_plane_restarts(args.apiserver_restarts, args.etcd_restarts)
        print(
            f"control plane restarted {len(restarted.recoveries)} times under the operator "
            f"and the bridge; operator restarted: {restarted.operator_restarted}, bridge "
            f"restarted: {restarted.bridge_restarted}; seconds after each until"
        )
        print(f"  {'restarted':<15} {'operator':>9} {'bridge':>9} {'ready':>9}")
        for r in restarted.recoveries:
            print(f"  {r.component:<15} {r.operator:>9.1f} {r.bridge:>9.1f} {r.ready:>9.1f}")
    if args.rollouts:
        rolled = rollouts(args.rollouts, args.seed)
        print(
            f"updates rolled out under load: {rolled.rollouts} rollouts, {rolled.kills} "
            f"Tritons killed, {rolled.calls} infer calls, {len(rolled.failed)} failed; peak "
            f"{rolled.peak_pods} runner pods for {rolled.steady_pods} steady; "
            f"{statistics.median(rolled.rollout_seconds):.1f} s per rollout (median)"
        )
        kinds = collections.Counter(line[-160:] for line in rolled.failed)
        for line, count in kinds.most_common(5):
            print(f"  failed {count} times: ...{line}")
    if not (args.resources or args.fuzz):
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Room for every runner's two pods (kwok nodes take 110 pods each).
        nodes = [
            devcluster.NodeSpec(f"chaos-node-{i}", cpu="1000", memory="4Ti")
            for i in range((2 * args.resources + args.fuzz) // 100 + 1)
        ]
        with devcluster.DevCluster(
            work / "cluster", name="chaos", kuberay_operator=False, nodes=nodes
        ) as dev:
            operator_process.install_crds(dev)
            api = config.new_client_from_config(config_file=str(dev.kubeconfig))
            with operator_process.OperatorProcess(dev, work / "operator.log") as operator:
                for ns in ("churn", "fuzz"):
                    dev.kubectl("create", "namespace", ns)
                    chaos.Cluster(api, ns).create(chaos.MODELS)

                if args.resources:
                    began = time.monotonic()
                    churned = chaos.churn(
                        chaos.Cluster(api, "churn"),
                        operator,
                        args.resources,
                        args.kills,
                        args.seed,
                        timeout=1200,
                    )
                    print(
                        f"kill -9 during churn: {churned.operations} operations on "
                        f"{args.resources} resource names, {churned.kills} kills, "
                        f"{time.monotonic() - began:.0f} s in all; converged "
                        f"{churned.converged_seconds:.1f} s after the last restart; "
                        f"orphans {len(churned.orphans)}, duplicates {len(churned.duplicates)}, "
                        f"stuck {len(churned.stuck)}, drift {len(churned.drift)}"
                    )
                    for what in ("orphans", "duplicates", "stuck", "drift"):
                        for line in getattr(churned, what)[:5]:
                            print(f"  {what}: {line}")

                if args.fuzz:
                    half = args.fuzz // 2
                    per_kind = max(1, half // len(chaos.CHILDREN))
                    specs = [
                        (kind, spec)
                        for kind in chaos.CHILDREN
                        for spec in chaos.generated(kind, per_kind, args.seed)
                    ]
                    odd = chaos.mutated(args.fuzz - len(specs), args.seed)
                    specs += [(b["kind"], b["spec"]) for b in odd]
                    began = time.monotonic()
                    fuzzed = chaos.fuzz(chaos.Cluster(api, "fuzz"), operator, specs, timeout=600)
                    accepted = fuzzed.applied - fuzzed.refused
                    print(
                        f"generated resources: {fuzzed.applied} applied and checked in "
                        f"{time.monotonic() - began:.0f} s; refused by the API server "
                        f"{fuzzed.refused} ({len(fuzzed.refusals_without_message)} without a "
                        f"message); accepted {accepted}, reported in status {fuzzed.reported}, "
                        f"silent {len(fuzzed.silent)}; operator restarts 0; a good runner Ready "
                        f"{fuzzed.good_seconds:.1f} s after it was applied"
                    )
                    for name in fuzzed.silent[:5]:
                        print(f"  silent: {name}")


if __name__ == "__main__":
    main()
