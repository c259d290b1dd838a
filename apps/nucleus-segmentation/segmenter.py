"""Nucleus segmentation as a BioEngine app (format 0.6.0)."""

from __future__ import annotations

from typing import Any

import bioengine
import numpy as np
from pydantic import Field

logger = bioengine.logger


@bioengine.app(num_cpus=1, memory_mb=1024, pip=["scikit-image>=0.22"], max_ongoing_requests=4)
class NucleusSegmenter:
    """Classical nucleus segmentation: no model weights to download."""

    def __init__(self, default_sigma: float = 2.0) -> None:
        self.default_sigma = default_sigma
        self.calls = 0

    @bioengine.smoke_test
    async def check_on_a_known_image(self) -> None:
        """Three separate discs must come out as three nuclei."""
        from nuclei import synthetic_nuclei

        result = await self.segment(synthetic_nuclei())
        if result["count"] != 3:
            found = result["count"]
            raise AssertionError(f"expected 3 nuclei in the synthetic image, found {found}")
        logger.info("nucleus segmentation smoke test passed")

    @bioengine.method
    async def segment(
        self,
        image: np.ndarray = Field(..., description="A 2D grayscale image (nuclear stain)."),
        sigma: float | None = Field(
            None, description="Gaussian smoothing in pixels; default: the deployment's."
        ),
        min_distance: int = Field(
            5, ge=1, description="Smallest distance in pixels between two nuclei's centres."
        ),
    ) -> dict[str, Any]:
        """Segment nuclei: returns the label image, the nucleus count and a region table
        (label, area, centroid_y, centroid_x, mean_intensity per nucleus)."""
        from nuclei import segment_nuclei

        self.calls += 1
        labels, regions = segment_nuclei(
            image, sigma=self.default_sigma if sigma is None else sigma, min_distance=min_distance
        )
        return {"labels": labels, "count": len(regions), "regions": regions}

    @bioengine.method
    async def stats(self) -> dict[str, Any]:
        """How many images this replica has segmented."""
        return {"calls": self.calls, "default_sigma": self.default_sigma}
