"""Random-access reads of one ZIP member, stored or deflated, from package byte ranges.

This module owns the mapping "member bytes -> package bytes": a STORED member is a plain range
of the package; a DEFLATED member must be inflated from its start, because DEFLATE has no
index. To make random access affordable the reader keeps:

- **seek points**: a ``zlib`` decompressor snapshot (``Decompress.copy()``, ~40 KiB each) every
  ``seek_interval`` bytes of output (4 MiB by default), at most ``max_seek_points`` of them;
  when that bound is hit, every other point is dropped and the interval doubles. A read at an
  offset inside an already-inflated region therefore re-inflates at most one interval (~4 MiB,
  a few ms of CPU and, via the block cache, usually no network). A read beyond everything
  inflated so far must inflate everything up to it once (the DEFLATE format allows no
  shortcut); later reads there are cheap.
- **a window** of the most recent inflated output (``window_bytes``), so a sequential reader,
  or one that re-reads what it just read, never re-inflates; the live decompressor continues
  from the window's end.
- **inflated output in the block cache**: every aligned ``PLAIN_CHUNK`` (1 MiB) of output is
  kept in the package's memory cache (same LRU and budget as the compressed blocks), so once a
  member has been read through, random reads cost what they cost on a STORED member for as
  long as the cache holds it; seek points bound the cost of the rest.

The CRC-32 is carried along with every seek point and checked when a member has been inflated
to its end; a mismatch (or a stream that ends early or runs long) raises
:class:`CorruptPackageError` and poisons the reader. Inflation runs in a worker thread (zlib
releases the GIL), so a long re-inflation does not stall other filesystem requests.

A STORED member is read through the package's blocks or, for ``exact`` reads of a GeoTIFF,
through its tile pieces (``cog``). Which one, and what to fetch ahead, is decided per open
handle (``readahead.MemberHandle``); a DEFLATED member prefetches its compressed input ahead
of the inflater.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, replace
from typing import Protocol

import trio

from pixxelfs.errors import CorruptPackageError
from pixxelfs.remote.cog import PieceMap
from pixxelfs.remote.zipindex import STORED, ZipMember

log = logging.getLogger(__name__)

# Output produced per inflate step: bounds memory and the time one thread call takes.
_STEP_OUTPUT = 1024 * 1024
# Inflated output is kept in the cache in aligned pieces of this size.
PLAIN_CHUNK = 1024 * 1024


class PackageBytes(Protocol):
    """What a member reader needs from its package (``RemotePackage`` provides it)."""

    @property
    def block_size(self) -> int: ...

    async def read(
        self, offset: int, size: int, *, pieces: PieceMap | None = None, more_pieces: int = 0
    ) -> bytes: ...

    def prefetch(
        self, offset: int, size: int, *, pieces: PieceMap | None = None, more_pieces: int = 0
    ) -> None: ...

    def recall_plain(self, member: ZipMember, index: int) -> bytes | None:
        """Inflated output piece ``index`` (of ``PLAIN_CHUNK`` bytes) if cached."""
        ...

    def keep_plain(self, member: ZipMember, index: int, data: bytes) -> None: ...

    def forget_plain(self, member: ZipMember) -> None:
        """Drop every kept piece of ``member``'s output (it failed its checks)."""
        ...


@dataclass
class _Cursor:
    """The state of an inflation: where it is in output and input, and the running CRC."""

    decompressor: zlib._Decompress
    out_pos: int
    in_pos: int
    pending: bytes
    crc: int

    def snapshot(self) -> _Cursor:
        return replace(self, decompressor=self.decompressor.copy())


def _fresh_cursor() -> _Cursor:
    return _Cursor(zlib.decompressobj(-zlib.MAX_WBITS), 0, 0, b"", 0)


class MemberReader:
    """``read(offset, size)`` of one member's plain bytes; safe for concurrent callers."""

    def __init__(
        self,
        package: PackageBytes,
        member: ZipMember,
        data_start: int,
        *,
        seek_interval: int = 4 * 1024 * 1024,
        max_seek_points: int = 64,
        window_bytes: int = 1024 * 1024,
        readahead_bytes: int = 4 * 1024 * 1024,
        pieces: PieceMap | None = None,
    ):
        if seek_interval <= 0 or max_seek_points < 1:
            raise ValueError("seek_interval and max_seek_points must be positive")
        self.member = member
        self._package = package
        self.data_start = data_start
        self.pieces = pieces
        self._interval = seek_interval
        self._max_points = max_seek_points
        self._window_limit = window_bytes
        self._readahead = readahead_bytes
        self._lock = trio.Lock()
        self._points: dict[int, _Cursor] = {}
        self._cursor: _Cursor | None = None
        self._window = bytearray()
        self._window_start = 0
        self._verified = False
        self._poisoned: CorruptPackageError | None = None
        self._gathered = bytearray()  # inflated output of the PLAIN_CHUNK being completed
        self._gathered_at: int | None = None  # its start; None until a chunk boundary
        self.inflated_bytes = 0

    @property
    def size(self) -> int:
        return self.member.size

    @property
    def seek_points(self) -> int:
        return len(self._points)

    def piece_at(self, offset: int, size: int = 0) -> tuple[int, int] | None:
        """The GeoTIFF piece (tile) a read of ``size`` bytes at member ``offset`` is for, in
        package coordinates (only compared with each other), or None when reads there are
        plain blocks. A read that only grazes a tile's end is for the next tile."""
        if self.pieces is None or self.member.method != STORED:
            return None
        start = self.data_start + offset
        return self.pieces.piece_read(start, start + size)

    def piece_below(self, piece: tuple[int, int]) -> tuple[int, int] | None:
        """The piece of the tile one row below ``piece``'s tile (None: not a tile, last row)."""
        return None if self.pieces is None else self.pieces.piece_below(piece)

    def piece_kept(self, piece: tuple[int, int]) -> bool:
        """Whether ``piece`` is kept in a cache (reading it costs no request)."""
        return self._package.holds(*piece)

    def prefetch_run(self, piece: tuple[int, int], count: int) -> None:
        """Fetch ``count`` adjacent pieces from ``piece`` on, in the background (one request),
        with the end of the piece in front: the kernel reads the first tile from the page
        before it (see ``cog.grazes``)."""
        if self.pieces is not None:
            start = max(piece[0] - 1, self.data_start)
            self._package.prefetch(
                start, piece[1] - start, pieces=self.pieces, more_pieces=count - 1
            )

    async def read(
        self, offset: int, size: int, *, exact: bool = False, more_pieces: int = 0
    ) -> bytes:
        """Member bytes ``[offset, offset + size)``, clamped; ``b""`` at or after the end.

        ``exact`` (a random reader) fetches whole GeoTIFF tiles rather than blocks, and
        ``more_pieces`` of the tiles that follow in the same request.
        """
        if offset < 0 or size < 0:
            raise ValueError("offset and size must be non-negative")
        end = min(offset + size, self.member.size)
        if offset >= end:
            return b""
        if self.member.method == STORED:
            pieces = self.pieces if exact else None
            return await self._package.read(
                self.data_start + offset, end - offset, pieces=pieces, more_pieces=more_pieces
            )
        plain = self._cached_plain(offset, end)
        if plain is not None and self._poisoned is None:
            await trio.lowlevel.checkpoint()
            return plain
        async with self._lock:
            if self._poisoned is not None:
                raise self._poisoned
            try:
                return await self._read_deflated(offset, end)
            except CorruptPackageError as exc:
                self._poisoned = exc
                # Output kept before the CRC-32 could be checked must not outlive this reader.
                self._package.forget_plain(self.member)
                raise

    def prefetch(self, offset: int, size: int) -> None:
        """Start fetching member bytes ahead of a sequential reader (STORED members only: a
        DEFLATED member's inflater prefetches its own compressed input)."""
        end = min(offset + size, self.member.size)
        if self.member.method == STORED and offset < end:
            self._package.prefetch(self.data_start + offset, end - offset)

    def _cached_plain(self, offset: int, end: int) -> bytes | None:
        """``[offset, end)`` from inflated output kept in the cache, or None if any is missing."""
        first = offset // PLAIN_CHUNK
        parts = []
        for index in range(first, (end - 1) // PLAIN_CHUNK + 1):
            data = self._package.recall_plain(self.member, index)
            if data is None:
                return None
            parts.append(data)
        base = first * PLAIN_CHUNK
        if len(parts) == 1:
            return parts[0][offset - base : end - base]
        return b"".join(parts)[offset - base : end - base]

    async def _read_deflated(self, offset: int, end: int) -> bytes:
        cursor = self._cursor
        out = bytearray()
        if cursor is not None and self._window_start <= offset <= cursor.out_pos:
            out += self._window[offset - self._window_start : end - self._window_start]
        else:
            cursor = self._cursor_for(offset)
        while cursor.out_pos < end:
            chunk_start = cursor.out_pos
            chunk = await self._step(cursor, end - cursor.out_pos)
            if chunk_start + len(chunk) > offset:
                out += chunk[max(offset - chunk_start, 0) :]
        if cursor.out_pos == self.member.size and not self._verified:
            await self._finish(cursor)
        return bytes(out)

    def _cursor_for(self, offset: int) -> _Cursor:
        """The live cursor if it is the closest start for ``offset``, else a seek point's."""
        best = max((p for p in self._points if p <= offset), default=0)
        live = self._cursor
        if live is not None and best <= live.out_pos <= offset:
            return live
        cursor = self._points[best].snapshot() if best else _fresh_cursor()
        log.debug("%s: re-inflating from %d to reach %d", self.member.name, cursor.out_pos, offset)
        self._cursor = cursor
        self._window = bytearray()
        self._window_start = cursor.out_pos
        return cursor

    async def _step(self, cursor: _Cursor, want: int) -> bytes:
        """Inflate at most ``want`` bytes (and never across a seek-point boundary)."""
        boundary = (cursor.out_pos // self._interval + 1) * self._interval
        chunk_end = (cursor.out_pos // PLAIN_CHUNK + 1) * PLAIN_CHUNK
        limit = min(want, _STEP_OUTPUT, boundary - cursor.out_pos, chunk_end - cursor.out_pos)
        chunk = b""
        while not chunk:
            if not cursor.pending:
                await self._feed(cursor)
            chunk = await trio.to_thread.run_sync(self._inflate, cursor, limit)
        self._remember(cursor, chunk)
        return chunk

    async def _feed(self, cursor: _Cursor) -> None:
        """Load the next compressed block (aligned to the cache's blocks) into the cursor."""
        member = self.member
        if cursor.decompressor.eof or cursor.in_pos >= member.compressed_size:
            raise CorruptPackageError(
                f"member {member.name!r}: compressed data ends after {cursor.out_pos} of "
                f"{member.size} bytes"
            )
        position = self.data_start + cursor.in_pos
        block = self._package.block_size
        length = min(block - position % block, member.compressed_size - cursor.in_pos)
        self._package.prefetch(position + length, self._readahead)
        data = await self._package.read(position, length)
        cursor.pending = data
        cursor.in_pos += length

    def _inflate(self, cursor: _Cursor, limit: int) -> bytes:
        """One zlib call (run in a worker thread; the reader's lock is held)."""
        decompressor = cursor.decompressor
        try:
            chunk = decompressor.decompress(cursor.pending, limit)
        except zlib.error as exc:
            message = f"member {self.member.name!r}: bad deflate data: {exc}"
            raise CorruptPackageError(message) from exc
        cursor.pending = b"" if decompressor.eof else decompressor.unconsumed_tail
        cursor.crc = zlib.crc32(chunk, cursor.crc)
        cursor.out_pos += len(chunk)
        return chunk

    def _remember(self, cursor: _Cursor, chunk: bytes) -> None:
        """Extend the window, keep whole chunks of output, take seek points at boundaries."""
        self.inflated_bytes += len(chunk)
        self._gather(cursor.out_pos - len(chunk), chunk)
        self._window += chunk
        excess = len(self._window) - self._window_limit
        if excess > 0:
            del self._window[:excess]
            self._window_start += excess
        position = cursor.out_pos
        if position % self._interval == 0 and position < self.member.size:
            self._points[position] = cursor.snapshot()
            if len(self._points) > self._max_points:
                self._interval *= 2
                self._points = {p: c for p, c in self._points.items() if p % self._interval == 0}

    def _gather(self, start: int, chunk: bytes) -> None:
        """Collect output into aligned ``PLAIN_CHUNK`` pieces and keep each complete one.

        ``chunk`` never crosses a piece boundary (``_step`` stops there); gathering starts at
        a boundary, so output inflated from an unaligned seek point waits for the next one."""
        if start % PLAIN_CHUNK == 0:
            self._gathered, self._gathered_at = bytearray(), start
        if self._gathered_at is None or self._gathered_at + len(self._gathered) != start:
            self._gathered_at = None
            return
        self._gathered += chunk
        end = start + len(chunk)
        if end % PLAIN_CHUNK == 0 or end == self.member.size:
            index = self._gathered_at // PLAIN_CHUNK
            self._package.keep_plain(self.member, index, bytes(self._gathered))
            self._gathered, self._gathered_at = bytearray(), None

    async def _finish(self, cursor: _Cursor) -> None:
        """At the declared end: the stream must end here and the CRC-32 must match."""
        member = self.member
        while not cursor.decompressor.eof:
            if not cursor.pending:
                await self._feed(cursor)
            if await trio.to_thread.run_sync(self._inflate, cursor, 1):
                raise CorruptPackageError(
                    f"member {member.name!r} inflates to more than its {member.size} bytes"
                )
        if cursor.crc != member.crc32:
            raise CorruptPackageError(
                f"member {member.name!r} fails its CRC-32 check "
                f"({cursor.crc:08x} != {member.crc32:08x})"
            )
        self._verified = True
