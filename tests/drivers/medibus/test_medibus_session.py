"""Tests of the MEDIBUS host session driven by a fake clock: handshake, polling, keep-alive, time-outs."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import (
    DeviceAlarmsReceived,
    DeviceSession,
    LinkDown,
    LinkUp,
    MeasurementsReceived,
    SettingsReceived,
    TextMessagesReceived,
)
from drivers.medibus.codec import Command, Frame, MedibusDecoder, Response
from drivers.medibus.codes import CommandCode
from drivers.medibus.session import (
    DRIVER,
    EXTRA_CORRUPT_RETRIES,
    EXTRA_RESPONSE_TIMEOUTS,
    HOST_IDENTIFICATION,
    MAX_CORRUPT_RETRIES,
    MedibusOptions,
    MedibusSession,
)
from drivers.registry import get_driver

IDENT = b"SIM0'SimVent XL'01.00:06.00"


def _sent(session: MedibusSession) -> list[Frame]:
    return MedibusDecoder().feed(session.data_to_send())


def _cmd(code: CommandCode) -> Command:
    return Command(code=code)


def _answer(session: MedibusSession, code: CommandCode, data: bytes = b"", *, now_s: float) -> None:
    session.receive(Response(code=code, data=data).to_bytes(), now_s=now_s)


def _up_session(now_s: float = 0.0, *, options: MedibusOptions | None = None) -> MedibusSession:
    session = MedibusSession(options=options)
    session.reset(now_s=now_s)
    _answer(session, CommandCode.ICC, now_s=now_s)
    _answer(session, CommandCode.DEVICE_ID, IDENT, now_s=now_s)
    session.data_to_send()
    session.events()
    return session


def test_session_is_a_device_session_and_registered() -> None:
    session = MedibusSession()
    assert isinstance(session, DeviceSession)
    assert get_driver("medibus") is DRIVER
    assert DRIVER.default_line.baud == 19200
    assert DRIVER.default_line.parity == "E"
    created = DRIVER.create_session({"poll_interval_s": 2})
    assert isinstance(created, MedibusSession)
    assert created.options.poll_interval_s == 2.0
    assert DRIVER.option_names >= {"poll_interval_s", "keepalive_s", "link_timeout_s", "response_timeout_s"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"poll_intervall_s": 1.0}, "unknown medibus option 'poll_intervall_s'"),
        ({"poll_interval_s": "fast"}, "must be a number"),
        ({"poll_interval_s": True}, "must be a number"),
        ({"keepalive_s": 0}, "positive"),
        ({"keepalive_s": 3.0}, "below 3.0"),
        ({"link_timeout_s": 5.0}, "must not exceed"),
        ({"buffer_cap_bytes": 10.5}, "integer"),
        ({"buffer_cap_bytes": 8}, "at least 64"),
        ({"response_timeout_s": float("nan")}, "positive"),
    ],
)
def test_options_reject_unknown_and_invalid(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MedibusOptions.from_mapping(options)


def test_handshake_icc_then_identification_then_link_up_then_cycle() -> None:
    session = MedibusSession()
    assert session.next_deadline_s() == float("-inf")
    session.reset(now_s=10.0)
    assert _sent(session) == [_cmd(CommandCode.ICC)]
    assert not session.link_up
    _answer(session, CommandCode.ICC, now_s=10.1)
    assert _sent(session) == [_cmd(CommandCode.DEVICE_ID)]
    assert session.counters.handshakes == 1
    assert session.events() == []
    _answer(session, CommandCode.DEVICE_ID, IDENT, now_s=10.2)
    assert session.events() == [LinkUp(model="SimVent XL 01.00", protocol_version="06.00")]
    assert session.link_up
    assert _sent(session) == [_cmd(CommandCode.MEASURED_CP1)]
    _answer(session, CommandCode.MEASURED_CP1, b"7D  2578   5", now_s=10.3)
    assert _sent(session) == [_cmd(CommandCode.DEVICE_SETTINGS)]
    _answer(session, CommandCode.DEVICE_SETTINGS, b"0B    5", now_s=10.4)
    assert _sent(session) == [_cmd(CommandCode.ALARMS_CP1)]
    _answer(session, CommandCode.ALARMS_CP1, now_s=10.5)
    assert _sent(session) == [_cmd(CommandCode.TEXT_MESSAGES)]
    _answer(session, CommandCode.TEXT_MESSAGES, b"016VC-CMV\x03", now_s=10.6)
    assert _sent(session) == []
    events = session.events()
    assert [type(e) for e in events] == [
        MeasurementsReceived,
        SettingsReceived,
        DeviceAlarmsReceived,
        TextMessagesReceived,
    ]
    assert isinstance(events[0], MeasurementsReceived)
    assert [(m.key, m.value) for m in events[0].measurements] == [("ppeak", 25.0), ("peep", 5.0)]
    assert events[0].device_time is None
    assert events[2] == DeviceAlarmsReceived(alarms=())
    assert events[3] == TextMessagesReceived(messages=("VC-CMV",))
    assert session.next_deadline_s() == pytest.approx(11.2)
    session.poll(now_s=11.2)
    assert _sent(session) == [_cmd(CommandCode.MEASURED_CP1)]


def test_icc_retried_every_second_without_answer_and_no_link_down() -> None:
    session = MedibusSession()
    session.poll(now_s=0.0)
    assert _sent(session) == [_cmd(CommandCode.ICC)]
    session.poll(now_s=0.5)
    assert _sent(session) == []
    assert session.next_deadline_s() == pytest.approx(1.0)
    for now_s in (1.0, 2.0, 3.0, 4.0, 5.0):
        session.poll(now_s=now_s)
        assert _sent(session) == [_cmd(CommandCode.ICC)]
    assert session.events() == []
    assert session.counters.timeouts == 0


def test_malformed_identification_still_brings_link_up_without_model() -> None:
    session = MedibusSession()
    session.reset(now_s=0.0)
    _answer(session, CommandCode.ICC, now_s=0.1)
    _answer(session, CommandCode.DEVICE_ID, b"garbled", now_s=0.2)
    assert session.events() == [LinkUp(model=None, protocol_version=None)]
    assert session.link_up


def test_keepalive_nop_keeps_host_gaps_under_three_seconds() -> None:
    session = _up_session(options=MedibusOptions(poll_interval_s=60.0))
    _answer(session, CommandCode.MEASURED_CP1, now_s=0.1)
    _answer(session, CommandCode.DEVICE_SETTINGS, now_s=0.2)
    _answer(session, CommandCode.ALARMS_CP1, now_s=0.3)
    _answer(session, CommandCode.TEXT_MESSAGES, now_s=0.4)
    session.data_to_send()
    session.poll(now_s=0.4)
    tx_times = [0.4]
    now_s = 0.4
    while now_s < 2.9:
        now_s = session.next_deadline_s()
        session.poll(now_s=now_s)
        _answer(session, CommandCode.NOP, now_s=now_s)
        if session.data_to_send():
            tx_times.append(now_s)
    assert len(tx_times) >= 3
    assert max(b - a for a, b in itertools.pairwise(tx_times)) < 3.0
    assert session.link_up


def test_nop_sent_when_idle() -> None:
    session = _up_session()
    session.poll(now_s=0.99)
    assert _sent(session) == []
    session.poll(now_s=1.0)
    assert _cmd(CommandCode.NOP) in _sent(session)


def test_link_timeout_emits_link_down_and_restarts_icc() -> None:
    session = _up_session()
    session.poll(now_s=1.0)
    session.poll(now_s=2.0)
    session.data_to_send()
    assert session.next_deadline_s() <= 3.0
    session.poll(now_s=3.0)
    assert session.events() == [LinkDown(reason="device silent for 3.0 s")]
    assert not session.link_up
    assert session.counters.timeouts == 1
    assert _sent(session) == [_cmd(CommandCode.ICC)]
    _answer(session, CommandCode.ICC, now_s=3.5)
    _answer(session, CommandCode.DEVICE_ID, IDENT, now_s=3.6)
    assert isinstance(session.events()[0], LinkUp)
    assert session.counters.handshakes == 2


def test_unanswered_request_times_out_and_cycle_moves_on() -> None:
    session = _up_session()
    for now_s in (1.0, 2.0):
        session.poll(now_s=now_s)
        _answer(session, CommandCode.NOP, now_s=now_s)
    session.data_to_send()
    session.poll(now_s=3.0)
    assert _cmd(CommandCode.DEVICE_SETTINGS) in _sent(session)
    assert session.counters.extra[EXTRA_RESPONSE_TIMEOUTS] == 1
    assert session.link_up


@pytest.mark.parametrize("code", [CommandCode.ICC, CommandCode.NOP, CommandCode.REALTIME_CONFIG_CHANGED])
def test_device_commands_get_echo(code: CommandCode) -> None:
    session = _up_session()
    session.receive(Command(code=code).to_bytes(), now_s=0.5)
    assert _sent(session) == [Response(code=code)]
    assert session.counters.unknown_commands == 0
    assert session.link_up


def test_device_identification_request_answered_with_host_identity() -> None:
    session = _up_session()
    session.receive(Command(code=CommandCode.DEVICE_ID).to_bytes(), now_s=0.5)
    assert _sent(session) == [Response(code=CommandCode.DEVICE_ID, data=b"0161'icu-edge'01.00:06.00")]
    assert HOST_IDENTIFICATION.to_payload() == b"0161'icu-edge'01.00:06.00"


def test_unknown_device_command_gets_empty_echo_and_is_counted() -> None:
    session = _up_session()
    session.receive(Command(code=0x7A, args=b"xyz").to_bytes(), now_s=0.5)
    assert _sent(session) == [Response(code=0x7A)]
    assert session.counters.unknown_commands == 1


def test_stop_from_device_echoes_then_link_down_and_new_handshake() -> None:
    session = _up_session()
    session.receive(Command(code=CommandCode.STOP).to_bytes(), now_s=0.5)
    assert _sent(session) == [Response(code=CommandCode.STOP), _cmd(CommandCode.ICC)]
    assert session.events() == [LinkDown(reason="device sent stop communication")]
    assert not session.link_up


def test_bad_checksum_frame_is_counted_not_answered() -> None:
    session = _up_session()
    session.receive(b"\x1b0FF\r", now_s=0.5)
    assert session.counters.checksum_errors == 1
    assert _sent(session) == [_cmd(CommandCode.MEASURED_CP1)], "no echo; only the pending request again"


def test_counters_track_bytes_and_frames() -> None:
    session = MedibusSession()
    session.reset(now_s=0.0)
    sent = session.data_to_send()
    echo = Response(code=CommandCode.ICC).to_bytes()
    session.receive(echo, now_s=0.1)
    sent += session.data_to_send()
    assert session.counters.bytes_out == len(sent) == 10
    assert session.counters.frames_out == 2
    assert session.counters.bytes_in == len(echo)
    assert session.counters.frames_in == 1


def test_unexpected_response_ignored() -> None:
    session = _up_session()
    _answer(session, CommandCode.ALARMS_CP1, b"821Paw high    ", now_s=0.1)
    assert session.events() == []
    assert session.counters.extra["unexpected_responses"] == 1


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.tuples(st.binary(max_size=200), st.floats(min_value=0.0, max_value=2.0)), max_size=30)
)
def test_session_fed_arbitrary_bytes_never_raises(chunks: list[tuple[bytes, float]]) -> None:
    session = MedibusSession()
    now_s = 0.0
    session.reset(now_s=now_s)
    _answer(session, CommandCode.ICC, now_s=now_s)
    for data, step_s in chunks:
        now_s += step_s
        session.receive(data, now_s=now_s)
        session.poll(now_s=now_s)
        session.data_to_send()
        session.events()
        assert session.next_deadline_s() > now_s


def test_corrupted_answer_is_re_requested_at_once_not_after_the_response_timeout() -> None:
    """On a noisy line the answer to the pending request arrives with a bad checksum: ask again now."""
    session = _up_session()
    assert session.counters.extra.get(EXTRA_CORRUPT_RETRIES, 0) == 0
    good = Response(code=CommandCode.MEASURED_CP1, data=b"7D  22").to_bytes()
    corrupted = good[:3] + bytes([good[3] ^ 0x04]) + good[4:]
    session.receive(corrupted, now_s=0.2)
    assert session.counters.checksum_errors == 1
    assert _sent(session) == [_cmd(CommandCode.MEASURED_CP1)]
    assert session.counters.extra[EXTRA_CORRUPT_RETRIES] == 1
    session.receive(good, now_s=0.3)
    assert [type(e) for e in session.events()] == [MeasurementsReceived]
    assert _sent(session) == [_cmd(CommandCode.DEVICE_SETTINGS)]


def test_corrupted_answers_are_re_requested_a_bounded_number_of_times() -> None:
    session = _up_session()
    bad = b"\x01$7D  22FF\r"
    for attempt in range(1, MAX_CORRUPT_RETRIES + 3):
        session.receive(bad, now_s=0.1 * attempt)
        resent = _sent(session)
        assert resent == ([_cmd(CommandCode.MEASURED_CP1)] if attempt <= MAX_CORRUPT_RETRIES else []), attempt
    assert session.counters.extra[EXTRA_CORRUPT_RETRIES] == MAX_CORRUPT_RETRIES
    _answer(session, CommandCode.NOP, now_s=3.0)
    session.poll(now_s=0.1 * (MAX_CORRUPT_RETRIES + 2) + 3.0)
    assert _cmd(CommandCode.DEVICE_SETTINGS) in _sent(session), "the response time-out still moves on"
