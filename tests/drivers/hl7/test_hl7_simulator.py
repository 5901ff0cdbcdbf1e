"""HL7 simulator against the real listener on loopback: waits for ACKs, reconnects until it is heard."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from drivers.base import MeasurementsReceived
from drivers.hl7.session import Hl7Session
from drivers.hl7.simulator import OruBuilder, SenderStats, main, run_sender
from drivers.scenario import PATIENTS
from edge.device_link import Backoff, DeviceReport
from edge.listener_link import ListenerLink
from edge.twin import DeviceIdentity


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_sender_started_before_the_listener_reconnects_and_is_acknowledged() -> None:
    port = _free_port()
    stop = threading.Event()
    result: list[SenderStats] = []
    sender = threading.Thread(
        target=lambda: result.append(
            run_sender(
                host="127.0.0.1",
                port=port,
                patient=PATIENTS["desaturation"](),
                builder=OruBuilder(style="pcd01", bed="bed-01"),
                interval_s=0.1,
                stop_event=stop,
                duration_s=20.0,
            )
        )
    )
    sender.start()
    reports: list[DeviceReport] = []
    link = ListenerLink(
        identity=DeviceIdentity(bed="b", device="m", driver="hl7", protocol="HL7", port=f"listen://{port}"),
        listen=f"127.0.0.1:{port}",
        session_factory=Hl7Session,
        deliver=reports.append,
        backoff=Backoff(initial_s=0.05, maximum_s=0.1),
    )
    time.sleep(1.0)  # the sender meets a closed port first
    link.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and link.counters().get("acks_aa", 0) < 3:
            time.sleep(0.05)
    finally:
        stop.set()
        sender.join(timeout=10)
        link.stop()
    stats = result[0]
    assert stats.reconnects >= 1
    assert stats.acked >= 3
    assert stats.refused == 0
    keys = {
        m.key
        for r in reports
        for e in r.events
        if isinstance(e, MeasurementsReceived)
        for m in e.measurements
    }
    assert {"hr", "spo2", "nbp_sys", "temp"} <= keys


def test_main_refuses_a_bad_address() -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--to", "nohostport"])
    assert exit_info.value.code == 2
