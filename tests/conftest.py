"""Shared fixtures for the whole test suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pixxelfs.emulator import Emulator, EmulatorConfig, running_emulator


@pytest.fixture(scope="session", autouse=True)
def private_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Mounts started by tests keep their disk caches and logs in a session temp dir,
    never in the user's ~/.cache."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """A running emulator with 12 tiny scenes (seed 1), shared by the session.

    Tests that set faults must clear them again (``emulator.clear_faults()``).
    """
    config = EmulatorConfig(seed=1, scenes=12, width=128, height=128, bands=8)
    with running_emulator(config) as emu:
        yield emu
