"""BatchWriter: writes queued while the writer thread is busy are stored as one batch."""

from __future__ import annotations

import logging
import threading

import pytest
import trio
import trio.testing

from pixxelfs.remote.batch_writer import BatchWriter


class _Store:
    """Records batches; the first one waits until released (the writer thread is busy)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.busy = threading.Event()
        self.release = threading.Event()

    def __call__(self, items: list[int]) -> list[bool]:
        if not self.batches:
            self.busy.set()
            self.release.wait(10)
        self.batches.append(items)
        if -1 in items:
            raise OSError("the store failed")
        return [item % 2 == 0 for item in items]


async def test_writes_queued_while_the_thread_is_busy_go_as_one_batch() -> None:
    store = _Store()
    writer = BatchWriter(store, threads=1, batch=4)
    outcomes: dict[int, bool] = {}

    async def write(item: int) -> None:
        outcomes[item] = await writer.write(item)

    async with writer.running(), trio.open_nursery() as nursery:
        nursery.start_soon(write, 0)
        await trio.to_thread.run_sync(store.busy.wait)
        for item in range(1, 7):
            nursery.start_soon(write, item)
        await trio.testing.wait_all_tasks_blocked()
        store.release.set()
    # (trio starts the waiting tasks in no fixed order)
    assert [len(batch) for batch in store.batches] == [1, 4, 2]
    assert sorted(item for batch in store.batches for item in batch) == list(range(7))
    assert outcomes == {item: item % 2 == 0 for item in range(7)}


async def test_a_failing_batch_is_logged_and_the_thread_goes_on(caplog) -> None:
    store = _Store()
    store.release.set()
    writer = BatchWriter(store, threads=2)
    with caplog.at_level(logging.ERROR):
        async with writer.running():
            assert await writer.write(-1) is False
            assert await writer.write(2) is True
    assert "storing a batch of 1 failed" in caplog.text


async def test_what_is_queued_when_it_stops_is_still_stored() -> None:
    store = _Store()
    writer = BatchWriter(store, threads=2, batch=2)
    async with trio.open_nursery() as nursery, writer.running():
        for item in range(5):
            nursery.start_soon(writer.write, item)
        await trio.testing.wait_all_tasks_blocked()
        store.release.set()
    assert sorted(item for batch in store.batches for item in batch) == list(range(5))


async def test_writing_needs_the_threads_running() -> None:
    with pytest.raises(RuntimeError, match="running"):
        await BatchWriter(_Store()).write(1)
