"""Parsing a ZIP package's directory from bytes: no I/O, no trust in the input.

This module owns the ZIP format: finding the end-of-central-directory record (classic or
ZIP64) in the package tail, parsing the central directory into :class:`ZipMember` entries
(ZIP64 extra fields, UTF-8 or cp437 names, DOS and Unix timestamps) and locating a member's
data behind its local header. Reading bytes is the caller's job; the two-step API lets the
caller fetch the tail first and, only when the directory is larger than the tail, one more
range:

    location = locate_central_directory(tail, package_size)
    data = location.slice_from(tail, package_size) or <read location.offset, location.size>
    index = parse_central_directory(data, location)

Every malformed input raises :class:`CorruptPackageError` with a message saying what is wrong;
no index or struct error escapes. Member names are kept verbatim, hostile ones included:
sanitising them is the catalog layer's job.
"""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass

from pixxelfs.errors import CorruptPackageError

STORED = 0
DEFLATED = 8

EOCD_SIZE = 22
EOCD64_LOCATOR_SIZE = 20
EOCD64_MIN_SIZE = 56
CENTRAL_HEADER_SIZE = 46
LOCAL_HEADER_SIZE = 30
MAX_COMMENT = 0xFFFF
# A tail this long always contains the EOCD, its ZIP64 locator and a plain ZIP64 record.
MIN_TAIL = EOCD_SIZE + MAX_COMMENT + EOCD64_LOCATOR_SIZE + EOCD64_MIN_SIZE
# Refuse absurd directories before anyone allocates or downloads them (~2M members).
MAX_CENTRAL_DIRECTORY = 256 * 1024 * 1024

_EOCD = struct.Struct("<4sHHHHIIH")
_EOCD64_LOCATOR = struct.Struct("<4sIQI")
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<4sHHHHHIIIHH")

_EOCD_SIG = b"PK\x05\x06"
_EOCD64_LOCATOR_SIG = b"PK\x06\x07"
_EOCD64_SIG = b"PK\x06\x06"
_CENTRAL_SIG = b"PK\x01\x02"
_LOCAL_SIG = b"PK\x03\x04"

_FLAG_ENCRYPTED = 0x1
_FLAG_UTF8 = 0x800
_EXTRA_ZIP64 = 0x0001
_EXTRA_UNIX_TIME = 0x5455
_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF


@dataclass(frozen=True)
class ZipMember:
    """One central-directory entry. ``header_offset`` is where its local header starts."""

    name: str
    header_offset: int
    compressed_size: int
    size: int
    method: int
    crc32: int
    modified: dt.datetime | None
    is_dir: bool
    flags: int = 0

    @property
    def is_encrypted(self) -> bool:
        return bool(self.flags & _FLAG_ENCRYPTED)


@dataclass(frozen=True)
class ZipIndex:
    members: tuple[ZipMember, ...]
    comment: bytes = b""


@dataclass(frozen=True)
class CentralDirectory:
    """Where the central directory is (absolute offset and size) and how many entries it has."""

    offset: int
    size: int
    entries: int
    comment: bytes = b""

    def slice_from(self, tail: bytes, package_size: int) -> bytes | None:
        """The directory's bytes if ``tail`` (the package's last bytes) contains them all."""
        tail_start = package_size - len(tail)
        if self.offset < tail_start:
            return None
        begin = self.offset - tail_start
        return tail[begin : begin + self.size]


def _corrupt(message: str) -> CorruptPackageError:
    return CorruptPackageError(f"not a readable ZIP package: {message}")


def _unpack(layout: struct.Struct, data: bytes, offset: int, what: str) -> tuple[int, ...]:
    if offset < 0 or offset + layout.size > len(data):
        raise _corrupt(f"{what} is truncated")
    return layout.unpack_from(data, offset)


def _eocd_candidates(tail: bytes) -> list[int]:
    """Offsets in ``tail`` of possible end records, most plausible first.

    The signature can also occur inside a comment, so records whose comment runs exactly to
    the end come first (nearest the end first), then those with trailing junk, as unzip
    tolerates.
    """
    lowest = max(0, len(tail) - MIN_TAIL)
    exact: list[int] = []
    loose: list[int] = []
    position = tail.rfind(_EOCD_SIG, lowest)
    while position >= 0:
        if position + EOCD_SIZE <= len(tail):
            comment_end = position + EOCD_SIZE + _EOCD.unpack_from(tail, position)[7]
            if comment_end == len(tail):
                exact.append(position)
            elif comment_end < len(tail):
                loose.append(position)
        position = tail.rfind(_EOCD_SIG, lowest, position)
    return exact + loose


def locate_central_directory(tail: bytes, package_size: int) -> CentralDirectory:
    """Find the central directory from the package's last bytes.

    ``tail`` should be at least ``min(MIN_TAIL, package_size)`` bytes, else a valid package
    with a long comment may be reported corrupt. Of several candidate end records, the first
    whose directory ends exactly where the end records begin wins.
    """
    if len(tail) > package_size:
        raise ValueError("the tail cannot be longer than the package")
    candidates = _eocd_candidates(tail)
    if not candidates:
        raise _corrupt("no end-of-central-directory record in the package tail")
    errors: list[CorruptPackageError] = []
    plausible: list[CentralDirectory] = []
    for position in candidates:
        try:
            directory, end_of_directory = _directory_at(tail, package_size, position)
        except CorruptPackageError as exc:
            errors.append(exc)
            continue
        if directory.offset + directory.size == end_of_directory:
            return directory
        plausible.append(directory)
    if plausible:
        return plausible[0]
    raise errors[0]


def _directory_at(tail: bytes, package_size: int, position: int) -> tuple[CentralDirectory, int]:
    """The directory an end record at ``position`` describes, and where the end records start."""
    tail_start = package_size - len(tail)
    _, disk, cd_disk, _, entries, cd_size, cd_offset, comment_length = _unpack(
        _EOCD, tail, position, "end record"
    )
    comment = tail[position + EOCD_SIZE : position + EOCD_SIZE + comment_length]
    end_of_directory = tail_start + position
    locator = position - EOCD64_LOCATOR_SIZE
    if locator >= 0 and tail[locator : locator + 4] == _EOCD64_LOCATOR_SIG:
        entries, cd_size, cd_offset, end_of_directory = _read_eocd64(tail, tail_start, locator)
    elif disk != 0 or cd_disk != 0:
        raise _corrupt("multi-disk (spanned) archives are not supported")
    directory = CentralDirectory(cd_offset, cd_size, entries, comment)
    return _checked(directory, end_of_directory), end_of_directory


def _read_eocd64(tail: bytes, tail_start: int, locator: int) -> tuple[int, int, int, int]:
    """Entries, size and offset of the directory, and where the ZIP64 end record starts."""
    _, record_disk, record_offset, total_disks = _unpack(
        _EOCD64_LOCATOR, tail, locator, "ZIP64 locator"
    )
    if record_disk != 0 or total_disks > 1:
        raise _corrupt("multi-disk (spanned) archives are not supported")
    relative = record_offset - tail_start
    if relative < 0:
        raise _corrupt("the ZIP64 end record lies outside the package tail that was read")
    if relative + EOCD64_MIN_SIZE > locator:
        raise _corrupt("the ZIP64 end record overlaps its locator")
    sig, _, _, _, disk, cd_disk, _, entries, cd_size, cd_offset = _unpack(
        _EOCD64, tail, relative, "ZIP64 end record"
    )
    if sig != _EOCD64_SIG:
        raise _corrupt("the ZIP64 locator does not point at a ZIP64 end record")
    if disk != 0 or cd_disk != 0:
        raise _corrupt("multi-disk (spanned) archives are not supported")
    return entries, cd_size, cd_offset, record_offset


def _checked(directory: CentralDirectory, end_of_directory: int) -> CentralDirectory:
    """Reject directories that cannot fit where the end records say they end."""
    if directory.offset + directory.size > end_of_directory:
        raise _corrupt(
            f"central directory ({directory.size} bytes at {directory.offset}) runs past its "
            f"end record at {end_of_directory}"
        )
    if directory.size > MAX_CENTRAL_DIRECTORY:
        raise _corrupt(f"central directory of {directory.size} bytes is implausibly large")
    if directory.entries * CENTRAL_HEADER_SIZE > directory.size:
        raise _corrupt(
            f"{directory.entries} entries cannot fit in a {directory.size}-byte directory"
        )
    return directory


def parse_central_directory(data: bytes, directory: CentralDirectory) -> ZipIndex:
    """Parse the ``directory.size`` bytes of the central directory into a :class:`ZipIndex`."""
    if len(data) != directory.size:
        raise _corrupt(f"central directory is {len(data)} bytes, expected {directory.size}")
    members: list[ZipMember] = []
    position = 0
    for number in range(directory.entries):
        member, position = _parse_entry(data, position, number)
        if member.header_offset + LOCAL_HEADER_SIZE > directory.offset:
            raise _corrupt(f"member {member.name!r} starts inside the central directory")
        members.append(member)
    return ZipIndex(tuple(members), directory.comment)


def _parse_entry(data: bytes, position: int, number: int) -> tuple[ZipMember, int]:
    fields = _unpack(_CENTRAL, data, position, f"central directory entry {number}")
    (sig, _, _, flags, method, dos_time, dos_date, crc, csize, size) = fields[:10]
    name_length, extra_length, comment_length, disk, _, _, offset = fields[10:]
    if sig != _CENTRAL_SIG:
        raise _corrupt(f"central directory entry {number} has a bad signature")
    name_start = position + CENTRAL_HEADER_SIZE
    extra_start = name_start + name_length
    end = extra_start + extra_length + comment_length
    if end > len(data):
        raise _corrupt(f"central directory entry {number} is truncated")
    raw_name = data[name_start:extra_start]
    extras = _parse_extras(data[extra_start : extra_start + extra_length], number)
    size, csize, offset, disk = _apply_zip64(extras, size, csize, offset, disk, number)
    if disk != 0:
        raise _corrupt("multi-disk (spanned) archives are not supported")
    name = raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", errors="replace")
    if method == STORED and csize != size:
        raise _corrupt(f"stored member {name!r} has different compressed and plain sizes")
    member = ZipMember(
        name=name,
        header_offset=offset,
        compressed_size=csize,
        size=size,
        method=method,
        crc32=crc,
        modified=_unix_time(extras) or _dos_time(dos_date, dos_time),
        is_dir=name.endswith("/"),
        flags=flags,
    )
    return member, end


def _parse_extras(blob: bytes, number: int) -> dict[int, bytes]:
    extras: dict[int, bytes] = {}
    position = 0
    while position + 4 <= len(blob):
        header_id, length = struct.unpack_from("<HH", blob, position)
        body = blob[position + 4 : position + 4 + length]
        if len(body) != length:
            raise _corrupt(f"central directory entry {number} has a truncated extra field")
        extras.setdefault(header_id, body)
        position += 4 + length
    return extras


def _apply_zip64(
    extras: dict[int, bytes], size: int, csize: int, offset: int, disk: int, number: int
) -> tuple[int, int, int, int]:
    """Replace saturated 32-bit fields by their ZIP64 values, in the order the spec fixes."""
    wanted = [size == _U32_MAX, csize == _U32_MAX, offset == _U32_MAX]
    if not any(wanted) and disk != _U16_MAX:
        return size, csize, offset, disk
    blob = extras.get(_EXTRA_ZIP64)
    if blob is None:
        raise _corrupt(f"central directory entry {number} needs a ZIP64 field but has none")
    values = [size, csize, offset]
    position = 0
    for slot, needed in enumerate(wanted):
        if needed:
            if position + 8 > len(blob):
                raise _corrupt(f"central directory entry {number} has a short ZIP64 field")
            values[slot] = struct.unpack_from("<Q", blob, position)[0]
            position += 8
    if disk == _U16_MAX:
        if position + 4 > len(blob):
            raise _corrupt(f"central directory entry {number} has a short ZIP64 field")
        disk = struct.unpack_from("<I", blob, position)[0]
    return values[0], values[1], values[2], disk


def _unix_time(extras: dict[int, bytes]) -> dt.datetime | None:
    """The modification time of the Info-ZIP extended timestamp field (UTC), if present."""
    blob = extras.get(_EXTRA_UNIX_TIME)
    if blob is None or len(blob) < 5 or not blob[0] & 1:
        return None
    seconds = struct.unpack_from("<i", blob, 1)[0]
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def _dos_time(dos_date: int, dos_time: int) -> dt.datetime | None:
    """DOS date/time, which has no zone: read as UTC, as packaging servers write it."""
    try:
        return dt.datetime(
            1980 + (dos_date >> 9),
            (dos_date >> 5) & 0xF,
            dos_date & 0x1F,
            dos_time >> 11,
            (dos_time >> 5) & 0x3F,
            min((dos_time & 0x1F) * 2, 59),
            tzinfo=dt.UTC,
        )
    except ValueError:
        return None


def data_offset(local_header: bytes, member: ZipMember) -> int:
    """Where ``member``'s data starts, from its local header (first 30 bytes are enough).

    The local header's name and extra lengths may differ from the central ones (ZIP64 extras
    are often only local), so the central directory alone cannot tell.
    """
    sig, *_, name_length, extra_length = _unpack(_LOCAL, local_header, 0, "local header")
    if sig != _LOCAL_SIG:
        raise _corrupt(f"member {member.name!r} has no local header at {member.header_offset}")
    return member.header_offset + LOCAL_HEADER_SIZE + name_length + extra_length
