"""The persistent disk cache through real mounts: remounts, the size limit, stats, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixxelfs.emulator import Emulator, EmulatorConfig, running_emulator
from pixxelfs.remote.block_store import stored_blocks
from tests.fuse.cachehelp import (
    files_bytes,
    member_hashes,
    read_hashes,
    scene_dirs,
    storage_requests,
)
from tests.fuse.util import PIXXELFS, assert_clean_log, cleanup, mount, require_fuse, unmount

pytestmark = pytest.mark.fuse

MIB = 1 << 20


@pytest.fixture(scope="module")
def big_emulator() -> Iterator[Emulator]:
    """Scenes of ~5.5 MiB (a 5 MiB GeoTIFF each), so a scene spans several cache blocks."""
    config = EmulatorConfig(seed=5, scenes=4, projects=1, width=512, height=512, bands=8)
    with running_emulator(config) as emu:
        yield emu


def _mounted(emulator: Emulator, mountpoint: Path, cache: Path, *extra: str):
    mountpoint.mkdir(exist_ok=True)
    return mount(mountpoint, emulator.base_url, emulator.api_key, "--cache-dir", str(cache), *extra)


def test_remount_reads_everything_from_disk_without_storage_requests(
    big_emulator: Emulator, tmp_path: Path
) -> None:
    require_fuse()
    cache = tmp_path / "cache"
    catalog_id = big_emulator.catalog_ids()[0]
    expected = member_hashes(big_emulator, catalog_id)
    first = _mounted(big_emulator, tmp_path / "mnt", cache)
    try:
        scene = scene_dirs(first.mountpoint)[catalog_id]
        assert read_hashes(scene, list(expected)) == expected
    except BaseException:
        cleanup(first)
        raise
    unmount(first)
    big_emulator.reset_stats()
    second = _mounted(big_emulator, tmp_path / "mnt", cache)
    try:
        scene = scene_dirs(second.mountpoint)[catalog_id]
        assert read_hashes(scene, list(expected)) == expected
        stats = json.loads((second.mountpoint / ".pixxelfs" / "stats.json").read_bytes())
    except BaseException:
        cleanup(second)
        raise
    unmount(second)
    assert_clean_log(second)
    assert storage_requests(big_emulator) == []
    requests = big_emulator.stats()["requests"]
    assert not any(route.startswith("downloads") for route in requests), requests
    assert stats["disk_cache"]["hits"] > 0 and stats["disk_cache"]["misses"] == 0
    assert stats["storage"]["bytes_fetched"] == 0


def test_the_size_limit_holds_and_evicted_blocks_come_back_intact(
    big_emulator: Emulator, tmp_path: Path
) -> None:
    require_fuse()
    cache = tmp_path / "cache"
    limit = 6 * MIB
    m = _mounted(
        big_emulator, tmp_path / "mnt", cache, "--cache-size", "6M", "--memory-cache-size", "4M"
    )
    largest = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal largest
        while not stop.is_set():
            largest = max(largest, sum(files_bytes(b) for b in cache.glob("*/blocks")))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        scenes = scene_dirs(m.mountpoint)
        expected = {cid: member_hashes(big_emulator, cid) for cid in scenes}
        for cid, scene in scenes.items():  # ~22 MiB through a 6 MiB cache
            assert read_hashes(scene, list(expected[cid])) == expected[cid]
        stats = json.loads((m.mountpoint / ".pixxelfs" / "stats.json").read_bytes())
        big_emulator.reset_stats()
        first = next(iter(scenes))
        subprocess.run(["sh", "-c", "echo 1 > /proc/sys/vm/drop_caches"], check=False)
        assert read_hashes(scenes[first], list(expected[first])) == expected[first]
    except BaseException:
        cleanup(m)
        raise
    finally:
        stop.set()
        sampler.join()
    unmount(m)
    assert_clean_log(m)
    assert largest <= limit + MIB, f"{largest} bytes on disk with a {limit}-byte limit"
    assert stats["disk_cache"]["evictions"] > 0
    assert storage_requests(big_emulator), "evicted blocks should be fetched again"


def test_stats_file_is_hidden_read_only_and_fresh_on_every_open(
    big_emulator: Emulator, tmp_path: Path
) -> None:
    require_fuse()
    m = _mounted(big_emulator, tmp_path / "mnt", tmp_path / "cache")
    try:
        listing = subprocess.run(
            ["ls", str(m.mountpoint)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert ".pixxelfs" not in listing
        everything = subprocess.run(
            ["ls", "-a", str(m.mountpoint)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert ".pixxelfs" in everything
        stats_file = m.mountpoint / ".pixxelfs" / "stats.json"
        before = json.loads(stats_file.read_bytes())
        scene = next(iter(scene_dirs(m.mountpoint).values()))
        tif = next(scene.rglob("*_L2A_SR.tif"))
        assert len(tif.read_bytes()) == tif.stat().st_size
        after = json.loads(stats_file.read_bytes())
        printed = subprocess.run(
            [*PIXXELFS, "stats", str(m.mountpoint)], capture_output=True, text=True, check=True
        )
        with pytest.raises(OSError):
            stats_file.open("w")
    except BaseException:
        cleanup(m)
        raise
    unmount(m)
    assert after["storage"]["bytes_fetched"] > before["storage"]["bytes_fetched"]
    assert after["disk_cache"]["writes"] > 0
    assert {"memory_cache", "disk_cache", "storage", "read_paths", "api", "errors"} <= set(after)
    assert after["read_paths"]["parts"] > before["read_paths"]["parts"]
    assert json.loads(printed.stdout)["disk_cache"]["writes"] >= after["disk_cache"]["writes"]


def test_cache_status_and_clear_work_on_the_cache_dir(
    big_emulator: Emulator, tmp_path: Path
) -> None:
    require_fuse()
    cache = tmp_path / "cache"
    m = _mounted(big_emulator, tmp_path / "mnt", cache)
    try:
        scene = next(iter(scene_dirs(m.mountpoint).values()))
        next(scene.rglob("*_QA_MASK.tif")).read_bytes()
    except BaseException:
        cleanup(m)
        raise
    unmount(m)

    def cli(*args: str) -> str:
        result = subprocess.run(
            [*PIXXELFS, "cache", *args, "--cache-dir", str(cache)],
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    status = cli("status")
    assert "1 account(s)" in status and "blocks      0 " not in status
    assert "removed 0 cached block(s)" in cli("clear", "--older-than", "7d")
    assert "removed 0 " not in cli("clear")
    assert "blocks      0 (0 B)" in cli("status")
    assert "catalog     none" in cli("status")


def _block_files_verify(cache: Path) -> int:
    """Every block on disk (slot or file) is complete and intact (key, length, checksum)."""
    count = 0
    for folder in cache.glob("*/blocks"):
        for key, intact in stored_blocks(folder):
            assert intact, f"the block {key} is damaged"
            count += 1
    return count


def _read_until_killed(
    scenes: dict[str, Path],
    order: list[str],
    expected: dict[str, dict[str, str]],
    wrong: list[str],
    finished: threading.Event,
) -> None:
    """Read and check every file in ``order`` until done or the daemon dies."""
    try:
        for cid in order:
            for name, digest in expected[cid].items():
                data = (scenes[cid] / name).read_bytes()
                if hashlib.sha256(data).hexdigest() != digest:
                    wrong.append(name)
    except OSError:
        pass  # the daemon was killed
    finally:
        finished.set()


def test_sigkill_during_cache_writes_never_yields_a_wrong_byte(
    big_emulator: Emulator, tmp_path: Path
) -> None:
    """Kill the daemon right after the n-th storage answer (n varies), i.e. while it is
    writing blocks, several times; every later read must still be byte-exact."""
    require_fuse()
    cache, mountpoint = tmp_path / "cache", tmp_path / "mnt"
    expected = {cid: member_hashes(big_emulator, cid) for cid in big_emulator.catalog_ids()}
    rng = random.Random(11)
    options = ("--cache-size", "12M", "--memory-cache-size", "4M")
    for _round in range(int(os.environ.get("PIXXELFS_CRASH_ROUNDS", "6"))):
        big_emulator.reset_stats()
        m = _mounted(big_emulator, mountpoint, cache, *options)
        wrong: list[str] = []
        finished = threading.Event()
        order = sorted(expected, key=lambda _cid: rng.random())
        reader = threading.Thread(
            target=_read_until_killed,
            args=(scene_dirs(mountpoint), order, expected, wrong, finished),
        )
        reader.start()
        kill_after = rng.randint(1, 10)
        while not finished.is_set() and len(storage_requests(big_emulator)) < kill_after:
            finished.wait(0.002)
        os.kill(m.pid, signal.SIGKILL)
        reader.join(30)
        cleanup(m)
        assert not wrong, f"wrong bytes read: {wrong}"
        _block_files_verify(cache)
    final = _mounted(big_emulator, mountpoint, cache, *options)
    try:
        scenes = scene_dirs(mountpoint)
        for cid, hashes in expected.items():
            assert read_hashes(scenes[cid], list(hashes)) == hashes
    except BaseException:
        cleanup(final)
        raise
    unmount(final)
    assert _block_files_verify(cache) > 0
