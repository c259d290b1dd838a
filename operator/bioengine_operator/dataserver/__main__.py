"""``bioengine-dataserver``: serve one dataset directory read-only over HTTP.

In a pod the operator mounts the dataset and a ConfigMap with the manifest and the public key
of the Hypha bridge's token signing key, and passes their paths here; ``--host 0.0.0.0`` makes
it reachable by the Service. Without ``--token-public-key-file`` no token is accepted, so only
a dataset open to everyone (``"*"``) can be read. Prometheus metrics are served under
``/metrics`` on the same port. JSON logs suit cluster log collectors; text suits people.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from aiohttp import web

from bioengine_operator import logs
from bioengine_operator.dataserver import tokens
from bioengine_operator.dataserver.app import AccessLogger, build_app
from bioengine_operator.dataserver.manifest import load_manifest

log = logging.getLogger("bioengine_operator.dataserver")


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"--root {args.root} is not a directory")
    try:
        manifest = load_manifest(args.manifest)
        public_key = _load_public_key(args.token_public_key_file)
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        parser.error(str(exc))
    address = f"http://{_host_for_url(args.host)}:{args.port}"

    def announce(_banner: str) -> None:
        # Replaces aiohttp's two-line banner with a log line in the configured format.
        log.info("serving dataset %r from %s at %s", manifest.id, args.root, address)

    logs.configure(args.log_format, args.verbose)
    web.run_app(
        build_app(args.root, manifest, public_key),
        host=args.host,
        port=args.port,
        access_log_class=AccessLogger,
        print=announce,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bioengine-dataserver", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="the dataset directory")
    parser.add_argument(
        "--manifest", type=Path, required=True, help="dataset manifest, JSON (.json) or YAML"
    )
    parser.add_argument(
        "--token-public-key-file",
        type=Path,
        help="PEM public key or certificate (EC P-256) checking the Hypha bridge's tokens; "
        "without it no token is accepted",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    parser.add_argument(
        "--log-format", choices=logs.FORMATS, default="text", help="(default: %(default)s)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _load_public_key(path: Path | None) -> tokens.PublicKey | None:
    if path is None:
        return None
    try:
        return tokens.load_public_key(path.read_bytes())
    except ValueError as exc:  # the loader does not know the file's name
        raise ValueError(f"--token-public-key-file {path}: {exc}") from None


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    main()
