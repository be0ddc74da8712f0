"""The disk block store and tier: verification, the size limit, LRU, sharing, failures.

The store's behaviours are tested in both layouts: aligned blocks as slots of package files
(where the file system punches holes) and as files of their own (where it does not).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from pixxelfs.remote import block_store
from pixxelfs.remote.block_cache import BlockKey
from pixxelfs.remote.block_store import (
    BLOCK_HEADER,
    PAGE,
    TOUCH_AFTER_SECONDS,
    BlockStore,
    block_name,
    decode_block,
    encode_block,
    stored_blocks,
    usage,
)
from pixxelfs.remote.disk_cache import DiskBlockTier, PackageIndexStore, account_dir
from pixxelfs.remote.storage import ObjectInfo
from pixxelfs.remote.zipindex import ZipIndex, ZipMember

BLOCK = 1000
SIZE = 2 * PAGE  # what one block of BLOCK bytes books: a header page and a data page


def _key(index: int, etag: str | None = '"v1"', catalog: str = "catalog-1") -> BlockKey:
    return BlockKey((catalog, etag, 10 * BLOCK), index)


def _data(index: int) -> bytes:
    return bytes([index % 251]) * BLOCK


def _named(index: int, catalog: str = "catalog-1") -> tuple[str, str]:
    named = block_name(_key(index, catalog=catalog), BLOCK)
    assert named is not None
    return named


@pytest.fixture(params=["slots", "files"])
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both layouts: ``files`` is what a file system that cannot punch holes gets."""
    if request.param == "files":
        monkeypatch.setattr(block_store, "_punch_supported", lambda folder: False)
    return request.param


def _store(folder: Path, limit: int) -> BlockStore:
    store = BlockStore(folder, limit)
    store.open()
    return store


def where(store: BlockStore, name: str) -> tuple[Path, int]:
    """The file holding a block and the block's offset in it."""
    slot = block_store._slot_of(name) if store.slots else None
    if slot is None:
        return store.folder / block_store._own_file(name), 0
    return store.folder / slot.file, slot.offset


def data_bytes(path: Path) -> int:
    """Bytes of a file that are not holes (what it really takes, without FS metadata)."""
    total = end = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            start = os.lseek(fd, end, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
            total += end - start
    except OSError as exc:  # ENXIO: no data after ``end``
        assert exc.errno == errno.ENXIO
    finally:
        os.close(fd)
    return total


def on_disk(folder: Path) -> int:
    """Bytes of every block, slot and temporary file below ``folder``."""
    return sum(data_bytes(p) for p in folder.rglob("*") if p.is_file() and p.name != ".ledger")


def _json_files(folder: Path) -> list[Path]:
    return list(folder.glob("*.json"))


def _flip(path: Path, at: int) -> None:
    with path.open("r+b") as file:
        file.seek(at)
        byte = file.read(1)
        file.seek(at)
        file.write(bytes([byte[0] ^ 0xFF]))


def _flipped(blob: bytes, at: int) -> bytes:
    changed = bytearray(blob)
    changed[at] ^= 0xFF
    return bytes(changed)


def test_block_files_verify_key_length_and_checksum() -> None:
    blob = encode_block("k", b"data")
    assert len(blob) == 2 * PAGE  # a header page, then the data padded to a page
    assert decode_block("k", blob) == b"data"
    assert decode_block("other", blob) is None
    assert decode_block("k", blob[:-1]) is None
    assert decode_block("k", blob[:PAGE]) is None
    assert decode_block("k", _flipped(blob, PAGE + 3)) is None
    assert decode_block("k", _flipped(blob, BLOCK_HEADER.size)) is None  # the key
    assert decode_block("k", b"") is None


def test_keys_include_etag_and_block_size_and_skip_packages_without_etag() -> None:
    assert block_name(_key(0), BLOCK) != block_name(_key(0, '"v2"'), BLOCK)
    assert block_name(_key(0), BLOCK) != block_name(_key(0), 2 * BLOCK)
    assert block_name(_key(0, None), BLOCK) is None
    assert block_name(_key(0, catalog="c" * PAGE), BLOCK) is None  # does not fit the header


def test_aligned_blocks_of_a_package_version_share_one_file_and_ranges_do_not() -> None:
    first, second = _named(0)[0], _named(7)[0]
    assert first.partition("#")[0] == second.partition("#")[0] != _named(0, "c2")[0]
    assert first.endswith(f".{BLOCK}.pkg#0") and second.endswith("#7")
    assert block_name(_key(0, '"v2"'), BLOCK)[0].partition("#")[0] != first.partition("#")[0]
    ranges = [block_name(BlockKey(_key(0).package, i, ("range", 50)), BLOCK) for i in (0, 9)]
    assert all(r is not None and r[0].endswith(".blk") and "#" not in r[0] for r in ranges)
    assert ranges[0] != ranges[1]


def test_account_dir_hashes_url_and_key_and_never_contains_the_key(tmp_path: Path) -> None:
    first = account_dir(tmp_path, "http://a/", "secret-key-123")
    assert first == account_dir(tmp_path, "http://a", "secret-key-123")
    assert first != account_dir(tmp_path, "http://a", "another-key")
    assert first != account_dir(tmp_path, "http://b", "secret-key-123")
    assert "secret" not in str(first)


def test_the_layout_follows_the_file_system(tmp_path: Path, layout: str) -> None:
    store = _store(tmp_path, 100 * BLOCK)
    assert store.put(*_named(0), _data(0))
    assert store.slots == (layout == "slots")
    suffix = ".pkg" if layout == "slots" else ".pkg#0.blk"
    assert [p.name[-len(suffix) :] for p in tmp_path.glob("*/*")] == [suffix]


def test_damaged_blocks_are_removed_and_count_as_misses(
    tmp_path: Path, caplog, layout: str
) -> None:
    store = _store(tmp_path, 100 * BLOCK)
    for index in (1, 2, 3):  # data of block 0 is zeros
        assert store.put(*_named(index), _data(index))
    (first, at), (second, second_at) = where(store, _named(1)[0]), where(store, _named(2)[0])
    with first.open("r+b") as file:  # a header without its data (torn; a power loss)
        file.seek(at + PAGE)
        file.write(bytes(PAGE))
    _flip(second, second_at + PAGE + BLOCK - 1)  # a flipped data byte
    with caplog.at_level(logging.WARNING):
        assert store.get(*_named(1)) is None
        assert store.get(*_named(2)) is None
    assert store.get(*_named(3)) == _data(3)
    assert store.corrupt == 2
    assert len([r for r in caplog.records if "damaged" in r.message]) == 1
    assert [ok for _key, ok in stored_blocks(tmp_path)] == [True]
    assert store.held() == on_disk(tmp_path) == SIZE
    assert store.get(*_named(1)) is None and store.corrupt == 2  # now absent: a plain miss
    torn = where(store, _named(3)[0])[0].parent / "torn.blk"
    torn.write_bytes(b"PXFS")
    assert sorted(stored_blocks(tmp_path)) == [("", False), (_named(3)[1], True)]


def test_limit_is_never_exceeded_and_least_recently_used_goes_first(
    tmp_path: Path, layout: str
) -> None:
    store = _store(tmp_path, 3 * SIZE)
    for index in range(3):
        store.put(*_named(index), _data(index))
    assert store.get(*_named(0)) == _data(0)  # now 1 is the least recently used
    for index in range(3, 8):
        store.put(*_named(index), _data(index))
        assert on_disk(tmp_path) <= 3 * SIZE
        if index == 3:
            assert store.get(*_named(0)) == _data(0)
            assert store.get(*_named(1)) is None
    assert store.evictions == 5
    assert store.held() == on_disk(tmp_path) == 3 * SIZE


def test_a_block_larger_than_the_limit_is_not_stored(tmp_path: Path, layout: str) -> None:
    store = _store(tmp_path, BLOCK // 2)
    assert not store.put(*_named(0), _data(0))
    assert on_disk(tmp_path) == 0


def test_reopening_rebuilds_the_index_in_last_access_order_and_removes_dead_writes(
    tmp_path: Path, layout: str
) -> None:
    """Across remounts the order is the files' mtimes: a package file's for its slots."""
    store = _store(tmp_path, 10 * SIZE)
    packages = ["p0", "p1", "p2"]
    for age, catalog in enumerate(packages):
        store.put(*_named(0, catalog), _data(age))
        os.utime(where(store, _named(0, catalog)[0])[0], (1000 + age, 1000 + age))
    os.utime(where(store, _named(0, "p0")[0])[0], (2000, 2000))  # p0 was read last
    store.close()
    dead = where(store, _named(0, "p0")[0])[0].parent / ".x.blk.999999999.1.tmp"
    dead.write_bytes(b"half a block")
    again = _store(tmp_path, 2 * SIZE)
    assert not dead.exists()
    assert again.held() == 3 * SIZE
    again.put(*_named(5), _data(5))  # evicts p1 and p2, keeps p0
    assert again.get(*_named(0, "p0")) == _data(0)
    assert again.get(*_named(0, "p1")) is None and again.get(*_named(0, "p2")) is None


def test_two_stores_sharing_a_folder_stay_consistent(tmp_path: Path, layout: str) -> None:
    limit = 6 * SIZE
    stores = [_store(tmp_path, limit), _store(tmp_path, limit)]

    def work(store: BlockStore, offset: int) -> None:
        for index in range(40):
            block = (index * 7 + offset) % 30
            named = _named(block % 10, f"p{block // 10}")
            data = store.get(*named)
            if data is None:
                store.put(*named, _data(block))
            else:
                assert data == _data(block)

    threads = [threading.Thread(target=work, args=(s, n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert on_disk(tmp_path) <= limit
    assert stores[0].held() == on_disk(tmp_path)
    assert usage(tmp_path).bytes == on_disk(tmp_path)
    assert all(ok for _key, ok in stored_blocks(tmp_path))


def test_a_block_stored_by_another_mount_is_found_after_a_rescan_and_booked_once(
    tmp_path: Path, layout: str
) -> None:
    first, second = _store(tmp_path, 10 * SIZE), _store(tmp_path, 10 * SIZE)
    assert first.put(*_named(3), _data(3))
    assert not second.indexed(_named(3)[0])
    assert second.put(*_named(3), _data(3))  # it did not know: the same bytes, kept once
    assert first.held() == second.held() == on_disk(tmp_path) == SIZE
    assert first.put(*_named(4), _data(4))
    with second._locked():
        second._rescan()
    assert second.indexed(_named(4)[0]) and second.get(*_named(4)) == _data(4)


def test_remove_older_than_keeps_recent_blocks(tmp_path: Path, layout: str) -> None:
    store = _store(tmp_path, 10 * SIZE)
    for catalog in ("p0", "p1"):
        store.put(*_named(0, catalog), _data(0))
        store.put(*_named(1, catalog), _data(1))
    os.utime(where(store, _named(0, "p0")[0])[0], (1000, 1000))
    assert store.remove_older_than(3600) == (2 if layout == "slots" else 1)
    assert store.get(*_named(0, "p0")) is None and store.get(*_named(0, "p1")) == _data(0)
    assert store.held() == on_disk(tmp_path)


class _FullDisk(BlockStore):
    def put_many(self, blocks: Sequence[tuple[str, str, bytes]]) -> list[bool]:
        raise OSError(errno.ENOSPC, "No space left on device")


async def test_a_full_disk_turns_writing_off_with_one_warning(tmp_path: Path, caplog) -> None:
    store = _FullDisk(tmp_path, 100 * BLOCK)
    store.open()
    fetched: list[int] = []

    async def origin(index: int) -> bytes:
        fetched.append(index)
        return _data(index)

    with caplog.at_level(logging.WARNING):
        async with DiskBlockTier(store, BLOCK).running() as tier:
            for index in range(3):
                assert await tier.fetch(_key(index), lambda i=index: origin(i)) == _data(index)
    assert fetched == [0, 1, 2]
    assert not tier.writing
    assert len([r for r in caplog.records if "disk is full" in r.message]) == 1


async def test_the_tier_serves_hits_from_disk_and_never_stores_untagged_packages(
    tmp_path: Path,
) -> None:
    calls = 0

    async def origin() -> bytes:
        nonlocal calls
        calls += 1
        return _data(1)

    async with DiskBlockTier(_store(tmp_path, 100 * BLOCK), BLOCK).running() as tier:
        assert not tier.holds(_key(1))
        assert await tier.fetch(_key(1), origin) == _data(1)
        assert tier.holds(_key(1))  # what speculative reads may skip fetching
        assert await tier.fetch(_key(1), origin) == _data(1)
        assert await tier.fetch(_key(1, None), origin) == _data(1)
        assert await tier.fetch(_key(1, None), origin) == _data(1)
        assert not tier.holds(_key(1, None)) and not tier.holds(_key(2))
    assert calls == 3
    assert (tier.hits, tier.misses, tier.writes) == (1, 1, 1)


async def test_only_blocks_in_the_index_are_looked_for_on_disk(tmp_path: Path) -> None:
    """A cold read costs no disk lookup per block; a block stored by an earlier mount (found
    by the scan at open) and one stored since are looked for, and hit."""
    earlier = _store(tmp_path, 100 * BLOCK)
    assert earlier.put(*_named(2), _data(2))
    store = _store(tmp_path, 100 * BLOCK)  # a new mount: its scan indexes block 2
    looked: list[str] = []
    get = store.get
    store.get = lambda name, text: looked.append(name) or get(name, text)  # type: ignore[method-assign]

    async def origin() -> bytes:
        return _data(1)

    async with DiskBlockTier(store, BLOCK).running() as tier:
        assert await tier.fetch(_key(1), origin) == _data(1)
        assert looked == []  # not on disk, not looked for
        assert await tier.fetch(_key(1), origin) == _data(1)
        assert await tier.fetch(_key(2), origin) == _data(2)
    assert looked == [_named(1)[0], _named(2)[0]] and tier.hits == 2


async def test_saved_indexes_roundtrip_per_entry_version(tmp_path: Path) -> None:
    store = PackageIndexStore(tmp_path)
    member = ZipMember("a/b.tif", 0, 10, 10, 0, 123, None, False)
    index = ZipIndex((member,), b"comment")
    info = ObjectInfo(100, '"e1"')
    await store.save("c1", "v1", info, index)
    assert await store.load("c1", "v1") == (info, index)
    assert await store.load("c1", "v2") is None  # the catalog entry changed
    assert await store.load("c2", "v1") is None
    store.discard("c1")  # the package changed (412)
    assert await store.load("c1", "v1") is None
    assert _json_files(tmp_path) == []
    await store.save("c3", "v1", ObjectInfo(100, None), index)  # no ETag: never trusted
    assert await store.load("c3", "v1") is None


async def test_a_damaged_saved_index_is_ignored(tmp_path: Path) -> None:
    store = PackageIndexStore(tmp_path)
    index = ZipIndex((), b"")
    await store.save("c1", "v1", ObjectInfo(1, '"e"'), index)
    _json_files(tmp_path)[0].write_text("{not json")
    assert await store.load("c1", "v1") is None


@pytest.mark.parametrize("age", [0.0, 1e9])
def test_usage_counts_blocks(tmp_path: Path, age: float, layout: str) -> None:
    store = _store(tmp_path, 100 * BLOCK)
    store.put(*_named(0), _data(0))
    store.put(*_named(1), _data(1))
    store.remove_older_than(age)
    held = usage(tmp_path)
    assert held.bytes == on_disk(tmp_path) == store.held()
    assert held.blocks == (0 if age == 0 else 2)


def test_blocks_are_whole_pages_and_the_ledger_books_their_real_size(
    tmp_path: Path, layout: str
) -> None:
    store = _store(tmp_path, 100 * BLOCK)
    for index in range(3):
        assert store.put(*_named(index), _data(index))
        assert store.get(*_named(index)) == _data(index)
    files = [p for p in tmp_path.glob("*/*") if p.is_file()]
    assert sorted(data_bytes(p) for p in files) == ([3 * SIZE] if store.slots else [SIZE] * 3)
    assert all(p.stat().st_size % PAGE == 0 for p in files)
    assert store.held() == 3 * SIZE
    assert len(store._buffers._free) == 1  # one reused aligned buffer, not one per block


def test_blocks_of_the_old_format_are_discarded_not_served(tmp_path: Path, layout: str) -> None:
    name, text = _named(0)
    store = _store(tmp_path, 100 * BLOCK)
    store.put(name, text, _data(0))
    path, at = where(store, name)
    store.close()
    with path.open("r+b") as file:
        file.seek(at)
        file.write(b"PXFSBLK3")  # format 3 (CRC-32): otherwise the same layout
    store = _store(tmp_path, 100 * BLOCK)
    assert store.held() == SIZE
    assert store.get(name, text) is None
    assert not path.exists() and store.corrupt == 1 and store.held() == 0
    assert store.put(name, text, _data(0)) and store.get(name, text) == _data(0)


@pytest.mark.parametrize("refusing", ["open", "pwrite"])
def test_without_o_direct_blocks_use_buffered_io(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog, refusing: str, layout: str
) -> None:
    """tmpfs refuses O_DIRECT at open; some file systems only at the first write."""
    real = getattr(os, refusing)

    def fake_open(path, flags, *args):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *args)

    def fake_pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, refusing, fake_open if refusing == "open" else fake_pwrite)
    with caplog.at_level(logging.INFO, logger="pixxelfs.remote.block_store"):
        store = _store(tmp_path, 100 * BLOCK)
    assert not store.direct
    assert len([r for r in caplog.records if "buffered I/O" in r.message]) == 1
    for index in range(3):
        assert store.put(*_named(index), _data(index))
    assert [store.get(*_named(index)) for index in range(3)] == [_data(i) for i in range(3)]
    assert not list(tmp_path.glob(".probe.*"))


def test_a_hit_rewrites_the_mtime_only_when_it_is_old(tmp_path: Path, layout: str) -> None:
    store = _store(tmp_path, 100 * BLOCK)
    store.put(*_named(0), _data(0))
    path = where(store, _named(0)[0])[0]
    recent = time.time() - TOUCH_AFTER_SECONDS / 2
    os.utime(path, (recent, recent))
    assert store.get(*_named(0)) == _data(0)
    assert path.stat().st_mtime == pytest.approx(recent)
    os.utime(path, (1000, 1000))
    assert store.get(*_named(0)) == _data(0)
    assert path.stat().st_mtime > recent
