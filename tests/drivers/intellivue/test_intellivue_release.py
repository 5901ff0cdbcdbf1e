"""A stopping device link ends an IntelliVue association with a Release Request (real loopback UDP)."""

from __future__ import annotations

import queue
import socket
import threading
import time

from drivers.intellivue.session import DRIVER, IntellivueOptions, IntellivueSession
from drivers.intellivue.simulator import MonitorSimulator
from drivers.scenario import SteadyPatient
from edge.device_link import DeviceLink
from edge.twin import DeviceIdentity


def test_stopping_the_link_releases_the_association() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    port = sock.getsockname()[1]
    monitor = MonitorSimulator(patient=SteadyPatient(), start_s=time.monotonic(), lan=True)
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            monitor.receive(data, now_s=time.monotonic())
            while out := monitor.data_to_send():
                sock.sendto(out, peer)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    reports: queue.Queue[object] = queue.Queue()
    link = DeviceLink(
        identity=DeviceIdentity(
            bed="bed-01",
            device="mon-1",
            driver="intellivue",
            protocol="IntelliVue",
            port=f"udp://127.0.0.1:{port}",
        ),
        session=IntellivueSession(options=IntellivueOptions(link="lan")),
        line=DRIVER.default_line,
        deliver=reports.put,
    )
    try:
        link.start()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and monitor.requests.get("poll:0006", 0) < 2:
            time.sleep(0.05)
        assert monitor.associated
        link.stop(timeout_s=5.0)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and monitor.associated:
            time.sleep(0.05)
        assert monitor.requests.get("release", 0) == 1
        assert not monitor.associated
    finally:
        link.stop()
        done.set()
        server.join(timeout=2)
        sock.close()
