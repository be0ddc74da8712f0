"""The read paths through a real mount: large parallel parts, whole COG tiles and rows of tiles,
stub reads.

Functional checks only (which requests storage saw, which bytes came back), never timings;
rasterio reading random windows checks the rows-of-tiles requests end to end.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from pixxelfs.emulator import Emulator, EmulatorConfig, running_emulator
from pixxelfs.remote.cog import EDGE, HEADER_PROBE, parse_layout
from tests.fuse.util import Mount, mount, require_fuse, unmounted_after

MIB = 1 << 20


def _one_scene(
    tmp_path_factory, name: str, *, seed: int, size: int, bands: int
) -> AbstractContextManager[Emulator]:
    """An emulator with one scene whose reflectance GeoTIFF (size x size x bands) is STORED."""
    config = EmulatorConfig(
        seed=seed,
        scenes=1,
        width=size,
        height=size,
        bands=bands,
        compression="stored",
        data_dir=tmp_path_factory.mktemp(name),
    )
    return running_emulator(config)


@pytest.fixture(scope="module")
def big_emulator(tmp_path_factory) -> Iterator[Emulator]:
    """One scene whose reflectance GeoTIFF is a 16 MiB STORED member (1024 x 1024 x 8)."""
    with _one_scene(tmp_path_factory, "speed-data", seed=4, size=1024, bands=8) as emu:
        yield emu


def _mounted(emu: Emulator, tmp_path: Path, *extra: str) -> Mount:
    require_fuse()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    cache = tmp_path / "cache"
    return mount(mountpoint, emu.base_url, emu.api_key, "--cache-dir", str(cache), *extra)


def _geotiff(m: Mount) -> Path:
    return next(p for p in m.mountpoint.rglob("*_SR.tif"))


def _member_bytes(emu: Emulator) -> tuple[bytes, int]:
    """The GeoTIFF's bytes and its data offset in the package."""
    package = emu.package_path(emu.catalog_ids()[0])
    with zipfile.ZipFile(package) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("_SR.tif"))
        data = archive.read(info)
    with package.open("rb") as raw:
        raw.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(raw.read(2), "little") for _ in range(2))
    return data, info.header_offset + 30 + name_len + extra_len


def test_sequential_copy_uses_large_parallel_parts(big_emulator, tmp_path) -> None:
    data, _ = _member_bytes(big_emulator)
    with unmounted_after(_mounted(big_emulator, tmp_path), clean_log=True) as m:
        path = _geotiff(m)
        big_emulator.reset_stats()
        shutil.copyfile(path, tmp_path / "copy.tif")
        gets = big_emulator.stats()["storage_gets"]
    digest = hashlib.sha256((tmp_path / "copy.tif").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(data).hexdigest()
    sizes = [g["end"] - g["start"] + 1 for g in gets if g["start"] is not None]
    assert max(sizes) >= 4 * MIB  # parts span several 1 MiB blocks
    assert len(sizes) < len(data) // MIB  # fewer requests than blocks
    assert sum(sizes) < len(data) + 4 * MIB  # and nothing fetched twice


def test_random_reads_fetch_whole_tiles(big_emulator, tmp_path) -> None:
    data, start = _member_bytes(big_emulator)
    layout = parse_layout(data[:HEADER_PROBE], len(data))
    assert layout is not None
    full = layout.levels[0]
    tiles = [9, 2, 14]  # tiles beyond the header probe, out of order
    with unmounted_after(_mounted(big_emulator, tmp_path), clean_log=True) as m:
        path = _geotiff(m)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.read(fd, 16)  # the open has fetched the header and prefetched the overviews
            big_emulator.reset_stats()
            for tile in tiles:
                offset = full.offsets[tile]
                got = os.pread(fd, 4096, offset + 1000)
                assert got == data[offset + 1000 : offset + 5096]
        finally:
            os.close(fd)
        gets = big_emulator.stats()["storage_gets"]
    fetched = [(g["start"] - start, g["end"] + 1 - start) for g in gets]
    # Leave out the open's background prefetch of the overviews (they precede full resolution).
    fetched = [(first, end) for first, end in fetched if end > min(full.offsets)]
    assert len(fetched) <= len(tiles)
    # Each request is whole pieces, perhaps after the end of the piece in front (a page-aligned
    # kernel read starts there), never that whole piece.
    for first, end in fetched:
        before = layout.piece_at(first)
        assert first == before[0] or before[1] - first <= EDGE
        assert layout.piece_at(end - 1)[1] == end
    wanted = [layout.piece_at(full.offsets[tile]) for tile in tiles]
    assert sum(end - first for first, end in fetched) <= sum(b - a + EDGE for a, b in wanted)
    for tile in tiles:
        piece = layout.piece_at(full.offsets[tile])
        assert any(first <= piece[0] and piece[1] <= end for first, end in fetched)


def test_the_kernel_readahead_stays_raised_once_the_mount_answers(big_emulator, tmp_path) -> None:
    """The kernel caps a FUSE mount's readahead when the answer to INIT arrives: raised
    before that, it fell back to 128 KiB and every read reached the daemon in 128 KiB pieces."""
    if os.geteuid() != 0:
        pytest.skip("raising a mount's readahead needs root")
    with unmounted_after(_mounted(big_emulator, tmp_path), clean_log=True) as m:
        device = os.stat(m.mountpoint).st_dev
        bdi = Path("/sys/class/bdi") / f"{os.major(device)}:{os.minor(device)}"
        assert (bdi / "read_ahead_kb").read_text().strip() == "1024"


def test_stub_reads_return_zeros_without_storage(big_emulator, tmp_path) -> None:
    data, _ = _member_bytes(big_emulator)
    with unmounted_after(_mounted(big_emulator, tmp_path, "--stub-reads"), clean_log=True) as m:
        path = _geotiff(m)
        big_emulator.reset_stats()
        content = path.read_bytes()
        gets = big_emulator.stats()["storage_gets"]
    assert len(content) == len(data) and content == bytes(len(data))
    assert len(gets) <= 2  # what the open fetches: the GeoTIFF header, the small overviews


@pytest.fixture(scope="module")
def wide_emulator(tmp_path_factory) -> Iterator[Emulator]:
    """One scene with a 128 MiB GeoTIFF of 2 MiB tiles, 8 to a row (2048 x 2048 x 16): a row
    of tiles is 16 MiB, so moving to the next row is a seek, as in real scenes."""
    with _one_scene(tmp_path_factory, "wide-data", seed=6, size=2048, bands=16) as emu:
        yield emu


def test_gis_windows_read_rows_of_tiles_per_request(wide_emulator, tmp_path) -> None:
    """rasterio reading random windows through the mount: the bytes GDAL decodes are the
    original's, and rows of adjacent tiles cost one request each, not one per tile."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.windows import Window

    package = wide_emulator.package_path(wide_emulator.catalog_ids()[0])
    with zipfile.ZipFile(package) as archive:
        name = next(i.filename for i in archive.infolist() if i.filename.endswith("_SR.tif"))
    rng = random.Random(3)
    windows = [Window(rng.randrange(0, 1792), rng.randrange(0, 1792), 256, 256) for _ in range(16)]
    tiles = {
        (row, col) for w in windows for row in _spanned(w.row_off) for col in _spanned(w.col_off)
    }
    with rasterio.open(f"/vsizip/{package}/{name}") as original:
        expected = [original.read(1, window=w) for w in windows]
        tile_bytes = original.block_size(1, 0, 0)  # pixel-interleaved: every band's pixels
    with unmounted_after(_mounted(wide_emulator, tmp_path), clean_log=True) as m:
        path = _geotiff(m)
        with rasterio.open(path) as src:
            src.read(1, window=Window(0, 0, 1, 1))  # the open and the first tile, not counted
            wide_emulator.reset_stats()
            got = [src.read(1, window=w) for w in windows]
        gets = wide_emulator.stats()["storage_gets"]
    assert all((a == b).all() for a, b in zip(got, expected, strict=True))
    sizes = [g["end"] + 1 - g["start"] for g in gets]
    # Rows of tiles merged: 31 requests for 38 tiles here; one per tile or more (44) without.
    assert len(sizes) <= len(tiles) * 85 // 100
    assert max(sizes) <= 16 * MIB + 4096  # never more than a row of a few tiles at once
    # The page the kernel reads in front of a row's first tile does not fetch the tile it ends
    # (113 MB for 80 MB of tiles here; 123 MB when it did).
    assert sum(sizes) <= 3 * len(tiles) * tile_bytes // 2


def _spanned(offset: int, size: int = 256, tile: int = 256) -> range:
    return range(offset // tile, (offset + size - 1) // tile + 1)
