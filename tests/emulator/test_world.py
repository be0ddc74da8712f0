"""The synthetic workspace: determinism, joins, geometry, and cost at catalog scale."""

from __future__ import annotations

import time

from rasterio.warp import transform as warp_transform

from pixxelfs.emulator import EmulatorConfig, search
from pixxelfs.emulator.stac import catalog_entry
from pixxelfs.emulator.world import World


def test_same_seed_same_world_other_seed_other_ids() -> None:
    first, again = World(EmulatorConfig(seed=3)), World(EmulatorConfig(seed=3))
    other = World(EmulatorConfig(seed=4))
    ids = [s.id for s in first.scenes]
    assert ids == [s.id for s in again.scenes]
    assert [s.item_id for s in first.scenes] == [s.item_id for s in again.scenes]
    assert not set(ids) & {s.id for s in other.scenes}


def test_every_project_has_several_order_items_and_tasks_have_scenes() -> None:
    world = World(EmulatorConfig(scenes=24, projects=3))
    per_project: dict[str, int] = {}
    for item in world.order_items:
        per_project[item["project_id"]] = per_project.get(item["project_id"], 0) + 1
    assert len(per_project) == 3 and min(per_project.values()) >= 2
    per_task: dict[str, int] = {}
    for scene in world.scenes:
        per_task[scene.task_id] = per_task.get(scene.task_id, 0) + 1
    assigned = [n for task, n in per_task.items() if task in world.task_owner]
    assert len(assigned) == len(world.order_items) and min(assigned) >= 2
    assert sum(1 for task in per_task if task not in world.task_owner) == 1


def test_capture_days_bound_the_spread_of_capture_dates() -> None:
    spread = {s.captured.date() for s in World(EmulatorConfig(scenes=200)).scenes}
    one_day = {s.captured.date() for s in World(EmulatorConfig(scenes=200, capture_days=1)).scenes}
    assert len(spread) > 100 and len(one_day) == 1


def test_footprint_matches_the_utm_transform() -> None:
    world = World(EmulatorConfig(scenes=5, width=200, height=100))
    for scene in world.scenes:
        a, _, c, _, e, f = scene.transform
        xs = [c, c + 200 * a]
        ys = [f, f + 100 * e]
        lons, lats = warp_transform(f"EPSG:{scene.epsg}", "EPSG:4326", xs, ys)
        ring = scene.footprint
        assert abs(ring[0][0] - lons[0]) < 1e-6 and abs(ring[0][1] - lats[0]) < 1e-6
        assert abs(ring[2][0] - lons[1]) < 1e-6 and abs(ring[2][1] - lats[1]) < 1e-6
        zone = scene.epsg % 100
        assert -180 + 6 * (zone - 1) - 1 <= ring[0][0] <= -180 + 6 * zone + 1


def test_ten_thousand_scenes_page_quickly() -> None:
    world = World(EmulatorConfig(scenes=10_000))
    request = search.parse({"limit": 100, "offset": 9_000})
    started = time.perf_counter()
    page, total = search.run(world, request)
    entries = [catalog_entry(world, scene) for scene in page]
    elapsed = time.perf_counter() - started
    assert total == 10_000 and len(entries) == 100
    assert elapsed < 0.25  # typically ~20 ms; generous for slow CI machines
