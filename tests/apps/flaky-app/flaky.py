"""Fails its smoke test while FAIL_SMOKE is set, and its health check while the file
FLAKY_FLAG names exists (the replicas Serve starts in its place fail too, until it is gone)."""

import os
from pathlib import Path

import bioengine


@bioengine.app(num_cpus=0.1, health_check_period_s=1, health_check_timeout_s=5)
class Flaky:
    @bioengine.smoke_test
    async def look_for_cells(self) -> None:
        if os.environ.get("FAIL_SMOKE"):
            raise ValueError("the smoke test found no cells in the reference image")

    @bioengine.health_check
    def flag(self) -> None:
        if Path(os.environ["FLAKY_FLAG"]).exists():
            raise RuntimeError("the flag file says this replica is unwell")

    @bioengine.method
    def ping(self) -> str:
        """Liveness."""
        return "pong"
