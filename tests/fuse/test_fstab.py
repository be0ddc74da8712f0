"""Linux conventions: the mount.pixxelfs helper, an /etc/fstab line and the systemd unit.

The real-mount tests go through mount(8) and umount(8) exactly as the system would: mount(8)
finds /sbin/mount.fuse.pixxelfs (linked by scripts/setup), which runs ``pixxelfs mount``.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixxelfs.mount_helper import translate
from tests.fuse.util import require_fuse, wait_for_exit

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "docs" / "systemd" / "mnt-pixxel.mount"
HELPER = Path("/sbin/mount.fuse.pixxelfs")


def test_helper_sorts_mount_fuse_and_pixxelfs_options() -> None:
    argv = translate(
        "pixxelfs#http://127.0.0.1:9/",
        "/mnt/p",
        ["api_key_file=/k", "allow_other", "_netdev", "ro", "x-systemd.automount", "debug"],
    )
    assert argv == [
        "mount", "/mnt/p", "--api-url", "http://127.0.0.1:9/", "--api-key-file", "/k",
        "--debug", "-o", "allow_other",
    ]  # fmt: skip
    assert translate("pixxelfs", "/m", ["metadata_ttl=5"]) == ["mount", "/m", "--metadata-ttl", "5"]


def test_helper_refuses_a_value_option_without_value(capsys) -> None:
    from pixxelfs.mount_helper import main

    assert main(["pixxelfs", "/m", "-o", "api_key_file"]) == 2
    assert "api_key_file needs a value" in capsys.readouterr().err


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_systemd_unit_is_valid() -> None:
    mount = _unit()["Mount"]
    assert mount["Type"] == "fuse.pixxelfs"
    assert UNIT.stem == mount["Where"].strip("/").replace("-", "\\x2d").replace("/", "-")
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed; checked the syntax only")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(UNIT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def system_mount(emulator, tmp_path: Path) -> Iterator[dict]:
    """What a system mount needs: root, the helper linked, a key file, an empty mount point."""
    require_fuse()
    if os.geteuid() != 0:
        pytest.skip("mount(8) of a FUSE type needs root")
    if HELPER.resolve() != (ROOT / ".venv" / "bin" / "mount.pixxelfs"):
        message = f"{HELPER} does not point at this checkout: run scripts/setup"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    key_file = tmp_path / "pixxel.key"
    key_file.write_text(emulator.api_key + "\n")
    key_file.chmod(0o600)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    context = {"key": key_file, "mnt": mountpoint, "log": tmp_path / "daemon.log"}
    yield context
    if os.path.ismount(mountpoint):
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def _mounted_and_unmounted(result: subprocess.CompletedProcess, mountpoint: Path) -> None:
    """The mount works like any other: findmnt knows it, it serves, umount ends the daemon."""
    assert result.returncode == 0, result.stderr
    pid = int(re.search(r"\(pid (\d+),", result.stdout).group(1))  # type: ignore[union-attr]
    found = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE,OPTIONS", str(mountpoint)], capture_output=True, text=True
    ).stdout
    assert found.startswith("fuse.pixxelfs") and "ro," in found and "allow_other" in found
    root = json.loads((mountpoint / "catalog.json").read_text())
    assert root["type"] == "Catalog" and root["links"]
    subprocess.run(["umount", str(mountpoint)], check=True, timeout=60)
    assert wait_for_exit(pid, 30), "the daemon kept running after umount"
    assert not os.path.ismount(mountpoint)


def test_fstab_line_mounts_with_mount_and_unmounts_with_umount(
    system_mount: dict, emulator, tmp_path: Path
) -> None:
    fstab = tmp_path / "fstab"
    options = f"api_key_file={system_mount['key']},log_file={system_mount['log']},allow_other"
    fstab.write_text(
        f"{emulator.base_url} {system_mount['mnt']} fuse.pixxelfs {options},_netdev,nofail 0 0\n"
    )
    result = subprocess.run(
        ["mount", "--fstab", str(fstab), str(system_mount["mnt"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    _mounted_and_unmounted(result, system_mount["mnt"])


def test_systemd_unit_options_mount_as_systemd_would(system_mount: dict, emulator) -> None:
    """systemd runs ``mount What Where -t Type -o Options``; only the key path and URL differ."""
    unit = _unit()["Mount"]
    options = unit["Options"].replace("/etc/pixxel.key", str(system_mount["key"]))
    command = [
        "mount", emulator.base_url, str(system_mount["mnt"]), "-t", unit["Type"],
        "-o", f"{options},log_file={system_mount['log']}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    _mounted_and_unmounted(result, system_mount["mnt"])
