"""Commands from the central station: every payload is judged, none raises, none turns an alarm off."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import AlarmPriority
from edge.alarms.commands import COMMANDS, NEVER_REMOTE, AckCommand, LimitsCommand, PauseCommand, parse
from edge.alarms.profile import DEFAULT_LIMITS, merge_limit
from edge.alarms.system import central_station_state


@given(name=st.sampled_from([*COMMANDS, *NEVER_REMOTE, "", "ACK", "ack/x"]), payload=st.binary(max_size=512))
def test_any_bytes_under_any_command_name_are_judged_without_raising(name: str, payload: bytes) -> None:
    parsed = parse(name, payload)
    assert (parsed.command is None) == (parsed.problem is not None)


@given(
    document=st.dictionaries(
        st.text(max_size=12), st.none() | st.integers() | st.floats() | st.text(max_size=20)
    )
)
def test_any_json_object_is_judged_without_raising(document: dict[str, object]) -> None:
    for name in COMMANDS:
        parse(name, json.dumps(document).encode())


def test_a_well_formed_ack_is_read_with_who_and_why() -> None:
    parsed = parse(
        "ack", b'{"command_id":"cs-1","alarm_id":"a-1","user":"nurse-7","role":"rn","reason":"seen"}'
    )
    assert parsed.command == AckCommand(
        command_id="cs-1", alarm_id="a-1", user="nurse-7", role="rn", reason="seen"
    )


@pytest.mark.parametrize(
    ("name", "payload", "words"),
    [
        ("ack", b'{"command_id":"c-1"}', "alarm_id"),
        ("ack", b'{"command_id":"c 1","alarm_id":"a"}', "command_id"),
        ("ack", b'{"command_id":"c-1","alarm_id":"a","extra":1}', "extra"),
        ("pause", b'{"command_id":"c-1","duration_s":0}', "duration_s"),
        ("pause", b'{"command_id":"c-1","duration_s":"forever"}', "duration_s"),
        ("limits", b'{"command_id":"c-1","key":"spo2","delay_s":30}', "delay_s"),
        ("news2", b'{"command_id":"c-1","consciousness":"asleep"}', "consciousness"),
        ("ack", b"[]", "invalid ack"),
        ("reboot", b'{"command_id":"c-1"}', "unknown command"),
    ],
)
def test_a_malformed_command_says_what_is_wrong(name: str, payload: bytes, words: str) -> None:
    parsed = parse(name, payload)
    assert parsed.command is None
    assert parsed.problem is not None
    assert words in parsed.problem


def test_the_command_id_of_a_rejected_command_is_kept_for_the_answer() -> None:
    assert parse("ack", b'{"command_id":"c-9"}').command_id == "c-9"
    assert parse("ack", b'{"command_id":"not valid!"}').command_id is None


@pytest.mark.parametrize("name", sorted(NEVER_REMOTE))
def test_turning_an_alarm_off_is_never_accepted_remotely(name: str) -> None:
    parsed = parse(name, b'{"command_id":"c-1"}')
    assert parsed.command is None
    assert parsed.problem is not None
    assert "never accepted remotely" in parsed.problem


def test_a_limits_command_changes_only_what_it_names() -> None:
    parsed = parse("limits", b'{"command_id":"c-1","key":"spo2","low":88}')
    assert isinstance(parsed.command, LimitsCommand)
    limit = merge_limit(
        key="spo2", base=DEFAULT_LIMITS["spo2"], override=parsed.command.override(), origin="command"
    )
    assert (limit.low, limit.condition_delay_s, limit.priority, limit.origin) == (
        88,
        DEFAULT_LIMITS["spo2"].condition_delay_s,
        AlarmPriority.MEDIUM,
        "command",
    )


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b'{"command_id":"c-1","key":"spo2","low":null}', "never switched off"),
        (b'{"command_id":"c-1","key":"spo2","low":-5}', "outside what can be measured"),
        (b'{"command_id":"c-1","key":"hr","low":130}', "must be below"),
        (b'{"command_id":"c-1","key":"shoe_size","low":1}', "not a key"),
    ],
)
def test_a_limits_command_that_would_not_be_a_usable_limit_is_refused(payload: bytes, words: str) -> None:
    parsed = parse("limits", payload)
    assert isinstance(parsed.command, LimitsCommand)
    with pytest.raises(ValueError, match=words):
        merge_limit(
            key=parsed.command.key,
            base=DEFAULT_LIMITS.get(parsed.command.key),
            override=parsed.command.override(),
            origin="command",
        )


def test_a_pause_without_duration_takes_the_configured_default() -> None:
    parsed = parse("pause", b'{"command_id":"c-1"}')
    assert isinstance(parsed.command, PauseCommand)
    assert parsed.command.duration_s is None


@pytest.mark.parametrize(
    ("payload", "state"),
    [
        (b'{"online": true, "timestamp": 1}', "online"),
        (b'{"online": false}', "offline"),
        (b'"offline"', "offline"),
        (b'{"state": "online"}', "online"),
        (b"", "unknown"),
        (b"\xff\xfe", "unknown"),
        (b"[1,2]", "unknown"),
        (b'{"online": "maybe"}', "unknown"),
    ],
)
def test_the_central_stations_state_is_read_from_either_form(payload: bytes, state: str) -> None:
    assert central_station_state(payload) == state
