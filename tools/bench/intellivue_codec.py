"""Benchmark the IntelliVue client decode path: MB/s of a realistic serial reply stream vs the line rate.

The stream is what the simulated monitor sends a client polling numerics every second and waves
(ECG 500 Hz, pleth, ABP 125 Hz, CO2 62.5 Hz) with linked-result chains (MTU 1400), MIB/RS232 framed.
Two rows per chunk size: the framer alone (`FrameDecoder`), and the whole client session (framing,
message decode, physio mapping, wave scaling, events), replayed with the recorded timing.
The MIB/RS232 line carries 115200 baud 8N1 = 11,520 bytes/s at most.

Run: `.venv/bin/python -m tools.bench.intellivue_codec [--repeats N] [--seconds S]`. Prints a Markdown
table meant to be pasted into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Sequence

from drivers.intellivue.framing import FrameDecoder
from drivers.intellivue.session import IntellivueOptions, IntellivueSession
from drivers.intellivue.simulator import MonitorSimulator
from drivers.scenario import DeterioratingPatient

LINE_RATE_BYTES_PER_S = 115200 / 10
CHUNK_SIZES_BYTES = (64, 4096)
_STEP_S = 0.05


def _options() -> IntellivueOptions:
    return IntellivueOptions(link="serial", waves=True, alarm_interval_s=5.0)


def record(*, seconds: float) -> list[tuple[float, bytes]]:
    """Return the monitor's output of a session <-> simulator run as (time, bytes) steps."""
    session = IntellivueSession(options=_options())
    monitor = MonitorSimulator(patient=DeterioratingPatient(stable_s=10.0, ramp_s=60.0), mtu_bytes=1400)
    steps: list[tuple[float, bytes]] = []
    now_s = 0.0
    while now_s < seconds:
        if now_s >= session.next_deadline_s():
            session.poll(now_s=now_s)
        monitor.receive(session.data_to_send(), now_s=now_s)
        back = monitor.data_to_send()
        session.receive(back, now_s=now_s)
        steps.append((now_s, back))
        now_s += _STEP_S
    return steps


def time_framer(*, stream: bytes, chunk_bytes: int) -> tuple[float, int]:
    """Decode stream in chunks with the framer alone; return seconds and messages."""
    chunks = [stream[i : i + chunk_bytes] for i in range(0, len(stream), chunk_bytes)]
    decoder = FrameDecoder()
    count = 0
    start_s = time.perf_counter()
    for chunk in chunks:
        count += len(decoder.feed(chunk))
    return time.perf_counter() - start_s, count


def time_session(*, steps: list[tuple[float, bytes]], chunk_bytes: int) -> tuple[float, int]:
    """Replay the recording into a fresh session (same timing, so same invoke ids); time `receive`."""
    session = IntellivueSession(options=_options())
    elapsed_s = 0.0
    events = 0
    for now_s, data in steps:
        if now_s >= session.next_deadline_s():
            session.poll(now_s=now_s)
        session.data_to_send()
        start_s = time.perf_counter()
        for i in range(0, len(data), chunk_bytes):
            session.receive(data[i : i + chunk_bytes], now_s=now_s)
        elapsed_s += time.perf_counter() - start_s
        events += len(session.events())
    return elapsed_s, events


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=120.0, help="monitor time recorded")
    args = parser.parse_args(argv)
    steps = record(seconds=args.seconds)
    stream = b"".join(data for _, data in steps)
    megabytes = len(stream) / 1e6
    messages = len(FrameDecoder().feed(stream))
    stream_rate = len(stream) / args.seconds
    python = f"Python {sys.version.split()[0]} ({platform.python_implementation()})"
    print(f"IntelliVue decode benchmark: {python},")
    print(f"{platform.platform()}, {platform.processor() or platform.machine()}")
    print(
        f"stream {len(stream)} bytes, {messages} messages = {args.seconds:.0f} s of monitor output "
        f"({stream_rate:,.0f} B/s: numerics 1 Hz + 4 waves + alarms; "
        f"line rate {LINE_RATE_BYTES_PER_S:,.0f} B/s)"
    )
    print()
    print("| path | chunk (bytes) | MB/s median | MB/s min | x line rate (median) |")
    print("|---|---:|---:|---:|---:|")
    for chunk_bytes in CHUNK_SIZES_BYTES:
        for name in ("framer", "session"):
            rates: list[float] = []
            for _ in range(args.repeats):
                if name == "framer":
                    elapsed_s, count = time_framer(stream=stream, chunk_bytes=chunk_bytes)
                    if count != messages:
                        raise SystemExit(f"framer decoded {count} messages, expected {messages}")
                else:
                    elapsed_s, count = time_session(steps=steps, chunk_bytes=chunk_bytes)
                    if count == 0:
                        raise SystemExit("the replayed session produced no events")
                rates.append(megabytes / elapsed_s)
            median = statistics.median(rates)
            print(
                f"| {name} | {chunk_bytes} | {median:.2f} | {min(rates):.2f} "
                f"| {median * 1e6 / LINE_RATE_BYTES_PER_S:,.0f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
