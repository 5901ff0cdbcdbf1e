"""Benchmark the MEDIBUS stream decoder: MB/s and frames/s for several chunk sizes.

Run: `.venv/bin/python -m tools.bench.medibus_codec [--repeats N] [--megabytes X]`. Prints two Markdown
tables meant to be pasted into BENCHMARKS.md: the slow-data decoder alone (realtime bytes dropped), and
the path of a session with MEDIBUS.X curves on (slow frames, plus the realtime bytes split off and
decoded into Paw, flow and volume samples), on a stream with the simulator's curve load (three 50 Hz
curves per second of slow data).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections.abc import Sequence

from drivers.medibus.codec import Command, Frame, MedibusDecoder, Response
from drivers.medibus.codes import CommandCode
from drivers.medibus.realtime import RealtimeDecoder, encode_cycle, realtime_part
from drivers.medibus.session import wave_batch_bytes
from drivers.medibus.simulator import (
    SIM_CURVES,
    PatientScenario,
    alarms_payload,
    measured_payload,
    settings_payload,
    texts_payload,
)
from drivers.scenario import DeterioratingPatient

CHUNK_SIZES_BYTES = (1, 64, 4096)
_REALTIME_BURST = bytes([0xD0, 0x81, 0xBF, 0xC6, 0xC0, 0x92, 0xA3])


def build_stream(*, target_bytes: int, seed: int = 7) -> tuple[bytes, int]:
    """Return a realistic device-to-host stream of about target_bytes and the number of frames in it."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible test stream, not a secret
    scenario = PatientScenario(patient=DeterioratingPatient(stable_s=10.0, ramp_s=60.0))
    out = bytearray()
    frames = 0
    t_s = 0.0
    while len(out) < target_bytes:
        cycle: list[Frame] = [
            Response(code=CommandCode.MEASURED_CP1, data=measured_payload(scenario.values_at(t_s))),
            Response(code=CommandCode.DEVICE_SETTINGS, data=settings_payload(scenario.settings_at(t_s))),
            Response(code=CommandCode.ALARMS_CP1, data=alarms_payload(scenario.alarms_at(t_s))),
            Response(code=CommandCode.TEXT_MESSAGES, data=texts_payload(scenario.texts_at(t_s))),
            Command(code=CommandCode.NOP),
        ]
        for frame in cycle:
            raw = frame.to_bytes()
            cut = rng.randrange(len(raw))
            extra = _REALTIME_BURST if rng.random() < 0.5 else b"\x11" if rng.random() < 0.5 else b"\x13"
            out += raw[:cut] + extra + raw[cut:]
            frames += 1
        t_s += 1.0
    return bytes(out), frames


CYCLES_PER_POLL = 50
"""One second of three 50 Hz curves per slow-data cycle (the simulator's load)."""


def build_wave_stream(*, target_bytes: int, seed: int = 7) -> tuple[bytes, int, int]:
    """Return a stream of slow frames with one second of realtime cycles spread inside them, the number
    of frames and the number of cycles."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible test stream, not a secret
    slow, frames = build_stream(target_bytes=target_bytes // 2, seed=seed)
    cycles_per_byte = CYCLES_PER_POLL / (len(slow) / frames * 5)
    out = bytearray()
    cycles = 0
    for byte in range(0, len(slow), 64):
        out += slow[byte : byte + 64]
        for _ in range(round(64 * cycles_per_byte + rng.random() - 0.5)):
            raw = rng.randrange(4096)
            out += encode_cycle(raws=[raw, 4095 - raw, raw // 2])
            cycles += 1
    return bytes(out + b"\xd0"), frames, cycles


def time_decoder(*, stream: bytes, chunk_bytes: int) -> tuple[float, int]:
    """Decode stream in chunks of chunk_bytes; return elapsed seconds and frames decoded."""
    chunks = [stream[i : i + chunk_bytes] for i in range(0, len(stream), chunk_bytes)]
    decoder = MedibusDecoder()
    decoded = 0
    start_s = time.perf_counter()
    for chunk in chunks:
        decoded += len(decoder.feed(chunk))
    return time.perf_counter() - start_s, decoded


def time_wave_path(*, stream: bytes, chunk_bytes: int) -> tuple[float, int, int]:
    """Decode stream as a session with curves on does (batched); return seconds, frames, Paw samples."""
    chunks = [stream[i : i + chunk_bytes] for i in range(0, len(stream), chunk_bytes)]
    decoder = MedibusDecoder()
    realtime = RealtimeDecoder()
    realtime.configure(SIM_CURVES[:3], batch_bytes=wave_batch_bytes(SIM_CURVES[:3]))
    decoded = samples = 0
    start_s = time.perf_counter()
    for chunk in chunks:
        decoded += len(decoder.feed(chunk))
        samples += realtime.feed(realtime_part(chunk))[0].size
    samples += realtime.flush()[0].size
    return time.perf_counter() - start_s, decoded, samples


def _quantile(values: Sequence[float], q: float) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[round(q * 10) - 1]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--megabytes", type=float, default=0.5, help="size of the stream decoded per run")
    args = parser.parse_args(argv)
    stream, frames = build_stream(target_bytes=int(args.megabytes * 1_000_000))
    megabytes = len(stream) / 1e6
    print(f"MEDIBUS decoder benchmark: Python {sys.version.split()[0]} ({platform.python_implementation()}),")
    print(f"{platform.platform()}, {platform.processor() or platform.machine()}")
    print(f"stream {len(stream)} bytes, {frames} frames (CP1/settings/alarm/text responses + NOP,")
    print(f"one realtime burst or XON/XOFF byte inside every frame), {args.repeats} repeats")
    print()
    print("| chunk (bytes) | MB/s median | MB/s p10 | MB/s p90 | frames/s median |")
    print("|---:|---:|---:|---:|---:|")
    for chunk_bytes in CHUNK_SIZES_BYTES:
        rates: list[float] = []
        frame_rates: list[float] = []
        for _ in range(args.repeats):
            elapsed_s, decoded = time_decoder(stream=stream, chunk_bytes=chunk_bytes)
            if decoded != frames:
                raise SystemExit(f"decoded {decoded} frames, expected {frames}")
            rates.append(megabytes / elapsed_s)
            frame_rates.append(decoded / elapsed_s)
        print(
            f"| {chunk_bytes} | {statistics.median(rates):.2f} | {_quantile(rates, 0.1):.2f} "
            f"| {_quantile(rates, 0.9):.2f} | {statistics.median(frame_rates):,.0f} |"
        )
    wave_stream, wave_frames, cycles = build_wave_stream(target_bytes=int(args.megabytes * 1_000_000))
    print()
    print(f"with curves on: stream {len(wave_stream)} bytes, {wave_frames} frames, {cycles} realtime cycles")
    print("(Paw, flow, volume; 7 bytes each), slow data and curves decoded")
    print()
    print("| chunk (bytes) | MB/s median | MB/s p10 | MB/s p90 | samples/s median (3 curves) |")
    print("|---:|---:|---:|---:|---:|")
    for chunk_bytes in CHUNK_SIZES_BYTES[1:]:
        rates = []
        sample_rates: list[float] = []
        for _ in range(args.repeats):
            elapsed_s, decoded, samples = time_wave_path(stream=wave_stream, chunk_bytes=chunk_bytes)
            if decoded != wave_frames or samples != cycles:
                raise SystemExit(
                    f"decoded {decoded} frames and {samples} cycles, expected {wave_frames}, {cycles}"
                )
            rates.append(len(wave_stream) / 1e6 / elapsed_s)
            sample_rates.append(3 * samples / elapsed_s)
        print(
            f"| {chunk_bytes} | {statistics.median(rates):.2f} | {_quantile(rates, 0.1):.2f} "
            f"| {_quantile(rates, 0.9):.2f} | {statistics.median(sample_rates):,.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
