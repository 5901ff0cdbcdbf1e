"""Benchmark (not a test): what the bed history (edge/history.py) costs per row, on the loop and on disk.

A ward of `--beds` beds, each with `--keys` numeric values (plausible vitals and ventilator values, the
twin's size for a ventilator and a monitor), sampled by `History.tick` as the daemon does (staggered,
one row per bed per `sample_s`; the twin's values are built at each call, one pydantic TwinValue per key,
as `TwinStore.values` does) on a clock that runs as fast as the writer keeps up, plus one forecast
headline per bed per `forecast_s` of that clock. The feed waits whenever the writer's queue holds more
than a batch, so nothing is dropped and the figures are the writer's sustained throughput.

Prints: rows written per second of wall time (throughput), CPU per row on the calling thread (what the
event loop pays), CPU per row of the whole process (loop + writer), the bytes a row takes on disk, and
from those the cost at the real rate (`beds / sample_s` rows/s) and the hours `max_mb` holds.

    python -m tools.bench.history --beds 64 --rows 50000
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from edge.config import HistoryConfig
from edge.history import History
from edge.model import (
    ForecastBody,
    ForecastModelRef,
    HorizonForecast,
    SignalForecast,
    TwinValue,
)
from engines.spec import HORIZONS_MIN, SIGNAL_KEYS

VALUES = {
    "hr": 78.0, "pr": 78.0, "spo2": 97.0, "map": 85.0, "abp_sys": 120.0, "abp_dia": 68.0,
    "abp_mean": 85.0, "nbp_sys": 118.0, "nbp_dia": 70.0, "nbp_mean": 86.0, "rr": 14.0, "etco2": 38.0,
    "temp": 37.1, "cvp": 8.0, "paw": 12.4, "ppeak": 22.0, "pmean": 11.0, "pplat": 19.0, "peep": 5.0,
    "vt": 512.0, "vti": 520.0, "mv": 7.2, "mvi": 7.3, "fio2": 40.0, "o2": 39.8, "leak": 0.4,
    "cdyn": 48.5, "r": 11.2, "rr_mand": 12.0, "rr_spon": 2.0, "ie_i": 1.0, "ie_e": 2.1, "rsbi": 27.3,
    "vco2": 195.0, "pi": 3.2,
}  # fmt: skip


def _twin_values(keys: list[str], step: int) -> dict[str, TwinValue]:
    at = datetime.now(UTC)
    return {
        key: TwinValue(
            value=round(VALUES[key] * (1 + 0.01 * ((step + i) % 7)), 2),
            unit="1",
            mdc=None,
            label=key,
            device="vent-1",
            valid=True,
            device_time=None,
            received_at=at,
            age_s=0.5,
            stale=False,
        )
        for i, key in enumerate(keys)
    }


def _forecast() -> ForecastBody:
    return ForecastBody(
        model=ForecastModelRef(
            id="baseline", version="1", kind="baseline", backend="onnxruntime", precision="fp32"
        ),
        made_at=datetime.now(UTC),
        horizons_min=list(HORIZONS_MIN),
        signals={
            key: SignalForecast(
                unit="1",
                source=key,
                last_value=VALUES[key],
                last_age_s=1.0,
                valid_minutes=30,
                horizons=[
                    HorizonForecast(
                        horizon_min=h, p10=VALUES[key] * 0.9, p50=VALUES[key], p90=VALUES[key] * 1.1
                    )
                    for h in HORIZONS_MIN
                ],
            )
            for key in SIGNAL_KEYS
        },
        events={},
        unavailable={},
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, default=64, help="beds (default: 64)")
    parser.add_argument(
        "--keys", type=int, default=len(VALUES), help=f"values per bed (default: {len(VALUES)})"
    )
    parser.add_argument("--rows", type=int, default=50_000, help="sample rows to write (default: 50000)")
    parser.add_argument("--dir", type=Path, default=None, help="where the file goes (default: a temp dir)")
    args = parser.parse_args(argv)
    keys = sorted(VALUES)[: args.keys]
    beds = [f"bed-{i + 1:02d}" for i in range(args.beds)]
    config = HistoryConfig()
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        path = Path(directory) / "history.db"
        history = History(config=config, path=path, beds=beds)
        history.start()
        forecast = _forecast()
        tick_s = 0.25

        def values_of(bed: str) -> dict[str, TwinValue]:
            # built at each call, as TwinStore.values builds them: part of what the loop pays
            return _twin_values(keys, len(bed))

        wall0, cpu0 = time.perf_counter(), time.process_time()
        loop_s = 0.0
        step = 0
        while history.stats().written + history.stats().pending < args.rows:
            now_s = step * tick_s
            started = time.thread_time()
            history.tick(now_mono_s=now_s, values_of=values_of)
            if step % int(config.forecast_s / tick_s) == 0:
                for bed in beds:
                    history.forecast(bed=bed, body=forecast, now_mono_s=now_s)
            loop_s += time.thread_time() - started
            step += 1
            while history.stats().pending > 2000:
                time.sleep(0.005)
        history.close(timeout_s=120)
        wall_s = time.perf_counter() - wall0
        cpu_s = time.process_time() - cpu0
        stats = history.stats()
        size = path.stat().st_size
    rows = stats.written
    real_rows_per_s = args.beds / config.sample_s
    per_row_cpu_s = cpu_s / rows
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.python_version()}",
        "beds": args.beds,
        "keys_per_row": len(keys),
        "rows_written": rows,
        "dropped": stats.dropped,
        "batches": stats.batches,
        "throughput_rows_per_s": round(rows / wall_s),
        "loop_us_per_row": round(loop_s / rows * 1e6, 1),
        "process_cpu_us_per_row": round(per_row_cpu_s * 1e6, 1),
        "bytes_per_row_on_disk": round(size / rows),
        "at_real_rate": {
            "rows_per_s": round(real_rows_per_s, 1),
            "loop_cpu_pct_of_a_core": round(100 * real_rows_per_s * loop_s / rows, 3),
            "process_cpu_pct_of_a_core": round(100 * real_rows_per_s * per_row_cpu_s, 3),
            "disk_mb_per_hour": round(real_rows_per_s * 3600 * size / rows / 2**20, 1),
            "hours_in_max_mb": round(config.max_mb * 2**20 / (real_rows_per_s * size / rows) / 3600, 1),
        },
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
