"""Line noise with a good checksum: a repeated code rejects the frame, impossible values never turn valid.

Issue 6 saw FiO2 9421 %, VT 9352 mL, RR 6618/min published as valid, and one frame that named VT three
times. The frames here are real MEDIBUS frames with correct checksums (the simulator's codec).
"""

from __future__ import annotations

from datetime import UTC, datetime

from drivers.base import DriverEvent, LinkCounters, MeasurementsReceived
from drivers.medibus.codes import MEASURED_CP1, MeasuredCodeCP1
from drivers.medibus.device import EXTRA_DUPLICATE_CODES, parse_measurements
from drivers.medibus.session import MedibusSession
from drivers.medibus.simulator import (
    NOISE_VALUES,
    NoisyLineScenario,
    VentilatorSimulator,
    measured_payload,
)
from edge.twin import DeviceIdentity, TwinStore

STEP_S = 0.02
VENT = DeviceIdentity(bed="bed-07", device="vent-1", driver="medibus", protocol="MEDIBUS", port="/dev/x")


def test_a_frame_that_repeats_a_code_is_rejected_whole_and_counted() -> None:
    counters = LinkCounters()
    steady = measured_payload({MeasuredCodeCP1.FIO2: 40.0, MeasuredCodeCP1.PIP: 22.0})
    repeated = steady + measured_payload({MeasuredCodeCP1.VT: 480.0}) + b"889352" + b"88 4.8"
    assert parse_measurements(repeated, counters=counters) == ()
    assert counters.extra == {EXTRA_DUPLICATE_CODES: 1}
    assert counters.snapshot()[EXTRA_DUPLICATE_CODES] == 1
    case_only = measured_payload({MeasuredCodeCP1.VTI: 480.0}) + b"8b 490"
    assert parse_measurements(case_only, counters=counters) == (), "8B and 8b are the same code"
    assert counters.extra[EXTRA_DUPLICATE_CODES] == 2
    assert len(parse_measurements(steady, counters=counters)) == 2


def test_every_medibus_code_maps_to_its_own_key() -> None:
    keys = [spec.key for spec in MEASURED_CP1.values()]
    assert len(set(keys)) == len(keys), "two codes with one key would give two readings of it per frame"


def _run(session: MedibusSession, simulator: VentilatorSimulator, *, until_s: float) -> list[DriverEvent]:
    events: list[DriverEvent] = []
    now_s = 0.0
    while now_s < until_s:
        session.poll(now_s=now_s)
        simulator.poll(now_s=now_s)
        simulator.receive(session.data_to_send(), now_s=now_s)
        session.receive(simulator.data_to_send(), now_s=now_s)
        events += session.events()
        now_s += STEP_S
    return events


def test_issue_6_frames_through_session_and_twin_never_give_a_valid_impossible_value() -> None:
    session = MedibusSession()
    simulator = VentilatorSimulator(scenario=NoisyLineScenario(), device_command_interval_s=None)
    store = TwinStore(stale_after_s={"bed-07": 10.0}, devices=[VENT])
    events = _run(session, simulator, until_s=9.0)
    seen: dict[str, set[float]] = {}
    for index, event in enumerate(events):
        delta = store.apply(
            bed="bed-07",
            device="vent-1",
            event=event,
            received_at=datetime(2026, 11, 30, 12, 0, tzinfo=UTC),
            received_mono_s=float(index),
        )
        keys = [o.key for o in delta.observations]
        assert len(keys) == len(set(keys)), f"one batch with two readings of a key: {keys}"
        for observation in delta.observations:
            if observation.valid:
                seen.setdefault(observation.key, set()).add(observation.value or 0.0)
            elif observation.invalid_reason == "implausible":
                assert observation.value is None
                seen.setdefault(f"rejected {observation.key}", set()).add(observation.rejected_value or 0.0)
    assert seen["fio2"] == {40.0}
    assert seen["vt"] == {480.0}
    assert seen["rr"] == {14.0}
    noise = {f"rejected {MEASURED_CP1[code].key}": {value} for code, value in NOISE_VALUES.items()}
    assert {key: seen[key] for key in noise} == noise, "the impossible frames did arrive and were rejected"
    assert session.counters.extra[EXTRA_DUPLICATE_CODES] >= 2
    assert session.counters.checksum_errors == 0
    state = store.device_state(bed="bed-07", device="vent-1")
    assert state.counters["implausible_values"] >= 6
    assert sum(1 for e in events if isinstance(e, MeasurementsReceived) and e.measurements) >= 6
