"""MEDIBUS.X realtime curves: golden vectors, demultiplexing inside slow frames, robustness, end to end.

Golden checksums and sample values below were worked out by hand from the rules in the protocol notes
§2.2 and §2.6 (sum of the bytes mod 256 as two hex characters; raw = b0 & 3F | (b1 & 3F) << 6;
value = raw / maxbin * (max - min) + min), not produced by the code under test.
"""

from __future__ import annotations

import bisect
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import LinkCounters, LinkDown, MeasurementsReceived, WaveformChunk
from drivers.medibus.codec import Command, MedibusDecoder, Response
from drivers.medibus.codes import CommandCode, MeasuredCodeCP1
from drivers.medibus.realtime import (
    EXTRA_BAD_CYCLES,
    EXTRA_CONFIG_MALFORMED,
    EXTRA_OUT_OF_RANGE,
    EXTRA_SKIPPED,
    MAX_CYCLE_BYTES,
    CurveConfig,
    RealtimeDecoder,
    configure_args,
    enable_bytes,
    encode_cycle,
    parse_realtime_config,
    realtime_part,
)
from drivers.medibus.session import (
    DRIVER,
    EXTRA_CURVES_UNCONFIRMED,
    EXTRA_NO_CURVES,
    WAVE_CHUNK_S,
    MedibusOptions,
    MedibusSession,
    option_problems,
)
from drivers.medibus.simulator import SIM_CURVES, SteadyScenario, VentilatorSimulator, measured_payload

STEP_S = 0.02
PAW = CurveConfig(code="00", interval_us=20000, min_value=-20, max_value=100, max_bin=0xFFF)
FLOW = CurveConfig(code="01", interval_us=20000, min_value=-200, max_value=200, max_bin=0xFFF)
VOLUME = CurveConfig(code="03", interval_us=20000, min_value=0, max_value=2000, max_bin=0xFFF)


def _same(a: np.ndarray, b: np.ndarray) -> bool:  # type: ignore[type-arg]
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


# ---- golden vectors -------------------------------------------------------------------------------


def test_golden_12_bit_samples_decode_to_physical_values() -> None:
    decoder = RealtimeDecoder()
    decoder.configure([PAW, FLOW])
    # D3: streams 1 and 2 present. Paw: A5 8C -> 0x25 | 0x0C << 6 = 805 -> 805/4095*120 - 20.
    # Flow: 80 A0 -> 0 | 0x20 << 6 = 2048 -> 2048/4095*400 - 200. Then Paw BF BF = 4095 (max), flow
    # 80 80 = 0 (min); the trailing D0 closes the second cycle.
    paw, flow = decoder.feed(bytes.fromhex("d3 a5 8c 80 a0 d3 bf bf 80 80 d0"))
    assert paw.tolist() == pytest.approx([3.5897435897, 100.0])
    assert flow.tolist() == pytest.approx([0.0488400488, -200.0])
    assert decoder.counters.extra == {}


def test_golden_config_response_and_commands() -> None:
    record = b"00   20000  -20  100FFF"
    assert Response(code=CommandCode.REALTIME_CONFIG, data=record).to_bytes() == b"\x01S" + record + b"78\r"
    assert parse_realtime_config(record, counters=LinkCounters()) == (PAW,)
    assert PAW.to_record() == record
    assert Command(code=CommandCode.REALTIME_CONFIG).to_bytes() == b"\x1bS6E\r"
    configure = Command(
        code=CommandCode.CONFIGURE_REALTIME, args=configure_args([("00", 1), ("01", 1), ("03", 1)])
    )
    assert configure.to_bytes() == b"\x1bT000101010301B6\r"
    assert enable_bytes(4) == bytes.fromhex("d0 c1 cf c0 c0"), "protocol notes §2.6: enables streams 1-4"
    assert enable_bytes(3) == bytes.fromhex("d0 c1 c7 c0 c0")
    assert enable_bytes(0) == bytes.fromhex("d0 c1 c0 c0 c0")


def test_config_records_that_do_not_parse_are_skipped_and_counted() -> None:
    counters = LinkCounters()
    good = FLOW.to_record()
    bad_range = b"05   20000  100  -20FFF"
    bad_bin = b"06   20000    0  100XYZ"
    zero_bin = b"07   20000    0  100000"
    curves = parse_realtime_config(bad_range + good + bad_bin + zero_bin + b"0A  2", counters=counters)
    assert curves == (FLOW,)
    assert counters.extra == {EXTRA_CONFIG_MALFORMED: 4}


def test_malformed_cycles_give_nan_for_their_streams_and_are_counted() -> None:
    decoder = RealtimeDecoder()
    decoder.configure([PAW, FLOW])
    stream = (
        b"\x81\x82"  # before the first sync: skipped
        + bytes.fromhex("d3 80 80")  # one sample for two streams: bad
        + bytes.fromhex("d1 cf c0 80 80")  # marked corrupt: bad
        + bytes.fromhex("d1 c6 80 80")  # a sync command without its argument: bad
        + bytes.fromhex("d1 e5 80 80")  # a byte outside the alphabet: bad
        + bytes.fromhex("d1 c6 c0 bf bf")  # start of inspiration mark, then Paw at max: good
        + bytes.fromhex("d1 80 80")  # good, closed by the next sync
        + bytes.fromhex("d2")
    )
    paw, flow = decoder.feed(stream)
    assert _same(paw, np.array([np.nan, np.nan, np.nan, np.nan, 100.0, -20.0]))
    assert _same(flow, np.array([np.nan]))
    assert decoder.counters.extra == {EXTRA_SKIPPED: 2, EXTRA_BAD_CYCLES: 4}


def test_streams_5_to_8_come_from_the_c4_command_and_out_of_range_raw_is_nan() -> None:
    curves = [PAW, FLOW, VOLUME, PAW, FLOW]
    decoder = RealtimeDecoder()
    decoder.configure(curves)
    cycle = encode_cycle(raws=[0, None, None, None, 4095])
    assert cycle[:3] == bytes.fromhex("d1 c4 c1")
    small_bin = CurveConfig(code="00", interval_us=20000, min_value=0, max_value=10, max_bin=100)
    out = decoder.feed(cycle + b"\xd0")
    assert [o.tolist() for o in out] == [[-20.0], [], [], [], [200.0]]
    decoder.configure([small_bin])
    (values,) = decoder.feed(encode_cycle(raws=[50]) + encode_cycle(raws=[101]) + b"\xd0")
    assert _same(values, np.array([5.0, np.nan]))
    assert decoder.counters.extra[EXTRA_OUT_OF_RANGE] == 1


def test_a_batch_is_held_until_full_and_flush_decodes_it() -> None:
    decoder = RealtimeDecoder()
    decoder.configure([PAW], batch_bytes=10)
    (nothing,) = decoder.feed(encode_cycle(raws=[0]) + encode_cycle(raws=[4095]))
    assert nothing.size == 0
    assert decoder.buffered_bytes == 6
    (two,) = decoder.feed(encode_cycle(raws=[0]) + b"\xd1")
    assert two.tolist() == [-20.0, 100.0, -20.0]
    assert decoder.buffered_bytes == 1
    (held,) = decoder.feed(b"\x80\x80")
    assert held.size == 0
    assert decoder.flush()[0].size == 0, "an unfinished cycle stays held"
    with pytest.raises(ValueError, match="batch_bytes"):
        decoder.configure([PAW], batch_bytes=-1)


def test_an_over_long_cycle_is_dropped_and_the_carry_stays_bounded() -> None:
    decoder = RealtimeDecoder()
    decoder.configure([PAW])
    (first,) = decoder.feed(b"\xd1" + b"\x80" * (MAX_CYCLE_BYTES + 10))
    assert _same(first, np.array([np.nan]))
    assert decoder.buffered_bytes == 0
    (second,) = decoder.feed(b"\x80\x80" + encode_cycle(raws=[4095]) + b"\xd0")
    assert second.tolist() == [100.0]


# ---- demultiplexing -------------------------------------------------------------------------------


def test_realtime_bytes_inside_a_slow_frame_leave_the_frame_intact_and_give_their_samples() -> None:
    frame = Response(
        code=CommandCode.MEASURED_CP1,
        data=measured_payload({MeasuredCodeCP1.PIP: 25.0, MeasuredCodeCP1.PEEP: 5.0}),
    ).to_bytes()
    cycles = [
        encode_cycle(raws=[raw, 4095 - raw], commands=b"\xc6\xc1" if raw == 7 else b"")
        for raw in (0, 7, 4095)
    ]
    line = frame[:3] + cycles[0] + frame[3:9] + cycles[1] + frame[9:] + cycles[2] + b"\xd0"
    decoder = MedibusDecoder()
    realtime = RealtimeDecoder()
    realtime.configure([PAW, FLOW])
    assert decoder.feed(line) == [Response.from_bytes(frame)]
    paw, flow = realtime.feed(realtime_part(line))
    assert paw.tolist() == pytest.approx([-20.0, -20.0 + 7 / 4095 * 120, 100.0])
    assert flow.tolist() == pytest.approx([200.0, 200.0 - 7 / 4095 * 400, -200.0])
    assert decoder.counters.checksum_errors == decoder.counters.resyncs == 0


_cycles = st.lists(
    st.tuples(st.integers(0, 4095), st.integers(0, 4095), st.sampled_from([b"", b"\xc6\xc0", b"\xc6\xc1"])),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(cycles=_cycles, cuts=st.lists(st.integers(0, 2000), max_size=12))
def test_any_split_of_interleaved_slow_and_realtime_bytes_recovers_both_streams(
    cycles: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    frames = [
        Response(
            code=CommandCode.MEASURED_CP1, data=measured_payload({MeasuredCodeCP1.VT: float(i)})
        ).to_bytes()
        for i in range(len(cycles))
    ]
    line = bytearray()
    for frame, (paw, flow, marks) in zip(frames, cycles, strict=True):
        middle = len(frame) // 2
        line += frame[:middle] + encode_cycle(raws=[paw, flow], commands=marks) + frame[middle:]
    line += b"\xd0"
    session_side = MedibusDecoder()
    realtime = RealtimeDecoder()
    realtime.configure([PAW, FLOW])
    got_frames: list[bytes] = []
    paw_samples: list[float] = []
    points = sorted({0, len(line), *(c % (len(line) + 1) for c in cuts)})
    for start, end in itertools.pairwise(points):
        chunk = bytes(line[start:end])
        got_frames += [f.to_bytes() for f in session_side.feed(chunk)]
        paw_samples += realtime.feed(realtime_part(chunk))[0].tolist()
        assert realtime.buffered_bytes <= MAX_CYCLE_BYTES
    assert got_frames == frames
    assert paw_samples == pytest.approx([PAW.to_values(np.array([p]))[0] for p, _, _ in cycles])


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=400),
    cuts=st.lists(st.integers(0, 400), max_size=10),
    batch=st.sampled_from([0, 1, 7, 84, 500]),
)
def test_arbitrary_realtime_bytes_split_anywhere_give_the_same_samples_with_a_bounded_carry(
    data: bytes, cuts: list[int], batch: int
) -> None:
    whole = RealtimeDecoder()
    whole.configure([PAW, FLOW, VOLUME])
    expected = whole.feed(data)
    split = RealtimeDecoder()
    split.configure([PAW, FLOW, VOLUME], batch_bytes=batch)
    got: list[list[np.ndarray]] = [[], [], []]  # type: ignore[type-arg]
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, end in itertools.pairwise(points):
        for index, samples in enumerate(split.feed(data[start:end])):
            got[index].append(samples)
        assert split.buffered_bytes <= max(MAX_CYCLE_BYTES, batch - 1)
    for index, samples in enumerate(split.flush()):
        got[index].append(samples)
    for index, curve in enumerate((PAW, FLOW, VOLUME)):
        assert _same(np.concatenate([np.empty(0), *got[index]]), expected[index])
        assert all(math.isnan(v) or curve.min_value <= v <= curve.max_value for v in expected[index].tolist())


@settings(max_examples=150, deadline=None)
@given(chunks=st.lists(st.binary(max_size=200), max_size=20))
def test_a_session_with_waves_survives_arbitrary_bytes_with_bounded_buffers(chunks: list[bytes]) -> None:
    session = MedibusSession(options=MedibusOptions(waves=True, buffer_cap_bytes=256))
    now_s = 0.0
    simulator = VentilatorSimulator(scenario=SteadyScenario(), device_command_interval_s=None)
    for _ in range(20):
        session.poll(now_s=now_s)
        simulator.receive(session.data_to_send(), now_s=now_s)
        simulator.poll(now_s=now_s)
        session.receive(simulator.data_to_send(), now_s=now_s)
        now_s += STEP_S
    for chunk in chunks:
        session.receive(chunk, now_s=now_s)
        session.poll(now_s=now_s)
        session.data_to_send()
        now_s += STEP_S
        assert session._decoder.buffered_bytes <= 257
        assert session._realtime.buffered_bytes <= session._realtime.max_buffered_bytes
        for event in session.events():
            if isinstance(event, WaveformChunk):
                assert all(v is None or math.isfinite(v) for v in event.samples)


# ---- options ----------------------------------------------------------------------------------------


def test_waves_option_is_a_boolean_known_to_the_registry() -> None:
    assert "waves" in DRIVER.option_names
    assert MedibusOptions().waves is False
    assert MedibusOptions.from_mapping({"waves": True}).waves is True
    assert option_problems({"waves": True}) == {}
    assert option_problems({"waves": 1}) == {"waves": "must be true or false, got 1"}
    assert "waves" in option_problems({"waves": "yes"})
    assert "did you mean 'waves'" in option_problems({"wave": True})["wave"]
    with pytest.raises(ValueError, match="waves"):
        MedibusOptions.from_mapping({"waves": "true"})


# ---- session <-> simulator ------------------------------------------------------------------------


def _run(
    session: MedibusSession, simulator: VentilatorSimulator, *, until_s: float, start_s: float = 0.0
) -> list[tuple[float, object]]:
    events: list[tuple[float, object]] = []
    now_s = start_s
    while now_s < until_s:
        session.poll(now_s=now_s)
        simulator.poll(now_s=now_s)
        simulator.receive(session.data_to_send(), now_s=now_s)
        session.receive(simulator.data_to_send(), now_s=now_s)
        events += [(now_s, e) for e in session.events()]
        now_s += STEP_S
    return events


def test_back_to_back_chunks_have_the_samples_of_the_elapsed_time_within_the_configured_range() -> None:
    session = MedibusSession(options=MedibusOptions(waves=True))
    simulator = VentilatorSimulator(scenario=SteadyScenario(), device_command_interval_s=2.0)
    events = _run(session, simulator, until_s=10.0)
    chunks = [e for _, e in events if isinstance(e, WaveformChunk)]
    measured = [t for t, e in events if isinstance(e, MeasurementsReceived)]
    assert len(measured) >= 9, "the slow data keeps its one-second cycle with the curves on"
    assert session.counters.checksum_errors == session.counters.resyncs == 0
    assert session.counters.extra.get(EXTRA_BAD_CYCLES, 0) == 0
    window = round(WAVE_CHUNK_S / 0.02)
    by_code = {curve.code: curve for curve in SIM_CURVES}
    for signal, unit, code in (("paw", "mbar", "00"), ("flow", "L/min", "01"), ("volume", "mL", "03")):
        mine = [c for c in chunks if c.signal == signal]
        assert all(
            (c.unit, c.device_code, c.sample_period_s, len(c.samples)) == (unit, code, 0.02, window)
            for c in mine
        )
        samples = [v for c in mine for v in c.samples]
        elapsed_cycles = round((10.0 - 0.1) / 0.02)
        assert elapsed_cycles - 2 * window <= len(samples) <= elapsed_cycles
        curve = by_code[code]
        assert all(v is not None and curve.min_value <= v <= curve.max_value for v in samples)
    paw = [v for c in chunks if c.signal == "paw" for v in c.samples if v is not None]
    step = 120 / 4095
    assert min(paw) == pytest.approx(5.0, abs=step)
    assert max(paw) == pytest.approx(22.0, abs=step)
    volume = [v for c in chunks if c.signal == "volume" for v in c.samples if v is not None]
    assert max(volume) == pytest.approx(480.0, abs=2000 / 4095)
    assert not [c for c in chunks if c.device_code == "06"], "CO2 is offered but was not configured"


def test_waves_off_by_default_the_device_never_streams() -> None:
    session = MedibusSession()
    simulator = VentilatorSimulator(scenario=SteadyScenario())
    events = _run(session, simulator, until_s=3.0)
    assert not [e for _, e in events if isinstance(e, WaveformChunk)]
    assert not simulator.streaming
    assert "realtime_bytes" not in session.counters.extra


def test_link_loss_hands_out_pending_samples_then_waves_resume_after_the_new_handshake() -> None:
    session = MedibusSession(options=MedibusOptions(waves=True))
    simulator = VentilatorSimulator(scenario=SteadyScenario())
    events: list[tuple[float, object]] = []
    events += _run(session, simulator, until_s=3.0)
    now_s = 3.0
    while now_s < 7.0:  # the line is cut: nothing either way
        session.poll(now_s=now_s)
        simulator.poll(now_s=now_s)
        session.data_to_send()
        simulator.data_to_send()
        events += [(now_s, e) for e in session.events()]
        now_s += STEP_S
    events += _run(session, simulator, until_s=12.0, start_s=now_s)
    down = next(i for i, (_, e) in enumerate(events) if isinstance(e, LinkDown))
    before = [e for _, e in events[:down] if isinstance(e, WaveformChunk)]
    assert before
    assert len(before[-1].samples) < round(WAVE_CHUNK_S / 0.02), "the partial window came out"
    after = [t for t, e in events[down:] if isinstance(e, WaveformChunk)]
    assert after
    assert after[0] > 7.0


def test_realtime_configuration_changed_disables_and_configures_anew() -> None:
    session = MedibusSession(options=MedibusOptions(waves=True))
    simulator = VentilatorSimulator(scenario=SteadyScenario())
    _run(session, simulator, until_s=2.0)
    session.receive(Command(code=CommandCode.REALTIME_CONFIG_CHANGED).to_bytes(), now_s=2.0)
    sent = session.data_to_send()
    assert sent.endswith(bytes.fromhex("d0 c1 c0 c0 c0"))
    assert sent.startswith(Response(code=CommandCode.REALTIME_CONFIG_CHANGED).to_bytes())
    simulator.receive(sent, now_s=2.0)
    assert not simulator.streaming
    events = _run(session, simulator, until_s=4.0, start_s=2.0)
    assert simulator.streaming
    assert [e for _, e in events if isinstance(e, WaveformChunk)]


def test_values_come_first_then_a_device_without_the_curves_is_polled_without_waves() -> None:
    session = MedibusSession(options=MedibusOptions(waves=True))
    session.poll(now_s=0.0)
    assert session.data_to_send() == Command(code=CommandCode.ICC).to_bytes()
    session.receive(Response(code=CommandCode.ICC).to_bytes(), now_s=0.1)
    session.data_to_send()
    session.receive(Response(code=CommandCode.DEVICE_ID, data=b"SIM0'Old'01.00:03.00").to_bytes(), now_s=0.2)
    for code in (CommandCode.MEASURED_CP1, CommandCode.DEVICE_SETTINGS, CommandCode.ALARMS_CP1):
        assert session.data_to_send() == Command(code=code).to_bytes()
        session.receive(Response(code=code).to_bytes(), now_s=0.3)
    assert session.data_to_send() == Command(code=CommandCode.TEXT_MESSAGES).to_bytes()
    session.receive(Response(code=CommandCode.TEXT_MESSAGES).to_bytes(), now_s=0.4)
    assert session.data_to_send() == Command(code=CommandCode.REALTIME_CONFIG).to_bytes()
    session.poll(now_s=1.5)
    assert session.data_to_send() == Command(code=CommandCode.NOP).to_bytes()
    session.receive(Response(code=CommandCode.NOP).to_bytes(), now_s=1.6)
    session.poll(now_s=3.45)
    assert session.counters.extra["response_timeouts"] == 1, "a device that does not know the request"
    assert session.counters.extra[EXTRA_NO_CURVES] == 1
    assert session.data_to_send() == Command(code=CommandCode.MEASURED_CP1).to_bytes()
    assert session.link_up
    for code in (CommandCode.MEASURED_CP1, CommandCode.DEVICE_SETTINGS, CommandCode.ALARMS_CP1):
        session.receive(Response(code=code).to_bytes(), now_s=3.5)
        session.data_to_send()
    session.receive(Response(code=CommandCode.TEXT_MESSAGES).to_bytes(), now_s=3.6)
    assert session.data_to_send() == b"", "asked once per link"


def test_an_unconfirmed_curve_configuration_enables_nothing() -> None:
    session = MedibusSession(options=MedibusOptions(waves=True))
    session.poll(now_s=0.0)
    session.receive(Response(code=CommandCode.ICC).to_bytes(), now_s=0.1)
    session.receive(Response(code=CommandCode.DEVICE_ID, data=b"SIM0'X'01.00:06.00").to_bytes(), now_s=0.2)
    for code in (CommandCode.MEASURED_CP1, CommandCode.DEVICE_SETTINGS, CommandCode.ALARMS_CP1):
        session.receive(Response(code=code).to_bytes(), now_s=0.3)
    session.receive(Response(code=CommandCode.TEXT_MESSAGES).to_bytes(), now_s=0.3)
    offered = b"".join(curve.to_record() for curve in SIM_CURVES)
    session.data_to_send()
    session.receive(Response(code=CommandCode.REALTIME_CONFIG, data=offered).to_bytes(), now_s=0.4)
    assert session.data_to_send() == b"\x1bT000101010301B6\r"
    session.poll(now_s=1.5)
    session.receive(Response(code=CommandCode.NOP).to_bytes(), now_s=1.6)
    session.poll(now_s=3.45)
    assert session.counters.extra[EXTRA_CURVES_UNCONFIRMED] == 1
    assert not session.data_to_send().startswith(b"\xd0"), "no enable sequence"
    session.receive(encode_cycle(raws=[1, 2, 3]) * 30, now_s=3.5)
    assert not [e for e in session.events() if isinstance(e, WaveformChunk)]


def test_simulator_marks_each_breath_start_once_per_breath_period() -> None:
    session = MedibusSession(options=MedibusOptions(waves=True))
    simulator = VentilatorSimulator(scenario=SteadyScenario(), device_command_interval_s=None)
    stream = bytearray()
    now_s = 0.0
    while now_s < 20.0:
        session.poll(now_s=now_s)
        simulator.poll(now_s=now_s)
        simulator.receive(session.data_to_send(), now_s=now_s)
        out = simulator.data_to_send()
        stream += realtime_part(out)
        session.receive(out, now_s=now_s)
        now_s += STEP_S
    syncs = [i for i, byte in enumerate(stream) if byte & 0xF0 == 0xD0]

    def cycles_marked(mark: bytes) -> list[int]:
        return [bisect.bisect(syncs, i) for i in range(len(stream)) if stream[i : i + 2] == mark]

    starts, ends = cycles_marked(b"\xc6\xc0"), cycles_marked(b"\xc6\xc1")
    breath_cycles = 60.0 / 14.0 / 0.02
    assert len(starts) >= 3
    assert all(abs(b - a - breath_cycles) <= 1 for a, b in itertools.pairwise(starts))
    assert len(ends) >= 3
    assert all(
        0 < e - s < breath_cycles
        for s, e in zip(starts, ends[1:] if ends[0] < starts[0] else ends, strict=False)
    )
