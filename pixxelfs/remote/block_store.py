"""Verified blocks on disk under one folder, bounded in bytes, shared by the mounts of one cache.

Blocks are keyed by (catalog id, ETag, package size, block size, block index), so bytes of a
replaced package can never be served. Every stored block is a header page (magic, key length,
data length, an xxh3-64 of key + data, then the key) followed by its data zero-padded to whole
pages, checked on every read: a bad block, or one of an older format, is removed and counts as
a miss. Blocks are written and read with O_DIRECT where the file system takes it: the kernel
already caches the same bytes as pages of the mounted file.

*Slots.* The aligned blocks of one package version live in ONE sparse file: block ``i`` in slot
``i`` at offset ``i * stride`` (``stride`` = a page + the block size in pages). Creating,
renaming and deleting a file per block cost more kernel time than the copy itself (1 s of
system time per 1.4 GB on ext4); a ``pwrite`` into an open file does not (0.1 s). A slot is
written data pages first, header page last, without fsync and without a rename: a slot whose
header page is a hole is absent, one whose header arrived without its data (a crash, a power
loss) fails its checksum. Two mounts writing one slot write identical bytes; the header is
written under the ledger lock (through the page cache: no disk wait under the lock), after
checking that nobody stored the slot meanwhile (its header page is data, not a hole:
SEEK_DATA). Eviction punches the slot out (``fallocate(PUNCH_HOLE)``); a package file left
without data is deleted. Where the file system refuses to punch holes, aligned blocks are files
of their own, like byte ranges (``.blk``, written to a temporary name and renamed into place).

The size limit is enforced when a block is inserted: room is reserved (evicting least recently
used blocks) *before* it is written, so the blocks on disk never exceed the limit. The LRU
order is kept per block in memory; across remounts it is the file's mtime (a package file's
for its slots), so it is shared by several mounts of one cache dir; the ledger (total bytes)
is shared through the lock and rebuilt from the files at every start.

:class:`BlockStore` is synchronous: the disk tier (``disk_cache``) calls it from threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import hashlib
import json
import logging
import mmap
import os
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import xxhash

from pixxelfs.remote.block_cache import BlockKey

log = logging.getLogger(__name__)

LEDGER = ".ledger"
SUFFIX = ".blk"
PACKAGE_SUFFIX = ".pkg"
# A block: a header page (magic, key length, data length, xxh3-64 of key + data, then the key,
# zero-padded to a page), then the data zero-padded to whole pages, so that it can be written
# and read with O_DIRECT. xxh3 (~60 GB/s) rather than CRC-32 (~4 GB/s) or a cryptographic
# digest: it guards against torn and damaged blocks, not an attacker, and it is paid on every
# disk write and hit.
BLOCK_HEADER = struct.Struct("<8sHQQ")
# Format 4 (xxh3, slots). Blocks of older formats fail the magic: discarded like damaged ones.
_MAGIC = b"PXFSBLK4"
_NO_MAGIC = bytes(len(_MAGIC))  # the magic field of a header page that is a hole
PAGE = 4096
_ZEROS = memoryview(bytes(PAGE))
# A hit rewrites the file's mtime (the LRU order shared by mounts) only when it is older than
# this: one metadata write per file per minute instead of one per read.
TOUCH_AFTER_SECONDS = 60.0
# A temporary file of a writer that died is removed at the next start once it is this old; so
# are a package file's data pages without a header (a writer killed between its two writes)
# once the file was not written for that long.
STALE_TEMP_SECONDS = 3600.0
# fallocate(2) modes (linux/falloc.h).
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def digest(text: str, person: bytes, size: int = 8) -> str:
    """A keyed BLAKE2b hex digest (names of folders and files that must not reveal ``text``)."""
    return hashlib.blake2b(text.encode(), digest_size=size, person=person).hexdigest()


# ---- the block format -------------------------------------------------------------------------


def _aligned(size: int) -> int:
    """``size`` rounded up to whole pages (O_DIRECT transfers whole, aligned pages)."""
    return -(-size // PAGE) * PAGE


def _data_offset(key_length: int) -> int:
    return _aligned(BLOCK_HEADER.size + key_length)


def file_size(key_text: str, length: int) -> int:
    """The size of a block of ``length`` data bytes (what the ledger books)."""
    return _data_offset(len(key_text.encode())) + _aligned(length)


def _checksum(key: bytes, data: bytes | memoryview) -> int:
    """xxh3-64 of the data seeded with that of the key (no concatenated copy of the block)."""
    return xxhash.xxh3_64_intdigest(data, seed=xxhash.xxh3_64_intdigest(key))


def _fill(target: memoryview, key: bytes, data: bytes) -> int:
    """Lay out a block in ``target`` (header page(s), data, zero padding); its size.

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
    """The data in a whole block's content, or None unless it is intact and for ``key``."""
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


def _stored_key(view: memoryview) -> bytes:
    """The key a block's header names (for checking what is on disk without knowing it)."""
    if len(view) < BLOCK_HEADER.size:
        return b""
    _magic, key_length, _length, _check = BLOCK_HEADER.unpack_from(view)
    return bytes(view[BLOCK_HEADER.size : BLOCK_HEADER.size + key_length])


def encode_block(key_text: str, data: bytes) -> bytes:
    """A block's content (for tests and tools; the store fills reused aligned buffers)."""
    key = key_text.encode()
    blob = bytearray(file_size(key_text, len(data)))
    _fill(memoryview(blob), key, data)
    return bytes(blob)


def decode_block(key_text: str, blob: bytes) -> bytes | None:
    """The data of a block, or None unless it is complete, intact and for ``key_text``."""
    data = _verified(key_text.encode(), memoryview(blob))
    return None if data is None else bytes(data)


# ---- names: slots of package files and files of their own --------------------------------------


class _Slot(NamedTuple):
    """Where a slot lives: its package file (relative to the block folder) and offset."""

    file: str
    offset: int
    stride: int


@dataclass(eq=False)
class _Write:
    """A block on its way to the store: its content, what the ledger books, the outcome."""

    name: str
    key: bytes
    data: bytes
    size: int
    stored: bool = False


def _stride(block_size: int) -> int:
    return PAGE + _aligned(block_size)


def _package_stride(file: str) -> int | None:
    """The slot stride of a package file, from its name (``<hex>.<block size>.pkg``)."""
    size = file.removesuffix(PACKAGE_SUFFIX).rpartition(".")[2]
    return _stride(int(size)) if size.isdigit() else None


def _slot_of(name: str) -> _Slot | None:
    """The slot a block name (``<file>#<index>``) stands for; None for a byte range."""
    file, sep, index = name.partition("#")
    stride = _package_stride(file) if sep else None
    if stride is None:
        return None
    return _Slot(file, int(index) * stride, stride)


def _own_file(name: str) -> str:
    """The file of a block stored on its own (byte ranges; aligned blocks without slots)."""
    return name + SUFFIX if "#" in name else name


def block_name(key: BlockKey, block_size: int) -> tuple[str, str] | None:
    """``(name, key text)`` of a block, or None when it is never persisted.

    An aligned block is named after its slot (``<2 hex>/<38 hex>.<block size>.pkg#<index>``),
    a byte range after its own file. Without an ETag a replaced package of the same size could
    not be told apart, so its blocks are never persisted; nor are keys too long for the header
    page.
    """
    package = key.package
    if not isinstance(package, tuple) or None in package:
        return None
    text = json.dumps([*package, *key.unit, block_size, key.index])
    if BLOCK_HEADER.size + len(text.encode()) > PAGE:
        return None
    if key.is_block:
        hashed = digest(json.dumps([*package, block_size]), b"pixxelfs.slots", 20)
        return f"{hashed[:2]}/{hashed[2:]}.{block_size}{PACKAGE_SUFFIX}#{key.index}", text
    hashed = digest(text, b"pixxelfs.block", 20)
    return f"{hashed[:2]}/{hashed[2:]}{SUFFIX}", text


def _slot_size(header: bytes | memoryview, stride: int) -> int | None:
    """What a slot whose header page is ``header`` books; None if absent (a hole).

    A header of another format or a damaged one books the whole stride, until it is read and
    punched out.
    """
    if len(header) < BLOCK_HEADER.size or header[: len(_MAGIC)] == _NO_MAGIC:
        return None
    magic, key_length, length, _check = BLOCK_HEADER.unpack_from(header)
    size = PAGE + _aligned(length)
    if magic != _MAGIC or BLOCK_HEADER.size + key_length > PAGE or size > stride:
        return stride
    return size


# ---- holes -------------------------------------------------------------------------------------


@functools.cache
def _fallocate() -> Callable[..., int] | None:
    """The C library's fallocate(2): the stdlib has no way to punch a hole."""
    name = ctypes.util.find_library("c")
    function = getattr(ctypes.CDLL(name, use_errno=True), "fallocate", None) if name else None
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        function.restype = ctypes.c_int
    return function


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``length`` bytes at ``offset`` (they read as zeros after); the size stays."""
    fallocate = _fallocate()
    if fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "the C library has no fallocate()")
    if fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _holds_data(fd: int, start: int = 0) -> int | None:
    """The offset of the first data at or after ``start``; None when only holes follow."""
    try:
        return os.lseek(fd, start, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        raise


def _present(fd: int, offset: int) -> bool:
    """Whether a slot's header page holds data: a header is the only thing ever written
    there, and punching frees it (so no read is needed: the lock is held)."""
    return _holds_data(fd, offset) == offset


def _punch_supported(folder: Path) -> bool:
    """Whether the file system punches page-sized holes and SEEK_DATA skips them (ext4, xfs,
    btrfs, tmpfs do; some overlays and network file systems do not)."""
    probe = folder / f".probe.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.pwrite(fd, b"\1" * 2 * PAGE, 0)
            punch_hole(fd, 0, PAGE)
            if _holds_data(fd) != PAGE:  # larger blocks than a page, or no real SEEK_DATA
                raise OSError(errno.EOPNOTSUPP, "no page-sized holes")
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        log.info(
            "disk cache: %s cannot punch holes (%s); every block is a file of its own", folder, exc
        )
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)
    return True


# ---- what is on disk ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """What a block folder holds (from the files themselves)."""

    blocks: int
    bytes: int
    oldest: float | None
    newest: float | None


class _Stored(NamedTuple):
    """A block on disk: its name, what the ledger books for it, its last access, its place."""

    name: str
    size: int
    mtime: float
    path: str
    slot: _Slot | None


def _block_files(folder: Path) -> Iterator[os.DirEntry[str]]:
    with contextlib.suppress(FileNotFoundError):
        for sub in os.scandir(folder):
            if sub.is_dir(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    yield from os.scandir(sub.path)


def _relative(entry: os.DirEntry[str]) -> str:
    return f"{os.path.basename(os.path.dirname(entry.path))}/{entry.name}"


def _slots_in(path: str, stride: int) -> Iterator[tuple[int, int | None]]:
    """``(offset, booked size or None for data without a header)`` of a package file's slots.

    Holes are skipped with SEEK_DATA: only header pages of slots holding data are read.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        position = _holds_data(fd)
        while position is not None:
            offset = position - position % stride
            yield offset, _slot_size(os.pread(fd, PAGE, offset), stride)
            position = _holds_data(fd, offset + stride)
    finally:
        os.close(fd)


def _package_blocks(entry: os.DirEntry[str], clean_before: float | None) -> Iterator[_Stored]:
    """The slots of one package file; with ``clean_before``, a file not written since then
    loses its data pages without a header (killed writers), and is deleted if left empty."""
    rel = _relative(entry)
    stride = _package_stride(rel)
    if stride is None:
        return
    mtime = entry.stat().st_mtime
    orphans: list[int] = []
    for offset, size in _slots_in(entry.path, stride):
        if size is None:
            orphans.append(offset)
        else:
            name = f"{rel}#{offset // stride}"
            yield _Stored(name, size, mtime, entry.path, _Slot(rel, offset, stride))
    if orphans and clean_before is not None and mtime < clean_before:
        _punch_orphans(entry.path, orphans, stride)


def _punch_orphans(path: str, offsets: list[int], stride: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        info = os.fstat(fd)
        for offset in offsets:
            punch_hole(fd, offset, stride)
        os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))
        if _holds_data(fd) is None:
            os.unlink(path)
    finally:
        os.close(fd)


def _stored(folder: Path, *, clean: bool = False) -> Iterator[_Stored]:
    """Every block under ``folder``; with ``clean``, leftovers of dead writers are removed."""
    now = time.time()
    clean_before = now - STALE_TEMP_SECONDS if clean else None
    for entry in _block_files(folder):
        with contextlib.suppress(FileNotFoundError):
            if entry.name.endswith(SUFFIX):
                info = entry.stat()
                name = _relative(entry).removesuffix(SUFFIX if "#" in entry.name else "")
                yield _Stored(name, info.st_size, info.st_mtime, entry.path, None)
            elif entry.name.endswith(PACKAGE_SUFFIX):
                yield from _package_blocks(entry, clean_before)
            elif clean and _is_stale_temp(entry, now):
                os.unlink(entry.path)


def usage(folder: Path) -> Usage:
    """Count the blocks of a folder, slots included (no lock needed: read-only)."""
    count = total = 0
    oldest: float | None = None
    newest: float | None = None
    for block in _stored(folder):
        count += 1
        total += block.size
        oldest = block.mtime if oldest is None else min(oldest, block.mtime)
        newest = block.mtime if newest is None else max(newest, block.mtime)
    return Usage(count, total, oldest, newest)


def stored_blocks(folder: Path) -> Iterator[tuple[str, bool]]:
    """``(key text, intact)`` of every block under ``folder`` (for tests and tools)."""
    for block in _stored(folder):
        with open(block.path, "rb") as file:
            if block.slot is None:
                blob = memoryview(file.read())
            else:
                file.seek(block.slot.offset)
                blob = memoryview(file.read(block.size))
        key = _stored_key(blob)
        yield key.decode(errors="replace"), _verified(key, blob) is not None


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
    the pool holds as many buffers as threads ever did I/O at once (the tier's reader limit and
    writer threads).
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

    Blocks bypass the page cache: the same bytes are already cached by the kernel as pages of
    the mounted file, and buffered writes measured more kernel CPU than the rest of the data
    path.
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
        log.info("disk cache: %s refuses O_DIRECT (%s); blocks use buffered I/O", folder, exc)
        return 0
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)
    log.debug("disk cache: blocks in %s use O_DIRECT", folder)
    return flag


def _pwrite_all(fd: int, content: memoryview, offset: int) -> None:
    while content:
        written = os.pwrite(fd, content, offset)
        content, offset = content[written:], offset + written


def _with_parent(path: Path, make: Callable[[], Any]) -> Any:
    """``make()``, creating the 2-hex subfolder of ``path`` on first need only."""
    try:
        return make()
    except FileNotFoundError:
        path.parent.mkdir(exist_ok=True)
        return make()


class BlockStore:
    """Blocks under ``folder`` bounded by ``limit`` bytes; safe across threads and mounts.

    The in-memory index (block name -> booked size, least recently used first) is rebuilt from
    the files at :meth:`open` and whenever eviction finds it empty; the ledger holds the bytes
    of all blocks plus reservations of writes in progress.
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
        self._slots = False

    @property
    def direct(self) -> bool:
        """Whether blocks are written and read with O_DIRECT (decided at :meth:`open`)."""
        return bool(self._direct)

    @property
    def slots(self) -> bool:
        """Whether aligned blocks are slots of package files (decided at :meth:`open`)."""
        return self._slots

    # -- opening and the shared ledger

    def open(self) -> None:
        """Create the folder, remove writes that died and recount the ledger."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._ledger_fd = os.open(self.folder / LEDGER, os.O_RDWR | os.O_CREAT, 0o600)
        self._direct = _direct_flag(self.folder)
        self._slots = _punch_supported(self.folder)
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
        """Index every block by last access; the ledger becomes their total (+ ours)."""
        found = sorted(
            (block.mtime, block.path, block.slot.offset if block.slot else 0, block)
            for block in _stored(self.folder, clean=remove_stale)
        )
        self._index = OrderedDict((block.name, block.size) for *_order, block in found)
        total = sum(self._index.values()) + self._reserved
        if not remove_stale:
            # While running, the ledger also holds other mounts' reservations whose blocks
            # have not landed yet: lowering it to what is on disk now would lose them for good
            # (they land without booking again). Only a start-up rescan sets it exactly.
            total = max(total, self._ledger())
        self._set_ledger(total)

    def _slot(self, name: str) -> _Slot | None:
        """The slot of an aligned block; None for a block stored as a file of its own."""
        return _slot_of(name) if self._slots else None

    # -- reading

    def indexed(self, name: str) -> bool:
        """Whether the block was on disk at the last scan or stored since (a hint)."""
        return name in self._index

    def get(self, name: str, key_text: str) -> bytes | None:
        """The block's data if it is present and verifies; a bad block is removed."""
        key = key_text.encode()
        found = self._lookup(name, key)
        if found is not None and found[0] is None:
            found = self._recheck(name, key)
        if found is None or found[0] is None:
            with self._lock:
                self._index.pop(name, None)
            return None
        data, size = found
        with self._lock:
            self._index[name] = size
            self._index.move_to_end(name)
        return data

    def _lookup(self, name: str, key: bytes) -> tuple[bytes | None, int] | None:
        """(verified data or None, booked size), or None when the block is absent."""
        slot = self._slot(name)
        try:
            return self._read(_own_file(name), key) if slot is None else self._read_slot(slot, key)
        except FileNotFoundError:
            return None

    def _recheck(self, name: str, key: bytes) -> tuple[bytes | None, int] | None:
        """Read a block that failed verification again under the lock, where no eviction can
        punch it meanwhile: still bad, it is removed and counted as damaged."""
        with self._locked():
            found = self._lookup(name, key)
            if found is None or found[0] is not None:
                return found
            size = self._index.pop(name, found[1])  # what the ledger counted, not what was read
            if self._remove(name):
                self._set_ledger(self._ledger() - size)
        self.corrupt += 1
        if self.corrupt == 1:
            log.warning("disk cache: discarding a damaged block (%s)", name)
        else:
            log.debug("disk cache: discarding damaged block %s", name)
        return None

    def _read(self, file: str, key: bytes) -> tuple[bytes | None, int]:
        """(verified data or None, file size): one read into a reused aligned buffer."""
        fd = os.open(self.folder / file, os.O_RDONLY | self._direct)
        try:
            info = os.fstat(fd)
            with self._buffers.take(info.st_size) as buffer, memoryview(buffer) as view:
                got = os.preadv(fd, [view[: _aligned(info.st_size)]], 0)
                return self._hit(fd, info, _verified(key, view[:got])), info.st_size
        finally:
            os.close(fd)

    def _read_slot(self, slot: _Slot, key: bytes) -> tuple[bytes | None, int] | None:
        """Like :meth:`_read` for a slot: one read of its stride; None when it is a hole."""
        fd = os.open(self.folder / slot.file, os.O_RDONLY | self._direct)
        try:
            info = os.fstat(fd)
            with self._buffers.take(slot.stride) as buffer, memoryview(buffer) as view:
                got = os.preadv(fd, [view[: slot.stride]], slot.offset)
                size = _slot_size(view[: min(got, PAGE)], slot.stride)
                if size is None:
                    return None
                return self._hit(fd, info, _verified(key, view[: min(got, size)])), size
        finally:
            os.close(fd)

    def _hit(self, fd: int, info: os.stat_result, data: memoryview | None) -> bytes | None:
        """A copy of verified data; a hit also records the access (at most once a minute)."""
        if data is None:
            return None
        if time.time() - info.st_mtime > TOUCH_AFTER_SECONDS:
            with contextlib.suppress(OSError):
                os.utime(fd)  # last access, for the LRU order of every mount
        return bytes(data)

    def _remove(self, name: str) -> bool:
        """Delete a block (under the lock); False if it was not there."""
        slot = self._slot(name)
        if slot is not None:
            return self._punch(slot)
        try:
            os.unlink(self.folder / _own_file(name))
        except FileNotFoundError:
            return False
        return True

    def _punch(self, slot: _Slot) -> bool:
        """Punch a slot out, keeping the file's mtime (an eviction is no access); a package
        file left without data is deleted."""
        path = self.folder / slot.file
        try:
            fd = os.open(path, os.O_RDWR | self._direct)
        except FileNotFoundError:
            return False
        try:
            if not _present(fd, slot.offset):
                return False
            info = os.fstat(fd)
            punch_hole(fd, slot.offset, slot.stride)
            os.utime(fd, ns=(info.st_atime_ns, info.st_mtime_ns))
            if _holds_data(fd) is None:
                os.unlink(path)
        finally:
            os.close(fd)
        return True

    # -- writing

    def put(self, name: str, key_text: str, data: bytes) -> bool:
        """Store a block (False if it cannot fit). Raises OSError when the disk fails."""
        return self.put_many([(name, key_text, data)]) == [True]

    def put_many(self, blocks: Sequence[tuple[str, str, bytes]]) -> list[bool]:
        """Store ``(name, key text, data)`` blocks; which were stored (False: cannot fit).

        The slots of one package file are written through one open file and booked under one
        lock: per block, a worker-thread call and two lock rounds cost more than the write.
        Raises OSError when the disk fails.
        """
        writes = [self._prepared(*block) for block in blocks]
        files: dict[str, list[tuple[_Write, _Slot]]] = {}
        for write in writes:
            slot = self._slot(write.name)
            if slot is None:
                self._put_file(write)
            else:
                files.setdefault(slot.file, []).append((write, slot))
        for slots in files.values():
            self._put_slots(slots)
        return [write.stored for write in writes]

    @staticmethod
    def _prepared(name: str, key_text: str, data: bytes) -> _Write:
        return _Write(name, key_text.encode(), data, file_size(key_text, len(data)))

    @contextlib.contextmanager
    def _released_on_error(self, size: int) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self._release(size)
            raise

    def _put_file(self, write: _Write) -> None:
        """Write a temporary file and rename it into place.

        No fsync per block: a killed daemon loses nothing the kernel has; after a power loss
        a torn file fails its checksum and is discarded. Renames stay atomic.
        """
        if not self._reserve([write.size])[0]:
            return
        path = self.folder / _own_file(write.name)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with self._released_on_error(write.size), self._filled(write) as content:
                _with_parent(temp, lambda: write_file(temp, content, flags=self._direct))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

        def place() -> bool:
            """Rename into place; if another mount stored the block meanwhile, keep theirs."""
            if path.exists():
                os.unlink(temp)
                return False
            os.replace(temp, path)
            return True

        self._book([(write, place)])

    @contextlib.contextmanager
    def _filled(self, write: _Write) -> Iterator[memoryview]:
        """The block's content laid out in a reused page-aligned buffer."""
        with self._buffers.take(write.size) as buffer, memoryview(buffer) as view:
            _fill(view, write.key, write.data)
            yield view[: write.size]

    def _put_slots(self, slots: list[tuple[_Write, _Slot]]) -> None:
        """Write slots of one package file: each one's data pages, then all their header
        pages under one lock. No fsync: see the module docstring."""
        fitting = [(write, slot) for write, slot in slots if write.size <= slot.stride]
        granted = self._reserve([write.size for write, _slot in fitting])
        slots = [pair for pair, room in zip(fitting, granted, strict=True) if room]
        if not slots:
            return
        path = self.folder / slots[0][1].file
        flags = os.O_RDWR | os.O_CREAT | self._direct
        fd = None
        try:
            with self._released_on_error(sum(write.size for write, _slot in slots)):
                fd = _with_parent(path, lambda: os.open(path, flags, 0o600))
                headers = [self._write_slot_data(fd, write, slot) for write, slot in slots]
            if self._direct:  # headers go through the page cache: see _write_header
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~self._direct)
            self._book(
                [
                    (write, functools.partial(self._write_header, fd, slot, header))
                    for (write, slot), header in zip(slots, headers, strict=True)
                ]
            )
        finally:
            if fd is not None:
                os.close(fd)

    def _write_slot_data(self, fd: int, write: _Write, slot: _Slot) -> bytes:
        """Write the slot's data pages; its header page, to be written once they are."""
        with self._filled(write) as content:
            _pwrite_all(fd, content[PAGE:], slot.offset + PAGE)
            return bytes(content[:PAGE])

    def _write_header(self, fd: int, slot: _Slot, header: bytes) -> bool:
        """Write a slot's header page (through the page cache: under the lock, an O_DIRECT
        write would make every writer wait for the disk), unless another mount stored the slot
        meanwhile (keep theirs: the same bytes) or evicted the last slot of the file (it is
        unlinked)."""
        if os.fstat(fd).st_nlink == 0 or _present(fd, slot.offset):
            return False
        _pwrite_all(fd, memoryview(header), slot.offset)
        return True

    def _reserve(self, sizes: Sequence[int]) -> list[bool]:
        """Make room for each of ``sizes`` in turn by evicting least recently used blocks, and
        book it; which ones got room."""
        granted: list[bool] = []
        with self._locked():
            total = self._ledger()
            for size in sizes:
                total, room = self._make_room(total, size)
                granted.append(room)
            self._set_ledger(total)
        return granted

    def _make_room(self, total: int, size: int) -> tuple[int, bool]:
        """(Under the lock.) Evict until ``size`` more bytes fit in the ledger's ``total``;
        the new total and whether they fit."""
        if size > self.limit:
            return total, False
        rescanned = False
        while total + size > self.limit:
            if not self._index:
                if rescanned:
                    return total, False  # the rest is other writers' reservations
                self._set_ledger(total)
                self._rescan()
                total, rescanned = self._ledger(), True
                continue
            victim, victim_size = self._index.popitem(last=False)
            if self._remove(victim):
                total -= victim_size
                self.evictions += 1
        self._reserved += size
        return total + size, True

    def _release(self, size: int) -> None:
        with self._locked():
            self._reserved -= size
            self._set_ledger(self._ledger() - size)

    def _book(self, placements: Sequence[tuple[_Write, Callable[[], bool]]]) -> None:
        """Under the lock, end the writes' reservations and ``place`` each block: it is
        indexed if it landed; if another mount's copy was kept instead (False: stored all the
        same), or placing failed, its bytes come off the ledger."""
        with self._locked():
            self._reserved -= sum(write.size for write, _place in placements)
            booked = 0
            try:
                for write, place in placements:
                    if place():
                        self._index[write.name] = write.size
                        booked += write.size
                    write.stored = True
            finally:
                unplaced = sum(write.size for write, _place in placements) - booked
                if unplaced:
                    self._set_ledger(self._ledger() - unplaced)

    # -- for pixxelfs cache and stats

    def held(self) -> int:
        """Bytes of blocks (and reservations) according to the shared ledger (unlocked: an
        estimate for statistics)."""
        return self._ledger()

    def remove_older_than(self, age: float) -> int:
        """Delete blocks not read for ``age`` seconds (a package file's slots together, by its
        mtime); returns how many."""
        cutoff = time.time() - age
        with self._locked():
            old = [block for block in _stored(self.folder) if block.mtime <= cutoff]
            for path in {block.path for block in old}:  # a package file once, not per slot
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            self._set_ledger(self._ledger() - sum(block.size for block in old))
            self._rescan()
        return len(old)


def write_file(path: Path, blob: bytes | memoryview, *, sync: bool = False, flags: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | flags, 0o600)
    try:
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
