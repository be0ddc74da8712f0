"""A remote delivery package: its ZIP index and its bytes, read through the block cache.

This module owns turning package byte ranges into aligned block reads (so concurrent and
repeated reads share fetches), reading the ZIP directory with one or two range requests, and
handing out member readers. It does not parse ZIP structures (``zipindex``) nor inflate
members (``member``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio
from cachetools import LRUCache

from pixxelfs.errors import CorruptPackageError, StorageError
from pixxelfs.remote.block_cache import BlockCache, BlockKey, Fetch
from pixxelfs.remote.member import MemberReader
from pixxelfs.remote.storage import DEFAULT_PROBE_BYTES, PackageSource
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

    ``tiers`` are the cache levels below memory (disk, shared store; see ``tiers``).
    ``max_parallel_blocks`` bounds how many blocks one read (or one readahead hint) fetches at
    once; member readers are shared per member so their inflate seek points are reused by
    every handle.
    """

    def __init__(
        self,
        source: PackageSource,
        cache: BlockCache,
        *,
        max_parallel_blocks: int = 8,
        max_readers: int = 32,
        tiers: Sequence[BlockTier] = (),
    ):
        self.source = source
        self._cache = cache
        self._tiers = tuple(tiers)
        self._parallel = max(1, max_parallel_blocks)
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
                self._index = await read_zip_index(self.source)
            return self._index

    async def read(self, offset: int, size: int) -> bytes:
        """Package bytes ``[offset, offset + size)``, clamped to the package's end."""
        if offset < 0 or size < 0:
            raise ValueError("offset and size must be non-negative")
        total = await self.size()
        end = min(offset + size, total)
        if offset >= end:
            return b""
        block = self.block_size
        first, last = offset // block, (end - 1) // block
        parts: list[bytes] = []
        for index in range(first, last + 1):
            for ahead in range(index + 1, min(index + self._parallel, last + 1)):
                self._cache.prefetch(self._key(ahead), self._fetcher(ahead, total))
            data = await self._cache.get(self._key(index), self._fetcher(index, total))
            start = index * block
            expected = min(start + block, total) - start
            if len(data) != expected:
                raise StorageError(f"block {index} has {len(data)} bytes, expected {expected}")
            parts.append(data[max(offset - start, 0) : min(end - start, expected)])
        return b"".join(parts)

    def prefetch(self, offset: int, size: int) -> None:
        """Start fetching the blocks of ``[offset, offset + size)`` without waiting (a hint)."""
        info = self.source.info
        if info is None or size <= 0:
            return
        end = min(offset + size, info.size)
        if offset >= end:
            return
        block = self.block_size
        last = min((end - 1) // block, offset // block + self._parallel - 1)
        for index in range(offset // block, last + 1):
            self._cache.prefetch(self._key(index), self._fetcher(index, info.size))

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
        header = await self.read(member.header_offset, LOCAL_HEADER_SIZE)
        start = data_offset(header, member)
        if start + member.compressed_size > await self.size():
            raise CorruptPackageError(f"member {member.name!r} runs past the end of the package")
        reader = self._readers.get(member)
        if reader is None:
            reader = MemberReader(self, member, start)
            self._readers[member] = reader
        return reader

    def _key(self, index: int) -> BlockKey:
        return BlockKey(self.source.identity, index)

    def _fetcher(self, index: int, total: int) -> Fetch:
        start = index * self.block_size
        end = min(start + self.block_size, total)

        async def origin() -> bytes:
            return await self.source.read_range(start, end)

        return chain(self._tiers, self._key(index), origin)
