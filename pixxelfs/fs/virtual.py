"""Virtual entries: files and folders pixxelfs adds to the catalog tree beside the real ones.

The operations layer asks a :class:`VirtualEntries` provider what to add to each catalog
directory (root, project, use case, date) and to each scene directory. Views such as the STAC
catalog, ready-to-open composites or the ``.pixxelfs/`` control folder plug in here without
touching path resolution. Entries are :class:`MemoryFile` (bytes pixxelfs renders itself) and
:class:`PackageDir` (a folder of such entries); rendering must not do network I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from pixxelfs.catalog.tree import DirectoryNode, SceneNode
from pixxelfs.fs.scene_files import PackageDir, SceneEntry


class VirtualEntries(Protocol):
    """What to add to directories; names that the catalog already uses are ignored."""

    def in_directory(self, path: Sequence[str], node: DirectoryNode) -> Mapping[str, SceneEntry]:
        """Extra entries of the catalog directory at ``path`` (``()`` is the mount's root)."""
        ...

    def in_scene(self, scene: SceneNode, package: PackageDir) -> Mapping[str, SceneEntry]:
        """Extra entries of a scene directory, given its package members."""
        ...


class NoVirtualEntries:
    """The plain tree: nothing added."""

    def in_directory(self, path: Sequence[str], node: DirectoryNode) -> Mapping[str, SceneEntry]:
        return {}

    def in_scene(self, scene: SceneNode, package: PackageDir) -> Mapping[str, SceneEntry]:
        return {}


class CombinedVirtualEntries:
    """Several providers as one; on a name clash the earlier provider wins."""

    def __init__(self, providers: Sequence[VirtualEntries]):
        self.providers = tuple(providers)

    def in_directory(self, path: Sequence[str], node: DirectoryNode) -> Mapping[str, SceneEntry]:
        merged: dict[str, SceneEntry] = {}
        for provider in reversed(self.providers):
            merged.update(provider.in_directory(path, node))
        return merged

    def in_scene(self, scene: SceneNode, package: PackageDir) -> Mapping[str, SceneEntry]:
        merged: dict[str, SceneEntry] = {}
        for provider in reversed(self.providers):
            merged.update(provider.in_scene(scene, package))
        return merged
