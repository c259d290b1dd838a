"""The post-processing runtime: threshold a probability map and label connected objects."""

from __future__ import annotations

import bioengine
import numpy as np


def label_objects(probability: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    """Connected foreground regions (8-connectivity) numbered 1..n."""
    from scipy import ndimage

    labels, count = ndimage.label(probability > threshold, structure=np.ones((3, 3)))
    return labels.astype(np.int32), int(count)


@bioengine.app(num_cpus=0.25, memory_mb=256, pip=["scipy"])
class PostProcessor:
    @bioengine.method
    async def label(self, probability: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
        """Objects above ``threshold`` and how many there are."""
        return label_objects(probability, threshold)

    @bioengine.method
    async def ping(self) -> str:
        """Liveness."""
        return "pong"
