"""Typed views of the Pixxel API's JSON answers.

Parsing is tolerant where the documentation is (unknown enum values, missing optional fields,
``details: null``) and strict where a wrong value would put a file in the wrong place or serve
wrong bytes (ids must be non-empty strings). Every model keeps the ``raw`` JSON object it came
from, so ``metadata.json`` can show the catalog entry exactly as the API returned it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pixxelfs.errors import MalformedResponseError

JsonObject = Mapping[str, Any]

# The catalog schema's DeliveryStatus enum says SUCCESS; the docs' examples say SUCCESSFUL.
DELIVERED_STATUSES = frozenset({"SUCCESS", "SUCCESSFUL"})


def require_object(value: Any, what: str) -> JsonObject:
    """Return ``value`` if it is a JSON object, else raise MalformedResponseError."""
    if not isinstance(value, Mapping):
        raise MalformedResponseError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def require_id(obj: JsonObject, key: str, what: str) -> str:
    """A non-empty string id; anything else makes the record unusable."""
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MalformedResponseError(f"{what}: field {key!r} must be a non-empty string")
    return value


def optional_str(obj: JsonObject, key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def optional_number(obj: JsonObject, key: str) -> float | None:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_timestamp(value: Any) -> dt.datetime | None:
    """RFC 3339 (with ``Z`` or an offset) to an aware UTC datetime; None if unparseable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.astimezone(dt.UTC)


def _canonical(obj: JsonObject) -> bytes:
    return json.dumps(obj, sort_keys=True, default=str).encode()


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    title: str | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    raw: JsonObject = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, value: Any) -> Project:
        obj = require_object(value, "project")
        pid = require_id(obj, "id", "project")
        return cls(
            id=pid,
            name=optional_str(obj, "name") or pid,
            title=optional_str(obj, "title"),
            created_at=parse_timestamp(obj.get("created_at")),
            updated_at=parse_timestamp(obj.get("updated_at")),
            raw=obj,
        )

    @property
    def canonical(self) -> bytes:
        """Content for deterministic tie-breaks between duplicate records."""
        return _canonical(self.raw)


@dataclass(frozen=True)
class Task:
    id: str
    order_item_id: str | None
    status: str | None
    delivery_status: str | None

    @classmethod
    def from_json(cls, value: Any) -> Task:
        obj = require_object(value, "task")
        return cls(
            id=require_id(obj, "id", "task"),
            order_item_id=optional_str(obj, "order_item_id"),
            status=optional_str(obj, "status"),
            delivery_status=optional_str(obj, "delivery_status"),
        )


@dataclass(frozen=True)
class OrderItem:
    id: str
    project_id: str | None
    usecase: str | None
    name: str | None
    tasks: tuple[Task, ...]
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    raw: JsonObject = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, value: Any) -> OrderItem:
        obj = require_object(value, "order item")
        tasks_raw = obj.get("tasks")
        tasks: list[Task] = []
        if isinstance(tasks_raw, list):
            for item in tasks_raw:
                try:
                    tasks.append(Task.from_json(item))
                except MalformedResponseError:
                    continue  # a broken task only loses its own scenes' placement
        return cls(
            id=require_id(obj, "id", "order item"),
            project_id=optional_str(obj, "project_id"),
            usecase=optional_str(obj, "usecase"),
            name=optional_str(obj, "name"),
            tasks=tuple(tasks),
            created_at=parse_timestamp(obj.get("created_at")),
            updated_at=parse_timestamp(obj.get("updated_at")),
            raw=obj,
        )

    @property
    def canonical(self) -> bytes:
        """Content for deterministic tie-breaks between duplicate records."""
        return _canonical(self.raw)


def _compact_json(obj: JsonObject) -> bytes:
    """Compact JSON (ASCII escapes keep lone surrogates representable); key order kept."""
    return json.dumps(obj, separators=(",", ":")).encode("ascii")


@dataclass(frozen=True)
class Catalog:
    """One catalog entry: a delivered scene. ``details`` is its STAC item (may be missing).

    The entry is kept as compact JSON bytes (``raw_json``), not as Python dicts: a STAC item
    with its band list costs ~4 KB that way instead of ~14 KB, which is most of a mount's
    memory for a large catalog. The fields the tree needs are parsed once; ``raw``,
    ``details`` and ``properties`` parse on demand.
    """

    id: str
    task_id: str | None
    delivery_status: str | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    item_id: str | None
    collection: str | None
    captured_at: dt.datetime | None
    raw_json: bytes = field(repr=False)

    @classmethod
    def from_json(cls, value: Any) -> Catalog:
        obj = require_object(value, "catalog")
        details = obj.get("details")
        details = details if isinstance(details, Mapping) else {}
        props = details.get("properties")
        props = props if isinstance(props, Mapping) else {}
        item_id = details.get("id")
        return cls(
            id=require_id(obj, "id", "catalog"),
            task_id=optional_str(obj, "task_id"),
            delivery_status=optional_str(obj, "delivery_status"),
            created_at=parse_timestamp(obj.get("created_at")),
            updated_at=parse_timestamp(obj.get("updated_at")),
            item_id=item_id if isinstance(item_id, str) and item_id.strip() else None,
            collection=optional_str(details, "collection"),
            captured_at=parse_timestamp(props.get("datetime")),
            raw_json=_compact_json(obj),
        )

    @property
    def raw(self) -> JsonObject:
        """The entry exactly as the API returned it (a fresh copy on each call)."""
        return json.loads(self.raw_json)

    @property
    def details(self) -> JsonObject | None:
        details = self.raw.get("details")
        return details if isinstance(details, Mapping) else None

    @property
    def properties(self) -> JsonObject:
        props = self.details.get("properties") if self.details else None
        return props if isinstance(props, Mapping) else {}

    @property
    def canonical(self) -> bytes:
        """Content for deterministic tie-breaks between duplicate records."""
        return self.raw_json

    @property
    def is_delivered(self) -> bool:
        return (self.delivery_status or "").upper() in DELIVERED_STATUSES


@dataclass(frozen=True)
class Pagination:
    limit: int
    offset: int
    total: int | None

    @classmethod
    def from_json(cls, value: Any, *, asked_limit: int, asked_offset: int) -> Pagination:
        obj = value if isinstance(value, Mapping) else {}
        total = obj.get("total")
        usable_total = total if isinstance(total, int) and not isinstance(total, bool) else None
        if usable_total is not None and usable_total < 0:
            usable_total = None
        return cls(limit=asked_limit, offset=asked_offset, total=usable_total)


DOWNLOAD_STATUSES = frozenset({"created", "in_progress", "success", "failed"})


@dataclass(frozen=True)
class DownloadResource:
    """A download resource; ``signed_url`` is only meaningful once ``status == 'success'``."""

    id: str
    status: str
    signed_url: str | None

    @classmethod
    def from_json(cls, value: Any) -> DownloadResource:
        obj = require_object(value, "download resource")
        status = (optional_str(obj, "status") or "").lower()
        return cls(
            id=require_id(obj, "id", "download resource"),
            status=status,
            signed_url=optional_str(obj, "signed_url") or None,
        )

    @property
    def is_ready(self) -> bool:
        return self.status == "success" and bool(self.signed_url)

    @property
    def has_failed(self) -> bool:
        return self.status == "failed"
