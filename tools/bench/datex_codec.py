"""Benchmark the S/5 DRI stream decoder (and the whole session receive path): MB/s per chunk size.

Run: `.venv/bin/python -m tools.bench.datex_codec [--repeats N] [--megabytes X]`. The stream is what the
monitor simulator sends to a client that asked for displayed values every second and the default
waves (ECG 300/s, ABP 100/s, pleth 100/s, CO2 25/s), a deteriorating patient. The line rate beside the
figures: 19200 baud with 8E1 framing is 11 bits per byte, 1745 B/s. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Sequence

from drivers.datex.codec import DatexDecoder
from drivers.datex.session import DatexOptions, DatexSession
from drivers.datex.simulator import MonitorSimulator
from drivers.scenario import DeterioratingPatient

CHUNK_SIZES_BYTES = (1, 64, 4096)
LINE_RATE_BYTES_PER_S = 19200 / 11
_STEP_S = 0.05


def build_stream(*, target_bytes: int) -> tuple[bytes, int]:
    """Return about target_bytes of monitor-to-client traffic and the number of records in it."""
    options = DatexOptions(interval_s=1, link_timeout_s=5.0, waves=True)
    session = DatexSession(options=options)
    monitor = MonitorSimulator(patient=DeterioratingPatient(stable_s=10.0, ramp_s=60.0), epoch_s=1.7e9)
    session.reset(now_s=0.0)
    monitor.receive(session.data_to_send(), now_s=0.0)
    out = bytearray()
    frames = 0
    now_s = 0.0
    while len(out) < target_bytes:
        now_s += _STEP_S
        monitor.poll(now_s=now_s)
        chunk = monitor.data_to_send()
        frames += chunk.count(b"\x7e") // 2
        out += chunk
    return bytes(out), frames


def time_decoder(*, stream: bytes, chunk_bytes: int) -> tuple[float, int]:
    """Decode stream in chunks of chunk_bytes; return elapsed seconds and records decoded."""
    chunks = [stream[i : i + chunk_bytes] for i in range(0, len(stream), chunk_bytes)]
    decoder = DatexDecoder()
    decoded = 0
    start_s = time.perf_counter()
    for chunk in chunks:
        decoded += len(decoder.feed(chunk))
    return time.perf_counter() - start_s, decoded


def time_session(*, stream: bytes, chunk_bytes: int) -> tuple[float, int]:
    """Feed stream to a client session (decode, measurements, wave chunks); return seconds and events."""
    chunks = [stream[i : i + chunk_bytes] for i in range(0, len(stream), chunk_bytes)]
    session = DatexSession(options=DatexOptions(interval_s=1, link_timeout_s=5.0, waves=True))
    session.reset(now_s=0.0)
    events = 0
    start_s = time.perf_counter()
    for chunk in chunks:
        session.receive(chunk, now_s=1.0)
        events += len(session.events())
    return time.perf_counter() - start_s, events


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--megabytes", type=float, default=0.5, help="size of the stream decoded per run")
    args = parser.parse_args(argv)
    stream, frames = build_stream(target_bytes=int(args.megabytes * 1_000_000))
    megabytes = len(stream) / 1e6
    print(f"S/5 DRI decoder benchmark: Python {sys.version.split()[0]} ({platform.python_implementation()}),")
    print(f"{platform.platform()}, {platform.processor() or platform.machine()}")
    print(f"stream {len(stream)} bytes, {frames} records (displayed values 1/s + waves 525 samples/s),")
    print(f"{args.repeats} repeats; line rate 19200 baud 8E1 = {LINE_RATE_BYTES_PER_S:,.0f} B/s")
    print()
    print("| path | chunk (bytes) | MB/s median | MB/s min | x line rate (median) |")
    print("|---|---:|---:|---:|---:|")
    for name, timer in (("decoder", time_decoder), ("session", time_session)):
        for chunk_bytes in CHUNK_SIZES_BYTES:
            rates: list[float] = []
            for _ in range(args.repeats):
                elapsed_s, count = timer(stream=stream, chunk_bytes=chunk_bytes)
                if name == "decoder" and count != frames:
                    raise SystemExit(f"decoded {count} records, expected {frames}")
                rates.append(megabytes / elapsed_s)
            median = statistics.median(rates)
            print(
                f"| {name} | {chunk_bytes} | {median:.2f} | {min(rates):.2f} "
                f"| {median * 1e6 / LINE_RATE_BYTES_PER_S:,.0f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
