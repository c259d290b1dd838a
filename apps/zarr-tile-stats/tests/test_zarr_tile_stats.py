"""The app in-process (no Ray) on a real zarr array in a folder laid out as a mounted dataset."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

sys.path.insert(0, str(Path(__file__).parents[1]))

import tile_stats


@pytest.fixture
def dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    image = np.random.default_rng(1).random((100, 70), dtype=np.float32)
    array = zarr.create_array(
        store=str(tmp_path / "cells" / "img.zarr"), shape=image.shape, chunks=(32, 32), dtype="f4"
    )
    array[:] = image
    monkeypatch.setenv("BIOENGINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BIOENGINE_DATASETS", json.dumps({"cells": {"url": "", "mounted": True}}))
    return image


def test_tiles_cover_the_array_and_match_numpy(dataset: np.ndarray) -> None:
    app = tile_stats.TileStatistics(dataset="cells")
    result = asyncio.run(app.tile_stats("img.zarr", tile_size=32))
    assert result["shape"] == [100, 70]
    assert len(result["tiles"]) == 4 * 3  # ceil(100/32) x ceil(70/32)
    corner = next(t for t in result["tiles"] if (t["y"], t["x"]) == (96, 64))
    block = dataset[96:, 64:].astype(np.float64)
    assert corner["mean"] == pytest.approx(block.mean())
    assert corner["max"] == pytest.approx(block.max())


def test_a_path_outside_the_dataset_or_an_unlisted_dataset_is_refused(dataset: np.ndarray) -> None:
    app = tile_stats.TileStatistics(dataset="cells")
    with pytest.raises(ValueError, match="leaves the dataset"):
        asyncio.run(app.tile_stats("../../etc"))
    other = tile_stats.TileStatistics(dataset="elsewhere")
    with pytest.raises(Exception, match="not among this app's datasets"):
        asyncio.run(other.tile_stats("img.zarr"))
