"""Helpers for the disk-cache, offline and prefetch mount tests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
from pathlib import Path

from pixxelfs.emulator import Emulator


def scene_dirs(mountpoint: Path) -> dict[str, Path]:
    """catalog id -> scene directory, found without listing any scene (no package is read)."""
    scenes: dict[str, Path] = {}
    pending = [mountpoint]
    while pending:
        for entry in os.scandir(pending.pop()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            path = Path(entry.path)
            if "user.pixxel.catalog_id" in os.listxattr(path):
                scenes[os.getxattr(path, "user.pixxel.catalog_id").decode()] = path
            else:
                pending.append(path)
    return scenes


def member_hashes(emulator: Emulator, catalog_id: str) -> dict[str, str]:
    """Member path inside the scene dir -> sha256 of its bytes, from the package itself."""
    with zipfile.ZipFile(emulator.package_path(catalog_id)) as package:
        return {
            info.filename: hashlib.sha256(package.read(info)).hexdigest()
            for info in package.infolist()
            if not info.is_dir()
        }


def read_hashes(scene: Path, names: list[str]) -> dict[str, str]:
    return {name: hashlib.sha256((scene / name).read_bytes()).hexdigest() for name in names}


def storage_requests(emulator: Emulator) -> list[dict]:
    return emulator.stats()["storage_gets"]


def files_bytes(folder: Path) -> int:
    """Bytes every file below ``folder`` takes on disk (allocated: package files are sparse)."""
    total = 0
    for top, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a temporary file just renamed
                total += os.stat(os.path.join(top, name)).st_blocks * 512
    return total
