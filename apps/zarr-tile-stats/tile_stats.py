"""Per-tile statistics of a zarr array in a BioEngineDataset the app lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bioengine
import numpy as np
from pydantic import Field


def tile_statistics(array: Any, tile: int) -> dict[str, Any]:
    """Mean, standard deviation, minimum and maximum of each ``tile`` x ``tile`` tile of a
    2D array (edge tiles are smaller), read one tile at a time."""
    height, width = array.shape
    rows = []
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            block = np.asarray(array[y : y + tile, x : x + tile], dtype=np.float64)
            rows.append(
                {
                    "y": y,
                    "x": x,
                    "mean": float(block.mean()),
                    "std": float(block.std()),
                    "min": float(block.min()),
                    "max": float(block.max()),
                }
            )
    return {"shape": [height, width], "tile": tile, "tiles": rows}


@bioengine.app(num_cpus=0.5, memory_mb=512, pip=["zarr>=3"])
class TileStatistics:
    """``dataset`` names the BioEngineDataset to read (it must be in the app's
    ``spec.datasets``); a cluster admin sets it with ``classes.TileStatistics.initKwargs``."""

    def __init__(self, dataset: str = "cell-images") -> None:
        self.dataset = dataset

    def _inside(self, path: str) -> Path:
        """``path`` in the dataset as mounted into this pod (the cluster admin granted the
        app the dataset: its own methods' users decide who may see what it reads)."""
        root = bioengine.datasets.path(self.dataset)
        target = (root / path).resolve()
        if not target.is_relative_to(root.resolve()):
            raise ValueError(f"{path!r} leaves the dataset")
        return target

    @bioengine.method
    async def list_files(
        self, directory: str = Field("", description="A folder of the dataset.")
    ) -> list[str]:
        """Names in a folder of the dataset (a zarr store is a folder)."""
        return sorted(p.name for p in self._inside(directory).iterdir())

    @bioengine.method
    async def tile_stats(
        self,
        array_path: str = Field(..., description="Path of a 2D zarr array in the dataset."),
        tile_size: int = Field(64, ge=1, le=4096, description="Tile edge in pixels."),
    ) -> dict[str, Any]:
        """Per-tile mean, std, min and max of the array: ``shape``, ``tile`` and ``tiles``
        (one row per tile with its top-left corner ``y``, ``x``)."""
        import zarr

        array = zarr.open_array(str(self._inside(array_path)), mode="r")
        if array.ndim != 2:
            raise ValueError(f"{array_path} has {array.ndim} dimensions; expected 2")
        return tile_statistics(array, tile_size)
