"""The simulator's line faults: seeded bit flips, a power cut in the middle of a frame, and recovery."""

from __future__ import annotations

import pytest

from drivers.medibus.codec import MedibusDecoder, Response
from drivers.medibus.codes import CommandCode
from drivers.medibus.sim_faults import FaultyLine, LineFaults

FRAME = Response(code=CommandCode.MEASURED_CP1, data=b"7D  22" * 15).to_bytes()


def test_no_faults_pass_bytes_unchanged() -> None:
    line = FaultyLine(faults=LineFaults(), start_s=0.0)
    assert line.to_host(FRAME, now_s=100.0) == FRAME
    assert line.from_host(FRAME) == FRAME
    assert line.powered(now_s=100.0)


def test_bit_flips_are_seeded_single_bit_and_near_the_rate() -> None:
    stream = FRAME * 200
    flipped = [
        FaultyLine(faults=LineFaults(bit_flip_rate=0.01, seed=7), start_s=0).from_host(stream) for _ in "ab"
    ]
    assert flipped[0] == flipped[1], "same seed, same noise"
    changed = [(a ^ b) for a, b in zip(stream, flipped[0], strict=True) if a != b]
    assert all(bin(x).count("1") == 1 for x in changed)
    assert 0.005 * len(stream) < len(changed) < 0.02 * len(stream)
    decoder = MedibusDecoder()
    decoder.feed(flipped[0])
    assert decoder.counters.checksum_errors > 0


def test_power_cut_sends_half_a_frame_then_nothing_until_power_returns() -> None:
    line = FaultyLine(faults=LineFaults(power_off_after_s=5.0, power_off_s=3.0), start_s=10.0)
    assert line.to_host(FRAME, now_s=14.0) == FRAME
    half = line.to_host(FRAME + FRAME, now_s=15.5)
    assert half == FRAME[: len(FRAME) // 2]
    assert not line.powered(now_s=16.0)
    assert not line.power_returned(now_s=18.4)
    assert line.power_returned(now_s=18.5)
    assert not line.power_returned(now_s=18.6), "the restart happens once"
    assert line.powered(now_s=18.6)
    assert line.to_host(FRAME, now_s=30.0) == FRAME, "one cut only"
    decoder = MedibusDecoder()
    assert decoder.feed(half) == []
    assert decoder.feed(FRAME) == [Response.from_bytes(FRAME)]
    assert decoder.counters.resyncs == 1, "the half frame was dropped and counted"


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        ({"bit_flip_rate": 1.5}, "bit_flip_rate"),
        ({"power_off_after_s": -1.0}, "power_off_after_s"),
        ({"power_off_s": 0.0}, "power_off_s"),
    ],
)
def test_invalid_faults_are_refused(faults: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LineFaults(**faults)
