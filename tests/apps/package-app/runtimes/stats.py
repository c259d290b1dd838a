from pathlib import Path

import bioengine
from helpers import described

logger = bioengine.logger


def _requirements(name):
    lines = (Path(__file__).parent.parent / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


@bioengine.app(num_cpus=0, num_gpus=0, memory_mb=128, pip=_requirements("requirements-stats.txt"))
class StatsRuntime:
    @bioengine.async_init
    async def load(self):
        import numpy

        self.numpy_version = numpy.__version__

    @bioengine.method
    async def mean(self, values: list) -> dict:
        import numpy as np

        return described("stats", mean=float(np.mean(values)), numpy=self.numpy_version)
