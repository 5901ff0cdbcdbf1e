"""Session and monitor simulator wired back to back in memory with an injected clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import DriverEvent, LinkDown, LinkUp, MeasurementsReceived, WaveformChunk
from drivers.datex.codec import DatexDecoder
from drivers.datex.codes import WAVE_BUDGET_SAMPLES_PER_S, WaveRequestType, WaveSubrecordType
from drivers.datex.records import phdb_request, wave_request
from drivers.datex.session import DatexOptions, DatexSession
from drivers.datex.simulator import MonitorSimulator, vitals_to_raw
from drivers.scenario import DeterioratingPatient, Patient, SteadyPatient

STEP_S = 0.05


class Link:
    """Session <-> simulator in memory; `cut` drops everything the monitor sends."""

    def __init__(
        self, *, options: DatexOptions, patient: Patient, chunk_rng: random.Random | None = None
    ) -> None:
        self.session = DatexSession(options=options)
        self.simulator = MonitorSimulator(patient=patient, start_s=0.0, epoch_s=1_700_000_000.0)
        self.events: list[DriverEvent] = []
        self.now_s = 0.0
        self.cut = False
        self.rng = chunk_rng
        self.session.reset(now_s=0.0)

    def run(self, *, until_s: float) -> None:
        while self.now_s < until_s:
            self.now_s = round(self.now_s + STEP_S, 6)
            self.simulator.receive(self.session.data_to_send(), now_s=self.now_s)
            self.simulator.poll(now_s=self.now_s)
            to_host = self.simulator.data_to_send()
            if self.cut:
                to_host = b""
            if self.rng is None:
                self.session.receive(to_host, now_s=self.now_s)
            else:
                pos = 0
                while pos < len(to_host):
                    size = self.rng.choice((1, 2, 3, 7, 64, 500))
                    self.session.receive(to_host[pos : pos + size], now_s=self.now_s)
                    pos += size
            if self.now_s >= self.session.next_deadline_s():
                self.session.poll(now_s=self.now_s)
            self.events += self.session.events()

    def measured(self) -> list[MeasurementsReceived]:
        return [e for e in self.events if isinstance(e, MeasurementsReceived)]


def test_request_then_periodic_records_with_the_patients_values() -> None:
    link = Link(options=DatexOptions(interval_s=5), patient=SteadyPatient(), chunk_rng=random.Random(3))
    link.run(until_s=21.0)
    assert isinstance(link.events[0], LinkUp)
    measured = link.measured()
    assert len(measured) == 5
    values = {m.key: m for m in measured[-1].measurements}
    assert values["hr"].value == 78.0
    assert values["spo2"].value == 97.0
    assert values["pr"].value == 78.0
    assert (values["abp_sys"].value, values["abp_dia"].value, values["abp_mean"].value) == (118.0, 68.0, 85.0)
    assert values["cvp"].value == 8.0
    assert values["nbp_mean"].value == 90.0
    assert values["temp"].value == 37.1
    assert values["etco2"].value == pytest.approx(38.0, abs=0.05)
    assert values["fio2"].value == 40.0
    assert values["rr"].value == 14.0
    assert values["temp_2"].value is None
    assert values["temp_2"].device_flag == "invalid"
    assert values["eto2"].valid is False
    assert link.session.counters.checksum_errors == 0
    assert link.session.counters.resyncs == 0


def test_values_follow_the_scenario() -> None:
    link = Link(options=DatexOptions(interval_s=1, link_timeout_s=5.0), patient=DeterioratingPatient())
    link.run(until_s=130.0)
    last = {m.key: m.value for m in link.measured()[-1].measurements}
    assert last["hr"] == 118.0
    assert last["abp_mean"] == 62.0
    assert last["spo2"] == 86.0


def test_monitor_silence_times_out_and_the_request_goes_out_again() -> None:
    link = Link(options=DatexOptions(interval_s=2, link_timeout_s=6.0), patient=SteadyPatient())
    link.run(until_s=5.0)
    link.cut = True
    link.run(until_s=20.0)
    downs = [e for e in link.events if isinstance(e, LinkDown)]
    assert len(downs) == 1
    assert link.session.counters.timeouts == 1
    requests_before = link.simulator.counters.frames_out
    link.cut = False
    link.run(until_s=30.0)
    ups = [e for e in link.events if isinstance(e, LinkUp)]
    assert len(ups) == 2
    assert link.simulator.counters.frames_out > requests_before


def test_a_restarted_monitor_gets_the_request_again() -> None:
    link = Link(options=DatexOptions(interval_s=2, link_timeout_s=6.0), patient=SteadyPatient())
    link.run(until_s=5.0)
    link.simulator = MonitorSimulator(patient=SteadyPatient(), start_s=link.now_s)
    link.run(until_s=25.0)
    assert link.session.counters.timeouts == 1
    assert link.simulator.sending_displayed
    assert len(link.measured()) >= 5


def test_stop_request_ends_the_records() -> None:
    simulator = MonitorSimulator(patient=SteadyPatient())
    simulator.receive(phdb_request(interval_s=1).to_frame(), now_s=0.0)
    assert simulator.sending_displayed
    simulator.poll(now_s=3.0)
    simulator.receive(phdb_request(interval_s=0).to_frame(), now_s=3.0)
    simulator.data_to_send()
    simulator.poll(now_s=10.0)
    assert not simulator.sending_displayed
    assert simulator.data_to_send() == b""
    simulator.receive(phdb_request(interval_s=-1).to_frame(), now_s=11.0)
    assert simulator.data_to_send() != b""
    assert not simulator.sending_displayed


def test_waves_flow_within_the_budget() -> None:
    link = Link(options=DatexOptions(waves=True, interval_s=1, link_timeout_s=5.0), patient=SteadyPatient())
    link.run(until_s=4.0)
    chunks = [e for e in link.events if isinstance(e, WaveformChunk)]
    by_signal: dict[str, int] = {}
    for chunk in chunks:
        by_signal[chunk.signal] = by_signal.get(chunk.signal, 0) + len(chunk.samples)
    assert set(by_signal) == {"ecg", "abp", "pleth", "co2"}
    assert 3.0 * 300 <= by_signal["ecg"] <= 4.0 * 300
    assert sum(by_signal.values()) <= 4.0 * WAVE_BUDGET_SAMPLES_PER_S
    abp = [s for c in chunks if c.signal == "abp" for s in c.samples if s is not None]
    assert min(abp) >= 60.0
    assert max(abp) <= 125.0


def test_an_over_budget_wave_request_is_refused() -> None:
    simulator = MonitorSimulator(patient=SteadyPatient())
    too_much = (WaveSubrecordType.ECG1, WaveSubrecordType.ECG1, WaveSubrecordType.INVP1)
    simulator.receive(
        wave_request(waves=too_much, request=WaveRequestType.START_CONTINUOUS).to_frame(), now_s=0.0
    )
    assert simulator.refused_wave_requests == 1
    assert simulator.sending_waves == ()


def test_values_the_patient_has_not_got_stay_no_data() -> None:
    raw = vitals_to_raw({"hr": 70.0, "spo2": None})
    assert raw["ecg.hr"] == 70
    assert "spo2.spo2" not in raw


@settings(max_examples=150, deadline=None)
@given(noise=st.lists(st.binary(max_size=80), min_size=1, max_size=6))
def test_records_between_line_noise_still_arrive(noise: list[bytes]) -> None:
    """Garbage between records costs at most the record it touches, never a later one."""
    simulator = MonitorSimulator(patient=SteadyPatient())
    simulator.receive(phdb_request(interval_s=1).to_frame(), now_s=0.0)
    frames: list[bytes] = []
    for second in range(len(noise) + 1):
        simulator.poll(now_s=float(second))
        frames.append(simulator.data_to_send())
    session = DatexSession()
    session.reset(now_s=0.0)
    stream = b"".join(frame + junk for frame, junk in zip(frames, [*noise, b""], strict=True))
    session.receive(stream, now_s=1.0)
    measured = [e for e in session.events() if isinstance(e, MeasurementsReceived)]
    clean = sum(1 for junk in noise if b"\x7e" not in junk)
    assert len(measured) >= min(clean, len(frames) - 1)
    for event in measured:
        assert {m.key: m.value for m in event.measurements}["hr"] == 78.0


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600))
def test_the_simulator_survives_arbitrary_client_bytes(data: bytes) -> None:
    simulator = MonitorSimulator(patient=SteadyPatient())
    simulator.receive(data, now_s=0.0)
    simulator.receive(phdb_request(interval_s=1).to_frame(), now_s=0.5)
    simulator.poll(now_s=1.0)
    written = simulator.data_to_send()
    assert written
    counters = DatexDecoder().counters
    decoder = DatexDecoder(counters=counters)
    assert decoder.feed(written)
    assert counters.checksum_errors == 0
    assert counters.resyncs == 0
