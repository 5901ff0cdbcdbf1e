"""Session and simulator wired back to back in memory, over a clean and a fault-injecting pipe."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.base import (
    DeviceAlarmsReceived,
    DriverEvent,
    LinkDown,
    LinkUp,
    MeasurementsReceived,
    SettingsReceived,
    TextMessagesReceived,
)
from drivers.medibus.codes import MeasuredCodeCP1
from drivers.medibus.session import MedibusSession
from drivers.medibus.simulator import (
    PatientScenario,
    Scenario,
    SteadyScenario,
    VentilatorSimulator,
)
from drivers.scenario import DeterioratingPatient

STEP_S = 0.02


@dataclass
class FaultyPipe:
    """Delivers bytes in random pieces, one byte at a time at worst, corrupting some of them."""

    rng: random.Random
    corrupt_per_byte: float = 0.0
    corrupted: int = 0
    _queue: bytearray = field(default_factory=bytearray)

    def push(self, data: bytes) -> None:
        for byte in data:
            if self.rng.random() < self.corrupt_per_byte:
                self.corrupted += 1
                byte = self.rng.randrange(256)
            self._queue.append(byte)

    def pull(self) -> bytes:
        size = self.rng.choice((0, 1, 1, 2, 3, 7, 64))
        out = bytes(self._queue[:size])
        del self._queue[:size]
        return out


def _run(
    *,
    session: MedibusSession,
    simulator: VentilatorSimulator,
    until_s: float,
    to_device: Callable[[bytes], bytes] | FaultyPipe | None = None,
    to_host: FaultyPipe | None = None,
    start_s: float = 0.0,
    cut: tuple[float, float] | None = None,
) -> list[tuple[float, DriverEvent]]:
    """Advance both sides in STEP_S steps; `cut` drops everything on the line between two times."""
    events: list[tuple[float, DriverEvent]] = []
    now_s = start_s
    while now_s < until_s:
        session.poll(now_s=now_s)
        simulator.poll(now_s=now_s)
        host_out, device_out = session.data_to_send(), simulator.data_to_send()
        if cut is not None and cut[0] <= now_s < cut[1]:
            host_out = device_out = b""
        if isinstance(to_device, FaultyPipe):
            to_device.push(host_out)
            host_out = to_device.pull()
        if to_host is not None:
            to_host.push(device_out)
            device_out = to_host.pull()
        simulator.receive(host_out, now_s=now_s)
        session.receive(device_out, now_s=now_s)
        events += [(now_s, e) for e in session.events()]
        now_s += STEP_S
    return events


def _measurement_sets(events: list[tuple[float, DriverEvent]]) -> list[tuple[float, dict[str, float | None]]]:
    return [
        (t, {m.key: m.value for m in e.measurements})
        for t, e in events
        if isinstance(e, MeasurementsReceived)
    ]


def test_steady_back_to_back_link_up_then_measurements_with_keys_units_values() -> None:
    session = MedibusSession()
    simulator = VentilatorSimulator(scenario=SteadyScenario(), device_command_interval_s=2.0)
    events = _run(session=session, simulator=simulator, until_s=5.0)
    assert events[0][1] == LinkUp(model="SimVent XL 01.00", protocol_version="06.00")
    first = next(e for _, e in events if isinstance(e, MeasurementsReceived))
    by_key = {m.key: m for m in first.measurements}
    assert (by_key["ppeak"].value, by_key["ppeak"].unit) == (22.0, "mbar")
    assert (by_key["peep"].value, by_key["peep"].unit) == (5.0, "mbar")
    assert (by_key["vt"].value, by_key["vt"].unit) == (480.0, "mL")
    assert (by_key["rr"].value, by_key["rr"].unit) == (14.0, "/min")
    assert (by_key["mv"].value, by_key["mv"].unit) == (6.7, "L/min")
    assert (by_key["etco2"].value, by_key["etco2"].unit) == (38.0, "mm[Hg]")
    assert (by_key["fio2"].value, by_key["fio2"].unit) == (40.0, "%")
    assert by_key["p01"].valid is False
    assert by_key["p01"].value is None
    settings = next(e for _, e in events if isinstance(e, SettingsReceived))
    assert {s.key: s.value for s in settings.settings}["vt_set"] == 480.0
    assert any(isinstance(e, TextMessagesReceived) and e.messages == ("VC-CMV",) for _, e in events)
    assert 4 <= len(_measurement_sets(events)) <= 6
    assert session.counters.checksum_errors == 0
    assert session.counters.resyncs == 0
    assert simulator.echoes_received >= 1


def test_deteriorating_scenario_trends_and_paw_high_alarm() -> None:
    patient = DeterioratingPatient(stable_s=5.0, ramp_s=10.0)
    scenario = PatientScenario(patient=patient)
    session = MedibusSession()
    simulator = VentilatorSimulator(
        scenario=scenario, device_command_interval_s=2.0, nest_device_commands=True
    )
    events = _run(session=session, simulator=simulator, until_s=20.0)
    sets = _measurement_sets(events)
    early, late = sets[1][1], sets[-1][1]
    assert early["ppeak"] is not None
    assert late["ppeak"] is not None
    assert early["ppeak"] < 24.0 < 38.0 < late["ppeak"]
    assert early["vt"] == 480.0
    assert late["vt"] == 290.0
    assert early["rr"] == 14.0
    assert late["rr"] == 32.0
    assert early["etco2"] == 38.0
    assert late["etco2"] == 55.0
    alarm_lists = [(t, e.alarms) for t, e in events if isinstance(e, DeviceAlarmsReceived)]
    assert alarm_lists[0][1] == ()
    paw_high = [t for t, alarms in alarm_lists if any(a.text == "Paw high" for a in alarms)]
    assert paw_high
    pip_when_alarmed = [scenario.values_at(t)[MeasuredCodeCP1.PIP] for t in paw_high]
    assert all(pip is not None and pip > scenario.paw_limit_mbar for pip in pip_when_alarmed)
    assert paw_high[0] > patient.stable_s
    assert simulator.echoes_received >= 5
    assert session.counters.checksum_errors == 0
    assert session.counters.resyncs == 0


def test_device_silence_gives_link_down_and_re_icc_and_device_times_out_too() -> None:
    session = MedibusSession()
    simulator = VentilatorSimulator(scenario=SteadyScenario())
    events = _run(session=session, simulator=simulator, until_s=12.0, cut=(3.0, 8.0))
    kinds = [type(e) for _, e in events]
    assert kinds.count(LinkUp) == 2
    assert kinds.count(LinkDown) == 1
    down_at = next(t for t, e in events if isinstance(e, LinkDown))
    assert 5.0 <= down_at <= 6.1
    assert session.counters.timeouts == 1
    assert simulator.counters.timeouts == 1
    assert simulator.counters.handshakes == 2
    up_again = [t for t, e in events if isinstance(e, LinkUp)][1]
    assert up_again >= 8.0
    assert any(t > up_again for t, _ in _measurement_sets(events))


def test_fault_injecting_pipe_converges_and_counts_errors() -> None:
    rng = random.Random(20240611)
    to_device = FaultyPipe(rng=rng, corrupt_per_byte=0.002)
    to_host = FaultyPipe(rng=rng, corrupt_per_byte=0.002)
    session = MedibusSession()
    simulator = VentilatorSimulator(
        scenario=PatientScenario(patient=DeterioratingPatient()),
        device_command_interval_s=1.5,
        nest_device_commands=True,
    )
    events = _run(session=session, simulator=simulator, until_s=120.0, to_device=to_device, to_host=to_host)
    assert to_host.corrupted > 10
    errors = session.counters.checksum_errors + session.counters.resyncs
    assert errors > 0
    sets = _measurement_sets(events)
    assert len(sets) > 30
    assert any(isinstance(e, LinkUp) for _, e in events)
    assert session.link_up
    last = sets[-1][1]
    assert last["vt"] is not None
    assert last["vt"] < 300.0


def test_one_byte_at_a_time_without_corruption_loses_nothing() -> None:
    class OneByte(FaultyPipe):
        def pull(self) -> bytes:
            out = bytes(self._queue[:1])
            del self._queue[:1]
            return out

    session = MedibusSession()
    simulator = VentilatorSimulator(scenario=SteadyScenario(), nest_device_commands=True)
    events = _run(
        session=session,
        simulator=simulator,
        until_s=60.0,
        to_device=OneByte(rng=random.Random(1)),
        to_host=OneByte(rng=random.Random(2)),
    )
    assert any(isinstance(e, LinkUp) for _, e in events)
    assert len(_measurement_sets(events)) > 10
    assert session.counters.checksum_errors == 0
    assert session.counters.timeouts == 0


def test_base_scenario_reports_nothing_but_link_stays_up() -> None:
    session = MedibusSession()
    events = _run(session=session, simulator=VentilatorSimulator(scenario=Scenario()), until_s=4.0)
    sets = _measurement_sets(events)
    assert sets
    assert all(values == {} for _, values in sets)
    assert session.link_up
