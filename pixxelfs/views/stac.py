"""The STAC view: the mount is also a static, self-contained STAC catalog.

* ``catalog.json`` in every catalog directory (root, project, use case, date): a STAC Catalog
  whose ``child`` links point to sub-directories' ``catalog.json`` and whose ``item`` links
  point to scenes' ``item.json``, all relative. The root's catalog also has ``root``/``self``.
* ``item.json`` in every scene directory: the catalog entry's STAC item (``details``) with
  every asset ``href`` rewritten to the relative path of the package member it describes,
  plus ``root``/``parent`` links. Assets whose file is not in the package are dropped (an
  asset must have an ``href``, and one pointing outside the mount would need credentials).

Rendering needs no network: directory catalogs come from the tree snapshot, items from the
catalog entry and the member list of the (already loaded) package.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pixxelfs.catalog.tree import CatalogTree, DirectoryNode, SceneNode
from pixxelfs.fs.scene_files import PackageDir, SceneEntry
from pixxelfs.views import RenderMemo, json_file, member_for_href, relative_href

log = logging.getLogger(__name__)

CATALOG_NAME = "catalog.json"
ITEM_NAME = "item.json"
STAC_VERSION = "1.1.0"
ROOT_ID = "pixxel"
JSON_TYPE = "application/json"
GEOJSON_TYPE = "application/geo+json"
# Links that locate the item in *its* catalog; the mount's own hierarchy replaces them.
_HIERARCHY_RELS = frozenset({"self", "root", "parent", "child", "item"})
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _up(depth: int) -> str:
    """The relative href of the root catalog from a directory ``depth`` levels below it."""
    return "../" * depth + CATALOG_NAME if depth else "./" + CATALOG_NAME


def _link(rel: str, href: str, media_type: str = JSON_TYPE, title: str | None = None) -> dict:
    link = {"rel": rel, "href": href, "type": media_type}
    if title is not None:
        link["title"] = title
    return link


def render_catalog(path: Sequence[str], node: DirectoryNode) -> dict[str, Any]:
    """The STAC Catalog of the directory at ``path`` (``()`` is the root)."""
    links = [_link("root", _up(len(path)), title="Pixxel")]
    if path:
        links.append(_link("parent", "../" + CATALOG_NAME))
    else:
        links.append(_link("self", "./" + CATALOG_NAME))
    for name, child in node.children.items():
        if isinstance(child, DirectoryNode):
            links.append(_link("child", relative_href(name, CATALOG_NAME), title=name))
        else:
            links.append(_link("item", relative_href(name, ITEM_NAME), GEOJSON_TYPE, name))
    where = "/".join(path)
    return {
        "type": "Catalog",
        "stac_version": STAC_VERSION,
        "id": where or ROOT_ID,
        "title": node.name or "Pixxel",
        "description": f"Pixxel scenes in {where}/" if where else "Pixxel scenes of the workspace",
        "links": links,
    }


def _bare_item(scene: SceneNode) -> dict[str, Any]:
    """An item for an entry without ``details``: no geometry, the best time we know."""
    catalog = scene.catalog
    when = catalog.captured_at or catalog.created_at or catalog.updated_at or _EPOCH
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "id": scene.name,
        "geometry": None,
        "properties": {"datetime": when.isoformat().replace("+00:00", "Z")},
    }


def _assets(assets: object, package: PackageDir, scene: SceneNode) -> dict[str, Any]:
    """Assets with hrefs into the mount; those without a package member are dropped."""
    kept: dict[str, Any] = {}
    for key, asset in (assets or {}).items() if isinstance(assets, Mapping) else ():
        href = asset.get("href") if isinstance(asset, Mapping) else None
        path = member_for_href(href, package) if isinstance(href, str) else None
        if path is None:
            log.debug("scene %s: asset %s has no package member; left out", scene.name, key)
            continue
        kept[key] = {**asset, "href": relative_href(*path)}
    return kept


def render_item(
    scene: SceneNode, package: PackageDir, path: Sequence[str] | None
) -> dict[str, Any]:
    """The scene's STAC item with hrefs into the mount; ``path`` places it under the root."""
    details = scene.catalog.details
    item: dict[str, Any] = dict(details) if details is not None else _bare_item(scene)
    item["type"] = "Feature"
    item.setdefault("stac_version", STAC_VERSION)
    item.setdefault("id", scene.name)
    item.setdefault("geometry", None)
    if not isinstance(item.get("properties"), Mapping):
        item["properties"] = {}
    links = [
        link
        for link in item.get("links") or ()
        if isinstance(link, Mapping) and link.get("rel") not in _HIERARCHY_RELS
    ]
    if path is not None:
        links.append(_link("root", _up(len(path)), title="Pixxel"))
    links.append(_link("parent", "../" + CATALOG_NAME))
    item["links"] = links
    item["assets"] = _assets(item.get("assets"), package, scene)
    return item


class ScenePaths:
    """Where each scene sits in the current snapshot, rebuilt when the snapshot changes."""

    def __init__(self, current: Callable[[], CatalogTree | None]):
        self._current = current
        self._tree: CatalogTree | None = None
        self._paths: dict[str, tuple[str, ...]] = {}

    def __call__(self, scene: SceneNode) -> tuple[str, ...] | None:
        tree = self._current()
        if tree is not self._tree:
            self._tree = tree
            scenes = tree.scenes() if tree is not None else ()
            self._paths = {node.catalog.id: path for path, node in scenes}
        return self._paths.get(scene.catalog.id)


class StacView:
    """``catalog.json`` in catalog directories, ``item.json`` in scene directories."""

    def __init__(self, scene_paths: Callable[[SceneNode], tuple[str, ...] | None]):
        self._scene_paths = scene_paths
        self._items = RenderMemo()
        # One per catalog directory: a 10,000-scene catalog has ~4,500 of them, and a memo that
        # cannot hold them all re-renders every catalog.json on each `find`.
        self._catalogs = RenderMemo(maxsize=1 << 16)

    def in_directory(self, path: Sequence[str], node: DirectoryNode) -> Mapping[str, SceneEntry]:
        key = tuple(path)
        return self._catalogs.get(
            key, node, lambda: {CATALOG_NAME: json_file(render_catalog(key, node))}
        )

    def in_scene(self, scene: SceneNode, package: PackageDir) -> Mapping[str, SceneEntry]:
        path = self._scene_paths(scene)
        return self._items.get(
            (scene, path),
            package,
            lambda: {ITEM_NAME: json_file(render_item(scene, package, path))},
        )
