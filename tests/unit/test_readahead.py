"""Access-pattern detection, window doubling, the memory budget, and parallel range parts."""

from __future__ import annotations

import itertools
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from pixxelfs.config import MountConfig
from pixxelfs.mount import block_cache_bytes, read_paths
from pixxelfs.remote.block_cache import BlockCache
from pixxelfs.remote.package import RemotePackage
from pixxelfs.remote.readahead import (
    MIB,
    AccessPattern,
    MemoryBudget,
    PieceRuns,
    ReadaheadPolicy,
    ReadPaths,
)
from tests.unit.test_remote_member import payload
from tests.unit.test_remote_package import build
from tests.unit.test_remote_storage import ObjectServer, make_source

KIB = 1024
POLICY = ReadaheadPolicy(initial_window=MIB, max_window=16 * MIB, random_threshold=8 * MIB)


def stream(pattern: AccessPattern, reads: list[int], size: int = 128 * KIB) -> list[int]:
    """Read at each offset; return the readahead sizes asked for."""
    return [pattern.observe(offset, size).ahead_size for offset in reads]


def test_sequential_reads_stream_after_the_initial_window_and_double() -> None:
    pattern = AccessPattern(POLICY, 1 << 40)
    offsets = list(range(0, 40 * MIB, 128 * KIB))
    advice = [pattern.observe(offset, 128 * KIB) for offset in offsets]
    assert not any(a.streaming for a in advice[:7])  # 7 x 128 KiB < 1 MiB
    asked = [(a.ahead_start, a.ahead_size) for a in advice if a.ahead_size]
    assert asked[0] == (MIB, MIB)
    # Ahead ranges are contiguous, never overlapping, and grow to the maximum window.
    assert all(s1 + n1 == s2 for (s1, n1), (s2, _) in itertools.pairwise(asked))
    assert pattern.window == POLICY.max_window
    assert max(size for _, size in asked) <= POLICY.max_window
    assert pattern.seeks == 0 and not pattern.random


def test_out_of_order_reads_within_tolerance_stay_sequential() -> None:
    pattern = AccessPattern(POLICY, 1 << 40)
    chunk = 128 * KIB
    order = [0, 2, 1, 3, 5, 4, 7, 6, 9, 8, 10, 11, 13, 12, 14, 15]  # kernel async readahead
    advice = [pattern.observe(n * chunk, chunk) for n in order]
    assert pattern.seeks == 0
    assert advice[-1].streaming


def test_random_reads_never_read_ahead_until_a_long_run() -> None:
    pattern = AccessPattern(POLICY, 1 << 40)
    for offset in (0, 300 * MIB, 100 * MIB, 700 * MIB, 50 * MIB):
        assert not pattern.observe(offset, 256 * KIB).streaming
        assert not pattern.observe(offset + 256 * KIB, 1).streaming
    assert pattern.random and pattern.seeks == 4
    # A 4 MiB tile read in 128 KiB pieces: a random handle does not stream past it.
    tile = list(range(900 * MIB, 904 * MIB, 128 * KIB))
    assert not any(pattern.observe(offset, 128 * KIB).streaming for offset in tile)
    # A long run (cp after some seeks) streams again, with a fresh window.
    run = list(range(2000 * MIB, 2016 * MIB, 128 * KIB))
    asked = stream(pattern, run)
    assert not any(asked[:63]) and asked[63]  # streams once 8 MiB were read in a row
    assert pattern.observe(2016 * MIB, 128 * KIB).streaming


@pytest.mark.parametrize("knows_tiles", [False, True])
def test_rows_of_two_large_tiles_stream_only_without_the_tile_runs(knows_tiles: bool) -> None:
    """A GIS window's row of two 4 MiB tiles is 8 MiB in a row: at the random threshold."""
    pattern = AccessPattern(POLICY, 1 << 40)
    rows = [1000, 200, 600, 50, 800, 400]
    asked = []
    for row in rows:
        if knows_tiles:
            pattern.tile_run = 8 * MIB + 16
        asked.append(stream(pattern, list(range(row * MIB, row * MIB + 8 * MIB + 16, 128 * KIB))))
    assert any(asked[0])  # before the first seek, any 1 MiB in a row streams
    assert any(map(any, asked[1:])) != knows_tiles


def test_piece_runs_fetch_a_typical_row_at_the_start_of_each_run() -> None:
    runs = PieceRuns()
    tile = 4 * MIB
    assert runs.observe(0, tile) == 0  # nothing known yet
    assert runs.observe(tile, 2 * tile) == 0  # the run goes on
    assert runs.observe(0, tile) == 0  # out of order within the run
    assert runs.observe(10 * tile, 11 * tile) == 1  # a new run: fetch one more piece
    assert runs.observe(11 * tile, 12 * tile) == 0
    assert runs.typical_bytes == 2 * tile
    for start in (30, 50, 70):  # single tiles from now on: the median follows
        runs.observe(start * tile, (start + 1) * tile)
    assert runs.observe(90 * tile, 91 * tile) == 0 and runs.typical_bytes == tile


def test_readahead_stops_at_the_end_of_the_file() -> None:
    pattern = AccessPattern(POLICY, 3 * MIB)
    asked = [pattern.observe(o, 128 * KIB) for o in range(0, 3 * MIB, 128 * KIB)]
    assert max(a.ahead_start + a.ahead_size for a in asked) == 3 * MIB


async def test_budget_makes_a_part_wait_for_room() -> None:
    budget = MemoryBudget(10)
    order: list[str] = []

    async def hold(name: str, size: int, release: trio.Event) -> None:
        async with budget.reserve(size):
            order.append(name)
            await release.wait()

    first, second = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, "a", 8, first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(hold, "b", 8, second)
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a"] and budget.waits == 1
        first.set()
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["a", "b"]
        second.set()
    assert budget.in_use == 0 and budget.peak == 8


@pytest.fixture
async def cache() -> AsyncIterator[BlockCache]:
    async with BlockCache.open(max_bytes=8 << 20, block_size=8 * KIB) as block_cache:
        yield block_cache


async def test_a_window_is_fetched_as_parallel_parts_within_the_budget(cache) -> None:
    data = build({"scene/image.tif": payload(600_000, seed=9)}, method=zipfile.ZIP_STORED)
    server = ObjectServer(data)
    source, _ = make_source(server, probe_bytes=4096)
    paths = ReadPaths(MemoryBudget(64 * KIB), POLICY, part_size=32 * KIB)
    package = RemotePackage(source, cache, paths=paths)
    await package.size()
    before = len(server.requests)
    package.prefetch(8 * KIB, 256 * KIB)
    await trio.testing.wait_all_tasks_blocked()
    ranges = [r.headers["range"] for r in server.requests[before:]]
    assert len(ranges) == 8  # 256 KiB in 32 KiB parts, none overlapping
    assert sorted(ranges) == sorted({r for r in ranges})
    assert paths.ahead_parts == 8 and paths.part_bytes == 256 * KIB
    assert paths.budget.peak <= 64 * KIB and paths.budget.in_use == 0
    before = len(server.requests)
    assert await package.read(8 * KIB, 256 * KIB) == data[8 * KIB : 264 * KIB]
    assert len(server.requests) == before  # everything came from the parts


@pytest.mark.parametrize("size_mib", [4, 16, 512, 4096])
def test_parts_in_flight_and_write_behind_come_out_of_the_memory_cache_size(size_mib: int) -> None:
    config = MountConfig(
        mountpoint=Path("/nonexistent"),
        api_url="http://127.0.0.1:1",
        api_key="key",
        memory_cache_size=size_mib << 20,
    )
    paths = read_paths(config)
    blocks, behind = block_cache_bytes(config, paths)
    assert 0 < blocks <= config.memory_cache_size and behind >= config.block_size
    if size_mib >= 16:  # small caches keep a quarter for blocks whatever the parts need
        assert blocks + behind + paths.budget.limit == config.memory_cache_size
