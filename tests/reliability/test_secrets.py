"""Secrets never leak: everything a debug-level mount writes is free of the API key and of full
signed URLs; loose key files are refused; mounts are private unless ``allow_other`` is asked.

The daemon is driven through the paths that log the most: first contact, signed-URL renewal,
retried 5xx, and an API error whose body echoes the key and a signed URL back.
(``/proc/PID/environ`` is out of scope: the key arrives through the environment by design.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixxelfs.emulator import Emulator, EmulatorConfig, FaultPlan, FaultRule, running_emulator
from pixxelfs.emulator.hostile import HostilePlan, RawAnswer
from tests.fuse.util import PIXXELFS, Mount, cleanup, mount, require_fuse, unmount

pytestmark = pytest.mark.fuse

KEY = "pxl-live-7f3a9c1e5b2d4f6a8c0e"
# A signed URL's credential is its query string: the signature, or any query after the path.
SIGNED = re.compile(r"(X-Amz-Signature=[0-9a-f]|pixxel-deliveries/[^\s\"']*\?X-Amz)", re.I)


@pytest.fixture(scope="module")
def emu() -> Iterator[Emulator]:
    # GeoTIFFs of 16 MiB: reading the small files leaves most of their bytes uncached, so the
    # large files need storage after the URLs are revoked.
    config = EmulatorConfig(seed=41, scenes=3, api_key=KEY, width=1024, height=1024)
    with running_emulator(config) as emulator:
        yield emulator


def _leaks(text: str) -> list[str]:
    found = [KEY] if KEY in text else []
    return found + [m.group(0) for m in SIGNED.finditer(text)]


def _everything_visible(m: Mount, max_size: int | None = None) -> str:
    """Every file's bytes (up to ``max_size``) and every xattr value in the mount, as text."""
    parts = []
    for path in sorted(m.mountpoint.rglob("*")):
        for name in os.listxattr(path):
            parts.append(os.getxattr(path, name).decode("utf-8", "replace"))
        if path.is_file() and (max_size is None or path.stat().st_size <= max_size):
            try:
                parts.append(path.read_bytes().decode("utf-8", "replace"))
            except OSError:  # a file the echoed error below made unreadable
                continue
    return "\n".join(parts)


def test_nothing_the_daemon_writes_holds_the_key_or_a_signed_url(emu, tmp_path) -> None:
    require_fuse()
    (tmp_path / "mnt").mkdir()
    m = mount(tmp_path / "mnt", emu.base_url, KEY, "--debug")
    try:
        signed_echo = f"{emu.base_url}/storage/pixxel-deliveries/x/y.zip?X-Amz-Signature=abc123"
        echo = {"error": {"code": "bad", "message": f"key {KEY} url {signed_echo}"}}
        emu.set_hostile(HostilePlan(answers={"downloads.create": RawAnswer(400, json.dumps(echo))}))
        scene = next(p for p in m.mountpoint.glob("*/*/*/*") if p.is_dir())
        with pytest.raises(OSError):
            os.listdir(scene)  # the API's error, echoing the key and a URL, is logged
        emu.clear_hostile()
        emu.set_faults(FaultPlan(rules=(FaultRule(target="all", fail_calls=(1, 2)),)))
        visible = _everything_visible(m, max_size=64 << 10)  # first contact, retries
        emu.clear_faults()
        emu.revoke_urls()
        visible += _everything_visible(m)  # the large files: renewals after 403
        stats = m.mountpoint / ".pixxelfs" / "stats.json"
        if stats.exists():
            visible += stats.read_text()
        cmdline = Path(f"/proc/{m.pid}/cmdline").read_bytes().decode().replace("\0", " ")
        mounts = Path("/proc/mounts").read_text()
    except BaseException:
        cleanup(m)
        raise
    finally:
        emu.clear_hostile()
        emu.clear_faults()
    unmount(m)
    log = m.log()
    assert "DEBUG" in log and "renewing" in log and "HTTP 400" in log, log[-2000:]
    assert "<redacted>" in log
    for where, text in (("log", log), ("files", visible), ("cmdline", cmdline)):
        assert _leaks(text) == [], where
    (options,) = [
        line.split()[3] for line in mounts.splitlines() if line.split()[1] == str(m.mountpoint)
    ]
    assert "allow_other" not in options.split(",")
    assert f"user_id={os.getuid()}" in options.split(",")


def test_a_key_file_others_can_read_is_refused(emu, tmp_path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o640)
    env = {k: v for k, v in os.environ.items() if k != "PIXXEL_API_KEY"}
    command = [*PIXXELFS, "mount", str(tmp_path), "--api-url", emu.base_url]
    result = subprocess.run(
        [*command, "--api-key-file", str(key_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "chmod 600" in result.stderr and KEY not in result.stderr + result.stdout
    assert not os.path.ismount(tmp_path)
