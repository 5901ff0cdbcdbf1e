"""Integration: the monitor simulator on a real pty, the session on the other end through the transport."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from drivers.base import LinkUp, MeasurementsReceived
from drivers.datex.session import DRIVER, DatexOptions, DatexSession
from drivers.datex.simulator import main, run_simulator_on_pty
from drivers.scenario import SteadyPatient
from drivers.transport import open_transport

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).parents[3]


def _wait_for_link(link: Path, *, timeout_s: float = 10.0) -> str:
    end_s = time.monotonic() + timeout_s
    while time.monotonic() < end_s:
        if link.is_symlink():
            return os.readlink(link)
        time.sleep(0.01)
    raise AssertionError(f"{link} did not appear")


def test_session_over_the_transport_gets_link_up_and_measurements(tmp_path: Path) -> None:
    link = tmp_path / "monitor0"
    stop = threading.Event()
    runner = threading.Thread(
        target=run_simulator_on_pty,
        kwargs={"link_path": str(link), "patient": SteadyPatient(), "stop_event": stop},
        daemon=True,
    )
    runner.start()
    try:
        _wait_for_link(link)
        transport = open_transport(str(link), line=DRIVER.default_line, read_timeout_s=0.02)
        session = DatexSession(options=DatexOptions(interval_s=1, link_timeout_s=5.0, waves=True))
        events = []
        try:
            start_s = time.monotonic()
            session.reset(now_s=start_s)
            while time.monotonic() - start_s < 3.5:
                out = session.data_to_send()
                if out:
                    transport.write(out)
                data = transport.read(max_bytes=4096)
                now_s = time.monotonic()
                session.receive(data, now_s=now_s)
                if now_s >= session.next_deadline_s():
                    session.poll(now_s=now_s)
                events += session.events()
        finally:
            transport.close()
    finally:
        stop.set()
        runner.join(timeout=5.0)
    assert not runner.is_alive()
    assert not link.exists()
    assert isinstance(events[0], LinkUp)
    measured = [e for e in events if isinstance(e, MeasurementsReceived)]
    assert len(measured) >= 3
    values = {m.key: m.value for m in measured[-1].measurements}
    assert values["hr"] == 78.0
    assert values["abp_mean"] == 85.0
    assert session.counters.checksum_errors == 0
    assert session.counters.frames_in > len(measured)


def test_main_runs_for_its_seconds_and_removes_the_link(tmp_path: Path) -> None:
    link = tmp_path / "monitor0"
    assert main(["--pty", str(link), "--scenario", "desaturation", "--seconds", "0.2"]) == 0
    assert not link.is_symlink()


def test_standalone_module_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    link = tmp_path / "monitor0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "sim", "datex", "--pty", str(link)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_link(link, timeout_s=15.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5.0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not link.is_symlink()
