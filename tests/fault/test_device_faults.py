"""Device faults on real ptys: cable pulled and replugged, power cut mid-frame, 1 % bit flips.

Real processes throughout (MEDIBUS simulators on ptys, `icu-edge run`, Mosquitto); the assertions
read what a central station receives. The "technical status" of a device is its retained status topic
(`connected`, `last_error`, counters) plus the `device_connected` / `device_disconnected` events. Each
test runs two beds and faults only bed-01: the other bed's vitals must not notice.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, Received, Subscriber, wait_for
from ward import ROOT, Ward, WardLayout, bed_topic

from edge.model import DeviceState, DeviceStatusMessage, EventMessage, TwinMessage, VitalsMessage

pytestmark = [pytest.mark.integration]

FAULTY, CLEAN = "bed-01", "bed-02"
LINK_TIMEOUT_S = 3.0
"""MEDIBUS link time-out (the session's default): a silent device is declared lost after this."""
STEADY_KEYS = 14
"""Valid observations in one complete CP1 answer of the steady scenario (P0.1 comes without a value)."""


@pytest.fixture
def ward(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Ward]:
    instance = Ward(workdir=tmp_path, broker=broker, layout=WardLayout(beds=2, scenario="steady"))
    try:
        yield instance
    finally:
        instance.close()


def start_simulator(ward: Ward, bed: str, *fault_args: str) -> None:
    """Start one bed's ventilator with line-fault options and wait for its pty link."""
    link = ward.links[bed]
    ward.simulators[bed] = ward.spawn(
        f"simulator-{bed}",
        ["drivers.medibus.simulator", "--pty", str(link), "--scenario", "steady", *fault_args],
    )
    assert wait_for(lambda: os.path.exists(os.path.realpath(link)), timeout_s=15), ward.log(
        f"simulator-{bed}"
    )


def pull_cable(ward: Ward, bed: str) -> None:
    """SIGKILL the bed's simulator and remove its port link, as an unplugged USB adapter's node goes.

    Left in place, the link would point at /dev/pts/N, and the kernel hands N to the next pty anyone
    opens: on a shared machine the daemon then talks to a stranger's simulator (seen: a "pulled"
    device reconnected with handshakes 2 while its simulator was dead).
    """
    ward.kill_simulator(bed)
    ward.links[bed].unlink(missing_ok=True)


def statuses(station: Subscriber, bed: str) -> list[tuple[float, DeviceState]]:
    """Return (arrival monotonic-ish wall time, status) of every device status of the bed's vent-1."""
    return [
        (m.received_wall_s, DeviceStatusMessage.model_validate_json(m.payload).status)
        for m in station.on_topic(f"{bed_topic(bed)}/device/vent-1")
        if m.payload
    ]


def latest_status(station: Subscriber, bed: str) -> DeviceState | None:
    found = statuses(station, bed)
    return found[-1][1] if found else None


def link_events(station: Subscriber, bed: str) -> list[EventMessage]:
    events = [
        EventMessage.model_validate_json(m.payload) for m in station.on_topic(f"{bed_topic(bed)}/events")
    ]
    return [e for e in events if e.kind in {"device_connected", "device_disconnected"}]


def vitals(station: Subscriber, bed: str) -> list[tuple[Received, VitalsMessage]]:
    return [
        (m, VitalsMessage.model_validate_json(m.payload))
        for m in station.on_topic(f"{bed_topic(bed)}/vitals")
    ]


def wait_connected(station: Subscriber, bed: str, *, connected: bool, timeout_s: float) -> DeviceState:
    assert wait_for(
        lambda: (s := latest_status(station, bed)) is not None and s.connected is connected,
        timeout_s=timeout_s,
    ), f"{bed} not connected={connected} within {timeout_s} s: {latest_status(station, bed)}"
    state = latest_status(station, bed)
    assert state is not None
    return state


def assert_daemon_healthy(ward: Ward) -> None:
    assert ward.daemon is not None
    assert ward.daemon.poll() is None, ward.log("daemon")
    log = ward.log("daemon")
    assert "Traceback" not in log, log[-4000:]
    assert "driver failure" not in log, log[-4000:]


def test_cable_pulled_and_replugged_raises_and_clears_the_technical_status(
    ward: Ward, subscribe: Callable[..., Subscriber]
) -> None:
    station = subscribe(f"{ROOT}/#")
    station.wait_subscribed()
    ward.start_simulators()
    ward.start_daemon()
    before = wait_connected(station, FAULTY, connected=True, timeout_s=30)
    wait_connected(station, CLEAN, connected=True, timeout_s=30)
    assert before.counters["handshakes"] == 1

    pulled_wall_s = time.time()
    pull_cable(ward, FAULTY)
    lost = wait_connected(station, FAULTY, connected=False, timeout_s=5)
    assert lost.last_error, "the device status says why the link was lost"
    clean_before = len(vitals(station, CLEAN))
    # Stay unplugged long enough for failed reopen attempts and a periodic status round.
    time.sleep(7)
    still_lost = latest_status(station, FAULTY)
    assert still_lost is not None
    assert not still_lost.connected, still_lost
    assert still_lost.last_error, still_lost
    assert len(vitals(station, CLEAN)) - clean_before >= 5, "the other bed's vitals kept flowing"

    start_simulator(ward, FAULTY)
    back = wait_connected(station, FAULTY, connected=True, timeout_s=15)
    assert back.last_error is None
    assert back.connected_since is not None
    assert back.connected_since.timestamp() > pulled_wall_s
    assert wait_for(lambda: len(link_events(station, FAULTY)) >= 3, timeout_s=5)
    events = link_events(station, FAULTY)
    assert [e.kind for e in events] == ["device_connected", "device_disconnected", "device_connected"]
    assert events[1].detail.endswith(f"disconnected: {lost.last_error}"), events[1].detail
    assert [e.kind for e in link_events(station, CLEAN)] == ["device_connected"]

    assert wait_for(lambda: len(statuses(station, FAULTY)) > 0 and _frames_after(station, back), timeout_s=10)
    counters = _latest_counters(station, FAULTY)
    assert counters["handshakes"] == before.counters["handshakes"] + 1, counters
    assert counters["timeouts"] == 0, "a pulled cable is a port error, not a time-out"
    assert counters["frames_in"] > before.counters["frames_in"]
    assert counters.get("driver_failures", 0) == 0
    twin = TwinMessage.model_validate_json(station.on_topic(f"{bed_topic(FAULTY)}/twin")[-1].payload)
    assert twin.devices["vent-1"].connected
    assert_daemon_healthy(ward)
    assert ward.stop_daemon() == 0


def _latest_counters(station: Subscriber, bed: str) -> dict[str, int]:
    state = latest_status(station, bed)
    assert state is not None
    return state.counters


def _frames_after(station: Subscriber, reference: DeviceState) -> bool:
    return _latest_counters(station, FAULTY)["frames_in"] > reference.counters["frames_in"]


def test_power_cut_mid_frame_discards_the_partial_frame_and_recovers(
    ward: Ward, subscribe: Callable[..., Subscriber]
) -> None:
    station = subscribe(f"{ROOT}/#")
    station.wait_subscribed()
    ward.start_simulator(CLEAN)
    start_simulator(ward, FAULTY, "--power-off-after", "8", "--power-off-for", "12")
    ward.start_daemon()
    before = wait_connected(station, FAULTY, connected=True, timeout_s=8)
    assert wait_for(lambda: "power off mid-frame" in ward.log(f"simulator-{FAULTY}"), timeout_s=15)
    cut_wall_s = time.time()
    counters_at_cut = _latest_counters(station, FAULTY)

    lost = wait_connected(station, FAULTY, connected=False, timeout_s=LINK_TIMEOUT_S + 4)
    lost_at = next(at for at, s in statuses(station, FAULTY) if at > cut_wall_s and not s.connected)
    assert lost_at - cut_wall_s < LINK_TIMEOUT_S + 3, "loss detected within the link time-out (+ reporting)"
    assert lost.last_error is not None
    assert "silent" in lost.last_error, lost
    # The retained status must keep saying why while the device stays dead: the link keeps retrying
    # (counters move), and the periodic status published then must not wipe the reason.
    assert wait_for(lambda: any(at > lost_at + 5 for at, _ in statuses(station, FAULTY)), timeout_s=10), (
        "a periodic device status while the device is dead"
    )
    later = [s for at, s in statuses(station, FAULTY) if at > lost_at + 5]
    assert later[0].connected is False
    assert later[0].last_error == lost.last_error, later[0]

    back = wait_connected(station, FAULTY, connected=True, timeout_s=20)
    assert back.last_error is None
    assert wait_for(lambda: _frames_after(station, back), timeout_s=10)
    counters = _latest_counters(station, FAULTY)
    assert counters["timeouts"] == counters_at_cut["timeouts"] + 1, counters
    assert counters["resyncs"] > counters_at_cut["resyncs"], "the partial frame was dropped and counted"
    assert counters["handshakes"] == before.counters["handshakes"] + 1
    assert [e.kind for e in link_events(station, FAULTY)] == [
        "device_connected",
        "device_disconnected",
        "device_connected",
    ]
    # No value from the half frame: every vitals batch is a whole CP1 answer.
    batches = vitals(station, FAULTY)
    assert batches
    for _, batch in batches:
        assert sum(o.valid for o in batch.observations) == STEADY_KEYS, batch
    clean = [m for m, _ in vitals(station, CLEAN) if cut_wall_s < m.received_wall_s < cut_wall_s + 10]
    assert len(clean) >= 5, "the other bed's vitals kept flowing"
    assert_daemon_healthy(ward)
    assert ward.stop_daemon() == 0


@pytest.mark.timeout(180)
def test_one_percent_bit_flips_for_a_minute_are_counted_without_a_crash(
    ward: Ward, subscribe: Callable[..., Subscriber]
) -> None:
    station = subscribe(f"{ROOT}/#")
    station.wait_subscribed()
    ward.start_simulator(CLEAN)
    start_simulator(ward, FAULTY, "--bit-flip-rate", "0.01", "--seed", "7")
    ward.start_daemon()
    wait_connected(station, FAULTY, connected=True, timeout_s=30)
    started = time.time()
    minute_s = 60.0
    window_s = 20.0
    time.sleep(minute_s)
    assert_daemon_healthy(ward)

    assert wait_for(lambda: latest_status(station, FAULTY) is not None, timeout_s=5)
    counters = _latest_counters(station, FAULTY)
    assert counters["checksum_errors"] > 0, counters
    assert counters["resyncs"] > 0, counters
    assert counters.get("driver_failures", 0) == 0, counters
    clean = _latest_counters(station, CLEAN)
    assert clean["checksum_errors"] == 0, clean
    assert clean["resyncs"] == 0, clean
    # Values keep flowing through the noise (slower: ~60 % of CP1 answers arrive corrupted and are asked
    # for again): vitals in every third of the minute.
    arrivals = [m.received_wall_s for m, _ in vitals(station, FAULTY) if m.received_wall_s >= started]
    detail = f"{[round(a - started, 1) for a in arrivals]} {counters}"
    assert len(arrivals) >= 5, detail
    for start in range(int(minute_s / window_s)):
        low = started + start * window_s
        assert any(low <= at < low + window_s for at in arrivals), (
            f"no vitals from {low - started:.0f} s: {detail}"
        )
    # A link the noise took down came back: the status ends connected, the events pair up.
    assert wait_for(lambda: (s := latest_status(station, FAULTY)) is not None and s.connected, timeout_s=10)
    kinds = [e.kind for e in link_events(station, FAULTY)]
    assert kinds == ["device_connected", "device_disconnected"] * (len(kinds) // 2) + ["device_connected"], (
        kinds
    )
    log = ward.log(f"simulator-{FAULTY}")
    assert "Traceback" not in log
    print(
        json.dumps(
            {"faulty": counters, "clean": clean, "link_events": kinds, "vitals_batches": len(arrivals)},
            sort_keys=True,
        )
    )
    assert ward.stop_daemon() == 0
