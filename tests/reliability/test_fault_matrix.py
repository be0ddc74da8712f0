"""The fault matrix of docs/SEMANTICS.md: each fault gives correct bytes, or the documented errno
within a bounded time plus a log line naming the scene, the file and the cause; once the fault
clears, the same mount serves correct bytes again.

Most cases run at the operations level (PixxelOperations against the emulator, no kernel), which
is fast and sees exact errno values; a few run through a real mount to check what a program sees.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pyfuse3
import pytest
import trio

from pixxelfs.emulator import (
    Emulator,
    EmulatorConfig,
    FaultPlan,
    FaultRule,
    running_emulator,
    serve_emulator,
)
from pixxelfs.errors import ApiUnavailableError
from tests.reliability.util import (
    assert_logged,
    lookup,
    operations,
    package_members,
    read_file,
    scene_files,
)

BLOCK = 64 << 10
# Five attempts with jittered backoff (at most 0.2+0.4+0.8+1.6 s) plus the requests themselves.
RETRIES_EXHAUSTED_WITHIN = 10.0


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator in the test's own trio loop (its control calls then need no thread hop)."""
    config = EmulatorConfig(seed=11, scenes=4, width=128, height=128, bands=8)
    async with serve_emulator(config) as emulator:
        yield emulator


def _plan(**rule) -> FaultPlan:
    return FaultPlan(rules=(FaultRule(**rule),))


async def _open_first_block(ops, target) -> int:
    """Open ``target`` and read its first block, so the scene and its package are loaded."""
    info = await ops.open(await lookup(ops, target.path), os.O_RDONLY, None)
    assert await ops.read(info.fh, 0, BLOCK) == target.data[:BLOCK]
    return info.fh


async def _fails_within(seconds: float, expected_errno: int, call) -> float:
    """``call()`` raises FUSEError(expected_errno) within ``seconds``; returns the time taken."""
    started = trio.current_time()
    with trio.fail_after(seconds), pytest.raises(pyfuse3.FUSEError) as caught:
        await call()
    assert caught.value.errno == expected_errno, errno.errorcode[caught.value.errno]
    return trio.current_time() - started


@pytest.mark.parametrize("target", ["storage", "api"], ids=["storage-5xx-burst", "api-5xx-burst"])
async def test_5xx_burst_is_retried_and_gives_correct_bytes(emu, target) -> None:
    async with operations(emu, block_size=BLOCK) as ops:
        file = (await scene_files(ops, emu))[0]
        emu.reset_stats()
        emu.set_faults(_plan(target=target, fail_calls=(1, 2, 3), fail_status=503, retry_after=0))
        assert await read_file(ops, file.path) == file.data
        assert sum(by.get("503", 0) for by in emu.stats()["by_route"].values()) == 3


async def test_persistent_5xx_is_eio_naming_the_cause_then_recovers(emu, caplog) -> None:
    async with operations(emu, block_size=BLOCK) as ops:
        file = (await scene_files(ops, emu))[0]
        fh = await _open_first_block(ops, file)
        emu.set_faults(_plan(target="storage", error_rate=1.0, error_status=500, retry_after=0))
        await _fails_within(RETRIES_EXHAUSTED_WITHIN, errno.EIO, lambda: ops.read(fh, BLOCK, BLOCK))
        assert_logged(caplog, file.scene[-1], file.member.split("/")[-1], "HTTP 500", "EIO")
        emu.clear_faults()
        assert await ops.read(fh, BLOCK, BLOCK) == file.data[BLOCK : 2 * BLOCK]


async def test_429_retry_after_is_honoured(emu) -> None:
    async with operations(emu, block_size=BLOCK) as ops:
        file = (await scene_files(ops, emu))[1]
        emu.set_faults(_plan(target="storage", fail_calls=(1,), fail_status=429, retry_after=1))
        started = trio.current_time()
        assert await read_file(ops, file.path) == file.data
        assert trio.current_time() - started >= 0.9
        assert emu.stats()["by_route"]["storage.get"].get("429") == 1


@pytest.mark.parametrize(
    ("rule", "cause"),
    [
        ({"reset_after_bytes": 1000}, "Error"),  # ReadError / RemoteProtocolError
        ({"truncate_after_bytes": 1000}, "Error"),
    ],
    ids=["connection-reset-mid-body", "truncated-body"],
)
async def test_broken_bodies_are_retried_then_eio_then_recover(emu, caplog, rule, cause) -> None:
    async with operations(emu, block_size=BLOCK) as ops:
        file = (await scene_files(ops, emu))[2]
        fh = await _open_first_block(ops, file)
        emu.set_faults(_plan(target="storage", **rule))
        await _fails_within(
            RETRIES_EXHAUSTED_WITHIN, errno.EIO, lambda: ops.read(fh, 2 * BLOCK, BLOCK)
        )
        line = assert_logged(caplog, file.scene[-1], file.member.split("/")[-1], "EIO")
        assert "still failing after 5 attempts" in line and cause in line
        emu.clear_faults()
        assert await read_file(ops, file.path) == file.data


async def test_a_response_slower_than_the_timeout_is_eio_within_a_bound(emu, caplog) -> None:
    async with operations(emu, block_size=BLOCK, request_timeout=0.5) as ops:
        file = (await scene_files(ops, emu))[3]
        fh = await _open_first_block(ops, file)
        emu.set_faults(_plan(target="storage", latency_ms=3000))
        took = await _fails_within(
            5 * 0.5 + RETRIES_EXHAUSTED_WITHIN, errno.EIO, lambda: ops.read(fh, BLOCK, BLOCK)
        )
        assert took >= 5 * 0.5
        assert_logged(caplog, file.scene[-1], file.member.split("/")[-1], "Timeout", "EIO")
        emu.clear_faults()
        assert await ops.read(fh, BLOCK, BLOCK) == file.data[BLOCK : 2 * BLOCK]


async def test_signed_url_expiry_mid_read_is_invisible(emu, caplog) -> None:
    caplog.set_level(logging.INFO, logger="pixxelfs")
    async with operations(emu, block_size=BLOCK) as ops:
        file = (await scene_files(ops, emu))[0]
        fh = await _open_first_block(ops, file)
        created = emu.stats()["requests"].get("downloads.create", 0)
        emu.revoke_urls()  # every URL issued so far now answers 403
        rest = await ops.read(fh, BLOCK, len(file.data))
        assert file.data[:BLOCK] + rest == file.data
        assert emu.stats()["requests"]["downloads.create"] == created + 1
        assert any(
            "signed URL refused" in r.getMessage() and file.catalog_id in r.getMessage()
            for r in caplog.records
        )


async def test_package_replaced_mid_read_never_mixes_versions(emu, caplog) -> None:
    async with operations(emu, block_size=BLOCK) as ops:
        old = (await scene_files(ops, emu))[1]
        fh = await _open_first_block(ops, old)
        emu.replace_package(old.catalog_id)
        new_data = (await package_members(emu, old.catalog_id))[old.member]
        assert new_data != old.data
        await _fails_within(5.0, errno.ESTALE, lambda: ops.read(fh, 2 * BLOCK, BLOCK))
        assert_logged(caplog, old.scene[-1], "PackageChangedError", "ESTALE")
        # What the old handle still serves is the old version, never the new one.
        assert await ops.read(fh, 0, BLOCK) == old.data[:BLOCK]
        await ops.release(fh)
        assert await read_file(ops, old.path) == new_data


async def test_api_down_at_mount_time_fails_fast_with_the_cause(emu) -> None:
    emu.set_faults(_plan(target="api", error_rate=1.0, error_status=503, retry_after=0))
    with trio.fail_after(RETRIES_EXHAUSTED_WITHIN), pytest.raises(BaseExceptionGroup) as caught:
        async with operations(emu):
            pass
    # The CLI reports the innermost error of the nursery's group as its one line.
    assert caught.group_contains(ApiUnavailableError, match="HTTP 503", depth=None)


def test_api_unreachable_at_mount_time_exits_1_with_one_line(tmp_path: Path) -> None:
    with running_emulator(EmulatorConfig(scenes=1)) as stopped:
        dead_url = stopped.base_url  # nothing listens there once the block ends
    result = subprocess.run(
        [sys.executable, "-m", "pixxelfs", "mount", str(tmp_path), "--api-url", dead_url],
        env={**os.environ, "PIXXEL_API_KEY": "k"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ConnectError" in lines[0], result.stderr
    assert not os.path.ismount(tmp_path)


async def test_api_down_after_mount_serves_what_is_cached(emu, caplog) -> None:
    async with operations(emu, block_size=BLOCK, metadata_ttl=0.05) as ops:
        cached, uncached = (await scene_files(ops, emu))[:2]
        assert await read_file(ops, cached.path) == cached.data
        emu.set_faults(_plan(target="api", error_rate=1.0, error_status=503, retry_after=0))
        await trio.sleep(0.1)  # the listing TTL is what is being tested: let it lapse
        with trio.fail_after(RETRIES_EXHAUSTED_WITHIN):
            assert (await ops.catalog.tree()).scene_count == 4  # the old snapshot
            assert await read_file(ops, cached.path) == cached.data
            await read_file(ops, (*cached.scene, "metadata.json"))
        await _fails_within(RETRIES_EXHAUSTED_WITHIN, errno.EIO, lambda: lookup(ops, uncached.path))
        assert_logged(caplog, uncached.scene[-1], "HTTP 503", "EIO")
        # Storage down too: blocks in memory are still served.
        emu.set_faults(_plan(target="all", error_rate=1.0, error_status=503, retry_after=0))
        assert await read_file(ops, cached.path) == cached.data
        emu.clear_faults()
        assert await read_file(ops, uncached.path) == uncached.data


async def test_failed_download_resource_is_eio_naming_the_cause(emu, caplog) -> None:
    async with operations(emu, block_size=BLOCK) as ops:
        file = (await scene_files(ops, emu))[2]
        emu.set_faults(FaultPlan(download_mode="failed"))
        await _fails_within(5.0, errno.EIO, lambda: lookup(ops, file.path))
        assert_logged(caplog, file.scene[-1], "DownloadFailedError", "failed", "EIO")
        emu.clear_faults()
        assert await read_file(ops, file.path) == file.data


async def test_download_never_ready_is_eagain_after_the_deadline(emu, caplog) -> None:
    async with operations(emu, block_size=BLOCK, download_timeout=1.0) as ops:
        file = (await scene_files(ops, emu))[3]
        emu.set_faults(FaultPlan(download_mode="never"))
        took = await _fails_within(5.0, errno.EAGAIN, lambda: lookup(ops, file.path))
        assert took >= 1.0
        assert_logged(caplog, file.scene[-1], "DownloadTimeoutError", "not ready", "EAGAIN")
        emu.clear_faults()
        assert await read_file(ops, file.path) == file.data
