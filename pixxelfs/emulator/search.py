"""``POST /v0/catalogs/search``: parse the ``clerk.originalCatalogFilter`` body and apply it.

Parsing is strict (wrong types give a 400 envelope, never a 500); matching is a linear scan over
compact scene records in their stable default order (``created_at``, then ``id``), which keeps a
page of 100 out of 10,000 entries in the low milliseconds. STAC properties are only built when a
``query`` or ``sort_by`` needs them.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pixxelfs.emulator.stac import properties
from pixxelfs.emulator.state import bad_request
from pixxelfs.emulator.world import Scene, World, iso

DEFAULT_LIMIT = 2  # the spec's default, odd as it is
COLLECTION = "pixxel-ff-l2a"
_LIST_FIELDS = ("ids", "item_ids", "order_ids", "order_item_ids", "collections")
_KNOWN = {*_LIST_FIELDS, "datetime", "bbox", "intersects", "query", "sort_by", "limit", "offset"}
_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
    "in": lambda value, options: value in options,
}
_ALIASES = {"cloudcover": "eo:cloud_cover", "cloud_cover": "eo:cloud_cover"}
_PG_PATH = re.compile(r"^properties\s*->>?\s*'([^']+)'$")

Box = tuple[float, float, float, float]


@dataclass
class SearchRequest:
    lists: dict[str, set[str]] = field(default_factory=dict)
    interval: tuple[dt.datetime | None, dt.datetime | None] | None = None
    instant: dt.datetime | None = None
    boxes: list[Box] = field(default_factory=list)
    query: list[tuple[str, str, Any]] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)
    limit: int = DEFAULT_LIMIT
    offset: int = 0


def parse(body: Any) -> SearchRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    unknown = set(body) - _KNOWN
    if unknown:
        raise bad_request(f"unknown search fields: {sorted(unknown)}")
    req = SearchRequest()
    for name in _LIST_FIELDS:
        if body.get(name) is not None:
            req.lists[name] = set(_string_list(body[name], name))
    if body.get("datetime") is not None:
        _parse_datetime(body["datetime"], req)
    if body.get("bbox") is not None:
        req.boxes.extend(_parse_bbox(body["bbox"]))
    if body.get("intersects") is not None:
        req.boxes.append(_geometry_box(body["intersects"]))
    if body.get("query") is not None:
        req.query = _parse_query(body["query"])
    if body.get("sort_by") is not None:
        req.sort = _parse_sort(body["sort_by"])
    req.limit = _non_negative_int(body.get("limit", DEFAULT_LIMIT), "limit")
    req.offset = _non_negative_int(body.get("offset", 0), "offset")
    return req


def run(world: World, req: SearchRequest) -> tuple[list[Scene], int]:
    """The requested page and the total number of matches."""
    matches = [s for s in world.scenes if _matches(world, s, req)]
    for name, descending in reversed(req.sort):  # stable sorts, least significant key first
        present = [s for s in matches if field_value(world, s, name) is not None]
        missing = [s for s in matches if field_value(world, s, name) is None]
        present.sort(key=lambda s, n=name: field_value(world, s, n), reverse=descending)
        matches = present + missing
    return matches[req.offset : req.offset + req.limit], len(matches)


# -- parsing --------------------------------------------------------------------------------------


def _string_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{name} must be an array of strings")
    return value


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise bad_request(f"{name} must be a non-negative integer")
    return value


def _parse_instant(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(f"not an RFC 3339 timestamp: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _parse_datetime(value: Any, req: SearchRequest) -> None:
    if not isinstance(value, str) or not value:
        raise bad_request("datetime must be an RFC 3339 instant or interval string")
    if "/" not in value:
        req.instant = _parse_instant(value)
        return
    start, _, end = value.partition("/")
    lo = None if start in ("", "..") else _parse_instant(start)
    hi = None if end in ("", "..") else _parse_instant(end)
    if lo is None and hi is None:
        raise bad_request("a datetime interval needs at least one closed end")
    req.interval = (lo, hi)


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, bool):
        raise bad_request("coordinates must be numbers")
    if isinstance(value, int | float):
        yield float(value)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    else:
        raise bad_request("coordinates must be numbers")


def _parse_bbox(value: Any) -> list[Box]:
    """[west, south, east, north]; an antimeridian box (west > east) becomes two boxes."""
    if not isinstance(value, list) or len(value) not in (4, 6):
        raise bad_request("bbox must be an array of 4 (or 6) numbers")
    nums = list(_numbers(value))
    west, south, east, north = (nums[0], nums[1], nums[3], nums[4]) if len(nums) == 6 else nums
    if south > north:
        raise bad_request("bbox south must not exceed north")
    if west > east:
        return [(west, south, 180.0, north), (-180.0, south, east, north)]
    return [(west, south, east, north)]


def _geometry_box(value: Any) -> Box:
    """``intersects`` is matched by the geometry's bounding box, which is enough for an emulator."""
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise bad_request("intersects must be a GeoJSON geometry object")
    coords = list(_numbers(value.get("coordinates")))
    if len(coords) < 2 or len(coords) % 2:
        raise bad_request("intersects has no usable coordinates")
    xs, ys = coords[0::2], coords[1::2]
    return (min(xs), min(ys), max(xs), max(ys))


def _parse_query(value: Any) -> list[tuple[str, str, Any]]:
    if not isinstance(value, dict):
        raise bad_request("query must be an object mapping property names to conditions")
    conditions = []
    for name, spec in value.items():
        if not isinstance(spec, dict):
            conditions.append((name, "eq", spec))  # the guide's plain-value form
            continue
        for op, operand in spec.items():
            if op not in _OPERATORS:
                raise bad_request(f"unknown query operator {op!r}", {"allowed": sorted(_OPERATORS)})
            if op == "in" and not isinstance(operand, list):
                raise bad_request("the 'in' operator needs an array")
            conditions.append((name, op, operand))
    return conditions


def _parse_sort(value: Any) -> list[tuple[str, bool]]:
    """Accept the schema's ``[{"field": "ASC"}]`` and the guide's ``{"field", "direction"}``."""
    items = value if isinstance(value, list) else [value]
    result = []
    for item in items:
        if not isinstance(item, dict) or not item:
            raise bad_request("sort_by entries must be objects")
        pairs = [(item["field"], item.get("direction", "asc"))] if "field" in item else item.items()
        for name, direction in pairs:
            if not isinstance(name, str) or not isinstance(direction, str):
                raise bad_request("sort_by field and direction must be strings")
            if direction.upper() not in ("ASC", "DESC"):
                raise bad_request(f"sort direction must be ASC or DESC, not {direction!r}")
            result.append((name, direction.upper() == "DESC"))
    return result


# -- matching -------------------------------------------------------------------------------------


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _matches(world: World, scene: Scene, req: SearchRequest) -> bool:
    lists = req.lists
    if "ids" in lists and scene.id not in lists["ids"]:
        return False
    if "item_ids" in lists and scene.item_id not in lists["item_ids"]:
        return False
    if "collections" in lists and COLLECTION not in lists["collections"]:
        return False
    if "order_item_ids" in lists or "order_ids" in lists:
        item = world.order_item_of(scene) or {}
        if "order_item_ids" in lists and item.get("id") not in lists["order_item_ids"]:
            return False
        if "order_ids" in lists and item.get("order_id") not in lists["order_ids"]:
            return False
    if req.instant is not None and scene.captured != req.instant:
        return False
    if req.interval is not None and not _in_interval(scene.captured, req.interval):
        return False
    if req.boxes and not any(_overlaps(scene.bbox, box) for box in req.boxes):
        return False
    return all(_condition(world, scene, c) for c in req.query)


def _in_interval(moment: dt.datetime, interval: tuple[dt.datetime | None, ...]) -> bool:
    lo, hi = interval
    return (lo is None or moment >= lo) and (hi is None or moment <= hi)


def _condition(world: World, scene: Scene, condition: tuple[str, str, Any]) -> bool:
    name, op, operand = condition
    value = field_value(world, scene, name)
    if value is None:
        return op == "neq" and operand is not None
    try:
        return bool(_OPERATORS[op](value, operand))
    except TypeError:
        return False  # comparing a string with a number matches nothing


def field_value(world: World, scene: Scene, name: str) -> Any:
    """A catalog-level field, an order-item join (project_id, usecase...) or a STAC property."""
    match = _PG_PATH.match(name)
    key = match.group(1) if match else name
    for prefix in ("details.properties.", "properties."):
        key = key.removeprefix(prefix)
    key = _ALIASES.get(key, key)
    direct: dict[str, Callable[[], Any]] = {
        "id": lambda: scene.id,
        "item_id": lambda: scene.item_id,
        "task_id": lambda: scene.task_id,
        "bandset_id": lambda: scene.bandset_id,
        "created_at": lambda: iso(scene.created),
        "updated_at": lambda: iso(scene.created),
        "delivery_status": lambda: "SUCCESS",
        "collection": lambda: COLLECTION,
    }
    if key in direct:
        return direct[key]()
    if key in ("project_id", "usecase", "order_id", "order_item_id"):
        item = world.order_item_of(scene) or {}
        return item.get("id" if key == "order_item_id" else key)
    return properties(scene).get(key)
