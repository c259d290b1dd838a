"""``bioengine up``: the examples and apps/ on this machine, without Kubernetes.

Everything is real: the ``bioengine`` command as a user runs it, a real Hypha (embedded, or
a remote one given by URL and token), real Ray Serve (in a loopback-only network
namespace) running the apps' unmodified folders, a real tritonserver and the dataset
server, all called through Hypha by ``examples/client.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import yaml
from helpers import absent_from_ray, wait_for
from hypha_rpc import connect_to_server

from bioengine_devtools import browser, tools
from bioengine_devtools.stack import eventually
from bioengine_operator import appfolder
from bioengine_operator.local import procs, servers, supervisor

REPO = tools.REPO_ROOT
BIOENGINE = [sys.executable, "-m", "bioengine_operator.user_cli"]
PIP_APP = REPO / "tests" / "apps" / "pip-app"
RUNTIME_VERSION = importlib.import_module("bioengine").__version__  # on pytest's pythonpath
EXAMPLE_APPS = [REPO / "apps" / "nucleus-segmentation", REPO / "apps" / "probability-segmentation"]
EXAMPLES = [
    "nucleus-segmentation",
    "probability-segmentation",
    "zarr-tile-stats",
    "unet-runner",
    "cell-images",
]


def _module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


client = _module("bioengine_example_client", REPO / "examples" / "client.py")
sample_data = sys.modules["sample_data"]


def bioengine(
    *args: str, state: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BIOENGINE, *args, f"--state-dir={state}"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def up_args(data: Path, *paths: Path) -> list[str]:
    return ["up", f"--envs-dir={REPO}", f"--volume=cell-images={data}", *map(str, paths)]


def status(state: Path) -> dict[str, Any]:
    answer = bioengine("status", "--json", state=state)
    assert answer.returncode == 0, answer.stderr
    return dict(json.loads(answer.stdout))


def rows(state: Path) -> dict[str, dict[str, str]]:
    return {row["name"]: row for row in status(state)["rows"]}


def user_env(state: Path, user: str) -> dict[str, str]:
    answer = bioengine("env", f"--user={user}", state=state)
    assert answer.returncode == 0, answer.stderr
    lines = [line.removeprefix("export ").split("=", 1) for line in answer.stdout.splitlines()]
    return dict(lines)


def processes(pids: list[int]) -> list[tuple[int, str]]:
    """Each PID with its start time, so that a PID reused later is not mistaken for it."""
    found = []
    for pid in pids:
        try:
            found.append((pid, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]))
        except (OSError, IndexError):
            continue  # gone already
    return found


def stopped(before: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Those of ``before`` still alive (empty when all are gone)."""
    return [p for p in processes([pid for pid, _ in before]) if p in before and procs.alive(p[0])]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cell-images")
    sample_data.write(folder)
    return folder


# -- bad input -----------------------------------------------------------------------------


BAD_INPUTS = {
    "unknown kind": (
        "kind.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
        "kind: 'Deployment' cannot run here",
    ),
    "schema violation": (
        "runner.yaml",
        "apiVersion: bioengine.bioimage.io/v1alpha1\nkind: ModelRunner\n"
        "metadata: {name: r}\nspec:\n  modelRepository: {configMap: {name: m}}\n"
        "  models: [a]\n  replicas: lots\n",
        "ModelRunner r: spec.replicas:",
    ),
    "invalid manifest": (
        "app/manifest.yaml",
        "name: Old\nid: old\ndescription: d\ntype: ray-serve\nformat_version: 0.5.0\n"
        "entry: main:App\n",
        "manifest.yaml: format_version",
    ),
    "missing reference": (
        "runner.yaml",
        "apiVersion: bioengine.bioimage.io/v1alpha1\nkind: ModelRunner\n"
        "metadata: {name: r}\nspec:\n  modelRepository: {configMap: {name: nowhere}}\n"
        "  models: [a]\n",
        "spec.modelRepository.configMap: ConfigMap nowhere is not among the inputs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_naming_the_file_and_field_and_starts_nothing(
    case: str, tmp_path: Path
) -> None:
    relative, text, expected = BAD_INPUTS[case]
    bad = tmp_path / "inputs" / relative
    bad.parent.mkdir(parents=True)
    bad.write_text(text)
    if relative.endswith("manifest.yaml"):
        (bad.parent / "main.py").write_text("class App: ...\n")
    state = tmp_path / "state"
    # With a good input beside it: one bad file stops the whole command.
    answer = bioengine(
        *up_args(
            tmp_path,
            REPO / "examples" / "modelrunner.yaml",
            bad.parent if relative.endswith("manifest.yaml") else bad,
        ),
        state=state,
    )
    assert answer.returncode == 2, answer.stderr
    assert str(bad) in answer.stderr and expected in answer.stderr, answer.stderr
    assert not state.exists()  # no state folder: no supervisor, no process was started


def test_a_name_defined_twice_or_a_claim_without_a_folder_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    twice = bioengine(
        *up_args(tmp_path, REPO / "examples", REPO / "apps" / "zarr-tile-stats"), state=state
    )
    assert twice.returncode == 2
    # The app's code ConfigMap comes first: the same app from its folder and its rendering.
    assert "ConfigMap zarr-tile-stats-code is also defined in" in twice.stderr, twice.stderr
    assert "examples/bioengineapp.yaml" in twice.stderr
    no_volume = bioengine("up", str(REPO / "examples"), state=state)
    assert no_volume.returncode == 2
    assert "bioenginedataset.yaml: BioEngineDataset cell-images: spec.source.pvc" in (
        no_volume.stderr
    )
    assert "--volume cell-images=PATH" in no_volume.stderr
    assert not state.exists()


# -- a remote Hypha, and Ctrl-C ----------------------------------------------------------


def test_remote_hypha_serves_the_same_and_ctrl_c_leaves_no_process(
    tmp_path: Path, data: Path
) -> None:
    """A Hypha server of someone else's, given by URL and token: the services appear there
    and answer as with the embedded one. Then Ctrl-C (SIGINT to the foreground command's
    process group) stops everything: every process that ran is gone."""
    hypha = servers.HyphaServer(tmp_path, secrets.token_urlsafe(32), secrets.token_urlsafe(48))
    hypha.start()
    try:
        workspace = "ws-user-lab-bridge"
        token_file = tmp_path / "token"
        token_file.write_text(hypha.token("lab-bridge", "bridge@example.org"))
        state = tmp_path / "state"
        log = tmp_path / "up.log"
        up = procs.spawn(
            [
                *BIOENGINE,
                *up_args(data, REPO / "examples"),
                f"--server-url={hypha.url}",
                f"--workspace={workspace}",
                f"--token-file={token_file}",
                f"--state-dir={state}",
            ],
            log,
            cwd=REPO,
        )
        try:
            procs.wait_for(
                lambda: "running: Ctrl-C" in log.read_text(), "up", 600, proc=up, log=log
            )
            assert {r["state"] for r in rows(state).values()} == {"Ready"}
            alice = hypha.token("alice", "alice@example.org", workspace, "read")
            found = asyncio.run(_calls_through(hypha.url, workspace, alice))
            assert found["tiles"]["shape"] == [512, 512]
            assert {e["name"] for e in found["files"]} == {"README.txt", "hela.zarr"}
            np.testing.assert_allclose(found["output"], 1 / (1 + np.exp(-found["input"])))
            pids = processes([up.pid, *procs.descendants(up.pid)])
            assert len(pids) > 10  # supervisor, tritonserver, dataset server, Ray's many
        finally:
            os.killpg(up.pid, signal.SIGINT)
            up.wait(timeout=180)
        assert stopped(pids) == []
        assert supervisor.running_pid(state) is None
    finally:
        procs.stop_group(up.pid)
        hypha.stop()


async def _calls_through(url: str, workspace: str, token: str) -> dict[str, Any]:
    server = await connect_to_server({"server_url": url, "workspace": workspace, "token": token})
    try:
        tiles = await server.get_service(f"{workspace}/zarr-tile-stats")
        dataset = await server.get_service(f"{workspace}/cell-images")
        runner = await server.get_service(f"{workspace}/unet-runner")
        probe = np.linspace(-3, 3, 6, dtype=np.float32).reshape(2, 3)
        return {
            "tiles": await tiles.tile_stats(array_path="hela.zarr", tile_size=256),
            "files": await dataset.list_files(path=""),
            "input": probe,
            "output": (await runner.infer(model="unet2d", inputs={"input0": probe}))["output0"],
        }
    finally:
        await server.disconnect()


def test_a_killed_supervisor_takes_every_process_with_it(tmp_path: Path, data: Path) -> None:
    """Even SIGKILL (no cleanup code runs): what it started dies with it, Ray included."""
    state = tmp_path / "state"
    answer = bioengine(*up_args(data, REPO / "examples"), "--detach", state=state)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    pid = supervisor.running_pid(state)
    assert pid is not None
    pids = processes([pid, *procs.descendants(pid)])
    assert len(pids) > 10
    os.kill(pid, signal.SIGKILL)
    procs.wait_for(lambda: not stopped(pids), "every process gone", 60)
    assert bioengine("down", state=state).stdout.strip() == "nothing runs"


# -- the demo's stack: the examples and apps/, embedded Hypha --------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Iterator[Path]:
    state = tmp_path_factory.mktemp("state")
    answer = bioengine(*up_args(data, REPO / "examples", *EXAMPLE_APPS), "--detach", state=state)
    pid = supervisor.running_pid(state)
    try:
        assert answer.returncode == 0, answer.stdout + answer.stderr
        yield state
    finally:
        pids = processes([pid, *procs.descendants(pid)]) if pid else []
        assert bioengine("down", state=state).returncode == 0
        assert stopped(pids) == []


def test_the_example_client_gets_correct_answers_from_every_service(
    stack: Path, artifacts: Path
) -> None:
    """What ``make demo`` prints, checked: the nuclei match the pipeline run in-process, the
    runner's output is the model's formula, the tiles are the array's statistics."""
    env = user_env(stack, "alice@example.org")
    found = asyncio.run(
        client.run(env["HYPHA_SERVER_URL"], env["HYPHA_WORKSPACE"], env["HYPHA_TOKEN"])
    )
    nuclei = _module("nuclei", REPO / "apps" / "nucleus-segmentation" / "nuclei.py")
    image = sample_data.nuclei_image()
    labels, regions = nuclei.segment_nuclei(image, sigma=2.0, min_distance=5)
    np.testing.assert_array_equal(found["nucleus-segmentation"]["labels"], labels)
    assert found["nucleus-segmentation"]["count"] == len(regions) == len(sample_data.CENTERS)
    runner = found["unet-runner"]
    np.testing.assert_allclose(runner["output"], 1 / (1 + np.exp(-runner["input"])), rtol=1e-6)
    composed = found["probability-segmentation"]
    np.testing.assert_allclose(composed["probability"], 1 / (1 + np.exp(-image)), rtol=1e-6)
    assert composed["count"] == len(sample_data.CENTERS)
    tiles = found["zarr-tile-stats"]
    assert len(tiles["tiles"]) == 16
    corner = image[:128, :128].astype(np.float64)
    assert tiles["tiles"][0]["mean"] == pytest.approx(corner.mean())
    assert {e["name"] for e in found["cell-images"]} == {"README.txt", "hela.zarr"}
    assert set(found["services"]) >= {
        "nucleus-segmentation",
        "probability-segmentation",
        "zarr-tile-stats",
        "zarr-tile-stats-ui",
        "unet-runner",
        "cell-images",
        "cell-images-files",
    }
    printed = client.report(found)
    assert f"{len(sample_data.CENTERS)} nuclei in the 512x512 sample" in printed
    # The picture `make demo` writes: the image beside its labels, as a PNG a person opens.
    written = client.png(client.picture(image, found["nucleus-segmentation"]["labels"]))
    (artifacts / "demo-segmentation.png").write_bytes(written)
    rgb = _decoded_png(written)
    assert rgb.shape == (512, 1024, 3)
    grey, coloured = rgb[:, :512], rgb[:, 512:]
    assert (grey[..., 0] == grey[..., 2]).all() and grey.min() == 0 and grey.max() == 255
    assert np.corrcoef(grey[..., 0].ravel(), image.ravel())[0, 1] > 0.99
    assert ((coloured.max(axis=2) > 0) == (labels > 0)).all()  # colour exactly on nuclei


def _decoded_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB PNG with filter 0 rows (what the client writes) as an array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = {}, 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        chunks[kind] = chunks.get(kind, b"") + data[offset + 8 : offset + 8 + length]
        offset += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    rows = zlib.decompress(chunks[b"IDAT"])
    stride = 1 + 3 * width
    assert all(rows[y * stride] == 0 for y in range(height))
    pixels = [rows[y * stride + 1 : (y + 1) * stride] for y in range(height)]
    return np.frombuffer(b"".join(pixels), dtype=np.uint8).reshape(height, width, 3)


def test_status_shows_services_and_pages_and_logs_show_each_backend(stack: Path) -> None:
    found = rows(stack)
    workspace = status(stack)["workspace"]
    for name in EXAMPLES:
        assert found[name]["state"] == "Ready", found[name]
    assert found["unet-runner"]["service"] == f"{workspace}/unet-runner"
    assert found["zarr-tile-stats"]["page"].endswith(f"/{workspace}/apps/zarr-tile-stats-ui/")
    assert status(stack)["memory"] > 2**29  # Ray, Triton, Hypha: far more than the supervisor
    runner_log = bioengine("logs", "unet-runner", state=stack)
    assert "unet2d" in runner_log.stdout, runner_log.stdout + runner_log.stderr
    app_log = bioengine("logs", "nucleus-segmentation", state=stack)
    assert "nucleus segmentation smoke test passed" in app_log.stdout, app_log.stderr
    unknown = bioengine("logs", "nothing-here", state=stack)
    assert unknown.returncode == 2 and "nothing-here" in unknown.stderr


def test_the_page_link_opens_the_apps_page_signed_in_in_a_browser(
    stack: Path, artifacts: Path
) -> None:
    """``bioengine page`` prints a sign-in link for a user; Chromium opens it, lands on the
    app's page with no token in the address bar, and the page answers from the app."""
    answer = bioengine("page", "zarr-tile-stats", "--user=alice@example.org", state=stack)
    assert answer.returncode == 0, answer.stderr
    link = answer.stdout.strip()
    page_url = rows(stack)["zarr-tile-stats"]["page"]
    assert link.startswith(page_url.split("/apps/")[0] + "/apps/bioengine-signin/#token=")
    with browser.chromium() as chromium:
        page = chromium.new_page()
        page.goto(link)
        page.wait_for_url(page_url)
        assert "token" not in page.url
        page.click("#compute")
        page.wait_for_function(
            "!['', 'computing...'].includes(document.getElementById('status').textContent)",
            timeout=60_000,
        )
        assert page.text_content("#status") == "array 512 x 512, 64 tiles"
        page.screenshot(path=artifacts / "bioengine-up-zarr-tile-stats-page.png", full_page=True)
    unknown = bioengine("page", "nothing-here", "--user=alice@example.org", state=stack)
    assert unknown.returncode == 2 and "nothing-here" in unknown.stderr


def test_an_edited_app_is_redeployed_alone(stack: Path, tmp_path: Path) -> None:
    """``up`` again with an app's code changed: that app serves the new code; another app's
    replica keeps running (its call counter survives)."""
    env = user_env(stack, "alice@example.org")

    async def calls() -> int:
        return int((await _call(env, "nucleus-segmentation", "stats"))["calls"])

    asyncio.run(_call(env, "nucleus-segmentation", "segment", image=sample_data.nuclei_image()))
    before = asyncio.run(calls())
    assert before >= 1
    edited = tmp_path / "probability-segmentation"
    shutil.copytree(REPO / "apps" / "probability-segmentation", edited)
    entry = edited / "probability_entry.py"
    entry.write_text(
        entry.read_text().replace(
            "        return await self.model.describe()",
            '        return {**(await self.model.describe()), "edited": True}',
        )
    )
    answer = bioengine(*up_args(stack, edited), state=stack)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert "probability-segmentation changed" in answer.stdout
    assert asyncio.run(_call(env, "probability-segmentation", "model_info"))["edited"] is True
    assert asyncio.run(calls()) == before


def test_a_changed_dataset_updates_the_apps_that_mount_it(
    stack: Path, data: Path, tmp_path: Path
) -> None:
    """The dataset's server restarts (a new address), so the app reading it is redeployed
    too, although only the dataset was given; both answer afterwards."""
    changed = tmp_path / "bioenginedataset.yaml"
    text = (REPO / "examples" / "bioenginedataset.yaml").read_text()
    changed.write_text(text.replace("license: CC-BY-4.0", "license: CC0-1.0"))
    refused = bioengine(*up_args(tmp_path / "no-such-folder", changed), state=stack)
    assert refused.returncode == 2 and "is not a folder" in refused.stderr, refused.stderr
    answer = bioengine(*up_args(data, changed), state=stack)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert "BioEngineDataset cell-images changed" in answer.stdout
    assert "BioEngineApp zarr-tile-stats changed" in answer.stdout
    assert "nucleus-segmentation changed" not in answer.stdout  # it mounts no dataset
    env = user_env(stack, "alice@example.org")
    tiles = asyncio.run(_call(env, "zarr-tile-stats", "tile_stats", array_path="hela.zarr"))
    assert tiles["shape"] == [512, 512]
    manifest = asyncio.run(_call(env, "cell-images", "get_manifest"))
    assert manifest["license"] == "CC0-1.0"


def test_a_failing_app_is_failed_with_its_error_and_the_others_keep_serving(
    stack: Path, data: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-app"
    broken.mkdir()
    (broken / "manifest.yaml").write_text(
        "name: Broken\nid: broken-app\ndescription: imports what is not there\n"
        "type: ray-serve\nformat_version: 0.6.0\nentry: broken:Broken\n"
    )
    (broken / "broken.py").write_text("import bioengine_no_such_module  # noqa\n")
    answer = bioengine(*up_args(data, broken), state=stack)
    assert answer.returncode == 1, answer.stdout + answer.stderr  # part of it failed
    assert "failed: broken-app" in answer.stderr
    found = rows(stack)
    assert found["broken-app"]["state"] == "Failed"
    assert "bioengine_no_such_module" in found["broken-app"]["message"]
    assert "bioengine_no_such_module" in answer.stdout  # the summary says why
    assert found["nucleus-segmentation"]["state"] == "Ready"
    env = user_env(stack, "alice@example.org")
    image = sample_data.nuclei_image()
    result = asyncio.run(_call(env, "nucleus-segmentation", "segment", image=image))
    assert result["count"] == len(sample_data.CENTERS)


def test_pip_requirements_are_installed_per_app_and_one_pip_refuses_fails_quoting_pip(
    stack: Path, data: Path, tmp_path: Path
) -> None:
    """An app in the upstream style needing ``tabulate``, which the Ray environment lacks, is
    installed for it (Ray's namespace stays loopback-only: a proxy inside reaches only the
    package index); an app asking for a version that does not exist ends ``Failed`` with
    pip's own words, and ``up --detach`` says so in its exit status."""
    assert absent_from_ray("tabulate")
    bad = tmp_path / "bad-pip-app"
    shutil.copytree(PIP_APP, bad)
    manifest = (bad / "manifest.yaml").read_text().replace("id: pip-app", "id: bad-pip-app")
    (bad / "manifest.yaml").write_text(manifest)
    code = (bad / "pip_app.py").read_text().replace("tabulate==0.9.0", "tabulate==0.0.1")
    (bad / "pip_app.py").write_text(code)
    answer = bioengine(*up_args(data, PIP_APP, bad), "--detach", state=stack)
    assert answer.returncode == 1, answer.stdout + answer.stderr
    found = rows(stack)
    assert found["pip-app"]["state"] == "Ready", found["pip-app"]
    assert found["bad-pip-app"]["state"] == "Failed"
    assert found["bad-pip-app"]["message"] == (
        "DeployFailed: PipApp: pip could not install the app's requirements: "
        "No matching distribution found for tabulate==0.0.1"
    )
    env = user_env(stack, "alice@example.org")
    table = asyncio.run(_call(env, "pip-app", "table", rows=[["a", 1], ["bc", 22]]))
    assert table == {
        "table": "a    1\nbc  22",
        "tabulate": "0.9.0",
        "bioengine": RUNTIME_VERSION,
    }


def test_a_failing_health_check_is_degraded_with_its_message_then_ready_again(
    stack: Path, data: Path, tmp_path: Path
) -> None:
    """The health check fails while a flag file exists (and so do the replicas Serve starts
    in place of the failing one); ``bioengine status`` follows Serve without an ``up``."""
    flag = tmp_path / "unwell"
    rendered = appfolder.render(
        REPO / "tests" / "apps" / "flaky-app", overrides={"envVars": {"FLAKY_FLAG": str(flag)}}
    )
    resources_file = tmp_path / "flaky.yaml"
    resources_file.write_text(yaml.safe_dump_all(rendered.objects))
    answer = bioengine(*up_args(data, resources_file), "--detach", state=stack)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert rows(stack)["flaky-app"]["state"] == "Ready"
    flag.touch()
    wait_for(lambda: rows(stack)["flaky-app"]["state"] == "Degraded", "Degraded", timeout=120)
    assert rows(stack)["flaky-app"]["message"].startswith("HealthCheckFailed: Flaky: ")
    flag.unlink()
    wait_for(lambda: rows(stack)["flaky-app"]["state"] == "Ready", "Ready again", timeout=120)


def test_an_app_reads_its_dataset_over_http_as_the_user_who_calls_it(
    stack: Path, data: Path, tmp_path: Path
) -> None:
    """``bioengine.datasets`` over HTTP on one machine: the dataset server is reached from
    Ray's namespace at its Service's name, with the caller's token (alice is in the
    dataset's list; carol, whom the app admits, is not)."""
    rendered = appfolder.render(
        REPO / "tests" / "apps" / "data-app",
        overrides={"datasets": ["cell-images"], "authorizedUsers": ["*"]},
    )
    resources_file = tmp_path / "data-app.yaml"
    resources_file.write_text(yaml.safe_dump_all(rendered.objects))
    dataset = REPO / "examples" / "bioenginedataset.yaml"  # unchanged: it keeps running
    answer = bioengine(*up_args(data, dataset, resources_file), "--detach", state=stack)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    alice = user_env(stack, "alice@example.org")
    read = asyncio.run(_call(alice, "data-app", "read", dataset="cell-images", path="README.txt"))
    readme = (data / "README.txt").read_bytes()
    assert read["top"] == ["README.txt", "hela.zarr/"]
    assert read["sha256"] == hashlib.sha256(readme).hexdigest()
    summed = asyncio.run(
        _call(alice, "data-app", "array_sum", dataset="cell-images", array_path="hela.zarr")
    )
    assert summed == {
        "shape": list(sample_data.SHAPE),
        "sum": pytest.approx(float(sample_data.nuclei_image().astype(np.float64).sum())),
    }
    carol = user_env(stack, "carol@example.org")
    with pytest.raises(Exception, match="dataset server answered 403"):
        asyncio.run(_call(carol, "data-app", "read", dataset="cell-images", path="README.txt"))


def test_the_worker_service_deploys_apps_as_bioengines_own_clients_do(
    tmp_path: Path, data: Path
) -> None:
    """``bioengine-worker`` on one machine, driven as BioEngine's client drives a worker:
    ``upload_app`` of the files ``bioengine.utils.create_file_list_from_directory`` lists,
    ``deploy_app``, ``get_app_status`` (deployments and logs from Ray's dashboard),
    ``stop_app``, ``delete_app``; only ``--worker-admins`` may change apps."""
    state = tmp_path / "state"
    dataset = REPO / "examples" / "bioenginedataset.yaml"
    admins = "--worker-admins=alice@example.org"
    answer = bioengine(*up_args(data, dataset), "--detach", admins, state=state)
    pid = supervisor.running_pid(state)
    try:
        assert answer.returncode == 0, answer.stdout + answer.stderr
        alice, carol = user_env(state, "alice@example.org"), user_env(state, "carol@example.org")
        asyncio.run(_worker_lifecycle(alice, carol))
        assert "nuclei" not in rows(state)  # stopped: gone from the stack too
    finally:
        pids = processes([pid, *procs.descendants(pid)]) if pid else []
        assert bioengine("down", state=state).returncode == 0
        assert stopped(pids) == []


async def _worker_lifecycle(alice_env: dict[str, str], carol_env: dict[str, str]) -> None:
    workspace = alice_env["HYPHA_WORKSPACE"]
    alice, carol = await _connect(alice_env), await _connect(carol_env)
    try:
        worker = await alice.get_service(f"{workspace}/bioengine-worker")
        as_carol = await carol.get_service(f"{workspace}/bioengine-worker")
        utils = importlib.import_module("bioengine.utils")  # upstream's helper, as its CLI uses
        files = utils.create_file_list_from_directory(EXAMPLE_APPS[0])
        with pytest.raises(Exception, match="only the worker's admin users may upload_app"):
            await as_carol.upload_app(files=files)
        artifact = await worker.upload_app(files=files)
        assert artifact == f"{workspace}/nucleus-segmentation"
        assert (await worker.list_apps())[artifact]["versions"] == ["1.0.0"]
        assert await worker.deploy_app(artifact_id=artifact, application_id="nuclei") == "nuclei"

        async def running() -> dict[str, Any]:
            found = await worker.get_app_status(application_ids=["nuclei"], logs_tail=50)
            assert found["nuclei"]["status"] == "RUNNING", found["nuclei"]
            return dict(found["nuclei"])

        status = (await eventually(running, "nuclei RUNNING", 300, 1.0))[0]
        assert (status["artifact_id"], status["version"]) == (artifact, "1.0.0")
        deployment = status["deployments"]["NucleusSegmenter"]
        assert deployment["replica_states"] == {"RUNNING": 1}
        (replica_logs,) = deployment["logs"].values()
        assert "nucleus segmentation smoke test passed" in replica_logs["stderr"]

        async def segments() -> Any:
            service = await alice.get_service(f"{workspace}/nuclei")
            return await service.segment(image=sample_data.nuclei_image())

        result = (await eventually(segments, "nuclei registered", 120, 1.0))[0]
        assert result["count"] == len(sample_data.CENTERS)
        with pytest.raises(Exception, match="only the worker's admin users may stop_app"):
            await as_carol.stop_app(application_id="nuclei")
        await worker.stop_app(application_id="nuclei")
        gone = (await worker.get_app_status(application_ids=["nuclei"]))["nuclei"]
        assert gone["status"] == "NOT_RUNNING"
        await worker.delete_app(artifact)
        assert artifact not in await worker.list_apps()
    finally:
        await alice.disconnect()
        await carol.disconnect()


async def _connect(env: dict[str, str]) -> Any:
    return await connect_to_server(
        {
            "server_url": env["HYPHA_SERVER_URL"],
            "workspace": env["HYPHA_WORKSPACE"],
            "token": env["HYPHA_TOKEN"],
        }
    )


async def _call(env: dict[str, str], service: str, method: str, **kwargs: Any) -> Any:
    server = await _connect(env)
    try:
        found = await server.get_service(f"{env['HYPHA_WORKSPACE']}/{service}")
        return await getattr(found, method)(**kwargs)
    finally:
        await server.disconnect()


def test_a_ray_head_that_crashes_while_starting_is_started_once_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ray start` aborted once on a loaded machine (SIGABRT from gRPC's poller): a head
    that exits while starting is started again in a fresh namespace; a second crash, or a
    head that never answers, is the error. (The real start is what the tests above run;
    this replaces it to crash on demand.)"""
    outcomes: list[str] = []

    def start(*_: object) -> None:  # as procs.wait_for fails
        outcome = outcomes.pop(0)
        if "exited" in outcome:
            raise RuntimeError(outcome)
        if outcome:
            raise TimeoutError(outcome)

    monkeypatch.setattr(servers.RayServe, "_start", start)
    crashed = "ray dashboard: process exited with -6"
    outcomes[:] = [crashed, ""]
    servers.RayServe(tmp_path).start([])
    assert outcomes == []
    outcomes[:] = [crashed, crashed]
    with pytest.raises(RuntimeError, match="exited"):
        servers.RayServe(tmp_path).start([])
    outcomes[:] = ["ray dashboard: not ready after 120s", ""]
    with pytest.raises(TimeoutError, match="not ready"):
        servers.RayServe(tmp_path).start([])
    assert outcomes == [""]
