"""Offline: with the emulator stopped, cached files read fine and uncached ones fail clearly."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from pixxelfs.emulator import EmulatorConfig, running_emulator
from tests.fuse.cachehelp import member_hashes, read_hashes, scene_dirs
from tests.fuse.util import assert_clean_log, cleanup, mount, require_fuse, unmount

pytestmark = pytest.mark.fuse


def test_stopped_api_serves_cached_files_and_refuses_uncached_ones(tmp_path: Path) -> None:
    require_fuse()
    cache, mountpoint = tmp_path / "cache", tmp_path / "mnt"
    mountpoint.mkdir()
    config = EmulatorConfig(seed=7, scenes=3, projects=1)
    with running_emulator(config) as emu:
        url, key = emu.base_url, emu.api_key
        online = mount(mountpoint, url, key, "--cache-dir", str(cache))
        try:
            scenes = scene_dirs(mountpoint)
            cached_id, listed_id, unseen_id = sorted(scenes)
            expected = member_hashes(emu, cached_id)
            assert read_hashes(scenes[cached_id], list(expected)) == expected
            listed_tif = next(scenes[listed_id].rglob("*_L2A_SR.tif"))  # index only
        except BaseException:
            cleanup(online)
            raise
        unmount(online)
    relative = {cid: path.relative_to(mountpoint) for cid, path in scenes.items()}

    for extra in ((), ("--offline",)):
        m = mount(mountpoint, url, key, "--cache-dir", str(cache), *extra)
        try:
            assert set(scene_dirs(mountpoint)) == set(scenes)  # the snapshot's tree
            cached = mountpoint / relative[cached_id]
            assert read_hashes(cached, list(expected)) == expected
            assert listed_tif.stat().st_size > 0  # sizes come from the saved index
            with pytest.raises(OSError) as read_error:
                listed_tif.read_bytes()
            with pytest.raises(OSError) as list_error:
                list((mountpoint / relative[unseen_id]).iterdir())
        except BaseException:
            cleanup(m)
            raise
        unmount(m)
        assert read_error.value.errno == errno.EHOSTUNREACH
        assert list_error.value.errno == errno.EHOSTUNREACH
        log = m.log()
        assert "offline" in log
        named = re.escape(f"/{listed_tif.relative_to(mountpoint)}: OfflineError")
        assert re.search(f"(open|read) {named}", log), log
        assert_clean_log(m)
