"""Wall clock stepped back and forward by an hour under a running daemon: nothing that orders, delays or
ages may notice.

The daemon runs under libfaketime (`LD_PRELOAD`) with `FAKETIME_DONT_FAKE_MONOTONIC=1`, so only the
wall clock jumps, and with `FAKETIME_NO_CACHE=1` on a timestamp file the test rewrites while values
flow (an NTP step, a wrong RTC corrected by hand). The simulator, Mosquitto and the subscriber keep the
true time. Wall-clock fields (`ts`, `received_at`, event `at`) may follow the step;
`seq` order, twin ages and staleness, reconnect delays, delivery and forecast freshness must not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, Subscriber, wait_for
from ward import ROOT, Ward, WardLayout, bed_topic

from edge.model import DeviceStatusMessage, ForecastMessage, TwinMessage

pytestmark = [pytest.mark.integration]

BED = "bed-01"
HOUR_S = 3600.0
LIBFAKETIME_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)


def libfaketime() -> str:
    """Return the multi-threaded libfaketime, or skip (fail on CI, which installs it)."""
    for candidate in LIBFAKETIME_CANDIDATES:
        if os.path.exists(candidate):
            return candidate
    if os.environ.get("CI"):
        pytest.fail("libfaketime is not installed, but CI must run the clock tests (tools/bootstrap.sh)")
    pytest.skip("libfaketime is not installed (apt-get install faketime); CI installs it")


class WallClock:
    """The daemon's faked wall clock: an offset from true time in a file libfaketime re-reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.set_offset_s(0)

    def set_offset_s(self, offset_s: int) -> None:
        """Step the daemon's wall clock to true time + offset_s (atomically: never a half-written file)."""
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(f"{offset_s:+d}\n", encoding="ascii")
        os.replace(temporary, self.path)

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": libfaketime(),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }


@pytest.fixture
def ward(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Ward]:
    layout = WardLayout(beds=1, scenario="steady", engines_toml="[engines]\nenabled = true\ntick_s = 1.0")
    instance = Ward(workdir=tmp_path, broker=broker, layout=layout)
    try:
        yield instance
    finally:
        instance.close()


def test_faketime_steps_only_the_wall_clock_of_this_python(tmp_path: Path) -> None:
    """The premise: under libfaketime, time.time() jumps and time.monotonic() does not."""
    clock = WallClock(tmp_path / "faketime")
    clock.set_offset_s(-int(HOUR_S))
    script = "import time; print(time.time(), time.monotonic())"
    before_wall, before_mono = time.time(), time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **clock.env()},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    wall_s, mono_s = float(out[0]), float(out[1])
    assert abs(wall_s - (before_wall - HOUR_S)) < 30
    assert abs(mono_s - before_mono) < 30


@pytest.mark.timeout(180)
def test_wall_clock_steps_change_no_order_age_delay_or_delivery(
    ward: Ward, subscribe: Callable[..., Subscriber], tmp_path: Path
) -> None:
    clock = WallClock(tmp_path / "faketime")
    station = subscribe(f"{ROOT}/#")
    station.wait_subscribed()
    ward.start_simulators()
    ward.start_daemon(env=clock.env())
    bed = bed_topic(BED)

    def forecast_signals() -> set[str]:
        found = station.on_topic(f"{bed}/forecast")
        return set(ForecastMessage.model_validate_json(found[-1].payload).signals) if found else set()

    assert wait_for(lambda: {"spo2", "rr"} <= forecast_signals(), timeout_s=40), ward.log("daemon")

    phases: list[tuple[str, float, float]] = []

    def phase(name: str, offset_s: int, seconds: float) -> None:
        clock.set_offset_s(offset_s)
        started = time.time()
        time.sleep(seconds)
        phases.append((name, started, time.time()))

    phase("true time", 0, 4)
    clock.set_offset_s(-int(HOUR_S))
    started_back = time.time()
    time.sleep(4)
    # Pull the cable while the clock is an hour back: detection and reconnect run on the monotonic clock.
    ward.kill_simulator(BED)
    ward.links[BED].unlink(missing_ok=True)  # a dangling /dev/pts/N link could reach a stranger's pty
    assert wait_for(
        lambda: (
            not DeviceStatusMessage.model_validate_json(
                station.on_topic(f"{bed}/device/vent-1")[-1].payload
            ).status.connected
        ),
        timeout_s=5,
    ), "the disconnect was seen within 5 s"
    replugged = time.monotonic()
    ward.start_simulator(BED)
    assert wait_for(
        lambda: (
            DeviceStatusMessage.model_validate_json(
                station.on_topic(f"{bed}/device/vent-1")[-1].payload
            ).status.connected
        ),
        timeout_s=10,
    ), ward.log("daemon")
    reconnect_s = time.monotonic() - replugged
    time.sleep(4)
    phases.append(("one hour back", started_back, time.time()))
    phase("one hour ahead", int(HOUR_S), 10)
    phase("true time again", 0, 4)
    assert ward.daemon is not None
    assert ward.daemon.poll() is None, ward.log("daemon")

    # The step really happened: envelopes stamped by the daemon followed the faked wall clock.
    twins = [(m, TwinMessage.model_validate_json(m.payload)) for m in station.on_topic(f"{bed}/twin")]
    skews = [message.ts.timestamp() - m.received_wall_s for m, message in twins]
    assert min(skews) < -HOUR_S + 60, "the daemon's wall clock went an hour back"
    assert max(skews) > HOUR_S - 60, "the daemon's wall clock went an hour ahead"

    # Order: seq consecutive per topic, one session.
    for topic in (f"{bed}/twin", f"{bed}/events", f"{bed}/device/vent-1", f"{bed}/forecast", f"{bed}/vitals"):
        seqs = [_seq(m.payload) for m in station.on_topic(topic) if m.payload and not m.retain]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (topic, seqs)

    # Ages and staleness: measured on the monotonic clock, small and non-negative through both steps.
    for m, twin in twins:
        if not twin.devices["vent-1"].connected or not twin.values:
            continue
        ages = {key: value.age_s for key, value in twin.values.items()}
        assert all(0.0 <= age < 5.0 for age in ages.values()), (m.received_wall_s, ages)
        assert not any(value.stale for value in twin.values.values()), m.received_wall_s

    # Delivery and forecasts kept going in every phase.
    vitals_at = [m.received_wall_s for m in station.on_topic(f"{bed}/vitals")]
    forecasts = [
        (m.received_wall_s, ForecastMessage.model_validate_json(m.payload))
        for m in station.on_topic(f"{bed}/forecast")
    ]
    for name, start, end in phases:
        assert sum(start <= at < end for at in vitals_at) >= 3, f"vitals during {name}"
        in_phase = [f for at, f in forecasts if start + 2 <= at < end]
        assert in_phase, f"forecasts during {name}"
        assert all({"spo2", "rr"} <= set(f.signals) for f in in_phase), (
            name,
            [sorted(f.unavailable.items()) for f in in_phase][-1],
        )
    assert reconnect_s < 10
    assert ward.stop_daemon() == 0


def _seq(payload: bytes) -> int:
    seq = json.loads(payload)["seq"]
    assert isinstance(seq, int)
    return seq
