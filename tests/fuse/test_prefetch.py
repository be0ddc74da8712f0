"""``pixxelfs prefetch``: fills the disk cache with progress; a second run downloads nothing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pixxelfs.emulator import Emulator
from tests.fuse.cachehelp import scene_dirs, storage_requests
from tests.fuse.util import PIXXELFS, mount, require_fuse, unmounted_after

pytestmark = pytest.mark.fuse


def _prefetch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PIXXELFS, "prefetch", *args], capture_output=True, text=True, timeout=120
    )


def _downloaded(stdout: str) -> str:
    match = re.search(r"downloaded (.+) from storage", stdout)
    assert match, stdout
    return match.group(1)


def test_prefetch_of_a_project_fills_the_cache_and_a_second_run_downloads_nothing(
    emulator: Emulator, tmp_path: Path
) -> None:
    require_fuse()
    cache, mountpoint = tmp_path / "cache", tmp_path / "mnt"
    mountpoint.mkdir()
    with unmounted_after(
        mount(mountpoint, emulator.base_url, emulator.api_key, "--cache-dir", str(cache)),
        clean_log=False,
    ):
        scene = sorted(scene_dirs(mountpoint).values())[0]
        project = mountpoint / scene.relative_to(mountpoint).parts[0]
        files = [p for p in project.rglob("*") if p.is_file()]
        emulator.reset_stats()
        first = _prefetch(str(project), "--jobs", "4")
    assert first.returncode == 0, first.stderr
    assert re.search(r"prefetch +100\.0%", first.stdout), first.stdout
    assert f"prefetched {len(files)} file(s)" in first.stdout
    assert _downloaded(first.stdout) != "0 B"
    assert storage_requests(emulator)

    with unmounted_after(
        mount(mountpoint, emulator.base_url, emulator.api_key, "--cache-dir", str(cache)),
        clean_log=True,
    ):
        emulator.reset_stats()
        second = _prefetch(str(project))
    assert second.returncode == 0, second.stderr
    assert _downloaded(second.stdout) == "0 B"
    assert storage_requests(emulator) == []


def test_overviews_only_reads_geotiff_headers_and_overviews_and_skips_the_rest(
    emulator: Emulator, tmp_path: Path
) -> None:
    require_fuse()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with unmounted_after(
        mount(mountpoint, emulator.base_url, emulator.api_key, "--cache-dir", str(tmp_path / "c")),
        clean_log=False,
    ):
        scene = next(iter(scene_dirs(mountpoint).values()))
        tifs = sorted(p for p in scene.rglob("*.tif"))
        tif_bytes = sum(p.stat().st_size for p in tifs)
        result = _prefetch(str(scene), "--overviews-only")
        outside = _prefetch(str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"prefetched {len(tifs)} file(s)" in result.stdout
    assert re.search(r"skipped .*metadata\.json: not a GeoTIFF", result.stdout)
    done = re.search(r"prefetched \d+ file\(s\), ([\d.]+) (B|KiB|MiB)", result.stdout)
    assert done is not None
    scale = {"B": 1, "KiB": 1024, "MiB": 1 << 20}[done.group(2)]
    assert float(done.group(1)) * scale < tif_bytes
    assert outside.returncode == 2 and "not inside a pixxelfs mount" in outside.stderr
