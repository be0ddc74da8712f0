"""The shared block store against a real redis-server: keys, checksums, leases, breaker."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

from pixxelfs.api.models import DownloadResource
from pixxelfs.config import SharedCacheConfig
from pixxelfs.errors import ConfigError, StorageError
from pixxelfs.remote.block_cache import BlockKey
from pixxelfs.remote.shared_cache import (
    BreakerState,
    CircuitBreaker,
    HashRing,
    SharedStore,
    account_scope,
    open_shared_store,
    seal,
    unseal,
)
from tests.scale.redis_server import RedisServer

BLOCK = 1 << 16
SCOPE = account_scope("http://api.test", "key")


def payload(index: int, etag: str = '"v1"') -> bytes:
    """Deterministic block bytes, different per block and per package version."""
    seed = hashlib.sha256(f"{etag}:{index}".encode()).digest()
    return (seed * (BLOCK // len(seed) + 1))[:BLOCK]


class Origin:
    """A ``below`` for one block that counts calls and can hold them until released."""

    def __init__(self, data: bytes, *, held: bool = False):
        self.data = data
        self.calls = 0
        self.release = trio.Event()
        if not held:
            self.release.set()

    async def __call__(self) -> bytes:
        self.calls += 1
        await self.release.wait()
        return self.data


def key(index: int = 3, etag: str | None = '"v1"') -> BlockKey:
    return BlockKey(("catalog-1", etag, 100 * BLOCK), index)


@asynccontextmanager
async def stores(urls: list[str], count: int = 1, **options) -> AsyncIterator[list[SharedStore]]:
    """``count`` independent stores (as separate mounts would have) over the same nodes."""
    config = SharedCacheConfig(tuple(urls), timeout=0.5)
    async with AsyncExitStack() as stack:
        opened = []
        for _ in range(count):
            opened.append(
                await stack.enter_async_context(open_shared_store(config, SCOPE, **options))
            )
        yield opened


async def wait_until(condition: Callable[[], bool], limit: float = 10.0) -> None:
    """Poll a counter of the code under test (it has no event to wait on), with a deadline."""
    with trio.fail_after(limit):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.005)


# --- pure parts ---------------------------------------------------------------------------------


def test_sealed_values_round_trip_and_reject_anything_else():
    data = payload(1)
    value = seal("k1", data)
    assert unseal("k1", value) == data
    assert unseal("k2", value) is None  # a value moved under another key (another ETag)
    assert unseal("k1", value[:-1]) is None  # truncated
    flipped = bytearray(value)
    flipped[-5] ^= 1
    assert unseal("k1", bytes(flipped)) is None  # bit rot in the data
    header = bytearray(value)
    header[40] ^= 1
    assert unseal("k1", bytes(header)) is None  # bit rot in the header
    assert unseal("k1", b"garbage") is None
    assert unseal("k1", seal("k1", b"")) == b""


def test_hash_ring_spreads_keys_and_moves_few_when_a_node_joins():
    keys = [f"pxfs:v1:b:pkg:{BLOCK}:{i}" for i in range(6000)]
    three = HashRing(["a", "b", "c"])
    owners = [three.owner(k) for k in keys]
    for node in range(3):
        assert 1500 < owners.count(node) < 2500
    four = HashRing(["a", "b", "c", "d"])
    moved = sum(1 for k, o in zip(keys, owners, strict=True) if four.owner(k) != o)
    assert 0.15 * len(keys) < moved < 0.35 * len(keys)  # about 1/4, never a reshuffle
    assert all(four.owner(k) == 3 for k, o in zip(keys, owners, strict=True) if four.owner(k) != o)


def test_breaker_opens_after_repeated_errors_and_probes_after_cooldown(caplog):
    now = [0.0]
    breaker = CircuitBreaker("node", threshold=3, min_span=1.0, cooldown=5.0, clock=lambda: now[0])
    for _ in range(5):  # one stall: many errors at once do not open it
        breaker.failure("timeout")
    assert breaker.state is BreakerState.CLOSED and breaker.allow()
    now[0] = 1.0
    with caplog.at_level(logging.WARNING):
        breaker.failure("timeout")
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    now[0] = 6.0
    assert breaker.allow()  # the one probe
    assert not breaker.allow()
    breaker.failure("timeout")  # probe failed: open again, no second warning
    assert breaker.state is BreakerState.OPEN
    now[0] = 11.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    breaker.failure("timeout")  # a fresh streak starts from zero
    now[0] = 20.0
    breaker.failure("timeout")
    assert breaker.state is BreakerState.CLOSED
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1


@pytest.mark.parametrize(
    ("urls", "share", "fragment"),
    [
        ((), False, "at least one"),
        (("http://127.0.0.1:6379/0",), False, "not a shared cache URL"),
        (("redis://127.0.0.1:6379/0",), True, "must be authenticated"),
    ],
)
def test_config_refuses_bad_urls_and_unauthenticated_url_sharing(urls, share, fragment):
    with pytest.raises(ConfigError, match=fragment):
        SharedCacheConfig(urls, share_signed_urls=share)


def test_config_accepts_authenticated_or_tls_url_sharing_and_hides_passwords():
    config = SharedCacheConfig(
        ("redis://:s3cret@10.0.0.1:6379/0", "rediss://cache:6380/1"), share_signed_urls=True
    )
    assert "s3cret" not in repr(config)


# --- against redis-server -----------------------------------------------------------------------


async def test_two_stores_fetch_a_block_from_the_origin_once(redis_server: RedisServer):
    """2 mounts x 8 readers of one block at once: one origin fetch, the others wait for it."""
    origin = Origin(payload(3), held=True)
    async with stores([redis_server.url], count=2) as (first, second):
        tiers = [first.block_tier(BLOCK), second.block_tier(BLOCK)]
        results: list[bytes] = []

        async def read(tier) -> None:
            results.append(await tier.fetch(key(), origin))

        async with trio.open_nursery() as nursery:
            for tier in tiers:
                for _ in range(8):
                    nursery.start_soon(read, tier)
            waits = lambda: first.block_stats.lease_waits + second.block_stats.lease_waits  # noqa: E731
            await wait_until(lambda: waits() == 15)
            origin.release.set()
        assert origin.calls == 1
        assert results == [payload(3)] * 16
        wins = first.block_stats.lease_wins + second.block_stats.lease_wins
        assert wins == 1
        # A later reader is a plain hit.
        assert await tiers[1].fetch(key(), origin) == payload(3)
        assert origin.calls == 1


async def test_garbage_and_wrong_etag_values_are_never_served(redis_server: RedisServer):
    origin = Origin(payload(3))
    async with stores([redis_server.url]) as (store,):
        tier = store.block_tier(BLOCK)
        name = tier.key_for(key())
        other = tier.key_for(key(etag='"v0"'))
        assert name is not None and other is not None and name != other
        client = store._nodes[0].client
        for bad in (b"garbage", seal(other, payload(3, '"v0"'))):
            await client.set(name, bad)
            assert await tier.fetch(key(), origin) == payload(3)
            assert unseal(name, await client.get(name)) == payload(3)  # replaced by a good one
            await client.delete([name])
        assert store.block_stats.corrupt == 2
        assert origin.calls == 2


async def test_a_new_etag_is_a_new_key(redis_server: RedisServer):
    async with stores([redis_server.url]) as (store,):
        tier = store.block_tier(BLOCK)
        assert await tier.fetch(key(etag='"v1"'), Origin(payload(3, '"v1"'))) == payload(3, '"v1"')
        fresh = Origin(payload(3, '"v2"'))
        assert await tier.fetch(key(etag='"v2"'), fresh) == payload(3, '"v2"')
        assert fresh.calls == 1


async def test_packages_without_etag_are_not_shared(redis_server: RedisServer):
    async with stores([redis_server.url], count=2) as (first, second):
        for store in (first, second):
            origin = Origin(payload(1))
            assert await store.block_tier(BLOCK).fetch(key(etag=None), origin) == payload(1)
            assert origin.calls == 1
            assert store.block_stats.unshared == 1


async def test_a_lease_that_is_never_published_lapses_into_an_origin_fetch(
    redis_server: RedisServer,
):
    """A winner that died: the others fetch themselves once the lease time has passed."""
    async with stores([redis_server.url], block_lease=0.3) as (store,):
        tier = store.block_tier(BLOCK)
        name = tier.key_for(key())
        await store._nodes[0].client.set(f"{name}:lease", "dead-mount", px=60_000)
        origin = Origin(payload(3))
        assert await tier.fetch(key(), origin) == payload(3)
        assert origin.calls == 1
        assert store.block_stats.wait_timeouts == 1


async def test_a_failed_winner_drops_its_lease_and_a_waiter_takes_over(redis_server: RedisServer):
    async with stores([redis_server.url], count=2) as (first, second):
        failing = Origin(b"", held=True)

        async def broken() -> bytes:
            await failing()
            raise StorageError("origin down")

        origin = Origin(payload(3))
        results: list[bytes] = []

        async def winner() -> None:
            with pytest.raises(StorageError):
                await first.block_tier(BLOCK).fetch(key(), broken)

        async def waiter() -> None:
            results.append(await second.block_tier(BLOCK).fetch(key(), origin))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(winner)
            await wait_until(lambda: failing.calls == 1)
            nursery.start_soon(waiter)
            await wait_until(lambda: second.block_stats.lease_waits == 1)
            failing.release.set()
        assert results == [payload(3)]
        assert second.block_stats.lapsed == 1 and second.block_stats.lease_wins == 1


async def test_redis_down_and_back_reads_stay_correct_with_one_warning(
    redis_server: RedisServer, caplog
):
    async def read_until(state: str, index: int) -> int:
        """Read new blocks until the breaker is in ``state`` (it changes with time)."""
        with trio.fail_after(10):
            while store.stats()["nodes"][0]["breaker"] != state:
                assert await tier.fetch(key(index), origin) == payload(0)
                index += 1
                await trio.sleep(0.02)
        return index

    async with stores([redis_server.url], breaker_cooldown=0.2) as (store,):
        tier = store.block_tier(BLOCK)
        origin = Origin(payload(0))
        assert await tier.fetch(key(0), origin) == payload(0)
        redis_server.kill()
        with caplog.at_level(logging.INFO, logger="pixxelfs.remote.shared_cache"):
            index = await read_until("open", 1)
            redis_server.start()
            index = await read_until("closed", index)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert origin.calls == index  # every read was served, from the origin while Redis was down
        # Back in use: the probe's block is shared again.
        again = Origin(payload(9))
        assert await tier.fetch(key(index - 1), again) == payload(0)
        assert again.calls == 0


async def test_a_stalled_redis_costs_one_deadline_not_a_failed_read(redis_server: RedisServer):
    import os
    import signal

    async with stores([redis_server.url]) as (store,):
        tier = store.block_tier(BLOCK)
        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            origin = Origin(payload(5))
            with trio.fail_after(5):
                assert await tier.fetch(key(5), origin) == payload(5)
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        assert store.errors >= 1 and store.block_stats.bypassed == 1


async def test_keys_spread_over_several_nodes(redis_server: RedisServer, tmp_path):
    other = RedisServer(redis_server.binary, tmp_path)
    other.start()
    try:
        async with stores([redis_server.url, other.url], count=2) as (first, second):
            for index in range(32):
                await first.block_tier(BLOCK).fetch(key(index), Origin(payload(index)))
            origin = Origin(b"never used")
            for index in range(32):
                assert await second.block_tier(BLOCK).fetch(key(index), origin) == payload(index)
            assert origin.calls == 0
            sizes = [await n.client.dbsize() for n in first._nodes]
            assert all(size > 4 for size in sizes) and sum(sizes) == 32
    finally:
        other.kill()


async def test_signed_urls_are_shared_and_a_refused_one_is_replaced(tmp_path):
    from tests.scale.redis_server import require_redis

    server = RedisServer(require_redis(), tmp_path, password="pw")
    server.start()
    created: list[str] = []

    class Api:
        async def wait_for_download(self, catalog_id: str) -> DownloadResource:
            created.append(catalog_id)
            url = f"http://storage/{catalog_id}?X-Amz-Expires=3600&n={len(created)}"
            return DownloadResource(id=f"d{len(created)}", status="success", signed_url=url)

    config = SharedCacheConfig((server.url,), share_signed_urls=True)
    try:
        async with (
            open_shared_store(config, SCOPE) as first,
            open_shared_store(config, SCOPE) as second,
        ):
            assert first is not None and second is not None
            a, b = first.downloads(Api()), second.downloads(Api())
            url_a = (await a.wait_for_download("c1")).signed_url
            assert (await b.wait_for_download("c1")).signed_url == url_a
            assert created == ["c1"]
            # b's resolver asks again: its URL was refused. It gets a new one, and so does a.
            renewed = (await b.wait_for_download("c1")).signed_url
            assert renewed != url_a and created == ["c1", "c1"]
            assert (await a.wait_for_download("c1")).signed_url == renewed
    finally:
        server.kill()
