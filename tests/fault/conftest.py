"""Fixtures of the fault suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import require_mosquitto

from tools.local_broker import LocalMosquitto


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[LocalMosquitto]:
    """A Mosquitto with persistence saved every second (a SIGKILL loses at most 1 s), not yet started."""
    require_mosquitto()
    instance = LocalMosquitto(directory=tmp_path / "broker", persistence=True, autosave_interval_s=1)
    try:
        yield instance
    finally:
        instance.stop()
