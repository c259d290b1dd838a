"""A work queue of object keys, with the guarantees of client-go's workqueue.

* A key waits in the queue at most once: ten events about one object before a worker gets to
  it cause one reconcile, not ten (an operator restart, which lists every child, is one
  reconcile per object rather than one per child).
* A key is never processed by two workers at once. A key added while it is being processed
  is queued again when its worker calls :meth:`WorkQueue.done`, so no event is lost.
* A key added ``urgent`` (an object whose spec nobody has reconciled yet) goes before the
  others, so that a new or changed object is not kept waiting behind a crowd of re-checks
  (resyncs, children's status changes) of objects that are in place already.
* :meth:`WorkQueue.add_after` queues a key later (retries, and checks due at a known time such
  as an app becoming Stuck); :meth:`WorkQueue.backoff` grows the delay per key on repeated
  failures and :meth:`WorkQueue.forget` resets it.

Everything runs on one asyncio loop; the methods are not thread-safe and need no lock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

DEFAULT_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
URGENT, NORMAL = 0, 1


class WorkQueue(Generic[K]):
    def __init__(self, backoff: Sequence[float] = DEFAULT_BACKOFF) -> None:
        # (priority, order, key); entries whose priority no longer matches _dirty are stale
        self._queue: asyncio.PriorityQueue[tuple[int, int, K]] = asyncio.PriorityQueue()
        self._order = itertools.count()
        self._dirty: dict[K, int] = {}  # waiting to be processed, with its priority
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._backoff = tuple(backoff)

    def __len__(self) -> int:
        return len(self._dirty)

    def add(self, key: K, urgent: bool = False) -> None:
        priority = URGENT if urgent else NORMAL
        if self._dirty.get(key, NORMAL + 1) <= priority:
            return
        self._dirty[key] = priority
        if key not in self._processing:
            self._put(key)

    def _put(self, key: K) -> None:
        self._queue.put_nowait((self._dirty[key], next(self._order), key))

    def add_after(self, key: K, delay: float) -> None:
        """Queue ``key`` in ``delay`` seconds; an earlier pending time for it wins."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        pending = self._timers.get(key)
        if pending is not None:
            if pending.when() <= loop.time() + delay:
                return
            pending.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def backoff(self, key: K) -> float:
        """Queue ``key`` again after a delay that grows with its consecutive failures."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = self._backoff[min(failures, len(self._backoff) - 1)]
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        """The key succeeded: its next failure starts the backoff from the beginning."""
        self._failures.pop(key, None)

    def discard(self, key: K) -> None:
        """The object is gone: drop its pending timer and failure count."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._failures.pop(key, None)

    async def get(self) -> K:
        while True:
            priority, _, key = await self._queue.get()
            if self._dirty.get(key) == priority and key not in self._processing:
                break  # else stale: queued again since, or being processed
        del self._dirty[key]
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._put(key)
