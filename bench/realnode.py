"""The chart on two real nodes, measured: ``helm install`` to every example service callable
through Hypha, a runner update rolled out under a stream of ``infer`` calls, the nodes' memory.

    .venv/bin/python bench/realnode.py [--callers 4] [--rollouts 3] [--keep]

Prints a table. ``--keep`` leaves the stack running until Enter is pressed (KUBECONFIG and the
Hypha URL are printed), to look around. Needs root (the nodes' namespaces), the Go tools and
the images (``make tools images``).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from pathlib import Path

from bioengine_devtools import realstack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--callers", type=int, default=4)
    parser.add_argument("--rollouts", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="wait for Enter before stopping")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="realnode-") as tmp,
        realstack.ChartStack(Path(tmp)) as stack,
    ):
        rows = [(name, f"{seconds:.1f} s") for name, seconds in stack.timings.items()]
        print(realstack.describe(asyncio.run(stack.call_every_service())))
        for index in range(args.rollouts):
            result = realstack.rollout_under_load(
                stack, {"bioengine.bioimage.io/round": uuid.uuid4().hex[:8]}, args.callers
            )
            rows.append(
                (
                    f"rollout {index + 1} under {args.callers} callers",
                    f"{result.rollout_seconds[0]:.1f} s, {result.calls} calls, "
                    f"{len(result.failed)} failed, peak {result.peak_pods} pods "
                    f"(steady {result.steady_pods}), fewest Ready {result.min_ready}",
                )
            )
            for failure in result.failed[:3]:
                print("failed call:", failure[-300:])
        memory = stack.node_memory()
        rows += [(f"memory: {name}", f"{value / 2**20:.0f} MiB") for name, value in memory.items()]
        width = max(len(name) for name, _ in rows)
        print()
        for name, value in rows:
            print(f"{name:<{width}}  {value}")
        if args.keep:
            print(f"\nexport KUBECONFIG={stack.cluster.kubeconfig}   # Hypha: {stack.hypha_url}")
            input("Enter stops the stack ")


if __name__ == "__main__":
    main()
