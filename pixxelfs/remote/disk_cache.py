"""The persistent disk cache of one account: verified block files and saved package indexes.

This module owns what pixxelfs keeps on disk about packages, under one folder per account
(a hash of the API URL and a hash of the API key, never the key itself, so two workspaces
never share bytes)::

    <cache dir>/<account>/blocks/<2 hex>/<38 hex>.blk   one block: header + bytes
    <cache dir>/<account>/blocks/.ledger                bytes held; its fcntl lock orders writers
    <cache dir>/<account>/packages/<hash>.json          a package's ETag, size and ZIP index
    <cache dir>/<account>/catalog.json                  the catalog snapshot (catalog.snapshot)

Blocks are keyed by (catalog id, ETag, package size, block size, block index), so bytes of a
replaced package can never be served. A block file is written to a temporary name and renamed
into place, not fsynced (its checksum, not the disk's write order, is what rejects a torn file
after a power loss); its header page holds the key, the length and a CRC-32, checked on every
read (a bad file, or one of an older format, is deleted and counts as a miss). Block files are
page-aligned and written and read with O_DIRECT where the file system takes it: the kernel
already caches the same bytes as pages of the mounted file. The size limit is enforced when a
block is inserted: room is reserved (evicting least-recently-used blocks) *before* the temporary
file is written, so the files on disk never exceed the limit. Last access is the file's mtime,
so the LRU order survives remounts and is shared by several mounts of one cache dir; the ledger
(total bytes) is shared through the lock and rebuilt from the files at every start.

All file I/O runs in worker threads (:class:`BlockStore` is synchronous); :class:`DiskBlockTier`
is the async :class:`~pixxelfs.remote.tiers.BlockTier` in front of it. A failing disk (full,
read-only, I/O errors) turns writing off with one warning; reads never fail because of it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from pixxelfs.remote.block_cache import BlockKey, Fetch
from pixxelfs.remote.storage import ObjectInfo
from pixxelfs.remote.zipindex import ZipIndex, ZipMember

log = logging.getLogger(__name__)

BLOCKS = "blocks"
PACKAGES = "packages"
LEDGER = ".ledger"
SUFFIX = ".blk"
# A block file: a header page (magic, key length, data length, CRC-32 of key + data, then the
# key, zero-padded to a page), then the data zero-padded to whole pages, so that it can be
# written and read with O_DIRECT. CRC-32 (zlib, ~4 GB/s) rather than a cryptographic digest
# (BLAKE2b, ~0.9 GB/s): it guards against torn and damaged files, not an attacker, and a
# cryptographic digest of every block halved cached sequential reads on 2 cores.
BLOCK_HEADER = struct.Struct("<8sHQI")
# Format 3 (page-aligned). Files of older formats fail the magic: discarded like damaged ones.
_MAGIC = b"PXFSBLK3"
PAGE = 4096
_ZEROS = memoryview(bytes(PAGE))
# A hit rewrites the file's mtime (the LRU order shared by mounts) only when it is older than
# this: one metadata write per block per minute instead of one per read.
TOUCH_AFTER_SECONDS = 60.0
# A temporary file of a writer that died is removed at the next start once it is this old.
STALE_TEMP_SECONDS = 3600.0


def _digest(text: str, person: bytes, size: int = 8) -> str:
    return hashlib.blake2b(text.encode(), digest_size=size, person=person).hexdigest()


def account_dir(root: Path, api_url: str, api_key: str) -> Path:
    """The folder of one workspace: hashes of the API URL and of the key (never the key)."""
    url = _digest(api_url.rstrip("/"), b"pixxelfs.url")
    key = _digest(api_key, b"pixxelfs.key")
    return root / f"{url}-{key}"


def accounts(root: Path) -> list[Path]:
    """The account folders under a cache dir (for ``pixxelfs cache``)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / BLOCKS).is_dir())


# ---- block files ------------------------------------------------------------------------------


def _aligned(size: int) -> int:
    """``size`` rounded up to whole pages (O_DIRECT transfers whole, aligned pages)."""
    return -(-size // PAGE) * PAGE


def _data_offset(key_length: int) -> int:
    return _aligned(BLOCK_HEADER.size + key_length)


def file_size(key_text: str, length: int) -> int:
    """The size of the block file of ``length`` data bytes (what the ledger books)."""
    return _data_offset(len(key_text.encode())) + _aligned(length)


def _checksum(key: bytes, data: bytes | memoryview) -> int:
    """CRC-32 over key and data, fed in two steps (no concatenated copy of the block)."""
    return zlib.crc32(data, zlib.crc32(key))


def _fill(target: memoryview, key: bytes, data: bytes) -> int:
    """Lay out a block file in ``target`` (header page(s), data, zero padding); its size.

    Every byte up to the returned size is written: ``target`` is a reused buffer.
    """
    start = _data_offset(len(key))
    end = start + len(data)
    total = start + _aligned(len(data))
    BLOCK_HEADER.pack_into(target, 0, _MAGIC, len(key), len(data), _checksum(key, data))
    target[BLOCK_HEADER.size : BLOCK_HEADER.size + len(key)] = key
    target[BLOCK_HEADER.size + len(key) : start] = _ZEROS[: start - BLOCK_HEADER.size - len(key)]
    target[start:end] = data
    target[end:total] = _ZEROS[: total - end]
    return total


def _verified(key: bytes, view: memoryview) -> memoryview | None:
    """The data in a whole block file's content, or None unless it is intact and for ``key``."""
    if len(view) < BLOCK_HEADER.size:
        return None
    magic, key_length, length, check = BLOCK_HEADER.unpack_from(view)
    start = _data_offset(key_length)
    if magic != _MAGIC or key_length != len(key) or len(view) != start + _aligned(length):
        return None
    if view[BLOCK_HEADER.size : BLOCK_HEADER.size + key_length] != key:
        return None
    data = view[start : start + length]
    return data if _checksum(key, data) == check else None


def encode_block(key_text: str, data: bytes) -> bytes:
    """A block file's content (for tests and tools; the store fills reused aligned buffers)."""
    key = key_text.encode()
    blob = bytearray(file_size(key_text, len(data)))
    _fill(memoryview(blob), key, data)
    return bytes(blob)


def decode_block(key_text: str, blob: bytes) -> bytes | None:
    """The data of a block file, or None unless it is complete, intact and for ``key_text``."""
    data = _verified(key_text.encode(), memoryview(blob))
    return None if data is None else bytes(data)


def block_name(key: BlockKey, block_size: int) -> tuple[str, str] | None:
    """``(file name, key text)`` of a block, or None for a package without an ETag.

    Without an ETag a replaced package of the same size could not be told apart, so its
    blocks are never persisted.
    """
    package = key.package
    if not isinstance(package, tuple) or None in package:
        return None
    text = json.dumps([*package, *key.unit, block_size, key.index])
    digest = _digest(text, b"pixxelfs.block", 20)
    return f"{digest[:2]}/{digest[2:]}{SUFFIX}", text


@dataclass(frozen=True)
class Usage:
    """What a block folder holds (from the files themselves)."""

    blocks: int
    bytes: int
    oldest: float | None
    newest: float | None


def _block_files(folder: Path) -> Iterator[os.DirEntry[str]]:
    with contextlib.suppress(FileNotFoundError):
        for sub in os.scandir(folder):
            if sub.is_dir(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    yield from os.scandir(sub.path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale_temp(entry: os.DirEntry[str], now: float) -> bool:
    """A temporary file whose writer died (``.<name>.<pid>.<thread>.tmp``) or is very old."""
    parts = entry.name.split(".")
    try:
        pid = int(parts[-3])
    except (IndexError, ValueError):
        return True
    try:
        age = now - entry.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_TEMP_SECONDS or not _pid_alive(pid)


class _Buffers:
    """Page-aligned buffers (anonymous mmaps) reused by the I/O threads.

    O_DIRECT needs aligned memory, and a fresh 1 MiB buffer per block would cost page faults;
    the pool holds as many buffers as threads ever did I/O at once (the tier's limiters).
    """

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def take(self, size: int) -> Iterator[mmap.mmap]:
        with self._lock:
            buffer = self._free.pop() if self._free else None
        if buffer is None or len(buffer) < size:
            buffer = mmap.mmap(-1, max(_aligned(size), PAGE))  # a smaller one is dropped
        try:
            yield buffer
        finally:
            with self._lock:
                self._free.append(buffer)


def _direct_flag(folder: Path) -> int:
    """``os.O_DIRECT`` if the file system takes it for writes and reads, else 0 (tmpfs: EINVAL).

    Block files bypass the page cache: the same bytes are already cached by the kernel as
    pages of the mounted file, and buffered writes measured more kernel CPU than the rest of
    the data path.
    """
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return 0
    probe = folder / f".probe.{os.getpid()}.{threading.get_ident()}.tmp"
    page = mmap.mmap(-1, PAGE)
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | flag, 0o600)
        try:
            os.pwrite(fd, page, 0)
            os.preadv(fd, [page], 0)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        log.info("disk cache: %s refuses O_DIRECT (%s); block files use buffered I/O", folder, exc)
        return 0
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)
    log.debug("disk cache: block files in %s use O_DIRECT", folder)
    return flag


class BlockStore:
    """Block files under ``folder`` bounded by ``limit`` bytes; safe across threads and mounts.

    The in-memory index (name -> file size, least recently used first) is rebuilt from the
    files at :meth:`open` and whenever eviction finds it empty; the ledger holds the bytes of
    all block files plus reservations of writes in progress.
    """

    def __init__(self, folder: Path, limit: int):
        self.folder = folder
        self.limit = limit
        self.evictions = 0
        self.corrupt = 0
        self._index: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._ledger_fd: int | None = None
        self._reserved = 0
        self._buffers = _Buffers()
        self._direct = 0

    @property
    def direct(self) -> bool:
        """Whether block files are written and read with O_DIRECT (decided at :meth:`open`)."""
        return bool(self._direct)

    # -- opening and the shared ledger

    def open(self) -> None:
        """Create the folder, remove writes that died and recount the ledger."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._ledger_fd = os.open(self.folder / LEDGER, os.O_RDWR | os.O_CREAT, 0o600)
        self._direct = _direct_flag(self.folder)
        with self._locked():
            self._rescan(remove_stale=True)

    def close(self) -> None:
        if self._ledger_fd is not None:
            os.close(self._ledger_fd)
            self._ledger_fd = None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive against other threads (lock) and other processes (flock on the ledger)."""
        if self._ledger_fd is None:
            raise RuntimeError("BlockStore.open() first")
        with self._lock:
            fcntl.flock(self._ledger_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._ledger_fd, fcntl.LOCK_UN)

    def _ledger(self) -> int:
        assert self._ledger_fd is not None
        text = os.pread(self._ledger_fd, 32, 0).strip()
        return int(text) if text.isdigit() else 0

    def _set_ledger(self, total: int) -> None:
        assert self._ledger_fd is not None
        data = str(max(total, 0)).encode()
        os.pwrite(self._ledger_fd, data, 0)
        os.ftruncate(self._ledger_fd, len(data))

    def _rescan(self, *, remove_stale: bool = False) -> None:
        """Index every block file by last access; the ledger becomes their total (+ ours)."""
        now = time.time()
        found: list[tuple[float, str, int]] = []
        for entry in _block_files(self.folder):
            if entry.name.endswith(SUFFIX):
                with contextlib.suppress(FileNotFoundError):
                    info = entry.stat()
                    rel = f"{Path(entry.path).parent.name}/{entry.name}"
                    found.append((info.st_mtime, rel, info.st_size))
            elif remove_stale and _is_stale_temp(entry, now):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        found.sort()
        self._index = OrderedDict((name, size) for _mtime, name, size in found)
        total = sum(self._index.values()) + self._reserved
        if not remove_stale:
            # While running, the ledger also holds other mounts' reservations whose files have
            # not landed yet: lowering it to what is on disk now would lose them for good (the
            # files land without booking again). Only a start-up rescan sets it exactly.
            total = max(total, self._ledger())
        self._set_ledger(total)

    # -- reading

    def indexed(self, name: str) -> bool:
        """Whether the block file was on disk at the last scan or stored since (a hint)."""
        return name in self._index

    def get(self, name: str, key_text: str) -> bytes | None:
        """The block's data if its file is present and verifies; a bad file is deleted."""
        try:
            data, size = self._read(name, key_text.encode())
        except FileNotFoundError:
            with self._lock:
                self._index.pop(name, None)
            return None
        if data is None:
            self._discard(name, size)
            return None
        with self._lock:
            self._index[name] = size
            self._index.move_to_end(name)
        return data

    def _read(self, name: str, key: bytes) -> tuple[bytes | None, int]:
        """(verified data or None, file size): one read into a reused aligned buffer."""
        fd = os.open(self.folder / name, os.O_RDONLY | self._direct)
        try:
            info = os.fstat(fd)
            with self._buffers.take(info.st_size) as buffer, memoryview(buffer) as view:
                got = os.preadv(fd, [view[: _aligned(info.st_size)]], 0)
                data = _verified(key, view[:got])
                if data is None:
                    return None, info.st_size
                if time.time() - info.st_mtime > TOUCH_AFTER_SECONDS:
                    with contextlib.suppress(OSError):
                        os.utime(fd)  # last access, for the LRU order of every mount
                return bytes(data), info.st_size
        finally:
            os.close(fd)

    def _discard(self, name: str, size: int) -> None:
        self.corrupt += 1
        if self.corrupt == 1:
            log.warning("disk cache: discarding a damaged block file (%s)", name)
        else:
            log.debug("disk cache: discarding damaged block file %s", name)
        with self._locked():
            size = self._index.pop(name, size)  # what the ledger counted, not what was read
            if self._unlink(name):
                self._set_ledger(self._ledger() - size)

    def _unlink(self, name: str) -> bool:
        try:
            os.unlink(self.folder / name)
        except FileNotFoundError:
            return False
        return True

    # -- writing

    def put(self, name: str, key_text: str, data: bytes) -> bool:
        """Store a block (False if it cannot fit). Raises OSError when the disk fails."""
        size = file_size(key_text, len(data))
        if not self._reserve(size):
            return False
        path = self.folder / name
        temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with self._buffers.take(size) as buffer, memoryview(buffer) as view:
                _fill(view, key_text.encode(), data)
                self._write_new(temp, view[:size])
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            self._release(size)
            raise
        self._commit(name, temp, size)
        return True

    def _write_new(self, temp: Path, content: memoryview) -> None:
        """Write a temporary block file; its 2-hex subfolder is made on first need only.

        No fsync per block: a killed daemon loses nothing the kernel has; after a power loss
        a torn file fails its checksum and is discarded. Renames stay atomic.
        """
        try:
            _write_file(temp, content, sync=False, flags=self._direct)
        except FileNotFoundError:
            temp.parent.mkdir(exist_ok=True)
            _write_file(temp, content, sync=False, flags=self._direct)

    def _reserve(self, size: int) -> bool:
        """Make room for ``size`` bytes by evicting least recently used blocks, and book it."""
        if size > self.limit:
            return False
        with self._locked():
            total = self._ledger()
            rescanned = False
            while total + size > self.limit:
                if not self._index:
                    if rescanned:
                        return False  # the rest is other writers' reservations
                    self._rescan()
                    total, rescanned = self._ledger(), True
                    continue
                victim, victim_size = self._index.popitem(last=False)
                if self._unlink(victim):
                    total -= victim_size
                    self.evictions += 1
            self._reserved += size
            self._set_ledger(total + size)
        return True

    def _release(self, size: int) -> None:
        with self._locked():
            self._reserved -= size
            self._set_ledger(self._ledger() - size)

    def _commit(self, name: str, temp: Path, size: int) -> None:
        """Rename into place; if another mount stored the block meanwhile, keep theirs."""
        with self._locked():
            self._reserved -= size
            if (self.folder / name).exists():
                os.unlink(temp)
                self._set_ledger(self._ledger() - size)
                return
            try:
                os.replace(temp, self.folder / name)
            except OSError:
                self._set_ledger(self._ledger() - size)
                raise
            self._index[name] = size

    # -- for pixxelfs cache and stats

    def held(self) -> int:
        """Bytes of block files (and reservations) according to the shared ledger (unlocked:
        an estimate for statistics)."""
        return self._ledger()

    def remove_older_than(self, age: float) -> int:
        """Delete blocks not read for ``age`` seconds; returns how many."""
        cutoff = time.time() - age
        removed = freed = 0
        with self._locked():
            for entry in _block_files(self.folder):
                if not entry.name.endswith(SUFFIX):
                    continue  # a write in progress
                with contextlib.suppress(FileNotFoundError):
                    info = entry.stat()
                    if info.st_mtime <= cutoff:
                        os.unlink(entry.path)
                        removed += 1
                        freed += info.st_size
            self._set_ledger(self._ledger() - freed)
            self._rescan()
        return removed


def _write_file(path: Path, blob: bytes | memoryview, *, sync: bool, flags: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | flags, 0o600)
    try:
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def usage(folder: Path) -> Usage:
    """Count the block files of a folder (no lock needed: read-only)."""
    count = total = 0
    oldest: float | None = None
    newest: float | None = None
    for entry in _block_files(folder):
        if not entry.name.endswith(SUFFIX):
            continue
        with contextlib.suppress(FileNotFoundError):
            info = entry.stat()
            count += 1
            total += info.st_size
            oldest = info.st_mtime if oldest is None else min(oldest, info.st_mtime)
            newest = info.st_mtime if newest is None else max(newest, info.st_mtime)
    return Usage(count, total, oldest, newest)


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
        self._writers = trio.CapacityLimiter(2)

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

    async def _read(self, name: str, text: str) -> bytes | None:
        try:
            return await trio.to_thread.run_sync(self.store.get, name, text, limiter=self._readers)
        except OSError as exc:
            if not self._read_error_logged:
                self._read_error_logged = True
                log.warning("disk cache: cannot read %s (%s); reading from the network", name, exc)
            return None

    async def _write(self, name: str, text: str, data: bytes) -> None:
        if not self.writing:
            return
        try:
            stored = await trio.to_thread.run_sync(
                self.store.put, name, text, data, limiter=self._writers
            )
        except OSError as exc:
            self.writing = False
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            log.warning(
                "disk cache: %s (%s); no more blocks are stored on disk by this mount, "
                "reads go on from memory and the network",
                "the disk is full" if full else "cannot write",
                exc,
            )
            return
        if stored:
            self.writes += 1
            self.bytes_written += len(data)

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
        }


# ---- saved package indexes ---------------------------------------------------------------------


def _member_json(member: ZipMember) -> list[Any]:
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


def _member_of(row: list[Any]) -> ZipMember:
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
        return self.folder / f"{_digest(catalog_id, b'pixxelfs.pkg', 16)}.json"

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
            members = tuple(_member_of(row) for row in body["members"])
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
            "members": [_member_json(m) for m in index.members],
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
        _write_file(temp, data, sync=True)
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
        yield cache
    finally:
        cache.close()
