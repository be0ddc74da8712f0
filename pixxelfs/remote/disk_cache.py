"""The persistent disk cache of one account: verified blocks and saved package indexes.

This module owns what pixxelfs keeps on disk about packages, under one folder per account
(a hash of the API URL and a hash of the API key, never the key itself, so two workspaces
never share bytes)::

    <account>/blocks/<2 hex>/<38 hex>.<block size>.pkg   the aligned blocks of one package
                                                         version: a slot per block, sparse
    <account>/blocks/<2 hex>/<38 hex>.blk                one exact byte range (a COG tile)
    <account>/blocks/.ledger                 bytes held; its fcntl lock orders writers
    <account>/packages/<hash>.json           a package's ETag, size and ZIP index
    <account>/catalog.json                   the catalog snapshot (catalog.snapshot)

(``<account>`` is ``<cache dir>/<hash of the URL>-<hash of the key>``.)

Blocks and their format are :mod:`~pixxelfs.remote.block_store`'s.

All file I/O runs in threads (:class:`BlockStore` is synchronous); :class:`DiskBlockTier` is the
async :class:`~pixxelfs.remote.tiers.BlockTier` in front of it. Reads are worker-thread calls;
writes queue for two writer threads (:mod:`~pixxelfs.remote.batch_writer`) that store what has
queued up in batches, the slots of one package file through one open file and booked under one
lock. A failing disk (full, read-only, I/O errors) turns writing off with one warning; reads
never fail because of it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import errno
import json
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from pixxelfs.remote.batch_writer import BatchWriter
from pixxelfs.remote.block_cache import BlockKey, Fetch
from pixxelfs.remote.block_store import BlockStore, block_name, digest, write_file
from pixxelfs.remote.storage import ObjectInfo
from pixxelfs.remote.zipindex import ZipIndex, ZipMember

log = logging.getLogger(__name__)

BLOCKS = "blocks"
PACKAGES = "packages"


def account_dir(root: Path, api_url: str, api_key: str) -> Path:
    """The folder of one workspace: hashes of the API URL and of the key (never the key)."""
    url = digest(api_url.rstrip("/"), b"pixxelfs.url")
    key = digest(api_key, b"pixxelfs.key")
    return root / f"{url}-{key}"


def accounts(root: Path) -> list[Path]:
    """The account folders under a cache dir (for ``pixxelfs cache``)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / BLOCKS).is_dir())


# ---- the tier ---------------------------------------------------------------------------------


class DiskBlockTier:
    """The disk level below the memory cache (a :class:`~pixxelfs.remote.tiers.BlockTier`)."""

    def __init__(self, store: BlockStore, block_size: int):
        self.store = store
        self.block_size = block_size
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.bytes_written = 0
        self.writing = True
        self._read_error_logged = False
        # Few threads: each one competes with the trio loop for the GIL and keeps its own
        # malloc arena; disk I/O gains nothing from dozens of them.
        self._readers = trio.CapacityLimiter(4)
        self._writer = BatchWriter(self._put_batch, threads=2)
        self._writing_lock = threading.Lock()

    async def fetch(self, key: BlockKey, below: Fetch) -> bytes:
        named = block_name(key, self.block_size)
        if named is None:
            return await below()
        name, text = named
        # Only blocks the index knows are looked for: a cold read skips a thread round trip per
        # block. (Blocks another running mount stores meanwhile are found after a rescan.)
        data = await self._read(name, text) if self.store.indexed(name) else None
        if data is not None:
            self.hits += 1
            return data
        self.misses += 1
        data = await below()
        await self._write(name, text, data)
        return data

    def holds(self, key: BlockKey) -> bool:
        named = block_name(key, self.block_size)
        return named is not None and self.store.indexed(named[0])

    async def _read(self, name: str, text: str) -> bytes | None:
        try:
            return await trio.to_thread.run_sync(self.store.get, name, text, limiter=self._readers)
        except OSError as exc:
            if not self._read_error_logged:
                self._read_error_logged = True
                log.warning("disk cache: cannot read %s (%s); reading from the network", name, exc)
            return None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[DiskBlockTier]:
        """The tier with its writer threads (they store what is queued before it ends)."""
        async with self._writer.running():
            yield self

    async def _write(self, name: str, text: str, data: bytes) -> None:
        """Store a block; return once it is stored (or given up)."""
        if self.writing and await self._writer.write((name, text, data)):
            self.writes += 1
            self.bytes_written += len(data)

    def _put_batch(self, blocks: list[tuple[str, str, bytes]]) -> list[bool]:
        """(In a writer thread.) Store blocks; a failing disk turns writing off."""
        if not self.writing:
            return [False] * len(blocks)
        try:
            return self.store.put_many(blocks)
        except OSError as exc:
            with self._writing_lock:
                if self.writing:
                    self.writing = False
                    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                    log.warning(
                        "disk cache: %s (%s); no more blocks are stored on disk by this mount, "
                        "reads go on from memory and the network",
                        "the disk is full" if full else "cannot write",
                        exc,
                    )
            return [False] * len(blocks)

    def stats(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": round(self.hits / lookups, 4) if lookups else None,
            "writes": self.writes,
            "bytes_written": self.bytes_written,
            "evictions": self.store.evictions,
            "corrupt_discarded": self.store.corrupt,
            "limit": self.store.limit,
            "writing": self.writing,
            "direct_io": self.store.direct,
            "slots": self.store.slots,
        }


# ---- saved package indexes ---------------------------------------------------------------------


def member_row(member: ZipMember) -> list[Any]:
    """A ZIP member as a JSON row (saved indexes here and in the shared cache)."""
    modified = member.modified.isoformat() if member.modified else None
    return [
        member.name,
        member.header_offset,
        member.compressed_size,
        member.size,
        member.method,
        member.crc32,
        modified,
        member.is_dir,
        member.flags,
    ]


def member_from_row(row: list[Any]) -> ZipMember:
    """The member a :func:`member_row` row stands for."""
    name, header, compressed, size, method, crc, modified, is_dir, flags = row
    when = dt.datetime.fromisoformat(modified) if modified else None
    return ZipMember(name, header, compressed, size, method, crc, when, bool(is_dir), flags)


class PackageIndexStore:
    """Catalog id -> the package's saved identity and ZIP index, valid for one entry version.

    ``version`` fingerprints the catalog entry: when the entry changes (a re-delivery), the
    saved index no longer applies and the package is probed again. :meth:`discard` (after a
    412 / new ETag) is synchronous; the file goes at the next load or save.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.loaded = 0
        self.saved = 0
        self._discarded: set[str] = set()

    def bind(self, catalog_id: str, version: str) -> BoundIndex:
        return BoundIndex(self, catalog_id, version)

    def _path(self, catalog_id: str) -> Path:
        return self.folder / f"{digest(catalog_id, b'pixxelfs.pkg', 16)}.json"

    async def load(self, catalog_id: str, version: str) -> tuple[ObjectInfo, ZipIndex] | None:
        return await trio.to_thread.run_sync(self._load, catalog_id, version)

    async def save(self, catalog_id: str, version: str, info: ObjectInfo, index: ZipIndex) -> None:
        if info.etag is None:
            return
        try:
            await trio.to_thread.run_sync(self._save, catalog_id, version, info, index)
        except OSError as exc:
            log.warning("disk cache: cannot save the index of catalog %s: %s", catalog_id, exc)

    def discard(self, catalog_id: str) -> None:
        self._discarded.add(catalog_id)

    def _load(self, catalog_id: str, version: str) -> tuple[ObjectInfo, ZipIndex] | None:
        path = self._path(catalog_id)
        if catalog_id in self._discarded:
            self._discarded.discard(catalog_id)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        try:
            body = json.loads(path.read_bytes())
            if body["catalog_id"] != catalog_id or body["version"] != version:
                return None
            members = tuple(member_from_row(row) for row in body["members"])
            info = ObjectInfo(int(body["size"]), str(body["etag"]))
            comment = base64.b64decode(body["comment"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("disk cache: ignoring a damaged index of catalog %s: %s", catalog_id, exc)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        self.loaded += 1
        return info, ZipIndex(members, comment)

    def _save(self, catalog_id: str, version: str, info: ObjectInfo, index: ZipIndex) -> None:
        self._discarded.discard(catalog_id)
        body = {
            "catalog_id": catalog_id,
            "version": version,
            "etag": info.etag,
            "size": info.size,
            "comment": base64.b64encode(index.comment).decode(),
            "members": [member_row(m) for m in index.members],
        }
        write_atomically(self._path(catalog_id), json.dumps(body).encode())
        self.saved += 1


@dataclass(frozen=True)
class BoundIndex:
    """One package's saved index (what :class:`~pixxelfs.remote.package.RemotePackage` uses)."""

    store: PackageIndexStore
    catalog_id: str
    version: str

    async def load(self) -> tuple[ObjectInfo, ZipIndex] | None:
        return await self.store.load(self.catalog_id, self.version)

    async def save(self, info: ObjectInfo, index: ZipIndex) -> None:
        await self.store.save(self.catalog_id, self.version, info, index)

    def discard(self) -> None:
        self.store.discard(self.catalog_id)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename (never a torn file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write_file(temp, data, sync=True)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


# ---- one account's cache ----------------------------------------------------------------------


class DiskCache:
    """Blocks and package indexes of one account under ``folder``."""

    def __init__(self, folder: Path, limit: int, block_size: int):
        self.folder = folder
        self.store = BlockStore(folder / BLOCKS, limit)
        self.tier = DiskBlockTier(self.store, block_size)
        self.packages = PackageIndexStore(folder / PACKAGES)

    async def open(self) -> None:
        await trio.to_thread.run_sync(self.store.open)

    def saved_index(self, catalog_id: str, version: str | None) -> BoundIndex | None:
        """The package's saved index for this catalog entry version (None: entry unknown)."""
        return None if version is None else self.packages.bind(catalog_id, version)

    def close(self) -> None:
        self.store.close()

    def stats(self) -> dict[str, Any]:
        return {
            "dir": str(self.folder),
            "bytes": self.store.held(),
            **self.tier.stats(),
            "indexes_loaded": self.packages.loaded,
            "indexes_saved": self.packages.saved,
        }


@asynccontextmanager
async def open_disk_cache(
    root: Path | None, api_url: str, api_key: str, *, limit: int, block_size: int
) -> AsyncIterator[DiskCache | None]:
    """The account's disk cache under ``root`` (None: memory only, also when it is unusable)."""
    if root is None:
        yield None
        return
    cache = DiskCache(account_dir(root, api_url, api_key), limit, block_size)
    try:
        await cache.open()
    except OSError as exc:
        log.warning("the disk cache %s cannot be used (%s): memory only", root, exc)
        yield None
        return
    try:
        async with cache.tier.running():
            yield cache
    finally:
        cache.close()
