"""Call the example services through Hypha, as a notebook or a script would.

Connects to the Hypha server the services are registered in, lists them, and calls each:
the nucleus segmentation app on the sample image, the model runner (a sigmoid standing in
for a U-Net), the app composing that runner with post-processing, the dataset's file
listing, and the app reading the dataset's zarr array. The connection comes from the
environment, as ``bioengine env`` prints it:

    eval "$(bioengine env --user alice@example.org)"
    python examples/client.py

Against a cluster, set HYPHA_SERVER_URL, HYPHA_WORKSPACE (the bridge's workspace) and
HYPHA_TOKEN (a token of a user the resources authorize) yourself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from hypha_rpc import connect_to_server

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sample_data import CENTERS, nuclei_image

NUCLEI, COMPOSED, TILES = "nucleus-segmentation", "probability-segmentation", "zarr-tile-stats"
RUNNER, DATASET = "unet-runner", "cell-images"


async def run(server_url: str, workspace: str, token: str) -> dict[str, Any]:
    """Every call's answer, by service id (what ``main`` prints)."""
    server = await connect_to_server(
        {"server_url": server_url, "workspace": workspace, "token": token, "method_timeout": 120}
    )
    try:
        services = await server.list_services(workspace)
        ids = {s["id"].split(":")[-1] for s in services} - {"built-in"}  # a client's own
        found: dict[str, Any] = {"services": sorted(ids)}

        async def service(name: str) -> Any:
            return await server.get_service(f"{workspace}/{name}")

        image = nuclei_image()
        found[NUCLEI] = await (await service(NUCLEI)).segment(image=image)
        probe = np.linspace(-4, 4, 12, dtype=np.float32).reshape(3, 4)
        runner = await service(RUNNER)
        found[RUNNER] = {
            "input": probe,
            "output": (await runner.infer(model="unet2d", inputs={"input0": probe}))["output0"],
        }
        found[COMPOSED] = await (await service(COMPOSED)).segment(image=image, threshold=0.6)
        found[DATASET] = await (await service(DATASET)).list_files(path="")
        found[TILES] = await (await service(TILES)).tile_stats(
            array_path="hela.zarr", tile_size=128
        )
        return found
    finally:
        await server.disconnect()


def report(found: dict[str, Any]) -> str:
    nuclei = found[NUCLEI]
    runner = found[RUNNER]
    expected = 1 / (1 + np.exp(-runner["input"]))
    composed = found[COMPOSED]
    tiles = found[TILES]
    brightest = max(tiles["tiles"], key=lambda t: t["mean"])
    names = ", ".join(
        f"{e['name']}{'/' if e.get('type') == 'directory' else ''}" for e in found[DATASET]
    )
    return "\n".join(
        [
            f"services: {', '.join(found['services'])}",
            f"{NUCLEI}.segment: {nuclei['count']} nuclei in the 512x512 sample "
            f"({len(CENTERS)} drawn); labels {nuclei['labels'].shape} {nuclei['labels'].dtype}, "
            f"largest area {max(r['area'] for r in nuclei['regions'])} px",
            f"{RUNNER}.infer(unet2d): output {runner['output'].shape} {runner['output'].dtype}, "
            f"max |output - sigmoid(input)| = {np.abs(runner['output'] - expected).max():.1e}",
            f"{COMPOSED}.segment: {composed['count']} objects; probability map "
            f"{composed['probability'].shape}, range {composed['probability'].min():.3f}"
            f"..{composed['probability'].max():.3f}",
            f"{DATASET}.list_files: {names}",
            f"{TILES}.tile_stats(hela.zarr): shape {tiles['shape']}, {len(tiles['tiles'])} tiles "
            f"of {tiles['tile']}, brightest at ({brightest['y']}, {brightest['x']}) "
            f"mean {brightest['mean']:.3f}",
        ]
    )


def picture(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The image (grey) beside its labels (one colour per nucleus, black background), as
    RGB bytes: what a person looks at to judge a segmentation."""
    grey = image.astype(np.float64)
    grey = (255 * (grey - grey.min()) / (np.ptp(grey) or 1)).astype(np.uint8)
    label = labels.astype(np.int64)[..., None]
    colours = np.where(label > 0, (label * np.array([97, 57, 151])) % 200 + 55, 0)
    return np.concatenate([np.repeat(grey[..., None], 3, axis=2), colours], axis=1).astype(np.uint8)


def png(rgb: np.ndarray) -> bytes:
    """``rgb`` (height x width x 3, uint8) as a PNG file (no imaging library needed)."""
    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + rgb[y].tobytes() for y in range(height))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--picture", type=Path, help="also write the sample image beside its labels as a PNG"
    )
    args = parser.parse_args()
    # A reader of the workspace cannot register hypha-rpc's built-in service there;
    # hypha-rpc logs that as an error and carries on.
    logging.getLogger("RPC").setLevel(logging.CRITICAL)
    try:
        url, workspace = os.environ["HYPHA_SERVER_URL"], os.environ["HYPHA_WORKSPACE"]
    except KeyError as missing:
        raise SystemExit(f'set {missing} (eval "$(bioengine env --user USER)")') from None
    found = asyncio.run(run(url, workspace, os.environ.get("HYPHA_TOKEN", "")))
    print(report(found))
    if args.picture:
        args.picture.write_bytes(png(picture(nuclei_image(), found[NUCLEI]["labels"])))
        print(f"picture of the segmentation (image | labels): {args.picture}")


if __name__ == "__main__":
    main()
