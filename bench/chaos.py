"""Chaos scenarios with their full counts, each printing its figure.

    .venv/bin/python bench/chaos.py [--kills 50] [--resources 200] [--fuzz 1000]
                                    [--hypha-restarts 10] [--seed 0]

On a local control plane (kwok pods) with the real operator process:

* **kill -9 during churn**: creates, spec updates and deletes of ``--resources`` runners
  and datasets, the operator SIGKILLed ``--kills`` times at random moments; after the last
  restart: orphaned children, duplicates, resources stuck in a non-final phase, children a
  fresh operator changes (drift), and the time to converge.
* **Hypha restarted** ``--hypha-restarts`` times under the bridge (the bridge stack with a
  model runner on two real Tritons and a dataset server; no Ray): seconds from Hypha
  answering again until every service can be got and called again, per restart.
* **generated resources**: ``--fuzz`` resources, half generated from the CRD schemas
  (hypothesis-jsonschema), half odd mutations of the examples, applied one by one: how many
  the API server refused (each with a message), how many were accepted and reported in
  status, how many stayed silent, whether the operator restarted, and how long a good
  runner applied afterwards took to be Ready.

The scenarios are ``bioengine_devtools.chaos``; ``tests/test_chaos.py`` runs them with a
few rounds each and asserts their invariants.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from kubernetes import config

from bioengine_devtools import chaos, operator_process
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--fuzz", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hypha-restarts", type=int, default=10)
    args = parser.parse_args()
    if args.hypha_restarts:
        back = hypha_restarts(args.hypha_restarts)
        within = sum(1 for s in back if s <= 10)
        print(
            f"Hypha restarted {len(back)} times: every service back after "
            f"{min(back):.1f} / {statistics.median(back):.1f} / {max(back):.1f} s "
            f"(min / median / max); within 10 s: {within}/{len(back)}"
        )
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
