"""Tests of the S/5 DRI client session: options, requests, link up/down, re-request, bad input."""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import DeviceSession, LinkDown, LinkUp, MeasurementsReceived, WaveformChunk
from drivers.datex.codec import DatexDecoder, Record, RecordHeader, SubrecordDescriptor
from drivers.datex.codes import DEFAULT_WAVES, MainType, NoData, PhdbSubrecordType, WaveRequestType
from drivers.datex.records import (
    basic_subrecord,
    displayed_record,
    parse_phdb_request,
    parse_wave_request,
    wave_record,
    wave_subrecord,
)
from drivers.datex.session import (
    DRIVER,
    EXTRA_ALARM_RECORDS,
    EXTRA_OTHER_CLASSES,
    EXTRA_REQUEST_RETRIES,
    EXTRA_UNKNOWN_MAINTYPES,
    EXTRA_UNKNOWN_SUBRECORDS,
    EXTRA_UNREQUESTED_WAVES,
    DatexOptions,
    DatexSession,
    create_session,
    level_name,
    option_problems,
)
from drivers.registry import get_driver
from drivers.transport import _line_for
from drivers.vocabulary import DeviceKind
from edge.config import ConfigError, parse_config

RAW = {
    "ecg.hr": 80,
    "p1.sys": 12000,
    "p1.dia": 7000,
    "p1.mean": 8600,
    "spo2.spo2": 9800,
    "co2.amb_press": 7600,
}


def _displayed(raw: dict[str, int] = RAW) -> bytes:
    return displayed_record(subrecords=[basic_subrecord(raw=raw, time_s=1_700_000_000)]).to_frame()


def _sent(session: DatexSession) -> list[Record]:
    return DatexDecoder().feed(session.data_to_send())


def test_driver_registration() -> None:
    info = get_driver("datex")
    assert info is DRIVER
    assert info.device_kind is DeviceKind.MONITOR
    assert info.connections == frozenset({"port"})
    line = info.default_line
    assert (line.baud, line.bytesize, line.parity, line.stopbits, line.rtscts) == (19200, 8, "E", 1, True)
    assert isinstance(create_session({}), DeviceSession)


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"interval": 5}, "interval"),
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": 2.5}, "interval_s"),
        ({"interval_s": True}, "interval_s"),
        ({"interval_s": 61}, "interval_s"),
        ({"link_timeout_s": math.nan}, "link_timeout_s"),
        ({"link_timeout_s": -1}, "link_timeout_s"),
        ({"link_timeout_s": 9.0}, "link_timeout_s"),
        ({"interval_s": 10, "link_timeout_s": 15}, "link_timeout_s"),
        ({"waves": "yes"}, "waves"),
        ({"p1": "art"}, "p1"),
        ({"p2": "abp"}, "p1"),
    ],
)
def test_bad_options_are_named(options: dict[str, object], bad: str) -> None:
    problems = option_problems(options)
    assert bad in problems
    with pytest.raises(ValueError, match=bad):
        DatexOptions.from_mapping(options)


def test_good_options() -> None:
    options = {"interval_s": 2, "link_timeout_s": 7, "waves": True, "p3": "pap", "p4": "icp"}
    assert option_problems(options) == {}
    parsed = DatexOptions.from_mapping(options)
    assert parsed.link_timeout_s == 7.0
    assert parsed.pressure_sites == {"p1": "abp", "p2": "cvp", "p3": "pap", "p4": "icp"}
    assert "unknown datex option 'wave' (did you mean 'waves'?)" in option_problems({"wave": True})["wave"]


def test_reset_sends_the_displayed_value_request() -> None:
    session = DatexSession(options=DatexOptions(interval_s=5))
    assert session.next_deadline_s() == -math.inf
    session.reset(now_s=100.0)
    (request,) = _sent(session)
    parsed = parse_phdb_request(request)
    assert parsed is not None
    assert (parsed.record_type, parsed.interval_s, parsed.classes) == (PhdbSubrecordType.DISPLAYED, 5, 0)
    assert session.counters.frames_out == 1
    assert not session.link_up


def test_waves_option_also_sends_the_wave_request() -> None:
    session = DatexSession(options=DatexOptions(waves=True))
    session.reset(now_s=0.0)
    phdb, waves = _sent(session)
    assert phdb.header.maintype == MainType.PHDB
    parsed = parse_wave_request(waves)
    assert parsed is not None
    assert parsed.request == WaveRequestType.START_CONTINUOUS
    assert parsed.waves == tuple(DEFAULT_WAVES)


def test_link_up_on_the_first_record_then_measurements() -> None:
    session = DatexSession()
    session.reset(now_s=0.0)
    session.receive(_displayed()[:30], now_s=0.5)
    assert session.events() == []
    session.receive(_displayed()[30:] + _displayed(), now_s=1.0)
    events = session.events()
    assert isinstance(events[0], LinkUp)
    measured = [e for e in events if isinstance(e, MeasurementsReceived)]
    assert len(measured) == 2
    values = {m.key: m for m in measured[0].measurements}
    assert values["hr"].value == 80.0
    assert values["abp_mean"].value == 86.0
    assert values["nbp_sys"].value is None
    assert values["nbp_sys"].device_flag == "invalid"
    assert measured[0].device_time is not None
    assert session.link_up


def test_time_out_then_re_request_then_retry_while_silent() -> None:
    session = DatexSession(options=DatexOptions(interval_s=5, link_timeout_s=15.0))
    session.reset(now_s=0.0)
    session.data_to_send()
    session.receive(_displayed(), now_s=1.0)
    session.events()
    assert session.next_deadline_s() == 16.0
    session.poll(now_s=15.9)
    assert session.events() == []
    session.poll(now_s=16.0)
    events = session.events()
    assert len(events) == 1
    assert isinstance(events[0], LinkDown)
    assert "silent" in events[0].reason
    assert session.counters.timeouts == 1
    assert len(_sent(session)) == 1
    assert session.next_deadline_s() == 31.0
    session.poll(now_s=31.0)
    assert len(_sent(session)) == 1
    assert session.counters.extra[EXTRA_REQUEST_RETRIES] == 1
    assert session.events() == []
    session.receive(_displayed(), now_s=32.0)
    assert isinstance(session.events()[0], LinkUp)


def test_other_records_and_subrecords_are_counted_not_guessed() -> None:
    session = DatexSession()
    session.reset(now_s=0.0)
    ext1 = bytearray(basic_subrecord(raw=RAW))
    ext1[-1] = 0x01
    aux = displayed_record(subrecords=[basic_subrecord(raw=RAW)])
    aux_header = RecordHeader(
        r_len=aux.header.r_len,
        maintype=MainType.PHDB,
        subrecords=(SubrecordDescriptor(offset=0, type=PhdbSubrecordType.AUX_INFO),),
    )
    alarm = Record(header=RecordHeader(r_len=40, maintype=MainType.ALARM), data=b"")
    unknown = Record(header=RecordHeader(r_len=40, maintype=9), data=b"")
    stream = (
        displayed_record(subrecords=[bytes(ext1)]).to_frame()
        + Record(header=aux_header, data=aux.data).to_frame()
        + alarm.to_frame()
        + wave_record(waves=[(1, wave_subrecord([1, 2]))]).to_frame()
        + unknown.to_frame()
    )
    session.receive(stream, now_s=1.0)
    extra = session.counters.extra
    assert extra[EXTRA_OTHER_CLASSES] == 1
    assert extra[EXTRA_UNKNOWN_SUBRECORDS] == 1
    assert extra[EXTRA_ALARM_RECORDS] == 1
    assert extra[EXTRA_UNREQUESTED_WAVES] == 1
    assert extra[EXTRA_UNKNOWN_MAINTYPES] == 1
    assert [type(e) for e in session.events()] == [LinkUp]


def test_waves_become_chunks_and_co2_waits_for_the_ambient_pressure() -> None:
    session = DatexSession(options=DatexOptions(waves=True))
    session.reset(now_s=0.0)
    waves = wave_record(
        waves=[(1, wave_subrecord([100, int(NoData.OVER_RANGE)])), (9, wave_subrecord([500]))]
    )
    session.receive(waves.to_frame(), now_s=0.1)
    chunks = [e for e in session.events() if isinstance(e, WaveformChunk)]
    assert [c.signal for c in chunks] == ["ecg"]
    assert chunks[0].samples == (1.0, None)
    session.receive(_displayed() + waves.to_frame(), now_s=0.2)
    chunks = [e for e in session.events() if isinstance(e, WaveformChunk)]
    assert [c.signal for c in chunks] == ["ecg", "co2"]
    assert chunks[1].samples == pytest.approx((38.0,))


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.tuples(st.floats(min_value=0, max_value=20), st.binary(max_size=600)), max_size=12))
def test_session_survives_arbitrary_bytes(chunks: list[tuple[float, bytes]]) -> None:
    session = DatexSession(options=DatexOptions(waves=True))
    now_s = 0.0
    session.poll(now_s=now_s)
    for step_s, data in chunks:
        now_s += step_s
        session.receive(data, now_s=now_s)
        if now_s >= session.next_deadline_s():
            session.poll(now_s=now_s)
        assert not math.isnan(session.next_deadline_s())
        assert session._decoder.buffered_bytes <= session._decoder.cap_bytes
        for event in session.events():
            if isinstance(event, MeasurementsReceived):
                for m in event.measurements:
                    assert m.value is None or math.isfinite(m.value)
                    assert m.valid == (m.value is not None)
        for record in DatexDecoder().feed(session.data_to_send()):
            assert record.header.maintype in (MainType.PHDB, MainType.WAVE)


def test_the_config_check_asks_the_driver_about_its_options() -> None:
    document = tomllib.loads(
        (Path(__file__).parents[2] / "data" / "config" / "issue-example.toml").read_text()
    )
    device = document["bed"][0]["device"][0]
    device["driver"] = "datex"
    device.pop("baud", None)
    device["options"] = {"interval_s": 5, "waves": True, "p1": "abp", "p2": "cvp", "p3": "pap"}
    config = parse_config(document)
    assert config.bed[0].device[0].options["p3"] == "pap"
    device["options"] = {"interval_s": 0.5, "p1": "art", "wave": True}
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    assert [line.split(":")[0] for line in caught.value.lines] == [
        "bed[0].device[0].options.interval_s",
        "bed[0].device[0].options.p1",
        "bed[0].device[0].options.wave",
    ]


def test_the_transport_never_asks_a_pty_for_rts_cts() -> None:
    master, slave = os.openpty()
    try:
        pty_line = _line_for(os.ttyname(slave), DRIVER.default_line)
        assert (pty_line.rtscts, pty_line.parity) == (False, "N")
        assert _line_for("/dev/ttyS-not-a-pty", DRIVER.default_line).rtscts is True
        assert _line_for("socket://127.0.0.1:4001", DRIVER.default_line).rtscts is True
    finally:
        os.close(master)
        os.close(slave)


def test_dri_level_in_words() -> None:
    assert level_name(0x09) == "DRI level 2005"
    assert level_name(0x00) == "DRI level any"
    assert level_name(0x42) == "DRI level 0x42"
