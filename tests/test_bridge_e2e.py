"""The Hypha bridge end to end: real Hypha, real Ray Serve, two real Tritons, the real
dataset server, the operator and the bridge as processes, on the local control plane.

Pods are kwok's and have no network, so the backends run as local processes and the bridge
is told where they are through its endpoints file (see ``bridge.endpoints``). The app's
RayService Ready status is written by the test in KubeRay's place (see ``stack``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import http.server
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bioengine  # the runtime, on pytest's pythonpath (pyproject.toml)
import numpy as np
import pytest
import zarr
from conftest import register_logs
from helpers import (
    absent_from_ray,
    app_spec,
    condition,
    json_log_records,
    metric,
    resource,
    wait_for,
    wait_for_warning,
)
from hypha_rpc import connect_to_server

from bioengine_devtools import browser, chaos
from bioengine_devtools.stack import (
    APP,
    APPS_DIR,
    COMPOSED,
    DATASET,
    NS,
    RUNNER,
    TILES,
    WORKSPACE,
    BridgeStack,
    eventually,
    simulate_rayservice_status,
)
from bioengine_operator.bridge import signin
from bioengine_operator.runtime import codec


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeStack]:
    with (
        BridgeStack(tmp_path_factory.mktemp("bridge")) as running,
        register_logs(running.log_tails),
    ):
        asyncio.run(running.services_back(running.service_ids(), timeout=120))
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


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_app_methods_are_functions_and_arrays_pass_bit_exact(stack: BridgeStack) -> None:
    """The nucleus app, rendered from apps/ and run by Ray Serve, answers through Hypha
    exactly what its pipeline computes in-process."""
    sys.path.insert(0, str(APPS_DIR / APP))
    import nuclei

    async def scenario() -> None:
        alice = await client(stack, "alice")
        try:
            app = await alice.get_service(f"{WORKSPACE}/{APP}")
            assert {"segment", "stats", "get_status"} <= set(app)
            image = nuclei.synthetic_nuclei(shape=(256, 256), seed=5)
            labels, regions = nuclei.segment_nuclei(image, sigma=2.0, min_distance=5)
            result = await app.segment(image)
            assert result["labels"].dtype == labels.dtype
            assert result["labels"].tobytes() == labels.tobytes()
            assert result["regions"] == regions and result["count"] == 3
            # keyword arguments, and a Field constraint checked in the app's replica
            assert (await app.segment(image=image, min_distance=30))["count"] <= 3
            with pytest.raises(Exception, match="greater than or equal to 1"):
                await app.segment(image, min_distance=0)
            status = await app.get_status()
            assert status["phase"] == "Ready"
        finally:
            await alice.disconnect()

    run(scenario())


def test_a_method_schema_lists_its_parameters_with_descriptions(stack: BridgeStack) -> None:
    async def scenario() -> dict[str, Any]:
        alice = await client(stack, "alice")
        try:
            app = await alice.get_service(f"{WORKSPACE}/{APP}")
            return dict(app.segment.__schema__)
        finally:
            await alice.disconnect()

    schema = run(scenario())
    assert schema["name"] == "segment"
    assert schema["description"].startswith("Segment nuclei")
    properties = schema["parameters"]["properties"]
    assert properties["image"]["description"] == "A 2D grayscale image (nuclear stain)."
    assert properties["min_distance"] == {
        "type": "integer",
        "minimum": 1,
        "default": 5,
        "description": "Smallest distance in pixels between two nuclei's centres.",
    }
    assert schema["parameters"]["required"] == ["image"]
    assert "context" not in properties


def test_a_composed_app_calls_triton_through_its_runtime(stack: BridgeStack) -> None:
    async def scenario() -> dict[str, Any]:
        alice = await client(stack, "alice")
        try:
            app = await alice.get_service(f"{WORKSPACE}/{COMPOSED}")
            image = np.full((2048, 2048), -4.0, dtype=np.float32)  # 16 MiB each way
            image[100:200, 100:300] = 4.0
            image[1000:1100, 50:60] = 4.0
            result = await app.segment(image, threshold=0.5)
            expected = (1 / (1 + np.exp(-image))).astype(np.float32)
            np.testing.assert_allclose(result["probability"], expected, rtol=1e-6)
            assert result["count"] == 2
            return dict(await app.model_info())
        finally:
            await alice.disconnect()

    assert run(scenario()) == {"model": "unet2d", "url": stack.tritons["blue"].grpc}


def test_a_dataset_app_reads_the_mounted_zarr_and_serves_its_page(stack: BridgeStack) -> None:
    async def scenario() -> dict[str, Any]:
        alice = await client(stack, "alice")
        try:
            app = await alice.get_service(f"{WORKSPACE}/{TILES}")
            assert "hela.zarr" in await app.list_files()
            return dict(await app.tile_stats(array_path="hela.zarr", tile_size=100))
        finally:
            await alice.disconnect()

    result = run(scenario())
    assert result["shape"] == [256, 256] and len(result["tiles"]) == 9
    corner = next(t for t in result["tiles"] if (t["y"], t["x"]) == (200, 200))
    assert corner["mean"] == pytest.approx(float(stack.image[200:, 200:].astype(np.float64).mean()))
    token = stack.hypha.token("alice", "alice@example.org", WORKSPACE, "read")
    page = urllib.request.Request(
        f"{stack.hypha.url}/{WORKSPACE}/apps/{TILES}-ui/",  # the frontend_entry page
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(page, timeout=30) as answer:
        assert answer.headers["Content-Type"].startswith("text/html")
        assert "<title>Zarr Tile Statistics</title>" in answer.read().decode()


def test_per_method_authorized_users_are_enforced(stack: BridgeStack) -> None:
    """The nucleus app lets alice segment but not read stats, and carol the other way."""

    async def scenario() -> None:
        alice, carol = await client(stack, "alice"), await client(stack, "carol")
        try:
            as_alice = await alice.get_service(f"{WORKSPACE}/{APP}")
            as_carol = await carol.get_service(f"{WORKSPACE}/{APP}")
            assert (await as_carol.stats())["default_sigma"] == 2.0
            with pytest.raises(Exception, match=r"user alice .* is not authorized"):
                await as_alice.stats()
            with pytest.raises(Exception, match=r"user carol .* is not authorized"):
                await as_carol.segment(np.zeros((8, 8), dtype=np.float32))
        finally:
            await alice.disconnect()
            await carol.disconnect()

    run(scenario())


def test_a_browser_preflight_and_ranged_read_of_the_dataset_files_get_cors(
    stack: BridgeStack,
) -> None:
    origin = "https://viewer.example.org"
    url = f"{stack.hypha.url}/{WORKSPACE}/apps/{DATASET}-files/files/README.txt"
    preflight = urllib.request.Request(
        url,
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, range",
        },
    )
    with urllib.request.urlopen(preflight, timeout=30) as answer:
        assert answer.status in (200, 204)
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in answer.headers
        assert "authorization" in answer.headers["Access-Control-Allow-Headers"].lower()
        assert "GET" in answer.headers["Access-Control-Allow-Methods"]
    token = stack.hypha.token("alice", "alice@example.org")
    ranged = urllib.request.Request(
        url, headers={"Origin": origin, "Authorization": f"Bearer {token}", "Range": "bytes=0-3"}
    )
    with urllib.request.urlopen(ranged, timeout=30) as answer:
        assert answer.status == 206 and answer.read() == b"HeLa"
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
        assert "Content-Range" in answer.headers["Access-Control-Expose-Headers"]


def test_an_app_in_the_upstream_layout_runs_unchanged(stack: BridgeStack) -> None:
    """Entry inside the folder-as-package, a runtime in a namespace package importing a
    top-level helper, pip list read from a file, multiplexing, a sync method, a page."""
    folder = Path(__file__).parent / "apps" / "package-app"
    with stack.running_app(
        folder, {"classes": {"PackageApp": {"initKwargs": {"suffix": "?"}}}}
    ) as name:
        stack.wait_app(name, "Ready")
        base = f"http://127.0.0.1:{stack.ray.port}/{name}"

        def call(method: str, **kwargs: Any) -> Any:
            body = codec.dumps([[], kwargs])
            request = urllib.request.Request(f"{base}/{method}", data=body, method="POST")
            with urllib.request.urlopen(request, timeout=60) as answer:
                return codec.loads(answer.read())

        assert call("reverse_text", text="abc") == {"reversed": "cba?", "greeting": "hello"}
        assert call("numbers") == {"values": [1, 2, 3]}
        assert call("mean", values=[1, 2, 6])["mean"] == 3.0
        assert call("datasets") == {}
        with urllib.request.urlopen(f"{base}/__frontend__/", timeout=30) as page:
            assert b"<title>Package App</title>" in page.read()


def test_a_pip_requirement_the_ray_image_lacks_is_installed_for_the_app(
    stack: BridgeStack,
) -> None:
    """``pip=["tabulate==0.9.0"]``, which the Ray environment lacks: Ray installs it for the
    app's replicas from the package index (in this test, through the one proxy that Ray's
    loopback-only namespace is given: pip reaches the index and nothing else)."""
    folder = Path(__file__).parent / "apps" / "pip-app"
    assert absent_from_ray("tabulate")
    with stack.running_app(folder, {}) as name:
        stack.wait_app(name, "Ready")
        body = codec.dumps([[], {"rows": [["a", 1], ["bc", 22]]}])
        url = f"http://127.0.0.1:{stack.ray.port}/{name}/table"
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=60) as got:
            answer = codec.loads(got.read())
        assert answer == {
            "table": "a    1\nbc  22",
            "tabulate": "0.9.0",
            "bioengine": bioengine.__version__,
        }


def test_an_app_reads_its_dataset_over_http_as_the_user_who_calls_it(
    stack: BridgeStack,
) -> None:
    """``bioengine.datasets.list_files`` / ``get_file`` (a file's bytes, a zarr store) read
    the dataset from its server over HTTP with the caller's token, which the bridge mints for
    each call: alice, whom the dataset lists, reads it; carol, whom the app admits but the
    dataset does not, is refused by the dataset server."""
    folder = Path(__file__).parent / "apps" / "data-app"
    readme = stack.workdir / "dataset" / "README.txt"

    async def _get_service(user: str, service: str) -> None:
        member = await client(stack, user)
        try:
            await member.get_service(f"{WORKSPACE}/{service}")
        finally:
            await member.disconnect()

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], str]:
        await eventually(lambda: _get_service("alice", name), f"{name} registered", 120, 0.5)
        alice, carol = await client(stack, "alice"), await client(stack, "carol")
        try:
            app = await alice.get_service(f"{WORKSPACE}/{name}")
            read = await app.read(dataset=DATASET, path="README.txt")
            summed = await app.array_sum(dataset=DATASET, array_path="hela.zarr")
            with pytest.raises(Exception) as refused:
                await (await carol.get_service(f"{WORKSPACE}/{name}")).read(
                    dataset=DATASET, path="README.txt"
                )
            return read, summed, str(refused.value)
        finally:
            await alice.disconnect()
            await carol.disconnect()

    with stack.running_app(folder, {"datasets": [DATASET], "authorizedUsers": ["*"]}) as name:
        stack.wait_app(name, "Ready")
        read, summed, refused = run(scenario())
        assert "README.txt" in read["files"] and "hela.zarr/zarr.json" in read["files"]
        assert read["top"] == ["README.txt", "hela.zarr/"]
        assert read["size"] == readme.stat().st_size
        assert read["sha256"] == hashlib.sha256(readme.read_bytes()).hexdigest()
        assert summed["shape"] == [256, 256]
        assert summed["sum"] == pytest.approx(float(stack.image.astype(np.float64).sum()))
        assert "DataServerError: dataset server answered 403" in refused


def test_a_failing_smoke_test_and_health_check_surface_as_conditions_and_events(
    stack: BridgeStack, tmp_path: Path
) -> None:
    folder = Path(__file__).parent / "apps" / "flaky-app"
    flag = tmp_path / "unwell"
    settings = {"envVars": {"FAIL_SMOKE": "1", "FLAKY_FLAG": str(flag)}}
    with stack.running_app(folder, settings) as name:
        app = stack.wait_app(name, "Failed")
        serving = condition(app["status"], "ServeApplicationHealthy")
        assert (serving["status"], serving["reason"]) == ("False", "SmokeTestFailed")
        assert (
            "ValueError: the smoke test found no cells in the reference image"
            in (serving["message"])
        )
        assert condition(app["status"], "Ready")["status"] == "False"
        wait_for_warning(stack.cluster, NS, name, "SmokeTestFailed", "found no cells")

        stack.apply_app(folder, {"envVars": {"FLAKY_FLAG": str(flag)}})  # the fix
        stack.wait_app(name, "Ready")
        flag.touch()
        app = stack.wait_app(name, "Degraded")
        serving = condition(app["status"], "ServeApplicationHealthy")
        assert (serving["status"], serving["reason"]) == ("False", "HealthCheckFailed")
        assert serving["message"].startswith("Flaky: ")
        wait_for_warning(stack.cluster, NS, name, "HealthCheckFailed")
        flag.unlink()
        stack.wait_app(name, "Ready")


# -- in a browser --------------------------------------------------------------------------


def test_a_person_opens_an_apps_page_from_a_sign_in_link_and_calls_the_app(
    stack: BridgeStack, artifacts: Path
) -> None:
    """Headless Chromium: the page alone is refused (a navigation sends no header); the
    sign-in link (token in the fragment) leads to it signed in, with no token left in the
    address bar; the page's button calls the app through Hypha with the Hypha client the
    server itself serves, and shows the answer as text and as a picture."""
    token = stack.hypha.token("alice", "alice@example.org", WORKSPACE, "read")
    page_path = f"/{WORKSPACE}/apps/{TILES}-ui/"
    with browser.chromium() as chromium:
        page = chromium.new_page()
        refused = page.goto(f"{stack.hypha.url}{page_path}")
        assert refused is not None and refused.status == 403
        started = time.monotonic()
        page.goto(signin.link(stack.hypha.url, WORKSPACE, token, page_path))
        page.wait_for_url(f"{stack.hypha.url}{page_path}")
        assert token not in page.url
        assert page.title() == "Zarr Tile Statistics"
        page.click("#compute")
        page.wait_for_function(
            "!['', 'computing...'].includes(document.getElementById('status').textContent)",
            timeout=60_000,
        )
        first_answer = time.monotonic() - started
        assert page.text_content("#status") == "array 256 x 256, 16 tiles"
        assert page.eval_on_selector("#means", "c => [c.width, c.height]") == [4, 4]
        page.screenshot(path=artifacts / "zarr-tile-stats-page.png", full_page=True)
    (artifacts / "zarr-tile-stats-page.txt").write_text(
        f"sign-in link opened to first answer on the page: {first_answer:.2f} s\n"
    )


def test_a_page_on_another_origin_reads_a_dataset_file_with_a_range_request(
    stack: BridgeStack, tmp_path: Path
) -> None:
    """A page served from another origin fetches a byte range of a dataset file through
    Hypha with the user's token: the CORS preflight and the 206 answer let its script read
    the bytes and the Content-Range."""
    token = stack.hypha.token("alice", "alice@example.org", WORKSPACE, "read")
    url = f"{stack.hypha.url}/{WORKSPACE}/apps/{DATASET}-files/files/README.txt"
    (tmp_path / "index.html").write_text(
        "<!doctype html><title>waiting</title><script>"
        f"fetch({json.dumps(url)}, {{headers: {{Authorization: 'Bearer {token}', "
        "Range: 'bytes=0-3'}})"
        ".then(async (r) => { document.body.dataset.text = await r.text();"
        " document.title = `${r.status} ${r.headers.get('Content-Range')}`; })"
        ".catch((e) => { document.title = `failed: ${e}`; });</script>"
    )
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    other_origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serving = threading.Thread(target=other_origin.serve_forever, daemon=True)
    serving.start()
    try:
        with browser.chromium() as chromium:
            page = chromium.new_page()
            page.goto(f"http://127.0.0.1:{other_origin.server_address[1]}/index.html")
            page.wait_for_function("document.title !== 'waiting'", timeout=30_000)
            readme = (stack.workdir / "dataset" / "README.txt").read_bytes()
            assert page.title() == f"206 bytes 0-3/{len(readme)}"
            assert page.eval_on_selector("body", "b => b.dataset.text") == readme[:4].decode()
    finally:
        other_origin.shutdown()
        other_origin.server_close()
        serving.join(timeout=10)


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
            # Asked of both colors (one shutting down says so too), then the caller's error.
            with pytest.raises(Exception, match="unknown model") as unknown:
                await runner.infer(model="no-such-model", inputs={"input0": x})
            assert "no model runner color answered" not in str(unknown.value)
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
                await app.segment(np.zeros((8, 8), dtype=np.float32))
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

    failovers = metric(stack.bridge_metrics, "bioengine_bridge_failovers_total")
    try:
        done, failures = run(scenario())
    finally:
        stack.tritons["blue"].start()  # same ports: the next tests see both colors again
    assert failures == []
    assert done > 20
    assert metric(stack.bridge_metrics, "bioengine_bridge_failovers_total") > failovers


def test_loss_of_readiness_unregisters_and_recovery_registers(stack: BridgeStack) -> None:
    simulate_rayservice_status(stack.cluster, NS, APP, False, "ZeroServeEndpoints")
    wait_for(lambda: not run(stack.registered(APP)), "app unregistered after losing readiness", 30)
    simulate_rayservice_status(stack.cluster, NS, APP, True, "NonZeroServeEndpoints")
    run(stack.services_back([APP], timeout=30))


def test_hypha_restart_brings_services_back(stack: BridgeStack) -> None:
    stack.hypha.stop()
    stack.hypha.start()
    seconds = run(stack.services_back(stack.service_ids(), timeout=60))
    print(f"services back {seconds:.1f}s after Hypha answered again")


def test_bridge_restart_brings_services_back(stack: BridgeStack) -> None:
    stack.stop_bridge(kill=True)
    stack.start_bridge()
    seconds = run(stack.services_back(stack.service_ids(), timeout=60))
    print(f"services back {seconds:.1f}s after the bridge restarted")


class SilentServer:
    """Accepts HTTP connections and never answers: an app ingress that hangs."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # how accept() ends when close() shuts it
            while True:
                self.accepted.append(self.listener.accept()[0])

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()
        self.thread.join(timeout=5)


@contextlib.contextmanager
def restarted_bridge(
    stack: BridgeStack, *args: str, endpoints: dict[str, str] | None = None
) -> Iterator[None]:
    """The bridge restarted with ``args`` (and backends) for the block, then as before."""
    stack.stop_bridge()
    stack.start_bridge(args, endpoints)
    try:
        yield
    finally:
        stack.stop_bridge()
        stack.start_bridge()
        run(stack.services_back(stack.service_ids(), timeout=60))


def test_an_app_that_never_answers_delays_no_other_service(stack: BridgeStack) -> None:
    """With a discovery timeout far longer than the test may wait, the other services can
    only come up while the silent app's describe call is still pending if registrations do
    not wait for each other."""
    silent = SilentServer()
    app = {**resource("BioEngineApp", "silent", app_spec())}
    app["metadata"]["namespace"] = NS
    stack.cluster.apply([app])
    try:
        wait_for(lambda: stack.cluster.get(NS, "rayservice", "silent"), "RayService")
        simulate_rayservice_status(stack.cluster, NS, "silent", True, "NonZeroServeEndpoints")
        endpoint = {f"bioengineapp/{NS}/silent": f"http://127.0.0.1:{silent.port}/silent"}
        with restarted_bridge(stack, "--discovery-timeout=600", endpoints=endpoint):
            wait_for(lambda: silent.accepted, "the bridge asked the silent app")
            run(stack.services_back(stack.service_ids(), timeout=60))
            assert silent.accepted[0].fileno() != -1  # its describe call is still waiting
            assert not run(stack.registered("silent"))
    finally:
        silent.close()
        stack.cluster.kubectl("-n", NS, "delete", "bea", "silent", "--wait=false")


def test_large_reads_are_streamed_and_read_file_is_bounded(stack: BridgeStack) -> None:
    readme = b"HeLa cells, 2 channels.\n"  # 24 bytes, more than the limit set below

    async def scenario() -> None:
        alice = await client(stack, "alice")
        try:
            dataset = await alice.get_service(f"{WORKSPACE}/{DATASET}")
            with pytest.raises(Exception, match="stream_file"):
                await dataset.read_file("README.txt")
            assert await dataset.read_file("README.txt", offset=0, length=16) == readme[:16]
            chunks = [chunk async for chunk in await dataset.stream_file("README.txt")]
            assert b"".join(chunks) == readme
            tail = [chunk async for chunk in await dataset.stream_file("README.txt", offset=20)]
            assert b"".join(tail) == readme[20:]
        finally:
            await alice.disconnect()

    with restarted_bridge(stack, "--max-read-bytes=16"):
        run(stack.services_back(stack.service_ids(), timeout=60))
        run(scenario())
        # The HTTP route streams too, with no limit: a zarr chunk file passes whole.
        chunk = (stack.workdir / "dataset" / "hela.zarr" / "c" / "0" / "0").read_bytes()
        assert len(chunk) > 16
        token = stack.hypha.token("alice", "alice@example.org", WORKSPACE, "read")
        url = f"{stack.hypha.url}/{WORKSPACE}/apps/{DATASET}-files/files/hela.zarr/c/0/0"
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.read() == chunk


def test_bridge_metrics_count_services_and_calls(stack: BridgeStack) -> None:
    url = stack.bridge_metrics
    assert metric(url, "bioengine_bridge_services", kind="ModelRunner") == 1
    before = metric(url, "bioengine_bridge_calls_total", function="infer", result="ok")

    async def infer() -> None:
        alice = await client(stack, "alice")
        try:
            runner = await alice.get_service(f"{WORKSPACE}/{RUNNER}")
            await runner.infer(model="unet2d", inputs={"input0": np.ones((4, 4), np.float32)})
        finally:
            await alice.disconnect()

    run(infer())
    assert metric(url, "bioengine_bridge_calls_total", function="infer", result="ok") == before + 1
    assert metric(url, "bioengine_bridge_call_duration_seconds_count", function="infer") >= 1


def test_bridge_and_dataset_server_log_one_json_schema(stack: BridgeStack) -> None:
    bridge = json_log_records(stack.bridge_log)
    assert any(r["message"].startswith("registered ModelRunner") for r in bridge)
    access = [r for r in json_log_records(stack.workdir / "dataserver.log") if "status" in r]
    assert access and all({"method", "path", "user"} <= r.keys() for r in access)


def test_apiserver_and_etcd_restarts_under_the_operator_and_bridge(stack: BridgeStack) -> None:
    """After each restart a runner created then is reconciled, Ready and callable through
    Hypha, and the one deleted then leaves Hypha; the operator and bridge keep running."""
    result = chaos.control_plane_restarts(stack, apiservers=1, etcds=1)
    assert [r.component for r in result.recoveries] == ["etcd", "kube-apiserver"]
    assert not result.operator_restarted
    assert not result.bridge_restarted
    print(f"recovered after each restart: {result.recoveries}")


def test_deleting_a_resource_unregisters_its_service(stack: BridgeStack) -> None:
    stack.cluster.kubectl("-n", NS, "delete", "mr", RUNNER, "--wait=true", "--timeout=60s")

    wait_for(
        lambda: not run(stack.registered(RUNNER)), "runner service unregistered after deletion", 30
    )
