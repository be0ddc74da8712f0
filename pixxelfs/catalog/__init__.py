"""The catalog tree: joins projects, order items and catalog entries into directories.

``names`` sanitises and de-duplicates directory names, ``tree`` builds immutable snapshots,
``xattrs`` renders a scene's extended attributes and ``service`` caches and refreshes snapshots.
"""

from __future__ import annotations

from pixxelfs.catalog.service import CatalogApi, CatalogService
from pixxelfs.catalog.tree import (
    UNASSIGNED,
    CatalogTree,
    DirectoryNode,
    Node,
    SceneNode,
    build_tree,
)
from pixxelfs.catalog.xattrs import scene_xattrs

__all__ = [
    "UNASSIGNED",
    "CatalogApi",
    "CatalogService",
    "CatalogTree",
    "DirectoryNode",
    "Node",
    "SceneNode",
    "build_tree",
    "scene_xattrs",
]
