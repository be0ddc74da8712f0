"""Four real mounts (separate daemons) sharing one redis-server: origin amplification A.

The emulator holds one scene whose reflectance COG is a >= 100 MB STORED member. Every test
starts from a fresh Redis and fresh mounts, resets the emulator's request log, and counts what
the origin served (exact byte counts from the emulator, never timings).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixxelfs.emulator import Emulator, EmulatorConfig, running_emulator
from tests.scale.cluster import (
    CHUNK,
    cluster,
    file_sha256,
    find_member,
    gets_covering,
    in_parallel,
    member_data_offset,
    member_sha256,
    origin_bytes,
)
from tests.scale.redis_server import RedisServer, require_redis

pytestmark = pytest.mark.fuse

MOUNTS = 4
REFLECTANCE = "_L2A_SR.tif"
QA_MASK = "_QA_MASK.tif"
# 2600 x 2600 pixels x 8 bands x uint16 = 108 MB of pixels (plus overviews): a >= 100 MB member.
BIG = dict(width=2600, height=2600, bands=8)


@pytest.fixture(scope="module")
def big_emulator(tmp_path_factory) -> Iterator[Emulator]:
    """One scene with a >= 100 MB reflectance member (generated once per module, ~3 s)."""
    data_dir = tmp_path_factory.mktemp("big-packages")
    config = EmulatorConfig(seed=8, scenes=1, projects=1, data_dir=data_dir, **BIG)
    with running_emulator(config) as emu:
        yield emu


@pytest.fixture
def package(big_emulator: Emulator) -> Path:
    (catalog_id,) = big_emulator.catalog_ids()
    return big_emulator.package_path(catalog_id)


def member_name(package: Path, suffix: str) -> str:
    with zipfile.ZipFile(package) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(suffix)]
    return name


def start(big_emulator: Emulator, tmp_path: Path, redis: RedisServer, *extra: str):
    return cluster(
        tmp_path, big_emulator.base_url, big_emulator.api_key, [redis.url], MOUNTS, *extra
    )


def test_four_mounts_cat_one_big_member_with_amplification_at_most_1_05(
    big_emulator, package, redis_server, tmp_path
):
    name = member_name(package, REFLECTANCE)
    size = zipfile.ZipFile(package).getinfo(name).file_size
    assert size >= 100 * 10**6
    expected = member_sha256(package, name)
    with start(big_emulator, tmp_path, redis_server) as mounts:
        files = [find_member(m.mountpoint, REFLECTANCE) for m in mounts]
        big_emulator.reset_stats()
        digests = in_parallel([lambda f=f: file_sha256(f) for f in files])
        gets = big_emulator.stats()["storage_gets"]
    assert digests == [expected] * MOUNTS
    origin = origin_bytes(gets)
    print(
        f"A = {origin.served} / {origin.unique} = {origin.amplification:.4f} "
        f"({origin.requests} GETs)"
    )
    assert origin.unique >= size
    assert origin.amplification <= 1.05


def test_four_mounts_by_eight_readers_of_one_block_cost_one_origin_get(
    big_emulator, package, redis_server, tmp_path
):
    name = member_name(package, REFLECTANCE)
    data_start = member_data_offset(package, name)
    target = (data_start // CHUNK + 40) * CHUNK + CHUNK // 2  # inside block 40-ish of the member
    offset = target - data_start
    with start(big_emulator, tmp_path, redis_server) as mounts:
        files = [find_member(m.mountpoint, REFLECTANCE) for m in mounts]
        big_emulator.reset_stats()
        barrier = threading.Barrier(MOUNTS * 8)

        def read(path: Path) -> bytes:
            fd = os.open(path, os.O_RDONLY)
            try:
                barrier.wait(timeout=30)
                return os.pread(fd, 4096, offset)
            finally:
                os.close(fd)

        results = in_parallel([lambda f=f: read(f) for f in files for _ in range(8)])
        gets = big_emulator.stats()["storage_gets"]
    with package.open("rb") as source:
        source.seek(target)
        expected = source.read(4096)
    assert results == [expected] * (MOUNTS * 8)
    assert gets_covering(gets, target) == 1


def test_four_mounts_reading_random_cog_windows_fetch_header_and_overviews_once(
    big_emulator, package, redis_server, tmp_path
):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.windows import Window

    name = member_name(package, REFLECTANCE)
    data_start = member_data_offset(package, name)
    rng = random.Random(4)
    windows = [Window(rng.randrange(0, 2344), rng.randrange(0, 2344), 256, 256) for _ in range(6)]

    def read(path: str) -> list[bytes]:
        with rasterio.open(path) as ds:
            full = [ds.read(1, window=w).tobytes() for w in windows]
            overview = ds.read(1, out_shape=(ds.height // 8, ds.width // 8)).tobytes()
        return [*full, overview]

    expected = read(f"zip://{package}!{name}")
    with start(big_emulator, tmp_path, redis_server) as mounts:
        paths = [str(find_member(m.mountpoint, REFLECTANCE)) for m in mounts]
        big_emulator.reset_stats()
        results = in_parallel([lambda p=p: read(p) for p in paths])
        gets = big_emulator.stats()["storage_gets"]
    assert results == [expected] * MOUNTS
    assert gets_covering(gets, data_start) == 1  # the GeoTIFF header and IFDs
    origin = origin_bytes(gets)
    assert origin.amplification <= 1.05, origin


def test_redis_killed_and_restarted_reads_stay_correct_and_sharing_recovers(
    big_emulator, package, redis_server, tmp_path
):
    name = member_name(package, REFLECTANCE)
    data_start = member_data_offset(package, name)
    step = 16 * CHUNK

    def read_all(files: list[Path], begin: int, size: int) -> None:
        expected = file_sha256(package, data_start + begin, size)
        got = in_parallel([lambda f=f: file_sha256(f, begin, size) for f in files])
        assert got == [expected] * len(files)

    def read_until(files: list[Path], position: int, logged: str) -> int:
        """Read new blocks (cached ones never reach Redis) until every log has ``logged``."""
        deadline = time.monotonic() + 60
        while not all(logged in m.log() for m in mounts):
            assert time.monotonic() < deadline, f"never logged: {logged}"
            read_all(files, position, CHUNK)
            position += CHUNK
            time.sleep(0.1)
        return position

    with start(big_emulator, tmp_path, redis_server) as mounts:
        files = [find_member(m.mountpoint, REFLECTANCE) for m in mounts]
        read_all(files, 0, step)
        redis_server.kill()
        # Served from the origin; each breaker opens after 5 errors spanning >= 1 s.
        position = read_until(files, step, "reading from the origin without it")
        redis_server.start()
        # Each mount probes Redis again after its breaker's 5 s cool-down, on its next read.
        position = read_until(files, position, "answers again")
        big_emulator.reset_stats()
        read_all(files, position, step)
        gets = big_emulator.stats()["storage_gets"]
        warnings = [
            [line for line in m.log().splitlines() if "WARNING" in line and "shared cache" in line]
            for m in mounts
        ]
    assert all(len(w) == 1 for w in warnings), warnings
    assert origin_bytes(gets).amplification <= 1.05, origin_bytes(gets)


def test_a_replaced_package_never_serves_old_blocks(big_emulator, package, redis_server, tmp_path):
    """Runs last in this module: it replaces the emulator's only package."""
    (catalog_id,) = big_emulator.catalog_ids()
    name = member_name(package, QA_MASK)
    old = member_sha256(package, name)
    with cluster(
        tmp_path / "a", big_emulator.base_url, big_emulator.api_key, [redis_server.url], 1
    ) as (m,):
        assert file_sha256(find_member(m.mountpoint, QA_MASK)) == old
    big_emulator.replace_package(catalog_id)
    new = member_sha256(big_emulator.package_path(catalog_id), name)
    assert new != old
    big_emulator.reset_stats()
    with cluster(
        tmp_path / "b", big_emulator.base_url, big_emulator.api_key, [redis_server.url], 1
    ) as (m,):
        assert file_sha256(find_member(m.mountpoint, QA_MASK)) == new
    size = zipfile.ZipFile(big_emulator.package_path(catalog_id)).getinfo(name).file_size
    assert origin_bytes(big_emulator.stats()["storage_gets"]).unique >= size  # all refetched


def test_a_redis_password_never_reaches_the_daemon_command_line(emulator, tmp_path: Path) -> None:
    """The daemon gets its shared-cache URLs through its environment, not argv."""
    server = RedisServer(require_redis(), tmp_path, password="s3cret-redis-pw")
    server.start()
    try:
        with cluster(tmp_path, emulator.base_url, emulator.api_key, [server.url], 1) as (m,):
            cmdline = Path(f"/proc/{m.pid}/cmdline").read_bytes()
            assert b"s3cret-redis-pw" not in cmdline
            assert b"--shared-cache" not in cmdline.replace(b"--shared-cache-", b"")
            text = (m.mountpoint / ".pixxelfs" / "stats.json").read_text()
            assert len(json.loads(text)["shared_cache"]["nodes"]) == 1
            assert "s3cret-redis-pw" not in text + m.log()
    finally:
        server.kill()
