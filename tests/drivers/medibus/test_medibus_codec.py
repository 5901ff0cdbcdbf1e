"""Tests of the MEDIBUS link layer: golden frames, checksum, streaming decoder and its resync rules."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import LinkCounters
from drivers.medibus.codec import (
    EXTRA_FLOW_CONTROL_BYTES,
    EXTRA_REALTIME_BYTES,
    Command,
    Frame,
    MedibusDecoder,
    Response,
    checksum,
)
from drivers.medibus.codes import CommandCode

VECTORS = json.loads(
    (Path(__file__).parents[2] / "data" / "medibus" / "vectors.json").read_text(encoding="utf-8")
)
PIP_PEEP = Response(code=CommandCode.MEASURED_CP1, data=b"7D  2578   5")


def _frame_of(vector: dict[str, Any]) -> Frame:
    code = int(vector["code"], 16)
    payload = vector["payload"].encode("latin-1")
    if vector["kind"] == "command":
        return Command(code=code, args=payload)
    return Response(code=code, data=payload)


@pytest.mark.parametrize("vector", VECTORS["frames"], ids=lambda v: v["name"])
def test_golden_frame_encodes_decodes_and_streams(vector: dict[str, Any]) -> None:
    frame = _frame_of(vector)
    raw = bytes.fromhex(vector["hex"])
    assert frame.to_bytes() == raw
    assert type(frame).from_bytes(raw) == frame
    decoder = MedibusDecoder()
    assert decoder.feed(raw) == [frame]
    assert decoder.counters.frames_in == 1


def test_checksum_is_uppercase_hex_of_byte_sum() -> None:
    assert checksum(b"\x1bQ") == b"6C"
    assert checksum(b"\x01$7D  2578   5") == b"4B"
    assert checksum(bytes([0xFF, 0x02])) == b"01"


def test_from_bytes_rejects_bad_checksum_and_wrong_start() -> None:
    with pytest.raises(ValueError, match="checksum"):
        Command.from_bytes(b"\x1bQ6D\r")
    with pytest.raises(ValueError, match="not a complete"):
        Response.from_bytes(b"\x1bQ6C\r")
    with pytest.raises(ValueError, match="not a complete"):
        Command.from_bytes(b"\x1bQ6C")


@pytest.mark.parametrize("bad", [b"a\rb", b"\x1b", b"\x01", b"\x11", b"\x13", b"\x80"])
def test_frame_rejects_payload_bytes_that_break_framing(bad: bytes) -> None:
    with pytest.raises(ValueError, match="payload byte"):
        Response(code=CommandCode.MEASURED_CP1, data=bad)


def test_frame_rejects_non_printable_code() -> None:
    with pytest.raises(ValueError, match="command code"):
        Command(code=0x0D)


def test_frames_are_immutable() -> None:
    frame = Command(code=CommandCode.NOP)
    with pytest.raises(AttributeError):
        frame.code = CommandCode.ICC  # type: ignore[misc]


def test_xon_xoff_anywhere_are_dropped_and_counted() -> None:
    raw = PIP_PEEP.to_bytes()
    noisy = b"\x11" + raw[:3] + b"\x13\x11" + raw[3:9] + b"\x13" + raw[9:] + b"\x11"
    decoder = MedibusDecoder()
    assert decoder.feed(noisy) == [PIP_PEEP]
    assert decoder.counters.extra[EXTRA_FLOW_CONTROL_BYTES] == 5
    assert decoder.counters.resyncs == 0


def test_realtime_bytes_interleaved_do_not_break_the_slow_frame() -> None:
    raw = PIP_PEEP.to_bytes()
    realtime = bytes([0xD0, 0xC6, 0xC0, 0x81, 0xBF])
    mixed = b"".join(bytes([b]) + realtime for b in raw)
    decoder = MedibusDecoder()
    assert decoder.feed(mixed) == [PIP_PEEP]
    assert decoder.counters.extra[EXTRA_REALTIME_BYTES] == len(raw) * len(realtime)


def test_device_command_inside_pending_response_yields_both_frames() -> None:
    response = PIP_PEEP.to_bytes()
    nop = Command(code=CommandCode.NOP).to_bytes()
    stream = response[:7] + nop + response[7:]
    decoder = MedibusDecoder()
    assert decoder.feed(stream) == [Command(code=CommandCode.NOP), PIP_PEEP]
    assert decoder.counters.resyncs == 0
    assert decoder.counters.checksum_errors == 0


def test_bad_checksum_is_counted_and_the_next_frame_decodes() -> None:
    corrupted = bytearray(PIP_PEEP.to_bytes())
    corrupted[4] = ord("9")
    icc = Command(code=CommandCode.ICC)
    decoder = MedibusDecoder()
    assert decoder.feed(bytes(corrupted) + icc.to_bytes()) == [icc]
    assert decoder.counters.checksum_errors == 1
    assert decoder.counters.frames_in == 1


def test_garbage_before_frame_is_one_resync() -> None:
    decoder = MedibusDecoder()
    assert decoder.feed(b"garbage\r\x03" + Command(code=CommandCode.NOP).to_bytes()) == [
        Command(code=CommandCode.NOP)
    ]
    assert decoder.counters.resyncs == 1


def test_new_response_start_inside_response_resyncs() -> None:
    decoder = MedibusDecoder()
    assert decoder.feed(b"\x01$7D  2" + PIP_PEEP.to_bytes()) == [PIP_PEEP]
    assert decoder.counters.resyncs == 1


def test_new_command_start_inside_command_resyncs() -> None:
    decoder = MedibusDecoder()
    nop = Command(code=CommandCode.NOP)
    assert decoder.feed(b"\x1bQ6" + nop.to_bytes()) == [nop]
    assert decoder.counters.resyncs == 1


def test_buffer_cap_discards_and_resyncs() -> None:
    counters = LinkCounters()
    decoder = MedibusDecoder(counters=counters, cap_bytes=64)
    frames = decoder.feed(b"\x01$" + b"7" * 200 + PIP_PEEP.to_bytes())
    assert frames == [PIP_PEEP]
    assert counters.overflows == 1
    assert decoder.buffered_bytes == 0


def test_cap_must_hold_a_frame() -> None:
    with pytest.raises(ValueError, match="cap_bytes"):
        MedibusDecoder(cap_bytes=4)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_any_bytes_any_split_never_raise_and_stay_under_cap(data: bytes, cuts: list[int]) -> None:
    decoder = MedibusDecoder(cap_bytes=256)
    for chunk in _split(data, cuts):
        decoder.feed(chunk)
        assert decoder.buffered_bytes <= decoder.cap_bytes


_PAYLOAD_BYTES = st.integers(min_value=0x00, max_value=0x7F).filter(
    lambda b: b not in (0x01, 0x0D, 0x11, 0x13, 0x1B)
)
_FRAMES = st.builds(
    lambda is_command, code, payload: (Command if is_command else Response)(
        code=code, **{"args" if is_command else "data": payload}
    ),
    st.booleans(),
    st.integers(min_value=0x20, max_value=0x7E),
    st.lists(_PAYLOAD_BYTES, max_size=200).map(bytes),
)


@settings(max_examples=300, deadline=None)
@given(frame=_FRAMES, cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_valid_frames_round_trip_and_stream_split_arbitrarily(frame: Frame, cuts: list[int]) -> None:
    raw = frame.to_bytes()
    assert type(frame).from_bytes(raw) == frame
    decoder = MedibusDecoder()
    out: list[Frame] = []
    for chunk in _split(raw, cuts):
        out += decoder.feed(chunk)
    assert out == [frame]
    assert decoder.counters.checksum_errors == 0


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(_FRAMES, min_size=1, max_size=8), garbage=st.binary(max_size=30))
def test_garbage_then_frames_recovers_every_frame(frames: list[Frame], garbage: bytes) -> None:
    decoder = MedibusDecoder()
    decoder.feed(garbage)
    out = decoder.feed(Command(code=CommandCode.NOP).to_bytes() + b"".join(f.to_bytes() for f in frames))
    assert out[-len(frames) :] == frames


def test_nested_command_start_at_full_cap_overflows_instead_of_growing() -> None:
    decoder = MedibusDecoder(cap_bytes=16)
    decoder.feed(b"\x01$" + b"7" * 14)
    assert decoder.buffered_bytes == 16
    decoder.feed(b"\x1b")
    assert decoder.buffered_bytes == 0
    assert decoder.counters.overflows == 1


@pytest.mark.parametrize("payload_bytes", [0, 1, 508, 509, 510, 511, 600, 4000])
def test_long_frames_of_the_largest_payload_byte_check_their_sum_exactly(payload_bytes: int) -> None:
    """The decoder sums frames up to 515 bytes with Adler-32 and longer ones directly: both exact."""
    frame = Response(code=CommandCode.MEASURED_CP1, data=b"\x7f" * payload_bytes)
    raw = frame.to_bytes()
    decoder = MedibusDecoder(cap_bytes=4096 + 8)
    assert decoder.feed(raw) == [frame]
    wrong = raw[:-3] + checksum(raw[:-3] + b"\x01") + b"\r"
    assert decoder.feed(wrong) == []
    assert (decoder.counters.frames_in, decoder.counters.checksum_errors) == (1, 1)


def test_dropped_frame_and_overflow_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="drivers.medibus.codec")
    decoder = MedibusDecoder(cap_bytes=16)
    decoder.feed(b"\x1bQ6D\r" + b"\x01$" + b"7" * 20)
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "dropped MEDIBUS frame b'\\x1bQ6D\\r': checksum mismatch: got b'6D', computed b'6C'",
        "MEDIBUS receive buffer passed 16 bytes; discarded",
    ]
