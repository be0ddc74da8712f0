"""The catalog service: a cached, single-flight, failure-tolerant source of catalog trees.

This module owns *when* the tree is rebuilt. It fetches the three listings concurrently, builds a
:class:`~pixxelfs.catalog.tree.CatalogTree` and serves it until it is ``ttl`` seconds old.
Concurrent callers share one rebuild. When a rebuild fails with a :class:`PixxelfsError` and a
snapshot exists, the old snapshot keeps being served (a warning is logged) and the next rebuild
is attempted on the first access after ``failure_backoff`` seconds; with no snapshot yet the
error is raised. ``generation`` increases only when a rebuild changes what the mount shows, so
the fs layer can invalidate kernel caches exactly then. A saved snapshot can be served before
the first listing (:meth:`CatalogService.seed`), and ``on_listings`` receives the listings of
every rebuild that changed the tree, so they can be persisted. With ``share``, the listings are
fetched through a cache other mounts share (one mount pages through the API for all).

Cancellation: a rebuild runs in the task of the caller that started it. If that caller is
cancelled, waiting callers are woken without a result and one of them starts a new rebuild.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from pixxelfs.api.models import Catalog, OrderItem, Project
from pixxelfs.catalog.tree import CatalogTree, SceneNode, build_tree
from pixxelfs.errors import PixxelfsError

log = logging.getLogger(__name__)

DEFAULT_FAILURE_BACKOFF = 10.0
"""Seconds to keep serving an old snapshot after a failed rebuild before trying again."""

_T = TypeVar("_T")

OnListings = Callable[[list[Project], list[OrderItem], list[Catalog]], Awaitable[None]]
"""Called with the listings of every rebuild that changed the tree (to persist them)."""

Listings = tuple[list[Project], list[OrderItem], list[Catalog]]
ShareListings = Callable[[Callable[[], Awaitable[Listings]]], Awaitable[Listings]]
"""Fetches the listings through a cache other mounts share (``shared_cache.SharedListings``)."""


class CatalogApi(Protocol):
    """The listings the service needs; the API client implements them (pages >= 100)."""

    def iter_projects(self) -> AsyncIterator[Project]: ...

    def iter_order_items(self) -> AsyncIterator[OrderItem]: ...

    def iter_catalogs(self) -> AsyncIterator[Catalog]: ...


@dataclass
class _Flight:
    """One rebuild in progress; waiters read ``tree`` or ``error`` once ``done`` is set."""

    done: trio.Event = field(default_factory=trio.Event)
    tree: CatalogTree | None = None
    error: PixxelfsError | None = None


class CatalogService:
    """Serves catalog snapshots, rebuilding them at most once per ``ttl``."""

    def __init__(
        self,
        api: CatalogApi,
        *,
        ttl: float,
        clock: Callable[[], float] = trio.current_time,
        failure_backoff: float = DEFAULT_FAILURE_BACKOFF,
        on_listings: OnListings | None = None,
        share: ShareListings | None = None,
    ):
        self._api = api
        self._share = share
        self._on_listings = on_listings
        self._ttl = ttl
        self._clock = clock
        self._failure_backoff = failure_backoff
        self._tree: CatalogTree | None = None
        self._fresh_until = float("-inf")
        self._flight: _Flight | None = None
        self._signature: list[tuple[Any, ...]] | None = None
        self.builds = 0
        """Successful rebuilds."""
        self.api_failures = 0
        """Rebuilds that failed with a PixxelfsError."""
        self.generation = 0
        """Increases whenever a rebuild changes the visible tree."""

    def current(self) -> CatalogTree | None:
        """The latest snapshot, however old, without touching the API."""
        return self._tree

    async def tree(self) -> CatalogTree:
        """The snapshot, rebuilt first if it is older than ``ttl`` (or after a back-off)."""
        if self._tree is not None and self._clock() < self._fresh_until:
            return self._tree
        return await self._shared_rebuild()

    def seed(self, tree: CatalogTree, *, fresh_for: float) -> None:
        """Serve ``tree`` (a saved snapshot) without asking the API for ``fresh_for`` seconds."""
        self._tree = tree
        self._signature = _signature(tree)
        self._fresh_until = self._clock() + fresh_for
        self.generation += 1

    async def refresh(self) -> CatalogTree:
        """Rebuild now regardless of age (joining a rebuild already in progress)."""
        return await self._shared_rebuild()

    async def _shared_rebuild(self) -> CatalogTree:
        while True:
            flight = self._flight
            if flight is None:
                return await self._lead_rebuild()
            await flight.done.wait()
            if flight.tree is not None:
                return flight.tree
            if flight.error is not None:
                raise flight.error
            # The leader was cancelled: go round, and maybe lead the next attempt.

    async def _lead_rebuild(self) -> CatalogTree:
        flight = self._flight = _Flight()
        try:
            flight.tree = await self._rebuild()
            return flight.tree
        except PixxelfsError as exc:
            flight.error = exc
            raise
        finally:
            self._flight = None
            flight.done.set()

    async def _rebuild(self) -> CatalogTree:
        started = self._clock()
        try:
            if self._share is None:
                projects, order_items, catalogs = await self._fetch_listings()
            else:
                projects, order_items, catalogs = await self._share(self._fetch_listings)
        except PixxelfsError as exc:
            self.api_failures += 1
            if self._tree is None:
                raise
            log.warning("catalog refresh failed, serving the previous snapshot: %s", exc)
            self._fresh_until = self._clock() + self._failure_backoff
            return self._tree
        tree = await trio.to_thread.run_sync(build_tree, projects, order_items, catalogs)
        generation = self.generation
        self._install(tree, started)
        if self._on_listings is not None and self.generation != generation:
            await self._on_listings(projects, order_items, catalogs)
        return tree

    def _install(self, tree: CatalogTree, fetched_at: float) -> None:
        signature = _signature(tree)
        if signature != self._signature:
            self.generation += 1
            self._signature = signature
        self._tree = tree
        self._fresh_until = fetched_at + self._ttl
        self.builds += 1
        log.debug("catalog tree %d built: %d scenes", self.generation, tree.scene_count)

    async def _fetch_listings(self) -> Listings:
        """The three listings, fetched concurrently; the first PixxelfsError is raised bare."""
        projects: list[Project] = []
        order_items: list[OrderItem] = []
        catalogs: list[Catalog] = []
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_collect, self._api.iter_projects(), projects)
                nursery.start_soon(_collect, self._api.iter_order_items(), order_items)
                nursery.start_soon(_collect, self._api.iter_catalogs(), catalogs)
        except BaseExceptionGroup as group:
            matched, rest = group.split(PixxelfsError)
            if matched is None or rest is not None:
                raise
            raise _first_leaf(matched) from group
        return projects, order_items, catalogs


async def _collect(source: AsyncIterator[_T], into: list[_T]) -> None:
    async for item in source:
        into.append(item)


def _first_leaf(group: BaseExceptionGroup[PixxelfsError]) -> PixxelfsError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _signature(tree: CatalogTree) -> list[tuple[Any, ...]]:
    """What the mount shows: every path and mtime, and each scene's raw entry (metadata.json)."""
    return [
        (path, node.mtime, node.catalog.raw_json if isinstance(node, SceneNode) else None)
        for path, node in tree.nodes()
    ]
