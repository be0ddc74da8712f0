"""BlockCache: single-flight, cancellation, error propagation, byte-bounded LRU, stats."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pixxelfs.errors import StorageError
from pixxelfs.remote.block_cache import BlockCache, BlockKey

PKG = ("catalog-1", '"etag-1"', 1000)


class GatedFetcher:
    """A fetch function that counts its calls and waits for the test to release it."""

    def __init__(self, data: bytes = b"block", error: Exception | None = None):
        self.data = data
        self.error = error
        self.calls = 0
        self.started = trio.Event()
        self.release = trio.Event()

    async def __call__(self) -> bytes:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return self.data


async def instant(data: bytes) -> bytes:
    return data


async def test_concurrent_misses_share_one_fetch() -> None:
    fetch = GatedFetcher(b"shared")
    results: list[bytes] = []
    async with BlockCache.open(max_bytes=1000, block_size=10) as cache:
        key = BlockKey(PKG, 3)

        async def reader() -> None:
            results.append(await cache.get(key, fetch))

        async with trio.open_nursery() as readers:
            for _ in range(5):
                readers.start_soon(reader)
            await fetch.started.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert cache.stats().in_flight == 1
            fetch.release.set()
        assert results == [b"shared"] * 5
        assert fetch.calls == 1
        stats = cache.stats()
        assert (stats.misses, stats.coalesced, stats.hits, stats.in_flight) == (1, 4, 0, 0)
        assert await cache.get(key, fetch) == b"shared"
        assert cache.stats().hits == 1 and fetch.calls == 1


async def test_cancelled_reader_does_not_cancel_the_shared_fetch() -> None:
    fetch = GatedFetcher(b"survives")
    async with BlockCache.open(max_bytes=1000, block_size=10) as cache:
        key = BlockKey(PKG, 0)
        with trio.move_on_after(1) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cache.get, key, fetch)
                await fetch.started.wait()
                scope.cancel()
        assert scope.cancelled_caught
        assert cache.stats().in_flight == 1
        second: list[bytes] = []

        async def waiter() -> None:
            second.append(await cache.get(key, fetch))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            fetch.release.set()
        assert second == [b"survives"]
        assert fetch.calls == 1


async def test_fetch_whose_readers_all_left_still_fills_the_cache() -> None:
    fetch = GatedFetcher(b"late")
    async with BlockCache.open(max_bytes=1000, block_size=10) as cache:
        key = BlockKey(PKG, 1)
        with trio.move_on_after(0):
            await cache.get(key, fetch)
        fetch.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert cache.peek(key) == b"late"


async def test_error_reaches_every_waiter_and_is_not_cached() -> None:
    error = StorageError("range went wrong")
    fetch = GatedFetcher(error=error)
    seen: list[BaseException] = []
    async with BlockCache.open(max_bytes=1000, block_size=10) as cache:
        key = BlockKey(PKG, 2)

        async def reader() -> None:
            try:
                await cache.get(key, fetch)
            except StorageError as exc:
                seen.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(reader)
            await fetch.started.wait()
            await trio.testing.wait_all_tasks_blocked()
            fetch.release.set()
        assert seen == [error] * 3
        assert fetch.calls == 1
        assert cache.peek(key) is None
        assert await cache.get(key, lambda: instant(b"second try")) == b"second try"


async def test_unexpected_fetch_bug_does_not_kill_the_cache_nursery() -> None:
    async def broken() -> bytes:
        raise KeyError("bug")

    async with BlockCache.open(max_bytes=100, block_size=10) as cache:
        with pytest.raises(KeyError):
            await cache.get(BlockKey(PKG, 0), broken)
        assert await cache.get(BlockKey(PKG, 0), lambda: instant(b"ok")) == b"ok"


async def test_lru_is_bounded_in_bytes_and_counts_evictions() -> None:
    async with BlockCache.open(max_bytes=25, block_size=10) as cache:
        for index in range(3):
            await cache.get(BlockKey(PKG, index), lambda i=index: instant(bytes([i]) * 10))
        stats = cache.stats()
        assert stats.bytes == 20 and stats.evictions == 1
        assert cache.peek(BlockKey(PKG, 0)) is None
        # Touch block 1 so block 2 becomes the least recently used.
        await cache.get(BlockKey(PKG, 1), lambda: instant(b"unused"))
        await cache.get(BlockKey(PKG, 3), lambda: instant(b"3" * 10))
        assert cache.peek(BlockKey(PKG, 1)) == bytes([1]) * 10
        assert cache.peek(BlockKey(PKG, 2)) is None
        assert cache.stats().evictions == 2


async def test_block_larger_than_the_cache_is_returned_but_not_kept() -> None:
    async with BlockCache.open(max_bytes=5, block_size=10) as cache:
        assert await cache.get(BlockKey(PKG, 0), lambda: instant(b"x" * 10)) == b"x" * 10
        assert cache.stats().bytes == 0


async def test_keys_of_another_package_version_never_collide() -> None:
    async with BlockCache.open(max_bytes=100, block_size=10) as cache:
        await cache.get(BlockKey(PKG, 0), lambda: instant(b"old"))
        newer = ("catalog-1", '"etag-2"', 1000)
        assert await cache.get(BlockKey(newer, 0), lambda: instant(b"new")) == b"new"
        assert cache.peek(BlockKey(PKG, 0)) == b"old"


async def test_prefetch_starts_one_fetch_that_get_joins() -> None:
    fetch = GatedFetcher(b"ahead")
    async with BlockCache.open(max_bytes=100, block_size=10) as cache:
        key = BlockKey(PKG, 9)
        cache.prefetch(key, fetch)
        cache.prefetch(key, fetch)
        await fetch.started.wait()
        fetch.release.set()
        assert await cache.get(key, fetch) == b"ahead"
        assert fetch.calls == 1


async def test_get_without_a_nursery_is_a_clear_error() -> None:
    cache = BlockCache(max_bytes=100, block_size=10)
    with pytest.raises(RuntimeError, match="not started"):
        await cache.get(BlockKey(PKG, 0), lambda: instant(b""))


async def test_a_block_delivered_early_reaches_readers_before_its_fetch_ends() -> None:
    """A slow tier below (a disk write) does not hold up the readers of a delivered block."""
    key = BlockKey(PKG, 1)
    writing = trio.Event()
    async with BlockCache.open(max_bytes=100, block_size=10, write_behind=10) as cache:

        async def fetch() -> bytes:
            cache.deliver(key, b"early")
            await writing.wait()
            raise OSError("the tier below failed after delivering")

        assert await cache.get(key, fetch) == b"early"
        assert cache.stats().write_behind == 5 and cache.known(key)
        writing.set()
        await trio.testing.wait_all_tasks_blocked()
        assert cache.stats().write_behind == 0 and cache.stats().in_flight == 0
        assert await cache.get(key, GatedFetcher()) == b"early"  # stored, the error ignored


async def test_write_behind_beyond_its_bound_holds_back_new_fetches() -> None:
    writing = trio.Event()
    async with BlockCache.open(max_bytes=100, block_size=10, write_behind=10) as cache:

        def slow_writer(index: int):
            async def fetch() -> bytes:
                cache.deliver(BlockKey(PKG, index), b"x" * 10)
                await writing.wait()
                return b"x" * 10

            return fetch

        await cache.get(BlockKey(PKG, 0), slow_writer(0))
        await cache.get(BlockKey(PKG, 1), slow_writer(1))  # 10 behind: not beyond the bound
        assert cache.stats().write_behind == 20
        later = GatedFetcher(b"later")
        cache.prefetch(BlockKey(PKG, 2), later)
        await trio.testing.wait_all_tasks_blocked()
        assert later.calls == 0  # 20 behind > 10: waits for the writes
        writing.set()
        later.release.set()
        assert await cache.get(BlockKey(PKG, 2), later) == b"later"
        assert later.calls == 1 and cache.stats().write_behind == 0
