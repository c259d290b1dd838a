"""The reconcile loop's work queue and bookkeeping, without a cluster.

``kube.existing`` and the reconcilers are replaced here (a seam, named as such); the loop
runs on a real asyncio event loop and a real thread pool. The end-to-end tests run it
against the real API server.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from bioengine_devtools.stack import eventually
from bioengine_operator import kube
from bioengine_operator.controllers import loop, outcome
from bioengine_operator.controllers.workqueue import WorkQueue

# Waiting for the loop: how long at most (far above the milliseconds it takes), how often.
WAIT, POLL = 5.0, 0.01


def test_a_key_waits_once_and_is_never_processed_twice_at_once() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        for _ in range(10):
            queue.add("a")
        queue.add("b")
        assert len(queue) == 2
        first = await queue.get()
        assert first == "a"
        queue.add("a")  # an event while "a" is being processed ...
        assert await queue.get() == "b"  # ... does not hand "a" to a second worker
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(queue.get(), timeout=0.05)
        queue.done("a")  # ... and is not lost: "a" comes back once its worker is done
        assert await asyncio.wait_for(queue.get(), timeout=1) == "a"

    asyncio.run(scenario())


def test_urgent_keys_go_first_and_a_key_is_still_handed_out_once() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        for key in ("a", "b", "c"):
            queue.add(key)
        queue.add("c", urgent=True)  # already waiting: moves ahead, still once
        queue.add("d", urgent=True)
        queue.add("a", urgent=False)  # no effect: waiting already
        got = [await queue.get() for _ in range(4)]
        assert got == ["c", "d", "a", "b"]
        for key in got:
            queue.done(key)
        assert len(queue) == 0
        with pytest.raises(TimeoutError):  # the stale entry of "c" hands nothing out
            await asyncio.wait_for(queue.get(), timeout=0.05)

    asyncio.run(scenario())


def test_add_after_keeps_the_earliest_time_and_backoff_grows() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(backoff=(0.01, 0.5))
        queue.add_after("a", 30)
        queue.add_after("a", 0.01)  # earlier wins
        assert await asyncio.wait_for(queue.get(), timeout=1) == "a"
        queue.done("a")
        assert queue.backoff("a") == 0.01
        assert await asyncio.wait_for(queue.get(), timeout=1) == "a"
        queue.done("a")
        assert queue.backoff("a") == 0.5  # grows on repeated failure
        queue.forget("a")
        queue.discard("a")  # the pending retry is dropped with the object
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(queue.get(), timeout=0.7)
        assert queue.backoff("a") == 0.01  # forget reset the count

    asyncio.run(scenario())


def body(name: str, uid: str = "u") -> dict[str, Any]:
    return {
        "apiVersion": "bioengine.bioimage.io/v1alpha1",
        "kind": "ModelRunner",
        "metadata": {"name": name, "namespace": "lab", "uid": f"{uid}-{name}"},
        "spec": {},
    }


def test_resync_drops_what_was_deleted_during_a_watch_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf re-lists after a watch gap but sends no DELETED for what went away meanwhile."""
    reconciled: list[str] = []
    lock = threading.Lock()

    def reconcile(obj: dict[str, Any], ctx: outcome.Context) -> outcome.Outcome:
        with lock:
            reconciled.append(obj["metadata"]["name"])
        return outcome.Outcome({})

    monkeypatch.setattr(
        kube, "existing", lambda api_version, keys: {k for k in keys if k[2] != "gone"}
    )

    async def both_reconciled() -> None:
        with lock:
            assert {"kept", "gone"} <= set(reconciled)

    async def resynced(before: int) -> None:
        with lock:
            assert len(reconciled) - before >= 2

    async def scenario() -> None:
        running = loop.Loop({"ModelRunner": reconcile}, outcome.Settings(resync_seconds=0.05), 2)

        async def gone_dropped() -> None:
            assert ("ModelRunner", "lab", "gone") not in running.bodies

        running.start()
        try:
            running.observe(body("kept"))
            running.observe(body("gone"))
            # First the reconciles the two events queued, so that a late one of "gone" is
            # not taken below for a resync of it.
            await eventually(both_reconciled, "the first reconcile of both", WAIT, POLL)
            await eventually(gone_dropped, "a resync dropping gone", WAIT, POLL)
            assert ("ModelRunner", "lab", "kept") in running.bodies
            with lock:
                before = len(reconciled)
            await eventually(lambda: resynced(before), "two more resyncs", WAIT, POLL)
            with lock:
                later = reconciled[before:]
            assert set(later) == {"kept"}  # resyncs go on, for what exists
        finally:
            await running.stop()

    asyncio.run(scenario())


def test_an_object_being_deleted_is_not_reconciled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing may happen here, so there is no event to wait for: the test waits instead for
    the loop to list the objects twice. With one worker thread, a reconcile queued by the
    first body or by ``child_changed`` (its settle delay cut to under one resync period)
    would have run on that thread before the second listing."""
    listings: list[list[Any]] = []

    def existing(api_version: str, keys: list[Any]) -> set[Any]:
        listings.append(keys)
        return set(keys)

    monkeypatch.setattr(kube, "existing", existing)
    monkeypatch.setattr(loop, "CHILD_SETTLE", 0.01)
    reconciled: list[str] = []

    async def listed_twice() -> None:
        assert len(listings) >= 2

    def reconcile(obj: dict[str, Any], ctx: outcome.Context) -> outcome.Outcome:
        reconciled.append(obj["metadata"]["name"])
        return outcome.Outcome({})

    async def scenario() -> None:
        running = loop.Loop({"ModelRunner": reconcile}, outcome.Settings(resync_seconds=0.05), 1)
        deleting = body("doomed")
        deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        running.observe(body("doomed"))
        running.observe(deleting)  # before any worker ran: the queued reconcile is dropped
        running.start()
        try:
            running.child_changed(("ModelRunner", "lab", "doomed"))  # the GC deleting a child
            await eventually(listed_twice, "two resyncs", WAIT, POLL)
        finally:
            await running.stop()
        assert reconciled == []
        assert not running.bodies
        assert not any(listings)  # nothing left to list either

    asyncio.run(scenario())
