"""Per-scene package state: which delivery package backs a scene, and its member tree.

Looking inside a scene is the first moment a package is touched: it costs one download
resource (through the signed-URL resolver) and one or two range reads of the ZIP's central
directory. The result is kept in a bounded LRU, and concurrent first looks at one scene share
one load. A package that changed (new ETag) is dropped, so the next open sees the new version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio
from cachetools import LRUCache

from pixxelfs.fs.scene_files import PackageDir, build_scene_dir
from pixxelfs.remote.package import RemotePackage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedScene:
    package: RemotePackage
    root: PackageDir


class SceneStore:
    """Catalog id -> loaded package and member tree, bounded, with single-flight loading."""

    def __init__(self, open_package: Callable[[str], RemotePackage], *, max_scenes: int = 4096):
        self._open_package = open_package
        self._loaded: LRUCache[str, LoadedScene] = LRUCache(maxsize=max_scenes)
        self._locks: dict[str, trio.Lock] = {}

    async def load(self, catalog_id: str) -> LoadedScene:
        """The scene's package and tree, loading the ZIP directory on first use."""
        scene = self._loaded.get(catalog_id)
        if scene is not None:
            return scene
        lock = self._locks.setdefault(catalog_id, trio.Lock())
        try:
            async with lock:
                scene = self._loaded.get(catalog_id)
                if scene is None:
                    package = self._open_package(catalog_id)
                    index = await package.index()
                    scene = LoadedScene(package, build_scene_dir(index))
                    self._loaded[catalog_id] = scene
                    log.debug("scene %s: %d package members", catalog_id, len(index.members))
                return scene
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(catalog_id, None)

    def forget(self, catalog_id: str) -> None:
        """Drop a scene's package (it changed or vanished); the next look reloads it."""
        scene = self._loaded.pop(catalog_id, None)
        if scene is not None:
            scene.package.discard_saved_index()

    def __len__(self) -> int:
        return len(self._loaded)
