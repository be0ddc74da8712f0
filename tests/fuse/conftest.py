"""Fixtures for real mounts against the emulator on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuse.util import Mount, mount, require_fuse, unmounted_after


@pytest.fixture(scope="module")
def mounted(emulator, tmp_path_factory) -> Iterator[Mount]:
    """The shared emulator's catalog, mounted for the whole test module."""
    require_fuse()
    mountpoint: Path = tmp_path_factory.mktemp("mnt")
    with unmounted_after(
        mount(mountpoint, emulator.base_url, emulator.api_key, "--metadata-ttl", "2"),
        clean_log=True,
    ) as m:
        yield m
