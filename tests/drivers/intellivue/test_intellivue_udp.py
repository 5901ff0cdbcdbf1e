"""udp:// transport (one datagram per read and write) and the IntelliVue session over real loopback UDP."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from drivers.base import LinkUp, MeasurementsReceived, SerialSettings
from drivers.intellivue.session import DRIVER, IntellivueOptions, IntellivueSession
from drivers.intellivue.simulator import run_on_udp
from drivers.scenario import SteadyPatient
from drivers.transport import PortBusy, TransportError, open_transport, udp_identity

LINE = SerialSettings(baud=115200, parity="N")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def peer() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    try:
        yield sock
    finally:
        sock.close()


def test_udp_transport_reads_and_writes_whole_datagrams(peer: socket.socket) -> None:
    port = peer.getsockname()[1]
    transport = open_transport(f"udp://127.0.0.1:{port}", line=LINE, read_timeout_s=0.5)
    try:
        transport.write(b"first")
        transport.write(b"second")
        data, client = peer.recvfrom(100)
        assert data == b"first"
        assert peer.recv(100) == b"second"
        peer.sendto(b"A" * 3000, client)
        peer.sendto(b"B", client)
        assert transport.read(max_bytes=16) == b"A" * 3000  # never split, whatever max_bytes says
        assert transport.read(max_bytes=16) == b"B"
        assert transport.read(max_bytes=16) == b""  # the time-out, not an error
    finally:
        transport.close()


def test_udp_address_is_claimed_once_per_process(peer: socket.socket) -> None:
    port = peer.getsockname()[1]
    first = open_transport(f"udp://127.0.0.1:{port}", line=LINE)
    try:
        with pytest.raises(PortBusy, match="port busy"):
            open_transport(f"udp://127.000.0.1:{port}", line=LINE)
    finally:
        first.close()
    open_transport(f"udp://127.0.0.1:{port}", line=LINE).close()
    assert udp_identity(f"udp://LOCALHOST.:{port}") == f"udp://localhost:{port}"


def test_udp_to_a_closed_port_is_a_transport_error() -> None:
    port = _free_udp_port()
    transport = open_transport(f"udp://127.0.0.1:{port}", line=LINE, read_timeout_s=0.5)
    try:
        transport.write(b"anyone?")
        with pytest.raises(TransportError, match="read failed"):
            transport.read(max_bytes=100)
    finally:
        transport.close()


def test_session_and_simulator_over_loopback_udp() -> None:
    port = _free_udp_port()
    stop = threading.Event()
    monitor = threading.Thread(
        target=run_on_udp,
        kwargs={
            "host": "127.0.0.1",
            "port": port,
            "stop": stop,
            "duration_s": 20.0,
            "patient": SteadyPatient(),
        },
        daemon=True,
    )
    monitor.start()
    time.sleep(0.2)
    session = IntellivueSession(options=IntellivueOptions())
    transport = open_transport(f"udp://127.0.0.1:{port}", line=DRIVER.default_line, read_timeout_s=0.05)
    events = []
    try:
        session.reset(now_s=time.monotonic())
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not any(isinstance(e, MeasurementsReceived) for e in events):
            while out := session.data_to_send():
                transport.write(out)
            data = transport.read(max_bytes=4096)
            now_s = time.monotonic()
            if data:
                session.receive(data, now_s=now_s)
            if now_s >= session.next_deadline_s():
                session.poll(now_s=now_s)
            events += session.events()
    finally:
        transport.close()
        stop.set()
        monitor.join(timeout=5)
    assert session.link == "lan"
    assert any(isinstance(e, LinkUp) for e in events)
    reading = next(e for e in events if isinstance(e, MeasurementsReceived))
    assert {x.key: x.value for x in reading.measurements}["hr"] == 78.0
