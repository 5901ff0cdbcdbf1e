"""An S/5 monitor end to end: DRI simulator on a real pty -> `icu-edge run` daemon -> real Mosquitto.

Both sides are processes (`icu-edge sim datex`, `icu-edge run`), the serial line is a pseudo-terminal
(no parity, no RTS/CTS: the transport opens ptys without them), the broker is Mosquitto on a free
loopback port; the assertions read the retained twin a central station receives.
"""

from __future__ import annotations

import os
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
BED = f"{ROOT}/bed/bed-03"
MONITOR_KEYS = {"hr", "spo2", "pr", "abp_sys", "abp_dia", "abp_mean", "cvp", "nbp_mean", "temp"}


class MonitorBed:
    """The monitor simulator and the daemon as processes; everything is killed on close."""

    def __init__(self, *, workdir: Path, broker: MosquittoBroker) -> None:
        self.workdir = workdir
        self.link = workdir / "monitor-1"
        self.config = workdir / "config.toml"
        self.config.write_text(
            f"""
[appliance]
id = "edge-0001"
site = "hosp-a"
ward = "icu-3"

[mqtt]
host = "127.0.0.1"
port = {broker.port}
keepalive = 5
insecure = true
reconnect_min_s = 0.1
reconnect_max_s = 0.5

[store]
path = "{workdir / "outbox.db"}"
synchronous = "normal"

[engines]
enabled = false

[[bed]]
id = "bed-03"
stale_after_s = 10.0

[[bed.device]]
id = "monitor-1"
driver = "datex"
port = "{self.link}"

[bed.device.options]
interval_s = 1
link_timeout_s = 4.0
p1 = "abp"
p2 = "cvp"
""",
            encoding="utf-8",
        )
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, argv: list[str]) -> None:
        with (self.workdir / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", *argv],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )

    def start_simulator(self, scenario: str = "steady") -> None:
        self.spawn(
            "simulator", ["tools.cli", "sim", "datex", "--pty", str(self.link), "--scenario", scenario]
        )
        if not wait_for(
            lambda: self.link.exists() and os.path.exists(os.path.realpath(self.link)), timeout_s=15
        ):
            raise AssertionError(f"simulator did not create its pty link: {self.log('simulator')}")

    def start_daemon(self) -> None:
        self.spawn("daemon", ["edge.cli", "run", "--config", str(self.config)])

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else "(no log)"

    def close(self) -> None:
        for process in self.processes.values():
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


def _twin(messages: list[Received]) -> TwinMessage | None:
    on_topic = [m for m in messages if m.topic == f"{BED}/twin" and m.payload]
    return TwinMessage.model_validate_json(on_topic[-1].payload) if on_topic else None


def _has_monitor_values(messages: list[Received]) -> bool:
    twin = _twin(messages)
    if twin is None:
        return False
    return all(k in twin.values and twin.values[k].valid for k in MONITOR_KEYS)


def test_retained_twin_holds_the_monitors_values(
    monitor_bed: MonitorBed, subscribe: Callable[..., Subscriber]
) -> None:
    monitor_bed.start_simulator()
    monitor_bed.start_daemon()
    live = subscribe(f"{ROOT}/#")
    try:
        live.wait_for(_has_monitor_values, timeout_s=30)
    except TimeoutError:
        raise AssertionError(
            f"no monitor values in the twin:\n{monitor_bed.log('daemon')}\n{monitor_bed.log('simulator')}"
        ) from None

    late = subscribe(f"{BED}/#")
    messages = late.wait_for(
        lambda ms: (
            any(m.retain and m.topic == f"{BED}/twin" for m in ms)
            and any(m.retain and m.topic == f"{BED}/device/monitor-1" for m in ms)
        ),
        timeout_s=10,
    )
    retained = next(m for m in messages if m.retain and m.topic == f"{BED}/twin")
    twin = TwinMessage.model_validate_json(retained.payload)
    values = twin.values
    for key in MONITOR_KEYS:
        assert values[key].device == "monitor-1", key
    assert values["hr"].value == 78.0
    assert values["spo2"].value == 97.0
    assert (values["abp_sys"].value, values["abp_dia"].value, values["abp_mean"].value) == (118.0, 68.0, 85.0)
    assert values["abp_mean"].unit == "mm[Hg]"
    assert values["cvp"].value == 8.0
    assert values["temp"].unit == "Cel"
    assert values["hr"].device_time is not None
    # the simulated monitor has no second temperature: a no-data code, never a number
    assert values["temp_2"].value is None
    assert values["temp_2"].valid is False
    status_message = next(m for m in messages if m.retain and m.topic == f"{BED}/device/monitor-1")
    status = DeviceStatusMessage.model_validate_json(status_message.payload).status
    assert status.protocol == "DRI"
    assert status.driver == "datex"
    assert status.protocol_version == "DRI level 2005"
    assert status.connected
    assert status.counters["frames_in"] >= 1
    assert status.counters["checksum_errors"] == 0


def _status(messages: list[Received]) -> DeviceStatusMessage | None:
    on_topic = [m for m in messages if m.topic == f"{BED}/device/monitor-1" and m.payload]
    return DeviceStatusMessage.model_validate_json(on_topic[-1].payload) if on_topic else None


def test_a_monitor_that_goes_away_and_comes_back_is_requested_again(
    monitor_bed: MonitorBed, subscribe: Callable[..., Subscriber]
) -> None:
    monitor_bed.start_simulator()
    monitor_bed.start_daemon()
    live = subscribe(f"{BED}/#")
    live.wait_for(_has_monitor_values, timeout_s=30)

    simulator = monitor_bed.processes["simulator"]
    simulator.kill()
    simulator.wait()
    monitor_bed.link.unlink(missing_ok=True)
    live.wait_for(lambda ms: (s := _status(ms)) is not None and not s.status.connected, timeout_s=20)

    seen = len(live.messages)
    monitor_bed.start_simulator(scenario="desaturation")
    try:
        live.wait_for(
            lambda ms: (
                (s := _status(ms[seen:])) is not None
                and s.status.connected
                and _has_monitor_values(ms[seen:])
            ),
            timeout_s=30,
        )
    except TimeoutError:
        raise AssertionError(f"monitor not back:\n{monitor_bed.log('daemon')}") from None
    twin = _twin(live.messages)
    assert twin is not None
    assert twin.values["hr"].device == "monitor-1"
    assert twin.values["hr"].valid
