"""Tests of the IntelliVue serial framing: FCS vectors, the real MX750 capture, stuffing, resync, caps."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.intellivue.framing import (
    EXTRA_ABORTS,
    EXTRA_BAD_HEADERS,
    FrameDecoder,
    encode_frame,
    escape,
    fcs16,
    unescape,
)

CAPTURE = Path(__file__).parents[2] / "data" / "intellivue" / "client-requests-mx750.raw"


def _wire(data: bytes) -> bytes:
    """Frame raw bytes the way the OpenICE vectors do (no 11 01 header: FCS over the data alone)."""
    fcs = fcs16(data)
    return b"\xc0" + escape(data + bytes((fcs & 0xFF, fcs >> 8))) + b"\xc1"


def test_fcs_check_value_is_crc16_x25() -> None:
    assert fcs16(b"123456789") == 0x906E


@pytest.mark.parametrize(
    ("data", "wire"),
    [("3A 71", "C0 3A 71 9B 26 C1"), ("3A 91", "C0 3A 91 95 7D E1 C1")],
    ids=["openice-plain", "openice-fcs-escaped"],
)
def test_openice_vectors_fcs_low_byte_first_and_escaped(data: str, wire: str) -> None:
    assert _wire(bytes.fromhex(data)) == bytes.fromhex(wire)


def test_fcs_of_second_vector_is_c195() -> None:
    assert fcs16(bytes.fromhex("3A 91")) == 0xC195


def test_every_frame_of_the_real_mx750_capture_passes_fcs_and_re_encodes_byte_for_byte() -> None:
    data = CAPTURE.read_bytes()
    decoder = FrameDecoder()
    messages = decoder.feed(data)
    assert len(messages) == 182
    assert decoder.counters.frames_in == 182
    assert decoder.counters.checksum_errors == 0
    # The one truncated abort frame (a C0 arrives before its C1) is the single resync.
    assert decoder.counters.resyncs == 1
    for message in messages:
        assert encode_frame(message) in data
    kinds = sorted({m[0] for m in messages})
    assert kinds == [0x0D, 0xE1]


def test_capture_decodes_the_same_fed_one_byte_at_a_time() -> None:
    data = CAPTURE.read_bytes()
    whole = FrameDecoder().feed(data)
    decoder = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(data)):
        out += decoder.feed(data[i : i + 1])
    assert out == whole


def test_stuffing_round_trips_every_special_byte() -> None:
    raw = bytes(range(256)) * 2
    stuffed = escape(raw)
    assert b"\xc0" not in stuffed
    assert b"\xc1" not in stuffed
    assert unescape(stuffed) == raw


def test_bad_fcs_is_counted_and_dropped_then_next_frame_decodes() -> None:
    good = encode_frame(b"\xe1\x00\x00\x02hello")
    bad = bytearray(good)
    bad[6] ^= 0x01
    decoder = FrameDecoder()
    assert decoder.feed(bytes(bad) + good) == [b"\xe1\x00\x00\x02hello"]
    assert decoder.counters.checksum_errors == 1


def test_abort_sequence_drops_the_frame() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\xc0\x11\x01\x00\x05ab\x7d\xc1" + encode_frame(b"ok")) == [b"ok"]
    assert decoder.counters.extra[EXTRA_ABORTS] == 1
    assert decoder.counters.checksum_errors == 0


def test_header_length_mismatch_is_dropped() -> None:
    body = b"\x11\x01\x00\x09" + b"abc"
    fcs = fcs16(body)
    decoder = FrameDecoder()
    assert decoder.feed(b"\xc0" + escape(body + bytes((fcs & 0xFF, fcs >> 8))) + b"\xc1") == []
    assert decoder.counters.extra[EXTRA_BAD_HEADERS] == 1


def test_partial_frame_past_the_cap_is_discarded_and_counted() -> None:
    decoder = FrameDecoder(cap_bytes=64)
    decoder.feed(b"\xc0" + b"x" * 100)
    assert decoder.buffered_bytes == 0
    assert decoder.counters.overflows == 1
    # The rest of that over-long frame is skipped; the next frame decodes.
    assert decoder.feed(b"y" * 10 + b"\xc1" + encode_frame(b"next")) == [b"next"]


def test_encode_rejects_user_data_beyond_16_bits() -> None:
    with pytest.raises(ValueError, match="16-bit"):
        encode_frame(bytes(0x10000))


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_any_bytes_any_split_never_raise_and_stay_under_cap(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(cap_bytes=256)
    for chunk in _split(data, cuts):
        for message in decoder.feed(chunk):
            assert isinstance(message, bytes)
        assert decoder.buffered_bytes <= decoder.cap_bytes


@settings(max_examples=300, deadline=None)
@given(
    messages=st.lists(st.binary(max_size=300), min_size=1, max_size=6),
    garbage=st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_frames_after_garbage_split_anywhere_all_arrive(
    messages: list[bytes], garbage: bytes, cuts: list[int]
) -> None:
    stream = garbage + b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    out: list[bytes] = []
    for chunk in _split(stream, cuts):
        out += decoder.feed(chunk)
    assert out[-len(messages) :] == messages


@pytest.mark.parametrize("split", [None, 50], ids=["whole", "split"])
def test_frame_over_the_cap_is_dropped_however_it_arrives(split: int | None) -> None:
    """Regression (fuzz target intellivue_codec): a frame over the cap decoded when it came in one read."""
    big = encode_frame(bytes(200))
    decoder = FrameDecoder(cap_bytes=128)
    chunks = [big] if split is None else [big[:split], big[split:]]
    out = [message for chunk in chunks for message in decoder.feed(chunk)]
    assert out == []
    assert decoder.counters.overflows == 1
    assert decoder.feed(encode_frame(b"small")) == [b"small"]
