"""Warm start time and memory of the local control plane.

    .venv/bin/python bench/devcluster.py [--runs 3]

Starts the control plane ``--runs`` times with the Go tools already built (the warm case),
with and without KubeRay (the baseline in the same run), and prints the start time and the
resident memory (RSS, from /proc) of each component once it is ready and idle for 10 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bioengine_devtools import cluster, tools


def rss_mib(pid: int) -> float:
    """RSS of ``pid`` and all its descendants in the same process group, in MiB."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pid:  # process group id
            total += int(fields[21]) * 4096
    return total / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tools.build_all()
    starts: dict[str, list[float]] = {"control plane only": [], "with KubeRay": []}
    memory: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for label, kuberay in (("control plane only", False), ("with KubeRay", True)):
            with tempfile.TemporaryDirectory() as tmp:
                dev = cluster.DevCluster(Path(tmp), with_kuberay=kuberay)
                began = time.monotonic()
                dev.start()
                try:
                    starts[label].append(time.monotonic() - began)
                    if kuberay:
                        time.sleep(10)  # let the components settle before reading RSS
                        for name, pid in dev.pids.items():
                            memory.setdefault(name, []).append(rss_mib(pid))
                finally:
                    dev.stop()
    print(f"{'start (warm)':<24}{'median s':>10}{'min s':>8}{'max s':>8}")
    for label, values in starts.items():
        print(
            f"{label:<24}{statistics.median(values):>10.1f}{min(values):>8.1f}{max(values):>8.1f}"
        )
    base = statistics.median(starts["control plane only"])
    print(f"KubeRay adds {statistics.median(starts['with KubeRay']) / base:.2f}x to the start time")
    print()
    print(f"{'component':<26}{'RSS MiB (median)':>18}")
    for name, values in memory.items():
        print(f"{name:<26}{statistics.median(values):>18.0f}")
    total = sum(statistics.median(v) for v in memory.values())
    print(f"{'total':<26}{total:>18.0f}")


if __name__ == "__main__":
    main()
