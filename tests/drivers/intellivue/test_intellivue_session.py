"""IntelliVue client session against the monitor simulator, back to back, with an injected clock."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import (
    DataRefused,
    DeviceAlarmsReceived,
    DeviceSession,
    DriverEvent,
    LinkDown,
    LinkUp,
    MeasurementsReceived,
    WaveformChunk,
)
from drivers.intellivue import messages as m
from drivers.intellivue.framing import FrameDecoder, encode_frame
from drivers.intellivue.session import (
    DRIVER,
    EXTRA_DEMO_REFUSED,
    EXTRA_KEEPALIVES,
    EXTRA_REFUSALS,
    EXTRA_TEST_REFUSED,
    EXTRA_UNKNOWN_PHYSIO,
    RTSA_PRIORITY,
    IntellivueOptions,
    IntellivueSession,
    option_problems,
)
from drivers.intellivue.simulator import MonitorSimulator
from drivers.registry import get_driver
from drivers.scenario import DeterioratingPatient, SteadyPatient
from drivers.vocabulary import DeviceKind

STEP_S = 0.05


class Pair:
    """A session and a simulated monitor wired back to back; `run` advances the shared clock."""

    def __init__(self, *, lan: bool = False, options: Mapping[str, Any] | None = None, **sim: Any) -> None:
        opts = {"link": "lan" if lan else "serial", **(options or {})}
        self.session = IntellivueSession(options=IntellivueOptions.from_mapping(opts))
        self.monitor = MonitorSimulator(patient=sim.pop("patient", SteadyPatient()), lan=lan, **sim)
        self.now_s = 0.0
        self.events: list[DriverEvent] = []
        self.datagrams_to_monitor: list[bytes] = []

    def run(self, seconds: float) -> list[DriverEvent]:
        start = len(self.events)
        end_s = self.now_s + seconds
        while self.now_s < end_s:
            if self.now_s >= self.session.next_deadline_s():
                self.session.poll(now_s=self.now_s)
            while out := self.session.data_to_send():
                self.datagrams_to_monitor.append(out)
                self.monitor.receive(out, now_s=self.now_s)
            self.monitor.poll(now_s=self.now_s)
            while back := self.monitor.data_to_send():
                self.session.receive(back, now_s=self.now_s)
            self.events += self.session.events()
            self.now_s += STEP_S
        return self.events[start:]


def _of(events: list[DriverEvent], kind: type) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def _values(event: MeasurementsReceived) -> dict[str, float | None]:
    return {x.key: x.value for x in event.measurements}


@pytest.mark.parametrize("lan", [False, True], ids=["serial", "lan"])
def test_association_create_event_and_numerics(lan: bool) -> None:
    pair = Pair(lan=lan)
    events = pair.run(3.0)
    ups = _of(events, LinkUp)
    assert len(ups) == 1
    assert ups[0].model == "icu-edge SimMonitor"
    assert pair.session.link_up
    assert pair.monitor.requests["aarq"] == 1
    assert pair.monitor.create_confirmed == 1
    readings = _of(events, MeasurementsReceived)
    assert len(readings) >= 2
    values = _values(readings[-1])
    assert values["hr"] == 78.0
    assert values["spo2"] == 97.0
    assert (values["abp_sys"], values["abp_dia"], values["abp_mean"]) == (118.0, 68.0, 85.0)
    assert (values["nbp_sys"], values["nbp_mean"]) == (122.0, 90.0)
    assert values["temp"] == 37.1
    assert "map" not in values
    assert all(x.valid for x in readings[-1].measurements)
    assert pair.session.counters.handshakes == 1
    assert pair.session.counters.checksum_errors == 0


def test_lan_sends_one_message_per_datagram_without_framing() -> None:
    pair = Pair(lan=True)
    pair.run(2.0)
    assert pair.datagrams_to_monitor[0][0] == m.Spdu.CN
    for datagram in pair.datagrams_to_monitor:
        assert datagram[:1] != b"\xc0"
        assert m.spdu_of(datagram) is not None
        if datagram[0] == m.Spdu.DATA:
            m.decode_data(datagram)


@pytest.mark.parametrize("lan", [False, True], ids=["serial", "lan"])
def test_auto_link_finds_the_monitors_form(lan: bool) -> None:
    pair = Pair(lan=lan, options={"link": "auto"})
    events = pair.run(6.0)
    assert pair.session.link == ("lan" if lan else "serial")
    assert len(_of(events, LinkUp)) == 1
    assert _of(events, MeasurementsReceived)


def test_big_reply_arrives_as_rorls_chain_and_is_emitted_once_complete() -> None:
    pair = Pair(mtu_bytes=200)
    pair.run(0.5)
    events = pair.run(1.0)
    readings = _of(events, MeasurementsReceived)
    assert len(readings) == 1
    assert len(readings[0].measurements) == 14
    chain_parts = pair.session.counters.frames_in
    assert chain_parts > 6  # AARE, create event, and several linked parts per poll


def test_waves_are_scaled_chunks_of_the_vocabulary_signals() -> None:
    pair = Pair(options={"waves": True}, mtu_bytes=600)
    events = pair.run(3.0)
    chunks = _of(events, WaveformChunk)
    signals = {c.signal for c in chunks}
    assert signals == {"ecg", "pleth", "abp", "co2"}
    ecg = [c for c in chunks if c.signal == "ecg"]
    assert ecg[0].sample_period_s == pytest.approx(0.002)
    assert ecg[0].unit == "mV"
    abp = [s for c in chunks if c.signal == "abp" for s in c.samples]
    assert all(s is not None for s in abp)
    assert min(abp) > 60.0
    assert max(abp) < 125.0
    # One poll a second: after the first 0.25 s chunk each chunk holds the second since the last one.
    assert len(ecg) == 3
    assert len(ecg[0].samples) == 125
    assert all(475 <= len(c.samples) <= 525 for c in ecg[1:])  # 1 s +- one 50 ms clock step


def test_alarms_polled_and_mapped() -> None:
    patient = DeterioratingPatient(stable_s=0.0, ramp_s=1.0)
    pair = Pair(patient=patient, options={"alarm_interval_s": 1.0})
    events = pair.run(3.0)
    alarms = _of(events, DeviceAlarmsReceived)
    assert alarms
    texts = {(a.text, a.priority) for a in alarms[-1].alarms}
    assert ("SpO2 LOW", "high") in texts
    assert ("ABP MEAN LOW", "high") in texts


def test_keepalive_single_poll_when_polls_are_rare() -> None:
    pair = Pair(options={"poll_interval_s": 20.0, "alarms": False, "keepalive_s": 2.0})
    events = pair.run(12.0)
    assert pair.session.counters.extra[EXTRA_KEEPALIVES] >= 4
    assert pair.monitor.requests.get("poll:0021", 0) >= 4
    assert not _of(events, LinkDown)
    assert pair.session.link_up


def test_silent_monitor_times_out_then_reassociates() -> None:
    pair = Pair(options={"link_timeout_s": 4.0})
    pair.run(2.0)
    pair.monitor.mute = True
    events = pair.run(5.0)
    downs = _of(events, LinkDown)
    assert len(downs) == 1
    assert "silent" in downs[0].reason
    assert pair.session.counters.timeouts == 1
    assert not pair.session.link_up
    pair.monitor.mute = False
    events = pair.run(4.0)
    assert len(_of(events, LinkUp)) == 1
    assert pair.monitor.requests["aarq"] >= 2
    assert _of(events, MeasurementsReceived)


def test_refused_association_is_asked_again_after_the_retry_period() -> None:
    pair = Pair(refuse_associations=1, options={"aarq_retry_s": 1.0})
    pair.run(0.5)
    assert pair.session.counters.extra[EXTRA_REFUSALS] == 1
    assert not pair.session.link_up
    events = pair.run(2.0)
    assert pair.monitor.requests["aarq"] == 2
    assert len(_of(events, LinkUp)) == 1


def test_release_sends_fn_and_monitor_answers_dn() -> None:
    pair = Pair()
    pair.run(1.5)
    pair.session.release(now_s=pair.now_s)
    events = pair.run(2.0)
    assert pair.monitor.requests["release"] == 1
    assert not pair.monitor.associated
    assert _of(events, LinkDown)[0].reason == "association released"
    assert not _of(events, MeasurementsReceived)


def test_monitor_abort_ends_the_link_and_association_starts_over() -> None:
    pair = Pair()
    pair.run(1.5)
    pair.session.receive(encode_frame(m.ABORT), now_s=pair.now_s)
    events = pair.run(2.0)
    assert "aborted" in _of(events, LinkDown)[0].reason
    assert len(_of(events, LinkUp)) == 1


@pytest.mark.parametrize(
    ("sim", "reason", "counter"),
    [({"demo": True}, "demo_data", EXTRA_DEMO_REFUSED)],
    ids=["demo"],
)
def test_demo_monitor_values_are_refused_never_measurements(
    sim: dict[str, Any], reason: str, counter: str
) -> None:
    pair = Pair(options={"waves": True}, **sim)
    events = pair.run(3.0)
    assert _of(events, LinkUp)
    assert not _of(events, MeasurementsReceived)
    assert not _of(events, WaveformChunk)
    refusals = _of(events, DataRefused)
    assert refusals
    assert {r.reason for r in refusals} == {reason}
    assert "demo mode" in refusals[0].detail
    assert sum(r.count for r in refusals) == pair.session.counters.extra[counter]
    assert pair.session.counters.extra[counter] >= 14


def _numeric_reply(invoke_id: int, *values: m.NuObsValue) -> bytes:
    obs = m.Observation(handle=1, attributes=((m.Attr.NU_CMPD_VAL_OBS, m.encode_nu_compound(list(values))),))
    reply = m.PollReply(extended=True, poll_number=1, object_class=m.ObjectClass.NUMERIC, observations=(obs,))
    return encode_frame(m.encode_rors(invoke_id=invoke_id, command=7, result=m.encode_poll_result(reply)))


def test_test_data_refused_and_mixed_set_keeps_the_rest() -> None:
    pair = Pair(options={"alarms": False, "poll_interval_s": 2.0})
    pair.run(0.3)
    pair.monitor.mute = True
    pair.run(2.0)
    pair.session.events()
    invoke = pair.session._invoke_id
    pair.session.receive(
        _numeric_reply(
            invoke,
            m.NuObsValue(physio_id=0x4182, state=0x0800, unit_code=0x0AA0, raw_value=80),
            m.NuObsValue(physio_id=0x4BB8, state=0, unit_code=0x0220, raw_value=97),
            m.NuObsValue(physio_id=0x1234, state=0, unit_code=0x0220, raw_value=1),
        ),
        now_s=pair.now_s,
    )
    events = pair.session.events()
    refused = _of(events, DataRefused)
    assert [(r.reason, r.count) for r in refused] == [("test_data", 1)]
    readings = _of(events, MeasurementsReceived)
    assert [(x.key, x.value) for x in readings[0].measurements] == [("spo2", 97.0)]
    assert pair.session.counters.extra[EXTRA_TEST_REFUSED] == 1
    assert pair.session.counters.extra[EXTRA_UNKNOWN_PHYSIO] == 1


def test_options_are_checked_like_medibus() -> None:
    assert option_problems({}) == {}
    assert option_problems({"poll_interval_s": 2, "waves": True, "link": "lan"}) == {}
    problems = option_problems(
        {
            "poll_intervall_s": 1,
            "waves": "yes",
            "link": "usb",
            "keepalive_s": float("nan"),
            "buffer_cap_bytes": 1.5,
        }
    )
    assert "did you mean 'poll_interval_s'" in problems["poll_intervall_s"]
    assert set(problems) == {"poll_intervall_s", "waves", "link", "keepalive_s", "buffer_cap_bytes"}
    assert "keepalive_s" in option_problems({"keepalive_s": 12.0})
    assert "link_timeout_s" in option_problems({"link_timeout_s": 0.1})
    with pytest.raises(ValueError, match="poll_interval_s"):
        IntellivueOptions.from_mapping({"poll_interval_s": 0})


def test_registered_driver() -> None:
    info = get_driver("intellivue")
    assert info is DRIVER
    assert info.device_kind is DeviceKind.MONITOR
    assert info.connections == frozenset({"port", "address"})
    assert (info.default_line.baud, info.default_line.parity, info.default_line.bytesize) == (115200, "N", 8)
    assert isinstance(info.create_session({"waves": True}), DeviceSession)


_RECORDS = st.lists(st.tuples(st.floats(min_value=0.0, max_value=5.0), st.binary(max_size=300)), max_size=30)


@settings(max_examples=200, deadline=None)
@given(records=_RECORDS, lan=st.booleans())
def test_session_survives_arbitrary_bytes(records: list[tuple[float, bytes]], lan: bool) -> None:
    session = IntellivueSession(
        options=IntellivueOptions(link="lan" if lan else "serial", buffer_cap_bytes=1024)
    )
    now_s = 0.0
    session.reset(now_s=now_s)
    for step_s, data in records:
        now_s += step_s
        session.receive(data, now_s=now_s)
        if now_s >= session.next_deadline_s():
            session.poll(now_s=now_s)
        while session.data_to_send():
            pass
        session.events()
        assert session._decoder.buffered_bytes <= 1024


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(min_value=0, max_value=5000), noise=st.binary(max_size=50))
def test_session_survives_valid_replies_cut_and_mixed_with_noise(cut: int, noise: bytes) -> None:
    pair = Pair(options={"waves": True}, mtu_bytes=400)
    pair.run(0.2)
    pair.session.poll(now_s=pair.now_s + 1.0)
    request = pair.session.data_to_send()
    pair.monitor.receive(request, now_s=pair.now_s + 1.0)
    reply = pair.monitor.data_to_send()
    cut %= len(reply) + 1
    pair.session.receive(reply[:cut] + noise + reply[cut:] + reply, now_s=pair.now_s + 1.0)
    assert _of(pair.session.events(), MeasurementsReceived)


def test_auto_link_is_not_fooled_by_line_noise_before_the_first_frame() -> None:
    """Regression: noise before the AARE made `auto` decide on LAN for a serial line, for ever."""
    pair = Pair(options={"link": "auto"})
    pair.session.reset(now_s=0.0)
    pair.session.receive(b"\x00\x13noise", now_s=0.0)
    events = pair.run(6.0)
    assert pair.session.link == "serial"
    assert len(_of(events, LinkUp)) == 1


def test_repeated_refusals_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    pair = Pair(refuse_associations=5, options={"aarq_retry_s": 1.0})
    with caplog.at_level("WARNING", logger="drivers.intellivue.session"):
        pair.run(5.5)
    assert pair.session.counters.extra[EXTRA_REFUSALS] == 5
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1
    assert pair.session.link_up


def test_compound_sample_array_with_cached_format_and_invalid_state() -> None:
    pair = Pair(options={"alarms": False, "poll_interval_s": 2.0, "waves": True})
    pair.run(0.3)
    pair.monitor.mute = True
    pair.run(2.0)
    pair.session.events()
    invoke = pair.session._invoke_id  # the wave poll left unanswered (sent after the numerics poll)
    spec = m.SaSpec(array_size=2, sample_size=16, significant_bits=12, flags=0)
    scale = m.ScaleSpec(
        lower_absolute=m.encode_float(0.0),
        upper_absolute=m.encode_float(100.0),
        lower_scaled=0,
        upper_scaled=1000,
    )
    compound = b"".join(
        m.encode_sa_obs(m.SaObsValue(physio_id=physio, state=state, samples=bytes.fromhex("0064 01F4")))
        for physio, state in ((0x50AC, 0), (0x50AC, 0x8000))
    )
    value = m.attribute_list_header(2, len(compound)) + compound
    obs = m.Observation(
        handle=0x300,
        attributes=(
            (m.Attr.SA_SPECN, m.encode_sa_spec(spec)),
            (m.Attr.SCALE_SPECN_I16, m.encode_scale_spec(scale)),
            (m.Attr.TIME_PD_SAMP, m.encode_u32(128)),
            (m.Attr.SA_CMPD_VAL_OBS, value),
        ),
    )
    reply = m.PollReply(
        extended=True, poll_number=1, object_class=m.ObjectClass.SAMPLE_ARRAY_RT, observations=(obs,)
    )
    message = m.encode_rors(invoke_id=invoke, command=7, result=m.encode_poll_result(reply))
    pair.session.receive(encode_frame(message), now_s=pair.now_s)
    chunks = _of(pair.session.events(), WaveformChunk)
    assert [(c.signal, c.sample_period_s, c.samples) for c in chunks] == [
        ("co2", 0.016, (10.0, 50.0)),
        ("co2", 0.016, (None, None)),
    ]
    # The next reply leaves out the (static) format attributes: the format of handle 0x300 is kept.
    pair.run(2.0)
    pair.session.events()
    plain = m.Observation(
        handle=0x300,
        attributes=(
            (
                m.Attr.SA_VAL_OBS,
                m.encode_sa_obs(m.SaObsValue(physio_id=0x50AC, state=0, samples=bytes.fromhex("03E8"))),
            ),
        ),
    )
    reply = m.PollReply(
        extended=True, poll_number=2, object_class=m.ObjectClass.SAMPLE_ARRAY_RT, observations=(plain,)
    )
    message = m.encode_rors(invoke_id=pair.session._invoke_id, command=7, result=m.encode_poll_result(reply))
    pair.session.receive(encode_frame(message), now_s=pair.now_s)
    assert [c.samples for c in _of(pair.session.events(), WaveformChunk)] == [(100.0,)]


def _event(*, invoke_id: int, event_type: int, info: bytes) -> bytes:
    report = m.EventReport(object_class=m.ObjectClass.MDS, event_time=77, event_type=event_type, info=info)
    return encode_frame(
        m.encode_roiv(
            invoke_id=invoke_id,
            command=m.Command.CONFIRMED_EVENT_REPORT,
            argument=m.encode_event_report(report),
        )
    )


def test_every_confirmed_event_report_is_answered_and_a_bad_model_still_links_up() -> None:
    """Regression: other confirmed events went unanswered; an unreadable model kept the link down."""
    session = IntellivueSession(options=IntellivueOptions(link="serial"))
    session.reset(now_s=0.0)
    session.data_to_send()
    session.receive(encode_frame(m.build_aare()), now_s=0.1)
    session.receive(_event(invoke_id=4, event_type=0x0D17, info=b"\x01\x02"), now_s=0.2)
    bad_model = m.encode_mds_create_info([(m.Attr.ID_MODEL, b"\x00\x09ab")])
    session.receive(_event(invoke_id=5, event_type=m.NOM_NOTI_MDS_CREAT, info=bad_model), now_s=0.3)
    answers = [m.decode_data(x) for x in FrameDecoder().feed(session.data_to_send())]
    results = [(a.invoke_id, a.payload[-4:-2]) for a in answers if a.ro_type is m.RoType.RORS]
    assert results == [(4, b"\x0d\x17"), (5, b"\x0d\x06")]
    ups = _of(session.events(), LinkUp)
    assert len(ups) == 1
    assert ups[0].model is None


def test_waves_on_sets_the_rtsa_priority_list_once_per_association() -> None:
    pair = Pair(options={"waves": True})
    pair.monitor.rtsa_priority = ()
    pair.run(2.5)
    assert pair.monitor.requests["set"] == 1
    assert pair.monitor.rtsa_priority == RTSA_PRIORITY
    assert pair.session.counters.extra.get("unexpected_messages", 0) == 0
    assert {c.signal for c in _of(pair.events, WaveformChunk)} == {"ecg", "pleth", "abp", "co2"}
