"""The Hypha bridge end to end: real Hypha, real Ray Serve, two real Tritons, the real
dataset server, the operator and the bridge as processes, on the local control plane.

Pods are kwok's and have no network, so the backends run as local processes and the bridge
is told where they are through its endpoints file (see ``bridge.endpoints``). The app's
RayService Ready status is written by the test in KubeRay's place (see ``stack``).
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import register_logs
from helpers import wait_for
from hypha_rpc import connect_to_server

from bioengine_operator.devcluster.stack import (
    APP,
    DATASET,
    NS,
    RUNNER,
    WORKSPACE,
    BridgeStack,
    simulate_rayservice_status,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeStack]:
    with (
        BridgeStack(tmp_path_factory.mktemp("bridge")) as running,
        register_logs(running.log_tails),
    ):
        asyncio.run(wait_services(running, running.service_ids(), timeout=120))
        yield running


# alice and carol are members of the lab's workspace (read access); alice is also listed in
# the example app's authorizedUsers, carol is not; mallory is a Hypha user from outside.
MEMBERS = ("alice", "carol")


async def client(stack: BridgeStack, user: str | None) -> Any:
    config: dict[str, Any] = {"server_url": stack.hypha.url, "method_timeout": 30}
    if user:
        workspace = WORKSPACE if user in MEMBERS else None
        config["token"] = stack.hypha.token(user, f"{user}@example.org", workspace, "read")
        if workspace:
            config["workspace"] = workspace
    return await connect_to_server(config)


async def wait_services(stack: BridgeStack, ids: list[str], timeout: float) -> float:
    """Seconds until alice can get and call every service in ``ids`` (fails past timeout)."""
    started = time.monotonic()
    while True:
        try:
            alice = await client(stack, "alice")
            try:
                for sid in ids:
                    service = await alice.get_service(f"{WORKSPACE}/{sid}")
                    if "get_status" in service:
                        await service.get_status()
            finally:
                await alice.disconnect()
            return time.monotonic() - started
        except Exception as err:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"services {ids} not back after {timeout}s: {err}") from err
            await asyncio.sleep(0.25)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_app_methods_are_functions_and_arrays_pass_bit_exact(stack: BridgeStack) -> None:
    async def scenario() -> None:
        alice = await client(stack, "alice")
        try:
            app = await alice.get_service(f"{WORKSPACE}/{APP}")
            assert {"segment", "echo", "ping", "get_status"} <= set(app)
            assert "brighter than the image mean" in app.segment.__doc__
            image = np.random.default_rng(1).random((512, 512), dtype=np.float32)
            np.testing.assert_array_equal(await app.segment(image), image > image.mean())
            for array in (
                np.random.default_rng(2).random((2048, 2048), dtype=np.float32),  # 16 MiB
                np.arange(60_000, dtype=np.uint16).reshape(200, 300),
                np.array([[np.nan, -0.0, np.inf]], dtype=np.float64),
            ):
                back = await app.echo(array)
                assert back.dtype == array.dtype and back.shape == array.shape
                assert back.tobytes() == array.tobytes()
            assert await app.ping() == "pong"
            status = await app.get_status()
            assert status["phase"] == "Ready"
        finally:
            await alice.disconnect()

    run(scenario())


def test_model_runner_infer_and_metadata(stack: BridgeStack) -> None:
    async def scenario() -> None:
        alice = await client(stack, "alice")
        try:
            runner = await alice.get_service(f"{WORKSPACE}/{RUNNER}")
            x = np.random.default_rng(3).standard_normal((512, 512), dtype=np.float32)
            out = await runner.infer(model="unet2d", inputs={"input0": x})
            np.testing.assert_allclose(out["output0"], 1 / (1 + np.exp(-x)), rtol=1e-6)
            models = await runner.list_models()
            assert {"name": "unet2d", "state": "READY"}.items() <= models[0].items()
            config = await runner.get_model_config("unet2d")
            assert config["backend"] == "python"
        finally:
            await alice.disconnect()

    run(scenario())


def test_dataset_functions_and_http_range_access(stack: BridgeStack) -> None:
    async def scenario() -> None:
        alice = await client(stack, "alice")
        try:
            dataset = await alice.get_service(f"{WORKSPACE}/{DATASET}")
            entries = {e["name"]: e for e in await dataset.list_files()}
            assert entries["hela.zarr"]["description"] == "256 x 256"
            readme = b"HeLa cells, 2 channels.\n"
            assert await dataset.read_file("README.txt") == readme
            assert await dataset.read_file("README.txt", offset=5, length=5) == readme[5:10]
            assert (await dataset.get_manifest())["name"] == "Cell images"
        finally:
            await alice.disconnect()

    run(scenario())
    token = stack.hypha.token("alice", "alice@example.org", WORKSPACE, "read")
    base = f"{stack.hypha.url}/{WORKSPACE}/apps/{DATASET}-files/files"
    request = urllib.request.Request(
        f"{base}/README.txt", headers={"Authorization": f"Bearer {token}", "Range": "bytes=0-3"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == "bytes 0-3/24"
        assert response.read() == b"HeLa"
    array = zarr.open_array(
        f"{base}/hela.zarr",
        mode="r",
        storage_options={"headers": {"Authorization": f"Bearer {token}"}},
    )
    assert array[:].tobytes() == stack.image.tobytes()


def test_unauthorized_and_anonymous_callers_are_refused(stack: BridgeStack) -> None:
    async def scenario() -> None:
        mallory, anonymous = await client(stack, "mallory"), await client(stack, None)
        carol = await client(stack, "carol")
        try:
            for outsider in (mallory, anonymous):  # the app is protected: Hypha refuses
                with pytest.raises(Exception, match="Permission denied"):
                    await outsider.get_service(f"{WORKSPACE}/{APP}")
            # carol is in the workspace, so Hypha lets her reach the app; the bridge refuses
            # her because the app's authorizedUsers does not list her.
            app = await carol.get_service(f"{WORKSPACE}/{APP}")
            with pytest.raises(Exception, match=r"user carol .* is not authorized"):
                await app.ping()
            # The dataset is public, so Hypha lets them reach it; the bridge refuses.
            dataset = await anonymous.get_service(f"{WORKSPACE}/{DATASET}")
            with pytest.raises(Exception, match="does not accept anonymous calls"):
                await dataset.list_files()
            dataset = await mallory.get_service(f"{WORKSPACE}/{DATASET}")
            with pytest.raises(Exception, match=r"user mallory .* is not authorized"):
                await dataset.read_file("README.txt")
        finally:
            for connection in (mallory, anonymous, carol):
                await connection.disconnect()

    run(scenario())
    url = f"{stack.hypha.url}/{WORKSPACE}/apps/{DATASET}-files/files/README.txt"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=30)
    assert refused.value.code == 403


def test_killing_one_color_under_load_loses_no_call(stack: BridgeStack) -> None:
    async def scenario() -> tuple[int, list[str]]:
        alice = await client(stack, "alice")
        runner = await alice.get_service(f"{WORKSPACE}/{RUNNER}")
        x = np.ones((64, 64), dtype=np.float32)
        done, failures = 0, []
        deadline = time.monotonic() + 6

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                try:
                    out = await runner.infer(model="unet2d", inputs={"input0": x})
                    assert out["output0"].shape == x.shape
                    done += 1
                except Exception as err:
                    failures.append(repr(err))

        async def killer() -> None:
            await asyncio.sleep(2)
            await asyncio.to_thread(stack.tritons["blue"].kill)  # SIGKILL: a node dies

        try:
            await asyncio.gather(*(worker() for _ in range(4)), killer())
        finally:
            await alice.disconnect()
        return done, failures

    try:
        done, failures = run(scenario())
    finally:
        stack.tritons["blue"].start()  # same ports: the next tests see both colors again
    assert failures == []
    assert done > 20


def test_loss_of_readiness_unregisters_and_recovery_registers(stack: BridgeStack) -> None:
    async def gone() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            alice = await client(stack, "alice")
            try:
                await alice.get_service(f"{WORKSPACE}/{APP}")
            except Exception:
                return
            finally:
                await alice.disconnect()
            await asyncio.sleep(0.25)
        raise AssertionError("the app's service stayed registered after it lost readiness")

    simulate_rayservice_status(stack.cluster, NS, APP, False, "ZeroServeEndpoints")
    run(gone())
    simulate_rayservice_status(stack.cluster, NS, APP, True, "NonZeroServeEndpoints")
    run(wait_services(stack, [APP], timeout=30))


def test_hypha_restart_brings_services_back_within_10s(stack: BridgeStack) -> None:
    stack.hypha.stop()
    stack.hypha.start()
    seconds = run(wait_services(stack, stack.service_ids(), timeout=10))
    print(f"services back {seconds:.1f}s after Hypha answered again")


def test_bridge_restart_brings_services_back_within_10s(stack: BridgeStack) -> None:
    stack.stop_bridge(kill=True)
    stack.start_bridge()
    seconds = run(wait_services(stack, stack.service_ids(), timeout=10))
    print(f"services back {seconds:.1f}s after the bridge restarted")


def test_deleting_a_resource_unregisters_its_service(stack: BridgeStack) -> None:
    stack.cluster.kubectl("-n", NS, "delete", "mr", RUNNER, "--wait=true", "--timeout=60s")

    async def gone() -> bool:
        alice = await client(stack, "alice")
        try:
            await alice.get_service(f"{WORKSPACE}/{RUNNER}")
        except Exception:
            return True
        finally:
            await alice.disconnect()
        return False

    wait_for(lambda: run(gone()), "runner service unregistered after deletion", 30)
