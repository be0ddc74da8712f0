"""Helpers shared by the reliability tests: operations against an emulator, files, log checks."""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import pytest

from pixxelfs.config import MountConfig
from pixxelfs.emulator import Emulator
from pixxelfs.fs.operations import PixxelOperations
from pixxelfs.mount import open_operations


@asynccontextmanager
async def operations(emulator: Emulator, **overrides) -> AsyncIterator[PixxelOperations]:
    """The whole read stack of a mount against ``emulator``, without a kernel."""
    config = MountConfig(
        mountpoint=Path("/nonexistent"),
        api_url=emulator.base_url,
        api_key=emulator.api_key,
        **overrides,
    )
    async with open_operations(config) as ops:
        yield ops


@dataclass(frozen=True)
class SceneFile:
    """One package member of one scene, as the mount shows it, with its expected bytes."""

    catalog_id: str
    scene: tuple[str, ...]
    member: str
    data: bytes

    @property
    def path(self) -> tuple[str, ...]:
        return (*self.scene, *self.member.split("/"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


async def package_members(emulator: Emulator, catalog_id: str) -> dict[str, bytes]:
    """Every member of the scene's current package (an emulator serving in this trio loop)."""
    with zipfile.ZipFile(await emulator.apackage_path(catalog_id)) as package:
        return {info.filename: package.read(info) for info in package.infolist()}


async def scene_files(
    ops: PixxelOperations, emulator: Emulator, suffix: str = "_L2A_SR.tif"
) -> list[SceneFile]:
    """The member ending in ``suffix`` of every scene, in path order."""
    found = []
    for path, node in (await ops.catalog.tree()).scenes():
        members = await package_members(emulator, node.catalog.id)
        name = next(n for n in sorted(members) if n.endswith(suffix))
        found.append(SceneFile(node.catalog.id, path, name, members[name]))
    return found


async def lookup(ops: PixxelOperations, path: tuple[str, ...]) -> int:
    inode = pyfuse3.ROOT_INODE
    for name in path:
        inode = (await ops.lookup(inode, os.fsencode(name), None)).st_ino
    return inode


async def read_file(ops: PixxelOperations, path: tuple[str, ...], chunk: int = 1 << 20) -> bytes:
    """Open, read to the end in ``chunk``-sized reads, release."""
    inode = await lookup(ops, path)
    info = await ops.open(inode, os.O_RDONLY, None)
    parts = []
    try:
        while True:
            data = await ops.read(info.fh, sum(map(len, parts)), chunk)
            if not data:
                return b"".join(parts)
            parts.append(data)
    finally:
        await ops.release(info.fh)


def fs_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warning lines the fs layer logged (one per failed operation)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "pixxelfs.fs.operations" and r.levelno >= logging.WARNING
    ]


def assert_logged(caplog: pytest.LogCaptureFixture, *parts: str) -> str:
    """One fs warning names every one of ``parts`` (scene, file, cause, errno)."""
    lines = fs_warnings(caplog)
    for line in lines:
        if all(part in line for part in parts):
            return line
    raise AssertionError(f"no fs log line names all of {parts}: {lines}")
