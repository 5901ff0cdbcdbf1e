"""`icu-edge watch` driven for real: a real Mosquitto, the view in a tmux pane of a fixed size, keys sent.

The payloads are the contract's own pydantic models (tests/tools/test_watch.py builds them), published
retained as the daemon would; one test runs a real daemon with simulators on ptys instead.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from broker import MosquittoBroker
from paho.mqtt.enums import CallbackAPIVersion
from test_watch import alarm_twin, forecast_body, status_body, twin_body, twin_value, vent_state
from ward import Ward, WardLayout

from edge.contract import Topics, encode_message
from edge.model import Body, DeviceStatusBody, ForecastBody, HorizonForecast, SignalForecast, TwinBody

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TOPICS = Topics(prefix="icu/v1", site="st-mary", ward="icu-3", appliance="edge-01")
SHOWN_S = 20.0
"""Bound for the view to show what the broker holds (a Python start, a connection, retained messages)."""


def require_tmux() -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (tools/bootstrap.sh installs it)")


class Publisher:
    """A plain paho client that publishes retained QoS 1 messages and waits for each PUBACK."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="test-publisher", protocol=mqtt.MQTTv5
        )
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        self.seq: dict[str, int] = {}

    def send(self, topic: str, body: Body, *, bed: str | None, retain: bool = True) -> None:
        seq = self.seq[topic] = self.seq.get(topic, -1) + 1
        payload = encode_message(
            body, appliance="edge-01", bed=bed, session=1, seq=seq, ts=datetime.now(tz=UTC)
        )
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=5.0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(broker: MosquittoBroker) -> Iterator[Publisher]:
    instance = Publisher(broker)
    yield instance
    instance.close()


class Pane:
    """`icu-edge watch` in a detached tmux session of a fixed size."""

    def __init__(self, name: str, argv: list[str], *, width: int, height: int) -> None:
        self.name = name
        command = " ".join([sys.executable, "-m", "tools.cli", *argv])
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TERM": "xterm-256color"}
        env.pop("TMUX", None)
        subprocess.run(
            [
                "tmux",
                "-L",
                name,
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                str(width),
                "-y",
                str(height),
                "-c",
                str(REPO_ROOT),
                command,
            ],
            check=True,
            env=env,
        )

    def tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True, check=False)

    def text(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.name).stdout

    def lines(self) -> list[str]:
        return self.text().split("\n")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def alive(self) -> bool:
        return self.tmux("has-session", "-t", self.name).returncode == 0

    def wait(self, check: Callable[[str], bool], *, what: str, timeout_s: float = SHOWN_S) -> str:
        deadline = time.monotonic() + timeout_s
        text = self.text()
        while not check(text):
            assert time.monotonic() < deadline, f"no {what} within {timeout_s} s; the pane shows:\n{text}"
            time.sleep(0.2)
            text = self.text()
        return text

    def close(self) -> None:
        self.tmux("kill-server")


@pytest.fixture
def pane_factory() -> Iterator[Callable[..., Pane]]:
    require_tmux()
    panes: list[Pane] = []

    def make(argv: list[str], *, width: int, height: int) -> Pane:
        pane = Pane(f"icu-watch-test-{os.getpid()}-{len(panes)}", argv, width=width, height=height)
        panes.append(pane)
        return pane

    yield make
    for pane in panes:
        pane.close()


def deteriorated_twin() -> TwinBody:
    """The alarm twin of test_watch, with the main vitals a monitor and a ventilator publish."""
    values = dict(twin_body().values)
    values.update(
        {
            "hr": twin_value(118.0, "/min"),
            "spo2": twin_value(86.0, "%"),
            "map": twin_value(62.0, "mm[Hg]"),
            "rr": twin_value(31.0, "/min"),
            "etco2": twin_value(52.0, "mm[Hg]"),
            "temp": twin_value(38.3, "Cel"),
        }
    )
    return alarm_twin().model_copy(update={"values": values})


def ward_forecast() -> ForecastBody:
    """The forecast of test_watch with an SpO2 falling to 83 [80-86] in 15 min and a MAP one."""
    body = forecast_body()
    spo2 = SignalForecast(
        unit="%",
        source="spo2",
        last_value=86.0,
        last_age_s=1.0,
        valid_minutes=30,
        horizons=[HorizonForecast(horizon_min=h, p10=80.0, p50=83.0, p90=86.0) for h in (1, 5, 10, 15)],
    )
    mean = SignalForecast(
        unit="mm[Hg]",
        source="map",
        last_value=62.0,
        last_age_s=1.0,
        valid_minutes=30,
        horizons=[HorizonForecast(horizon_min=h, p10=55.0, p50=60.0, p90=66.0) for h in (1, 5, 10, 15)],
    )
    return body.model_copy(update={"signals": {"spo2": spo2, "map": mean}, "unavailable": {}})


def publish_bed(publisher: Publisher, bed: str, twin: TwinBody | None = None) -> None:
    publisher.send(TOPICS.twin(bed), twin or deteriorated_twin(), bed=bed)
    publisher.send(TOPICS.forecast(bed), ward_forecast(), bed=bed)
    publisher.send(TOPICS.device(bed, "vent-1"), DeviceStatusBody(status=vent_state()), bed=bed)


def watch_argv(broker: MosquittoBroker, *extra: str) -> list[str]:
    return ["watch", "--broker", f"mqtt://{broker.host}:{broker.port}", *extra]


def test_one_bed_fits_80x24_with_vitals_forecast_alarms_and_devices(
    broker: MosquittoBroker, publisher: Publisher, pane_factory: Callable[..., Pane]
) -> None:
    status = status_body().model_copy(update={"beds": ["bed-1"]})
    publisher.send(TOPICS.appliance_status(), status, bed=None)
    publish_bed(publisher, "bed-1")
    pane = pane_factory(watch_argv(broker), width=80, height=24)

    text = pane.wait(lambda t: "SpO2" in t and "forecast 15m" in t, what="tile")

    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= 24
    assert lines[0].startswith("icu-edge ward"), text  # nothing scrolled off the top
    assert len(lines) == 24, text
    assert lines[-1].startswith("1-9 "), text  # the key line is on screen too, at the bottom
    assert "mm[Hg]" not in text
    assert "Cel" not in text
    row = {line.split()[1]: line for line in lines if len(line.split()) > 2}  # "│ SpO2 86 % ..."
    assert " 62 mmHg" in row["MAP"], text
    assert " 86 %" in row["SpO2"], text
    assert " 118 /min" in row["HR"], text
    assert "38.3 \u00b0C" in row["Temp"], text
    assert "\u2192 83 [80\u201386]" in row["SpO2"], text  # forecast p50 [p10-p90] at 15 min
    assert "P(<90) 9%" in row["SpO2"], text
    assert "P(<65) 70%" in row["MAP"], text
    for alarm in ("SpO2 84 % below 88 %", "MAP 62 mmHg below 65", "Respiratory rate 31", "vent-1 lost"):
        assert alarm in text, (alarm, text)
    assert "Airway pressure high" in text  # the device's own alarm
    assert "TECH" in text  # the technical alarm apart
    assert "vent-1 Evita V500" in text  # device connectivity
    assert "NEWS2 6" in text

    pane.keys("Enter")
    detail = pane.wait(lambda t: "detail" in t.split("\n")[0], what="detail view")
    assert "bed bed-1 (st-mary/icu-3) detail" in detail
    pane.keys("PageDown", "PageDown")
    scrolled = pane.wait(lambda t: "lines 1\u2013" not in t.split("\n")[0], what="scrolled detail")
    assert "ventilator settings" in scrolled or "device alarms" in scrolled or "forecast" in scrolled
    pane.keys("End")
    pane.wait(lambda t: "trends since the view started" in t or "problems" in t, what="end of the detail")
    pane.keys("Escape")
    pane.wait(lambda t: t.startswith("icu-edge ward"), what="back to the tiles")
    pane.keys("q")
    deadline = time.monotonic() + 10.0
    while pane.alive():
        assert time.monotonic() < deadline, "q did not quit the view"
        time.sleep(0.1)


def test_two_beds_side_by_side_at_160_columns_and_bed_option_opens_a_detail(
    broker: MosquittoBroker, publisher: Publisher, pane_factory: Callable[..., Pane]
) -> None:
    status = status_body().model_copy(update={"beds": ["bed-1", "bed-2"]})
    publisher.send(TOPICS.appliance_status(), status, bed=None)
    publish_bed(publisher, "bed-1")
    publish_bed(publisher, "bed-2", twin_body())
    wide = pane_factory(watch_argv(broker), width=160, height=45)
    detail = pane_factory(watch_argv(broker, "--bed", "bed-2"), width=80, height=24)

    text = wide.wait(lambda t: "bed-1" in t and "bed-2" in t and "Filter check" in t, what="two tiles")

    titles = [line for line in text.split("\n") if "bed-1" in line and "bed-2" in line]
    assert titles, f"the tiles are not side by side:\n{text}"
    assert text.count("Evita V500") >= 2
    wide.keys("2", "Enter")
    wide.wait(lambda t: "bed bed-2 (st-mary/icu-3) detail" in t, what="bed-2's detail from the tiles")
    detail.wait(lambda t: "bed bed-2 (st-mary/icu-3) detail" in t, what="bed-2's detail from --bed")
    detail.keys("Tab")
    detail.wait(lambda t: "bed bed-1 (st-mary/icu-3) detail" in t, what="the next bed's detail on Tab")


def test_plain_prints_one_line_per_change_and_nothing_for_the_same_snapshot(
    broker: MosquittoBroker, publisher: Publisher, tmp_path: Path
) -> None:
    output = tmp_path / "watch.log"
    publisher.send(TOPICS.twin("bed-1"), deteriorated_twin(), bed="bed-1")
    with output.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", *watch_argv(broker, "--plain")],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SHOWN_S
        while "  spo2 86 %" not in output.read_text():
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
        first = output.read_text().splitlines()
        for _ in range(3):  # the same snapshot again (new seq): nothing to say
            publisher.send(TOPICS.twin("bed-1"), deteriorated_twin(), bed="bed-1")
        changed = deteriorated_twin()
        values = dict(changed.values)
        values["spo2"] = twin_value(84.0, "%")
        publisher.send(TOPICS.twin("bed-1"), changed.model_copy(update={"values": values}), bed="bed-1")
        while len(output.read_text().splitlines()) == len(first):
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        process.terminate()
        process.wait(timeout=10)
    lines = output.read_text().splitlines()
    assert lines[len(first) :] == [lines[-1]], lines
    assert lines[-1].endswith("bed-1  spo2 86 % -> 84 %"), lines[-1]
    stamp = lines[-1].split()[0]  # 2026-12-01T05:32:06.417Z
    assert datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").year >= 2026, stamp
    assert any("  twin (session 1 seq 0) from edge-01" in line for line in first)
    assert any("ALARM raised HIGH active physiological: SpO2 84 % below 88 %" in line for line in first)
    assert any("  map 62 mmHg" in line for line in first)


@pytest.mark.timeout(240)
def test_real_daemon_and_simulators_show_vitals_forecast_and_alarms_at_80x24(
    tmp_path: Path, broker: MosquittoBroker, pane_factory: Callable[..., Pane]
) -> None:
    """The acceptance point: the demo's bed (ventilator + monitor, a patient desaturating), a real daemon."""
    ward = Ward(
        workdir=tmp_path,
        broker=broker,
        layout=WardLayout(monitor="intellivue", scenario="desaturation", engines_toml=""),
    )
    try:
        ward.start_simulators()
        ward.start_daemon()
        pane = pane_factory(["watch", "--broker", broker.url], width=80, height=24)
        text = pane.wait(
            lambda t: "mmHg" in t and "\u2192" in t and ("HIGH" in t or "MEDIUM" in t),
            what="vitals, a forecast and an alarm",
            timeout_s=90.0,
        )
        lines = text.rstrip("\n").split("\n")
        assert lines[0].startswith("icu-edge ward"), text
        assert "bed-01" in text
        assert "mm[Hg]" not in text
        assert re.search(r"\u2192 \d+ \[\d+\u2013\d+\]", text), text  # a forecast: p50 [p10-p90]
        for label in ("SpO2", "MAP", "HR", "mon-1", "vent-1"):
            assert label in text, (label, text)
    finally:
        ward.close()
