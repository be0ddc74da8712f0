"""The in-memory block cache: (package version, block index) -> bytes, bounded in bytes.

This module owns caching and de-duplicating block fetches; it does not know how blocks are
fetched (the caller passes a fetch function) nor how big they are (the caller aligns them).

Concurrency protocol:
- A miss starts the fetch as a task in the cache's own nursery and records it as *in flight*;
  every reader of that key (the first included) waits on the flight's ``trio.Event``. So a
  reader that is cancelled (an interrupted ``read()``) never cancels a fetch that others are
  waiting on, and a fetch whose readers all left still fills the cache.
- A failed fetch hands the same exception to every waiter and is not cached: the next reader
  tries again. Fetch errors never escape into the nursery (that would tear down the mount).
- Code between the cache lookup and the flight registration has no checkpoint, so two tasks
  cannot both start a fetch for one key.
- A fetch may :meth:`~BlockCache.deliver` its block before it returns (when its bytes have
  arrived but a slower cache tier, such as a disk write, is still keeping them): waiters get the
  block at once, and the flight stays registered until the fetch ends, so nobody fetches it
  again meanwhile. Blocks delivered early whose fetch is still running (*write-behind*) are
  bounded by ``write_behind`` bytes: beyond it, new fetches wait for the tiers to catch up.

Keys carry the package identity including its ETag, so bytes of a replaced package can never
be served for the new one; old blocks simply age out of the LRU.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio
from cachetools import LRUCache

from pixxelfs.errors import StorageError

log = logging.getLogger(__name__)

Fetch = Callable[[], Awaitable[bytes]]


@dataclass(frozen=True)
class BlockKey:
    """A cached unit of one package version (``package`` is its identity tuple).

    ``unit`` says which: ``()`` is aligned block number ``index``; ``("range", end)`` the exact
    byte range ``[index, end)`` (a COG tile); ``("plain", member)`` piece ``index`` of a
    DEFLATED member's inflated output (memory only).
    """

    package: Hashable
    index: int
    unit: tuple[Hashable, ...] = ()

    @property
    def is_block(self) -> bool:
        return not self.unit


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    coalesced: int
    bytes: int
    evictions: int
    in_flight: int
    write_behind: int = 0


@dataclass
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: Exception | None = None
    early: int = 0  # bytes delivered before the fetch returned


class _CountingLRU(LRUCache[BlockKey, bytes]):
    """An LRU cache that counts evictions (cachetools evicts through ``popitem``)."""

    def __init__(self, maxsize: int):
        super().__init__(maxsize=maxsize, getsizeof=len)
        self.evictions = 0

    def popitem(self) -> tuple[BlockKey, bytes]:
        item = super().popitem()
        self.evictions += 1
        return item


class BlockCache:
    """Size-bounded LRU of blocks with single-flight fetching in a cache-owned nursery."""

    def __init__(self, max_bytes: int, block_size: int, *, write_behind: int | None = None):
        if block_size <= 0 or max_bytes < 0:
            raise ValueError("block_size must be positive and max_bytes non-negative")
        self.max_bytes = max_bytes
        self.block_size = block_size
        self.write_behind = (
            max(block_size, max_bytes // 16) if write_behind is None else write_behind
        )
        self._behind = 0
        self._caught_up = trio.Event()
        self._blocks = _CountingLRU(max_bytes)
        self._flights: dict[BlockKey, _Flight] = {}
        self._nursery: trio.Nursery | None = None
        self._hits = 0
        self._misses = 0
        self._coalesced = 0

    @classmethod
    @asynccontextmanager
    async def open(
        cls, max_bytes: int, block_size: int, *, write_behind: int | None = None
    ) -> AsyncIterator[BlockCache]:
        """A cache whose fetch tasks live exactly as long as the ``async with`` block."""
        async with trio.open_nursery() as nursery:
            cache = cls(max_bytes, block_size, write_behind=write_behind)
            cache.start(nursery)
            try:
                yield cache
            finally:
                nursery.cancel_scope.cancel()

    def start(self, nursery: trio.Nursery) -> None:
        """Run fetches in ``nursery`` (for callers that manage their own)."""
        self._nursery = nursery

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            coalesced=self._coalesced,
            bytes=int(self._blocks.currsize),
            evictions=self._blocks.evictions,
            in_flight=len(self._flights),
            write_behind=self._behind,
        )

    def known(self, key: BlockKey) -> bool:
        """Cached or being fetched: asking for it costs no new request."""
        return key in self._blocks or key in self._flights

    def peek(self, key: BlockKey) -> bytes | None:
        """The cached block, without fetching or touching the statistics."""
        return self._blocks.get(key)

    async def get(self, key: BlockKey, fetch: Fetch) -> bytes:
        """The block for ``key``: cached, or fetched once however many tasks ask at once."""
        data = self._blocks.get(key)
        if data is not None:
            self._hits += 1
            await trio.lowlevel.checkpoint()
            return data
        flight = self._flights.get(key)
        if flight is None:
            self._misses += 1
            flight = self._launch(key, fetch)
        else:
            self._coalesced += 1
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.data is not None
        return flight.data

    def prefetch(self, key: BlockKey, fetch: Fetch) -> None:
        """Start fetching ``key`` in the background unless it is cached or in flight."""
        if key in self._blocks or key in self._flights:
            return
        self._misses += 1
        self._launch(key, fetch)

    def _launch(self, key: BlockKey, fetch: Fetch) -> _Flight:
        if self._nursery is None:
            raise RuntimeError("BlockCache is not started: use BlockCache.open() or start()")
        flight = _Flight()
        self._flights[key] = flight
        self._nursery.start_soon(self._run, key, fetch, flight)
        return flight

    def put(self, key: BlockKey, data: bytes) -> None:
        """Keep bytes made here rather than fetched (a DEFLATED member's inflated output)."""
        self._store(key, data)

    def discard(self, key: BlockKey) -> None:
        """Forget ``key``'s bytes (kept bytes found to be wrong)."""
        self._blocks.pop(key, None)

    def deliver(self, key: BlockKey, data: bytes, *, behind: bool = True) -> None:
        """Hand ``key``'s block to its waiters and the LRU now, before its fetch returns.

        ``behind``: the fetch goes on holding the bytes for a while (the tiers below are
        storing them), so they count against the write-behind bound until it returns. Bytes
        handed out from a range request still coming in don't: its memory budget holds them.
        """
        flight = self._flights.get(key)
        if flight is None:
            return
        if behind and not flight.early:
            flight.early = len(data)
            self._behind += flight.early
        if not flight.done.is_set():
            flight.data = data
            self._store(key, data)
            flight.done.set()

    async def _run(self, key: BlockKey, fetch: Fetch, flight: _Flight) -> None:
        """Fetch and store; once delivered early, a later failure is the tiers', not the
        readers' (they already have good bytes)."""
        try:
            while self._behind > self.write_behind:
                await self._caught_up.wait()
            data = await fetch()
        except Exception as exc:
            log.debug("fetch of block %d failed: %r", key.index, exc)
            if not flight.done.is_set():
                flight.error = exc
        except BaseException:
            if not flight.done.is_set():
                flight.error = StorageError("block fetch cancelled: the cache is shutting down")
            raise
        else:
            if not flight.done.is_set():
                flight.data = data
                self._store(key, data)
        finally:
            del self._flights[key]
            if flight.early:
                self._behind -= flight.early
                self._caught_up.set()
                self._caught_up = trio.Event()
            flight.done.set()

    def _store(self, key: BlockKey, data: bytes) -> None:
        if len(data) <= self.max_bytes:
            self._blocks[key] = data
