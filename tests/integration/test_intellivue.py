"""IntelliVue end to end: monitor simulator process (pty or UDP) -> daemon process -> real Mosquitto.

Real parts only: `icu-edge sim intellivue` serves a pseudo-terminal (MIB/RS232) or a loopback UDP
port (LAN), `icu-edge run` reads it with the driver's default `link = "auto"` (it finds the framed
or the datagram form by itself), Mosquitto runs on a free loopback port, and the assertions read the
retained twin and device status a central station would receive.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, Received, Subscriber, wait_for

from edge.model import DeviceStatusMessage, TwinMessage

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT = "icu/v1/hosp-a/icu-3"
BED = f"{ROOT}/bed/bed-05"
DEVICE_TOPIC = f"{BED}/device/mon-1"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class MonitorBed:
    """One bed with an IntelliVue monitor: simulator and daemon as processes."""

    def __init__(self, *, workdir: Path, broker: MosquittoBroker) -> None:
        self.workdir = workdir
        self.broker = broker
        self.link = workdir / "mon-1"
        self.processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", *argv],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else "(no log)"

    def start(self, *, udp: bool, demo: bool = False) -> None:
        """Start the monitor (pty or UDP) and the daemon on a config that names it."""
        sim = ["tools.cli", "sim", "intellivue", "--scenario", "steady"] + (["--demo"] if demo else [])
        if udp:
            port = _free_udp_port()
            self._spawn("simulator", [*sim, "--udp", f"127.0.0.1:{port}"])
            where = f'address = "udp://127.0.0.1:{port}"'
        else:
            self._spawn("simulator", [*sim, "--pty", str(self.link)])
            if not wait_for(
                lambda: self.link.exists() and os.path.exists(os.path.realpath(self.link)), timeout_s=15
            ):
                raise AssertionError(f"simulator did not create its pty link: {self.log('simulator')}")
            where = f'port = "{self.link}"\nbaud = 115200'
        config = self.workdir / "config.toml"
        config.write_text(
            f"""
[appliance]
id = "edge-0001"
site = "hosp-a"
ward = "icu-3"

[mqtt]
host = "127.0.0.1"
port = {self.broker.port}
keepalive = 5
insecure = true
reconnect_min_s = 0.1
reconnect_max_s = 0.5

[store]
path = "{self.workdir / "outbox.db"}"
synchronous = "normal"

[engines]
enabled = false

[[bed]]
id = "bed-05"

[[bed.device]]
id = "mon-1"
driver = "intellivue"
{where}

[bed.device.options]
poll_interval_s = 1.0
""",
            encoding="utf-8",
        )
        self._spawn("daemon", ["edge.cli", "run", "--config", str(config)])

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def monitor_bed(tmp_path: Path, broker: MosquittoBroker) -> Iterator[MonitorBed]:
    bed = MonitorBed(workdir=tmp_path, broker=broker)
    try:
        yield bed
    finally:
        bed.close()


def _latest(messages: list[Received], topic: str) -> dict[str, object] | None:
    on_topic = [m for m in messages if m.topic == topic and m.payload]
    return json.loads(on_topic[-1].payload) if on_topic else None


def _twin_has_monitor_values(messages: list[Received]) -> bool:
    twin = _latest(messages, f"{BED}/twin")
    values = twin.get("values", {}) if twin else {}
    return isinstance(values, dict) and {"hr", "spo2", "abp_sys", "abp_mean"} <= set(values)


@pytest.mark.parametrize("udp", [False, True], ids=["pty", "udp"])
def test_monitor_values_reach_the_retained_twin(
    monitor_bed: MonitorBed, subscribe: Callable[..., Subscriber], udp: bool
) -> None:
    live = subscribe(f"{ROOT}/#")
    monitor_bed.start(udp=udp)
    try:
        live.wait_for(_twin_has_monitor_values, timeout_s=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{monitor_bed.log('daemon')}\n{monitor_bed.log('simulator')}") from exc
    late = subscribe(f"{BED}/#")
    messages = late.wait_for(lambda ms: any(m.retain and m.topic == f"{BED}/twin" for m in ms), timeout_s=10)
    twin = TwinMessage.model_validate_json(
        next(m for m in messages if m.retain and m.topic == f"{BED}/twin").payload
    )
    assert twin.values["hr"].value == pytest.approx(78.0)
    assert twin.values["hr"].unit == "/min"
    assert twin.values["hr"].device == "mon-1"
    assert twin.values["spo2"].value == pytest.approx(97.0)
    assert twin.values["spo2"].device == "mon-1"
    assert twin.values["abp_sys"].value == pytest.approx(118.0)
    assert twin.values["abp_mean"].value == pytest.approx(85.0)
    assert twin.values["abp_mean"].unit == "mm[Hg]"
    assert twin.values["temp"].value == pytest.approx(37.1)
    assert twin.devices["mon-1"].connected
    assert twin.devices["mon-1"].protocol == "IntelliVue"
    statuses = late.wait_for(lambda ms: any(m.topic == DEVICE_TOPIC for m in ms), timeout_s=10)
    device = DeviceStatusMessage.model_validate_json(
        [m for m in statuses if m.topic == DEVICE_TOPIC][-1].payload
    )
    assert device.status.model == "icu-edge SimMonitor"
    assert device.status.counters["checksum_errors"] == 0
    assert device.status.counters["handshakes"] >= 1


def test_demo_monitor_values_never_reach_the_twin(
    monitor_bed: MonitorBed, subscribe: Callable[..., Subscriber]
) -> None:
    live = subscribe(f"{ROOT}/#")
    monitor_bed.start(udp=False, demo=True)

    def refused_for_a_while(messages: list[Received]) -> bool:
        status = _latest(messages, DEVICE_TOPIC) or {}
        counters = (
            status.get("status", {}).get("counters", {}) if isinstance(status.get("status"), dict) else {}
        )
        return isinstance(counters, dict) and counters.get("demo_values_refused", 0) >= 3 * 14

    try:
        messages = live.wait_for(refused_for_a_while, timeout_s=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{monitor_bed.log('daemon')}\n{monitor_bed.log('simulator')}") from exc
    status = DeviceStatusMessage.model_validate_json(
        [m for m in messages if m.topic == DEVICE_TOPIC][-1].payload
    )
    assert status.status.connected
    twin = _latest(messages, f"{BED}/twin") or {}
    values = twin.get("values", {})
    assert not values, f"demo values reached the twin: {values}"
    assert not [m for m in messages if m.topic == f"{BED}/vitals"]
