"""Writer threads that store items in batches, without a trip through the event loop per item.

The disk tier used to hand each block to a worker thread (``trio.to_thread``) and wait for the
answer: every write then needed the event loop twice (to start the thread's job and to take its
result), and while the loop was busy serving reads the writers sat idle about half the time
(W1 in docs/benchmarks.md). Here the threads live as long as the tier, take whatever is queued
(up to a batch) as soon as they are free, and report back to the loop once per batch.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, TypeVar

import trio

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(eq=False)
class _Queued(Generic[T]):
    item: T
    done: trio.Event = field(default_factory=trio.Event)
    stored: bool = False


class BatchWriter(Generic[T]):
    """Queue items for ``store`` (called in a writer thread with a batch of items, returning
    which were stored); :meth:`write` returns once its item's batch is done."""

    def __init__(
        self, store: Callable[[list[T]], Sequence[bool]], *, threads: int = 2, batch: int = 8
    ):
        self._store = store
        self._threads = threads
        self._batch = batch
        self._queue: queue.SimpleQueue[_Queued[T] | None] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the writer threads; on exit they store what is queued, then stop."""
        self._token = trio.lowlevel.current_trio_token()
        limiter = trio.CapacityLimiter(self._threads)  # not the shared default pool's tokens
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(self._threads):
                    nursery.start_soon(
                        partial(trio.to_thread.run_sync, self._serve, limiter=limiter)
                    )
                try:
                    yield
                finally:
                    for _ in range(self._threads):
                        self._queue.put(None)
        finally:
            self._token = None

    async def write(self, item: T) -> bool:
        """Store ``item``; whether it was stored. (Cancelled, it is still stored.)"""
        if self._token is None:
            raise RuntimeError("BatchWriter.running() first")
        queued = _Queued(item)
        self._queue.put(queued)
        await queued.done.wait()
        return queued.stored

    def _serve(self) -> None:
        """A writer thread: store batches until told to stop (a None in the queue)."""
        while (batch := self._next_batch()) is not None:
            try:
                stored = list(self._store([queued.item for queued in batch]))
                if len(stored) != len(batch):
                    raise ValueError(f"{len(stored)} outcomes for {len(batch)} items")
            except Exception:
                log.exception("storing a batch of %d failed", len(batch))
                stored = [False] * len(batch)
            assert self._token is not None
            self._token.run_sync_soon(self._finish, batch, stored)

    def _next_batch(self) -> list[_Queued[T]] | None:
        """The next queued item and those queued behind it, up to a batch; None: stop."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self._batch:
            try:
                queued = self._queue.get_nowait()
            except queue.Empty:
                break
            if queued is None:  # a stop for some thread: leave it for the next get()
                self._queue.put(None)
                break
            batch.append(queued)
        return batch

    @staticmethod
    def _finish(batch: list[_Queued[T]], stored: list[bool]) -> None:
        for queued, ok in zip(batch, stored, strict=True):
            queued.stored = ok
            queued.done.set()
