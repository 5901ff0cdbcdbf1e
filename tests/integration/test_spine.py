"""The spine end to end: ventilator simulator on a real pty -> daemon process -> real Mosquitto.

Everything here is real: the simulator and the daemon run as separate processes (`icu-edge sim`,
`icu-edge run`), the serial line is a pseudo-terminal, the broker is Mosquitto on a free loopback port,
and the assertions read what a central station would receive.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, Received, Subscriber, wait_for

from edge.model import (
    ApplianceStatusMessage,
    DeviceStatusMessage,
    EventMessage,
    ForecastMessage,
    TwinMessage,
    VitalsMessage,
    utc_now,
)
from engines.testing import build_test_model

pytestmark = pytest.mark.integration

ROOT = "icu/v1/hosp-a/icu-3"
BED = f"{ROOT}/bed/bed-07"
STATUS = f"{ROOT}/appliance/edge-0001/status"


class Spine:
    """The simulator and the daemon as processes, restartable and killable by the test."""

    def __init__(
        self, *, workdir: Path, broker: MosquittoBroker, stale_after_s: float = 10.0, engines_toml: str = ""
    ) -> None:
        self.workdir = workdir
        self.link = workdir / "vent-1"
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

{engines_toml}

[[bed]]
id = "bed-07"
stale_after_s = {stale_after_s}

[[bed.device]]
id = "vent-1"
driver = "medibus"
port = "{self.link}"
baud = 19200
""",
            encoding="utf-8",
        )
        self.simulator: subprocess.Popen[bytes] | None = None
        self.daemon: subprocess.Popen[bytes] | None = None

    def _spawn(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        with log:
            return subprocess.Popen(
                [sys.executable, "-m", *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def start_simulator(self) -> None:
        """Start the ventilator side and wait for its pty link."""
        self.simulator = self._spawn(
            "simulator",
            ["drivers.medibus.simulator", "--pty", str(self.link), "--scenario", "steady"],
        )
        if not wait_for(
            lambda: self.link.exists() and os.path.exists(os.path.realpath(self.link)), timeout_s=10
        ):
            raise AssertionError(f"simulator did not create its pty link: {self.log('simulator')}")

    def kill_simulator(self) -> None:
        """Pull the cable: SIGKILL the simulator so its pty vanishes at once."""
        assert self.simulator is not None
        self.simulator.kill()
        self.simulator.wait()

    def start_daemon(self, *, env: dict[str, str] | None = None) -> None:
        """Start `icu-edge run` on the generated config."""
        self.daemon = self._spawn("daemon", ["edge.cli", "run", "--config", str(self.config)], env=env)

    def kill_daemon(self) -> None:
        """SIGKILL the daemon: no goodbye, only the broker's Will."""
        assert self.daemon is not None
        self.daemon.kill()
        self.daemon.wait()

    def stop_daemon(self) -> int:
        """SIGTERM the daemon and return its exit status."""
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        return self.daemon.wait(timeout=30)

    def log(self, name: str) -> str:
        """Return a process's log (for failure messages)."""
        path = self.workdir / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else "(no log)"

    def close(self) -> None:
        """Stop whatever still runs."""
        for process in (self.daemon, self.simulator):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def spine(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Spine]:
    """A configured spine; the test decides what to start."""
    instance = Spine(workdir=tmp_path, broker=broker)
    try:
        yield instance
    finally:
        instance.close()


def _latest(messages: list[Received], topic: str) -> dict[str, object] | None:
    on_topic = [m for m in messages if m.topic == topic and m.payload]
    return json.loads(on_topic[-1].payload) if on_topic else None


def _link_events(station: Subscriber) -> list[str]:
    events = [EventMessage.model_validate_json(m.payload) for m in station.on_topic(f"{BED}/events")]
    return [e.kind for e in events if e.kind in {"device_connected", "device_disconnected"}]


def _twin_has_values(messages: list[Received]) -> bool:
    twin = _latest(messages, f"{BED}/twin")
    values = twin.get("values", {}) if twin else {}
    return isinstance(values, dict) and {"ppeak", "peep", "vt", "rr", "fio2"} <= set(values)


def test_retained_twin_shows_ventilator_values_with_units(
    spine: Spine, subscribe: Callable[..., Subscriber]
) -> None:
    spine.start_simulator()
    spine.start_daemon()
    live = subscribe(f"{ROOT}/#")
    live.wait_for(_twin_has_values, timeout_s=20)

    # A central station that connects later gets the retained twin, device status and birth at once.
    late = subscribe(f"{ROOT}/#")
    messages = late.wait_for(
        lambda ms: (
            any(m.retain and m.topic == f"{BED}/twin" for m in ms)
            and any(m.retain and m.topic == f"{BED}/device/vent-1" for m in ms)
            and any(m.retain and m.topic == STATUS for m in ms)
        ),
        timeout_s=10,
    )
    retained_twin = next(m for m in messages if m.retain and m.topic == f"{BED}/twin")
    twin = TwinMessage.model_validate_json(retained_twin.payload)
    assert twin.appliance == "edge-0001"
    assert twin.bed == "bed-07"
    assert twin.session >= 1
    units = {key: value.unit for key, value in twin.values.items()}
    assert units["ppeak"] == "mbar"
    assert units["peep"] == "mbar"
    assert units["vt"] == "mL"
    assert units["mv"] == "L/min"
    assert units["rr"] == "/min"
    assert units["fio2"] == "%"
    assert units["etco2"] == "mm[Hg]"
    assert twin.values["ppeak"].valid
    assert twin.values["ppeak"].value is not None
    assert 5 <= twin.values["ppeak"].value <= 60
    assert twin.values["peep"].value == pytest.approx(5.0)
    assert twin.settings["peep_set"].unit == "mbar"
    assert twin.devices["vent-1"].connected
    assert twin.devices["vent-1"].protocol == "MEDIBUS"

    device = DeviceStatusMessage.model_validate_json(
        [m for m in messages if m.retain and m.topic == f"{BED}/device/vent-1"][-1].payload
    )
    assert device.status.connected
    assert device.status.model
    status = ApplianceStatusMessage.model_validate_json(
        [m for m in messages if m.retain and m.topic == STATUS][-1].payload
    )
    assert status.state == "online"
    assert status.beds == ["bed-07"]

    vitals = [VitalsMessage.model_validate_json(m.payload) for m in live.on_topic(f"{BED}/vitals")]
    assert vitals, "observation batches are published as they arrive"
    assert [v.seq for v in vitals] == list(range(vitals[0].seq, vitals[0].seq + len(vitals)))
    assert {o.key for o in vitals[-1].observations} >= {"ppeak", "peep", "vt"}

    assert spine.stop_daemon() == 0
    offline = late.wait_for(lambda ms: (_latest(ms, STATUS) or {}).get("state") == "offline", timeout_s=15)
    assert _latest(offline, STATUS)["reason"] == "shutdown"  # type: ignore[index]


def test_sigkill_makes_the_broker_publish_the_offline_will(
    spine: Spine, subscribe: Callable[..., Subscriber]
) -> None:
    watcher = subscribe(STATUS)
    spine.start_simulator()
    spine.start_daemon()
    watcher.wait_for(lambda ms: (_latest(ms, STATUS) or {}).get("state") == "online", timeout_s=20)
    spine.kill_daemon()
    messages = watcher.wait_for(
        lambda ms: (_latest(ms, STATUS) or {}).get("state") == "offline", timeout_s=15
    )
    will = ApplianceStatusMessage.model_validate_json([m for m in messages if m.topic == STATUS][-1].payload)
    assert will.state == "offline"
    assert will.reason == "lost"
    # ...and it is retained, so a station connecting afterwards sees the appliance is gone.
    late = subscribe(STATUS)
    retained = late.wait_for(lambda ms: any(m.retain for m in ms), timeout_s=10)
    assert json.loads(retained[-1].payload)["state"] == "offline"


def test_broker_outage_of_ten_seconds_loses_no_qos1_message(
    spine: Spine, broker: MosquittoBroker, subscribe: Callable[..., Subscriber]
) -> None:
    # A persistent subscriber: the broker (with persistence) queues for it across its own restart.
    station = subscribe(f"{BED}/#", persistent=True)
    station.wait_subscribed()
    spine.start_simulator()
    spine.start_daemon()
    station.wait_for(lambda ms: len([m for m in ms if m.topic == f"{BED}/vitals"]) >= 3, timeout_s=20)

    outage_began = utc_now()
    broker.stop()
    time.sleep(10.0)  # the outage itself: values keep flowing from the ventilator into the outbox
    outage_ended = utc_now()
    broker.start()

    def vitals(ms: list[Received]) -> list[VitalsMessage]:
        return [VitalsMessage.model_validate_json(m.payload) for m in ms if m.topic == f"{BED}/vitals"]

    before = len(vitals(station.messages))
    station.wait_for(lambda ms: len({v.seq for v in vitals(ms)}) >= before + 12, timeout_s=30)
    assert spine.stop_daemon() == 0
    time.sleep(1.0)

    for topic in (f"{BED}/vitals", f"{BED}/twin", f"{BED}/events"):
        payloads = [json.loads(m.payload) for m in station.messages if m.topic == topic and m.payload]
        sessions = {p["session"] for p in payloads}
        assert len(sessions) == 1, f"{topic}: one daemon session only, got {sessions}"
        seqs = sorted({p["seq"] for p in payloads})
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), (
            f"{topic}: missing seq {set(range(seqs[0], seqs[-1] + 1)) - set(seqs)}"
        )
    delivered = vitals(station.messages)
    assert min(v.seq for v in delivered) == 0, "the first batch of the session was delivered"
    taken_during_outage = {
        v.seq for v in delivered if outage_began < v.observations[0].received_at < outage_ended
    }
    assert len(taken_during_outage) >= 8, "about one batch a second was taken while the broker was down"


def test_pulling_the_pty_marks_the_device_disconnected_and_it_reconnects(
    spine: Spine, subscribe: Callable[..., Subscriber]
) -> None:
    device_topic = f"{BED}/device/vent-1"
    station = subscribe(f"{BED}/#")
    spine.start_simulator()
    spine.start_daemon()

    def connected(ms: list[Received]) -> bool | None:
        latest = _latest(ms, device_topic)
        return None if latest is None else DeviceStatusMessage.model_validate(latest).status.connected

    station.wait_for(lambda ms: connected(ms) is True, timeout_s=20)
    pulled_at = time.monotonic()
    spine.kill_simulator()
    station.wait_for(lambda ms: connected(ms) is False, timeout_s=5)
    assert time.monotonic() - pulled_at < 5.0
    lost = DeviceStatusMessage.model_validate(_latest(station.messages, device_topic))
    assert lost.status.last_error, "the device status says why the link was lost"
    # The event and the device status are separate topics; MQTT orders messages per topic only.
    station.wait_for(lambda _: _link_events(station)[-1:] == ["device_disconnected"], timeout_s=5)
    twin = station.wait_for(
        lambda ms: (
            bool(_latest(ms, f"{BED}/twin"))
            and not TwinMessage.model_validate(_latest(ms, f"{BED}/twin")).devices["vent-1"].connected
        ),
        timeout_s=5,
    )
    stale_twin = TwinMessage.model_validate(_latest(twin, f"{BED}/twin"))
    assert all(value.stale for value in stale_twin.values.values()), "values of a lost device are stale"

    spine.start_simulator()
    station.wait_for(lambda ms: connected(ms) is True, timeout_s=15)
    station.wait_for(
        lambda _: _link_events(station) == ["device_connected", "device_disconnected", "device_connected"],
        timeout_s=5,
    )
    assert spine.stop_daemon() == 0


def test_systemd_sees_ready_watchdog_and_stopping(spine: Spine, tmp_path: Path) -> None:
    """The daemon speaks sd_notify to a real datagram socket, as systemd's Type=notify expects."""
    notify_path = tmp_path / "notify.sock"
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(str(notify_path))
    systemd.settimeout(0.5)
    datagrams: list[str] = []

    def received(prefix: str, *, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                datagrams.extend(systemd.recv(4096).decode().splitlines())
            if any(line.startswith(prefix) for line in datagrams):
                return True
        return False

    try:
        spine.start_simulator()
        spine.start_daemon(env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"})
        assert received("READY=1", timeout_s=20), spine.log("daemon")
        ready_at = datagrams.index("READY=1")
        assert any(line.startswith("STATUS=") for line in datagrams[ready_at:])
        datagrams.clear()
        assert received("WATCHDOG=1", timeout_s=5), datagrams
        datagrams.clear()
        assert received("WATCHDOG=1", timeout_s=5), "the watchdog is fed repeatedly while all make progress"
        assert spine.stop_daemon() == 0
        assert received("STOPPING=1", timeout_s=5), datagrams
    finally:
        systemd.close()


def test_forecast_reaches_the_broker(spine: Spine, subscribe: Callable[..., Subscriber]) -> None:
    """Simulator -> daemon -> engines (onnxruntime) -> Mosquitto: a retained forecast per bed."""
    station = subscribe(f"{BED}/forecast")
    spine.start_simulator()
    spine.start_daemon()

    def forecast(ms: list[Received]) -> ForecastMessage | None:
        latest = _latest(ms, f"{BED}/forecast")
        return None if latest is None else ForecastMessage.model_validate(latest)

    station.wait_for(
        lambda ms: (f := forecast(ms)) is not None and {"hr", "spo2", "rr", "etco2"} <= set(f.signals),
        timeout_s=30,
    )
    message = forecast(station.messages)
    assert message is not None
    assert message.model.backend == "onnxruntime", "no CUDA here: auto picks onnxruntime"
    assert message.horizons_min == [1, 5, 10, 15]
    spo2 = message.signals["spo2"]
    assert spo2.unit == "%"
    assert [h.horizon_min for h in spo2.horizons] == [1, 5, 10, 15]
    for horizon in spo2.horizons:
        assert horizon.p10 <= horizon.p50 <= horizon.p90
    assert 80 <= spo2.horizons[0].p50 <= 100, "a steady ventilated patient stays near its SpO2"
    assert message.signals["etco2"].unit == "mm[Hg]"
    assert "map" in message.unavailable, "a ventilator gives no MAP: the forecast says why"
    assert "map_below_65" in message.unavailable
    hr = message.signals["hr"]
    assert hr.source == "pr", "a ventilator gives no HR: its SpO2 module's pulse rate stands in, and says so"
    assert set(message.events) == {"spo2_below_90"}, "the shipped default estimates desaturation only"
    assert [h.horizon_min for h in message.events["spo2_below_90"].horizons] == [1, 5, 10, 15]
    assert message.unavailable["map_below_65"] == (
        f"model {message.model.id}@{message.model.version} has no event estimate that beats the "
        "current-value baseline"
    )
    assert spine.stop_daemon() == 0


def test_a_new_model_version_loads_on_sighup_without_a_restart(
    tmp_path: Path, broker: MosquittoBroker, subscribe: Callable[..., Subscriber]
) -> None:
    models = tmp_path / "models"
    build_test_model(models, model_id="site-model", version="1.0.0", default=False)
    spine = Spine(
        workdir=tmp_path,
        broker=broker,
        engines_toml=f'[engines]\nmodel = "site-model"\nmodels_dir = "{models}"\nreload_check_s = 3600',
    )
    station = subscribe(f"{BED}/forecast")
    try:
        spine.start_simulator()
        spine.start_daemon()

        def version(ms: list[Received]) -> str | None:
            latest = _latest(ms, f"{BED}/forecast")
            return None if latest is None else ForecastMessage.model_validate(latest).model.version

        station.wait_for(lambda ms: version(ms) == "1.0.0", timeout_s=30)
        build_test_model(models, model_id="site-model", version="1.1.0", default=False)
        assert spine.daemon is not None
        session_before = _latest(station.messages, f"{BED}/forecast")["session"]  # type: ignore[index]
        spine.daemon.send_signal(signal.SIGHUP)
        station.wait_for(lambda ms: version(ms) == "1.1.0", timeout_s=15)
        latest = _latest(station.messages, f"{BED}/forecast")
        assert latest is not None
        assert latest["session"] == session_before, "same daemon run: no restart"
        assert spine.daemon.poll() is None
        assert spine.stop_daemon() == 0
    finally:
        spine.close()


def test_daemon_starts_before_the_ventilator_is_plugged_in(
    spine: Spine, subscribe: Callable[..., Subscriber]
) -> None:
    """The appliance boots first: it comes online, reports the port missing, and connects later."""
    device_topic = f"{BED}/device/vent-1"
    station = subscribe(f"{ROOT}/#")
    spine.start_daemon()
    station.wait_for(lambda ms: (_latest(ms, STATUS) or {}).get("state") == "online", timeout_s=20)
    waiting = station.wait_for(
        lambda ms: (
            bool(_latest(ms, device_topic))
            and "cannot open"
            in (DeviceStatusMessage.model_validate(_latest(ms, device_topic)).status.last_error or "")
        ),
        timeout_s=15,
    )
    status = DeviceStatusMessage.model_validate(_latest(waiting, device_topic)).status
    assert not status.connected
    spine.start_simulator()
    station.wait_for(
        lambda ms: DeviceStatusMessage.model_validate(_latest(ms, device_topic)).status.connected,
        timeout_s=15,
    )
    assert spine.stop_daemon() == 0
