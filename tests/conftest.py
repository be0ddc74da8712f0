"""Shared fixtures for the whole test suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pixxelfs.emulator import Emulator, EmulatorConfig, running_emulator


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    """A running emulator with 12 tiny scenes (seed 1), shared by the session.

    Tests that set faults must clear them again (``emulator.clear_faults()``).
    """
    config = EmulatorConfig(seed=1, scenes=12, width=128, height=128, bands=8)
    with running_emulator(config) as emu:
        yield emu
