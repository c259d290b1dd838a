"""The BioEngine worker service and one Hypha workspace over two clusters, end to end.

Two local control planes ("east" and "west"), each with the operator, a Ray Serve and a
bridge offering its worker service, share one real Hypha server and workspace. A client
calls the worker exactly as BioEngine's command-line client does (``upload_app(files=)``,
``deploy_app(artifact_id=, ...)``, ``get_app_status(application_ids=, logs_tail=)``,
``stop_app(application_id=)``), and the apps it deploys become BioEngineApps, RayServices
and Serve applications. Pods are kwok's: each stack plays KubeRay and the kubelet for its
cluster (see ``bioengine_devtools.stack``); everything above the pod is real.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import register_logs
from hypha_rpc import connect_to_server
from test_worker_uploads import folder_files, with_manifest

from bioengine_devtools.stack import APPS_DIR, NS, WORKSPACE, BridgeStack
from bioengine_operator.local import servers

APP_FOLDER = APPS_DIR / "nucleus-segmentation"
ARTIFACT = f"{WORKSPACE}/nucleus-segmentation"
ADMIN, MEMBER = "alice", "carol"  # alice is the workers' admin; carol only reads
CLUSTERS = ("east", "west")


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, BridgeStack]]:
    root = tmp_path_factory.mktemp("worker")
    # 64 characters: Hypha refuses shorter root tokens that happen to contain "abc".
    hypha = servers.HyphaServer(root, "worker-test-jwt-secret", "r" * 64)
    hypha.start()
    stacks: dict[str, BridgeStack] = {}
    try:
        for name in CLUSTERS:
            stacks[name] = BridgeStack(
                root / name,
                examples=False,
                hypha=hypha,
                name=name,
                bridge_args=(
                    f"--cluster-name={name}",
                    f"--worker-namespace={NS}",
                    f"--worker-admins={ADMIN}",
                ),
            )
            (root / name).mkdir()
            stacks[name].start()
        with contextlib.ExitStack() as logs:
            for stack in stacks.values():
                logs.enter_context(register_logs(stack.log_tails))
            yield stacks
    finally:
        for stack in stacks.values():
            stack.stop()
        hypha.stop()


async def connect(stack: BridgeStack, user: str) -> Any:
    assert stack.hypha is not None
    token = stack.hypha.token(user, f"{user}@example.org", WORKSPACE, "read")
    config = {"server_url": stack.hypha.url, "token": token, "workspace": WORKSPACE}
    return await connect_to_server({**config, "method_timeout": 30})


async def worker_of(client: Any, cluster: str) -> Any:
    """The cluster's worker service, found by its plain id as the BioEngine client does."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return await client.get_service(f"{WORKSPACE}/bioengine-worker-{cluster}")
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def until(stack: BridgeStack, probe: Any, what: str, timeout: float = 300) -> Any:
    """Play KubeRay for ``stack`` until ``await probe()`` returns something true."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        await asyncio.to_thread(stack.sync_rayservices)
        try:
            last = await probe()
        except Exception as err:  # not there yet
            last = err
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(1)
    raise TimeoutError(f"{what}: not after {timeout}s (last: {last!r})")


async def segments_as(client: Any, service_id: str) -> Any:
    service = await client.get_service(f"{WORKSPACE}/{service_id}")
    return await service.stats()


def test_worker_lifecycle_upload_deploy_call_update_logs_stop(
    clusters: dict[str, BridgeStack],
) -> None:
    east = clusters["east"]

    async def scenario() -> None:
        alice, carol = await connect(east, ADMIN), await connect(east, MEMBER)
        worker = await worker_of(alice, "east")
        as_carol = await worker_of(carol, "east")
        files = folder_files(APP_FOLDER)

        # Only admins change apps; the refusal says why.
        with pytest.raises(Exception, match="only the worker's admin users may upload_app"):
            await as_carol.upload_app(files=files)
        bad = with_manifest(files, "name: x\nid: x\ndescription: x\nformat_version: 0.5.0\n")
        with pytest.raises(Exception, match=r"manifest\.yaml: format_version: is 0\.5\.0"):
            await worker.upload_app(files=bad)

        assert await worker.upload_app(files=files) == ARTIFACT
        listed = await worker.list_apps()
        assert listed[ARTIFACT]["versions"] == ["1.0.0"]
        assert listed[ARTIFACT]["manifest"]["entry"] == "segmenter:NucleusSegmenter"
        assert (await worker.get_app_manifest(ARTIFACT))["name"] == "Nucleus Segmentation"
        with pytest.raises(Exception, match="only the worker's admin users may deploy_app"):
            await as_carol.deploy_app(artifact_id=ARTIFACT, application_id="nuclei")

        deployed = await worker.deploy_app(
            artifact_id=ARTIFACT,
            application_id="nuclei",
            disable_gpu=True,
            hypha_token="not-stored",
            application_kwargs={"NucleusSegmenter": {"default_sigma": 1.5}},
        )
        assert deployed == "nuclei"
        body = east.cluster.get(NS, "bea", "nuclei")
        assert body["spec"]["classes"]["NucleusSegmenter"]["initKwargs"] == {"default_sigma": 1.5}
        assert "not-stored" not in str(body)

        stats = await until(east, lambda: segments_as(alice, "nuclei"), "nuclei serving")
        assert stats["default_sigma"] == 1.5
        service = await alice.get_service(f"{WORKSPACE}/nuclei")
        image = np.zeros((64, 64), dtype=np.float32)
        image[10:20, 10:20] = image[40:52, 40:52] = 1.0
        assert (await service.segment(image=image))["count"] == 2

        status = (await worker.get_app_status(application_ids=["nuclei"], logs_tail=50))["nuclei"]
        assert (status["status"], status["artifact_id"], status["version"]) == (
            "RUNNING",
            ARTIFACT,
            "1.0.0",
        )
        deployment = status["deployments"]["NucleusSegmenter"]
        assert deployment["replica_states"] == {"RUNNING": 1}
        (replica_logs,) = deployment["logs"].values()
        assert "nucleus segmentation smoke test passed" in replica_logs["stderr"]
        # carol reads the state, not the logs or who may use the app.
        seen = (await as_carol.get_app_status(application_ids=["nuclei"]))["nuclei"]
        assert seen["status"] == "RUNNING" and "logs" not in seen["deployments"]["NucleusSegmenter"]
        assert "authorized_users" not in seen

        # A new version (new code: another default sigma), deployed onto the same id.
        manifest = (APP_FOLDER / "manifest.yaml").read_text()
        code = (APP_FOLDER / "segmenter.py").read_text()
        new_code = code.replace("default_sigma: float = 2.0", "default_sigma: float = 3.0")
        newer = [
            {**f, "content": new_code} if f["name"] == "segmenter.py" else f
            for f in with_manifest(files, manifest.replace("version: 1.0.0", "version: 1.1.0"))
        ]
        assert await worker.upload_app(files=newer) == ARTIFACT
        assert (await worker.list_apps())[ARTIFACT]["versions"] == ["1.0.0", "1.1.0"]
        await worker.deploy_app(artifact_id=ARTIFACT, application_id="nuclei", version="1.1.0")

        async def updated() -> bool:
            return bool((await segments_as(alice, "nuclei"))["default_sigma"] == 3.0)

        await until(east, updated, "version 1.1.0 serving")
        status = (await worker.get_app_status(application_ids=["nuclei"]))["nuclei"]
        assert status["version"] == "1.1.0"

        with pytest.raises(Exception, match="runs as nuclei: stop_app them first"):
            await worker.delete_app(ARTIFACT)
        with pytest.raises(Exception, match="only the worker's admin users may stop_app"):
            await as_carol.stop_app(application_id="nuclei")
        await worker.stop_app(application_id="nuclei")
        gone = (await worker.get_app_status(application_ids=["nuclei"]))["nuclei"]
        assert gone["status"] == "NOT_RUNNING" and "deploy_app" in gone["message"]

        async def unregistered() -> bool:
            with contextlib.suppress(Exception):
                await alice.get_service(f"{WORKSPACE}/nuclei")
                return False
            return True

        await until(east, unregistered, "nuclei's service removed")
        await worker.delete_app(ARTIFACT)
        assert ARTIFACT not in await worker.list_apps()
        for client in (alice, carol):
            await client.disconnect()

    run(scenario())


def test_one_workspace_over_two_clusters_survives_losing_one(
    clusters: dict[str, BridgeStack],
) -> None:
    """The same app from both clusters under one service id. A client keeps calling it by
    its plain id, holding the proxy Hypha gave it and asking again only when a call fails;
    while it holds east's instance, east's bridge is killed and its Ray stopped: the held
    proxy's next call fails, the client asks Hypha again, and west answers from then on."""
    app, plain = "nuclei-dr", f"{WORKSPACE}/nuclei-dr"
    counts: dict[str, Any] = {"failed": 0, "served_by": {}}
    held: dict[str, Any] = {}

    def cluster_of(service: Any) -> str:
        return str(service.id.split(":")[0].removeprefix(f"{WORKSPACE}/bioengine-bridge-"))

    async def scenario() -> None:
        alice = await connect(clusters["east"], ADMIN)
        workers = {name: await worker_of(alice, name) for name in CLUSTERS}
        services = await alice.list_services(WORKSPACE)
        ids = {s["id"].split(":")[-1] for s in services}
        assert {"bioengine-worker-east", "bioengine-worker-west"} <= ids
        for worker in workers.values():
            await worker.upload_app(files=folder_files(APP_FOLDER))
            await worker.deploy_app(artifact_id=ARTIFACT, application_id=app)
        for name in CLUSTERS:
            await until(
                clusters[name],
                lambda n=name: alice.get_service(f"{WORKSPACE}/bioengine-bridge-{n}:{app}"),
                f"{app} on {name}",
            )
        # Both instances answer, each with its load; Hypha picks by load.
        for name in CLUSTERS:
            one = await alice.get_service(f"{WORKSPACE}/bioengine-bridge-{name}:{app}")
            assert (await one.stats())["default_sigma"] == 2.0 and await one.get_load() == 0.0
        chosen = await alice.get_service(plain, {"mode": "select:min:get_load"})
        assert chosen.id.split(":")[-1] == app

        async def call(index: int) -> None:
            for _ in range(5):
                if "service" not in held:
                    held["service"] = await alice.get_service(plain, {"mode": "random"})
                try:
                    await held["service"].stats()
                except Exception:
                    counts["failed"] += 1  # a dropped instance: ask Hypha again
                    del held["service"]
                    continue
                counts["served_by"].setdefault(cluster_of(held["service"]), []).append(index)
                return
            raise AssertionError(f"call {index}: no answer in 5 attempts")

        lost_at = 21
        for index in range(lost_at - 1):
            await call(index)
        while cluster_of(held["service"]) != "east":  # the client happens to hold east's
            held["service"] = await alice.get_service(plain, {"mode": "random"})
        await call(lost_at - 1)
        east = clusters["east"]
        await asyncio.to_thread(east.stop_bridge, True)  # SIGKILL
        await asyncio.to_thread(east.ray.stop)
        lost = time.monotonic()
        await call(lost_at)
        counts["recovered_s"] = time.monotonic() - lost
        for index in range(lost_at + 1, 60):
            await call(index)
        await alice.disconnect()
        assert max(counts["served_by"]["east"]) == lost_at - 1  # and nothing after the loss
        assert [i for i in counts["served_by"]["west"] if i >= lost_at] == list(range(lost_at, 60))
        # Only the held proxy of the lost instance failed; every call was answered.
        assert counts["failed"] >= 1

    run(scenario())
    served = {name: len(calls) for name, calls in counts["served_by"].items()}
    print(
        f"\ntwo-cluster failover: 60 calls by plain id, east lost after call 21; served by "
        f"{served}; {counts['failed']} failed call(s), each answered on the retry; first "
        f"answer {counts['recovered_s']:.2f} s after the kill"
    )
