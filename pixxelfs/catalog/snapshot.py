"""The persisted catalog snapshot: the last listings seen, so a remount shows the tree at once.

This module owns the file ``<account cache dir>/catalog.json``: the raw projects, order items
and catalog entries of the last successful listing (the tree is rebuilt from them with
:func:`~pixxelfs.catalog.tree.build_tree`, so names and paths are exactly those of a fresh
listing). It is written atomically whenever a refresh changes what the mount shows. It also
fingerprints catalog entries, so other saved state (package indexes) can be tied to the entry
version it was made for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from pixxelfs.api.models import Catalog, OrderItem, Project
from pixxelfs.catalog.service import Listings
from pixxelfs.catalog.tree import CatalogTree, build_tree
from pixxelfs.remote.disk_cache import write_atomically

log = logging.getLogger(__name__)

SNAPSHOT_NAME = "catalog.json"
FORMAT = 1


@dataclass(frozen=True)
class Snapshot:
    """A saved listing and when it was saved (epoch seconds)."""

    tree: CatalogTree
    saved_at: float


class SnapshotStore:
    """Load and save the catalog snapshot of one account (file I/O in worker threads)."""

    def __init__(self, path: Path):
        self.path = path

    async def load(self) -> Snapshot | None:
        """The saved snapshot, or None if there is none or it cannot be read."""
        return await trio.to_thread.run_sync(self._load)

    async def save(
        self, projects: list[Project], order_items: list[OrderItem], catalogs: list[Catalog]
    ) -> None:
        """Replace the snapshot; a failure is logged (the mount works without it)."""
        listings = listings_json(projects, order_items, catalogs)
        body = {"format": FORMAT, "saved_at": time.time(), **listings}
        try:
            await trio.to_thread.run_sync(_dump, self.path, body)
        except (OSError, TypeError, ValueError) as exc:
            log.warning("cannot save the catalog snapshot %s: %s", self.path, exc)

    def _load(self) -> Snapshot | None:
        try:
            body = json.loads(self.path.read_bytes())
            if body.get("format") != FORMAT:
                return None
            tree = build_tree(*listings_of(body))
            saved_at = float(body["saved_at"])
        except FileNotFoundError:
            return None
        except Exception as exc:  # a damaged or foreign file must not stop the mount
            log.warning("ignoring the unreadable catalog snapshot %s: %s", self.path, exc)
            return None
        return Snapshot(tree, saved_at)


def listings_json(
    projects: list[Project], order_items: list[OrderItem], catalogs: list[Catalog]
) -> dict[str, Any]:
    """The raw API answers of the three listings (no key, no signed URL: they are not in them)."""
    return {
        "projects": [p.raw for p in projects],
        "order_items": [o.raw for o in order_items],
        "catalogs": [c.raw for c in catalogs],
    }


def listings_of(body: dict[str, Any]) -> Listings:
    """The listings saved by :func:`listings_json` (raises on a damaged body)."""
    return (
        [Project.from_json(p) for p in body["projects"]],
        [OrderItem.from_json(o) for o in body["order_items"]],
        [Catalog.from_json(c) for c in body["catalogs"]],
    )


def _dump(path: Path, body: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(body).encode())  # ASCII: lone surrogates survive


def age_of(path: Path) -> float | None:
    """Seconds since the snapshot file was written, or None without one."""
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return None


def entry_version(catalog: Catalog) -> str:
    """A fingerprint of a catalog entry: it changes whenever the API's answer for it does."""
    text = json.dumps(catalog.raw, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


class EntryVersions:
    """Catalog id -> :func:`entry_version` of its entry in the current tree."""

    def __init__(self, current: Callable[[], CatalogTree | None]):
        self._current = current
        self._tree: CatalogTree | None = None
        self._entries: dict[str, Catalog] = {}

    def __call__(self, catalog_id: str) -> str | None:
        tree = self._current()
        if tree is not self._tree:
            self._tree = tree
            scenes = tree.scenes() if tree is not None else ()
            self._entries = {scene.catalog.id: scene.catalog for _path, scene in scenes}
        entry = self._entries.get(catalog_id)
        return None if entry is None else entry_version(entry)
