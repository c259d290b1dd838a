"""Status conditions (metav1.Condition shape), computed without I/O.

``lastTransitionTime`` moves only when a condition's status flips, so a resync that finds
nothing new produces an identical status and the handler skips the write.
"""

from __future__ import annotations

import datetime
from typing import Any

Conditions = list[dict[str, Any]]
# How Kubernetes writes a time (RFC 3339, UTC, seconds): conditions, Events, statuses.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def timestamp(moment: datetime.datetime | None = None) -> str:
    """``moment`` (now, by default) as Kubernetes writes times."""
    return (moment or datetime.datetime.now(datetime.UTC)).strftime(TIME_FORMAT)


def find(conditions: Conditions, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def set_condition(
    conditions: Conditions,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    *,
    now: str,
    generation: int | None = None,
) -> Conditions:
    """Return ``conditions`` with ``type_`` set; the input list is not modified."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    previous = find(conditions, type_)
    changed = previous is None or previous.get("status") != value
    updated = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if changed else previous["lastTransitionTime"],  # type: ignore[index]
    }
    if generation is not None:
        updated["observedGeneration"] = generation
    if previous is None:
        return [*conditions, updated]
    # Replace in place: a stable order keeps an unchanged status byte-for-byte identical.
    return [updated if c.get("type") == type_ else c for c in conditions]
