import asyncio
import hashlib

import bioengine
import numpy as np
from pydantic import Field


@bioengine.app(num_cpus=0, memory_mb=256)
class DataApp:
    @bioengine.method
    async def read(
        self,
        dataset: str = Field(..., description="A dataset of the app's spec.datasets"),
        path: str = Field(..., description="A file in it"),
    ) -> dict:
        """The dataset's files and one file's digest, read from its server as the caller."""
        files = await bioengine.datasets.list_files(dataset)
        top = await bioengine.datasets.list_files(dataset, recursive=False)
        data = await bioengine.datasets.get_file(dataset, path)
        return {
            "files": files,
            "top": top,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    @bioengine.method
    async def array_sum(
        self,
        dataset: str = Field(..., description="A dataset of the app's spec.datasets"),
        array_path: str = Field(..., description="A zarr array in it"),
    ) -> dict:
        """Shape and sum of a zarr array, read chunk by chunk over HTTP."""
        import zarr

        store = await bioengine.datasets.get_file(dataset, array_path)
        array = await asyncio.to_thread(zarr.open_array, store, mode="r")
        values = await asyncio.to_thread(lambda: np.asarray(array[:], dtype=np.float64))
        return {"shape": list(values.shape), "sum": float(values.sum())}
