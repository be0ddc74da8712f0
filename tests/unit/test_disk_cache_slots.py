"""Slots: the aligned blocks of a package version as slots of one sparse file.

What only slots have: holes as absent blocks, eviction by punching, the package file's life,
data pages that lost their header, and the fallback where holes cannot be punched.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

import pytest

from pixxelfs.remote import block_store
from pixxelfs.remote.block_store import PAGE, STALE_TEMP_SECONDS, BlockStore, stored_blocks, usage
from tests.unit.test_disk_cache import SIZE, _data, _named, _store, data_bytes, on_disk, where


def _package(store: BlockStore, catalog: str = "catalog-1") -> Path:
    return where(store, _named(0, catalog)[0])[0]


def test_a_slot_round_trips_and_a_hole_is_a_plain_miss(tmp_path: Path) -> None:
    store = _store(tmp_path, 100 * SIZE)
    assert store.slots
    for index in (0, 2, 9):
        assert store.put(*_named(index), _data(index))
    path = _package(store)
    assert [p for p in tmp_path.glob("*/*")] == [path]
    assert path.stat().st_size == 10 * (PAGE + PAGE)  # slot 9's end: a page + a data page
    assert data_bytes(path) == 3 * SIZE  # slots 1 and 3..8 are holes
    assert [store.get(*_named(i)) for i in (0, 2, 9)] == [_data(0), _data(2), _data(9)]
    assert store.get(*_named(1)) is None and store.get(*_named(10)) is None
    assert store.corrupt == 0 and store.held() == 3 * SIZE


def test_eviction_punches_slots_in_lru_order_across_packages_and_unlinks_empty_files(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path, 4 * SIZE)
    for index in range(2):
        for catalog in ("a", "b"):
            assert store.put(*_named(index, catalog), _data(index))
    files = {catalog: _package(store, catalog) for catalog in ("a", "b")}
    allocated = files["a"].stat().st_blocks
    assert store.get(*_named(0, "a")) == _data(0)  # LRU: b0, a1, b1, a0
    os.utime(files["a"], (1000, 1000))
    assert store.put(*_named(5, "c"), _data(5))  # evicts b0
    assert store.put(*_named(6, "c"), _data(6))  # evicts a1
    assert files["a"].stat().st_blocks < allocated  # punched, not rewritten
    assert files["a"].stat().st_mtime == 1000  # an eviction is no access
    assert [store.get(*_named(0, "b")), store.get(*_named(1, "a"))] == [None, None]
    assert store.get(*_named(1, "b")) == _data(1) and store.get(*_named(0, "a")) == _data(0)
    assert all(store.put(*_named(i, "c"), _data(i)) for i in (7, 8, 9, 10))  # c5 c6 b1 a0 go
    assert not files["a"].exists() and not files["b"].exists()  # their last slots went
    assert store.evictions == 6 and store.held() == on_disk(tmp_path) == 4 * SIZE
    assert usage(tmp_path).blocks == 4 and all(ok for _key, ok in stored_blocks(tmp_path))


def _orphan(store: BlockStore, index: int) -> Path:
    """Data pages of a slot without its header: a writer killed between its two writes."""
    name, text = _named(index)
    path, offset = where(store, name)
    blob = block_store.encode_block(text, _data(index))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, blob[PAGE:], offset + PAGE)
    finally:
        os.close(fd)
    return path


@pytest.mark.parametrize("old", [False, True])
def test_data_without_a_header_is_absent_and_cleaned_once_its_file_is_stale(
    tmp_path: Path, old: bool
) -> None:
    store = _store(tmp_path, 100 * SIZE)
    assert store.put(*_named(0), _data(0))
    path = _orphan(store, 3)
    assert store.get(*_named(3)) is None and store.corrupt == 0
    store.close()
    if old:
        stamp = time.time() - 2 * STALE_TEMP_SECONDS
        os.utime(path, (stamp, stamp))
    again = _store(tmp_path, 100 * SIZE)  # a start-up rescan
    assert again.held() == SIZE and usage(tmp_path).blocks == 1
    assert data_bytes(path) == (SIZE if old else SIZE + PAGE)
    assert again.get(*_named(0)) == _data(0)


def test_a_stale_file_of_orphans_only_is_deleted_at_start(tmp_path: Path) -> None:
    store = _store(tmp_path, 100 * SIZE)
    assert store.put(*_named(0), _data(0))
    path = _package(store)
    with store._locked():
        assert store._remove(_named(0)[0]) and not path.exists()
    path = _orphan(store, 1)
    stamp = time.time() - 2 * STALE_TEMP_SECONDS
    os.utime(path, (stamp, stamp))
    store.close()
    _store(tmp_path, 100 * SIZE)
    assert not path.exists()


def test_a_slot_written_into_a_file_deleted_meanwhile_is_not_booked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another mount removes the file's last slot and deletes the file while this one writes
    data pages into it: the header is not written, the reservation is given back."""
    writer, evictor = _store(tmp_path, 100 * SIZE), _store(tmp_path, 100 * SIZE)
    assert evictor.put(*_named(1), _data(1))
    real = block_store._pwrite_all

    def evicted_first(fd: int, content: memoryview, offset: int) -> None:
        monkeypatch.setattr(block_store, "_pwrite_all", real)
        assert evictor.remove_older_than(0) == 1
        real(fd, content, offset)

    monkeypatch.setattr(block_store, "_pwrite_all", evicted_first)
    assert evictor.held() == SIZE
    assert writer.put(*_named(0), _data(0))
    assert not _package(writer).exists()
    assert writer.get(*_named(0)) is None
    assert writer.held() == on_disk(tmp_path) == 0
    assert writer.put(*_named(0), _data(0)) and writer.get(*_named(0)) == _data(0)


@pytest.mark.parametrize("missing", ["punch_hole", "seek_data"])
def test_without_holes_aligned_blocks_are_files_of_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog, missing: str
) -> None:
    """Punching refused, or holes that SEEK_DATA does not see (blocks larger than a page,
    a file system without a real SEEK_DATA): slots cannot work."""

    def refused(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    if missing == "punch_hole":
        monkeypatch.setattr(block_store, "punch_hole", refused)
    else:
        monkeypatch.setattr(block_store, "_holds_data", lambda fd, start=0: start)
    with caplog.at_level(logging.INFO, logger="pixxelfs.remote.block_store"):
        store = _store(tmp_path, 2 * SIZE)
    assert not store.slots
    assert len([r for r in caplog.records if "cannot punch holes" in r.message]) == 1
    for index in range(3):
        assert store.put(*_named(index), _data(index))
    assert store.get(*_named(0)) is None and store.get(*_named(2)) == _data(2)
    assert sorted(p.name.rpartition("#")[2] for p in tmp_path.glob("*/*")) == ["1.blk", "2.blk"]
    assert store.held() == on_disk(tmp_path) == 2 * SIZE
    assert not list(tmp_path.glob(".probe.*"))


@pytest.mark.parametrize("meanwhile", ["evicted", "intact"])
def test_a_read_that_raced_an_eviction_or_a_write_is_checked_again_under_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog, meanwhile: str
) -> None:
    """A slot punched while it was read looks damaged (a header, zeroed data): under the
    lock it is read again, and it is a plain miss (evicted) or a hit, never 'damaged'."""
    store = _store(tmp_path, 100 * SIZE)
    name, text = _named(1)
    assert store.put(name, text, _data(1))
    real = store._read_slot

    def raced(slot: block_store._Slot, key: bytes) -> tuple[bytes | None, int] | None:
        monkeypatch.setattr(store, "_read_slot", real)
        if meanwhile == "evicted":
            assert store.remove_older_than(0) == 1
        return None, SIZE

    monkeypatch.setattr(store, "_read_slot", raced)
    with caplog.at_level(logging.WARNING):
        got = store.get(name, text)
    assert got == (None if meanwhile == "evicted" else _data(1))
    assert store.corrupt == 0 and not caplog.records
    assert store.indexed(name) == (meanwhile == "intact")
