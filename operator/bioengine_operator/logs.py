"""One log setup for the operator, the bridge and the dataset server.

``json`` (what the chart sets) writes one object per line with the same keys in all three
processes, so one log pipeline parses them all::

    {"time": "2026-11-30T10:00:00.123Z", "level": "INFO", "logger": "bioengine_operator...",
     "message": "...", "object": {"kind": "ModelRunner", "namespace": "lab", "name": "unet"}}

``object`` is present when a line is about one Kubernetes object (kopf's per-object loggers
and the reconcilers pass it); any other ``extra=`` fields become keys of their own.
``text`` is the same information for people reading a terminal.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

FORMATS = ("text", "json")
# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is data.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# kopf's per-object loggers add these: the object reference, and two internal flags.
_KOPF_REF, _KOPF_INTERNAL = "k8s_ref", {"k8s_skip", "settings"}
_OBJECT_KEYS = ("kind", "namespace", "name")


def object_ref(body: dict[str, Any]) -> dict[str, Any]:
    """``extra=`` for a log line about ``body``."""
    meta = body.get("metadata") or {}
    ref = {"kind": body.get("kind"), "namespace": meta.get("namespace"), "name": meta.get("name")}
    return {"object": ref}


def _object(record: logging.LogRecord) -> dict[str, Any] | None:
    ref = getattr(record, "object", None) or getattr(record, _KOPF_REF, None)
    if not isinstance(ref, dict):
        return None
    return {k: ref[k] for k in _OBJECT_KEYS if ref.get(k)}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = _object(record)
        if ref:
            entry["object"] = ref
        skipped = _RECORD_ATTRIBUTES | _KOPF_INTERNAL | {_KOPF_REF, "object"}
        entry.update((k, v) for k, v in vars(record).items() if k not in skipped)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        ref = _object(record)
        if ref:
            record = logging.makeLogRecord(vars(record))
            where = "/".join(str(ref[k]) for k in ("namespace", "name") if k in ref)
            record.msg, record.args = f"[{ref.get('kind', '')} {where}] {record.getMessage()}", None
        return super().format(record)


def configure(log_format: str, verbose: bool = False) -> None:
    """Send every logger's records to stderr in ``log_format``; idempotent."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    # hypha-rpc calls logging.basicConfig() when imported: replace, do not add to, its handler.
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("kubernetes", "urllib3", "asyncio", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kopf says "Handler ... succeeded" at INFO for every watch event: only when debugging.
    logging.getLogger("kopf.objects").setLevel(logging.DEBUG if verbose else logging.WARNING)
