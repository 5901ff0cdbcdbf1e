"""The recording format: chunks round-trip, a torn or garbled tail is skipped, a bad header is an error."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.recording import (
    Chunk,
    RecordingError,
    RecordingHeader,
    chunk_line,
    header_line,
    read_recording,
)

HEADER = RecordingHeader(created="2026-12-01T04:00:00+00:00", port="/dev/ttyUSB0", baud=19200, note="bed 7")

chunks = st.lists(
    st.builds(
        Chunk,
        offset_s=st.floats(min_value=0, max_value=1e6, allow_nan=False),
        direction=st.sampled_from(["device", "host"]),
        data=st.binary(max_size=300),
    ),
    max_size=30,
)


def _text(header: RecordingHeader, items: list[Chunk]) -> str:
    return header_line(header) + "".join(chunk_line(chunk) for chunk in items)


@given(items=chunks)
def test_any_chunks_round_trip(items: list[Chunk]) -> None:
    recording = read_recording(_text(HEADER, items).splitlines(keepends=True))
    assert recording.header == HEADER
    assert recording.skipped_lines == 0
    assert [(c.direction, c.data) for c in recording.chunks] == [(c.direction, c.data) for c in items]
    assert all(abs(a.offset_s - b.offset_s) <= 1e-6 for a, b in zip(recording.chunks, items, strict=True))


@given(items=chunks, garbage=st.text(max_size=200), cut=st.integers(min_value=0, max_value=400))
def test_a_torn_or_garbled_tail_never_raises(items: list[Chunk], garbage: str, cut: int) -> None:
    whole = _text(HEADER, items)
    prefix = whole[: len(header_line(HEADER)) + cut]
    whole_lines = prefix.count("\n") - 1
    recording = read_recording((prefix + garbage).splitlines(keepends=True))
    assert recording.header == HEADER
    # every chunk line that was whole before the cut survives, whatever follows it
    kept = [(c.direction, c.data) for c in recording.chunks[:whole_lines]]
    assert kept == [(c.direction, c.data) for c in items[:whole_lines]]


def test_a_half_written_last_line_is_skipped_and_counted() -> None:
    whole = _text(HEADER, [Chunk(offset_s=0.5, direction="device", data=b"\x1b\x06abc")] * 2)
    recording = read_recording((whole[:-10]).splitlines(keepends=True))
    assert len(recording.chunks) == 1
    assert recording.skipped_lines == 1


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        ("", "empty file"),
        ("not json\n", "not JSON"),
        ('{"format": "something-else"}\n', 'no "format"'),
        ('{"format": "icu-edge-recording", "version": 99}\n', "version 99"),
        ('{"format": "icu-edge-recording", "version": 1, "created": "x"}\n', 'no "line"'),
    ],
)
def test_a_bad_header_is_a_clear_error(first: str, reason: str) -> None:
    with pytest.raises(RecordingError, match=reason):
        read_recording(first.splitlines(keepends=True))


@given(first=st.text(max_size=200))
def test_a_header_is_either_ours_or_a_recording_error(first: str) -> None:
    with contextlib.suppress(RecordingError):
        read_recording([first])
