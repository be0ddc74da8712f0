"""Helpers for real-mount tests: mount through the CLI in a subprocess, unmount, wait.

The mount runs out of process (a FUSE daemon serving its own test process can deadlock the
kernel). ``pixxelfs mount`` without ``--foreground`` returns only once the daemon reports the
mount ready, so tests never poll for readiness; the daemon's exit is awaited with a pidfd.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

PIXXELFS = [sys.executable, "-m", "pixxelfs"]


def require_fuse() -> None:
    """Skip without FUSE locally; under CI=true a missing FUSE is a failure."""
    problems = []
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse is missing")
    if shutil.which("fusermount3") is None:
        problems.append("fusermount3 is not installed")
    if problems:
        message = "FUSE unavailable: " + ", ".join(problems)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Mount:
    mountpoint: Path
    pid: int
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


def mount(
    mountpoint: Path, api_url: str, api_key: str, *extra: str, log_file: Path | None = None
) -> Mount:
    """``pixxelfs mount`` (daemon mode); returns once the mount is ready."""
    log_file = log_file or mountpoint.with_name(mountpoint.name + ".log")
    if "--cache-dir" not in extra:  # a cold disk cache per mount, never the user's
        extra = (*extra, "--cache-dir", str(mountpoint.with_name(mountpoint.name + ".cache")))
    env = {**os.environ, "PIXXEL_API_KEY": api_key}
    result = subprocess.run(
        [
            *PIXXELFS,
            "mount",
            str(mountpoint),
            "--api-url",
            api_url,
            "--log-file",
            str(log_file),
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = log_file.read_text(errors="replace") if log_file.exists() else ""
    assert result.returncode == 0, f"mount failed: {result.stderr}\n--- daemon log ---\n{log}"
    match = re.search(r"\(pid (\d+),", result.stdout)
    assert match, result.stdout
    assert os.path.ismount(mountpoint)
    return Mount(mountpoint, int(match.group(1)), log_file)


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to exit (pidfd), True if it did."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(fd)


def unmount(m: Mount, timeout: float = 30.0) -> None:
    """``pixxelfs unmount``; the daemon must then exit by itself, leaving no mount."""
    result = subprocess.run(
        [*PIXXELFS, "unmount", str(m.mountpoint)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert wait_for_exit(m.pid, timeout), f"daemon {m.pid} still running after unmount"
    assert not os.path.ismount(m.mountpoint)


def cleanup(m: Mount) -> None:
    """Best effort after a failed test: lazy unmount, then stop the daemon we started."""
    subprocess.run(["fusermount3", "-u", "-z", str(m.mountpoint)], capture_output=True)
    if not wait_for_exit(m.pid, 10):
        os.kill(m.pid, 9)


@contextmanager
def unmounted_after(m: Mount, *, clean_log: bool) -> Iterator[Mount]:
    """Unmount ``m`` when the block ends (checking its log if ``clean_log``); after an error,
    clean up instead (lazy unmount, stop the daemon) and let the error through."""
    try:
        yield m
    except BaseException:
        cleanup(m)
        raise
    unmount(m)
    if clean_log:
        assert_clean_log(m)


def assert_clean_log(m: Mount) -> None:
    """No traceback or unexpected error in the daemon's log."""
    log = m.log()
    assert "Traceback" not in log, log
    assert "unexpected error" not in log, log
