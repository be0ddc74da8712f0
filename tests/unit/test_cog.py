"""GeoTIFF layout parsing against real COGs written by GDAL, and tile-exact package reads."""

from __future__ import annotations

import io
import itertools
import struct
import zipfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import trio
import trio.testing
from affine import Affine
from rasterio.crs import CRS

from pixxelfs.remote.block_cache import BlockCache, BlockKey, Fetch
from pixxelfs.remote.cog import EDGE, HEADER_PROBE, NeedMoreBytes, PieceMap, parse_layout
from pixxelfs.remote.member import MemberReader
from pixxelfs.remote.package import RemotePackage
from pixxelfs.remote.readahead import MemberHandle, ReadaheadPolicy
from pixxelfs.remote.tiers import BlockTier
from tests.unit.test_remote_storage import ObjectServer, make_source


def write_cog(path: Path, *, size: int = 1024, bands: int = 2, **options: str) -> bytes:
    """A tiled COG of noise (incompressible, so tile sizes are predictable) with overviews."""
    plain = path.with_suffix(".plain.tif")
    rng = np.random.default_rng(5)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": bands,
        "crs": CRS.from_epsg(32643),
        "transform": Affine(30.0, 0, 500_000, 0, -30.0, 2_000_000),
    }
    with rasterio.open(plain, "w", **profile, dtype="uint16") as out:
        out.write(rng.integers(1, 60000, size=(bands, size, size), dtype=np.uint16))
    rasterio.shutil.copy(plain, path, driver="COG", BLOCKSIZE=256, **options)
    return path.read_bytes()


@pytest.fixture(scope="module")
def cog(tmp_path_factory) -> bytes:
    return write_cog(tmp_path_factory.mktemp("cog") / "image.tif")


def gdal_tile(path: Path, level: int, column: int, row: int) -> tuple[int, int]:
    """GDAL's own (offset, size) of a tile of band 1 of an overview level (0 = full)."""
    with rasterio.open(path, OVERVIEW_LEVEL=level - 1) if level else rasterio.open(path) as src:
        offset = src.get_tag_item(f"BLOCK_OFFSET_{column}_{row}", "TIFF", bidx=1)
        size = src.get_tag_item(f"BLOCK_SIZE_{column}_{row}", "TIFF", bidx=1)
    return int(offset), int(size)


def test_levels_and_tiles_match_gdal(cog: bytes, tmp_path: Path) -> None:
    path = tmp_path / "image.tif"
    path.write_bytes(cog)
    layout = parse_layout(cog[:HEADER_PROBE], len(cog))
    assert layout is not None
    images = [level for level in layout.levels if not level.is_mask]
    assert [(lv.width, lv.height) for lv in images] == [(1024, 1024), (512, 512), (256, 256)]
    assert len(images[0].offsets) == 16  # 4 x 4 tiles, pixel-interleaved
    full = images[0]
    assert (full.offsets[0], full.byte_counts[0]) == gdal_tile(path, 0, 0, 0)
    assert (full.offsets[5], full.byte_counts[5]) == gdal_tile(path, 0, 1, 1)
    assert (images[1].offsets[3], images[1].byte_counts[3]) == gdal_tile(path, 1, 1, 1)


def test_pieces_partition_the_file_and_hold_whole_tiles(cog: bytes) -> None:
    layout = parse_layout(cog[:HEADER_PROBE], len(cog))
    assert layout is not None
    assert layout.piece_at(0) == (0, HEADER_PROBE)
    pairs = list(zip(layout.piece_starts, layout.piece_ends, strict=True))
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(pairs))
    for level in layout.levels:
        for offset, count in zip(level.offsets, level.byte_counts, strict=True):
            if offset >= HEADER_PROBE:
                start, end = layout.piece_at(offset)
                assert start == offset and offset + count <= end <= offset + count + 64
                assert layout.piece_at(offset + count - 1) == (start, end)


def test_smallest_overviews_come_first_and_merge(cog: bytes) -> None:
    layout = parse_layout(cog[:HEADER_PROBE], len(cog))
    assert layout is not None
    smallest = min(layout.levels, key=lambda lv: lv.width)
    ranges = layout.overview_ranges(smallest.data_bytes)
    assert len(ranges) == 1  # one tile level, contiguous: one request
    start, end = ranges[0]
    assert end - start >= smallest.data_bytes
    assert layout.overview_ranges(smallest.data_bytes - 1) == []


def test_bigtiff_and_big_endian_parse(tmp_path: Path) -> None:
    data = write_cog(tmp_path / "big.tif", size=512, bands=1, BIGTIFF="YES")
    layout = parse_layout(data[:HEADER_PROBE], len(data))
    assert layout is not None and layout.levels[0].width == 512
    swapped = _big_endian_header(width=300)
    assert parse_layout(swapped, 10_000).levels[0].width == 300


def _big_endian_header(width: int) -> bytes:
    """A minimal big-endian classic TIFF: one IFD, one strip."""
    entries = [(256, 3, 1, width << 16), (257, 3, 1, 10 << 16), (273, 4, 1, 100), (279, 4, 1, 50)]
    ifd = struct.pack(">H", len(entries))
    ifd += b"".join(struct.pack(">HHII", *entry) for entry in entries) + struct.pack(">I", 0)
    return b"MM" + struct.pack(">HI", 42, 8) + ifd


def test_truncated_ifds_ask_for_more_and_garbage_is_refused(cog: bytes) -> None:
    with pytest.raises(NeedMoreBytes) as more:
        parse_layout(cog[:200], len(cog))
    assert more.value.size > 200
    assert parse_layout(b"PK\x03\x04" + cog[4:HEADER_PROBE], len(cog)) is None
    broken = bytearray(cog[:HEADER_PROBE])
    broken[4:8] = struct.pack("<I", len(cog) + 10)  # first IFD beyond the end of the file
    assert parse_layout(bytes(broken), len(cog)) is None


@pytest.fixture
async def cache() -> AsyncIterator[BlockCache]:
    async with BlockCache.open(max_bytes=64 << 20, block_size=1 << 20) as block_cache:
        yield block_cache


def stored_zip(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def ranges_of(server: ObjectServer, skip: int) -> list[tuple[int, int]]:
    out = []
    for request in server.requests[skip:]:
        first, last = request.headers["range"].removeprefix("bytes=").split("-")
        out.append((int(first), int(last) + 1))
    return out


async def opened_cog(
    cog: bytes, cache: BlockCache, tiers: Sequence[BlockTier] = ()
) -> tuple[ObjectServer, MemberReader]:
    """A package holding ``cog``, served with request logging, and its opened reader (the
    overview prefetch done)."""
    server = ObjectServer(stored_zip("scene/image.tif", cog))
    source, _ = make_source(server, probe_bytes=4096)
    remote = RemotePackage(source, cache, tiers=tiers)
    reader = await remote.open_member((await remote.index()).members[0])
    await trio.testing.wait_all_tasks_blocked()
    return server, reader


async def test_random_reads_fetch_whole_tiles_once(cog: bytes, cache: BlockCache) -> None:
    package = stored_zip("scene/image.tif", cog)
    server = ObjectServer(package)
    source, _ = make_source(server, probe_bytes=4096)
    remote = RemotePackage(source, cache)
    member = (await remote.index()).members[0]
    before = len(server.requests)
    reader = await remote.open_member(member)
    await trio.testing.wait_all_tasks_blocked()  # the overview prefetch has finished
    start = reader.data_start
    opened = ranges_of(server, before)
    head_start, head_end = opened[0]  # local header, TIFF header and IFDs: one exact request
    assert head_start == member.header_offset and start + HEADER_PROBE < head_end
    assert head_end - head_start <= HEADER_PROBE + 1100
    overviews = reader.pieces.layout.levels[1:]
    (first, end), *rest = opened[1:]  # then the overviews, smallest first: one merged request
    assert first == head_end and not rest
    last = max(o + c for lv in overviews for o, c in zip(lv.offsets, lv.byte_counts, strict=True))
    assert 0 <= end - (start + last) <= 64  # a tile's piece holds the next tile's leader
    layout = reader.pieces.layout
    full = layout.levels[0]
    offset, count = full.offsets[5], full.byte_counts[5]
    before = len(server.requests)
    assert await reader.read(offset + 100, 5000, exact=True) == cog[offset + 100 : offset + 5100]
    piece_start, piece_end = layout.piece_at(offset)
    assert ranges_of(server, before) == [(start + piece_start, start + piece_end)]
    assert piece_end - piece_start - count <= 64
    before = len(server.requests)
    assert await reader.read(offset, count, exact=True) == cog[offset : offset + count]
    assert await reader.read(0, 16_384, exact=True) == cog[:16_384]
    assert len(server.requests) == before  # the tile and the header are cached


async def test_rows_of_tiles_are_fetched_one_row_per_request(cog: bytes, cache: BlockCache) -> None:
    """GDAL reads a window's tiles row by row; once a handle's rows are known to hold two
    adjacent tiles, each new row costs one request (as GDAL's own merged range)."""
    server, reader = await opened_cog(cog, cache)
    # Tiles of 256 KiB here: a small tolerance stands in for the 4 MiB tiles of real scenes.
    handle = MemberHandle(reader, ReadaheadPolicy(tolerance=16 * 1024))
    full = reader.pieces.layout.levels[0]
    per_row = []
    for row, column in [(0, 0), (2, 1), (1, 2), (3, 0), (0, 2)]:
        before = len(server.requests)
        first = row * 4 + column
        for tile in (first, first + 1):
            offset, count = full.offsets[tile], full.byte_counts[tile]
            half = count // 2  # the kernel splits one pread into several reads
            got = await handle.read(offset, half) + await handle.read(offset + half, count - half)
            assert got == cog[offset : offset + count]
        per_row.append(ranges_of(server, before))
    assert [len(ranges) for ranges in per_row] == [2, 1, 1, 1, 1]
    start = reader.data_start
    for (row, column), [(first, end)] in zip([(2, 1), (1, 2)], per_row[1:3], strict=True):
        tile = row * 4 + column
        assert first == start + reader.pieces.layout.piece_at(full.offsets[tile])[0]
        assert end == start + reader.pieces.layout.piece_at(full.offsets[tile + 1])[1]
    assert abs(handle.stats()["tile_run"] - (end - first)) <= 2 * 64  # two tiles and leaders


class DiskTier:
    """A tier that keeps what it is given and says so (the disk cache), and a way to drop
    units from the memory cache above it (evicted while the disk keeps them)."""

    def __init__(self) -> None:
        self.kept: dict[BlockKey, bytes] = {}

    async def fetch(self, key: BlockKey, below: Fetch) -> bytes:
        if key not in self.kept:
            self.kept[key] = await below()
        return self.kept[key]

    def holds(self, key: BlockKey) -> bool:
        return key in self.kept

    def forget_above(self, cache: BlockCache) -> None:
        for key in self.kept:
            cache.discard(key)


@pytest.mark.parametrize("kept_in", ["memory", "disk"])
async def test_tiles_already_cached_as_blocks_cost_no_request(
    cog: bytes, cache: BlockCache, kept_in: str
) -> None:
    """After a sequential read (``cp``, ``prefetch``) cached the member as blocks, a GIS
    reader's tile reads are served from those blocks, not fetched again as exact ranges; also
    once the memory cache let the blocks go and only the disk tier keeps them."""
    disk = DiskTier()
    server, reader = await opened_cog(cog, cache, [disk] if kept_in == "disk" else [])
    assert await reader.read(0, len(cog)) == cog  # the streaming path: blocks
    await trio.testing.wait_all_tasks_blocked()
    disk.forget_above(cache)
    before = len(server.requests)
    full = reader.pieces.layout.levels[0]
    for tile in (3, 9, 14):
        offset, count = full.offsets[tile], full.byte_counts[tile]
        got = await reader.read(offset, count, exact=True, more_pieces=1)
        assert got == cog[offset : offset + count]
    assert len(server.requests) == before


async def test_the_row_below_is_fetched_with_the_row_once_windows_stack(
    cog: bytes, cache: BlockCache
) -> None:
    """Windows of 2 x 2 tiles: GDAL reads the lower row right after the upper one. Once the
    handle has seen that, the lower row is fetched (one request) while the upper one is."""
    server, reader = await opened_cog(cog, cache)
    handle = MemberHandle(reader, ReadaheadPolicy(tolerance=16 * 1024))
    full = reader.pieces.layout.levels[0]
    assert full.tiles_across == 4
    requests = []
    # Windows that share no tile, and never start where the previous one ended in the file.
    for row, column in [(0, 0), (2, 2), (2, 0), (0, 2)]:
        counts = []
        for upper in (row, row + 1):
            before = len(server.requests)
            for tile in (upper * 4 + column, upper * 4 + column + 1):
                offset, count = full.offsets[tile], full.byte_counts[tile]
                assert await handle.read(offset, count) == cog[offset : offset + count]
            await trio.testing.wait_all_tasks_blocked()
            counts.append(len(server.requests) - before)
        requests.append(counts)
    # First window: nothing known (2 requests for its upper row, 1 for the lower one).
    assert requests == [[2, 1], [2, 0], [2, 0], [2, 0]]
    assert handle.stats()["rows_ahead"] == 3


async def test_going_over_kept_tiles_again_fetches_no_row_below(
    cog: bytes, cache: BlockCache
) -> None:
    """A reader going over windows read before (a second GIS process, some of whose reads the
    page cache answers) costs no request: not for its tiles, nor for a row below them."""
    server, reader = await opened_cog(cog, cache)
    handle = MemberHandle(reader, ReadaheadPolicy(tolerance=16 * 1024))
    full = reader.pieces.layout.levels[0]

    async def read_row(row: int, column: int) -> None:
        for tile in (row * 4 + column, row * 4 + column + 1):
            offset, count = full.offsets[tile], full.byte_counts[tile]
            assert await handle.read(offset, count) == cog[offset : offset + count]
        await trio.testing.wait_all_tasks_blocked()

    for row, column in [(0, 0), (2, 2), (0, 2)]:  # windows of 2 x 2 tiles: the handle learns
        await read_row(row, column)
        await read_row(row + 1, column)
    ahead, before = handle.stats()["rows_ahead"], len(server.requests)
    await read_row(1, 0)  # the first window's lower row alone; the row below was never read
    assert len(server.requests) == before
    assert handle.stats()["rows_ahead"] == ahead


def test_a_read_that_grazes_a_tiles_end_is_for_the_next_tile(cog: bytes) -> None:
    pieces = PieceMap(parse_layout(cog[:HEADER_PROBE], len(cog)), base=0)
    full = pieces.layout.levels[0]
    front, tile = pieces.piece_at(full.offsets[5]), pieces.piece_at(full.offsets[6])
    page = tile[0] - 3000  # a kernel read from the start of the page the tile begins in
    assert pieces.piece_read(page, tile[1]) == tile
    assert pieces.piece_read(page, tile[0]) == front  # it does not run on: the tile in front
    assert pieces.piece_read(tile[0] - EDGE - 1, tile[1]) == front  # more than a graze
    assert pieces.piece_read(tile[0], tile[1]) == tile


async def test_a_read_from_the_page_in_front_fetches_only_the_end_of_that_tile(
    cog: bytes, cache: BlockCache
) -> None:
    """The kernel reads a tile from the start of the page it begins in: of the tile in front,
    only its end is fetched (in the same request), not the whole tile."""
    server, reader = await opened_cog(cog, cache)
    handle = MemberHandle(reader, ReadaheadPolicy(tolerance=16 * 1024))
    layout, start = reader.pieces.layout, reader.data_start
    full = layout.levels[0]
    offset, count = full.offsets[6], full.byte_counts[6]
    page = offset - 3000
    before = len(server.requests)
    assert await handle.read(page, offset + count - page) == cog[page : offset + count]
    front = layout.piece_at(full.offsets[5])
    assert ranges_of(server, before) == [
        (start + front[1] - EDGE, start + layout.piece_at(offset)[1])
    ]
    before = len(server.requests)  # the tile in front, read for itself, is fetched whole
    offset, count = full.offsets[5], full.byte_counts[5]
    assert await handle.read(offset, count) == cog[offset : offset + count]
    assert ranges_of(server, before) == [(start + front[0], start + front[1])]


async def test_a_read_from_the_page_in_front_fetches_only_what_the_disk_lacks(
    cog: bytes, cache: BlockCache
) -> None:
    """The kernel's read from the page in front of a tile: the tile and the tile in front are
    read from the disk tier when it keeps them (gone from memory), and only the rest is
    fetched."""
    disk = DiskTier()
    server, reader = await opened_cog(cog, cache, [disk])
    layout, start = reader.pieces.layout, reader.data_start
    full = layout.levels[0]
    (front_at, front_count), (offset, count) = [
        (full.offsets[t], full.byte_counts[t]) for t in (5, 6)
    ]
    page = offset - 3000
    assert await reader.read(offset, count, exact=True) == cog[offset : offset + count]
    await trio.testing.wait_all_tasks_blocked()
    disk.forget_above(cache)
    before = len(server.requests)
    assert await reader.read(page, offset + count - page, exact=True) == cog[page : offset + count]
    front = layout.piece_at(front_at)
    assert ranges_of(server, before) == [(start + front[1] - EDGE, start + front[1])]

    front_bytes = cog[front_at : front_at + front_count]
    assert await reader.read(front_at, front_count, exact=True) == front_bytes
    await trio.testing.wait_all_tasks_blocked()
    disk.forget_above(cache)
    before = len(server.requests)
    assert await reader.read(page, offset + count - page, exact=True) == cog[page : offset + count]
    assert len(server.requests) == before
