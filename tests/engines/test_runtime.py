"""The forecasting runtime: freshness rules, one batched call, and model reload without a restart."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.plausibility import TABLE
from engines.backend import BatchInput, BatchOutput
from engines.catalog import ModelError, sha256_file, write_manifest
from engines.features import FeatureWindows, WardHistory
from engines.onnx_backend import OnnxRuntimeBackend
from engines.runtime import BedForecast, EnginesUnavailable, ForecastRuntime
from engines.spec import (
    CONTEXT,
    EVENTS,
    FRESH_WITHIN_STEPS,
    HORIZONS_MIN,
    MAX_BATCH,
    QUANTILES,
    SIGNALS,
    STAND_INS,
    WINDOW_STEPS,
)
from engines.testing import build_test_model

NOW_S = 1_764_000_000.0 + 30.0
"""A wall-clock instant 30 s into a minute step."""


def _runtime(models: Path, beds: list[str], *, model_ref: str = "runtime-test") -> ForecastRuntime:
    return ForecastRuntime(beds=beds, backend="onnxruntime", model_ref=model_ref, extra_models_dir=models)


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


async def test_a_quantile_beyond_what_the_signal_can_be_is_clipped(tmp_path: Path) -> None:
    """The test model's 15-min p90 is last + 3 % for SpO2: from 99 % it says 102 %, published as 100 %."""
    build_test_model(tmp_path, model_id="runtime-test", default=False)
    runtime = _runtime(tmp_path, ["bed"])
    await runtime.start()
    try:
        _feed(runtime, "bed", key="spo2", unit="%", values=[99, 99, 99], end_s=NOW_S)
        (forecast,) = await runtime.tick(now_s=NOW_S)
    finally:
        await runtime.close()
    (spo2,) = forecast.signals
    raw = [p90 for _, _, p90 in spo2.quantiles]
    assert raw[0] < 100.0 < 99.0 + 3.0, "the first horizon stays inside; the test model's last one would not"
    assert max(raw) == 100.0
    assert all(p10 <= p50 <= p90 <= 100.0 for p10, p50, p90 in spo2.quantiles)


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
        write_manifest(card_path.parent)  # intact by its manifest: onnxruntime itself refuses it
        assert await runtime.reload() is False
        assert runtime.backend.model.ref == "runtime-test@1.1.0", "a broken new model leaves the running one"
        _feed(runtime, "bed-07", key="rr", unit="/min", values=[14, 15], end_s=NOW_S)
        (forecast,) = await runtime.tick(now_s=NOW_S)
        assert [s.key for s in forecast.signals] == ["rr"]
    finally:
        await runtime.close()


async def test_a_reload_that_hangs_in_a_tensorrt_build_does_not_stop_ticks(
    tmp_path: Path, fake_gpu_stack: Callable[[str], None]
) -> None:
    """Issue 6, defect 10: a hot reload that builds a plan never holds up the tick."""
    build_test_model(tmp_path, model_id="runtime-test", version="1.0.0", default=False)
    runtime = ForecastRuntime(
        beds=["bed-07"],
        backend="auto",
        model_ref="runtime-test",
        extra_models_dir=tmp_path,
        cache_dir=tmp_path,
    )
    await runtime.start()  # no tensorrt yet: onnxruntime
    try:
        fake_gpu_stack("build-hangs")  # now a GPU stack appears whose builds never return
        build_test_model(tmp_path, model_id="runtime-test", version="1.1.0", default=False)
        reload = asyncio.create_task(runtime.reload())
        for minute in range(5):
            _feed(runtime, "bed-07", key="rr", unit="/min", values=[14, 15], end_s=NOW_S + 60 * minute)
            (forecast,) = await asyncio.wait_for(runtime.tick(now_s=NOW_S + 60 * minute), timeout=10)
            assert forecast.model.ref == "runtime-test@1.0.0"
            assert [s.key for s in forecast.signals] == ["rr"]
            await asyncio.sleep(0.1)
        assert not reload.done(), "the build still hangs"
        sys.modules["tensorrt"].release_hung_builds()  # the build returns, without a plan
        assert await asyncio.wait_for(reload, timeout=30) is True
        assert runtime.backend.model.ref == "runtime-test@1.1.0"
        assert runtime.backend.name == "onnxruntime"
        assert "TensorRT build failed" in runtime.choice_reason
        assert runtime.status.startswith(
            "runtime-test@1.1.0 on onnxruntime (fp32): auto: onnxruntime because TensorRT failed"
        )
    finally:
        await runtime.close()


async def test_a_tensorrt_load_past_the_timeout_runs_onnxruntime(
    tmp_path: Path, fake_gpu_stack: Callable[[str], None]
) -> None:
    fake_gpu_stack("build-hangs")
    build_test_model(tmp_path, model_id="runtime-test", default=False)
    runtime = ForecastRuntime(
        beds=["bed-07"],
        backend="tensorrt",
        model_ref="runtime-test",
        extra_models_dir=tmp_path,
        cache_dir=tmp_path,
        load_timeout_s=1,
    )
    try:
        await asyncio.wait_for(runtime.start(), timeout=30)
        assert runtime.backend.name == "onnxruntime"
        assert runtime.choice_reason == (
            "tensorrt asked for but unavailable, onnxruntime instead: "
            "TensorRT load of runtime-test@1.0.0 did not finish within 1 s; abandoned"
        )
    finally:
        await runtime.close()


async def test_a_tampered_model_is_refused_with_the_file_named_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build_test_model(tmp_path, model_id="runtime-test", version="1.0.0", default=False)
    runtime = _runtime(tmp_path, ["bed-07"])
    await runtime.start()
    try:
        tampered = build_test_model(tmp_path, model_id="runtime-test", version="1.1.0", default=False)
        tampered.onnx_path.write_bytes(tampered.onnx_path.read_bytes() + b"\0")
        with caplog.at_level(logging.ERROR):
            assert await runtime.reload() is False
            assert await runtime.reload() is False
        assert runtime.backend.model.ref == "runtime-test@1.0.0", "the running model stays"
        refusals = [r.getMessage() for r in caplog.records if "refusing model" in r.getMessage()]
        assert refusals == [
            f"refusing model: {tampered.onnx_path}: SHA-256 {sha256_file(tampered.onnx_path)[:12]}… "
            f"does not match SHA256SUMS ({tampered.card.onnx_sha256[:12]}…): tampered or damaged: "
            "refusing the model"
        ], "named once, not at every catalog check"
    finally:
        await runtime.close()


@pytest.mark.parametrize("file", ["model.onnx", "card.json", "reference.npz"])
async def test_without_an_intact_model_start_says_why_and_can_be_retried(tmp_path: Path, file: str) -> None:
    model = build_test_model(tmp_path, model_id="runtime-test", default=False)
    path = model.onnx_path.parent / file
    original = path.read_bytes()
    path.write_bytes(original + b" ")
    runtime = _runtime(tmp_path, ["bed-07"])
    try:
        with pytest.raises(EnginesUnavailable, match="no model 'runtime-test'"):
            await runtime.start()
        assert runtime.status.startswith("unavailable: no model 'runtime-test'")
        assert not runtime.running
        path.write_bytes(original)
        await runtime.start()
        assert runtime.backend.model.ref == "runtime-test@1.0.0"
    finally:
        await runtime.close()


async def test_an_onnx_swapped_after_the_check_is_not_run(tmp_path: Path) -> None:
    model = build_test_model(tmp_path, model_id="runtime-test", default=False)
    model.onnx_path.write_bytes(model.onnx_path.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="no longer matches its card"):
        OnnxRuntimeBackend(model=model)


async def test_a_tensorrt_forward_pass_that_fails_falls_back_to_onnxruntime(
    tmp_path: Path, fake_gpu_stack: Callable[[str], None], caplog: pytest.LogCaptureFixture
) -> None:
    fake_gpu_stack("works")
    build_test_model(tmp_path, model_id="runtime-test", default=False)
    runtime = ForecastRuntime(
        beds=["bed-07"],
        backend="auto",
        model_ref="runtime-test",
        extra_models_dir=tmp_path,
        cache_dir=tmp_path / "engines",
    )
    await runtime.start()
    try:
        assert runtime.backend.name == "tensorrt"
        assert runtime.choice_reason.startswith("auto: tensorrt because CUDA device Fake Orin (tests)")
        _feed(runtime, "bed-07", key="rr", unit="/min", values=[14, 15], end_s=NOW_S)
        (on_gpu,) = await runtime.tick(now_s=NOW_S)
        assert [s.key for s in on_gpu.signals] == ["rr"]

        sys.modules["tensorrt"].fail_inference = True  # the GPU falls off the bus
        with caplog.at_level(logging.ERROR):
            (failed,) = await runtime.tick(now_s=NOW_S)
            await runtime.tick(now_s=NOW_S)
        assert failed.signals == ()
        assert failed.unavailable["rr"].startswith("inference failed: TensorRtError: execute_async_v3 failed")
        assert len([r for r in caplog.records if "tensorrt inference" in r.getMessage()]) == 1
        assert runtime.needs_fallback

        assert await runtime.reload(force=True) is True
        assert runtime.backend.name == "onnxruntime"
        assert runtime.choice_reason.startswith("onnxruntime because TensorRT failed in a forward pass")
        assert not runtime.needs_fallback
        (on_cpu,) = await runtime.tick(now_s=NOW_S)
        np.testing.assert_allclose(on_cpu.signals[0].quantiles, on_gpu.signals[0].quantiles, atol=1e-5)
    finally:
        await runtime.close()


async def test_a_non_finite_model_output_is_unavailable_never_a_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine that overflows (FP16) gives NaN/inf: JSON has neither, and a clinician must not see it."""
    build_test_model(tmp_path, model_id="runtime-test", default=False)
    runtime = _runtime(tmp_path, ["bed"])
    await runtime.start()
    backend = runtime.backend
    real_infer = backend.infer

    def overflowing(batch: BatchInput) -> BatchOutput:
        output = real_infer(batch)
        quantiles = output.quantiles.copy()
        quantiles[:, 0] = np.nan
        probabilities = output.event_probability.copy()
        probabilities[:] = np.inf
        return BatchOutput(quantiles=quantiles, event_probability=probabilities)

    monkeypatch.setattr(backend, "infer", overflowing)
    try:
        _feed(runtime, "bed", key="hr", unit="/min", values=[80, 81, 82], end_s=NOW_S)
        _feed(runtime, "bed", key="spo2", unit="%", values=[97, 96, 95], end_s=NOW_S)
        (forecast,) = await runtime.tick(now_s=NOW_S)
    finally:
        await runtime.close()
    assert [s.key for s in forecast.signals] == ["spo2"]
    assert forecast.unavailable["hr"] == "the model gave a non-finite hr forecast"
    assert forecast.events == {}
    assert forecast.unavailable["spo2_below_90"] == "the model gave a non-finite spo2_below_90 probability"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_test_model(root, model_id="runtime-test", default=False)
    for model_id, events in _ESTIMATING.items():
        build_test_model(root, model_id=model_id, default=False, events_estimated=events)
    return root


_ESTIMATING: dict[str, tuple[str, ...] | None] = {
    "runtime-test-spo2": ("spo2_below_90",),
    "runtime-test-none": (),
    "runtime-test-unstated": None,
}
"""Test models whose cards list fewer events (`runtime-test` lists every one)."""


def _reference_forecast(
    *,
    bed: str,
    window: FeatureWindows,
    row: int,
    output: BatchOutput | None,
    failed: str | None,
    now_s: float,
    model_ref: str,
    estimated: tuple[str, ...],
) -> dict[str, object]:
    """One bed's forecast computed the straightforward way: Python loops and Python's round per value."""
    values, mask = window.values[row], window.mask[row]
    fresh = {s.key: bool(mask[-FRESH_WITHIN_STEPS:, i].any()) for i, s in enumerate(SIGNALS)}
    signals: list[tuple[object, ...]] = []
    events: dict[str, tuple[float, ...]] = {}
    unavailable: dict[str, str] = {}
    p10, p50, p90 = (QUANTILES.index(q) for q in (0.1, 0.5, 0.9))
    for index, signal in enumerate(SIGNALS):
        low, high = TABLE[signal.key].minimum, TABLE[signal.key].maximum  # what the signal can be
        valid_rows = [r for r in range(WINDOW_STEPS) if mask[r, index]]
        if fresh[signal.key] and output is None and failed is not None:
            unavailable[signal.key] = f"inference failed: {failed}"
        elif not fresh[signal.key] or output is None:
            unavailable[signal.key] = (
                f"no valid {signal.key} in the last {WINDOW_STEPS} min"
                if not valid_rows
                else f"last valid {signal.key} is {WINDOW_STEPS - 1 - valid_rows[-1]} min old "
                f"(needs one within {FRESH_WITHIN_STEPS} min)"
            ) + (f"; no pr within {FRESH_WITHIN_STEPS} min to stand in either" if signal.key == "hr" else "")
        elif not np.isfinite(output.quantiles[index]).all():
            unavailable[signal.key] = f"the model gave a non-finite {signal.key} forecast"
        else:
            last = valid_rows[-1]
            signals.append(
                (
                    signal.key,
                    "pr" if window.stand_in[row, index] else signal.key,
                    signal.unit,
                    round(float(values[last, index]), 3),
                    round((WINDOW_STEPS - 1 - last) * 60 + now_s % 60, 1),
                    len(valid_rows),
                    tuple(
                        tuple(round(min(max(float(q[i]), low), high), 3) for i in (p10, p50, p90))
                        for q in output.quantiles[index]
                    ),
                )
            )
    for index, event in enumerate(EVENTS):
        if event.key not in estimated:
            unavailable[event.key] = (
                f"model {model_ref} has no event estimate that beats the current-value baseline"
            )
        elif output is None or not fresh[event.signal]:
            unavailable[event.key] = (
                f"inference failed: {failed}"
                if fresh[event.signal] and failed is not None
                else f"needs a fresh {event.signal}"
            )
        elif not np.isfinite(output.event_probability[index]).all():
            unavailable[event.key] = f"the model gave a non-finite {event.key} probability"
        else:
            events[event.key] = tuple(
                round(min(1.0, max(0.0, float(p))), 4) for p in output.event_probability[index]
            )
    return {"bed": bed, "signals": signals, "events": events, "unavailable": unavailable}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    beds=st.sampled_from((1, 3, 64, 70, 130)),
    fail_batch=st.sampled_from((None, 0, 1)),
    model_id=st.sampled_from(("runtime-test", *_ESTIMATING)),
)
def test_a_tick_equals_a_per_bed_reference(
    model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
    beds: int,
    fail_batch: int | None,
    model_id: str,
) -> None:
    """The vectorized tick says, for every bed, what a per-bed loop with Python arithmetic says.

    Random histories (gaps, stale and empty beds), random model outputs with NaN and Infinity and
    probabilities outside [0, 1], a forward pass that may fail for one batch of MAX_BATCH beds, pulse
    rates that stand in for heart rates, and models that estimate some events or none.
    Ages are on a 1/8 s grid, where numpy's rounding and Python's agree exactly.
    """
    rng = np.random.default_rng(seed)
    names = [f"bed-{i:03d}" for i in range(beds)]
    now_s = NOW_S + rng.integers(0, 480) / 8
    feed = []
    for name in names:
        for signal in (*SIGNALS, *CONTEXT, *(stand_in.source for stand_in in STAND_INS)):
            present = rng.random()
            for minutes_ago in range(WINDOW_STEPS + 5):
                if rng.random() < present * 0.7:
                    value = rng.uniform(signal.minimum, signal.maximum)
                    feed.append((name, signal.key, float(value), signal.unit, now_s - 60 * minutes_ago))
    batches: list[BatchOutput | None] = []

    def infer(batch: BatchInput) -> BatchOutput:
        if fail_batch == len(batches):
            batches.append(None)
            raise RuntimeError("the forward pass failed")
        shape = (batch.beds, len(SIGNALS), len(HORIZONS_MIN), len(QUANTILES))
        quantiles = rng.normal(80, 40, size=shape).astype(np.float32)
        quantiles[rng.random(shape) < 0.01] = np.nan
        quantiles[rng.random(shape) < 0.01] = np.inf
        events = rng.uniform(-0.1, 1.1, size=(batch.beds, len(EVENTS), len(HORIZONS_MIN))).astype(np.float32)
        events[rng.random(events.shape) < 0.02] = np.nan
        batches.append(BatchOutput(quantiles=quantiles, event_probability=events))
        return batches[-1]

    async def tick() -> list[BedForecast]:
        runtime = _runtime(model_dir, names, model_ref=model_id)
        await runtime.start()
        try:
            monkeypatch.setattr(runtime.backend, "infer", infer)
            for name, key, value, unit, at_s in feed:
                runtime.observe(bed=name, key=key, value=value, unit=unit, valid=True, at_s=at_s)
            return await runtime.tick(now_s=now_s)
        finally:
            await runtime.close()

    forecasts = asyncio.run(tick())
    history = WardHistory(beds=names)
    for name, key, value, unit, at_s in feed:
        history.observe(bed=name, key=key, value=value, unit=unit, valid=True, at_s=at_s)
    windows = history.windows(now_s=now_s)
    runnable = [row for row in range(beds) if windows.mask[row, -FRESH_WITHIN_STEPS:].any()]
    outputs: dict[int, BatchOutput] = {}
    failed = None
    for number, start in enumerate(range(0, len(runnable), MAX_BATCH)):
        if number == fail_batch:
            failed = "RuntimeError: the forward pass failed"
            break
        for offset, row in enumerate(runnable[start : start + MAX_BATCH]):
            output = batches[number]
            assert output is not None
            outputs[row] = BatchOutput(
                quantiles=output.quantiles[offset], event_probability=output.event_probability[offset]
            )
    chunks = -(-len(runnable) // MAX_BATCH)
    assert len(batches) == (chunks if fail_batch is None or fail_batch >= chunks else fail_batch + 1), (
        "one forward pass per MAX_BATCH beds, none after a failed one"
    )
    assert [f.bed for f in forecasts] == names
    for row, forecast in enumerate(forecasts):
        expected = _reference_forecast(
            bed=names[row],
            window=windows,
            row=row,
            output=outputs.get(row),
            failed=failed,
            now_s=now_s,
            model_ref=f"{model_id}@1.0.0",
            estimated=_ESTIMATING.get(model_id, tuple(event.key for event in EVENTS)) or (),
        )
        assert {
            "bed": forecast.bed,
            "signals": [tuple(s) for s in forecast.signals],
            "events": forecast.events,
            "unavailable": forecast.unavailable,
        } == expected
        assert forecast.made_at_s == now_s


async def test_onnxruntime_runs_on_the_loop_and_tensorrt_on_the_inference_thread(
    tmp_path: Path, fake_gpu_stack: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CPU forward pass needs no thread hop; a GPU one keeps its thread (a hung driver never stops
    the loop, and with it the vitals)."""
    fake_gpu_stack("works")
    build_test_model(tmp_path, model_id="runtime-test", default=False)
    threads: dict[str, str] = {}
    for choice in ("onnxruntime", "auto"):
        runtime = ForecastRuntime(
            beds=["bed-07"],
            backend="auto" if choice == "auto" else "onnxruntime",
            model_ref="runtime-test",
            extra_models_dir=tmp_path,
            cache_dir=tmp_path / "engines",
        )
        await runtime.start()
        try:
            backend = runtime.backend

            def recording(
                batch: BatchInput, name: str = backend.name, real: Callable[..., BatchOutput] = backend.infer
            ) -> BatchOutput:
                threads[name] = threading.current_thread().name
                return real(batch)

            monkeypatch.setattr(backend, "infer", recording)
            _feed(runtime, "bed-07", key="rr", unit="/min", values=[14, 15], end_s=NOW_S)
            (forecast,) = await runtime.tick(now_s=NOW_S)
            assert [s.key for s in forecast.signals] == ["rr"]
            assert runtime.last_tick is not None
        finally:
            await runtime.close()
    assert threads == {"onnxruntime": threading.current_thread().name, "tensorrt": "engines_0"}
