"""The blue/green update protocol of a ModelRunner, as a pure decision function.

A *revision* is the hash of the rendered pod template (see
:func:`bioengine_operator.builders.triton.revision`): whatever changes a pod, be it the spec,
the model ConfigMap or the operator's own defaults and builders, is a new revision. A color
*serves* while at least one of its pods of its Deployment's current revision is Ready and
not being deleted (counted from the pods themselves, not from the Deployment's status,
which lags behind).

The rules, checked on every reconcile:

1. A color's pod template is changed only while the other color serves, or while neither
   serves (then nothing can be lost). So the color that is the only one serving is never
   replaced: once the runner has served, at least one Ready pod serves at every moment,
   unless pods fail on their own.
2. One color at a time: the second color moves to the new revision only once the first
   serves it (at least one Ready pod; a color with some pods Pending for lack of a GPU
   serves with those it has). Capacity can thus dip to one Ready pod during an update.
3. No surge: each color's Deployment uses the Recreate strategy, so a color never has pods
   of two revisions at once. *Peak pods*: at every moment the runner holds at most
   ``2 x max(R_old, R_new)`` pods, where R_old and R_new are the replica counts of the specs
   whose pods still exist; with an unchanged replica count R, never more than ``2 x R``,
   i.e. no spare GPU is ever needed for an update.

The function is idempotent and keeps no state: the same observations give the same plan,
so an operator restarted at any point (even between the writes of one reconcile) resumes
where the pods stand.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Color = Literal["blue", "green"]
COLORS: tuple[Color, Color] = ("blue", "green")
Phase = Literal["Deploying", "Updating", "Ready", "Degraded"]


@dataclasses.dataclass(frozen=True)
class Observed:
    """One color as its Deployment and pods show it (``exists=False``: no Deployment)."""

    exists: bool
    revision: str | None = None
    ready: int = 0  # Ready pods of ``revision`` that are not being deleted
    settled: bool = False  # exactly the wanted pods, all of ``revision`` and all Ready
    # Its Deployment is still rolling out its template (as `kubectl rollout status` tells),
    # as opposed to pods failing after it had rolled out.
    rolling: bool = False

    @property
    def serving(self) -> bool:
        return self.exists and self.ready > 0


ABSENT = Observed(exists=False)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Target revision per color; a color mapped to None keeps what it has, untouched."""

    targets: dict[Color, str | None]
    updating: Color | None
    phase: Phase
    reason: str
    message: str


def plan(desired: str, observed: dict[Color, Observed]) -> Plan:
    at_desired = [c for c in COLORS if observed[c].exists and observed[c].revision == desired]
    both = _targets(desired, *COLORS)

    if not any(observed[c].exists for c in COLORS):
        return Plan(both, None, "Deploying", "Creating", "creating both colors")

    if len(at_desired) == 2:
        serving = [c for c in COLORS if observed[c].serving]
        if all(observed[c].settled for c in COLORS):
            message = "both colors serve the current revision"
            return Plan(both, None, "Ready", "BothColorsReady", message)
        waiting = [c for c in COLORS if not observed[c].settled]
        # A color still rolling out is the end of an update (or of the creation), not a fault.
        phase: Phase = (
            "Deploying"
            if not serving
            else "Updating"
            if any(observed[c].rolling for c in waiting)
            else "Degraded"
        )
        message = f"waiting for every pod of {', '.join(waiting)} to be ready"
        return Plan(both, None, phase, "WaitingForColor", message)

    if len(at_desired) == 1:
        (moved,) = at_desired
        other = _other(moved)
        if observed[moved].serving:
            message = f"{moved} serves the new revision; updating {other}"
            return Plan(both, other, "Updating", "UpdatingSecondColor", message)
        if not observed[other].serving:
            message = "no color is ready; updating both"
            return Plan(both, None, "Deploying", "NoColorReady", message)
        message = f"waiting for {moved} to serve the new revision; {other} serves"
        return Plan(_targets(desired, moved), moved, "Updating", "UpdatingFirstColor", message)

    # Neither color runs the new revision: move one whose sibling serves, preferring one that
    # does not serve itself (it costs no capacity); if none serves, nothing can be lost.
    candidates = [c for c in reversed(COLORS) if observed[_other(c)].serving]
    if not candidates:
        message = "no color is ready; updating both"
        return Plan(both, None, "Deploying", "NoColorReady", message)
    first = next((c for c in candidates if not observed[c].serving), candidates[0])
    message = f"updating {first}; {_other(first)} serves"
    return Plan(_targets(desired, first), first, "Updating", "UpdatingFirstColor", message)


def _targets(desired: str, *moving: Color) -> dict[Color, str | None]:
    return {c: (desired if c in moving else None) for c in COLORS}


def _other(color: Color) -> Color:
    return "green" if color == "blue" else "blue"
