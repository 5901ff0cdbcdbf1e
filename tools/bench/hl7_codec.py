"""Benchmark the HL7 receive path: MLLP framing alone, and framing + hl7.parse + mapping + ACK.

Run: `.venv/bin/python -m tools.bench.hl7_codec [--repeats N] [--messages N]`. The stream is realistic
ORU^R01 traffic from the simulator's builders (Mindray 2.3.1 and PCD-01 styles, the deteriorating
scenario, one message per second of scenario time), fed in 4096-byte reads. Prints a Markdown table
meant to be pasted into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from drivers.base import MeasurementsReceived
from drivers.hl7.mllp import MllpFramer, wrap
from drivers.hl7.session import Hl7Session
from drivers.hl7.simulator import OruBuilder
from drivers.scenario import PATIENTS

CHUNK_BYTES = 4096


def build_stream(*, style: str, messages: int) -> bytes:
    """Return `messages` MLLP-wrapped ORU^R01 of one style, one per second of the scenario."""
    patient = PATIENTS["deteriorating"]()
    builder = OruBuilder(style=style, bed="bed-01")
    start = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    return b"".join(
        wrap(
            builder.message(
                patient.vitals_at(float(n)), control_id=f"B{n}", now=start + timedelta(seconds=n)
            ).encode()
        )
        for n in range(messages)
    )


def _chunks(stream: bytes) -> list[bytes]:
    return [stream[i : i + CHUNK_BYTES] for i in range(0, len(stream), CHUNK_BYTES)]


def time_framer(stream: bytes) -> tuple[float, int]:
    """Frame the stream; return elapsed seconds and blocks."""
    chunks = _chunks(stream)
    framer = MllpFramer()
    blocks = 0
    start_s = time.perf_counter()
    for chunk in chunks:
        blocks += len(framer.feed(chunk))
    return time.perf_counter() - start_s, blocks


def time_session(stream: bytes) -> tuple[float, int, int]:
    """Run the whole receive path; return elapsed seconds, messages acknowledged and values mapped."""
    chunks = _chunks(stream)
    session = Hl7Session()
    session.reset(now_s=0.0)
    values = 0
    start_s = time.perf_counter()
    for chunk in chunks:
        session.receive(chunk, now_s=0.0)
        session.data_to_send()
        for event in session.events():
            if isinstance(event, MeasurementsReceived):
                values += len(event.measurements)
    elapsed_s = time.perf_counter() - start_s
    return elapsed_s, session.counters.extra["acks_aa"], values


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--messages", type=int, default=2000, help="messages per style and run")
    args = parser.parse_args(argv)
    print(
        f"HL7/MLLP receive benchmark: Python {sys.version.split()[0]} ({platform.python_implementation()}),"
    )
    print(f"{platform.platform()}, {platform.processor() or platform.machine()}")
    print(f"{args.messages} ORU^R01 per style, {CHUNK_BYTES}-byte reads, {args.repeats} repeats (median)")
    print()
    print("| style | bytes/msg | framer MB/s | parse+map+ACK msg/s | parse+map+ACK MB/s | values/msg |")
    print("|---|---:|---:|---:|---:|---:|")
    for style in ("mindray", "pcd01"):
        stream = build_stream(style=style, messages=args.messages)
        megabytes = len(stream) / 1e6
        framer_rates: list[float] = []
        message_rates: list[float] = []
        byte_rates: list[float] = []
        values_per_message = 0.0
        for _ in range(args.repeats):
            elapsed_s, blocks = time_framer(stream)
            if blocks != args.messages:
                raise SystemExit(f"framed {blocks} blocks, expected {args.messages}")
            framer_rates.append(megabytes / elapsed_s)
            elapsed_s, acked, values = time_session(stream)
            if acked != args.messages:
                raise SystemExit(f"acknowledged {acked} messages, expected {args.messages}")
            message_rates.append(acked / elapsed_s)
            byte_rates.append(megabytes / elapsed_s)
            values_per_message = values / acked
        print(
            f"| {style} | {len(stream) // args.messages} | {statistics.median(framer_rates):.1f} "
            f"| {statistics.median(message_rates):,.0f} | {statistics.median(byte_rates):.2f} "
            f"| {values_per_message:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
