"""CatalogService: TTL, single flight, keep-old-on-failure, generations, cancellation."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from pixxelfs.api.models import Catalog, OrderItem, Project
from pixxelfs.catalog.service import CatalogService
from pixxelfs.errors import ApiUnavailableError, AuthError

TTL = 60.0
BACKOFF = 5.0


class FakeApi:
    """Serves fixed listings; the catalog listing can wait on a gate, then fail."""

    def __init__(self) -> None:
        self.projects = [Project.from_json({"id": "p1", "name": "farm"})]
        self.order_items = [
            OrderItem.from_json(
                {"id": "o1", "project_id": "p1", "usecase": "agri", "tasks": [{"id": "t1"}]}
            )
        ]
        self.catalogs = [self.make_catalog("c1")]
        self.gate: trio.Event | None = None
        self.failure: Exception | None = None
        self.fetches = 0

    @staticmethod
    def make_catalog(cid: str, **extra: Any) -> Catalog:
        return Catalog.from_json({"id": cid, "task_id": "t1", "details": {"id": cid}, **extra})

    async def iter_projects(self) -> AsyncIterator[Project]:
        for item in self.projects:
            yield item

    async def iter_order_items(self) -> AsyncIterator[OrderItem]:
        for item in self.order_items:
            yield item

    async def iter_catalogs(self) -> AsyncIterator[Catalog]:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        for item in self.catalogs:
            yield item


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def make_service(api: FakeApi) -> CatalogService:
    return CatalogService(api, ttl=TTL, failure_backoff=BACKOFF)


async def test_snapshot_is_reused_until_the_ttl_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    api = FakeApi()
    service = make_service(api)
    assert service.current() is None
    first = await service.tree()
    autojump_clock.jump(TTL - 1)
    assert await service.tree() is first
    assert api.fetches == 1
    autojump_clock.jump(2)
    await service.tree()
    assert (api.fetches, service.builds) == (2, 2)


async def test_refresh_forces_a_rebuild() -> None:
    api = FakeApi()
    service = make_service(api)
    await service.tree()
    api.catalogs.append(api.make_catalog("c2"))
    tree = await service.refresh()
    assert tree.scene_count == 2
    assert service.current() is tree
    assert api.fetches == 2


async def test_concurrent_callers_share_one_rebuild() -> None:
    api = FakeApi()
    api.gate = trio.Event()
    service = make_service(api)
    results: list[object] = []

    async def call() -> None:
        results.append(await service.tree())

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        assert api.fetches == 1
        api.gate.set()
    assert len(results) == 5
    assert all(result is results[0] for result in results)
    assert service.builds == 1


async def test_failed_rebuild_keeps_serving_the_old_snapshot(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    api = FakeApi()
    service = make_service(api)
    old = await service.tree()
    api.failure = ApiUnavailableError("503 after retries")
    autojump_clock.jump(TTL + 1)
    with caplog.at_level(logging.WARNING, logger="pixxelfs.catalog.service"):
        assert await service.tree() is old
    assert "503 after retries" in caplog.text
    assert service.api_failures == 1

    # Within the back-off the API is left alone; after it, the next access retries.
    autojump_clock.jump(BACKOFF - 1)
    assert await service.tree() is old
    assert api.fetches == 2
    api.failure = None
    api.catalogs.append(api.make_catalog("c2"))
    autojump_clock.jump(2)
    new = await service.tree()
    assert new.scene_count == 2
    assert (api.fetches, service.builds, service.api_failures) == (3, 2, 1)


async def test_without_a_snapshot_the_error_is_raised_bare_and_retried_next_time() -> None:
    api = FakeApi()
    api.failure = AuthError("403", status=403)
    service = make_service(api)
    with pytest.raises(AuthError):
        await service.tree()
    assert service.current() is None
    api.failure = None
    assert (await service.tree()).scene_count == 1
    assert (service.api_failures, service.builds) == (1, 1)


async def test_waiters_share_the_leaders_error() -> None:
    api = FakeApi()
    api.gate = trio.Event()
    service = make_service(api)
    errors: list[BaseException] = []

    async def call() -> None:
        try:
            await service.tree()
        except ApiUnavailableError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        api.failure = ApiUnavailableError("down")
        api.gate.set()
    assert len(errors) == 3
    assert all(error is errors[0] for error in errors)
    assert (api.fetches, service.api_failures) == (1, 1)


async def test_generation_changes_only_when_the_tree_does() -> None:
    api = FakeApi()
    service = make_service(api)
    await service.tree()
    assert service.generation == 1
    await service.refresh()
    assert service.generation == 1
    api.catalogs = [api.make_catalog("c1", area=12)]  # only the raw JSON changes
    await service.refresh()
    assert service.generation == 2
    api.projects.append(Project.from_json({"id": "p2", "name": "empty"}))
    await service.refresh()
    assert service.generation == 3
    assert service.builds == 4


async def test_a_cancelled_leader_hands_over_to_a_waiter() -> None:
    api = FakeApi()
    api.gate = trio.Event()
    service = make_service(api)
    results: list[object] = []

    async def call() -> None:
        results.append(await service.tree())

    leader_scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_in_scope, leader_scope, service)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(call)
        await trio.testing.wait_all_tasks_blocked()
        assert api.fetches == 1
        leader_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert api.fetches == 2  # the waiter started its own rebuild
        api.gate.set()
    assert len(results) == 1
    assert service.current() is results[0]


async def _in_scope(scope: trio.CancelScope, service: CatalogService) -> None:
    with scope:
        await service.tree()
