"""The entry class: composes the model runtime and the post-processing runtime through its
constructor's type hints, and calls them without ``.remote()``."""

from __future__ import annotations

import asyncio
from typing import Any

import bioengine
import numpy as np
from prob_runtimes.model import TritonModel
from prob_runtimes.postprocess import PostProcessor
from pydantic import Field

logger = bioengine.logger


@bioengine.app(num_cpus=0.25, memory_mb=256, max_ongoing_requests=8)
class ProbabilitySegmentation:
    def __init__(self, model: TritonModel, postprocess: PostProcessor) -> None:
        self.model = model
        self.postprocess = postprocess

    @bioengine.smoke_test
    async def both_runtimes_answer(self) -> None:
        info, ping = await asyncio.gather(self.model.describe(), self.postprocess.ping())
        assert ping == "pong", ping
        logger.info("model %s reachable at %s", info["model"], info["url"])

    @bioengine.method
    async def segment(
        self,
        image: np.ndarray = Field(..., description="A 2D float32 image."),
        threshold: float = Field(
            0.5, gt=0, lt=1, description="Probability above which a pixel is foreground."
        ),
    ) -> dict[str, Any]:
        """Probability map from the model, then objects: returns ``probability``, ``labels``
        and ``count``."""
        probability = await self.model.predict(np.asarray(image, dtype=np.float32))
        labels, count = await self.postprocess.label(probability, threshold)
        return {"probability": probability, "labels": labels, "count": count}

    @bioengine.method
    async def model_info(self) -> dict[str, Any]:
        """Which Triton model and server the app uses."""
        return await self.model.describe()
