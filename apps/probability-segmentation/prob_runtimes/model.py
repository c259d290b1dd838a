"""The model runtime: a ModelRunner's Triton model, called over gRPC."""

from __future__ import annotations

from typing import Any

import bioengine
import numpy as np


@bioengine.app(num_cpus=0.25, memory_mb=256, pip=["tritonclient[grpc]"], health_check_period_s=5)
class TritonModel:
    """``triton_url`` is the ModelRunner's Service (``<runner>.<namespace>.svc:8001``): a
    cluster admin sets it per deployment (``classes.TritonModel.initKwargs``)."""

    def __init__(
        self,
        triton_url: str = "unet-runner:8001",
        model_name: str = "unet2d",
        input_name: str = "input0",
        output_name: str = "output0",
    ) -> None:
        self.url, self.model_name = triton_url, model_name
        self.input_name, self.output_name = input_name, output_name

    @bioengine.async_init
    async def connect(self) -> None:
        import tritonclient.grpc.aio as triton

        self.client = triton.InferenceServerClient(self.url)

    @bioengine.health_check
    async def model_is_ready(self) -> None:
        if not await self.client.is_model_ready(self.model_name):
            raise RuntimeError(f"model {self.model_name} is not ready at {self.url}")

    @bioengine.method
    async def predict(self, image: np.ndarray) -> np.ndarray:
        """The model's output for ``image``."""
        import tritonclient.grpc.aio as triton
        from tritonclient.utils import np_to_triton_dtype

        dtype = np_to_triton_dtype(image.dtype)
        tensor = triton.InferInput(self.input_name, list(image.shape), dtype)
        tensor.set_data_from_numpy(image)
        result = await self.client.infer(
            self.model_name, [tensor], outputs=[triton.InferRequestedOutput(self.output_name)]
        )
        return result.as_numpy(self.output_name)

    @bioengine.method
    async def describe(self) -> dict[str, Any]:
        """The model and where it is served."""
        return {"model": self.model_name, "url": self.url}
