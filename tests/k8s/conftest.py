"""Fixtures for the operator tests against the strict API emulator."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kube_emulator import EmulatorThread


@pytest.fixture()
def emu() -> Iterator[EmulatorThread]:
    """A fresh strict emulator on a loopback port, in its own thread."""
    with EmulatorThread() as thread:
        yield thread
