"""Integration: the simulator on a real pty, the session on the other end through pyserial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import serial

from drivers.base import DriverEvent, LinkUp, MeasurementsReceived, WaveformChunk
from drivers.medibus.session import MedibusOptions, MedibusSession
from drivers.medibus.simulator import SteadyScenario, main, run_simulator_on_pty

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).parents[3]


def _wait_for_link(link: Path, *, timeout_s: float = 5.0, not_target: str | None = None) -> str:
    end_s = time.monotonic() + timeout_s
    while time.monotonic() < end_s:
        if link.is_symlink() and os.readlink(link) != not_target:
            return os.readlink(link)
        time.sleep(0.01)
    raise AssertionError(f"{link} did not appear")


def test_session_over_pyserial_pty_gets_link_up_and_measurements(tmp_path: Path) -> None:
    link = tmp_path / "medibus0"
    stop = threading.Event()
    runner = threading.Thread(
        target=run_simulator_on_pty,
        kwargs={"link_path": str(link), "scenario": SteadyScenario(), "stop_event": stop},
        daemon=True,
    )
    runner.start()
    try:
        _wait_for_link(link)
        port = serial.serial_for_url(
            str(link), baudrate=19200, bytesize=8, parity="E", stopbits=1, timeout=0.02
        )
        session = MedibusSession()
        events = []
        try:
            start_s = time.monotonic()
            session.reset(now_s=start_s)
            while time.monotonic() - start_s < 3.0:
                out = session.data_to_send()
                if out:
                    port.write(out)
                data = port.read(4096)
                now_s = time.monotonic()
                session.receive(data, now_s=now_s)
                if now_s >= session.next_deadline_s():
                    session.poll(now_s=now_s)
                events += session.events()
        finally:
            port.close()
    finally:
        stop.set()
        runner.join(timeout=5.0)
    assert not runner.is_alive()
    assert not link.exists()
    assert isinstance(events[0], LinkUp)
    measured = [e for e in events if isinstance(e, MeasurementsReceived)]
    assert len(measured) >= 2
    assert {m.key: m.value for m in measured[-1].measurements}["ppeak"] == 22.0
    assert session.counters.checksum_errors == 0


def test_restarted_simulator_replaces_the_link(tmp_path: Path) -> None:
    link = tmp_path / "medibus0"
    os.symlink("/nonexistent-old-pty", link)
    first = threading.Thread(
        target=run_simulator_on_pty,
        kwargs={"link_path": str(link), "scenario": SteadyScenario(), "duration_s": 0.3},
    )
    first.start()
    target = _wait_for_link(link, not_target="/nonexistent-old-pty")
    assert Path(target).exists()
    first.join(timeout=5.0)
    assert not link.is_symlink()
    assert main(["--pty", str(link), "--scenario", "steady", "--seconds", "0.2"]) == 0
    assert not link.is_symlink()


def test_standalone_module_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    link = tmp_path / "medibus0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "drivers.medibus.simulator", "--pty", str(link)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_link(link, timeout_s=10.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5.0) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not link.is_symlink()


def test_curves_over_a_real_pty_come_with_the_numerics(tmp_path: Path) -> None:
    link = tmp_path / "medibus0"
    stop = threading.Event()
    runner = threading.Thread(
        target=run_simulator_on_pty,
        kwargs={"link_path": str(link), "scenario": SteadyScenario(), "stop_event": stop},
        daemon=True,
    )
    runner.start()
    events: list[DriverEvent] = []
    try:
        _wait_for_link(link)
        port = serial.serial_for_url(
            str(link), baudrate=19200, bytesize=8, parity="E", stopbits=1, timeout=0.02
        )
        session = MedibusSession(options=MedibusOptions(waves=True))
        try:
            start_s = time.monotonic()
            session.reset(now_s=start_s)
            while time.monotonic() - start_s < 4.0:
                out = session.data_to_send()
                if out:
                    port.write(out)
                data = port.read(4096)
                now_s = time.monotonic()
                session.receive(data, now_s=now_s)
                if now_s >= session.next_deadline_s():
                    session.poll(now_s=now_s)
                events += session.events()
        finally:
            port.close()
    finally:
        stop.set()
        runner.join(timeout=5.0)
    measured = [e for e in events if isinstance(e, MeasurementsReceived)]
    assert len(measured) >= 3
    for signal_name in ("paw", "flow", "volume"):
        samples = [
            v for e in events if isinstance(e, WaveformChunk) and e.signal == signal_name for v in e.samples
        ]
        assert 100 <= len(samples) <= round(4.0 / 0.02), signal_name
        assert None not in samples
    assert session.counters.checksum_errors == 0
    assert session.counters.extra.get("realtime_bad_cycles", 0) == 0
