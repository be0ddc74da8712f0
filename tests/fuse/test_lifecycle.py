"""Mount lifecycle for real: signals, unmount, the demo, refresh, URL expiry, bad start-up."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest

from pixxelfs.emulator import EmulatorConfig, FaultPlan, running_emulator
from tests.fuse.util import (
    PIXXELFS,
    assert_clean_log,
    cleanup,
    mount,
    require_fuse,
    unmount,
    wait_for_exit,
)

pytestmark = pytest.mark.fuse


def _foreground(mountpoint: Path, emulator) -> subprocess.Popen[bytes]:
    """``pixxelfs mount --foreground`` as our child; returns once it reports the mount ready."""
    read_end, write_end = os.pipe()
    command = [*PIXXELFS, "mount", str(mountpoint), "--api-url", emulator.base_url]
    process = subprocess.Popen(
        [*command, "--foreground", "--ready-fd", str(write_end)],
        env={**os.environ, "PIXXEL_API_KEY": emulator.api_key},
        pass_fds=(write_end,),
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    with os.fdopen(read_end) as ready:
        assert ready.readline().strip() == "ready"
    assert os.path.ismount(mountpoint)
    return process


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_unmounts_cleanly(emulator, tmp_path: Path, signum: int) -> None:
    require_fuse()
    with _foreground(tmp_path, emulator) as process:
        try:
            assert any(tmp_path.iterdir())
            process.send_signal(signum)
            _out, stderr = process.communicate(timeout=30)
            assert process.returncode == 0, stderr
        finally:
            if process.poll() is None:
                subprocess.run(["fusermount3", "-u", "-z", str(tmp_path)])
                process.kill()
    assert not os.path.ismount(tmp_path), stderr
    assert b"Traceback" not in stderr


def test_second_mount_on_a_busy_mountpoint_fails_clearly(emulator, tmp_path: Path) -> None:
    require_fuse()
    (tmp_path / "mnt").mkdir()
    first = mount(tmp_path / "mnt", emulator.base_url, emulator.api_key)
    try:
        result = subprocess.run(
            [*PIXXELFS, "mount", str(first.mountpoint), "--api-url", emulator.base_url],
            env={**os.environ, "PIXXEL_API_KEY": emulator.api_key},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1
        assert "already a mount point" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        unmount(first)


def test_bad_key_fails_with_one_line_and_status_1(emulator, tmp_path: Path) -> None:
    require_fuse()
    result = subprocess.run(
        [*PIXXELFS, "mount", str(tmp_path), "--api-url", emulator.base_url],
        env={**os.environ, "PIXXEL_API_KEY": "wrong-key"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "wrong-key" not in result.stderr
    assert not os.path.ismount(tmp_path)


def test_new_and_removed_scenes_show_up_after_the_ttl(tmp_path: Path) -> None:
    require_fuse()
    with running_emulator(EmulatorConfig(scenes=3, seed=5)) as emulator:
        (tmp_path / "mnt").mkdir()
        m = mount(tmp_path / "mnt", emulator.base_url, emulator.api_key, "--metadata-ttl", "1")
        try:
            before = _scene_ids(m.mountpoint)
            assert before == set(emulator.catalog_ids())
            (added,) = emulator.add_scenes(1)
            removed = sorted(before)[0]
            emulator.remove_scene(removed)
            after = _wait_for(lambda: _scene_ids(m.mountpoint), lambda ids: added in ids)
            assert after == (before | {added}) - {removed}
        finally:
            unmount(m)
        assert_clean_log(m)


def _scene_ids(mountpoint: Path) -> set[str]:
    ids = set()
    for top, dirs, _files in os.walk(mountpoint):
        if "user.pixxel.catalog_id" in os.listxattr(top):
            ids.add(os.getxattr(top, "user.pixxel.catalog_id").decode())
            dirs.clear()
    return ids


def _wait_for(probe, done, timeout: float = 30.0):
    """Re-run ``probe`` until ``done(result)``: the kernel and catalog caches expire on a TTL."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_a_read_spanning_url_expiry_returns_correct_bytes(tmp_path: Path) -> None:
    """Signed URLs live 1 s while a throttled read of the GeoTIFF takes several seconds."""
    require_fuse()
    config = EmulatorConfig(scenes=1, seed=9, width=512, height=512, bands=8, url_lifetime=1)
    with running_emulator(config) as emulator:
        (catalog_id,) = emulator.catalog_ids()
        with zipfile.ZipFile(emulator.package_path(catalog_id)) as package:
            (name,) = [n for n in package.namelist() if n.endswith("_L2A_SR.tif")]
            expected = hashlib.sha256(package.read(name)).hexdigest()
        (tmp_path / "mnt").mkdir()
        m = mount(tmp_path / "mnt", emulator.base_url, emulator.api_key)
        try:
            emulator.set_faults(FaultPlan.from_json({"target": "storage", "bandwidth": 1_000_000}))
            (tif,) = m.mountpoint.rglob("*_L2A_SR.tif")
            assert hashlib.sha256(tif.read_bytes()).hexdigest() == expected
            assert emulator.stats()["requests"].get("downloads.create", 0) >= 2
        finally:
            emulator.clear_faults()
            unmount(m)
        assert_clean_log(m)


def test_demo_mounts_shows_the_tree_and_unmounts_on_ctrl_c(tmp_path: Path) -> None:
    require_fuse()
    with subprocess.Popen(
        [*PIXXELFS, "demo", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if "Press Ctrl-C" in line:
                    break
            assert os.path.ismount(tmp_path)
            tifs = sorted(tmp_path.rglob("*_L2A_SR.tif"))
            assert len(tifs) >= 10
            info = subprocess.run(["gdalinfo", str(tifs[0])], capture_output=True, text=True)
            assert info.returncode == 0, info.stderr
            assert "Coordinate System is" in info.stdout
            process.send_signal(signal.SIGINT)
            _out, stderr = process.communicate(timeout=60)
            assert process.returncode == 0, stderr
            assert "Traceback" not in stderr
            assert not os.path.ismount(tmp_path)
        finally:
            if process.poll() is None:
                subprocess.run(["fusermount3", "-u", "-z", str(tmp_path)])
                process.kill()


def test_unmount_cleans_up_after_a_killed_daemon(emulator, tmp_path: Path) -> None:
    require_fuse()
    (tmp_path / "mnt").mkdir()
    m = mount(tmp_path / "mnt", emulator.base_url, emulator.api_key)
    try:
        os.kill(m.pid, signal.SIGKILL)
        assert wait_for_exit(m.pid, 30)
        with pytest.raises(OSError):
            os.listdir(m.mountpoint)
        unmount(m)
    except BaseException:
        cleanup(m)
        raise


def test_unmount_under_load_finishes_in_bounded_time(tmp_path: Path) -> None:
    """Eight readers stream throttled GeoTIFFs while ``pixxelfs unmount`` runs: it returns
    quickly (a busy mount is detached lazily), every completed read was exact, the readers
    stop and the daemon exits on its own."""
    require_fuse()
    config = EmulatorConfig(scenes=4, seed=17, width=384, height=384, bands=8)
    with running_emulator(config) as emulator:
        expected = {}
        for catalog_id in emulator.catalog_ids():
            with zipfile.ZipFile(emulator.package_path(catalog_id)) as package:
                for name in package.namelist():
                    expected[name.rsplit("/", 1)[-1]] = hashlib.sha256(package.read(name)).digest()
        (tmp_path / "mnt").mkdir()
        m = mount(tmp_path / "mnt", emulator.base_url, emulator.api_key)
        tifs = sorted(m.mountpoint.rglob("*_L2A_SR.tif"))
        emulator.set_faults(FaultPlan.from_json({"target": "storage", "bandwidth": 2_000_000}))
        outcomes: list[str] = []
        started = threading.Event()

        def reader(index: int) -> None:
            while True:
                path = tifs[index % len(tifs)]
                try:
                    with path.open("rb") as f:
                        started.set()
                        digest = hashlib.sha256(f.read()).digest()
                except OSError as exc:
                    outcomes.append(f"stopped: {exc.strerror}")
                    return
                outcomes.append("exact" if digest == expected[path.name] else f"WRONG {path}")
                index += 1

        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(8)]
        try:
            for thread in threads:
                thread.start()
            assert started.wait(30)
            began = time.monotonic()
            result = subprocess.run(
                [*PIXXELFS, "unmount", str(m.mountpoint)], capture_output=True, text=True
            )
            assert result.returncode == 0, result.stderr
            assert time.monotonic() - began < 15
            assert not os.path.ismount(m.mountpoint)
            for thread in threads:
                thread.join(timeout=60)
            assert not any(thread.is_alive() for thread in threads)
            assert wait_for_exit(m.pid, 30), "the daemon did not exit after the last reader"
        except BaseException:
            cleanup(m)
            raise
        finally:
            emulator.clear_faults()
    assert not [o for o in outcomes if o.startswith("WRONG")], outcomes
    assert len(outcomes) >= 8
    assert_clean_log(m)
