"""Benchmark (not a test): latency of one whole forecast tick for N beds, batched vs one bed per call.

A tick is what the daemon does every second: build every bed's window from its incremental history,
run the model once for all beds on the inference thread, and turn the outputs into per-bed forecasts.
"One call per bed" runs the same work with N single-bed runtimes ticked one after the other. Each bed
gets 30 min of realistic minute values for all five signals (two samples a minute).

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

import numpy as np

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


async def _time_ticks(runtimes: list[ForecastRuntime], *, repeats: int) -> list[float]:
    for runtime in runtimes:
        await runtime.tick(now_s=NOW_S)  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for runtime in runtimes:
            await runtime.tick(now_s=NOW_S)
        samples.append((time.perf_counter_ns() - started) / 1e6)
    return sorted(samples)


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
        "batched_p50_ms": statistics.median(batched),
        "batched_p99_ms": batched[min(len(batched) - 1, round(0.99 * (len(batched) - 1)))],
        "per_bed_p50_ms": statistics.median(per_bed),
        "per_bed_p99_ms": per_bed[min(len(per_bed) - 1, round(0.99 * (len(per_bed) - 1)))],
        "ratio": statistics.median(per_bed) / statistics.median(batched),
        "backend": together.choice_reason,
        "model": model_ref,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print a Markdown table for BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", default="1,8,32,64")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--model", default=None, help="model id or id@version (default: the default model)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = [
        asyncio.run(_measure(int(b), repeats=args.repeats, model=args.model)) for b in args.beds.split(",")
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"forecast tick: Python {platform.python_version()}, {platform.machine()}, model {rows[0]['model']}"
    )
    print(f"backend: {rows[0]['backend']}; {args.repeats} repeats after a warm-up tick\n")
    print("| beds | batched tick p50 ms | p99 ms | one bed per call p50 ms | p99 ms | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['beds']} | {row['batched_p50_ms']:.2f} | {row['batched_p99_ms']:.2f} | "
            f"{row['per_bed_p50_ms']:.2f} | {row['per_bed_p99_ms']:.2f} | {row['ratio']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
