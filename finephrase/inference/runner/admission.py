"""Admission of work in the lean runner: how many requests and documents are in flight at once.

* :class:`FastSemaphore` — the request slots (``max_concurrent_generations``): an ``asyncio.Semaphore`` with
  O(1) ``acquire``/``release``;
* :class:`DocumentTasks` — the documents in flight (``max_concurrent_documents``): a semaphore released by each
  document task's done-callback, instead of ``asyncio.wait(FIRST_COMPLETED)`` over the whole pool per document
  (datatrove's loop), which adds and removes a callback on every pending task each time.
"""

from __future__ import annotations

import asyncio
import collections


class FastSemaphore:
    """An ``asyncio.Semaphore`` with O(1) ``acquire``/``release`` (Python 3.11's checks every waiter for
    cancellation on each ``acquire`` through a generator). FIFO, cancellation-safe."""

    def __init__(self, value: int):
        self._value = value
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def try_acquire(self) -> bool:
        """Take a unit without waiting when one is free and nobody queues (no coroutine round trip)."""
        if self._value > 0 and not self._waiters:
            self._value -= 1
            return True
        return False

    async def acquire(self) -> bool:
        if self._value > 0 and not self._waiters:
            self._value -= 1
            return True
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the releaser hands its unit over: _value is not incremented for us
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a unit while being cancelled: pass it on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise
        return True

    def release(self) -> None:
        if self._value < 0:  # shrunk below the units out (DocumentTasks.resize): this one pays it back
            self._value += 1
            return
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                return
        self._value += 1

    async def __aenter__(self):
        await self.acquire()

    async def __aexit__(self, *exc):
        self.release()


class DocumentTasks:
    """The documents in flight: at most ``limit`` at once; the first error (or a cancelled document: never lost
    silently) ends the task, raised at the next ``start`` or at ``wait``, as in datatrove."""

    def __init__(self, limit: int):
        self.pending: set[asyncio.Task] = set()
        self.failed: list[BaseException] = []
        self.done = 0  # documents finished without an error (the live progress shows them)
        self._slots = FastSemaphore(limit)
        self.limit = limit

    def resize(self, limit: int) -> None:
        """At most ``limit`` documents in flight from now on (documents already running are not stopped)."""
        delta = limit - self.limit
        self.limit = limit
        if delta > 0:
            for _ in range(delta):
                self._slots.release()
        else:
            self._slots._value += delta  # below zero: the next releases pay it back before anyone is admitted

    async def start(self, make_coroutine) -> None:
        await self._slots.acquire()
        if self.failed:
            raise self.failed[0]
        task = asyncio.get_running_loop().create_task(make_coroutine())
        self.pending.add(task)
        task.add_done_callback(self._done)

    async def wait(self) -> None:
        if self.pending:
            await asyncio.wait(set(self.pending))
        if self.failed:
            raise self.failed[0]

    def _done(self, task: asyncio.Task) -> None:
        self.pending.discard(task)
        self._slots.release()
        error = None if task.cancelled() else task.exception()  # retrieved even when not the first
        self.done += not task.cancelled() and error is None
        if self.failed:
            return
        if task.cancelled():  # nothing but the shutdown cancels a document
            self.failed.append(RuntimeError("a document task was cancelled"))
        elif error is not None:
            self.failed.append(error)
