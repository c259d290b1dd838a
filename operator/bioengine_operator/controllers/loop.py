"""The reconcile loop: which object to reconcile when, with what body, by which worker.

kopf delivers watch events (our three kinds, and the children we label); this module keeps
the latest body of every object and a :class:`~.workqueue.WorkQueue` of keys to reconcile:

* an event about an object queues the object, ahead of the others if its status does not
  describe its spec yet (new or changed); one about its children queues it a second later
  (the rest of the burst comes in the meantime);
* every ``resync_seconds`` every object is queued again: drift nothing told us about, a
  missing ConfigMap created since, time-based checks;
* a reconciler may ask to be called again at a given time (an app becoming Stuck);
* a reconcile that raised is retried with a growing backoff, and never blocks the others;
* an object being deleted is dropped at once (its children go with it), and at every resync
  the objects are listed, so one deleted while a watch was reconnecting (kopf sends no
  DELETED for it) is dropped too.

Nothing here is stored on the objects: no finalizers, no annotations. Deleting a resource
needs no operator, and a user cannot stall the operator by filling up an object's metadata.
Reconcilers use the synchronous Kubernetes client, so they run on a pool of worker threads;
the loop itself runs on kopf's event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections.abc import Mapping
from typing import Any

import prometheus_client

from bioengine_operator import kube, logs, metrics
from bioengine_operator.api.base import API_VERSION
from bioengine_operator.controllers import outcome
from bioengine_operator.controllers.workqueue import WorkQueue

logger = logging.getLogger(__name__)

Key = tuple[str, str, str]  # kind, namespace, name

CHILD_SETTLE = 1.0  # seconds a child event waits for the rest of its burst

RECONCILES = prometheus_client.Counter(
    "bioengine_operator_reconciles",
    "Reconciles run, by kind and result (ok, error).",
    ["kind", "result"],
)
DURATION = prometheus_client.Histogram(
    "bioengine_operator_reconcile_duration_seconds",
    "Time one reconcile took, by kind.",
    ["kind"],
    buckets=metrics.LATENCY_BUCKETS,
)
RETRIES = prometheus_client.Counter(
    "bioengine_operator_reconcile_retries",
    "Reconciles queued again after an error, by kind.",
    ["kind"],
)


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return (str(body["kind"]), str(meta["namespace"]), str(meta["name"]))


class Loop:
    def __init__(
        self,
        reconcilers: Mapping[str, outcome.Reconciler],
        settings: outcome.Settings,
        workers: int = 8,
    ) -> None:
        self.reconcilers = dict(reconcilers)
        self.settings = settings
        self.workers = workers
        self.bodies: dict[Key, dict[str, Any]] = {}
        self.seen: dict[Key, float] = {}  # when each body last arrived (monotonic)
        self.queue: WorkQueue[Key] = WorkQueue()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="reconcile"
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._event_loop: asyncio.AbstractEventLoop | None = None

    # -- inputs (called on the event loop by kopf's handlers) ---------------------------

    def observe(self, body: dict[str, Any]) -> None:
        """The latest state of one of our objects: remember it and queue a reconcile."""
        key = key_of(body)
        if body["metadata"].get("deletionTimestamp"):
            # Being deleted: garbage collection removes the children, and a reconcile now
            # would only apply them again.
            self.forget(key)
            return
        known = self.bodies.get(key)
        self.bodies[key] = body
        self.seen[key] = time.monotonic()
        if known is not None and _version(known) == _version(body):
            return  # the echo of our own status write: nothing new to reconcile
        self.queue.add(key, urgent=not _reported(body))

    def forget(self, key: Key) -> None:
        gone = self.bodies.pop(key, None)
        self.seen.pop(key, None)
        self.queue.discard(key)
        if gone is not None:
            outcome.forget(gone["metadata"]["uid"])

    def child_changed(self, owner: Key) -> None:
        """A child of ``owner`` changed or went away: reconcile the owner (if we know it)
        :data:`CHILD_SETTLE` seconds from now, so that a burst of child events (a rollout
        moves two Deployments, their PDB and the pods' counts through several statuses)
        causes one reconcile, and objects whose spec changed go first.
        The echo of the operator's own write of a child is not a change: the handlers pass
        those over (see ``handlers``)."""
        if owner in self.bodies:
            self.queue.add_after(owner, CHILD_SETTLE)

    # -- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        self._tasks.append(asyncio.create_task(self._resync()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _resync(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            listed_at = time.monotonic()
            try:
                existing = await loop.run_in_executor(
                    self._executor, kube.existing, API_VERSION, list(self.bodies)
                )
            except Exception as err:  # listing is best effort: every object is queued anyway
                logger.warning("cannot list the watched objects: %s", _describe(err))
                existing = set(self.bodies)
            for key in list(self.bodies):
                if key in existing or self.seen.get(key, 0.0) > listed_at:
                    self.queue.add(key)
                else:
                    self.forget(key)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key = await self.queue.get()
            try:
                body = self.bodies.get(key)
                if body is not None:
                    call = functools.partial(self._reconcile, key, body)
                    written = await loop.run_in_executor(self._executor, call)
                    if written is not None and self.bodies.get(key) is body:
                        self.bodies[key] = written  # newer than what we reconciled
            finally:
                self.queue.done(key)

    def _reconcile(self, key: Key, body: dict[str, Any]) -> dict[str, Any] | None:
        """Run on a worker thread; schedule the next run of ``key`` back on the loop."""
        kind = key[0]
        started = time.monotonic()
        try:
            result, written = outcome.run(self.reconcilers[kind], body, self.settings)
        except Exception as err:  # any failure of one object stays with that object
            RECONCILES.labels(kind, "error").inc()
            RETRIES.labels(kind).inc()
            logger.warning(
                "reconcile failed, retrying: %s", _describe(err), extra=logs.object_ref(body)
            )
            self._call_soon(self._retry, key)
            return None
        finally:
            DURATION.labels(kind).observe(time.monotonic() - started)
        RECONCILES.labels(kind, "ok").inc()
        logger.debug("reconciled: %s", result.status.get("phase"), extra=logs.object_ref(body))
        self._call_soon(self._succeeded, key, result.requeue_in)
        return written

    def _call_soon(self, fn: Any, *args: Any) -> None:
        assert self._event_loop is not None
        self._event_loop.call_soon_threadsafe(fn, *args)

    def _retry(self, key: Key) -> None:
        if key in self.bodies:
            self.queue.backoff(key)

    def _succeeded(self, key: Key, requeue_in: float | None) -> None:
        self.queue.forget(key)
        if requeue_in is not None and key in self.bodies:
            self.queue.add_after(key, requeue_in)

    # -- metrics -------------------------------------------------------------------------

    def collector(self) -> metrics.Computed:
        """Objects by kind and phase, and the queue's depth, read at scrape time."""
        return metrics.Computed(
            (
                "bioengine_operator_objects",
                "Watched objects by kind and phase.",
                ("kind", "phase"),
                self._objects_by_phase,
            ),
            (
                "bioengine_operator_queue_depth",
                "Objects waiting to be reconciled.",
                (),
                lambda: {(): len(self.queue)},
            ),
        )

    def _objects_by_phase(self) -> dict[tuple[str, ...], float]:
        counts: dict[tuple[str, ...], float] = {}
        for (kind, _, _), body in list(self.bodies.items()):
            phase = str((body.get("status") or {}).get("phase") or "Unknown")
            counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        return counts


def _reported(body: Mapping[str, Any]) -> bool:
    """Whether the status describes the object's current spec (its generation)."""
    status = body.get("status") or {}
    return bool(status.get("observedGeneration") == body["metadata"].get("generation"))


def _version(body: Mapping[str, Any]) -> str | None:
    return body.get("metadata", {}).get("resourceVersion")  # type: ignore[no-any-return]


def _describe(err: Exception) -> str:
    """An API error's status and the server's message, else the exception itself."""
    status, body = getattr(err, "status", None), getattr(err, "body", None)
    if status is not None and body:
        return f"{status} {body}"[:1000]
    return repr(err)[:1000]
