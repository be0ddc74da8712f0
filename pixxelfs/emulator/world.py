"""The emulated workspace: projects, order items, tasks and catalog entries, derived from a seed.

Only compact :class:`Scene` records are kept per catalog entry (a 100,000-scene catalog costs a few
tens of MB); the STAC items are built on demand by :mod:`pixxelfs.emulator.stac`. Every id is a
UUID hashed from the seed, so the same seed always yields the same catalog, ids and paths.

Layout: scene ``i`` of the assigned scenes belongs to one of ``M`` order items (contiguous blocks,
one task per item, several scenes per task); item ``m`` belongs to project ``m % P``. The last
``orphans`` scenes carry a task id that no order item owns, so clients can exercise their
``_unassigned/`` folder. Scenes added at run time join existing tasks round-robin.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
import random
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.warp import transform as warp_transform

from pixxelfs.emulator.config import EmulatorConfig

log = logging.getLogger(__name__)

GSD = 5.0
USECASES = ("agriculture", "forestry", "mining", "water", "urban")
PROJECT_NAMES = (
    ("coastal-monitoring", "Coastal Monitoring"),
    ("crop-health", "Crop Health"),
    ("forest-watch", "Forest Watch"),
    ("mine-survey", "Mine Survey"),
    ("urban-growth", "Urban Growth"),
    ("water-quality", "Water Quality"),
)
# (lon, lat) of places worth imaging; scenes are jittered around them in their UTM zone.
SITES = (
    (77.59, 12.97),
    (75.80, 30.90),
    (89.00, 21.90),
    (-120.50, 36.70),
    (-62.20, -3.40),
    (118.60, -22.60),
    (4.60, 52.40),
    (31.20, 30.80),
)
_EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def stable_uuid(seed: int, *parts: object) -> str:
    """A UUID4-shaped id that depends only on the seed and ``parts``."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def iso(moment: dt.datetime) -> str:
    """RFC 3339 with microseconds and ``Z``, as the API's examples show."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utm_epsg(lon: float, lat: float) -> int:
    zone = min(60, int((lon + 180.0) // 6.0) + 1)
    return (32600 if lat >= 0 else 32700) + zone


@dataclass(slots=True)
class Scene:
    """What is needed to describe (and render) one catalog entry; everything else is derived."""

    index: int
    id: str
    task_id: str
    item_id: str
    captured: dt.datetime
    created: dt.datetime
    epsg: int
    x0: float
    y0: float
    width: int
    height: int
    bands: int
    footprint: tuple[tuple[float, float], ...]
    cloud_cover: float
    off_nadir: float
    sun_azimuth: float
    sun_elevation: float
    relative_orbit: int
    bandset_id: str
    source_tif: Path | None = None

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        lons = [p[0] for p in self.footprint]
        lats = [p[1] for p in self.footprint]
        return (min(lons), min(lats), max(lons), max(lats))

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        return (GSD, 0.0, self.x0, 0.0, -GSD, self.y0)

    @property
    def sort_key(self) -> tuple[dt.datetime, str]:
        return (self.created, self.id)


@dataclass(frozen=True, slots=True)
class _Draft:
    """A scene's random parameters before its footprint is projected (done in batches)."""

    index: int
    rng_state: random.Random
    epsg: int
    x0: float
    y0: float


class World:
    """All workspace records plus the mutations the control API offers (add/remove scenes)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.seed = config.seed
        self.org_id = stable_uuid(self.seed, "org")
        self.user_id = stable_uuid(self.seed, "user")
        self.bandsets = _bandsets(self.seed)
        self.projects = [self._project(p) for p in range(config.projects)]
        assigned = config.scenes - config.orphans
        item_count = min(max(2 * config.projects, math.ceil(assigned / 8)), assigned)
        self.order_items = [self._order_item(m) for m in range(item_count)]
        self.task_owner = {item["tasks"][0]["id"]: item for item in self.order_items}
        self.items_by_id = {item["id"]: item for item in self.order_items}
        self.projects_by_id = {p["id"]: p for p in self.projects}
        self.scenes: list[Scene] = []
        self.by_id: dict[str, Scene] = {}
        self._next_index = 0
        self._insert(self._make_scenes(range(config.scenes), assigned, item_count))
        if config.data_dir is not None:
            self._insert(self._user_scenes(config.data_dir))

    # -- projects and order items ----------------------------------------------------------------

    def _project(self, p: int) -> dict[str, Any]:
        slug, title = PROJECT_NAMES[p % len(PROJECT_NAMES)]
        if p >= len(PROJECT_NAMES):
            slug, title = f"{slug}-{p // len(PROJECT_NAMES) + 1}", f"{title} {p // 6 + 1}"
        created = _EPOCH - dt.timedelta(days=60 - p)
        return {
            "id": stable_uuid(self.seed, "project", p),
            "name": slug,
            "title": title,
            "org_id": self.org_id,
            "members_count": 1 + p % 5,
            "created_at": iso(created),
            "updated_at": iso(created + dt.timedelta(days=3)),
            "metadata": {"description": f"{title} imagery"},
        }

    def _order_item(self, m: int) -> dict[str, Any]:
        project = self.projects[m % len(self.projects)]
        item_id = stable_uuid(self.seed, "order_item", m)
        kind = "TASKING" if m % 2 == 0 else "ARCHIVE"
        created = _EPOCH + dt.timedelta(days=m % 300, hours=m % 24)
        start, end = created + dt.timedelta(days=2), created + dt.timedelta(days=32)
        usecase = USECASES[(m // len(self.projects) + m) % len(USECASES)]
        bandset = self.bandsets[m % len(self.bandsets)]
        audit = {
            "created_at": iso(created),
            "created_by": self.user_id,
            "updated_at": iso(created + dt.timedelta(days=1)),
            "updated_by": self.user_id,
        }
        task = {
            "id": stable_uuid(self.seed, "task", m),
            "order_item_id": item_id,
            "type": kind,
            "status": "FULFILLED",
            "start_date": start.strftime("%d-%m-%Y"),
            "end_date": end.strftime("%d-%m-%Y"),
            "number_of_strips": 1,
            "tokens_used": 100 + m % 50,
            "transaction_id": stable_uuid(self.seed, "txn", m),
            **audit,
        }
        # Task delivery_status is left out: the schema intersects two enums that share only FAILED.
        return {
            "id": item_id,
            "order_id": stable_uuid(self.seed, "order", m // 2),
            "org_id": self.org_id,
            "project_id": project["id"],
            "user_id": self.user_id,
            "name": f"{project['name']}-{usecase}-{m + 1:04d}",
            "type": kind,
            "status": "FULFILLED",
            "payment_status": "PAID",
            "area": 100,
            "bandset": {"bandset_id": bandset["id"], "bands": bandset["bands"]},
            "number_of_bands": len(bandset["bands"]),
            "image_type": "VNIR",
            "cloud_cover": 20,
            "off_nadir": 20,
            "delivery_speed": "STANDARD",
            "feasibility_status": "SUCCESS",
            "last_feasibility_check": iso(created),
            "start_date": start.strftime("%d-%m-%Y"),
            "end_date": end.strftime("%d-%m-%Y"),
            "recurrence": "ONCE",
            "no_of_occurrences": 1,
            "occurrences": [{"start": iso(start), "end": iso(end)}],
            "images": [],
            "usecase": usecase,
            "base_amount": 1000.0,
            "final_amount": 1000.0,
            "tokens_used": task["tokens_used"],
            "transaction_id": task["transaction_id"],
            "uplifts": [],
            "validation_errors": [],
            "tasks": [task],
            **audit,
        }

    # -- scenes -----------------------------------------------------------------------------------

    def _task_for(self, index: int, assigned: int, item_count: int) -> str:
        if index >= assigned or item_count == 0:
            return stable_uuid(self.seed, "orphan-task", index)
        return self.order_items[index * item_count // assigned]["tasks"][0]["id"]

    def _make_scenes(self, indices: Iterable[int], assigned: int, item_count: int) -> list[Scene]:
        drafts = [self._draft(i) for i in indices]
        by_epsg: dict[int, list[_Draft]] = {}
        for draft in drafts:
            by_epsg.setdefault(draft.epsg, []).append(draft)
        scenes: list[Scene] = []
        for epsg, group in by_epsg.items():
            corners = _project_corners(epsg, group, self.config.width, self.config.height)
            for draft, footprint in zip(group, corners, strict=True):
                task_id = self._task_for(draft.index, assigned, item_count)
                scenes.append(self._finish(draft, footprint, task_id))
        return scenes

    def _draft(self, index: int) -> _Draft:
        rng = random.Random(f"{self.seed}:scene:{index}")
        lon, lat = SITES[rng.randrange(len(SITES))]
        epsg = utm_epsg(lon, lat)
        east, north = _site_utm(epsg, lon, lat)
        x0 = round((east + rng.uniform(-15000, 15000)) / GSD) * GSD
        y0 = round((north + rng.uniform(-15000, 15000)) / GSD) * GSD
        return _Draft(index, rng, epsg, x0, y0)

    def _finish(
        self, draft: _Draft, footprint: tuple[tuple[float, float], ...], task_id: str
    ) -> Scene:
        rng = draft.rng_state
        captured = _EPOCH + dt.timedelta(
            days=rng.randrange(self.config.capture_days),
            hours=4 + rng.random() * 4,
            microseconds=rng.randrange(10**6),
        )
        created = captured + dt.timedelta(hours=36, minutes=rng.randrange(600))
        sat = 1 + rng.randrange(6)
        tail = f"{rng.randrange(1, 4):02d}{rng.randrange(10**6):06d}"
        item_id = f"FF{sat:02d}_{draft.index + 1:06d}_{captured:%Y%m%d}_L2A_{created:%Y%m%d}_{tail}"
        return Scene(
            index=draft.index,
            id=stable_uuid(self.seed, "catalog", draft.index),
            task_id=task_id,
            item_id=item_id,
            captured=captured,
            created=created,
            epsg=draft.epsg,
            x0=draft.x0,
            y0=draft.y0,
            width=self.config.width,
            height=self.config.height,
            bands=self.config.bands,
            footprint=footprint,
            cloud_cover=round(rng.uniform(0, 40), 2),
            off_nadir=round(rng.uniform(0, 20), 2),
            sun_azimuth=round(rng.uniform(90, 180), 2),
            sun_elevation=round(rng.uniform(30, 70), 2),
            relative_orbit=1 + rng.randrange(200),
            bandset_id=self.bandsets[draft.index % len(self.bandsets)]["id"],
        )

    def _user_scenes(self, data_dir: Path) -> list[Scene]:
        """Each ``*.tif`` in the data dir becomes a scene whose reflectance member is that file."""
        scenes = []
        for path in sorted(data_dir.glob("*.tif")):
            try:
                scenes.append(self._user_scene(path, self._next_index + len(scenes)))
            except (rasterio.errors.RasterioError, ValueError) as exc:
                log.warning("skipping %s: %s", path, exc)
        return scenes

    def _user_scene(self, path: Path, index: int) -> Scene:
        with rasterio.open(path) as src:
            epsg = src.crs.to_epsg() if src.crs else None
            if epsg is None:
                raise ValueError("needs a CRS with an EPSG code")
            width, height, bands, tr = src.width, src.height, src.count, src.transform
        xs = [tr.c, tr.c + width * tr.a, tr.c + width * tr.a, tr.c]
        ys = [tr.f, tr.f, tr.f + height * tr.e, tr.f + height * tr.e]
        lons, lats = warp_transform(f"EPSG:{epsg}", "EPSG:4326", xs, ys)
        ring = tuple((round(x, 7), round(y, 7)) for x, y in zip(lons, lats, strict=True))
        draft = _Draft(index, random.Random(f"{self.seed}:user:{path.name}"), epsg, tr.c, tr.f)
        scene = self._finish(draft, (*ring, ring[0]), self._runtime_task(index))
        scene.item_id = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem) or scene.id
        scene.id = stable_uuid(self.seed, "user-catalog", path.name)
        scene.width, scene.height, scene.bands, scene.source_tif = width, height, bands, path
        return scene

    def _runtime_task(self, index: int) -> str:
        if not self.order_items:
            return stable_uuid(self.seed, "orphan-task", index)
        return self.order_items[index % len(self.order_items)]["tasks"][0]["id"]

    def _insert(self, scenes: list[Scene]) -> None:
        self.scenes.extend(scenes)
        self.scenes.sort(key=lambda s: s.sort_key)  # timsort: cheap when appending sorted runs
        self.by_id.update((scene.id, scene) for scene in scenes)
        self._next_index = max([self._next_index, *(s.index + 1 for s in scenes)])

    def add_scenes(self, count: int, now: dt.datetime | None = None) -> list[Scene]:
        """New delivered scenes (created "now", so they sort last) joined to existing tasks."""
        start = self._next_index
        drafts = self._make_scenes(range(start, start + count), assigned=0, item_count=0)
        moment = now or dt.datetime.now(dt.UTC)
        for offset, scene in enumerate(sorted(drafts, key=lambda s: s.index)):
            scene.task_id = self._runtime_task(scene.index)
            scene.created = moment + dt.timedelta(microseconds=offset)
        self._insert(drafts)
        return sorted(drafts, key=lambda s: s.index)

    def remove_scene(self, catalog_id: str) -> Scene:
        scene = self.by_id.pop(catalog_id)  # KeyError for unknown ids, mapped to 404 by callers
        self.scenes.remove(scene)
        return scene

    # -- joins ------------------------------------------------------------------------------------

    def order_item_of(self, scene: Scene) -> dict[str, Any] | None:
        return self.task_owner.get(scene.task_id)

    def delivery_id(self, scene: Scene) -> str:
        return stable_uuid(self.seed, "delivery", scene.id)


def _bandsets(seed: int) -> list[dict[str, Any]]:
    names = (("Agriculture", (473, 560, 665, 705, 740, 783, 842, 865)), ("Water", (480, 560, 665)))
    return [
        {
            "id": stable_uuid(seed, "bandset", name),
            "name": name,
            "description": f"{name} bandset",
            "captures": 1,
            "bands": [{"name": f"B{i + 1:03d}", "wavelength": w} for i, w in enumerate(waves)],
        }
        for name, waves in names
    ]


_SITE_CACHE: dict[tuple[int, float, float], tuple[float, float]] = {}


def _site_utm(epsg: int, lon: float, lat: float) -> tuple[float, float]:
    key = (epsg, lon, lat)
    if key not in _SITE_CACHE:
        xs, ys = warp_transform("EPSG:4326", f"EPSG:{epsg}", [lon], [lat])
        _SITE_CACHE[key] = (xs[0], ys[0])
    return _SITE_CACHE[key]


def _project_corners(
    epsg: int, drafts: list[_Draft], width: int, height: int
) -> list[tuple[tuple[float, float], ...]]:
    """Lon/lat rings of each draft's UTM rectangle, projected in one call per zone."""
    x0 = np.array([d.x0 for d in drafts])
    y0 = np.array([d.y0 for d in drafts])
    w, h = width * GSD, height * GSD
    xs = np.stack([x0, x0 + w, x0 + w, x0], axis=1).ravel()
    ys = np.stack([y0, y0, y0 - h, y0 - h], axis=1).ravel()
    lons, lats = warp_transform(f"EPSG:{epsg}", "EPSG:4326", xs.tolist(), ys.tolist())
    rings = []
    for k in range(len(drafts)):
        ring = tuple((round(lons[4 * k + j], 7), round(lats[4 * k + j], 7)) for j in range(4))
        rings.append((*ring, ring[0]))
    return rings
