"""A faithful local Pixxel API and object storage, with synthetic data and fault injection.

Entry points: :func:`running_emulator` (sync, background thread), :func:`serve_emulator` (async,
current trio loop) and ``pixxelfs.emulator.cli`` for the command line.
"""

from __future__ import annotations

from pixxelfs.emulator.config import EmulatorConfig as EmulatorConfig
from pixxelfs.emulator.faults import FaultPlan as FaultPlan
from pixxelfs.emulator.faults import FaultRule as FaultRule
from pixxelfs.emulator.server import Emulator as Emulator
from pixxelfs.emulator.server import running_emulator as running_emulator
from pixxelfs.emulator.server import serve_emulator as serve_emulator

__all__ = [
    "Emulator",
    "EmulatorConfig",
    "FaultPlan",
    "FaultRule",
    "running_emulator",
    "serve_emulator",
]
