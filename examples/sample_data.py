"""The demo's sample dataset: a synthetic nuclear-stain image whose nuclei are known.

``python examples/sample_data.py DIR`` writes ``DIR/hela.zarr`` (a 512 x 512 float32 zarr
array) and ``DIR/README.txt``; ``make demo`` hands ``DIR`` to ``bioengine up`` as the
folder of the ``cell-images`` PersistentVolumeClaim (``--volume cell-images=DIR``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SHAPE = (512, 512)
# Nuclei on a 4 x 4 grid, alternately smaller and larger, none touching: 16 to find.
CENTERS = tuple((64 + 128 * i, 64 + 128 * j) for i in range(4) for j in range(4))
RADII = tuple(10 + 6 * ((i + j) % 2) for i in range(4) for j in range(4))


def nuclei_image(seed: int = 0) -> np.ndarray:
    """Bright discs on a dim, noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    image = rng.normal(0.1, 0.02, SHAPE)
    for (cy, cx), radius in zip(CENTERS, RADII, strict=True):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] += 0.8
    return image.astype(np.float32)


def write(folder: Path) -> None:
    import zarr

    folder.mkdir(parents=True, exist_ok=True)
    image = nuclei_image()
    array = zarr.create_array(
        store=str(folder / "hela.zarr"),
        shape=image.shape,
        chunks=(128, 128),
        dtype="float32",
        overwrite=True,
    )
    array[:] = image
    (folder / "README.txt").write_text(
        f"Synthetic nuclear stain, {SHAPE[0]} x {SHAPE[1]} float32, {len(CENTERS)} nuclei.\n"
    )


if __name__ == "__main__":
    write(Path(sys.argv[1]))
