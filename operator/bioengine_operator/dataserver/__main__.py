"""``bioengine-dataserver``: serve one dataset directory read-only over HTTP.

In a pod the operator mounts the dataset, the manifest (a ConfigMap) and the signing key
(a Secret shared with the Hypha bridge) and passes their paths here; ``--host 0.0.0.0`` makes
it reachable by the Service. JSON logs suit cluster log collectors; text suits people.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from bioengine_operator.dataserver import tokens
from bioengine_operator.dataserver.app import AccessLogger, build_app
from bioengine_operator.dataserver.manifest import load_manifest

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is data.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the fields passed through ``extra=`` kept as keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"--root {args.root} is not a directory")
    try:
        manifest = load_manifest(args.manifest)
        key = tokens.load_key(args.signing_key_file)
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        parser.error(str(exc))
    address = f"http://{_host_for_url(args.host)}:{args.port}"

    def announce(_banner: str) -> None:
        # Replaces aiohttp's two-line banner; flushed so a supervising process sees it at once.
        print(f"serving dataset {manifest.id!r} from {args.root} at {address}", flush=True)

    _configure_logging(args.log_format)
    web.run_app(
        build_app(args.root, manifest, key),
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
        "--signing-key-file",
        type=Path,
        required=True,
        help="file holding the token signing key shared with the Hypha bridge",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default: %(default)s)")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="(default: %(default)s)"
    )
    return parser


def _configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    main()
