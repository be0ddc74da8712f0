"""Cloud-Optimized GeoTIFF layout: header and IFD parsing, and the byte pieces reads fetch.

A COG keeps its header and every IFD (with the tile offset and byte-count arrays) at the start
of the file, then the tile data, smallest overview first. Opening a GeoTIFF member therefore
costs one exact range request for its first ``HEADER_PROBE`` bytes (a second only when the IFDs
are larger); :func:`parse_layout` turns them into a :class:`CogLayout`:

- ``levels``: each image (full resolution, overviews, masks) with its tiles' offsets and sizes;
- ``pieces``: a partition of the member's bytes into what a random read fetches whole: the
  header piece (exactly the bytes the open read, so that request is reused), then one piece
  per tile (or strip) that also takes the few bytes up to the next tile (GDAL's 4-byte tile
  leaders and trailers live there), never more than ``PIECE_SLACK`` beyond the tile.
  Bytes outside every piece are read as plain blocks.
- the kernel reads whole pages (or larger folios), so its read for a tile begins up to a page
  before the tile, in the end of the tile in front of it: a read that touches no more than
  ``EDGE`` bytes at the end of one piece and runs on is for the next piece (:func:`grazes`);
  fetching the grazed piece whole would fetch a tile nobody asked for.

Parsing is defensive: anything that is not a well-formed TIFF gives ``None`` (the member is
then read in blocks), never an exception, and every count and offset is bounds-checked. Classic
TIFF and BigTIFF, both byte orders, tiles or strips.
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

HEADER_PROBE = 64 * 1024
# At most this many bytes after a tile's end still belong to its piece (leaders, trailers).
PIECE_SLACK = 64
# A read that starts at most this far before a piece's end and runs on only grazes that piece.
EDGE = 16 * 1024
_MAX_IFDS = 64
_MAX_ENTRIES = 4096

_TAG_WIDTH, _TAG_HEIGHT = 256, 257
_TAG_STRIP_OFFSETS, _TAG_STRIP_COUNTS = 273, 279
_TAG_TILE_WIDTH, _TAG_TILE_HEIGHT = 322, 323
_TAG_TILE_OFFSETS, _TAG_TILE_COUNTS = 324, 325
_TAG_SUBFILE = 254
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8}
_TYPE_CODES = {1: "B", 3: "H", 4: "I", 16: "Q", 6: "b", 8: "h", 9: "i", 17: "q"}


class NeedMoreBytes(Exception):
    """The IFDs extend past the bytes given; retry with at least ``size`` bytes."""

    def __init__(self, size: int):
        super().__init__(f"need {size} bytes")
        self.size = size


@dataclass(frozen=True)
class Level:
    """One image of the file: full resolution, an overview, or a mask."""

    width: int
    height: int
    offsets: tuple[int, ...]
    byte_counts: tuple[int, ...]
    is_mask: bool
    tile_width: int = 0  # 0: strips

    @property
    def data_bytes(self) -> int:
        return sum(self.byte_counts)

    @property
    def tiles_across(self) -> int:
        """Tiles in one row of the image (a strip is a whole row)."""
        return -(-self.width // self.tile_width) if self.tile_width > 0 else 1


@dataclass(frozen=True)
class CogLayout:
    """Parsed layout of a GeoTIFF member (offsets relative to the member's start)."""

    levels: tuple[Level, ...]
    header_end: int
    piece_starts: tuple[int, ...]
    piece_ends: tuple[int, ...]

    def piece_at(self, offset: int) -> tuple[int, int] | None:
        """The piece holding ``offset``: ``(start, end)``, or None for plain-block bytes."""
        position = bisect.bisect_right(self.piece_starts, offset) - 1
        if position < 0 or offset >= self.piece_ends[position]:
            return None
        return self.piece_starts[position], self.piece_ends[position]

    def offset_below(self, offset: int) -> int | None:
        """Where the tile one row below the tile starting at ``offset`` starts (None if that
        is not a tile's start, or the tile is in the last row)."""
        found = self._tiles.get(offset)
        if found is None:
            return None
        level = self.levels[found[0]]
        below = found[1] + level.tiles_across
        if below < len(level.offsets) and level.byte_counts[below]:
            return level.offsets[below]
        return None

    @cached_property
    def _tiles(self) -> dict[int, tuple[int, int]]:
        """Tile start -> (level, tile index), built on first use."""
        return {
            offset: (number, index)
            for number, level in enumerate(self.levels)
            for index, offset in enumerate(level.offsets)
        }

    def overview_ranges(self, max_bytes: int) -> list[tuple[int, int]]:
        """Byte ranges of the smallest overviews (what a viewer draws first), within a budget."""
        images = sorted((lv for lv in self.levels[1:] if not lv.is_mask), key=lambda lv: lv.width)
        ranges: list[tuple[int, int]] = []
        spent = 0
        for level in images:
            if spent + level.data_bytes > max_bytes:
                break
            spent += level.data_bytes
            ranges += [
                (offset, offset + count)
                for offset, count in zip(level.offsets, level.byte_counts, strict=True)
                if count
            ]
        return merge_ranges(ranges)


class Pieces(Protocol):
    """Where exact ranges lie, in package coordinates."""

    def piece_at(self, offset: int) -> tuple[int, int] | None: ...


def grazes(piece: tuple[int, int], start: int, end: int) -> bool:
    """Whether a read of ``[start, end)`` only touches the last ``EDGE`` bytes of ``piece``
    on its way to what follows (the page the kernel reads in front of the next tile)."""
    return piece[0] < start and piece[1] < end and piece[1] - start <= EDGE


class PieceMap:
    """A member's pieces in package coordinates (the member's data starts at ``base``).

    The header piece starts at ``head_start`` (<= ``base``): the request made on open also
    held the ZIP local header in front of the member.
    """

    def __init__(self, layout: CogLayout, base: int, head_start: int | None = None):
        self.layout = layout
        self.base = base
        self.head_start = base if head_start is None else head_start

    def piece_at(self, offset: int) -> tuple[int, int] | None:
        if self.head_start <= offset < self.base:
            offset = self.base
        piece = self.layout.piece_at(offset - self.base)
        if piece is None:
            return None
        start = self.head_start if piece[0] == 0 else piece[0] + self.base
        return start, piece[1] + self.base

    def piece_read(self, start: int, end: int) -> tuple[int, int] | None:
        """The piece a read of ``[start, end)`` is for: the one it starts in, or the next
        when it only grazes that one's end."""
        piece = self.piece_at(start)
        if piece is not None and grazes(piece, start, end):
            return self.piece_at(piece[1]) or piece
        return piece

    def piece_below(self, piece: tuple[int, int]) -> tuple[int, int] | None:
        """The piece of the tile one row below the tile of ``piece`` (package coordinates)."""
        below = self.layout.offset_below(piece[0] - self.base)
        return None if below is None else self.piece_at(below + self.base)

    def overview_ranges(self, max_bytes: int) -> list[tuple[int, int]]:
        ranges = self.layout.overview_ranges(max_bytes)
        return [(start + self.base, end + self.base) for start, end in ranges]


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ranges with neighbours joined when at most ``PIECE_SLACK`` bytes apart."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + PIECE_SLACK:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


class _Reader:
    """Bounds-checked little/big-endian field access over the probe bytes."""

    def __init__(self, data: bytes, order: str, file_size: int):
        self.data = data
        self.order = order
        self.file_size = file_size

    def unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        size = struct.calcsize(self.order + fmt)
        if offset < 0 or offset + size > self.file_size:
            raise ValueError("field outside the file")
        if offset + size > len(self.data):
            raise NeedMoreBytes(offset + size)
        return struct.unpack_from(self.order + fmt, self.data, offset)


def _values(reader: _Reader, entry: int, big: bool) -> tuple[int, ...]:
    """The integer values of one IFD entry (inline or out of line)."""
    kind, count = reader.unpack("HQ" if big else "HI", entry + 2)
    code = _TYPE_CODES.get(kind)
    if code is None or count > 10_000_000:
        return ()
    size = _TYPE_SIZES[kind] * count
    inline = 8 if big else 4
    value_at = entry + (12 if big else 8)
    if size > inline:
        (value_at,) = reader.unpack("Q" if big else "I", value_at)
    return reader.unpack(f"{count}{code}", value_at)


def _parse_ifd(reader: _Reader, offset: int, big: bool) -> tuple[dict[int, tuple[int, ...]], int]:
    (entries,) = reader.unpack("Q" if big else "H", offset)
    if entries > _MAX_ENTRIES:
        raise ValueError("implausible IFD")
    step, first = (20, offset + 8) if big else (12, offset + 2)
    tags: dict[int, tuple[int, ...]] = {}
    for number in range(entries):
        entry = first + number * step
        (tag,) = reader.unpack("H", entry)
        if tag in _WANTED:
            tags[tag] = _values(reader, entry, big)
    (next_ifd,) = reader.unpack("Q" if big else "I", first + entries * step)
    return tags, next_ifd


_WANTED = {
    _TAG_WIDTH, _TAG_HEIGHT, _TAG_SUBFILE, _TAG_STRIP_OFFSETS, _TAG_STRIP_COUNTS,
    _TAG_TILE_WIDTH, _TAG_TILE_HEIGHT, _TAG_TILE_OFFSETS, _TAG_TILE_COUNTS,
}  # fmt: skip


def _level(tags: dict[int, tuple[int, ...]], file_size: int) -> Level | None:
    offsets = tags.get(_TAG_TILE_OFFSETS) or tags.get(_TAG_STRIP_OFFSETS) or ()
    counts = tags.get(_TAG_TILE_COUNTS) or tags.get(_TAG_STRIP_COUNTS) or ()
    if not offsets or len(offsets) != len(counts):
        return None
    for offset, count in zip(offsets, counts, strict=True):
        if count and (offset < 0 or offset + count > file_size):
            raise ValueError("tile outside the file")
    width = (tags.get(_TAG_WIDTH) or (0,))[0]
    height = (tags.get(_TAG_HEIGHT) or (0,))[0]
    is_mask = bool((tags.get(_TAG_SUBFILE) or (0,))[0] & 4)
    tile_width = (tags.get(_TAG_TILE_WIDTH) or (0,))[0]
    return Level(width, height, tuple(offsets), tuple(counts), is_mask, tile_width)


def parse_layout(data: bytes, file_size: int) -> CogLayout | None:
    """The layout from the file's first bytes; :class:`NeedMoreBytes` if the IFDs go further."""
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return None
    order = "<" if data[:2] == b"II" else ">"
    reader = _Reader(data, order, file_size)
    try:
        (magic,) = reader.unpack("H", 2)
        if magic not in (42, 43):
            return None
        big = magic == 43
        (ifd,) = reader.unpack("Q", 8) if big else reader.unpack("I", 4)
        levels: list[Level] = []
        while ifd and len(levels) < _MAX_IFDS:
            tags, ifd = _parse_ifd(reader, ifd, big)
            level = _level(tags, file_size)
            if level is not None:
                levels.append(level)
    except (ValueError, struct.error):
        return None
    if not levels:
        return None
    return _with_pieces(tuple(levels), min(len(data), file_size), file_size)


def _with_pieces(levels: tuple[Level, ...], header_end: int, file_size: int) -> CogLayout:
    tiles = sorted(
        (offset, offset + count)
        for level in levels
        for offset, count in zip(level.offsets, level.byte_counts, strict=True)
        if count
    )
    starts, ends = [0], [header_end]
    for number, (tile_start, tile_end) in enumerate(tiles):
        start = max(tile_start, ends[-1])  # a tile the header probe already partly holds
        if start >= tile_end:
            continue
        following = tiles[number + 1][0] if number + 1 < len(tiles) else file_size
        starts.append(start)
        ends.append(min(max(tile_end, min(following, tile_end + PIECE_SLACK)), file_size))
    return CogLayout(levels, header_end, tuple(starts), tuple(ends))
