"""``bioengine-operator``: run the reconcilers under kopf.

A wrapper rather than ``kopf run operator.py`` so the image has one stable entry point
whose flags (and environment variables, for the chart) are documented here.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bioengine_operator import handlers, kopf_runner, kube, observability
from bioengine_operator.controllers.outcome import Settings
from bioengine_operator.dataserver import tokens


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="bioengine-operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable; glob patterns allowed)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (the default without --namespace)",
    )
    parser.add_argument(
        "--liveness",
        default=env("BIOENGINE_LIVENESS"),
        help="serve a liveness endpoint, e.g. http://0.0.0.0:8080/healthz",
    )
    observability.add_flags(parser)
    parser.add_argument(
        "--image",
        default=env("BIOENGINE_OPERATOR_IMAGE", Settings.image),
        help="image of the dataset servers (the operator's own image)",
    )
    parser.add_argument(
        "--triton-image",
        default=env("BIOENGINE_TRITON_IMAGE", Settings.triton_image),
        help="Triton image of ModelRunners that do not name one",
    )
    parser.add_argument(
        "--ray-image",
        default=env("BIOENGINE_RAY_IMAGE", Settings.ray_image),
        help="Ray image of BioEngineApps that do not name one",
    )
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=float(env("BIOENGINE_RESYNC_SECONDS", str(Settings.resync_seconds))),
        help="period of the level-triggered resync of every object",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=int(env("BIOENGINE_WORKERS", "8")),
        help="objects reconciled at the same time",
    )
    parser.add_argument(
        "--hypha-workspace",
        default=env("BIOENGINE_HYPHA_WORKSPACE"),
        help="default Hypha workspace shown in status.serviceId",
    )
    parser.add_argument(
        "--host-path-prefix",
        action="append",
        default=[p for p in (env("BIOENGINE_HOST_PATH_PREFIXES") or "").split(":") if p],
        help="a node directory under which hostPath datasets may be served (repeatable; "
        "BIOENGINE_HOST_PATH_PREFIXES, colon-separated); none: hostPath datasets are refused",
    )
    parser.add_argument(
        "--token-public-key-file",
        type=Path,
        default=env("BIOENGINE_TOKEN_PUBLIC_KEY_FILE"),
        help="PEM public key or certificate of the bridge's dataset token signing key",
    )
    parser.add_argument(
        "--gpu-memory-mb",
        type=int,
        default=int(env("BIOENGINE_GPU_MEMORY_MB", "0")),
        help="memory of one GPU of the Ray worker pools in MiB: apps' gpu_memory_mb becomes "
        "a share of a GPU; 0 gives such apps whole GPUs",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    observability.start(args)
    public_key = args.token_public_key_file.read_text() if args.token_public_key_file else None
    if public_key is not None:
        try:  # refuse a wrong key at start, not at the first dataset read
            tokens.load_public_key(public_key)
        except ValueError as err:
            raise SystemExit(
                f"--token-public-key-file {args.token_public_key_file}: {err}"
            ) from None
    kube.configure(pool_size=args.workers + 2)
    handlers.register_all(
        Settings(
            image=args.image,
            triton_image=args.triton_image,
            ray_image=args.ray_image,
            resync_seconds=args.resync_seconds,
            hypha_workspace=args.hypha_workspace,
            host_path_prefixes=tuple(args.host_path_prefix),
            token_public_key=public_key,
            gpu_memory_mb=args.gpu_memory_mb,
        ),
        args.workers,
    )
    kopf_runner.run(args.namespace, args.liveness)


if __name__ == "__main__":
    main()
