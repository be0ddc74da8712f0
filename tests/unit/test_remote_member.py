"""MemberReader against zipfile's bytes: random access, seek points, window, CRC checks."""

from __future__ import annotations

import io
import random
import struct
import zipfile

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from pixxelfs.errors import CorruptPackageError
from pixxelfs.remote.member import PLAIN_CHUNK, MemberReader
from pixxelfs.remote.zipindex import (
    ZipMember,
    data_offset,
    locate_central_directory,
    parse_central_directory,
)


class MemoryPackage:
    """Package bytes in memory, with the read/prefetch surface of RemotePackage."""

    def __init__(self, data: bytes, block_size: int = 4096, *, keeps_plain: bool = False):
        self.data = data
        self.block_size = block_size
        self.reads = 0
        self.prefetched: list[tuple[int, int]] = []
        # Inflated output kept as RemotePackage's cache keeps it (off: seek points alone).
        self.plain: dict[tuple[ZipMember, int], bytes] | None = {} if keeps_plain else None

    async def read(
        self, offset: int, size: int, *, pieces: object = None, more_pieces: int = 0
    ) -> bytes:
        self.reads += 1
        await trio.lowlevel.checkpoint()
        return self.data[offset : offset + size]

    def prefetch(self, offset: int, size: int, **_pieces: object) -> None:
        self.prefetched.append((offset, size))

    def recall_plain(self, member: ZipMember, index: int) -> bytes | None:
        return None if self.plain is None else self.plain.get((member, index))

    def keep_plain(self, member: ZipMember, index: int, data: bytes) -> None:
        if self.plain is not None:
            self.plain[(member, index)] = data

    def forget_plain(self, member: ZipMember) -> None:
        if self.plain is not None:
            self.plain = {key: data for key, data in self.plain.items() if key[0] != member}


def payload(size: int, seed: int = 7) -> bytes:
    """Compressible but not trivial: random words from a small vocabulary."""
    rng = random.Random(seed)
    words = [bytes(rng.randrange(256) for _ in range(rng.randint(2, 9))) for _ in range(300)]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
    return bytes(out[:size])


def build(files: dict[str, bytes], method: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def members(package: bytes) -> dict[str, ZipMember]:
    directory = locate_central_directory(package, len(package))
    data = package[directory.offset : directory.offset + directory.size]
    return {m.name: m for m in parse_central_directory(data, directory).members}


def reader_for(
    package: bytes, name: str, *, keeps_plain: bool = False, **options
) -> tuple[MemberReader, MemoryPackage]:
    member = members(package)[name]
    start = data_offset(package[member.header_offset : member.header_offset + 30], member)
    memory = MemoryPackage(package, keeps_plain=keeps_plain)
    return MemberReader(memory, member, start, **options), memory


DATA = payload(300_000)
FILES = {"image.tif": DATA, "small.json": b'{"a": 1}\n', "empty": b""}
PACKAGES = {
    "stored": build(FILES, zipfile.ZIP_STORED),
    "deflated": build(FILES, zipfile.ZIP_DEFLATED),
}
SMALL = {"seek_interval": 16_384, "max_seek_points": 6, "window_bytes": 5_000}


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(sorted(PACKAGES)),
    st.lists(st.tuples(st.integers(0, 320_000), st.integers(0, 70_000)), min_size=1, max_size=12),
    st.booleans(),
)
def test_random_reads_match_zipfile(
    kind: str, reads: list[tuple[int, int]], keeps_plain: bool
) -> None:
    async def main() -> None:
        reader, _ = reader_for(PACKAGES[kind], "image.tif", keeps_plain=keeps_plain, **SMALL)
        for offset, size in reads:
            assert await reader.read(offset, size) == DATA[offset : offset + size]
        assert reader.seek_points <= SMALL["max_seek_points"]

    trio.run(main)


@pytest.mark.parametrize("kind", sorted(PACKAGES))
async def test_small_and_empty_members_and_eof(kind: str) -> None:
    reader, _ = reader_for(PACKAGES[kind], "small.json")
    assert await reader.read(0, 1000) == FILES["small.json"]
    assert await reader.read(3, 2) == FILES["small.json"][3:5]
    assert await reader.read(len(FILES["small.json"]), 10) == b""
    empty, _ = reader_for(PACKAGES[kind], "empty")
    assert await empty.read(0, 10) == b""
    with pytest.raises(ValueError):
        await reader.read(-1, 5)


async def test_sequential_reads_inflate_each_byte_once() -> None:
    reader, memory = reader_for(PACKAGES["deflated"], "image.tif", **SMALL)
    chunks = [await reader.read(offset, 4096) for offset in range(0, len(DATA), 4096)]
    assert b"".join(chunks) == DATA
    assert reader.inflated_bytes == len(DATA)
    assert memory.prefetched  # compressed input is requested ahead of need


async def test_random_access_reinflates_at_most_one_interval() -> None:
    interval = 16_384
    reader, _ = reader_for(
        PACKAGES["deflated"], "image.tif", seek_interval=interval, max_seek_points=64
    )
    await reader.read(0, len(DATA))
    for offset in (250_000, 20_000, 170_001, 5):
        before = reader.inflated_bytes
        assert await reader.read(offset, 100) == DATA[offset : offset + 100]
        assert reader.inflated_bytes - before <= interval + 100


async def test_seek_points_are_thinned_when_the_bound_is_hit() -> None:
    reader, _ = reader_for(
        PACKAGES["deflated"], "image.tif", seek_interval=8_192, max_seek_points=4
    )
    await reader.read(0, len(DATA))
    assert 2 <= reader.seek_points <= 4
    assert await reader.read(200_000, 10) == DATA[200_000:200_010]


async def test_rereading_the_recent_window_does_not_inflate() -> None:
    reader, memory = reader_for(PACKAGES["deflated"], "image.tif", **SMALL)
    await reader.read(0, 50_000)
    before, reads = reader.inflated_bytes, memory.reads
    assert await reader.read(47_000, 3_000) == DATA[47_000:50_000]
    assert (reader.inflated_bytes, memory.reads) == (before, reads)
    window_start = 50_000 - SMALL["window_bytes"]
    for offset in (window_start - 1, window_start, window_start + 1):
        assert await reader.read(offset, 10) == DATA[offset : offset + 10]


async def test_stored_prefetch_is_clamped_to_the_member() -> None:
    reader, memory = reader_for(PACKAGES["stored"], "image.tif")
    reader.prefetch(1000, 1 << 30)
    assert memory.prefetched == [(reader.data_start + 1000, reader.size - 1000)]
    reader.prefetch(reader.size, 10)
    assert len(memory.prefetched) == 1


def with_central_crc(package: bytes, name: str, crc: int) -> bytes:
    patched = bytearray(package)
    position = patched.index(b"PK\x01\x02")
    while True:
        name_length = struct.unpack_from("<H", patched, position + 28)[0]
        if patched[position + 46 : position + 46 + name_length] == name.encode():
            struct.pack_into("<I", patched, position + 16, crc)
            return bytes(patched)
        position = patched.index(b"PK\x01\x02", position + 4)


async def test_crc_mismatch_is_detected_at_the_end_and_poisons_the_reader() -> None:
    package = with_central_crc(PACKAGES["deflated"], "image.tif", 0x12345678)
    reader, _ = reader_for(package, "image.tif")
    assert await reader.read(0, 1000) == DATA[:1000]  # not yet known to be wrong
    with pytest.raises(CorruptPackageError, match="CRC-32"):
        await reader.read(len(DATA) - 10, 10)
    with pytest.raises(CorruptPackageError, match="CRC-32"):
        await reader.read(0, 10)


async def test_output_of_a_member_that_fails_its_crc_is_not_kept() -> None:
    package = with_central_crc(PACKAGES["deflated"], "image.tif", 0x12345678)
    reader, memory = reader_for(package, "image.tif", keeps_plain=True)
    with pytest.raises(CorruptPackageError, match="CRC-32"):
        await reader.read(0, len(DATA))
    assert memory.plain == {}  # a new reader (the old one evicted) cannot be handed it
    again = MemberReader(memory, reader.member, reader.data_start)
    with pytest.raises(CorruptPackageError, match="CRC-32"):
        await again.read(0, len(DATA))


async def test_declared_size_larger_than_the_stream_is_corrupt() -> None:
    reader, memory = reader_for(PACKAGES["deflated"], "small.json")
    member = reader.member
    longer = ZipMember(**{**member.__dict__, "size": member.size + 5})
    broken = MemberReader(memory, longer, reader.data_start)
    with pytest.raises(CorruptPackageError, match="ends after"):
        await broken.read(0, longer.size)


async def test_declared_size_smaller_than_the_stream_is_corrupt() -> None:
    reader, memory = reader_for(PACKAGES["deflated"], "image.tif")
    member = reader.member
    shorter = ZipMember(**{**member.__dict__, "size": member.size - 5})
    broken = MemberReader(memory, shorter, reader.data_start)
    with pytest.raises(CorruptPackageError, match="more than"):
        await broken.read(0, shorter.size)


async def test_garbage_deflate_data_is_corrupt() -> None:
    reader, memory = reader_for(PACKAGES["deflated"], "image.tif")
    start = reader.data_start
    memory.data = memory.data[:start] + b"\xff" * 64 + memory.data[start + 64 :]
    with pytest.raises(CorruptPackageError, match="bad deflate data"):
        await reader.read(0, 100)


async def test_inflated_output_is_kept_so_rereads_do_not_inflate() -> None:
    data = payload(3 * PLAIN_CHUNK + 12_345, seed=3)
    reader, memory = reader_for(build({"big.tif": data}, zipfile.ZIP_DEFLATED), "big.tif",
                                keeps_plain=True)  # fmt: skip
    assert await reader.read(0, len(data)) == data  # read through once
    assert memory.plain is not None and sorted(i for _, i in memory.plain) == [0, 1, 2, 3]
    inflated = reader.inflated_bytes
    spots = [(2_500_000, 700_000), (10, 5), (PLAIN_CHUNK - 3, 10), (3 * PLAIN_CHUNK, 12_345)]
    for offset, size in spots:
        assert await reader.read(offset, size) == data[offset : offset + size]
    assert reader.inflated_bytes == inflated
    memory.plain.pop((reader.member, 1))  # evicted: inflated again, from a seek point
    assert await reader.read(PLAIN_CHUNK + 7, 100) == data[PLAIN_CHUNK + 7 : PLAIN_CHUNK + 107]
    assert inflated < reader.inflated_bytes <= inflated + 2 * PLAIN_CHUNK
