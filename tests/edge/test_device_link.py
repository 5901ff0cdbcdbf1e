"""The reader thread of a device survives whatever its port does, and reports why it has no data.

The ports are real: a regular file that is no tty, and the MEDIBUS simulator on a pseudo-terminal.
"""

from __future__ import annotations

import queue
import socket
import termios
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import wait_for

from drivers.base import LinkUp, MeasurementsReceived
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


def _bed_link(bed: str, port: Path | str, reports: queue.Queue[DeviceReport]) -> DeviceLink:
    return DeviceLink(
        identity=DeviceIdentity(
            bed=bed, device="vent-1", driver="medibus", protocol="MEDIBUS", port=str(port)
        ),
        session=MedibusSession(),
        line=DRIVER.default_line,
        deliver=reports.put,
        backoff=FAST_RETRY,
    )


def test_two_links_on_one_port_one_via_a_symlink_alias_only_one_gets_data(
    ventilator: Path, tmp_path: Path
) -> None:
    """Defence in depth behind `config check`: the port is exclusive, so no value can cross beds."""
    alias = tmp_path / "by-id-alias"
    alias.symlink_to(ventilator)
    reports = {"b1": queue.Queue[DeviceReport](), "b2": queue.Queue[DeviceReport]()}
    links = [_bed_link("b1", ventilator, reports["b1"]), _bed_link("b2", alias, reports["b2"])]
    seen: dict[str, list[DeviceReport]] = {"b1": [], "b2": []}

    def measured(bed: str) -> int:
        return sum(isinstance(e, MeasurementsReceived) for r in seen[bed] for e in r.events)

    def settled() -> bool:
        for bed, box in reports.items():
            seen[bed].extend(_drain(box))
        return max(measured("b1"), measured("b2")) >= 3 and min(len(seen["b1"]), len(seen["b2"])) >= 3

    for link in links:
        link.start()
    try:
        assert wait_for(settled, timeout_s=15), "one link measures, the other keeps reporting"
    finally:
        for link in links:
            link.stop()
    winner, loser = ("b1", "b2") if measured("b1") else ("b2", "b1")
    assert measured(winner) >= 3
    assert measured(loser) == 0, "a value reached the other bed"
    assert not any(isinstance(e, LinkUp) for r in seen[loser] for e in r.events)
    errors = {r.last_error for r in seen[loser]}
    assert errors
    assert all("port busy" in str(e) for e in errors), errors


def test_a_second_open_of_one_socket_port_is_refused_until_the_first_closes() -> None:
    """A TCP serial bridge may serve two connections; one appliance never opens it twice."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        url = f"socket://127.0.0.1:{server.getsockname()[1]}"
        first = open_transport(url, line=DRIVER.default_line)
        try:
            with pytest.raises(TransportError, match="port busy"):
                open_transport(url.replace("127.0.0.1", "127.000.0.1"), line=DRIVER.default_line)
        finally:
            first.close()
        open_transport(url, line=DRIVER.default_line).close()


def test_link_names_of_different_beds_never_collide() -> None:
    """Ids may contain '-': bed a-b device c and bed a device b-c must stay two watchdog components."""
    reports: queue.Queue[DeviceReport] = queue.Queue()
    one = DeviceLink(
        identity=DeviceIdentity(bed="a-b", device="c", driver="medibus", protocol="MEDIBUS", port="loop://"),
        session=MedibusSession(),
        line=DRIVER.default_line,
        deliver=reports.put,
    )
    other = DeviceLink(
        identity=DeviceIdentity(bed="a", device="b-c", driver="medibus", protocol="MEDIBUS", port="loop://"),
        session=MedibusSession(),
        line=DRIVER.default_line,
        deliver=reports.put,
    )
    assert one.name != other.name


class _CountingTransport:
    """The real transport of a pty, counting how often the link waits and reads."""

    def __init__(self, inner: Transport) -> None:
        self.url = inner.url
        self._inner = inner
        self.waits = 0
        self.reads = 0

    def wait_readable(self, *, timeout_s: float, wake_fd: int) -> bool:
        self.waits += 1
        return self._inner.wait_readable(timeout_s=timeout_s, wake_fd=wake_fd)

    def read(self, *, max_bytes: int) -> bytes:
        self.reads += 1
        return self._inner.read(max_bytes=max_bytes)

    def write(self, data: bytes) -> None:
        self._inner.write(data)

    def close(self) -> None:
        self._inner.close()


@pytest.fixture
def silent_device(tmp_path: Path) -> Iterator[Path]:
    """A pty whose device side is open and never answers (a device switched to standby)."""
    import os
    import pty

    controller, device = pty.openpty()
    link = tmp_path / "silent"
    link.symlink_to(os.ttyname(device))
    yield link
    os.close(controller)
    os.close(device)


def test_a_silent_device_is_never_read_without_data_and_its_link_sleeps_between_deadlines(
    silent_device: Path,
) -> None:
    """No polling period: the thread reads only when bytes wait, and wakes for deadlines, not every 50 ms."""
    opened: list[_CountingTransport] = []

    def counting_open(url: str, **kwargs: Any) -> Transport:
        opened.append(_CountingTransport(open_transport(url, **kwargs)))
        return opened[-1]

    reports: queue.Queue[DeviceReport] = queue.Queue()
    link = _link(silent_device, reports, open_port=counting_open)
    link.start()
    try:
        assert wait_for(lambda: bool(opened), timeout_s=5)
        threading.Event().wait(3.0)
    finally:
        link.stop()
    transport = opened[0]
    assert transport.reads == 0, "nothing arrived, so nothing was read"
    # The handshake's retries and the 1 s reports wake it; a 50 ms polling read would be ~60 here.
    assert transport.waits <= 15, transport.waits


def test_stopping_a_link_wakes_its_thread_at_once(silent_device: Path) -> None:
    reports: queue.Queue[DeviceReport] = queue.Queue()
    link = _link(silent_device, reports)
    link.start()
    assert wait_for(lambda: not reports.empty(), timeout_s=5)
    link.stop(timeout_s=0.3)
    assert not link.is_alive(), "stop() must not wait for the thread's select to time out"
