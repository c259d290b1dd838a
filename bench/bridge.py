"""The bridge against the alternatives, same run, same payloads.

    .venv/bin/python bench/bridge.py [--small-runs 40] [--large-runs 8]

Paths, each timed round trip (send the array, get an array of the same size back):

* direct    — tritonclient gRPC straight to a Triton server (the floor);
* proxy     — Hypha's built-in Triton proxy (``--triton-servers``), which the 2024
              BioEngine used: its HTTP route with tritonclient.http (its RPC service
              ``triton-client`` is tried too and reported if it fails);
* bridge    — a hypha-rpc client calling ``infer`` on the ModelRunner's service;
* echo      — a bare hypha-rpc echo service (no Triton at all): Hypha's own cost.

The Triton model is the example runner's ``unet2d`` (python backend, a sigmoid) for the
three Triton paths. Hypha paths run twice: with hypha-rpc's default WebSocket
per-message deflate, and with it disabled on the client connections (the bridge always
disables it on its own connection). Everything runs on this machine; compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from hypha_rpc import connect_to_server

from bioengine_devtools.stack import RUNNER, WORKSPACE, BridgeStack
from bioengine_operator.bridge import hypha as bridge_hypha
from bioengine_operator.local import procs, servers

PAYLOADS = {
    "512x512 f32 (1 MiB)": np.random.default_rng(0).random((512, 512), dtype=np.float32),
    "2048x2048 f32 (16 MiB)": np.random.default_rng(1).random((2048, 2048), dtype=np.float32),
}
Row = tuple[str, str, list[float] | str]


async def timed(
    call: Callable[[np.ndarray], Awaitable[Any]], x: np.ndarray, runs: int
) -> list[float]:
    await call(x)  # warm-up: connections, first-call setup
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        out = await call(x)
        samples.append(time.perf_counter() - started)
        assert np.asarray(out).shape == x.shape
    return samples


def direct_path(grpc_target: str) -> Callable[[np.ndarray], Awaitable[Any]]:
    client = triton_grpc.InferenceServerClient(grpc_target)

    async def call(x: np.ndarray) -> Any:
        tensor = triton_grpc.InferInput("input0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return await asyncio.to_thread(lambda: client.infer("unet2d", [tensor]).as_numpy("output0"))

    return call


def proxy_http_path(hypha_url: str) -> Callable[[np.ndarray], Awaitable[Any]]:
    client = triton_http.InferenceServerClient(
        hypha_url.removeprefix("http://") + "/triton", network_timeout=120, connection_timeout=120
    )

    async def call(x: np.ndarray) -> Any:
        tensor = triton_http.InferInput("input0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        output = triton_http.InferRequestedOutput("output0", binary_data=True)
        # Blocking on purpose (gevent-based client: it must stay on this thread).
        return client.infer("unet2d", [tensor], outputs=[output]).as_numpy("output0")

    return call


def start_echo(stack: BridgeStack, log: Path, no_deflate: bool) -> tuple[Any, str]:
    """The echo provider process, and the workspace its service is in."""
    token = stack.hypha.token("echo", "echo@example.org")
    argv = [
        sys.executable,
        str(Path(__file__).with_name("echo_provider.py")),
        stack.hypha.url,
        token,
        *(["--no-deflate"] if no_deflate else []),
    ]
    proc = procs.spawn(argv, log)
    procs.wait_for(lambda: "ready " in log.read_text(), "echo provider", 60, proc=proc, log=log)
    workspace = log.read_text().split("ready ", 1)[1].split()[0]
    return proc, workspace


async def hypha_rows(
    stack: BridgeStack,
    proxy: servers.HyphaServer,
    label: str,
    runs: dict[str, int],
    echo_workspace: str,
) -> list[Row]:
    rows: list[Row] = []
    caller = await stack.member("bench", method_timeout=120)
    echo_service = await caller.get_service(f"{echo_workspace}/echo")
    runner = await caller.get_service(f"{WORKSPACE}/{RUNNER}")

    async def bridge_call(x: np.ndarray) -> Any:
        return (await runner.infer(model="unet2d", inputs={"input0": x}))["output0"]

    try:
        for payload, x in PAYLOADS.items():
            n = runs[payload]
            rows.append((f"bridge ({label})", payload, await timed(bridge_call, x, n)))
            rows.append((f"echo ({label})", payload, await timed(echo_service.echo, x, n)))
        anonymous = await connect_to_server({"server_url": proxy.url, "method_timeout": 120})
        try:
            triton = await anonymous.get_service("public/triton-client")
            x = PAYLOADS["512x512 f32 (1 MiB)"]
            await triton.execute(model_name="unet2d", inputs=[x])
            rows.append((f"proxy RPC ({label})", "512x512 f32 (1 MiB)", "works"))
        except Exception as err:
            rows.append((f"proxy RPC ({label})", "any", f"fails: {_last_line(err)}"))
        finally:
            await anonymous.disconnect()
    finally:
        await caller.disconnect()
    return rows


def _last_line(err: Exception) -> str:
    lines = [line for line in "".join(traceback.format_exception_only(err)).splitlines() if line]
    return lines[-1][:90] if lines else repr(err)


def table(rows: list[Row]) -> None:
    print(f"{'path':<28}{'payload':<24}{'p50 ms':>9}{'p99 ms':>9}{'MiB/s':>9}")
    medians: dict[tuple[str, str], float] = {}
    for path, payload, samples in rows:
        if isinstance(samples, str):
            print(f"{path:<28}{payload:<24}  {samples}")
            continue
        ordered = sorted(samples)
        p50 = statistics.median(ordered)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
        mib = 2 * PAYLOADS[payload].nbytes / 2**20 / p50  # request + response
        medians[(path, payload)] = p50
        print(f"{path:<28}{payload:<24}{1000 * p50:>9.1f}{1000 * p99:>9.1f}{mib:>9.0f}")
    print()
    print("ratios of p50 (goal: bridge <= 1.0x proxy, <= 1.5x echo); the last one leaves out")
    print("the Triton call itself (bridge minus direct gRPC), which no path through Hypha avoids")
    for payload in PAYLOADS:
        direct = medians[("direct gRPC", payload)]
        proxy = medians[("proxy HTTP", payload)]
        for label in ("default", "no deflate"):
            bridge = medians[(f"bridge ({label})", payload)]
            echo = medians[(f"echo ({label})", payload)]
            print(
                f"  {payload:<24} {label:<11} bridge/proxy {bridge / proxy:5.2f}x   "
                f"bridge/echo {bridge / echo:5.2f}x   "
                f"(bridge-direct)/echo {(bridge - direct) / echo:5.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small-runs", type=int, default=40)
    parser.add_argument("--large-runs", type=int, default=8)
    args = parser.parse_args()
    runs = dict(zip(PAYLOADS, (args.small_runs, args.large_runs), strict=True))
    with tempfile.TemporaryDirectory() as tmp, BridgeStack(Path(tmp), with_app=False) as stack:
        blue = stack.tritons["blue"]
        proxy = servers.HyphaServer(
            Path(tmp),
            stack.hypha.jwt_secret,
            stack.hypha.root_token,
            server_id="proxy",
            extra_env={"HYPHA_TRITON_SERVERS": blue.http},
        )
        proxy.start()
        try:
            asyncio.run(stack.services_back([RUNNER], timeout=120))
            rows: list[Row] = []
            for payload, x in PAYLOADS.items():
                rows.append(
                    (
                        "direct gRPC",
                        payload,
                        asyncio.run(timed(direct_path(blue.grpc), x, runs[payload])),
                    )
                )
                rows.append(
                    (
                        "proxy HTTP",
                        payload,
                        asyncio.run(timed(proxy_http_path(proxy.url), x, runs[payload])),
                    )
                )
            for label, no_deflate in (("default", False), ("no deflate", True)):
                if no_deflate:
                    bridge_hypha.disable_compression()  # new client connections from here on
                echo, workspace = start_echo(stack, Path(tmp) / f"echo-{label}.log", no_deflate)
                try:
                    rows += asyncio.run(hypha_rows(stack, proxy, label, runs, workspace))
                finally:
                    procs.stop_group(echo.pid)
        finally:
            proxy.stop()
    table(rows)


if __name__ == "__main__":
    main()
