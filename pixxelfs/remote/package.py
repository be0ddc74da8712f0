"""A remote delivery package: its ZIP index and its bytes, read through the block cache.

This module owns turning package byte ranges into cacheable *units* (aligned blocks, or exact
ranges such as COG tiles) and units into range requests: consecutive units missing from the
cache are fetched as one request of at most ``part_size`` bytes, several parts in parallel,
each part waiting for room in the mount's memory budget first. It reads the ZIP directory with
one or two range requests, and hands out member readers, parsing a STORED GeoTIFF's header
and IFDs on first open (one exact request) so random reads can fetch whole tiles and the
smallest overviews are prefetched. It does not parse ZIP or TIFF structures (``zipindex``,
``cog``) nor inflate members (``member``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import trio
from cachetools import LRUCache

from pixxelfs.errors import CorruptPackageError, StorageError
from pixxelfs.remote.block_cache import BlockCache, BlockKey, Fetch
from pixxelfs.remote.cog import (
    EDGE,
    HEADER_PROBE,
    NeedMoreBytes,
    PieceMap,
    Pieces,
    grazes,
    parse_layout,
)
from pixxelfs.remote.member import PLAIN_CHUNK, MemberReader
from pixxelfs.remote.readahead import ReadPaths
from pixxelfs.remote.storage import DEFAULT_PROBE_BYTES, ObjectInfo, PackageSource
from pixxelfs.remote.tiers import BlockTier, chain
from pixxelfs.remote.zipindex import (
    DEFLATED,
    LOCAL_HEADER_SIZE,
    MIN_TAIL,
    STORED,
    ZipIndex,
    ZipMember,
    data_offset,
    locate_central_directory,
    parse_central_directory,
)

log = logging.getLogger(__name__)

_GEOTIFF_SUFFIXES = (".tif", ".tiff")
# A GeoTIFF whose IFDs need more than this is read in plain blocks.
_MAX_HEADER = 16 << 20
# Room for the member name and extra field of a ZIP local header, read with the TIFF header.
_NAME_ROOM = 1024


class _ExactRange:
    """A piece map with one piece: reads the GeoTIFF header probe as one exact range."""

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end

    def piece_at(self, offset: int) -> tuple[int, int] | None:
        return (self.start, self.end) if self.start <= offset < self.end else None


@dataclass(frozen=True)
class _Unit:
    """One cacheable piece of package bytes: an aligned block or an exact range."""

    key: BlockKey
    start: int
    end: int


class _SharedRange:
    """One range request whose bytes several cache entries share.

    The body is cut into one bytes object per unit as it streams in. The unit whose fetch
    came first runs the request (to its end); every other unit's fetch returns as soon as its
    own piece is in, so the tiers below (a disk write) can keep it while the rest of the
    request is still arriving, instead of the whole part landing on them at once. Each piece
    is let go once its unit took it: the part is never held as one joined copy.
    """

    def __init__(self, package: RemotePackage, units: list[_Unit], *, ahead: bool, exact: bool):
        self._package = package
        self.start, self.end = units[0].start, units[-1].end
        self._units = units
        self._ahead, self._exact = ahead, exact
        self._arrived = {unit.start: trio.Event() for unit in units}
        self._pieces: dict[int, bytes] = {}
        self._started = False
        self._error: Exception | None = None

    def part(self, unit: _Unit) -> Fetch:
        """The origin fetch of ``unit`` (one of this request's)."""

        async def fetch() -> bytes:
            if not self._started:
                self._started = True
                await self._request()
            else:
                await self._arrived[unit.start].wait()
            piece = self._pieces.pop(unit.start, None)
            if piece is not None:
                return piece
            if self._error is not None:
                raise self._error
            # Asked for twice (a tier retrying), or the request was cancelled: on its own.
            return await self._package.source.read_range(unit.start, unit.end)

        return fetch

    async def _request(self) -> None:
        paths = self._package.paths
        try:
            async with paths.budget.reserve(self.end - self.start):
                paths.count(self.end - self.start, ahead=self._ahead, exact=self._exact)
                sizes = [unit.end - unit.start for unit in self._units]
                await self._package.source.read_split(
                    self.start, self.end, sizes, on_piece=self._hand_out
                )
        except Exception as exc:
            self._error = exc
            raise
        finally:  # nobody waits for a piece that will not come
            for arrived in self._arrived.values():
                arrived.set()

    def _hand_out(self, index: int, piece: bytes) -> None:
        """A unit's bytes are in: its readers and its own fetch need not wait for the rest.
        (A retried request hands pieces out again: the first one stands.)"""
        unit = self._units[index]
        arrived = self._arrived[unit.start]
        if arrived.is_set():
            return
        self._pieces[unit.start] = piece
        self._package.hand_out(unit.key, piece)
        arrived.set()


class SavedIndex(Protocol):
    """A package's version and ZIP index kept by an earlier mount (``disk_cache``)."""

    async def load(self) -> tuple[ObjectInfo, ZipIndex] | None: ...

    async def save(self, info: ObjectInfo, index: ZipIndex) -> None: ...

    def discard(self) -> None: ...


async def read_zip_index(source: PackageSource) -> ZipIndex:
    """The package's ZIP index: the tail probe, plus one range if the directory is larger."""
    info = await source.size_and_etag()
    tail = await source.read_tail(max(MIN_TAIL, DEFAULT_PROBE_BYTES))
    directory = locate_central_directory(tail, info.size)
    data = directory.slice_from(tail, info.size)
    if data is None:
        log.debug(
            "catalog %s: central directory of %d bytes needs a second read",
            source.catalog_id,
            directory.size,
        )
        data = b""
        if directory.size:
            data = await source.read_range(directory.offset, directory.offset + directory.size)
    return parse_central_directory(data, directory)


class RemotePackage:
    """One package version: cached index, block-cached byte ranges and shared member readers.

    ``tiers`` are the cache levels below memory (disk, shared store; see ``tiers``); they see
    block keys and exact-range keys (``BlockKey.unit``). ``paths`` holds the mount-wide part
    size, memory budget and counters. Member readers are shared per member so their inflate
    seek points and parsed GeoTIFF layout are reused by every handle.
    """

    def __init__(
        self,
        source: PackageSource,
        cache: BlockCache,
        *,
        paths: ReadPaths | None = None,
        max_readers: int = 32,
        tiers: Sequence[BlockTier] = (),
        saved: SavedIndex | None = None,
    ):
        self.source = source
        self.paths = paths or ReadPaths.default()
        self._cache = cache
        self._tiers = tuple(tiers)
        self._saved = saved
        self._index: ZipIndex | None = None
        self._index_lock = trio.Lock()
        self._readers: LRUCache[ZipMember, MemberReader] = LRUCache(maxsize=max_readers)

    @property
    def block_size(self) -> int:
        return self._cache.block_size

    async def size(self) -> int:
        return (await self.source.size_and_etag()).size

    async def index(self) -> ZipIndex:
        """The ZIP index, read once (concurrent callers wait for the first)."""
        async with self._index_lock:
            if self._index is None:
                self._index = await self._load_index()
            return self._index

    async def _load_index(self) -> ZipIndex:
        """The saved index of an earlier mount (pinning its version: no request), else read."""
        if self._saved is not None:
            saved = await self._saved.load()
            if saved is not None:
                self.source.pin(saved[0])
                return saved[1]
        index = await read_zip_index(self.source)
        if self._saved is not None and self.source.info is not None:
            await self._saved.save(self.source.info, index)
        return index

    def discard_saved_index(self) -> None:
        """The package changed: the saved index must not be used again."""
        if self._saved is not None:
            self._saved.discard()

    async def read(
        self, offset: int, size: int, *, pieces: Pieces | None = None, more_pieces: int = 0
    ) -> bytes:
        """Package bytes ``[offset, offset + size)``, clamped to the package's end.

        With ``pieces``, bytes inside a piece are fetched as that exact range (a COG tile);
        the others as aligned blocks. ``more_pieces`` pieces that follow the read (the rest of
        a row of tiles) are fetched in the same request.
        """
        if offset < 0 or size < 0:
            raise ValueError("offset and size must be non-negative")
        total = await self.size()
        end = min(offset + size, total)
        if offset >= end:
            return b""
        segments = self._plan(offset, end, total, pieces)
        units = [unit for unit, _, _ in segments]
        fetchers = self._fetchers_with_row(units, offset, pieces, more_pieces, ahead=False)
        for key, fetch in fetchers.items():
            if key != units[0].key:  # that one is started by get()
                self._cache.prefetch(key, fetch)
        parts: list[bytes] = []
        for unit, start, stop in segments:
            fetch = fetchers.get(unit.key)
            if fetch is None:  # cached or in flight when planned (it may be evicted since)
                fetch = self._through_tiers(unit, self._shared([unit], ahead=False))
            data = await self._cache.get(unit.key, fetch)
            if len(data) != unit.end - unit.start:
                raise StorageError(
                    f"bytes {unit.start}-{unit.end}: got {len(data)}, expected "
                    f"{unit.end - unit.start}"
                )
            parts.append(data[start - unit.start : stop - unit.start])
        return b"".join(parts)

    def prefetch(
        self, offset: int, size: int, *, pieces: Pieces | None = None, more_pieces: int = 0
    ) -> None:
        """Start fetching ``[offset, offset + size)`` in parts, without waiting (a hint);
        ``more_pieces`` as for :meth:`read`."""
        info = self.source.info
        if info is None or size <= 0:
            return
        end = min(offset + size, info.size)
        if offset < end:
            units = [unit for unit, _, _ in self._plan(offset, end, info.size, pieces)]
            fetchers = self._fetchers_with_row(units, offset, pieces, more_pieces, ahead=True)
            for key, fetch in fetchers.items():
                self._cache.prefetch(key, fetch)

    def _plan(
        self, offset: int, end: int, total: int, pieces: Pieces | None
    ) -> list[tuple[_Unit, int, int]]:
        """The units covering ``[offset, end)``, each with the part of it the read wants."""
        segments: list[tuple[_Unit, int, int]] = []
        position = offset
        while position < end:
            piece = pieces.piece_at(position) if pieces is not None else None
            if piece is not None and not self._in_blocks(*piece):
                if grazes(piece, position, end) and not self._available(self._range_key(*piece)):
                    piece = (max(piece[0], piece[1] - EDGE), piece[1])  # its end, not the tile
                unit = _Unit(self._range_key(*piece), *piece)
            else:
                index = position // self.block_size
                start = index * self.block_size
                unit = _Unit(self._key(index), start, min(start + self.block_size, total))
            segments.append((unit, position, min(unit.end, end)))
            position = unit.end
        return segments

    def holds(self, start: int, end: int) -> bool:
        """Whether the exact range (a tile) is kept here or in a tier below, so reading it
        costs no request (one being fetched is not kept yet)."""
        key = self._range_key(start, end)
        return self._cache.peek(key) is not None or self._held_below(key)

    def _available(self, key: BlockKey) -> bool:
        """Cached, coming, or kept by a tier below: asking for ``key`` costs no request."""
        return self._cache.known(key) or self._held_below(key)

    def _held_below(self, key: BlockKey) -> bool:
        return any(tier.holds(key) for tier in self._tiers)

    def _in_blocks(self, start: int, end: int) -> bool:
        """Whether ``[start, end)`` is available as blocks but not as that exact range: a tile
        that a sequential reader (``cp``, ``prefetch``) already brought in, to memory or to
        disk, is read from those blocks rather than fetched again."""
        if self._available(self._range_key(start, end)):
            return False
        first, last = start // self.block_size, (end - 1) // self.block_size
        return all(self._available(self._key(index)) for index in range(first, last + 1))

    def _fetchers_with_row(
        self,
        units: list[_Unit],
        read_start: int,
        pieces: Pieces | None,
        more_pieces: int,
        *,
        ahead: bool,
    ) -> dict[BlockKey, Fetch]:
        """Fetchers for ``units`` and up to ``more_pieces`` pieces after them (the rest of a
        row of tiles); with such pieces a request may span two parts."""
        following = self._following(units[-1].end, more_pieces, pieces, read_start)
        limit = self.paths.part_size * (2 if following else 1)
        return self._fetchers(units + following, ahead=ahead, limit=limit)

    def _following(
        self, position: int, count: int, pieces: Pieces | None, read_start: int
    ) -> list[_Unit]:
        """Up to ``count`` pieces from ``position`` on, within two parts of the read's start."""
        units: list[_Unit] = []
        limit = read_start + 2 * self.paths.part_size
        while pieces is not None and len(units) < count:
            piece = pieces.piece_at(position)
            if piece is None or piece[0] != position or piece[1] > limit:
                break
            if self._in_blocks(*piece):
                break
            units.append(_Unit(self._range_key(*piece), *piece))
            position = piece[1]
        return units

    def _fetchers(
        self, units: list[_Unit], *, ahead: bool, limit: int | None = None
    ) -> dict[BlockKey, Fetch]:
        """Fetch functions for the units missing from the cache: consecutive ones share one
        request of at most ``limit`` bytes (default: ``part_size``). A unit a tier below keeps
        is read from there, in no shared request (its own only if the tier fails it)."""
        runs: list[list[_Unit]] = []
        limit = limit or self.paths.part_size
        last_held = False  # the last run is a unit kept below (it shares no request)
        for unit in units:
            if self._cache.known(unit.key):
                continue
            held = self._held_below(unit.key)
            run = None if held or last_held or not runs else runs[-1]
            if run and run[-1].end == unit.start and unit.end - run[0].start <= limit:
                run.append(unit)
            else:
                runs.append([unit])
            last_held = held
        fetchers: dict[BlockKey, Fetch] = {}
        for run in runs:
            shared = self._shared(run, ahead=ahead)
            for unit in run:
                fetchers[unit.key] = self._through_tiers(unit, shared)
        return fetchers

    def _shared(self, run: list[_Unit], *, ahead: bool) -> _SharedRange:
        """One request for the consecutive units of ``run``."""
        exact = any(not unit.key.is_block for unit in run)
        return _SharedRange(self, run, ahead=ahead, exact=exact)

    def _through_tiers(self, unit: _Unit, shared: _SharedRange) -> Fetch:
        """Fetch ``unit`` through the cache tiers, the origin being its share of ``shared``.

        Bytes from the origin go to the memory cache's readers at once, while the tiers
        keep them (a disk write must not hold up the read that needed the block)."""
        part = shared.part(unit)
        if not self._tiers:
            return part

        async def origin() -> bytes:
            data = await part()
            self._cache.deliver(unit.key, data)
            return data

        return chain(self._tiers, unit.key, origin)

    def hand_out(self, key: BlockKey, data: bytes) -> None:
        """Give a unit's bytes to the memory cache's readers while its request goes on."""
        self._cache.deliver(key, data, behind=False)

    async def open_member(self, member: ZipMember) -> MemberReader:
        """A reader for ``member`` (shared with other openers of the same member)."""
        reader = self._readers.get(member)
        if reader is not None:
            return reader
        if member.is_encrypted:
            raise CorruptPackageError(f"member {member.name!r} is encrypted; it cannot be read")
        if member.method not in (STORED, DEFLATED):
            raise CorruptPackageError(
                f"member {member.name!r} uses compression method {member.method}; "
                "only stored and deflated members can be read"
            )
        geotiff = member.method == STORED and member.name.lower().endswith(_GEOTIFF_SUFFIXES)
        head_start = member.header_offset
        if geotiff:  # the local header, the TIFF header and its IFDs: one exact request
            length = min(LOCAL_HEADER_SIZE + _NAME_ROOM + HEADER_PROBE, await self.size())
            exact = _ExactRange(head_start, min(head_start + length, await self.size()))
            head = await self.read(head_start, length, pieces=exact)
        else:
            head = await self.read(head_start, LOCAL_HEADER_SIZE)
        start = data_offset(head, member)
        if start + member.compressed_size > await self.size():
            raise CorruptPackageError(f"member {member.name!r} runs past the end of the package")
        pieces = None
        if geotiff:
            probe = head[start - head_start : start - head_start + member.size]
            pieces = await self._pieces(member, start, head_start, probe)
        reader = self._readers.get(member)
        if reader is None:
            reader = MemberReader(self, member, start, pieces=pieces)
            self._readers[member] = reader
        return reader

    async def _pieces(
        self, member: ZipMember, start: int, head_start: int, probe: bytes
    ) -> PieceMap | None:
        """A GeoTIFF's tile pieces from the bytes read on open (plus one more exact request
        when the IFDs are larger), or None; then the smallest overviews are prefetched."""
        while probe:
            try:
                layout = parse_layout(probe, member.size)
            except NeedMoreBytes as more:
                if len(probe) >= member.size or more.size > _MAX_HEADER:
                    return None
                length = min(member.size, max(more.size, 4 * len(probe)))
                head_start = start
                probe = await self.read(start, length, pieces=_ExactRange(start, start + length))
                continue
            if layout is None:
                log.debug("%s: not a TIFF this reader understands; plain blocks", member.name)
                return None
            pieces = PieceMap(layout, start, head_start)
            for first, end in pieces.overview_ranges(self.paths.overview_prefetch):
                self.prefetch(first, end - first, pieces=pieces)
            return pieces
        return None

    def recall_plain(self, member: ZipMember, index: int) -> bytes | None:
        """A DEFLATED member's inflated output piece, if the memory cache holds it."""
        return self._cache.peek(self._plain_key(member, index))

    def keep_plain(self, member: ZipMember, index: int, data: bytes) -> None:
        self._cache.put(self._plain_key(member, index), data)

    def forget_plain(self, member: ZipMember) -> None:
        for index in range(-(-member.size // PLAIN_CHUNK)):
            self._cache.discard(self._plain_key(member, index))

    def _plain_key(self, member: ZipMember, index: int) -> BlockKey:
        return BlockKey(self.source.identity, index, ("plain", member.header_offset))

    def _key(self, index: int) -> BlockKey:
        return BlockKey(self.source.identity, index)

    def _range_key(self, start: int, end: int) -> BlockKey:
        return BlockKey(self.source.identity, start, ("range", end))
