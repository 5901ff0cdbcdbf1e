"""Benchmark (not a test): latency of one whole forecast tick for N beds, batched vs one bed per call.

A tick is what the daemon does every second: build every bed's window from the histories, run the
model once for all beds, turn the outputs into per-bed forecasts, and build each bed's forecast body
(the pydantic payload the publisher encodes). "One bed per call" runs the same work with N single-bed
runtimes ticked one after the other. Each bed gets 30 min of realistic minute values for all five
signals (two samples a minute).

The whole tick is timed around `ForecastRuntime.tick` plus `forecast_body` for every bed; inside it,
windows, inference and outlooks come from the runtime's own phase times (`ForecastRuntime.last_tick`)
and bodies from around the `forecast_body` calls. The JSON encoding (the publisher's thread) is left
out.

    python -m tools.bench.forecast_tick --beds 1,8,32,64 --repeats 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from edge.forecasting import forecast_body
from engines.runtime import ForecastRuntime
from engines.spec import SIGNALS, STEP_S, WINDOW_STEPS

NOW_S = 1_764_000_000.0 + 30.0
_TYPICAL = {
    "hr": (85.0, 8.0),
    "spo2": (96.0, 1.5),
    "map": (78.0, 8.0),
    "rr": (16.0, 3.0),
    "etco2": (38.0, 3.0),
}


def _feed(runtime: ForecastRuntime, bed: str, generator: np.random.Generator) -> None:
    for signal in SIGNALS:
        mean, spread = _TYPICAL[signal.key]
        for step in range(WINDOW_STEPS * 2):
            value = float(np.clip(generator.normal(mean, spread), signal.minimum, signal.maximum))
            at_s = NOW_S - step * STEP_S / 2
            runtime.observe(bed=bed, key=signal.key, value=value, unit=signal.unit, valid=True, at_s=at_s)


@dataclass(slots=True)
class _Samples:
    """Milliseconds per repeat, by phase."""

    tick: list[float] = field(default_factory=list)
    windows: list[float] = field(default_factory=list)
    inference: list[float] = field(default_factory=list)
    outlooks: list[float] = field(default_factory=list)
    bodies: list[float] = field(default_factory=list)


async def _tick_with_bodies(runtime: ForecastRuntime) -> int:
    """Run one tick and build its bodies; return the nanoseconds spent on the bodies."""
    forecasts = await runtime.tick(now_s=NOW_S)
    started = time.perf_counter_ns()
    for forecast in forecasts:
        forecast_body(forecast)
    return time.perf_counter_ns() - started


async def _time_ticks(runtimes: list[ForecastRuntime], *, repeats: int) -> _Samples:
    for runtime in runtimes:
        await _tick_with_bodies(runtime)  # warm-up
    samples = _Samples()
    for _ in range(repeats):
        windows_ns = inference_ns = outlooks_ns = bodies_ns = 0
        started = time.perf_counter_ns()
        for runtime in runtimes:
            bodies_ns += await _tick_with_bodies(runtime)
            phases = runtime.last_tick
            assert phases is not None
            windows_ns += phases.windows_ns
            inference_ns += phases.inference_ns
            outlooks_ns += phases.outlooks_ns
        samples.tick.append((time.perf_counter_ns() - started) / 1e6)
        samples.windows.append(windows_ns / 1e6)
        samples.inference.append(inference_ns / 1e6)
        samples.outlooks.append(outlooks_ns / 1e6)
        samples.bodies.append(bodies_ns / 1e6)
    return samples


def _p50(values: list[float]) -> float:
    return statistics.median(values)


def _minus(totals: list[float], parts: list[float]) -> list[float]:
    return [total - part for total, part in zip(totals, parts, strict=True)]


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def _measure(beds: int, *, repeats: int, model: str | None) -> dict[str, float | str]:
    names = [f"bed-{i:02d}" for i in range(beds)]
    together = ForecastRuntime(beds=names, backend="auto", model_ref=model)
    separate = [ForecastRuntime(beds=[name], backend="auto", model_ref=model) for name in names]
    for runtime in (together, *separate):
        await runtime.start()
    try:
        for seed, name in enumerate(names):
            _feed(together, name, np.random.default_rng(seed))
        for seed, (runtime, name) in enumerate(zip(separate, names, strict=True)):
            _feed(runtime, name, np.random.default_rng(seed))
        batched = await _time_ticks([together], repeats=repeats)
        per_bed = await _time_ticks(separate, repeats=repeats)
        model_ref = together.backend.model.ref
    finally:
        for runtime in (together, *separate):
            await runtime.close()
    return {
        "beds": beds,
        "batched_p50_ms": _p50(batched.tick),
        "batched_p99_ms": _p99(batched.tick),
        "windows_p50_ms": _p50(batched.windows),
        "inference_p50_ms": _p50(batched.inference),
        "outlooks_p50_ms": _p50(batched.outlooks),
        "bodies_p50_ms": _p50(batched.bodies),
        "per_bed_p50_ms": _p50(per_bed.tick),
        "per_bed_p99_ms": _p99(per_bed.tick),
        "ratio": _p50(per_bed.tick) / _p50(batched.tick),
        "ratio_without_bodies": _p50(_minus(per_bed.tick, per_bed.bodies))
        / _p50(_minus(batched.tick, batched.bodies)),
        "backend": together.choice_reason,
        "model": model_ref,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print Markdown tables for BENCHMARKS.md."""
    parser = argparse.ArgumentParser(
        description="Time a whole forecast tick (windows, inference, outlooks, bodies) for N beds, batched "
        "and one bed per call; prints Markdown tables."
    )
    parser.add_argument("--beds", default="1,8,32,64", help="comma-separated bed counts (default: 1,8,32,64)")
    parser.add_argument("--repeats", type=int, default=200, help="timed ticks per bed count (default: 200)")
    parser.add_argument("--model", default=None, help="model id or id@version (default: the default model)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    args = parser.parse_args(argv)
    rows = [
        asyncio.run(_measure(int(b), repeats=args.repeats, model=args.model)) for b in args.beds.split(",")
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"forecast tick incl. bodies: Python {platform.python_version()}, {platform.machine()}, "
        f"model {rows[0]['model']}"
    )
    print(f"backend: {rows[0]['backend']}; {args.repeats} repeats after a warm-up tick\n")
    print(
        "| beds | batched tick p50 ms | p99 ms | one bed per call p50 ms | p99 ms | ratio "
        "| ratio without bodies |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['beds']} | {row['batched_p50_ms']:.2f} | {row['batched_p99_ms']:.2f} | "
            f"{row['per_bed_p50_ms']:.2f} | {row['per_bed_p99_ms']:.2f} | {row['ratio']:.1f} "
            f"| {row['ratio_without_bodies']:.1f} |"
        )
    print("\nbatched tick by phase, p50 ms:\n")
    print("| beds | windows | inference | outlooks | bodies |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['beds']} | {row['windows_p50_ms']:.2f} | {row['inference_p50_ms']:.2f} | "
            f"{row['outlooks_p50_ms']:.2f} | {row['bodies_p50_ms']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
