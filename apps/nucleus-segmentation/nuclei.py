"""The segmentation pipeline itself, free of any serving code so it can be run and tested
in-process: smooth, threshold (Otsu), split touching nuclei (distance-transform watershed),
measure."""

from __future__ import annotations

from typing import Any

import numpy as np


def segment_nuclei(
    image: np.ndarray, sigma: float = 2.0, min_distance: int = 5
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Label image (0 = background, 1..n = nuclei) and one row per nucleus."""
    from scipy import ndimage
    from skimage import feature, filters, measure, segmentation

    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {pixels.shape}")
    smooth = filters.gaussian(pixels, sigma=sigma)
    mask = smooth > filters.threshold_otsu(smooth)
    distance = ndimage.distance_transform_edt(mask)
    peaks = feature.peak_local_max(
        distance, min_distance=min_distance, labels=measure.label(mask), exclude_border=False
    )
    markers = np.zeros(pixels.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, markers, mask=mask).astype(np.int32)
    regions = [
        {
            "label": int(region.label),
            "area": int(region.area),
            "centroid_y": float(region.centroid[0]),
            "centroid_x": float(region.centroid[1]),
            "mean_intensity": float(region.intensity_mean),
        }
        for region in measure.regionprops(labels, intensity_image=pixels)
    ]
    return labels, regions


def synthetic_nuclei(
    shape: tuple[int, int] = (128, 128),
    centers: tuple[tuple[int, int], ...] = ((30, 30), (30, 90), (90, 60)),
    radius: int = 12,
    seed: int = 0,
) -> np.ndarray:
    """Bright discs on a noisy background: an image whose nuclei are known."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(0.1, 0.02, shape)
    for cy, cx in centers:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] += 0.8
    return image.astype(np.float32)
