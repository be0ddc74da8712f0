"""The two read paths' decision and the memory they may use: per-handle access patterns and a
global budget of bytes in flight.

:class:`AccessPattern` watches one open file handle. A handle is *streaming* once it has read
``initial_window`` bytes in a row (reads may arrive out of order by up to ``tolerance``, as the
kernel's parallel readahead delivers them); a streaming handle gets a readahead window that
starts at ``initial_window`` and doubles, each time half of it has been consumed, up to
``max_window`` (Mountpoint-S3's scheme). A seek resets the window. Like gcsfuse, a handle whose
reads average less than ``random_threshold`` bytes per seek is *random*: it must then read
``random_threshold`` bytes in a row before it streams again, so a GIS reader walking through a
multi-MiB tile does not trigger readahead beyond it (for a file with tiles, the threshold is
at least three times the handle's typical run of adjacent tiles: a row of two 4 MiB tiles is
8 MiB in a row, and still random). Random handles read exact ranges (COG tiles) or single
blocks, never a window.

:class:`MemoryBudget` bounds the bytes of range parts being fetched at once, across every
package of a mount: a part waits for room before its request is sent (backpressure), so
however many handles stream, the daemon holds at most the budget in flight; the mount takes
that budget out of the memory cache's size (``mount.block_cache_bytes``).

:class:`PieceRuns` sizes a random handle's requests the way gcsfuse sizes them to the
average read, in units of file-format pieces (COG tiles): GDAL reads the tiles of one window
row after row, each row a run of tiles that lie next to each other in the file, one read after
the other. At the start of a run, the handle fetches as many adjacent pieces as its recent runs
held, in one request, as GDAL's own ``/vsicurl/`` merges a row's tiles; and when its runs tend
to start one tile row below the run before (the rows of one window), the row below too.

:class:`MemberHandle` is the per-handle object the filesystem keeps: pattern plus reader.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import trio

MIB = 1 << 20


@dataclass(frozen=True)
class ReadaheadPolicy:
    """Sizes of the sequential path; the defaults follow Mountpoint-S3 and gcsfuse."""

    initial_window: int = MIB
    max_window: int = 64 * MIB
    random_threshold: int = 8 * MIB
    # How far out of order a read may land and still continue a sequential run.
    tolerance: int = 4 * MIB

    def __post_init__(self) -> None:
        if not 0 < self.initial_window <= self.max_window:
            raise ValueError("need 0 < initial_window <= max_window")

    @classmethod
    def for_cache(cls, cache_bytes: int, kernel_readahead: int = 0) -> ReadaheadPolicy:
        """A policy whose window never exceeds a quarter of the cache (else blocks fetched
        ahead would be evicted before they are read), tolerant of the kernel's readahead."""
        window = max(MIB, min(64 * MIB, cache_bytes // 4))
        return cls(max_window=window, tolerance=max(4 * MIB, 2 * kernel_readahead))


@dataclass(frozen=True)
class Advice:
    """What one read should do: read exactly (random) or not, and what to fetch ahead."""

    streaming: bool
    ahead_start: int = 0
    ahead_size: int = 0


class AccessPattern:
    """Sequential/random detection and the readahead window of one handle."""

    def __init__(self, policy: ReadaheadPolicy, limit: int, *, tiled: bool = False):
        self.policy = policy
        self._limit = limit
        # A tiled GeoTIFF is read a tile at a time by GIS readers: its handles start out
        # random (a 4 MiB tile read in one go is not the start of a stream).
        self._tiled = tiled
        self._last = -1  # where the previous read ended; -1 before the first read
        self._end = 0  # the furthest byte read in the current run
        self._run = 0  # bytes read in the current sequential run
        self._window = policy.initial_window
        self._frontier = 0  # everything before this has been read or asked for ahead
        self.reads = 0
        self.bytes_read = 0
        self.seeks = 0
        self.ahead_bytes = 0
        self.tile_run = 0  # the typical run of adjacent tiles, when the file has tiles

    @property
    def random(self) -> bool:
        """gcsfuse's rule: fewer than ``random_threshold`` bytes read per seek."""
        return self.seeks > 0 and self.bytes_read < self.seeks * self.random_threshold

    @property
    def random_threshold(self) -> int:
        """``random_threshold``, or three times the handle's typical run of tiles when larger:
        a GIS reader's row of tiles (two 4 MiB tiles: 8 MiB in a row) is not a stream."""
        return max(self.policy.random_threshold, 3 * self.tile_run)

    @property
    def window(self) -> int:
        return self._window

    def observe(self, offset: int, size: int) -> Advice:
        """Record a read of ``[offset, offset + size)`` and say how to serve it."""
        end = min(offset + size, self._limit)
        self.reads += 1
        self.bytes_read += max(end - offset, 0)
        if self._last < 0 or abs(offset - self._last) <= self.policy.tolerance:
            self._run += max(end - offset, 0)
            self._end = max(self._end, end)
        else:
            self.seeks += 1
            self._run = end - offset
            self._window = self.policy.initial_window
            self._end = self._frontier = end
        self._last = end
        random = self.random or self._tiled
        needed = self.random_threshold if random else self.policy.initial_window
        if self._run < needed:
            return Advice(streaming=False)
        return self._ahead(max(self._frontier, self._end))

    def _ahead(self, start: int) -> Advice:
        """Extend the window when half of what was asked for ahead has been consumed."""
        if start - self._end > self._window // 2:
            return Advice(streaming=True)
        target = min(self._end + self._window, self._limit)
        self._window = min(self._window * 2, self.policy.max_window)
        self._frontier = max(start, target)
        if target <= start:
            return Advice(streaming=True)
        self.ahead_bytes += target - start
        return Advice(streaming=True, ahead_start=start, ahead_size=target - start)

    def stats(self) -> dict[str, int | bool]:
        return {
            "reads": self.reads,
            "bytes_read": self.bytes_read,
            "seeks": self.seeks,
            "random": self.random,
            "window": self._window,
            "ahead_bytes": self.ahead_bytes,
        }


class PieceRuns:
    """Runs of file-adjacent pieces read by one random handle, and how many to fetch at once."""

    def __init__(self, history: int = 8, max_pieces: int = 4):
        self._max = max_pieces
        self._counts: deque[int] = deque(maxlen=history)
        self._lengths: deque[int] = deque(maxlen=history)
        self._start = self._end = -1  # the current run's extent
        self._count = 0  # pieces in the current run
        self.started = False  # whether the last observed read started a run

    def observe(self, start: int, end: int) -> int:
        """A read inside the piece ``[start, end)``: how many following pieces to fetch with it
        (only at the start of a run, once earlier runs are known)."""
        self.started = False
        if self._start <= start < self._end:
            return 0  # the same run (the kernel's reads of one tile may come out of order)
        if start == self._end:
            self._end = end
            self._count += 1
            return 0
        self.started = True
        if self._count:
            self._counts.append(self._count)
            self._lengths.append(self._end - self._start)
        self._start, self._end, self._count = start, end, 1
        if not self._counts:
            return 0
        return min(statistics.median_low(self._counts), self._max) - 1

    @property
    def typical_bytes(self) -> int:
        """The median length of recent runs (0 before the first run ended)."""
        return statistics.median_low(self._lengths) if self._lengths else 0


class MemoryBudget:
    """Bytes of range parts in flight, shared by a whole mount; waiters queue for room."""

    def __init__(self, limit: int):
        if limit <= 0:
            raise ValueError("the memory budget must be positive")
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self.waits = 0
        self._freed = trio.Event()

    @asynccontextmanager
    async def reserve(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes (at most the whole budget) for the body of the block."""
        size = min(size, self.limit)
        if self.in_use + size > self.limit:
            self.waits += 1
        while self.in_use + size > self.limit:
            await self._freed.wait()
        self.in_use += size
        self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            self.in_use -= size
            self._freed.set()
            self._freed = trio.Event()

    def stats(self) -> dict[str, int]:
        return {"limit": self.limit, "in_use": self.in_use, "peak": self.peak, "waits": self.waits}


@dataclass
class ReadPaths:
    """Mount-wide settings of the read paths and their counters, shared by every package.

    ``part_size`` is the largest single range request (Mountpoint-S3's 8 MiB parts);
    ``overview_prefetch`` bounds the bytes of small COG overviews fetched on open.
    """

    budget: MemoryBudget
    policy: ReadaheadPolicy
    part_size: int = 8 * MIB
    overview_prefetch: int = 4 * MIB
    parts: int = 0
    part_bytes: int = 0
    ahead_parts: int = 0
    exact_parts: int = 0

    @classmethod
    def default(cls) -> ReadPaths:
        return cls(MemoryBudget(64 * MIB), ReadaheadPolicy())

    def count(self, size: int, *, ahead: bool, exact: bool) -> None:
        self.parts += 1
        self.part_bytes += size
        self.ahead_parts += ahead
        self.exact_parts += exact

    def stats(self) -> dict[str, object]:
        return {
            "parts": self.parts,
            "part_bytes": self.part_bytes,
            "ahead_parts": self.ahead_parts,
            "exact_parts": self.exact_parts,
            "budget": self.budget.stats(),
        }


class HandleReader(Protocol):
    """What a handle reads through (``MemberReader`` provides it)."""

    @property
    def size(self) -> int: ...

    async def read(
        self, offset: int, size: int, *, exact: bool = False, more_pieces: int = 0
    ) -> bytes: ...

    def prefetch(self, offset: int, size: int) -> None: ...

    def piece_at(self, offset: int, size: int = 0) -> tuple[int, int] | None: ...

    def piece_below(self, piece: tuple[int, int]) -> tuple[int, int] | None: ...

    def piece_kept(self, piece: tuple[int, int]) -> bool: ...

    def prefetch_run(self, piece: tuple[int, int], count: int) -> None: ...


class MemberHandle:
    """One open file: its access pattern decides between the streaming and the exact path."""

    def __init__(self, reader: HandleReader, policy: ReadaheadPolicy):
        self.reader = reader
        self.pattern = AccessPattern(policy, reader.size, tiled=reader.piece_at(0) is not None)
        self.runs = PieceRuns()
        self._below: tuple[int, int] | None = None  # the tile below the last run's first tile
        self._stacked: deque[bool] = deque(maxlen=8)  # recent runs: right below the one before?
        self.rows_ahead = 0

    async def read(self, offset: int, size: int) -> bytes:
        advice = self.pattern.observe(offset, size)
        if advice.ahead_size:
            self.reader.prefetch(advice.ahead_start, advice.ahead_size)
        if advice.streaming:
            return await self.reader.read(offset, size)
        piece = self.reader.piece_at(offset, size)
        more = 0
        if piece is not None:
            more = self.runs.observe(*piece)
            self.pattern.tile_run = self.runs.typical_bytes
            # Tiles beyond the one read are fetched on a guess, and only in new ground: a
            # reader going over kept windows again (a second GIS process, some of whose reads
            # the page cache answers) costs no request for tiles it may never read.
            speculate = not self.reader.piece_kept(piece)
            more = more if speculate else 0
            if self.runs.started:
                self._row_below(piece, more + 1, speculate=speculate)
        return await self.reader.read(offset, size, exact=True, more_pieces=more)

    def _row_below(self, piece: tuple[int, int], count: int, *, speculate: bool) -> None:
        """GDAL reads a window's rows of tiles one after the other: when at least a quarter of
        this handle's recent runs started right below the run before, fetch the row below this
        one now, over another connection, instead of after this row has arrived (when
        ``speculate``: see :meth:`read`)."""
        stacked = piece == self._below
        self._stacked.append(stacked)
        self._below = self.reader.piece_below(piece)
        if not speculate or stacked or self._below is None:
            return
        if 4 * sum(self._stacked) < len(self._stacked):
            return
        self.rows_ahead += 1
        self.reader.prefetch_run(self._below, count)

    def stats(self) -> dict[str, int | bool]:
        return {
            **self.pattern.stats(),
            "tile_run": self.pattern.tile_run,
            "rows_ahead": self.rows_ahead,
        }
