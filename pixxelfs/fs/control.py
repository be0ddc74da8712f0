"""The hidden control folder ``<mount>/.pixxelfs/``: files about the mount itself.

``stats.json`` holds the mount's statistics (:mod:`pixxelfs.stats`), rendered anew on every
open and served with ``direct_io``, so a reader never sees a size cached from an older
rendering. The folder's name starts with a dot (``ls`` shows it only with ``-a``) and a
project can never take it (the catalog tree reserves ``.pixxelfs*`` at the root).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pixxelfs.catalog.tree import DirectoryNode, SceneNode
from pixxelfs.fs.scene_files import MemoryFile, PackageDir, SceneEntry
from pixxelfs.stats import MountStats

CONTROL_DIR = ".pixxelfs"
STATS_FILE = "stats.json"


class ControlEntries:
    """A :class:`~pixxelfs.fs.virtual.VirtualEntries` provider for the root's control folder."""

    def __init__(self, stats: MountStats):
        self._stats = stats

    def in_directory(self, path: Sequence[str], node: DirectoryNode) -> Mapping[str, SceneEntry]:
        if path:
            return {}
        stats = MemoryFile(self._stats.render(), volatile=True)
        return {CONTROL_DIR: PackageDir({STATS_FILE: stats})}

    def in_scene(self, scene: SceneNode, package: PackageDir) -> Mapping[str, SceneEntry]:
        return {}
