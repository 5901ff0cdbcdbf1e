"""Fixtures of the fault suite."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import MOSQUITTO

from tools.local_broker import LocalMosquitto


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[LocalMosquitto]:
    """A Mosquitto with persistence saved every second (a SIGKILL loses at most 1 s), not yet started."""
    if MOSQUITTO is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed, but CI must run the broker tests (tools/bootstrap.sh)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto); CI installs it")
    instance = LocalMosquitto(directory=tmp_path / "broker", persistence=True, autosave_interval_s=1)
    try:
        yield instance
    finally:
        instance.stop()
