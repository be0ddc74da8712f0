"""Tree building: joins, fallbacks, _unassigned, hostile names, duplicates, order independence."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixxelfs.api.models import Catalog, OrderItem, Project
from pixxelfs.catalog.names import NAME_MAX
from pixxelfs.catalog.tree import (
    MAX_WARNINGS_PER_BUILD,
    UNASSIGNED,
    CatalogTree,
    DirectoryNode,
    SceneNode,
    build_tree,
)
from tests.unit.test_catalog_names import assert_valid_name


def project(pid: str, name: str | None = None, **extra: Any) -> Project:
    raw: dict[str, Any] = {"id": pid, **extra}
    if name is not None:
        raw["name"] = name
    return Project.from_json(raw)


def order_item(oid: str, project_id: str | None, usecase: str | None, *tasks: str) -> OrderItem:
    return OrderItem.from_json(
        {
            "id": oid,
            "project_id": project_id,
            "usecase": usecase,
            "tasks": [{"id": t, "order_item_id": oid} for t in tasks],
        }
    )


def catalog(
    cid: str,
    task_id: str | None = "t1",
    item_id: str | None = None,
    when: str | None = "2025-06-11T10:20:30Z",
    **extra: Any,
) -> Catalog:
    raw: dict[str, Any] = {"id": cid, "task_id": task_id, "delivery_status": "SUCCESSFUL"}
    raw["details"] = {"id": item_id or f"ITEM_{cid}", "properties": {"datetime": when}}
    raw.update(extra)
    return Catalog.from_json(raw)


def scene_paths(tree: CatalogTree) -> dict[tuple[str, ...], str]:
    return {path: node.catalog.id for path, node in tree.scenes()}


WORLD_PROJECTS = [project("p1", "farm-watch")]
WORLD_ITEMS = [order_item("o1", "p1", "agriculture", "t1")]


def test_join_places_a_scene_under_project_usecase_and_capture_date() -> None:
    tree = build_tree(WORLD_PROJECTS, WORLD_ITEMS, [catalog("c1", item_id="FF02_0001_L2A")])
    assert scene_paths(tree) == {("farm-watch", "agriculture", "2025-06-11", "FF02_0001_L2A"): "c1"}
    assert tree.scene_count == 1


def test_capture_date_is_the_utc_date() -> None:
    late = catalog("c1", when="2025-06-11T23:30:00-02:00")
    (path,) = scene_paths(build_tree(WORLD_PROJECTS, WORLD_ITEMS, [late]))
    assert path[2] == "2025-06-12"


@pytest.mark.parametrize(
    ("details", "created_at", "expected"),
    [
        (None, "2024-05-27T06:50:20.056549Z", ("2024-05-27", "c1")),
        ({"id": "S", "properties": {}}, None, ("unknown-date", "S")),
        ({"id": "  ", "properties": {"datetime": "garbage"}}, None, ("unknown-date", "c1")),
        ({"id": 42, "properties": None}, "2024-01-02T00:00:00Z", ("2024-01-02", "c1")),
    ],
)
def test_missing_details_fall_back_to_created_at_and_catalog_id(
    details: Any, created_at: str | None, expected: tuple[str, str]
) -> None:
    entry = Catalog.from_json(
        {"id": "c1", "task_id": "t1", "details": details, "created_at": created_at}
    )
    (path,) = scene_paths(build_tree(WORLD_PROJECTS, WORLD_ITEMS, [entry]))
    assert path == ("farm-watch", "agriculture", *expected)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"id": "p1", "name": "slug", "title": "Title"}, "slug"),
        ({"id": "p1", "name": "  ", "title": "My Farm"}, "My Farm"),
        ({"id": "p1", "title": "My Farm"}, "My Farm"),
        ({"id": "p1", "name": None, "title": None}, "p1"),
    ],
)
def test_project_directory_name_falls_back_to_title_then_id(
    raw: dict[str, Any], expected: str
) -> None:
    tree = build_tree([Project.from_json(raw)], WORLD_ITEMS, [catalog("c1")])
    assert [path[0] for path in scene_paths(tree)] == [expected]


@pytest.mark.parametrize(
    ("items", "entry", "reason"),
    [
        (WORLD_ITEMS, catalog("c1", task_id=None), "no task_id"),
        (WORLD_ITEMS, catalog("c1", task_id="t-unknown"), "no order item lists task"),
        ([order_item("o1", None, "agriculture", "t1")], catalog("c1"), "has no project_id"),
        ([order_item("o1", "p-gone", "agriculture", "t1")], catalog("c1"), "not found"),
        ([order_item("o1", "p1", None, "t1")], catalog("c1"), "has no usecase"),
        ([order_item("o1", "p1", " ", "t1")], catalog("c1"), "has no usecase"),
    ],
)
def test_unplaceable_entries_go_to_unassigned_with_a_reason(
    items: list[OrderItem], entry: Catalog, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pixxelfs.catalog.tree"):
        tree = build_tree(WORLD_PROJECTS, items, [entry])
    assert scene_paths(tree) == {(UNASSIGNED, "2025-06-11", "ITEM_c1"): "c1"}
    assert any(reason in r.getMessage() and "c1" in r.getMessage() for r in caplog.records)


def test_projects_without_scenes_still_get_a_directory() -> None:
    tree = build_tree([*WORLD_PROJECTS, project("p2", "empty")], WORLD_ITEMS, [])
    empty = tree.lookup(["empty"])
    assert isinstance(empty, DirectoryNode)
    assert dict(empty.children) == {}
    assert tree.lookup([UNASSIGNED]) is None


@pytest.mark.parametrize("status", ["FAILED", "CREATED", "IN_PROGRESS", "in_progress", "PENDING"])
def test_explicitly_undelivered_entries_are_hidden(status: str) -> None:
    entry = catalog("c1", delivery_status=status)
    assert build_tree(WORLD_PROJECTS, WORLD_ITEMS, [entry]).scene_count == 0


@pytest.mark.parametrize("status", ["SUCCESS", "SUCCESSFUL", None, "UNSPECIFIED", "NEW_THING"])
def test_delivered_and_unknown_statuses_are_shown(status: str | None) -> None:
    entry = catalog("c1", delivery_status=status)
    assert build_tree(WORLD_PROJECTS, WORLD_ITEMS, [entry]).scene_count == 1


def test_duplicate_catalog_ids_keep_the_latest_and_warn_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = catalog("c1", item_id="OLD", updated_at="2025-01-01T00:00:00Z")
    new = catalog("c1", item_id="NEW", updated_at="2025-02-01T00:00:00Z")
    with caplog.at_level(logging.WARNING, logger="pixxelfs.catalog.tree"):
        for order in ([old, new, old], [new, old, old]):
            tree = build_tree(WORLD_PROJECTS, WORLD_ITEMS, order)
            assert [p[-1] for p in scene_paths(tree)] == ["NEW"]
    assert len(caplog.records) == 2  # one per build


def test_hostile_names_become_safe_single_components() -> None:
    long_id = "L" * 300
    projects = [project("p1", "../../etc"), project("p2", "a/b"), project("p3", ".")]
    items = [
        order_item("o1", "p1", "x\x00y", "t1"),
        order_item("o2", "p2", "ctl\x07\x1b", "t2"),
        order_item("o3", "p3", "..", "t3"),
    ]
    entries = [
        catalog("c1", "t1", item_id="../evil"),
        catalog("c2", "t2", item_id=long_id),
        catalog("c3", "t3", item_id="new\nline"),
    ]
    tree = build_tree(projects, items, entries)
    paths = scene_paths(tree)
    assert len(paths) == 3
    for path in paths:
        assert len(path) == 4
        for name in path:
            assert_valid_name(name)
    assert (".._.._etc", "x_y", "2025-06-11", ".._evil") in paths
    assert ("a_b", "ctl__", "2025-06-11", "L" * NAME_MAX) in paths
    assert ("_", "__", "2025-06-11", "new_line") in paths


def test_colliding_project_slugs_and_item_ids_get_deterministic_suffixes() -> None:
    projects = [
        project("p-new", "farm", created_at="2025-01-01T00:00:00Z"),
        project("p-old", "farm", created_at="2024-01-01T00:00:00Z"),
    ]
    items = [order_item("o1", "p-new", "agri", "t1"), order_item("o2", "p-old", "agri", "t2")]
    entries = [
        catalog("c-b", "t2", item_id="SAME", created_at="2025-03-02T00:00:00Z"),
        catalog("c-a", "t2", item_id="SAME", created_at="2025-03-01T00:00:00Z"),
        catalog("c-c", "t1", item_id="SAME"),
    ]
    paths = scene_paths(build_tree(projects, items, entries))
    assert paths == {
        ("farm", "agri", "2025-06-11", "SAME"): "c-a",
        ("farm", "agri", "2025-06-11", "SAME~c-b"): "c-b",
        ("farm~p-new", "agri", "2025-06-11", "SAME"): "c-c",
    }


def test_a_project_cannot_take_reserved_root_names() -> None:
    projects = [project("p1", "_unassigned"), project("p2", ".pixxelfs")]
    items = [order_item("o1", "p1", "agri", "t1")]
    tree = build_tree(projects, items, [catalog("c1", "t1"), catalog("c2", "t-unknown")])
    assert set(tree.root.children) == {"__unassigned", "_.pixxelfs", UNASSIGNED}
    assert scene_paths(tree)[(UNASSIGNED, "2025-06-11", "ITEM_c2")] == "c2"


def test_directory_mtime_is_the_newest_child_and_scene_mtime_prefers_updated_at() -> None:
    entries = [
        catalog("c1", when="2025-06-11T00:00:00Z", updated_at="2025-07-01T00:00:00Z"),
        catalog("c2", when="2025-06-11T12:00:00Z"),
        catalog("c3", when="2025-05-01T00:00:00Z", updated_at="2025-05-02T00:00:00Z"),
    ]
    tree = build_tree(WORLD_PROJECTS, WORLD_ITEMS, entries)
    scenes = {node.catalog.id: node for _, node in tree.scenes()}
    assert scenes["c2"].mtime == 1749643200.0  # capture time, no updated_at
    day = tree.lookup(["farm-watch", "agriculture", "2025-06-11"])
    assert isinstance(day, DirectoryNode)
    assert day.mtime == scenes["c1"].mtime == 1751328000.0
    for path, node in tree.nodes():
        if isinstance(node, DirectoryNode) and node.children:
            assert node.mtime == max(c.mtime for c in node.children.values()), path


def test_lookup() -> None:
    tree = build_tree(WORLD_PROJECTS, WORLD_ITEMS, [catalog("c1", item_id="S1")])
    assert tree.lookup([]) is tree.root
    scene = tree.lookup(["farm-watch", "agriculture", "2025-06-11", "S1"])
    assert isinstance(scene, SceneNode)
    assert scene.name == "S1"
    assert scene.catalog.id == "c1"
    assert tree.lookup(["farm-watch", "agriculture", "2025-06-11", "S1", "x"]) is None
    assert tree.lookup(["farm-watch", "nope"]) is None


def test_warnings_per_build_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    entries = [catalog(f"c{i}", task_id=f"unknown{i}") for i in range(200)]
    with caplog.at_level(logging.WARNING, logger="pixxelfs.catalog.tree"):
        tree = build_tree(WORLD_PROJECTS, WORLD_ITEMS, entries)
    assert tree.scene_count == 200
    assert len(caplog.records) == MAX_WARNINGS_PER_BUILD + 1
    assert "180 more" in caplog.records[-1].getMessage()


# --- order independence ------------------------------------------------------------------------

_ids = st.sampled_from(["a", "b", "c", "d"])


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[Project], list[OrderItem], list[Catalog]]:
    """Small worlds dense in collisions: shared slugs, shared item ids, duplicate ids."""
    projects = [
        project(f"p{pid}", draw(st.sampled_from(["farm", "Farm", "_unassigned", "x/y"])))
        for pid in draw(st.lists(_ids, max_size=4))
    ]
    items = [
        order_item(
            f"o{oid}",
            draw(st.sampled_from([None, "pa", "pb", "pc"])),
            draw(st.sampled_from([None, "agri", "agri ", "a/b"])),
            *draw(st.lists(st.sampled_from(["t1", "t2", "t3"]), max_size=2)),
        )
        for oid in draw(st.lists(_ids, max_size=4))
    ]
    entries = [
        catalog(
            f"c{draw(st.integers(0, 9))}",
            task_id=draw(st.sampled_from([None, "t1", "t2", "t3", "t9"])),
            item_id=draw(st.sampled_from(["S1", "S2", "s1"])),
            when=draw(st.sampled_from([None, "2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z"])),
            updated_at=draw(st.sampled_from([None, "2025-02-01T00:00:00Z"])),
            created_at=draw(st.sampled_from([None, "2025-01-05T00:00:00Z"])),
            delivery_status=draw(st.sampled_from([None, "SUCCESS", "FAILED"])),
        )
        for _ in range(draw(st.integers(0, 8)))
    ]
    return projects, items, entries


def _shape(tree: CatalogTree) -> list[tuple[tuple[str, ...], float, str | None]]:
    return [
        (path, node.mtime, node.catalog.id if isinstance(node, SceneNode) else None)
        for path, node in tree.nodes()
    ]


@settings(max_examples=150, deadline=None)
@given(worlds(), st.randoms(use_true_random=False))
def test_shuffling_the_listings_gives_the_same_tree(
    world: tuple[list[Project], list[OrderItem], list[Catalog]], rnd: random.Random
) -> None:
    projects, items, entries = world
    expected = _shape(build_tree(projects, items, entries))
    for listing in (projects, items, entries):
        rnd.shuffle(listing)
    assert _shape(build_tree(projects, items, entries)) == expected
    for path, _, _ in expected:
        for name in path:
            assert_valid_name(name)


def test_ten_thousand_catalogs_build_quickly() -> None:
    projects = [project(f"p{i}", f"project-{i % 7}") for i in range(20)]
    items = [order_item(f"o{i}", f"p{i % 20}", f"use-{i % 3}", f"t{i}") for i in range(200)]
    entries = [
        catalog(
            f"c{i:05d}",
            task_id=f"t{i % 210}",  # some tasks are unknown: exercises _unassigned
            item_id=f"FF02_{i % 9000:05d}",  # some item ids collide
            when=f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T00:00:00Z",
            updated_at="2025-12-01T00:00:00Z",
        )
        for i in range(10_000)
    ]
    started = time.perf_counter()
    tree = build_tree(projects, items, entries)
    elapsed = time.perf_counter() - started
    print(f"built a tree of {tree.scene_count} scenes in {elapsed:.3f} s")
    assert tree.scene_count == 10_000
    assert elapsed < 5.0
