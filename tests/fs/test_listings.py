"""Directory listings: built once per directory, rebuilt when the catalog or a package changes.

``opendir`` answers from a listing kept per directory inode; these pin down that it is reused
(the cost a warm ``find`` relies on) and that it never outlives the tree or package it came
from (what a refresh or a replaced package must show).
"""

from __future__ import annotations

import os
import stat

import pyfuse3

from pixxelfs.fs.operations import DirEntries, PixxelOperations
from pixxelfs.mount import open_operations
from tests.fs.test_operations import _config, _lookup_path, _scene_path, emu  # noqa: F401


async def _entries(ops: PixxelOperations, inode: int) -> DirEntries:
    """What ``readdir`` would answer for the directory (it needs a kernel token itself)."""
    fh = await ops.opendir(inode, None)
    try:
        return ops._dirs[fh]
    finally:
        await ops.releasedir(fh)


async def _scene_paths(ops: PixxelOperations) -> set[tuple[str, ...]]:
    """Every scene directory reached by listing catalog directories from the root."""
    found: set[tuple[str, ...]] = set()
    pending: list[tuple[int, tuple[str, ...]]] = [(pyfuse3.ROOT_INODE, ())]
    while pending:
        inode, path = pending.pop()
        for name, attrs in await _entries(ops, inode):
            child = (*path, os.fsdecode(name))
            if not stat.S_ISDIR(attrs.st_mode) or child[0] == ".pixxelfs":
                continue
            if b"user.pixxel.catalog_id" in await ops.listxattr(attrs.st_ino, None):
                found.add(child)
            else:
                pending.append((attrs.st_ino, child))
    return found


async def test_a_listing_is_reused_until_the_catalog_changes(emu) -> None:  # noqa: F811
    async with open_operations(_config(emu)) as ops:
        tree = await ops.catalog.tree()
        assert await _scene_paths(ops) == {path for path, _scene in tree.scenes()}
        root = await _entries(ops, pyfuse3.ROOT_INODE)
        assert await _entries(ops, pyfuse3.ROOT_INODE) is root

        (added,) = emu.add_scenes(1)
        removed_path, removed = next(iter(tree.scenes()))
        emu.remove_scene(removed.catalog.id)
        tree = await ops.catalog.refresh()

        paths = await _scene_paths(ops)
        assert paths == {path for path, _scene in tree.scenes()}
        assert removed_path not in paths
        assert added in {scene.catalog.id for _path, scene in tree.scenes()}


async def test_a_scene_listing_is_rebuilt_for_a_replaced_package(emu) -> None:  # noqa: F811
    async with open_operations(_config(emu)) as ops:
        path = await _scene_path(ops)
        scene = await _lookup_path(ops, *path)
        before = await _entries(ops, scene)
        assert await _entries(ops, scene) is before
        catalog_id = os.fsdecode(await ops.getxattr(scene, b"user.pixxel.catalog_id", None))

        emu.replace_package(catalog_id)
        ops.scenes.forget(catalog_id)  # what a read that meets the new ETag does
        after = await _entries(ops, scene)

        assert after is not before
        assert [name for name, _attrs in after] == [name for name, _attrs in before]
