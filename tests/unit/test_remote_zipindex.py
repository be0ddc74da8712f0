"""zipindex against Python's zipfile as the reference, plus corrupt and hostile inputs."""

from __future__ import annotations

import contextlib
import io
import struct
import zipfile
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixxelfs.errors import CorruptPackageError
from pixxelfs.remote.zipindex import (
    MIN_TAIL,
    CentralDirectory,
    ZipIndex,
    data_offset,
    locate_central_directory,
    parse_central_directory,
)


def build_zip(
    files: dict[str, bytes],
    *,
    comment: bytes = b"",
    method: int = zipfile.ZIP_DEFLATED,
    force_zip64: bool = False,
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method, allowZip64=True) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2025, 6, 11, 10, 30, 42))
            info.compress_type = method
            with archive.open(info, "w", force_zip64=force_zip64) as handle:
                handle.write(data)
        archive.comment = comment
    return buffer.getvalue()


def index_of(package: bytes, tail_length: int | None = None) -> ZipIndex:
    """Parse like the remote reader does: a tail first, one more range if needed."""
    tail = package[-tail_length:] if tail_length else package
    directory = locate_central_directory(tail, len(package))
    data = directory.slice_from(tail, len(package))
    if data is None:
        data = package[directory.offset : directory.offset + directory.size]
    return parse_central_directory(data, directory)


def member_bytes(package: bytes, index: ZipIndex) -> dict[str, bytes]:
    """Each member's plain bytes, located with data_offset and inflated with zlib."""
    result = {}
    for member in index.members:
        start = data_offset(package[member.header_offset : member.header_offset + 30], member)
        raw = package[start : start + member.compressed_size]
        result[member.name] = raw if member.method == 0 else zlib.decompress(raw, -15)
    return result


def assert_matches_zipfile(package: bytes, index: ZipIndex) -> None:
    reference = zipfile.ZipFile(io.BytesIO(package)).infolist()
    got = [
        (m.name, m.header_offset, m.compressed_size, m.size, m.method, m.crc32, m.is_dir)
        for m in index.members
    ]
    want = [
        (
            i.filename,
            i.header_offset,
            i.compress_size,
            i.file_size,
            i.compress_type,
            i.CRC,
            i.is_dir(),
        )
        for i in reference
    ]
    assert got == want


def sample_files(count: int) -> dict[str, bytes]:
    return {
        f"scene/band_{n:04d}.tif": bytes(range(256)) * (n % 7) + f"{n}".encode()
        for n in range(count)
    }


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_index_and_data_match_zipfile(method: int) -> None:
    files = sample_files(300) | {"scene/": b""}
    package = build_zip(files, comment=b"delivered by pixxel", method=method)
    index = index_of(package)
    assert_matches_zipfile(package, index)
    assert index.comment == b"delivered by pixxel"
    assert member_bytes(package, index) == files
    first = index.members[0]
    assert first.modified is not None
    assert (first.modified.year, first.modified.month, first.modified.second) == (2025, 6, 42)


def test_directory_larger_than_tail_needs_the_second_range() -> None:
    package = build_zip(sample_files(2000))
    tail = package[-4096:]
    directory = locate_central_directory(tail, len(package))
    assert directory.slice_from(tail, len(package)) is None
    assert_matches_zipfile(package, index_of(package, tail_length=4096))


def test_longest_comment_is_found_with_a_min_tail() -> None:
    comment = b"c" * 0xFFFF
    package = build_zip(sample_files(5), comment=comment)
    index = index_of(package, tail_length=MIN_TAIL)
    assert index.comment == comment
    assert_matches_zipfile(package, index)


def test_end_record_signature_inside_the_comment_is_not_taken() -> None:
    """zipfile itself is fooled by this (it takes the last signature); we must not be."""
    fake = b"PK\x05\x06" + b"\0" * 16 + b"\0\0"
    clean = build_zip(sample_files(5), comment=b"x" * len(fake))
    tricky = build_zip(sample_files(5), comment=fake)
    assert index_of(tricky).members == index_of(clean).members
    assert index_of(tricky).comment == fake


def test_force_zip64_local_headers_differ_from_central_ones() -> None:
    files = sample_files(10)
    package = build_zip(files, force_zip64=True)
    index = index_of(package)
    for member in index.members:
        header = package[member.header_offset : member.header_offset + 30]
        local_extra = struct.unpack_from("<H", header, 28)[0]
        assert local_extra >= 20  # the ZIP64 sizes live only in the local header
    assert member_bytes(package, index) == files


def test_more_than_65535_members_use_the_zip64_end_record() -> None:
    files = {f"{n}": b"" for n in range(0x10000 + 5)}
    package = build_zip(files, method=zipfile.ZIP_STORED)
    assert b"PK\x06\x06" in package[-200:]
    index = index_of(package)
    assert len(index.members) == len(files)
    assert index.members[-1].name == str(0x10000 + 4)


def handmade_zip64(files: dict[str, bytes]) -> bytes:
    """STORED members whose central sizes and offsets all live in ZIP64 extra fields."""
    body, central = bytearray(), bytearray()
    for name, data in files.items():
        raw_name, offset, crc = name.encode(), len(body), zlib.crc32(data)
        body += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45, 0, 0, 0, 0x21, crc, 0, 0, 0, 0)
        body[-8:-4] = struct.pack("<I", len(data))
        body[-12:-8] = struct.pack("<I", len(data))
        body += raw_name + data
        body[offset + 26 : offset + 28] = struct.pack("<H", len(raw_name))
        extra = struct.pack("<HHQQQ", 1, 24, len(data), len(data), offset)
        central += struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            *(b"PK\x01\x02", 45, 45, 0, 0, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF),
            *(len(raw_name), len(extra), 0, 0, 0, 0, 0xFFFFFFFF),
        )
        central += raw_name + extra
    cd_offset, count = len(body), len(files)
    eocd64_offset = cd_offset + len(central)
    eocd64 = struct.pack(
        "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(central), cd_offset
    )
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, eocd64_offset, 1)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return bytes(body + central + eocd64 + locator + eocd)


def test_zip64_extra_fields_in_central_headers() -> None:
    files = {"a.tif": b"alpha" * 100, "b/c.json": b"{}", "empty": b""}
    package = handmade_zip64(files)
    assert zipfile.ZipFile(io.BytesIO(package)).testzip() is None  # the reference agrees
    index = index_of(package)
    assert_matches_zipfile(package, index)
    assert member_bytes(package, index) == files


def test_names_utf8_flag_and_cp437_and_hostile_names_are_kept() -> None:
    files = {"données/é.tif": b"1", "../../etc/passwd": b"2", "/abs": b"3"}
    package = bytearray(build_zip(files, method=zipfile.ZIP_STORED))
    index = index_of(bytes(package))
    assert [m.name for m in index.members] == list(files)
    # Clear bit 11 of the first central entry: the same bytes now decode as cp437.
    central = package.index(b"PK\x01\x02")
    flags = struct.unpack_from("<H", package, central + 8)[0]
    struct.pack_into("<H", package, central + 8, flags & ~0x800)
    assert index_of(bytes(package)).members[0].name == "données/é.tif".encode().decode("cp437")


def test_bad_local_header_is_corrupt() -> None:
    package = build_zip({"a": b"x"})
    member = index_of(package).members[0]
    with pytest.raises(CorruptPackageError, match="no local header"):
        data_offset(b"XX" + package[2:30], member)
    with pytest.raises(CorruptPackageError, match="truncated"):
        data_offset(package[:10], member)


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda p: p[:-30], "no end-of-central-directory"),
        (lambda p: p.replace(b"PK\x01\x02", b"PK\x01\x03", 1), "bad signature"),
        (lambda p: p[:10] + p[60:], "runs past"),
        (lambda p: b"", "no end-of-central-directory"),
    ],
)
def test_corrupt_packages_say_what_is_wrong(mutation, message: str) -> None:
    package = mutation(build_zip(sample_files(3), method=zipfile.ZIP_STORED))
    with pytest.raises(CorruptPackageError, match=message):
        member_bytes(package, index_of(package))


def test_entry_count_beyond_directory_size_is_corrupt() -> None:
    directory = CentralDirectory(offset=1000, size=46, entries=2)
    with pytest.raises(CorruptPackageError, match="truncated"):
        parse_central_directory(b"PK\x01\x02" + b"\0" * 42, directory)
    package = bytearray(build_zip({"a": b"x"}, method=zipfile.ZIP_STORED))
    struct.pack_into("<HH", package, len(package) - 14, 900, 900)
    with pytest.raises(CorruptPackageError, match="cannot fit"):
        index_of(bytes(package))


def parse_everything(package: bytes) -> None:
    index = index_of(package)
    for member in index.members:
        data_offset(package[member.header_offset : member.header_offset + 30], member)


@given(st.binary(max_size=400))
def test_random_bytes_raise_only_corrupt_package_error(package: bytes) -> None:
    with contextlib.suppress(CorruptPackageError):
        parse_everything(package)


VALID = build_zip({"a.tif": b"abc" * 50, "dir/": b"", "b": b"z"}, comment=b"hi")
VALID64 = handmade_zip64({"a": b"one", "b": b"two"})


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([VALID, VALID64]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    st.integers(0, 40),
)
def test_mutated_zips_raise_only_corrupt_package_error(
    base: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    package = bytearray(base)
    for position, value in flips:
        package[position % len(package)] = value
    with contextlib.suppress(CorruptPackageError):
        parse_everything(bytes(package[cut:]))
