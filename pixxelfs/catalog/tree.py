"""The catalog tree: an immutable snapshot joining projects, order items and catalog entries.

This module owns *where* each catalog entry appears in the mount. It is pure: no I/O, no clock,
and the result depends only on the *sets* of records given, never on their order, so the same
catalog always gives the same paths. Scene contents (``metadata.json``, package members) are
the fs layer's business; here a scene is a leaf.

Layout::

    <project>/<usecase>/<YYYY-MM-DD>/<scene>      placed entries
    _unassigned/<YYYY-MM-DD>/<scene>               entries whose project or usecase is unknown

* The join: catalog ``task_id`` -> the order item listing that task -> its ``project_id`` and
  ``usecase`` -> the project. A project dir is named by the project's ``name`` (slug), else its
  ``title``, else its id. Names are sanitised and de-duplicated by :mod:`.names`; ``_unassigned``
  and ``.pixxelfs*`` cannot be taken by a project (such a project gets a ``_`` prefix).
* The date dir is the UTC date of the STAC ``properties.datetime``, else of the entry's
  ``created_at``, else ``unknown-date``. The scene dir is the STAC item id, else the catalog id.
* Delivery filter: entries whose ``delivery_status`` says the delivery is pending or failed
  (``CREATED``, ``IN_PROGRESS``, ``PENDING``, ``FAILED``) are hidden (debug log). Delivered
  (``SUCCESS``/``SUCCESSFUL``), missing, ``UNSPECIFIED`` and unrecognised statuses are shown:
  the API only tracks automated delivery with this field, so absence proves nothing.
* Every project gets a directory, even one without deliveries, so that project names depend
  only on the project list.
* Duplicates: records with the same id are reduced to one (latest ``updated_at``, ties broken
  by content) with one warning per kind. Colliding names are settled by creation time, then id,
  so a newly delivered scene never renames an existing one.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from pixxelfs.api.models import Catalog, OrderItem, Project
from pixxelfs.catalog.names import Claim, assign_names

log = logging.getLogger(__name__)

UNASSIGNED = "_unassigned"
UNKNOWN_DATE = "unknown-date"
RESERVED_PREFIX = ".pixxelfs"
HIDDEN_STATUSES = frozenset({"CREATED", "IN_PROGRESS", "PENDING", "FAILED"})
MAX_WARNINGS_PER_BUILD = 20
"""A catalog with thousands of broken entries must not flood the log at every refresh."""


@dataclass(frozen=True)
class SceneNode:
    """One catalog entry shown as a directory; ``mtime`` is its ``updated_at`` or capture time."""

    name: str
    catalog: Catalog
    mtime: float


@dataclass(frozen=True)
class DirectoryNode:
    """A directory of the snapshot; ``mtime`` is the newest of its children's (0 when empty)."""

    name: str
    children: Mapping[str, Node]
    mtime: float


Node = DirectoryNode | SceneNode


class CatalogTree:
    """An immutable snapshot of the whole tree, with path lookup and scene iteration."""

    def __init__(self, root: DirectoryNode):
        self.root = root
        self.scene_count = sum(1 for _ in self.scenes())

    def lookup(self, path: Sequence[str]) -> Node | None:
        """The node at ``path`` (names from the root; empty = root), or None."""
        node: Node = self.root
        for name in path:
            if not isinstance(node, DirectoryNode):
                return None
            child = node.children.get(name)
            if child is None:
                return None
            node = child
        return node

    def nodes(self) -> Iterator[tuple[tuple[str, ...], Node]]:
        """Every node (the root first, as ``()``) with its path, in sorted path order."""
        stack: list[tuple[tuple[str, ...], Node]] = [((), self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            if isinstance(node, DirectoryNode):
                for name in sorted(node.children, reverse=True):
                    stack.append(((*path, name), node.children[name]))

    def scenes(self) -> Iterator[tuple[tuple[str, ...], SceneNode]]:
        """Every scene with its path, in sorted path order."""
        for path, node in self.nodes():
            if isinstance(node, SceneNode):
                yield path, node


# --- building ---------------------------------------------------------------------------------


class _WarningBudget:
    """Logs the first few warnings of a build, then one summary of how many were dropped."""

    def __init__(self, limit: int = MAX_WARNINGS_PER_BUILD):
        self.limit = limit
        self.count = 0

    def warn(self, message: str, *args: object) -> None:
        self.count += 1
        if self.count <= self.limit:
            log.warning(message, *args)

    def close(self) -> None:
        if self.count > self.limit:
            log.warning("catalog tree: %d more warnings suppressed", self.count - self.limit)


_Record = TypeVar("_Record", Project, OrderItem, Catalog)


def _time(record: Project | OrderItem | Catalog, field: str) -> float | None:
    """A record's ``created_at`` / ``updated_at`` as a POSIX timestamp, if it has one."""
    parsed = getattr(record, field)
    return parsed.timestamp() if parsed else None


def _recency_key(record: Project | OrderItem | Catalog) -> tuple[float, bytes]:
    """Ranks same-id records by ``updated_at``, ties by canonical content (never list order)."""
    updated = _time(record, "updated_at")
    return (-math.inf if updated is None else updated, record.canonical)


def _creation_rank(record: Project | Catalog) -> float:
    """Collision rank: older records keep their names; unknown creation time goes last."""
    created = _time(record, "created_at")
    return math.inf if created is None else created


def _dedupe(records: Iterable[_Record], kind: str, warnings: _WarningBudget) -> dict[str, _Record]:
    """One record per id (the latest), with a single warning naming how many were duplicated."""
    by_id: dict[str, list[_Record]] = defaultdict(list)
    for record in records:
        by_id[record.id].append(record)
    duplicated = sorted(rid for rid, group in by_id.items() if len(group) > 1)
    if duplicated:
        warnings.warn(
            "catalog tree: %d %s id(s) listed more than once (e.g. %s); keeping the latest",
            len(duplicated),
            kind,
            duplicated[0],
        )
    return {rid: max(group, key=_recency_key) for rid, group in by_id.items()}


def _project_wanted_name(project: Project) -> str:
    """The project's slug, else its title, else its id (blank strings do not count)."""
    for candidate in (project.raw.get("name"), project.title):
        if isinstance(candidate, str) and candidate.strip():
            return candidate
    return project.id


def _is_reserved_at_root(name: str) -> bool:
    return name == UNASSIGNED or name.startswith(RESERVED_PREFIX)


def _date_dir(catalog: Catalog) -> str:
    when = catalog.captured_at or catalog.created_at
    return when.strftime("%Y-%m-%d") if when else UNKNOWN_DATE


def _scene_mtime(catalog: Catalog) -> float:
    when = catalog.updated_at or catalog.captured_at
    return when.timestamp() if when else 0.0


def _is_hidden(catalog: Catalog) -> bool:
    return (catalog.delivery_status or "").strip().upper() in HIDDEN_STATUSES


@dataclass(frozen=True)
class _Placement:
    """The project and usecase an entry belongs to."""

    project_id: str
    usecase: str


class _Joiner:
    """Resolves catalog entries to (project, usecase) through the order items' tasks."""

    def __init__(
        self,
        projects: Mapping[str, Project],
        order_items: Mapping[str, OrderItem],
        warnings: _WarningBudget,
    ):
        self.projects = projects
        self.warnings = warnings
        self.item_by_task: dict[str, OrderItem] = {}
        # Sorted so that a task listed by two order items resolves the same way every time.
        for item_id in sorted(order_items):
            for task in order_items[item_id].tasks:
                self.item_by_task.setdefault(task.id, order_items[item_id])

    def place(self, catalog: Catalog) -> _Placement | None:
        """The entry's placement, or None (with a bounded warning) if it must go unassigned."""
        if not catalog.task_id:
            return self._unplaced(catalog, "no task_id")
        item = self.item_by_task.get(catalog.task_id)
        if item is None:
            return self._unplaced(catalog, f"no order item lists task {catalog.task_id}")
        if not item.project_id:
            return self._unplaced(catalog, f"order item {item.id} has no project_id")
        if item.project_id not in self.projects:
            return self._unplaced(catalog, f"project {item.project_id} not found")
        if not item.usecase or not item.usecase.strip():
            return self._unplaced(catalog, f"order item {item.id} has no usecase")
        return _Placement(item.project_id, item.usecase)

    def _unplaced(self, catalog: Catalog, reason: str) -> None:
        self.warnings.warn("catalog %s goes to %s/: %s", catalog.id, UNASSIGNED, reason)


def _directory(name: str, children: Mapping[str, Node], empty_mtime: float = 0.0) -> DirectoryNode:
    mtime = max((child.mtime for child in children.values()), default=empty_mtime)
    return DirectoryNode(name, MappingProxyType(dict(sorted(children.items()))), mtime)


def _scenes_dir(name: str, catalogs: Sequence[Catalog]) -> DirectoryNode:
    """A date directory: one scene per entry, named by STAC item id (else catalog id)."""
    names = assign_names(Claim(c.id, c.item_id or c.id, _creation_rank(c)) for c in catalogs)
    children = {names[c.id]: SceneNode(names[c.id], c, _scene_mtime(c)) for c in catalogs}
    return _directory(name, children)


def _dates_dir(name: str, catalogs: Iterable[Catalog]) -> DirectoryNode:
    """A usecase (or ``_unassigned``) directory: entries grouped by capture date."""
    by_date: dict[str, list[Catalog]] = defaultdict(list)
    for catalog in catalogs:
        by_date[_date_dir(catalog)].append(catalog)
    return _directory(name, {d: _scenes_dir(d, group) for d, group in by_date.items()})


def _usecases_dir(name: str, usecases: Mapping[str, list[Catalog]], mtime: float) -> DirectoryNode:
    """A project directory: one sub-directory per usecase string (sanitised, de-duplicated)."""
    names = assign_names(Claim(usecase, usecase) for usecase in usecases)
    children = {names[u]: _dates_dir(names[u], group) for u, group in usecases.items()}
    return _directory(name, children, empty_mtime=mtime)


def _root(
    projects: Mapping[str, Project],
    placed: Mapping[str, Mapping[str, list[Catalog]]],
    unassigned: list[Catalog],
) -> DirectoryNode:
    """Every project gets a directory, even an empty one, so project names do not depend on
    which projects happen to have deliveries."""
    names = assign_names(
        (Claim(p.id, _project_wanted_name(p), _creation_rank(p)) for p in projects.values()),
        is_reserved=_is_reserved_at_root,
    )
    children: dict[str, Node] = {
        names[pid]: _usecases_dir(names[pid], placed.get(pid, {}), _time(p, "updated_at") or 0.0)
        for pid, p in projects.items()
    }
    if unassigned:
        children[UNASSIGNED] = _dates_dir(UNASSIGNED, unassigned)
    return _directory("", children)


def build_tree(
    projects: Iterable[Project], order_items: Iterable[OrderItem], catalogs: Iterable[Catalog]
) -> CatalogTree:
    """Join the three listings into a snapshot; the result does not depend on their order."""
    warnings = _WarningBudget()
    project_map = _dedupe(projects, "project", warnings)
    joiner = _Joiner(project_map, _dedupe(order_items, "order item", warnings), warnings)
    catalog_map = _dedupe(catalogs, "catalog", warnings)
    placed: dict[str, dict[str, list[Catalog]]] = defaultdict(lambda: defaultdict(list))
    unassigned: list[Catalog] = []
    for catalog_id in sorted(catalog_map):
        catalog = catalog_map[catalog_id]
        if _is_hidden(catalog):
            log.debug("catalog %s hidden: delivery_status %s", catalog.id, catalog.delivery_status)
            continue
        where = joiner.place(catalog)
        if where is None:
            unassigned.append(catalog)
        else:
            placed[where.project_id][where.usecase].append(catalog)
    warnings.close()
    return CatalogTree(_root(project_map, placed, unassigned))
