"""The saved catalog snapshot, seeding the catalog service, and entry versions."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from pixxelfs.api.models import Catalog, OrderItem, Project
from pixxelfs.catalog.service import CatalogService
from pixxelfs.catalog.snapshot import EntryVersions, SnapshotStore, entry_version
from pixxelfs.catalog.tree import build_tree
from tests.unit.test_catalog_service import FakeApi


def _listings() -> tuple[list[Project], list[OrderItem], list[Catalog]]:
    api = FakeApi()
    odd = FakeApi.make_catalog("c2", details={"id": "scene\udc80", "properties": {}})
    return api.projects, api.order_items, [*api.catalogs, odd]


def _paths(tree) -> list[tuple[str, ...]]:
    return [path for path, _node in tree.nodes()]


async def test_a_saved_snapshot_rebuilds_the_same_tree(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "catalog.json")
    assert await store.load() is None
    projects, items, catalogs = _listings()
    await store.save(projects, items, catalogs)
    saved = await store.load()
    assert saved is not None
    assert _paths(saved.tree) == _paths(build_tree(projects, items, catalogs))
    scenes = {scene.catalog.id: scene.catalog.raw for _p, scene in saved.tree.scenes()}
    assert scenes == {c.id: c.raw for c in catalogs}


async def test_a_damaged_snapshot_is_ignored_with_a_warning(tmp_path: Path, caplog) -> None:
    path = tmp_path / "catalog.json"
    path.write_text('{"format": 1, "projects": [')
    with caplog.at_level(logging.WARNING):
        assert await SnapshotStore(path).load() is None
    assert "unreadable catalog snapshot" in caplog.text


async def test_a_seeded_service_serves_without_the_api_and_persists_changes() -> None:
    api = FakeApi()
    saved: list[int] = []

    async def on_listings(projects, items, catalogs) -> None:
        saved.append(len(catalogs))

    service = CatalogService(api, ttl=60.0, on_listings=on_listings)
    service.seed(build_tree(api.projects, api.order_items, api.catalogs), fresh_for=math.inf)
    assert (await service.tree()).scene_count == 1
    assert api.fetches == 0
    await service.refresh()  # the same tree: nothing to save
    assert saved == []
    api.catalogs.append(FakeApi.make_catalog("c9"))
    await service.refresh()
    assert saved == [2]


def test_entry_versions_follow_the_current_tree() -> None:
    api = FakeApi()
    tree = build_tree(api.projects, api.order_items, api.catalogs)
    current = [tree]
    versions = EntryVersions(lambda: current[0])
    first = versions("c1")
    assert first == entry_version(api.catalogs[0])
    assert versions("missing") is None
    changed = FakeApi.make_catalog("c1", updated_at="2026-01-01T00:00:00Z")
    current[0] = build_tree(api.projects, api.order_items, [changed])
    assert versions("c1") not in (None, first)
