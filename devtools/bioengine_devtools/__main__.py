"""``python -m bioengine_devtools {tools,images,up,down}``: the local control plane for people.

``up --operator`` also runs the BioEngine operator against it (``make demo``).

``up`` leaves the cluster running after it returns (the processes are not tied to it) and
prints the ``KUBECONFIG`` to export; ``down`` stops it by the PIDs recorded in its state file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from bioengine_devtools import cluster, images, operator_process, tools

DEFAULT_WORKDIR = cluster.DEFAULT_WORKDIR


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bioengine-devcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("tools", help="build the pinned Go tools into the cache (once)")
    sub.add_parser("images", help="build the real node's container images into the cache")
    up = sub.add_parser("up", help="start a control plane and leave it running")
    down = sub.add_parser("down", help="stop a control plane started by `up`")
    for command in (up, down):
        command.add_argument(
            "--name", default="bioengine-dev", help="cluster (and kubeconfig context) name"
        )
        command.add_argument(
            "--workdir", type=Path, help=f"state directory (default: {DEFAULT_WORKDIR}/<name>)"
        )
    up.add_argument("--no-kuberay", action="store_true", help="skip the KubeRay CRDs and operator")
    up.add_argument(
        "--nodes",
        choices=("kwok", "real"),
        default="kwok",
        help="kwok's simulated nodes (no container runs), or one real node: containerd, "
        "kubelet, kube-proxy and CoreDNS running the images built here (needs root)",
    )
    up.add_argument(
        "--operator",
        action="store_true",
        help="also install our CRDs and run the BioEngine operator against it",
    )
    args = parser.parse_args(argv)

    if args.command == "tools":
        for name, path in tools.build_all().items():
            print(f"{name:10} {path}")
        return
    if args.command == "images":
        for name, image in images.Builder().build_all().items():
            print(f"{name:10} {image.ref}")
        return
    workdir = args.workdir or DEFAULT_WORKDIR / args.name
    if args.command == "down":
        stopped = cluster.stop_recorded(workdir)
        print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
        return
    cluster.stop_recorded(workdir)
    tools.build_all()
    started = time.monotonic()
    dev = cluster.DevCluster(
        workdir,
        name=args.name,
        with_kuberay=not args.no_kuberay,
        tie_to_parent=False,
        node_kind=args.nodes,
    )
    dev.start()
    if args.operator:
        operator_process.install_crds(dev)
        dev.spawn(
            "bioengine-operator",
            [sys.executable, "-m", "bioengine_operator.cli"],
            env={**os.environ, "KUBECONFIG": str(dev.kubeconfig)},
        )
    print(
        f"control plane {args.name!r} ready in {time.monotonic() - started:.1f}s "
        f"(API server {dev.server}); logs in {dev.logs}"
    )
    print(f"export KUBECONFIG={dev.kubeconfig}")


if __name__ == "__main__":
    main()
