"""Listener link over real loopback TCP: several senders at once, a stalled sender blocks nobody,
connection limit, idle time-out, bind failure shown and retried, link up/down."""

from __future__ import annotations

import queue
import socket
import time

import hl7
import pytest

from drivers.base import LinkDown, LinkUp, MeasurementsReceived
from drivers.hl7.mllp import MllpFramer, wrap
from drivers.hl7.session import Hl7Options, Hl7Session
from edge.device_link import Backoff, DeviceReport
from edge.listener_link import ListenerLink
from edge.twin import DeviceIdentity

IDENTITY = DeviceIdentity(
    bed="bed-01", device="monitor", driver="hl7", protocol="HL7v2/MLLP", port="listen://x"
)


def _message(control_id: str, hr: int) -> bytes:
    return (
        f"MSH|^~\\&|Mindray|Gateway|||||ORU^R01|{control_id}|P|2.3.1|\rOBX||NM|101^HR|2101|{hr}||||||F\r"
    ).encode()


class _Reports:
    def __init__(self) -> None:
        self.queue: queue.Queue[DeviceReport] = queue.Queue()
        self.seen: list[DeviceReport] = []

    def deliver(self, report: DeviceReport) -> None:
        self.queue.put(report)

    def wait_for(self, predicate: object, *, timeout_s: float = 10.0) -> DeviceReport:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                report = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(report)
            if predicate(report):  # type: ignore[operator]
                return report
        raise AssertionError("no matching report")

    def hr_values(self) -> list[float | None]:
        return [
            m.value
            for r in self.seen
            for e in r.events
            if isinstance(e, MeasurementsReceived)
            for m in e.measurements
            if m.key == "hr"
        ]


def _start(reports: _Reports, **kwargs: object) -> ListenerLink:
    options = kwargs.pop("options", Hl7Options())
    link = ListenerLink(
        identity=IDENTITY,
        listen="127.0.0.1:0",
        session_factory=lambda: Hl7Session(options=options),  # type: ignore[arg-type]
        deliver=reports.deliver,
        **kwargs,  # type: ignore[arg-type]
    )
    link.start()
    deadline = time.monotonic() + 5
    while link.bound_port is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert link.bound_port is not None
    return link


@pytest.fixture
def reports() -> _Reports:
    return _Reports()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(5)
    return sock


def _ack(sock: socket.socket) -> hl7.Message:
    framer, blocks = MllpFramer(), []
    while not blocks:
        data = sock.recv(4096)
        assert data, "connection closed before the ACK"
        blocks = framer.feed(data)
    return hl7.parse(blocks[0].payload.decode())  # type: ignore[union-attr]


def test_several_senders_at_once_each_get_their_acks_and_all_values_reach_the_bed(reports: _Reports) -> None:
    link = _start(reports)
    try:
        assert link.bound_port is not None
        senders = [_connect(link.bound_port) for _ in range(3)]
        blocks = [wrap(_message(f"S{n}", 60 + n)) for n in range(3)]
        # Interleave halves: every connection has its own framer state.
        for sock, block in zip(senders, blocks, strict=True):
            sock.sendall(block[:20])
        for sock, block in zip(senders, blocks, strict=True):
            sock.sendall(block[20:])
        for n, sock in enumerate(senders):
            ack = _ack(sock)
            assert [str(ack.segment("MSA")(i)) for i in (1, 2)] == ["AA", f"S{n}"]
        reports.wait_for(lambda r: len(reports.hr_values()) == 3)
        assert sorted(v for v in reports.hr_values() if v is not None) == [60.0, 61.0, 62.0]
        assert any(isinstance(e, LinkUp) for r in reports.seen for e in r.events)
        counters = link.counters()
        assert counters["connections_accepted"] == 3
        assert counters["acks_aa"] == 3
        for sock in senders:
            sock.close()
    finally:
        link.stop()
    assert not link.is_alive()


def test_a_stalled_sender_does_not_block_another(reports: _Reports) -> None:
    link = _start(reports)
    try:
        assert link.bound_port is not None
        stalled = _connect(link.bound_port)
        stalled.sendall(wrap(_message("STALL", 70))[:30])  # half a block, then silence
        silent = _connect(link.bound_port)  # connected, sends nothing, reads nothing
        quick = _connect(link.bound_port)
        for n in range(5):
            quick.sendall(wrap(_message(f"Q{n}", 80 + n)))
            assert str(_ack(quick).segment("MSA")(2)) == f"Q{n}"
        stalled.sendall(wrap(_message("STALL", 70))[30:])
        assert str(_ack(stalled).segment("MSA")(2)) == "STALL"
        for sock in (stalled, silent, quick):
            sock.close()
    finally:
        link.stop()


def test_connections_beyond_the_limit_are_closed_and_counted(reports: _Reports) -> None:
    link = _start(reports, max_connections=1)
    try:
        assert link.bound_port is not None
        first = _connect(link.bound_port)
        first.sendall(wrap(_message("A", 60)))
        _ack(first)
        second = _connect(link.bound_port)
        assert second.recv(10) == b""  # closed by the listener
        reports.wait_for(lambda r: r.counters.get("connections_refused") == 1)
        first.sendall(wrap(_message("B", 61)))
        assert str(_ack(first).segment("MSA")(2)) == "B"
        first.close()
        second.close()
    finally:
        link.stop()


def test_idle_connection_is_closed_and_the_link_goes_down_after_the_linger(reports: _Reports) -> None:
    link = _start(reports, options=Hl7Options(idle_timeout_s=1.0), linger_s=0.5)
    try:
        assert link.bound_port is not None
        sock = _connect(link.bound_port)
        sock.sendall(wrap(_message("A", 60)))
        _ack(sock)
        assert sock.recv(10) == b""  # the idle time-out closed it
        report = reports.wait_for(lambda r: any(isinstance(e, LinkDown) for e in r.events))
        assert report.last_error == "no sender connected for 0.5 s"
        assert report.counters["timeouts"] == 1
        sock.close()
    finally:
        link.stop()


def test_bind_failure_is_reported_and_retried_until_the_port_is_free(reports: _Reports) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    link = ListenerLink(
        identity=IDENTITY,
        listen=f"127.0.0.1:{port}",
        session_factory=Hl7Session,
        deliver=reports.deliver,
        backoff=Backoff(initial_s=0.05, maximum_s=0.1),
    )
    link.start()
    try:
        report = reports.wait_for(lambda r: r.last_error is not None)
        assert report.last_error is not None
        assert "cannot listen" in report.last_error
        assert link.is_alive()
        holder.close()
        reports.wait_for(lambda r: r.last_error is None and link.bound_port == port)
        sock = _connect(port)
        sock.sendall(wrap(_message("A", 60)))
        assert str(_ack(sock).segment("MSA")(1)) == "AA"
        sock.close()
        assert link.counters()["bind_failures"] >= 1
    finally:
        holder.close()
        link.stop()
