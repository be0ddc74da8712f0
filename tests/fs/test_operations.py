"""PixxelOperations called directly (no kernel) against the emulator on a loopback socket.

These pin down the costs the mount promises (what touches the API, what touches storage) and
the errno of each failure, faster and more precisely than a real mount can.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pyfuse3
import pytest

from pixxelfs.config import MountConfig
from pixxelfs.emulator import EmulatorConfig, FaultPlan, serve_emulator
from pixxelfs.fs.operations import PixxelOperations
from pixxelfs.mount import open_operations


@pytest.fixture
async def emu() -> AsyncIterator:
    async with serve_emulator(EmulatorConfig(scenes=6, seed=3)) as emulator:
        yield emulator


def _config(emulator, **overrides) -> MountConfig:
    return MountConfig(
        mountpoint=Path("/nonexistent"),
        api_url=emulator.base_url,
        api_key=emulator.api_key,
        **overrides,
    )


async def _lookup_path(ops: PixxelOperations, *names: str) -> int:
    inode = pyfuse3.ROOT_INODE
    for name in names:
        inode = (await ops.lookup(inode, name.encode(), None)).st_ino
    return inode


async def _children(ops: PixxelOperations, inode: int) -> list[str]:
    """The names ``opendir`` snapshots (``readdir`` itself needs a kernel token)."""
    fh = await ops.opendir(inode, None)
    try:
        return [os.fsdecode(name) for name, _attrs in ops._dirs[fh]]
    finally:
        await ops.releasedir(fh)


async def _scene_path(ops: PixxelOperations) -> tuple[str, ...]:
    tree = await ops.catalog.tree()
    path, _scene = next(iter(tree.scenes()))
    return path


async def _read_all(ops: PixxelOperations, inode: int) -> bytes:
    info = await ops.open(inode, os.O_RDONLY, None)
    try:
        size = (await ops.getattr(inode, None)).st_size
        return await ops.read(info.fh, 0, size + 100)
    finally:
        await ops.release(info.fh)


async def test_listing_to_scene_level_touches_no_package(emu) -> None:
    async with open_operations(_config(emu)) as ops:
        emu.reset_stats()
        pending = [pyfuse3.ROOT_INODE]
        depth_of = {pyfuse3.ROOT_INODE: 0}
        while pending:
            inode = pending.pop()
            if depth_of[inode] == 4:
                continue
            for name in await _children(ops, inode):
                entry = await ops.lookup(inode, name.encode(), None)
                if not stat.S_ISDIR(entry.st_mode):
                    continue  # catalog.json: a file of the STAC view
                child = entry.st_ino
                depth_of[child] = depth_of[inode] + 1
                pending.append(child)
        routes = emu.stats()["requests"]
        assert not any(r.startswith(("downloads", "storage")) for r in routes), routes


async def test_scene_listing_costs_one_download_and_at_most_two_ranges(emu) -> None:
    async with open_operations(_config(emu)) as ops:
        path = await _scene_path(ops)
        inode = await _lookup_path(ops, *path)
        emu.reset_stats()
        names = await _children(ops, inode)
        assert "metadata.json" in names and len(names) >= 2
        await _children(ops, inode)  # cached
        stats = emu.stats()
        assert stats["requests"].get("downloads.create", 0) == 1
        assert 1 <= len(stats["storage_gets"]) <= 2


async def test_metadata_json_is_the_catalog_entry(emu) -> None:
    async with open_operations(_config(emu)) as ops:
        path = await _scene_path(ops)
        inode = await _lookup_path(ops, *path, "metadata.json")
        data = await _read_all(ops, inode)
        catalog_id = os.fsdecode(await ops.getxattr(inode, b"user.pixxel.catalog_id", None))
        emu.reset_stats()
        assert json.loads(data) == (await ops.catalog.tree()).lookup(path).catalog.raw
        assert data.endswith(b"\n")
        assert catalog_id in emu.catalog_ids()


async def test_member_bytes_match_the_package(emu) -> None:
    async with open_operations(_config(emu, block_size=64 << 10)) as ops:
        path = await _scene_path(ops)
        scene = await _lookup_path(ops, *path)
        catalog_id = os.fsdecode(await ops.getxattr(scene, b"user.pixxel.catalog_id", None))
        with zipfile.ZipFile(await emu.apackage_path(catalog_id)) as package:
            for info in package.infolist():
                inode = await _lookup_path(ops, *path, *info.filename.split("/"))
                assert await _read_all(ops, inode) == package.read(info)


async def test_errno_for_writes_and_missing_names(emu) -> None:
    async with open_operations(_config(emu)) as ops:
        path = await _scene_path(ops)
        inode = await _lookup_path(ops, *path, "metadata.json")
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
            with pytest.raises(pyfuse3.FUSEError) as caught:
                await ops.open(inode, flags, None)
            assert caught.value.errno == errno.EROFS
        missing = await ops.lookup(pyfuse3.ROOT_INODE, b"no-such-project", None)
        assert missing.st_ino == 0 and missing.entry_timeout > 0  # a kernel-cached ENOENT
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await ops.mkdir(pyfuse3.ROOT_INODE, b"x", 0o755, None)
        assert caught.value.errno == errno.EROFS


async def test_only_user_xattrs_exist_and_others_are_refused(emu) -> None:
    """`ls -l` asks every entry for security.selinux and the POSIX ACLs: ENOATTR, at once."""
    async with open_operations(_config(emu)) as ops:
        scene = await _lookup_path(ops, *await _scene_path(ops))
        names = await ops.listxattr(scene, None)
        assert names and all(name.startswith(b"user.") for name in names)
        for name in (b"security.selinux", b"system.posix_acl_access", b"trusted.x"):
            with pytest.raises(pyfuse3.FUSEError) as caught:
                await ops.getxattr(scene, name, None)
            assert caught.value.errno == pyfuse3.ENOATTR
        assert await ops.getxattr(scene, names[0], None)


async def test_failed_download_is_eio_and_the_daemon_keeps_serving(emu, caplog) -> None:
    async with open_operations(_config(emu)) as ops:
        path = await _scene_path(ops)
        scene = await _lookup_path(ops, *path)
        emu.set_faults(FaultPlan(download_mode="failed"))
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await _children(ops, scene)
        assert caught.value.errno == errno.EIO
        assert any("DownloadFailedError" in r.getMessage() for r in caught_records(caplog))
        emu.clear_faults()
        assert "metadata.json" in await _children(ops, scene)


def caught_records(caplog) -> list:
    return [r for r in caplog.records if r.name.startswith("pixxelfs")]


async def test_replaced_package_gives_estale_on_open_handles(emu) -> None:
    async with open_operations(_config(emu, block_size=4096)) as ops:
        path = await _scene_path(ops)
        scene = await _lookup_path(ops, *path)
        names = await _children(ops, scene)
        member_dir = next(n for n in names if n != "metadata.json")
        tif_dir = await _lookup_path(ops, *path, member_dir)
        tif_name = next(n for n in await _children(ops, tif_dir) if n.endswith("_L2A_SR.tif"))
        tif = await _lookup_path(ops, *path, member_dir, tif_name)
        info = await ops.open(tif, os.O_RDONLY, None)
        await ops.read(info.fh, 0, 100)
        catalog_id = os.fsdecode(await ops.getxattr(scene, b"user.pixxel.catalog_id", None))
        emu.replace_package(catalog_id)
        with pytest.raises(pyfuse3.FUSEError) as caught:
            await ops.read(info.fh, 200_000, 4096)
        assert caught.value.errno == errno.ESTALE
        await ops.release(info.fh)
