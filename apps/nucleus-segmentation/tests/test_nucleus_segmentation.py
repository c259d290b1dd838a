"""The app in-process (no Ray): the pipeline finds known nuclei, and the app's methods
return what the pipeline computes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

import nuclei
import segmenter


def test_the_pipeline_finds_each_disc_once() -> None:
    image = nuclei.synthetic_nuclei()
    labels, regions = nuclei.segment_nuclei(image)
    assert len(regions) == 3
    for (cy, cx), region in zip(((30, 30), (30, 90), (90, 60)), regions, strict=True):
        assert abs(region["centroid_y"] - cy) < 2 and abs(region["centroid_x"] - cx) < 2
        assert 350 < region["area"] < 560  # a disc of radius 12 covers about 450 pixels
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_touching_nuclei_are_split() -> None:
    image = nuclei.synthetic_nuclei(centers=((60, 50), (60, 72)), radius=12)
    _, regions = nuclei.segment_nuclei(image)
    assert len(regions) == 2


def test_the_app_returns_the_pipelines_answer_and_passes_its_smoke_test() -> None:
    app = segmenter.NucleusSegmenter()
    image = nuclei.synthetic_nuclei(seed=3)
    result = asyncio.run(app.segment(image, min_distance=5))
    labels, regions = nuclei.segment_nuclei(image, sigma=2.0, min_distance=5)
    np.testing.assert_array_equal(result["labels"], labels)
    assert result["regions"] == regions and result["count"] == 3
    asyncio.run(app.check_on_a_known_image())


def test_a_colour_image_is_refused_with_its_shape() -> None:
    app = segmenter.NucleusSegmenter()
    with pytest.raises(ValueError, match=r"2D image, got shape \(8, 8, 3\)"):
        asyncio.run(app.segment(np.zeros((8, 8, 3))))
