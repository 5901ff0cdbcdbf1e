"""Differential test: the decoder gives what the byte-at-a-time decoder gave on the recorded corpus.

The corpus (`codec_corpus.py`, 2,400 streams) holds, for each stream, how it was split into feed calls,
the frames each call returned and the counters at the end, as the decoder of commit f2820fe gave them.
The decoder is a per-byte state machine, so the frames and counters of a stream do not depend on the
split: the same totals must come out whole, byte at a time, and split anywhere.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.medibus.codec import Frame, MedibusDecoder
from tests.drivers.medibus.codec_corpus import CORPUS_PATH, chunks, decode_frame

CORPUS: list[dict[str, Any]] = json.loads(gzip.decompress(CORPUS_PATH.read_bytes()))["cases"]


def _decode(
    stream: bytes, cuts: Sequence[int], *, cap_bytes: int
) -> tuple[list[list[Frame]], MedibusDecoder]:
    decoder = MedibusDecoder(cap_bytes=cap_bytes)
    return [decoder.feed(chunk) for chunk in chunks(stream, cuts)], decoder


def _counters(decoder: MedibusDecoder) -> dict[str, Any]:
    counters = decoder.counters
    return {
        "frames_in": counters.frames_in,
        "checksum_errors": counters.checksum_errors,
        "resyncs": counters.resyncs,
        "overflows": counters.overflows,
        "extra": counters.extra,
    }


def _expect(case: dict[str, Any], decoder: MedibusDecoder, frames: list[Frame]) -> None:
    assert frames == [decode_frame(record) for feed in case["per_feed"] for record in feed]
    assert _counters(decoder) == case["counters"]
    assert decoder.buffered_bytes == case["buffered"]


def test_corpus_is_the_recorded_one() -> None:
    assert len(CORPUS) == 2400
    assert sum(case["counters"]["frames_in"] for case in CORPUS) == 13174


def test_recorded_feeds_give_the_recorded_frames_and_counters() -> None:
    for index, case in enumerate(CORPUS):
        stream = base64.b64decode(case["stream"])
        per_feed, decoder = _decode(stream, case["cuts"], cap_bytes=case["cap"])
        expected = [[decode_frame(record) for record in feed] for feed in case["per_feed"]]
        assert per_feed == expected, f"case {index}"
        assert _counters(decoder) == case["counters"], f"case {index}"
        assert decoder.buffered_bytes == case["buffered"], f"case {index}"


@pytest.mark.parametrize("style", ["whole", "byte at a time", "random cuts"])
def test_any_split_gives_the_recorded_totals(style: str) -> None:
    rng = random.Random(5)
    for case in CORPUS:
        stream = base64.b64decode(case["stream"])
        if style == "whole":
            cuts: list[int] = []
        elif style == "byte at a time":
            cuts = list(range(1, len(stream)))
        else:
            cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(1, 12)))
        per_feed, decoder = _decode(stream, cuts, cap_bytes=case["cap"])
        _expect(case, decoder, [frame for feed in per_feed for frame in feed])


@settings(max_examples=300, deadline=None)
@given(index=st.integers(min_value=0, max_value=len(CORPUS) - 1), cuts=st.lists(st.integers(min_value=0)))
def test_hypothesis_splits_give_the_recorded_totals(index: int, cuts: list[int]) -> None:
    case = CORPUS[index]
    stream = base64.b64decode(case["stream"])
    per_feed, decoder = _decode(stream, sorted(c % (len(stream) + 1) for c in cuts), cap_bytes=case["cap"])
    _expect(case, decoder, [frame for feed in per_feed for frame in feed])
