"""The blue/green update protocol of a ModelRunner, as a pure decision function.

Invariants it keeps (and the end-to-end test watches for):

* the Service always selects at least one Ready pod once the runner has served at all:
  a color's pod template is changed only while the *other* color is fully Ready;
* no surge: a changed color is replaced in place (Recreate), so the runner never holds
  more than ``2 x replicas`` pods and needs no spare GPU;
* one color at a time: the second color moves to the new revision only after the first
  runs it with every pod Ready (Triton's strict readiness: every model loaded).

The function sees the observed state of both Deployments and returns, per color, the
revision its Deployment should carry now. It is called on every reconcile (spec change,
Deployment status change, periodic resync) and is idempotent: the same observations give
the same plan, so a restarted operator resumes a half-done update where it stood.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Color = Literal["blue", "green"]
COLORS: tuple[Color, Color] = ("blue", "green")


@dataclasses.dataclass(frozen=True)
class Observed:
    """What the live Deployment of one color says (``exists=False`` if there is none)."""

    exists: bool
    revision: str | None = None
    settled: bool = False  # rolled out: observed its generation, every pod updated and Ready
    ready_replicas: int = 0

    @property
    def serving(self) -> bool:
        return self.exists and self.settled and self.ready_replicas > 0


ABSENT = Observed(exists=False)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Target revision per color; a color mapped to None keeps what it has."""

    targets: dict[Color, str | None]
    updating: Color | None
    phase: Literal["Deploying", "Updating", "Ready", "Degraded"]
    reason: str
    message: str


def plan(desired: str, observed: dict[Color, Observed]) -> Plan:
    blue, green = observed["blue"], observed["green"]
    at_desired = {c for c in COLORS if observed[c].exists and observed[c].revision == desired}

    if not blue.exists and not green.exists:
        return Plan(
            {"blue": desired, "green": desired},
            None,
            "Deploying",
            "Creating",
            "creating both colors",
        )

    if at_desired == set(COLORS):
        ready = [c for c in COLORS if observed[c].serving]
        if len(ready) == 2:
            return Plan(
                {"blue": desired, "green": desired},
                None,
                "Ready",
                "BothColorsReady",
                "both colors serve the current revision",
            )
        phase = "Degraded" if ready else "Deploying"
        waiting = ", ".join(c for c in COLORS if c not in ready)
        return Plan(
            {"blue": desired, "green": desired},
            None,
            phase,
            "WaitingForColor",
            f"waiting for {waiting} to become ready",
        )

    if len(at_desired) == 1:
        (moved,) = at_desired
        other = _other(moved)
        if observed[moved].serving:
            # First color done: now the second one, while the first serves.
            return Plan(
                {moved: desired, other: desired},
                other,
                "Updating",
                "UpdatingSecondColor",
                f"{moved} serves the new revision; updating {other}",
            )
        if not observed[other].serving:
            # Nothing serves either way: move the other too instead of waiting on it.
            return Plan(
                {moved: desired, other: desired},
                None,
                "Deploying",
                "NoColorReady",
                "no color is ready; updating both",
            )
        return Plan(
            {moved: desired, other: None},
            moved,
            "Updating",
            "UpdatingFirstColor",
            f"waiting for {moved} to be ready on the new revision; {other} serves",
        )

    # Neither color has the new revision: start with a color whose sibling serves. Prefer
    # moving a color that does not serve anyway (it costs no capacity), else green.
    candidates = [c for c in ("green", "blue") if observed[_other(c)].serving]
    if not candidates:
        return Plan(
            {"blue": desired, "green": desired},
            None,
            "Deploying",
            "NoColorReady",
            "no color is ready; updating both",
        )
    first = next((c for c in candidates if not observed[c].serving), candidates[0])
    return Plan(
        {first: desired, _other(first): None},
        first,
        "Updating",
        "UpdatingFirstColor",
        f"updating {first}; {_other(first)} serves",
    )


def _other(color: Color) -> Color:
    return "green" if color == "blue" else "blue"
