"""The app in-process (no Ray): labelling, and the entry's composition with a stand-in
model runtime (a seam for unit tests: the real Triton path runs in tests/test_apps_e2e.py)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))

import probability_entry
from prob_runtimes import postprocess


class StandInModel:
    """Returns the sigmoid of the image, as the example unet2d model does."""

    async def predict(self, image: np.ndarray) -> np.ndarray:
        return (1 / (1 + np.exp(-image))).astype(np.float32)

    async def describe(self) -> dict[str, str]:
        return {"model": "stand-in", "url": "in-process"}


def test_objects_touching_diagonally_are_one_and_apart_are_two() -> None:
    probability = np.zeros((10, 10), dtype=np.float32)
    probability[1:3, 1:3] = 0.9
    probability[3, 3] = 0.9  # diagonal neighbour of the first object
    probability[7:9, 7:9] = 0.8
    labels, count = postprocess.label_objects(probability, 0.5)
    assert count == 2
    assert labels[1, 1] == labels[3, 3] != labels[7, 7]


def test_the_entry_segments_through_both_runtimes() -> None:
    app = probability_entry.ProbabilitySegmentation(StandInModel(), postprocess.PostProcessor())
    image = np.full((16, 16), -5.0, dtype=np.float32)
    image[2:6, 2:6] = 5.0
    image[10:14, 9:15] = 5.0
    result = asyncio.run(app.segment(image, threshold=0.5))
    assert result["count"] == 2
    assert result["probability"].dtype == np.float32
    asyncio.run(app.both_runtimes_answer())
