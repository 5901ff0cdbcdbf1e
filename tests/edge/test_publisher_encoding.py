"""The publisher's encoder (edge.contract): pydantic's Rust serializer, and the same payload meaning as
the Python encoder it replaced (every instant RFC 3339 UTC with milliseconds, `Z`)."""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.contract import encode_document, encode_message
from edge.model import EventBody, EventKind, Observation, VitalsBody, format_rfc3339_ms

NAIVE_MIN = datetime(2000, 1, 2, tzinfo=UTC).replace(tzinfo=None)
NAIVE_MAX = datetime(2099, 12, 30, tzinfo=UTC).replace(tzinfo=None)
INSTANTS = st.builds(
    lambda naive, minutes: naive.replace(
        tzinfo=UTC if minutes == 0 else timezone(timedelta(minutes=minutes))
    ),
    st.datetimes(min_value=NAIVE_MIN, max_value=NAIVE_MAX),
    st.sampled_from([0, 0, 60, -300, 330, -570, 765]),
)
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


def _reference(value: Any) -> Any:
    """What the Python encoder produced: model_dump with every datetime through format_rfc3339_ms."""
    if isinstance(value, datetime):
        return format_rfc3339_ms(value)
    if isinstance(value, dict):
        return {key: _reference(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_reference(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


@st.composite
def vitals_bodies(draw: st.DrawFn) -> VitalsBody:
    observations = [
        Observation(
            key=draw(TEXT),
            value=draw(st.none() | st.floats(allow_nan=False, allow_infinity=False)),
            unit=draw(TEXT),
            mdc=draw(st.none() | TEXT),
            label=draw(TEXT),
            device="mon-1",
            device_code=draw(TEXT),
            valid=draw(st.booleans()),
            device_time=draw(st.none() | INSTANTS),
            received_at=draw(INSTANTS),
        )
        for _ in range(draw(st.integers(0, 4)))
    ]
    return VitalsBody(device=draw(TEXT), observations=observations, coalesced=draw(st.integers(0, 9)))


@given(body=vitals_bodies(), ts=INSTANTS, seq=st.integers(0, 2**40))
def test_payload_means_what_the_python_encoder_wrote(body: VitalsBody, ts: datetime, seq: int) -> None:
    payload = json.loads(encode_message(body, appliance="edge7", bed="b1", session=3, seq=seq, ts=ts))
    expected = {
        "schema": body.SCHEMA,
        "appliance": "edge7",
        "bed": "b1",
        "session": 3,
        "seq": seq,
        "ts": format_rfc3339_ms(ts),
    } | _reference(body.model_dump())
    assert payload == expected


@given(at=INSTANTS, detail=TEXT)
def test_every_instant_is_utc_with_milliseconds(at: datetime, detail: str) -> None:
    body = EventBody(kind=EventKind.DEVICE_CONNECTED, detail=detail, at=at)
    payload = json.loads(encode_message(body, appliance="a", bed=None, session=1, seq=0, ts=at))
    assert payload["at"] == payload["ts"] == format_rfc3339_ms(at)
    assert len(payload["at"]) == len("2026-01-01T00:00:00.000Z")
    assert payload["detail"] == detail


def test_text_that_looks_like_an_instant_or_a_constant_is_left_alone() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for detail in ("2026-01-01T00:00:00.123456Z", "NaN", "Infinity", "2026-01-01T00:00:00+01:00", 'x"NaN"'):
        body = EventBody(kind=EventKind.DEVICE_CONNECTED, detail=detail, at=at)
        payload = json.loads(encode_message(body, appliance="a", bed=None, session=1, seq=0, ts=at))
        assert payload["detail"] == detail


def test_a_document_with_a_non_finite_number_is_refused() -> None:
    assert json.loads(encode_document({"history": True, "value": 1.5})) == {"history": True, "value": 1.5}
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match="JSON compliant"):
            encode_document({"value": value})
