"""The MEDIBUS decoder's differential corpus: streams, how they were split, and what the decoder gave.

`tests/data/medibus/decoder_corpus.json.gz` was written by `python -m tests.drivers.medibus.codec_corpus`
with the byte-at-a-time decoder of commit f2820fe, before the chunked decoder replaced it; the test
(`test_medibus_codec_corpus.py`) requires today's decoder to give the same frames, from the same feed
calls, and the same counters. Regenerating it with a later decoder would only record that decoder's
behaviour: do it only for a deliberate change of the decoding rules, and say so in the commit.

Streams: simulator-realistic conversations (every frame kind the simulator sends, device commands nested
inside responses) damaged in the ways a serial line damages them (flipped, dropped, duplicated and
inserted bytes, XON/XOFF, MEDIBUS.X realtime bursts, truncation, runs of garbage, oversized frames), and
random bytes weighted towards the framing bytes; buffer caps from the minimum (5) to the default.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import itertools
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drivers.medibus.codec import Command, Frame, MedibusDecoder, Response
from drivers.medibus.codes import CommandCode
from drivers.medibus.simulator import (
    PatientScenario,
    SimAlarm,
    alarms_payload,
    measured_payload,
    settings_payload,
    texts_payload,
)
from drivers.scenario import DeterioratingPatient

CORPUS_PATH = Path(__file__).parents[2] / "data" / "medibus" / "decoder_corpus.json.gz"
CASES = 2400
CAPS_BYTES = (5, 6, 7, 9, 16, 32, 64, 96, 256, 4096)
_CONTROL = (0x01, 0x03, 0x0D, 0x11, 0x13, 0x1B)
_REALTIME = (0xD0, 0xD7, 0xC0, 0xC6, 0xC1, 0xCF, 0x80, 0x81, 0xBF, 0xFF)


def _frames(rng: random.Random, scenario: PatientScenario, t_s: float) -> list[Frame]:
    kinds: list[Frame] = [
        Response(code=CommandCode.MEASURED_CP1, data=measured_payload(scenario.values_at(t_s))),
        Response(code=CommandCode.DEVICE_SETTINGS, data=settings_payload(scenario.settings_at(t_s))),
        Response(code=CommandCode.ALARMS_CP1, data=alarms_payload(scenario.alarms_at(t_s))),
        Response(
            code=CommandCode.ALARMS_CP1,
            data=alarms_payload([SimAlarm(priority=20, code="07", text="HIGH PRESSURE")]),
        ),
        Response(code=CommandCode.TEXT_MESSAGES, data=texts_payload(scenario.texts_at(t_s))),
        Response(code=CommandCode.DEVICE_ID, data=b"SIM0'SimVent XL'01.00:06.00"),
        Response(code=CommandCode.ICC),
        Command(code=CommandCode.NOP),
        Command(code=CommandCode.ICC),
        Command(code=CommandCode.MEASURED_CP1),
        Command(
            code=rng.randrange(0x20, 0x7F),
            args=bytes(rng.randrange(0x20, 0x7F) for _ in range(rng.randrange(4))),
        ),
    ]
    return rng.sample(kinds, rng.randrange(1, 7))


def _damage(rng: random.Random, raw: bytearray) -> None:
    for _ in range(rng.choice((0, 0, 0, 1, 1, 2, 4))):
        if not raw:
            return
        at = rng.randrange(len(raw) + 1)
        kind = rng.randrange(8)
        if kind == 0 and at < len(raw):
            raw[at] ^= 1 << rng.randrange(8)
        elif kind == 1 and at < len(raw):
            del raw[at]
        elif kind == 2:
            raw[at:at] = bytes((rng.choice(_CONTROL),))
        elif kind == 3:
            raw[at:at] = bytes(rng.choice(_REALTIME) for _ in range(rng.randrange(1, 12)))
        elif kind == 4:
            raw[at:at] = bytes(rng.randrange(0x20, 0x7F) for _ in range(rng.randrange(1, 40)))
        elif kind == 5:
            raw[at:at] = rng.choice((b"\x11", b"\x13", b"\x11\x13"))
        elif kind == 6:
            del raw[at:]
        else:
            raw[at:at] = raw[max(0, at - 5) : at]


def realistic_stream(rng: random.Random) -> bytes:
    """Return a conversation's device-to-host bytes with line damage."""
    scenario = PatientScenario(patient=DeterioratingPatient(stable_s=1.0, ramp_s=4.0))
    out = bytearray()
    for cycle in range(rng.randrange(1, 6)):
        frames = _frames(rng, scenario, float(cycle))
        for index, frame in enumerate(frames):
            raw = bytearray(frame.to_bytes())
            if isinstance(frame, Response) and rng.random() < 0.2:
                nested = Command(code=rng.choice((CommandCode.NOP, CommandCode.TIME_CHANGED))).to_bytes()
                at = rng.randrange(1, len(raw))
                raw[at:at] = nested
            if rng.random() < 0.5:
                _damage(rng, raw)
            out += raw
            if rng.random() < 0.1:
                out += bytes(rng.randrange(0x20, 0x7F) for _ in range(rng.randrange(1, 20)))
            if index == 0 and rng.random() < 0.05:
                out += b"\x01$" + b"7" * rng.randrange(60, 300)
    return bytes(out)


def random_stream(rng: random.Random) -> bytes:
    """Return random bytes, mostly printable, with framing bytes and realtime bytes mixed in."""
    weights = (0.7, 0.2, 0.1) if rng.random() < 0.7 else (0.3, 0.5, 0.2)
    out = bytearray()
    for _ in range(rng.randrange(0, 400)):
        pick = rng.choices((0, 1, 2), weights)[0]
        if pick == 0:
            out.append(rng.randrange(0x20, 0x80))
        elif pick == 1:
            out.append(rng.choice(_CONTROL))
        else:
            out.append(rng.randrange(0x80, 0x100))
    return bytes(out)


def splits(rng: random.Random, length: int) -> list[int]:
    """Return sorted cut points (feed boundaries) for a stream of length bytes."""
    style = rng.randrange(4)
    if style == 0 or length == 0:
        return []
    if style == 1:
        return list(range(1, length))
    if style == 2:
        size = rng.choice((2, 3, 7, 16, 64))
        return list(range(size, length, size))
    return sorted(set(rng.randrange(length + 1) for _ in range(rng.randrange(1, 30))))


def chunks(stream: bytes, cuts: Sequence[int]) -> list[bytes]:
    """Return stream split at cuts (empty chunks kept: feeding b"" is part of the API)."""
    edges = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


def encode_frame(frame: Frame) -> list[Any]:
    """Return a frame as JSON: kind, code, payload in base64."""
    payload = frame.args if isinstance(frame, Command) else frame.data
    return ["C" if isinstance(frame, Command) else "R", frame.code, base64.b64encode(payload).decode()]


def decode_frame(record: Sequence[Any]) -> Frame:
    """Return the frame of an `encode_frame` record."""
    kind, code, payload = record
    raw = base64.b64decode(payload)
    return Command(code=code, args=raw) if kind == "C" else Response(code=code, data=raw)


def record(*, stream: bytes, cuts: Sequence[int], cap_bytes: int) -> dict[str, Any]:
    """Decode stream, split at cuts, and return the case with what the decoder gave."""
    decoder = MedibusDecoder(cap_bytes=cap_bytes)
    per_feed = [[encode_frame(frame) for frame in decoder.feed(chunk)] for chunk in chunks(stream, cuts)]
    counters = decoder.counters
    return {
        "cap": cap_bytes,
        "stream": base64.b64encode(stream).decode(),
        "cuts": list(cuts),
        "per_feed": per_feed,
        "counters": {
            "frames_in": counters.frames_in,
            "checksum_errors": counters.checksum_errors,
            "resyncs": counters.resyncs,
            "overflows": counters.overflows,
            "extra": counters.extra,
        },
        "buffered": decoder.buffered_bytes,
    }


def build(*, cases: int, seed: int) -> list[dict[str, Any]]:
    """Return cases decoded by the decoder in this tree."""
    rng = random.Random(seed)
    out = []
    for index in range(cases):
        stream = realistic_stream(rng) if index % 3 else random_stream(rng)
        cap = rng.choice(CAPS_BYTES) if rng.random() < 0.6 else 4096
        out.append(record(stream=stream, cuts=splits(rng, len(stream)), cap_bytes=cap))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Write the corpus file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=CASES)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=CORPUS_PATH)
    args = parser.parse_args(argv)
    logging.getLogger("drivers.medibus.codec").setLevel(logging.ERROR)
    corpus = {
        "decoder_commit": "f2820fe",
        "seed": args.seed,
        "cases": build(cases=args.cases, seed=args.seed),
    }
    args.out.write_bytes(gzip.compress(json.dumps(corpus, separators=(",", ":")).encode(), mtime=0))
    totals = {
        name: sum(case["counters"][name] > 0 for case in corpus["cases"])
        for name in ("frames_in", "checksum_errors", "resyncs", "overflows")
    }
    frames = sum(case["counters"]["frames_in"] for case in corpus["cases"])
    print(f"{args.out}: {len(corpus['cases'])} cases, {frames} frames, {args.out.stat().st_size} bytes")
    print(f"cases with at least one: {totals}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
