"""RemotePackage over the whole remote stack (resolver, storage, block cache) on MockTransport."""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
import trio.testing

from pixxelfs.errors import CorruptPackageError, PackageChangedError
from pixxelfs.remote.block_cache import BlockCache
from pixxelfs.remote.package import RemotePackage
from tests.unit.test_remote_member import payload
from tests.unit.test_remote_storage import ObjectServer, make_source

IMAGE = payload(200_000, seed=3)
FILES = {
    "scene/image.tif": IMAGE,
    "scene/metadata.xml": b"<xml/>" * 100,
    **{f"scene/qa/{n:03d}.txt": f"{n}".encode() for n in range(50)},
}


def build(files: dict[str, bytes], *, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
async def cache() -> AsyncIterator[BlockCache]:
    async with BlockCache.open(max_bytes=1 << 20, block_size=8192) as block_cache:
        yield block_cache


def remote(server: ObjectServer, cache: BlockCache, probe_bytes: int = 4096) -> RemotePackage:
    source, _ = make_source(server, probe_bytes=probe_bytes)
    return RemotePackage(source, cache)


async def test_index_costs_one_request_when_the_tail_holds_the_directory(cache) -> None:
    package = build(FILES)
    server = ObjectServer(package)
    index = await remote(server, cache, probe_bytes=len(package)).index()
    assert [m.name for m in index.members] == list(FILES)
    assert len(server.requests) == 1


async def test_index_costs_two_requests_for_a_large_directory(cache) -> None:
    many = {f"f{n:05d}": b"" for n in range(3000)}
    package = build(many, method=zipfile.ZIP_STORED)
    server = ObjectServer(package)
    pkg = remote(server, cache, probe_bytes=1 << 17)
    index = await pkg.index()
    assert len(index.members) == 3000
    assert len(server.requests) == 2
    assert await pkg.index() is index and len(server.requests) == 2


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
async def test_members_read_back_exactly(cache, method: int) -> None:
    server = ObjectServer(build(FILES, method=method))
    pkg = remote(server, cache)
    for member in (await pkg.index()).members:
        reader = await pkg.open_member(member)
        assert await reader.read(0, member.size + 10) == FILES[member.name]
    image = next(m for m in (await pkg.index()).members if m.name == "scene/image.tif")
    reader = await pkg.open_member(image)
    assert await pkg.open_member(image) is reader
    assert await reader.read(123_457, 5000) == IMAGE[123_457:128_457]


async def test_package_reads_are_block_aligned_and_cached(cache) -> None:
    data = build(FILES, method=zipfile.ZIP_STORED)
    server = ObjectServer(data)
    pkg = remote(server, cache)
    assert await pkg.read(10_000, 20_000) == data[10_000:30_000]
    fetched = len(server.requests)
    assert fetched == 1 + 1  # the probe, then blocks 1..3 as one part
    assert await pkg.read(16_384, 100) == data[16_384:16_484]
    assert len(server.requests) == fetched
    assert await pkg.read(len(data) - 5, 100) == data[-5:]
    assert await pkg.read(len(data), 100) == b""
    ranges = {r.headers["range"] for r in server.requests[1:]}
    assert "bytes=8192-32767" in ranges


async def test_concurrent_reads_of_one_block_fetch_it_once(cache) -> None:
    data = build(FILES, method=zipfile.ZIP_STORED)
    server = ObjectServer(data)
    pkg = remote(server, cache)
    await pkg.size()
    results: list[bytes] = []

    async def read() -> None:
        results.append(await pkg.read(40_000, 100))

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(read)
    assert results == [data[40_000:40_100]] * 6
    assert len(server.requests) == 2
    assert cache.stats().coalesced + cache.stats().hits == 5


async def test_package_replaced_under_an_open_reader_is_stale(cache) -> None:
    data = build(FILES, method=zipfile.ZIP_STORED)
    server = ObjectServer(data)
    pkg = remote(server, cache)
    assert await pkg.read(0, 10) == data[:10]
    server.replace(build({"other": b"x" * 50_000}, method=zipfile.ZIP_STORED), '"v2"')
    with pytest.raises(PackageChangedError):
        await pkg.read(30_000, 10)
    assert await pkg.read(0, 10) == data[:10]  # cached bytes of the pinned version


def with_flags(package: bytes, *, method: int | None = None, flags: int | None = None) -> bytes:
    patched = bytearray(package)
    central = patched.index(b"PK\x01\x02")
    if flags is not None:
        struct.pack_into("<H", patched, central + 8, flags)
    if method is not None:
        struct.pack_into("<H", patched, central + 10, method)
    return bytes(patched)


@pytest.mark.parametrize(
    ("patch", "message"),
    [({"flags": 1}, "encrypted"), ({"method": 12}, "compression method 12")],
)
async def test_unreadable_members_are_refused_clearly(cache, patch, message: str) -> None:
    server = ObjectServer(with_flags(build(FILES, method=zipfile.ZIP_STORED), **patch))
    pkg = remote(server, cache)
    first = (await pkg.index()).members[0]
    with pytest.raises(CorruptPackageError, match=message):
        await pkg.open_member(first)


async def test_not_a_zip_is_corrupt(cache) -> None:
    server = ObjectServer(b"<html>not a package</html>" * 100)
    with pytest.raises(CorruptPackageError, match="end-of-central-directory"):
        await remote(server, cache).index()


async def test_url_expiring_mid_read_is_renewed_once_for_all_blocks(cache) -> None:
    data = build(FILES, method=zipfile.ZIP_STORED)
    server = ObjectServer(data)
    source, downloads = make_source(server)
    pkg = RemotePackage(source, cache)
    await pkg.size()
    server.valid_signatures.clear()  # the URL expires before the blocks are fetched
    assert await pkg.read(0, 4 * 8192) == data[: 4 * 8192]
    assert downloads.issued == 2


class UntoldTier:
    """A cache tier that cannot tell what it holds (every plan asks it, as a shared store)."""

    def holds(self, key) -> bool:
        return False


class SlowTier(UntoldTier):
    """A cache tier whose writes wait for the test (a disk under load)."""

    def __init__(self) -> None:
        self.written = trio.Event()
        self.kept: dict[object, bytes] = {}

    async def fetch(self, key, below) -> bytes:
        data = await below()
        await self.written.wait()
        self.kept[key] = data
        return data


async def test_a_read_does_not_wait_for_the_tiers_to_keep_its_blocks(cache) -> None:
    data = build(FILES, method=zipfile.ZIP_STORED)
    server = ObjectServer(data)
    source, _ = make_source(server, probe_bytes=4096)
    tier = SlowTier()
    pkg = RemotePackage(source, cache, tiers=[tier])
    with trio.fail_after(5):
        assert await pkg.read(10_000, 20_000) == data[10_000:30_000]
    assert not tier.kept and cache.stats().write_behind == 3 * 8192
    before = len(server.requests)
    assert await pkg.read(16_384, 100) == data[16_384:16_484]  # from memory meanwhile
    assert len(server.requests) == before
    tier.written.set()
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(len(block) for block in tier.kept.values()) == [8192] * 3
    assert cache.stats().write_behind == 0


class TwiceTier(UntoldTier):
    """A tier that asks the level below twice for the same block (a retrying store)."""

    async def fetch(self, key, below) -> bytes:
        await below()
        return await below()


async def test_a_unit_asked_for_twice_is_fetched_again_not_lost(cache) -> None:
    data = build(FILES, method=zipfile.ZIP_STORED)
    server = ObjectServer(data)
    source, _ = make_source(server, probe_bytes=4096)
    pkg = RemotePackage(source, cache, tiers=[TwiceTier()])
    assert await pkg.read(10_000, 20_000) == data[10_000:30_000]
    await trio.testing.wait_all_tasks_blocked()  # the second asks come after delivery
    ranges = [r.headers["range"] for r in server.requests[1:]]
    assert ranges.count("bytes=8192-32767") == 1  # one part; then each block on its own
    assert sorted(ranges[1:]) == ["bytes=16384-24575", "bytes=24576-32767", "bytes=8192-16383"]


def pause_blocks_1_to_3_at(server: ObjectServer, data: bytes, split: int) -> trio.Event:
    """Answer the next request (blocks 1-3 of 8 KiB) with a body that stops at ``split`` until
    the returned event is set."""
    rest = trio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield data[8192:split]
        await rest.wait()
        yield data[split:32768]

    def paused(request: httpx.Request) -> httpx.Response:
        assert request.headers["range"] == "bytes=8192-32767"
        headers = {"Content-Range": f"bytes 8192-32767/{len(data)}", "ETag": '"v1"'}
        return httpx.Response(206, headers=headers, content=body())

    server.faults.append(paused)
    return rest


async def test_a_unit_is_handed_out_as_soon_as_its_bytes_are_in(cache) -> None:
    """A request for several blocks: a reader of the first one does not wait for the rest."""
    data = build(FILES, method=zipfile.ZIP_STORED)
    server = ObjectServer(data)
    pkg = remote(server, cache)
    await pkg.size()
    rest = pause_blocks_1_to_3_at(server, data, 16384)
    pkg.prefetch(8192, 3 * 8192)
    with trio.fail_after(5):
        assert await pkg.read(8192, 100) == data[8192:8292]
    assert not rest.is_set()
    rest.set()
    assert await pkg.read(24_576, 100) == data[24_576:24_676]
    assert len([r for r in server.requests if r.headers.get("range") == "bytes=8192-32767"]) == 1


class KeepingTier(UntoldTier):
    """A cache tier that keeps every block the level below returns (a fast disk)."""

    def __init__(self) -> None:
        self.kept: dict[int, bytes] = {}  # by block number

    async def fetch(self, key, below) -> bytes:
        data = await below()
        self.kept[key.index] = data
        return data


async def test_the_tiers_get_a_unit_while_the_rest_of_its_request_arrives(cache) -> None:
    """Only the fetch that runs a request waits for its end: the other units of the request go
    down to the tiers as soon as their own bytes are in, not all at once at the end."""
    data = build(FILES, method=zipfile.ZIP_STORED)
    server = ObjectServer(data)
    source, _ = make_source(server, probe_bytes=4096)
    tier = KeepingTier()
    pkg = RemotePackage(source, cache, tiers=[tier])
    await pkg.size()
    rest = pause_blocks_1_to_3_at(server, data, 24576)
    pkg.prefetch(8192, 3 * 8192)
    await trio.testing.wait_all_tasks_blocked()  # the body is paused after two blocks
    assert not rest.is_set()
    block = {number: data[number * 8192 : (number + 1) * 8192] for number in (1, 2, 3)}
    kept_early = dict(tier.kept)
    # One of the two blocks in may belong to the fetch running the request; the other is kept.
    assert kept_early and set(kept_early) <= {1, 2}
    assert all(kept == block[number] for number, kept in kept_early.items())
    rest.set()
    await trio.testing.wait_all_tasks_blocked()
    assert tier.kept == block
