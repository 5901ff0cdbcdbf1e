"""Tests of the S/5 DRI link layer: golden request frames, checksum, escaping, the resyncing decoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import LinkCounters
from drivers.datex.codec import (
    EXTRA_BAD_ESCAPES,
    EXTRA_CHECKSUM_VARIANT,
    MAX_ESCAPED_BODY_BYTES,
    MAX_RECORD_BYTES,
    DatexDecoder,
    Record,
    RecordHeader,
    SubrecordDescriptor,
    checksum,
    encode_frame,
    escape,
    unescape,
)
from drivers.datex.codes import MainType, PhdbClassRequest, WaveSubrecordType
from drivers.datex.records import parse_phdb_request, parse_wave_request, phdb_request

DATA = Path(__file__).parents[2] / "data" / "datex"
ICOLLECT = json.loads((DATA / "icollect_requests.json").read_text(encoding="utf-8"))
COMPUTED = json.loads((DATA / "computed_vectors.json").read_text(encoding="utf-8"))


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize("frame", ICOLLECT["frames"], ids=lambda f: f["name"])
def test_real_icollect_request_frames_pass_the_checksum(frame: dict[str, Any]) -> None:
    raw = _hex(frame["hex"])
    record_bytes = raw[1:-2]
    assert f"{checksum(record_bytes):02X}" == frame["checksum"]
    decoder = DatexDecoder()
    records = decoder.feed(raw)
    assert len(records) == 1
    assert records[0].header.maintype == frame["maintype"]
    assert records[0].to_bytes() == record_bytes
    assert decoder.counters.checksum_errors == 0
    assert decoder.counters.resyncs == 0
    assert records[0].to_frame() == raw


def test_icollect_requests_decode_to_what_they_ask() -> None:
    by_name = {f["name"]: DatexDecoder().feed(_hex(f["hex"]))[0] for f in ICOLLECT["frames"]}
    start = parse_phdb_request(by_name["START_PARAM_HEX"])
    stop = parse_phdb_request(by_name["STOP_PARAM_HEX"])
    assert start is not None
    assert (start.record_type, start.interval_s, start.classes) == (1, 10, 0x08)
    assert stop is not None
    assert stop.interval_s == 0
    waves = parse_wave_request(by_name["START_WAVES_HEX"])
    assert waves is not None
    assert waves.request == 0
    assert waves.waves == (
        WaveSubrecordType.ECG1,
        WaveSubrecordType.INVP1,
        WaveSubrecordType.PLETH,
        WaveSubrecordType.CO2,
    )
    assert by_name["START_WAVES_HEX"].header.r_len == 88
    assert len(by_name["START_WAVES_HEX"].to_bytes()) == 90


def test_computed_phdb_request_vector() -> None:
    vector = COMPUTED["phdb_request"]
    record = phdb_request(
        interval_s=vector["interval_s"],
        classes=PhdbClassRequest(vector["classes"]),
        dri_level=vector["dri_level"],
    )
    assert record.to_frame() == _hex(vector["hex"])
    assert len(record.to_bytes()) == 49
    assert record.header.r_len == 49


def test_header_round_trip_with_all_fields() -> None:
    header = RecordHeader(
        r_len=40 + 556,
        maintype=MainType.PHDB,
        dri_level=0x0A,
        r_nbr=7,
        plug_id=0xFDE8,
        r_time=1_728_513_061,
        n_subnet=3,
        subrecords=(SubrecordDescriptor(offset=0, type=1), SubrecordDescriptor(offset=278, type=1)),
    )
    raw = header.to_bytes()
    assert len(raw) == 40
    assert RecordHeader.from_bytes(raw) == header
    full = RecordHeader(
        r_len=40, maintype=1, subrecords=tuple(SubrecordDescriptor(offset=i, type=i + 1) for i in range(8))
    )
    assert RecordHeader.from_bytes(full.to_bytes()) == full


def test_escaping_of_flag_and_escape_bytes_including_the_checksum() -> None:
    assert escape(b"\x01\x7e\x7d\x02") == b"\x01\x7d\x5e\x7d\x5d\x02"
    assert unescape(escape(b"\x7e\x7d\x7d\x7e")) == b"\x7e\x7d\x7d\x7e"
    with pytest.raises(ValueError, match="escape"):
        unescape(b"\x01\x7d\x41")
    # a record whose sum is 7E: the checksum byte itself must travel escaped
    data = bytes(40) + bytes([0x7E])
    frame = encode_frame(data)
    assert frame.endswith(b"\x7d\x5e\x7e")
    assert DatexDecoder().feed(frame)[0].to_bytes() == data


def test_vscapture_checksum_variant_is_accepted_and_counted() -> None:
    record = bytes(39) + b"\x7e" + b"\x10\x7d"
    wire_record = escape(record)
    frame = b"\x7e" + wire_record + bytes([checksum(wire_record)]) + b"\x7e"
    counters = LinkCounters()
    records = DatexDecoder(counters=counters).feed(frame)
    assert [r.to_bytes() for r in records] == [record]
    assert counters.extra[EXTRA_CHECKSUM_VARIANT] == 1


def test_a_corrupted_frame_is_counted_and_the_next_one_decodes() -> None:
    good = phdb_request(interval_s=5).to_frame()
    bad = bytearray(good)
    bad[10] ^= 0x01
    counters = LinkCounters()
    records = DatexDecoder(counters=counters).feed(bytes(bad) + good)
    assert len(records) == 1
    assert counters.checksum_errors == 1


def test_garbage_before_the_first_flag_is_one_resync() -> None:
    good = phdb_request(interval_s=5).to_frame()
    counters = LinkCounters()
    decoder = DatexDecoder(counters=counters)
    records = decoder.feed(b"\x01\x02\x03" + good[5:]) + decoder.feed(good)
    assert len(records) == 1
    assert counters.resyncs >= 1


def test_bad_escape_is_counted() -> None:
    counters = LinkCounters()
    DatexDecoder(counters=counters).feed(b"\x7e" + bytes(41) + b"\x7d\x41\x7e")
    assert counters.extra[EXTRA_BAD_ESCAPES] == 1


def test_an_endless_body_overflows_and_the_decoder_recovers() -> None:
    counters = LinkCounters()
    decoder = DatexDecoder(counters=counters)
    decoder.feed(b"\x7e" + b"\x01" * (MAX_ESCAPED_BODY_BYTES + 10))
    assert counters.overflows == 1
    assert decoder.buffered_bytes <= MAX_ESCAPED_BODY_BYTES
    assert len(decoder.feed(phdb_request(interval_s=5).to_frame())) == 1


def test_record_length_limits() -> None:
    with pytest.raises(ValueError):
        encode_frame(bytes(39))
    with pytest.raises(ValueError):
        encode_frame(bytes(MAX_RECORD_BYTES + 1))
    assert len(Record.from_bytes(bytes(MAX_RECORD_BYTES)).data) == MAX_RECORD_BYTES - 40


_STREAM = b"".join(
    [
        phdb_request(interval_s=5).to_frame(),
        encode_frame(bytes(39) + b"\x7e\x7d\x7e"),
        phdb_request(interval_s=0).to_frame(),
    ]
)


@settings(max_examples=300, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=len(_STREAM)), max_size=8))
def test_decoding_does_not_depend_on_how_the_stream_was_split(cuts: list[int]) -> None:
    whole = DatexDecoder().feed(_STREAM)
    decoder = DatexDecoder()
    parts: list[Record] = []
    previous = 0
    for cut in [*sorted(cuts), len(_STREAM)]:
        parts += decoder.feed(_STREAM[previous:cut])
        previous = cut
    assert parts == whole
    assert len(whole) == 3


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4000), split=st.integers(min_value=0, max_value=4000))
def test_decoder_survives_arbitrary_bytes_split_anywhere_and_stays_bounded(data: bytes, split: int) -> None:
    whole_decoder = DatexDecoder(cap_bytes=256)
    whole = whole_decoder.feed(data)
    split_decoder = DatexDecoder(cap_bytes=256)
    parts = split_decoder.feed(data[:split]) + split_decoder.feed(data[split:])
    assert parts == whole
    assert whole_decoder.buffered_bytes <= 256
    assert split_decoder.buffered_bytes <= 256
    for record in whole:
        assert DatexDecoder().feed(record.to_frame()) == [record]
