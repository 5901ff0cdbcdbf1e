"""The forecasting runtime: freshness rules, one batched call, and model reload without a restart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engines.catalog import sha256_file
from engines.runtime import ForecastRuntime
from engines.testing import build_test_model

NOW_S = 1_764_000_000.0 + 30.0
"""A wall-clock instant 30 s into a minute step."""


def _runtime(models: Path, beds: list[str]) -> ForecastRuntime:
    return ForecastRuntime(
        beds=beds, backend="onnxruntime", model_ref="runtime-test", extra_models_dir=models
    )


def _feed(
    runtime: ForecastRuntime, bed: str, *, key: str, unit: str, values: list[float], end_s: float
) -> None:
    for minutes_ago, value in enumerate(reversed(values)):
        runtime.observe(bed=bed, key=key, value=value, unit=unit, valid=True, at_s=end_s - 60.0 * minutes_ago)


async def test_fresh_stale_and_empty_beds(tmp_path: Path) -> None:
    build_test_model(tmp_path, model_id="runtime-test", default=False)
    runtime = _runtime(tmp_path, ["fresh", "stale", "empty"])
    await runtime.start()
    try:
        _feed(runtime, "fresh", key="spo2", unit="%", values=[97, 96, 95, 94], end_s=NOW_S)
        _feed(runtime, "fresh", key="etco2", unit="kPa", values=[5.0, 5.1], end_s=NOW_S)
        _feed(runtime, "stale", key="spo2", unit="%", values=[97, 96], end_s=NOW_S - 600)
        forecasts = {f.bed: f for f in await runtime.tick(now_s=NOW_S)}
    finally:
        await runtime.close()

    fresh = forecasts["fresh"]
    assert [s.key for s in fresh.signals] == ["spo2", "etco2"]
    spo2 = fresh.signals[0]
    assert spo2.last_value == 94.0
    assert spo2.valid_minutes == 4
    assert spo2.last_age_s == pytest.approx(30.0)
    assert len(spo2.quantiles) == 4
    assert all(p10 <= p50 <= p90 for p10, p50, p90 in spo2.quantiles)
    assert fresh.signals[1].last_value == pytest.approx(5.1 * 7.50062, rel=1e-5), "etco2 converted to mmHg"
    assert fresh.signals[1].unit == "mm[Hg]"
    assert set(fresh.events) == {"spo2_below_90"}
    assert fresh.unavailable["map"] == "no valid map in the last 30 min"
    assert fresh.unavailable["map_below_65"] == "needs a fresh map"

    stale = forecasts["stale"]
    assert stale.signals == ()
    assert stale.unavailable["spo2"] == "last valid spo2 is 10 min old (needs one within 5 min)"
    assert forecasts["empty"].signals == ()
    assert forecasts["empty"].events == {}


async def test_batched_tick_equals_each_bed_alone(tmp_path: Path) -> None:
    build_test_model(tmp_path, model_id="runtime-test", default=False)
    beds = [f"bed-{i:02d}" for i in range(70)]
    generator = np.random.default_rng(3)
    together = _runtime(tmp_path, beds)
    await together.start()
    alone = {bed: _runtime(tmp_path, [bed]) for bed in beds[:5] + beds[-3:]}
    for runtime in alone.values():
        await runtime.start()
    try:
        for bed in beds:
            values = list(generator.normal(95, 2, size=12).clip(50, 100))
            _feed(together, bed, key="spo2", unit="%", values=values, end_s=NOW_S)
            if bed in alone:
                _feed(alone[bed], bed, key="spo2", unit="%", values=values, end_s=NOW_S)
        batched = {f.bed: f for f in await together.tick(now_s=NOW_S)}
        for bed, runtime in alone.items():
            (single,) = await runtime.tick(now_s=NOW_S)
            np.testing.assert_allclose(
                batched[bed].signals[0].quantiles, single.signals[0].quantiles, atol=1e-5
            )
            np.testing.assert_allclose(
                batched[bed].events["spo2_below_90"], single.events["spo2_below_90"], atol=1e-6
            )
    finally:
        await together.close()
        for runtime in alone.values():
            await runtime.close()


async def test_reload_swaps_to_a_new_version_and_survives_a_broken_one(tmp_path: Path) -> None:
    build_test_model(tmp_path, model_id="runtime-test", version="1.0.0", default=False)
    runtime = _runtime(tmp_path, ["bed-07"])
    await runtime.start()
    try:
        assert runtime.backend.model.ref == "runtime-test@1.0.0"
        assert await runtime.reload() is False, "nothing new: nothing swapped"

        build_test_model(tmp_path, model_id="runtime-test", version="1.1.0", default=False)
        assert await runtime.reload() is True
        assert runtime.backend.model.ref == "runtime-test@1.1.0"

        broken = build_test_model(tmp_path, model_id="runtime-test", version="1.2.0", default=False)
        broken.onnx_path.write_bytes(b"not an onnx graph")
        card_path = broken.onnx_path.parent / "card.json"
        card = json.loads(card_path.read_text(encoding="utf-8"))
        card["onnx_sha256"] = sha256_file(broken.onnx_path)
        card_path.write_text(json.dumps(card), encoding="utf-8")
        assert await runtime.reload() is False
        assert runtime.backend.model.ref == "runtime-test@1.1.0", "a broken new model leaves the running one"
        _feed(runtime, "bed-07", key="rr", unit="/min", values=[14, 15], end_s=NOW_S)
        (forecast,) = await runtime.tick(now_s=NOW_S)
        assert [s.key for s in forecast.signals] == ["rr"]
    finally:
        await runtime.close()
