"""The reader thread of a device survives whatever its port does, and reports why it has no data.

The ports are real: a regular file that is no tty, and the MEDIBUS simulator on a pseudo-terminal.
"""

from __future__ import annotations

import queue
import termios
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import wait_for

from drivers.base import LinkUp
from drivers.medibus.session import DRIVER, MedibusSession
from drivers.medibus.simulator import SteadyScenario, run_simulator_on_pty
from drivers.transport import Transport, TransportError, open_transport
from edge.device_link import Backoff, DeviceLink, DeviceReport
from edge.twin import DeviceIdentity

FAST_RETRY = Backoff(initial_s=0.02, maximum_s=0.05)


def _link(port: Path, reports: queue.Queue[DeviceReport], **kwargs: Any) -> DeviceLink:
    return DeviceLink(
        identity=DeviceIdentity(
            bed="bed-07", device="vent-1", driver="medibus", protocol="MEDIBUS", port=str(port)
        ),
        session=MedibusSession(),
        line=DRIVER.default_line,
        deliver=reports.put,
        backoff=FAST_RETRY,
        **kwargs,
    )


def _drain(reports: queue.Queue[DeviceReport]) -> list[DeviceReport]:
    drained = []
    while not reports.empty():
        drained.append(reports.get_nowait())
    return drained


@pytest.fixture
def ventilator(tmp_path: Path) -> Iterator[Path]:
    """The MEDIBUS simulator on a real pty; yields the link path."""
    link = tmp_path / "vent-1"
    stop = threading.Event()
    runner = threading.Thread(
        target=run_simulator_on_pty,
        kwargs={"link_path": str(link), "scenario": SteadyScenario(), "stop_event": stop},
        daemon=True,
    )
    runner.start()
    assert wait_for(link.is_symlink, timeout_s=5)
    yield link
    stop.set()
    runner.join(timeout=5)


def test_a_port_that_is_no_tty_is_reported_and_retried_not_fatal(tmp_path: Path) -> None:
    not_a_tty = tmp_path / "ttyUSB0"
    not_a_tty.write_bytes(b"")
    with pytest.raises(TransportError, match="cannot open"):
        open_transport(str(not_a_tty), line=DRIVER.default_line)

    reports: queue.Queue[DeviceReport] = queue.Queue()
    link = _link(not_a_tty, reports)
    link.start()
    try:
        assert wait_for(lambda: reports.qsize() >= 3, timeout_s=5), "it keeps trying"
        assert link.is_alive()
    finally:
        link.stop()
    errors = {r.last_error for r in _drain(reports)}
    assert len(errors) == 1
    assert "cannot open" in str(errors.pop())


def test_an_unexpected_error_from_the_port_driver_does_not_kill_the_reader_thread(ventilator: Path) -> None:
    """pyserial lets termios.error (no OSError) escape when a pty vanishes while it is configured."""
    attempts: list[str] = []

    def flaky_open(url: str, **kwargs: Any) -> Transport:
        attempts.append(url)
        if len(attempts) == 1:
            raise termios.error(22, "Invalid argument")
        return open_transport(url, **kwargs)

    reports: queue.Queue[DeviceReport] = queue.Queue()
    link = _link(ventilator, reports, open_port=flaky_open)
    link.start()
    try:
        seen: list[DeviceReport] = []

        def linked_up() -> bool:
            seen.extend(_drain(reports))
            return any(isinstance(e, LinkUp) for r in seen for e in r.events)

        assert wait_for(linked_up, timeout_s=10), "the link retried and the handshake succeeded"
        assert link.is_alive()
    finally:
        link.stop()
    assert len(attempts) >= 2
    assert "Invalid argument" in str(seen[0].last_error)
    assert not link.is_alive()
