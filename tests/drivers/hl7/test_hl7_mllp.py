"""MLLP framer: golden blocks, resync, oversized blocks, arbitrary bytes split anywhere."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.hl7.mllp import HEAD_KEEP_BYTES, Block, MllpFramer, Oversized, wrap

MESSAGE = b"MSH|^~\\&|Mindray|Gateway|||||ORU^R01|204|P|2.3.1|\rOBX||NM|101^HR|2101|60||||||F\r"


def _feed_split(framer: MllpFramer, data: bytes, cuts: list[int]) -> list[Block | Oversized]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    out: list[Block | Oversized] = []
    for start, stop in itertools.pairwise(points):
        out += framer.feed(data[start:stop])
    return out


def test_golden_block() -> None:
    framer = MllpFramer()
    assert wrap(MESSAGE) == b"\x0b" + MESSAGE + b"\x1c\x0d"
    assert framer.feed(wrap(MESSAGE)) == [Block(payload=MESSAGE)]
    assert framer.counters.blocks == 1
    assert framer.buffered_bytes == 0
    assert not framer.in_block


def test_every_split_point_gives_the_same_block() -> None:
    data = wrap(MESSAGE) + b"\r\n" + wrap(b"MSH|2")
    for cut in range(len(data) + 1):
        framer = MllpFramer()
        assert framer.feed(data[:cut]) + framer.feed(data[cut:]) == [Block(MESSAGE), Block(b"MSH|2")]
        assert framer.counters.junk_bytes == 0


def test_junk_between_blocks_is_skipped_and_counted() -> None:
    framer = MllpFramer()
    assert framer.feed(b"noise" + wrap(b"A") + b"xy" + wrap(b"B")) == [Block(b"A"), Block(b"B")]
    assert framer.counters.junk_bytes == 7


def test_a_new_start_inside_a_block_drops_the_partial_block() -> None:
    framer = MllpFramer()
    assert framer.feed(b"\x0bMSH|lost end" + wrap(b"MSH|ok")) == [Block(b"MSH|ok")]
    assert framer.counters.truncated_blocks == 1


def test_a_lone_fs_is_content_and_fs_cr_split_across_reads_ends_the_block() -> None:
    framer = MllpFramer()
    assert framer.feed(b"\x0bA\x1cB\x1c") == []
    assert framer.feed(b"\x0d") == [Block(b"A\x1cB")]


def test_oversized_block_is_refused_with_its_head_and_the_next_block_still_arrives() -> None:
    framer = MllpFramer(max_block_bytes=2048)
    big = b"MSH|^~\\&|x||||||ORU^R01|99|P|2.3.1\r" + b"OBX|" * 2000
    out = framer.feed(wrap(big)[:1000]) + framer.feed(wrap(big)[1000:] + wrap(b"MSH|small"))
    assert out == [Oversized(head=big[:HEAD_KEEP_BYTES], size=len(big)), Block(b"MSH|small")]
    assert framer.counters.oversized_blocks == 1


def test_block_of_exactly_the_limit_is_accepted_even_with_its_end_split() -> None:
    payload = b"M" * 1024
    framer = MllpFramer(max_block_bytes=1024)
    assert framer.feed(b"\x0b" + payload + b"\x1c") == []
    assert framer.feed(b"\x0d") == [Block(payload)]
    assert framer.feed(wrap(payload + b"X")) == [Oversized(head=payload, size=1025)]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=6000), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_arbitrary_bytes_split_anywhere_never_crash_and_stay_bounded(data: bytes, cuts: list[int]) -> None:
    framer = MllpFramer(max_block_bytes=1024)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    whole = MllpFramer(max_block_bytes=1024).feed(data)
    out: list[Block | Oversized] = []
    for start, stop in itertools.pairwise(points):
        out += framer.feed(data[start:stop])
        assert framer.buffered_bytes <= 1024 + 1
    assert out == whole
    for item in out:
        if isinstance(item, Block):
            assert len(item.payload) <= 1024
            assert b"\x0b" not in item.payload


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(
        st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")), max_size=6
    ),
    garbage=st.binary(max_size=40).map(lambda b: b.replace(b"\x0b", b"")),
    cuts=st.lists(st.integers(min_value=0), max_size=10),
)
def test_blocks_after_garbage_all_arrive(payloads: list[bytes], garbage: bytes, cuts: list[int]) -> None:
    stream = garbage + b"".join(wrap(p) for p in payloads)
    out = _feed_split(MllpFramer(), stream, cuts)
    assert out == [Block(p) for p in payloads]
