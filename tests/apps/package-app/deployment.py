import os
from typing import Any

import bioengine
from pydantic import Field
from runtimes.stats import StatsRuntime

logger = bioengine.logger


@bioengine.app(num_cpus=0, num_gpus=0, memory_mb=128, env_vars={"GREETING": "hello"})
class PackageApp:
    def __init__(self, stats: StatsRuntime, suffix: str = "!") -> None:
        self.stats = stats
        self.suffix = suffix

    @bioengine.smoke_test
    async def smoke(self) -> None:
        await self._model("warm-up")
        assert (await self.reverse_text(text="abc"))["reversed"].startswith("cba")

    @bioengine.multiplexed(max_models=2)
    async def _model(self, model_id: str) -> Any:
        return model_id.upper()

    @bioengine.method
    async def reverse_text(
        self, text: str = Field(..., description="Text to reverse")
    ) -> dict[str, str | int]:
        """Reverse a string."""
        return {"reversed": text[::-1] + self.suffix, "greeting": os.environ["GREETING"]}

    @bioengine.method
    def numbers(self, values: list = Field(None, description="Numbers; default 1, 2, 3")) -> dict:
        """A sync method with an optional list."""
        return {"values": values or [1, 2, 3]}

    @bioengine.method
    async def mean(self, values: list[float] = Field(..., description="Numbers")) -> dict:
        """The mean, from the stats runtime."""
        return await self.stats.mean(values)

    @bioengine.method
    async def datasets(self) -> dict[str, list[str]]:
        """The app's datasets."""
        return {name: [] for name in await bioengine.datasets.list_datasets()}
