"""The held-out evaluator and `icu-edge engines eval RECORD`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engines import metrics
from engines.backend import BatchInput, BatchOutput
from engines.evaluate import (
    EVAL_SIGNALS,
    SMOOTHER_MINUTES,
    alarm_score,
    best_smoother,
    evaluate,
    event_warnings,
    forecast_grid,
    last_valid,
    smoothed_means,
)
from engines.records import PatientGrid
from engines.spec import CONTEXT, EVENTS, HORIZONS_MIN, QUANTILES, SIGNAL_KEYS, SIGNALS

VITALS = Path(__file__).resolve().parents[1] / "data" / "vitals"
S25047 = VITALS / "s25047-2704-05-04-10-44n"
P000020 = VITALS / "p000020-2183-04-28-17-47n"
HR = SIGNAL_KEYS.index("hr")
SPO2 = SIGNAL_KEYS.index("spo2")
SPO2_EVENT = [e.key for e in EVENTS].index("spo2_below_90")


def _constant(value: float) -> object:
    def predict(batch: BatchInput) -> BatchOutput:
        shape = (batch.beds, len(SIGNALS), len(HORIZONS_MIN), len(QUANTILES))
        return BatchOutput(
            quantiles=np.full(shape, value, np.float32),
            event_probability=np.full((batch.beds, len(EVENTS), len(HORIZONS_MIN)), 0.5, np.float32),
        )

    return predict


def _interval(lower: float, median: float, upper: float) -> object:
    def predict(batch: BatchInput) -> BatchOutput:
        shape = (batch.beds, len(SIGNALS), len(HORIZONS_MIN), len(QUANTILES))
        quantiles = np.empty(shape, np.float32)
        quantiles[..., 0], quantiles[..., 1], quantiles[..., 2] = lower, median, upper
        return BatchOutput(
            quantiles=quantiles,
            event_probability=np.full((batch.beds, len(EVENTS), len(HORIZONS_MIN)), 0.5, np.float32),
        )

    return predict


def _hand_grid() -> PatientGrid:
    minutes = 16
    values = np.zeros((minutes, len(SIGNALS)), np.float32)
    mask = np.zeros_like(values)
    for step, value in ((0, 60.0), (1, 62.0), (3, 65.0), (4, 70.0), (9, 75.0), (15, 90.0)):
        values[step, HR] = value
        mask[step, HR] = 1.0
    return PatientGrid(
        patient_id="hand",
        values=values,
        mask=mask,
        context=np.zeros((minutes, len(CONTEXT)), np.float32),
        context_mask=np.zeros((minutes, len(CONTEXT)), np.float32),
    )


def test_persistence_mae_on_a_hand_made_grid() -> None:
    # Horizon 1: targets at 1, 3, 4, 9 (from 0, 2, 3, 8; fresh within 5 steps); the target at 15 is
    # not scored: at minute 14 the last hr (minute 9) is 5 steps old, not fresh.
    # Persistence errors: |62-60|, |65-62|, |70-65|, |75-70| -> 3.75.
    # Horizon 5: targets 9 (from 4: last 70) and 15 (from 10: last 75, minute 9 is 1 step old) -> 10.
    # A model that always says 100: horizon 1 -> (38+35+30+25)/4 = 32; horizon 5 -> (25+10)/2 = 17.5.
    result = evaluate(_constant(100.0), [_hand_grid()], batch_size=3, signals=("hr",))  # type: ignore[arg-type]
    rows = {r.horizon_min: r for r in result.metrics}
    assert rows[1].n == 4
    assert rows[1].mae_persistence == pytest.approx(3.75)
    assert rows[1].mae == pytest.approx(32.0)
    assert rows[1].mae_ratio == pytest.approx(32.0 / 3.75, rel=1e-3)
    assert rows[5].n == 2
    assert rows[5].mae_persistence == pytest.approx(10.0)
    assert rows[5].mae == pytest.approx(17.5)
    assert rows[1].coverage_10_90 == 0.0


def test_fixed_smoothers_and_coverage_on_the_hand_made_grid() -> None:
    # Same scored minutes as above. The smoothers average the last k valid values of the window:
    # horizon 1: from 0 -> 60 (target 62), from 2 -> 61 (65), from 3 -> 62.33 (70) for every k;
    # from 8 -> k=3: (62+65+70)/3 = 65.67, k>=5: 64.25 (target 75). k=3: (2+4+7.67+9.33)/4 = 5.75.
    # Horizon 5: from 4 -> k=3: 65.67, k>=5: 64.25 (target 75); from 10 -> k=3: (65+70+75)/3 = 70,
    # k>=5: 66.4 (target 90). k=3: (9.33+20)/2 = 14.67, the best.
    # The interval [63, 80] holds the targets 65, 70, 75 of 62, 65, 70, 75 (horizon 1): 0.75;
    # 75 of 75, 90 (horizon 5): 0.5.
    result = evaluate(_interval(63.0, 70.0, 80.0), [_hand_grid()], signals=("hr",))  # type: ignore[arg-type]
    rows = {r.horizon_min: r for r in result.metrics}
    assert rows[1].smoother_min == 3
    assert rows[1].mae_smoother == pytest.approx(5.75, abs=1e-4)
    assert rows[5].smoother_min == 3
    assert rows[5].mae_smoother == pytest.approx(44.0 / 3.0, abs=1e-4)
    assert rows[1].coverage_10_90 == pytest.approx(0.75)
    assert rows[5].coverage_10_90 == pytest.approx(0.5)


def test_smoothed_means_count_valid_minutes_back_across_gaps() -> None:
    values = np.zeros((1, 8, 1), np.float32)
    mask = np.zeros_like(values)
    for step, value in ((0, 10.0), (2, 20.0), (5, 30.0), (7, 60.0)):
        values[0, step, 0], mask[0, step, 0] = value, 1.0
    means = smoothed_means(values, mask, minutes=(1, 2, 3, 30))
    assert means[0, :, 0].tolist() == pytest.approx([60.0, 45.0, 110.0 / 3.0, 30.0])
    assert smoothed_means(values, np.zeros_like(mask)).tolist() == [[[0.0]] * len(SMOOTHER_MINUTES)]


def test_best_smoother_prefers_the_long_mean_on_an_alternating_signal() -> None:
    # 60, 70, 60, 70 ...: a mean of an even number of minutes says 65 (error 5), an odd one 66.7 or
    # 63.3 (error 6.7 for k=3), persistence is off by 10.
    series = np.tile([60.0, 70.0], 20)
    windows = series[:30][None, :, None].astype(np.float32)
    smoothed = smoothed_means(windows, np.ones_like(windows))[:, :, 0].astype(np.float64)
    mae, k = best_smoother(smoothed, np.array([60.0]))
    assert (mae, k) == (pytest.approx(5.0), 10)


def test_batch_size_does_not_change_the_result() -> None:
    grid = _hand_grid()
    one = evaluate(_constant(70.0), [grid], batch_size=1)  # type: ignore[arg-type]
    many = evaluate(_constant(70.0), [grid], batch_size=64)  # type: ignore[arg-type]
    assert one == many


def test_last_valid_value() -> None:
    values = np.array([[[1.0, 0.0], [2.0, 5.0], [0.0, 0.0]]], np.float32)
    mask = np.array([[[1, 0], [1, 1], [0, 0]]], np.float32)
    assert last_valid(values, mask).tolist() == [[2.0, 5.0]]
    assert last_valid(values, np.zeros_like(mask)).tolist() == [[0.0, 0.0]]


def _desaturation_grid() -> PatientGrid:
    """SpO2 97 % for 60 min, then 1 point a minute down to 85 % (onset: minute 67, the first below 90)."""
    minutes = 120
    values = np.zeros((minutes, len(SIGNALS)), np.float32)
    values[:, SPO2] = np.maximum(97.0 - np.clip(np.arange(minutes) - 59, 0, None), 85.0)
    mask = np.zeros_like(values)
    mask[:, SPO2] = 1.0
    return PatientGrid(
        patient_id="desaturation",
        values=values,
        mask=mask,
        context=np.zeros((minutes, len(CONTEXT)), np.float32),
        context_mask=np.zeros((minutes, len(CONTEXT)), np.float32),
    )


def _warns_at_93(batch: BatchInput) -> BatchOutput:
    """P(SpO2 < 90) = 0.9 at every horizon once the window's last SpO2 is <= 93, else 0.05."""
    shape = (batch.beds, len(SIGNALS), len(HORIZONS_MIN), len(QUANTILES))
    high = (batch.values[:, -1, SPO2] <= 93.0) & (batch.mask[:, -1, SPO2] > 0)
    probability = np.where(high, 0.9, 0.05).astype(np.float32)
    return BatchOutput(
        quantiles=np.zeros(shape, np.float32),
        event_probability=np.broadcast_to(
            probability[:, None, None], (batch.beds, len(EVENTS), len(HORIZONS_MIN))
        ).copy(),
    )


def test_event_warnings_on_a_hand_made_desaturation() -> None:
    # Onset at 67. The model's score reaches 0.9 at minute 63 (SpO2 93): lead 4 min, raised inside the
    # warning window [52, 66], no false alarm. Its lowest threshold with <= 0.1 false alarms per
    # bed-hour is 0.06: at 0.02..0.05 the alarm is on from minute 0 and is raised at 0 and 30, both
    # outside the window (2 in 67 at-risk minutes). The baseline at margin 10 and 7 (SpO2 <= 100, <= 97)
    # is on from minute 0 too; at 6.5 (SpO2 <= 96.5) it is first on at 60: lead 7, no false alarm.
    forecasts = [forecast_grid(_warns_at_93, _desaturation_grid())]
    by_event = {w.event.key: w for w in event_warnings(forecasts, estimated={"spo2_below_90"})}
    spo2 = by_event["spo2_below_90"]
    assert spo2.estimated
    assert spo2.episodes == 1
    assert spo2.bed_hours == pytest.approx(67 / 60)
    assert spo2.too_few_bed_hours
    at_alarm = spo2.model_at_alarm_threshold
    assert at_alarm is not None
    assert (at_alarm.threshold, at_alarm.leads_min, at_alarm.false_alarms) == (0.7, (4,), 0)
    assert at_alarm.fraction_early == 1.0
    assert spo2.model is not None
    assert spo2.model.threshold == pytest.approx(0.06)
    assert (spo2.model.leads_min, spo2.model.false_alarms) == ((4,), 0)
    assert spo2.baseline is not None
    assert -spo2.baseline.threshold == pytest.approx(6.5)
    assert (spo2.baseline.leads_min, spo2.baseline.false_alarms) == ((7,), 0)
    # The daemon's threshold is a parameter: at 0.95 the model never alarms, a miss counts 0.
    strict = event_warnings(forecasts, estimated={"spo2_below_90"}, alarm_threshold=0.95)[SPO2_EVENT]
    assert strict.model_at_alarm_threshold is not None
    assert strict.model_at_alarm_threshold.leads_min == (0,)
    # An event the model does not estimate gets the baseline only; MAP is never measured here.
    map_ = by_event["map_below_65"]
    assert not map_.estimated
    assert map_.model is None
    assert map_.model_at_alarm_threshold is None
    assert (map_.episodes, map_.bed_hours) == (0, 0.0)
    none = event_warnings(forecasts, estimated=())
    assert all(w.model is None and w.model_at_alarm_threshold is None for w in none)
    assert none[SPO2_EVENT].baseline == spo2.baseline


def test_alarm_score_is_the_highest_horizon_and_nan_where_stale_or_last() -> None:
    grid = _desaturation_grid()
    mask = grid.mask.copy()
    mask[20:40, SPO2] = 0.0  # fresh through minute 23 (last valid 19, within 5 steps), stale 24..39
    grid = PatientGrid(grid.patient_id, grid.values, mask, grid.context, grid.context_mask)

    def rising(batch: BatchInput) -> BatchOutput:
        probability = np.tile(np.array([0.1, 0.2, 0.3, 0.4], np.float32), (batch.beds, len(EVENTS), 1))
        shape = (batch.beds, len(SIGNALS), len(HORIZONS_MIN), len(QUANTILES))
        return BatchOutput(quantiles=np.zeros(shape, np.float32), event_probability=probability)

    score = alarm_score(forecast_grid(rising, grid), SPO2_EVENT)
    assert score.shape == (grid.minutes,)
    assert np.isnan(score[24:40]).all()
    assert np.isnan(score[-1])
    assert score[23] == pytest.approx(0.4)
    assert score[40] == pytest.approx(0.4)


def test_eval_json_on_a_real_record(capsys: pytest.CaptureFixture[str]) -> None:
    from engines.catalog import find_models, select_model
    from engines.evaluate import eval_main

    assert eval_main([str(S25047), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"model", "results", "alarm_threshold", "events"}
    assert document["model"] == select_model(find_models()).ref
    assert document["results"]
    for result in document["results"]:
        assert set(result) == {
            "signal",
            "horizon_min",
            "n",
            "mae",
            "mae_persistence",
            "mae_smoother",
            "smoother_min",
            "coverage_10_90",
        }
        assert result["smoother_min"] in SMOOTHER_MINUTES
        assert result["mae_smoother"] >= 0.0
        assert 0.0 <= result["coverage_10_90"] <= 1.0
        assert result["signal"] in {"hr", "pr", "rr", "spo2", "map"}
        assert result["horizon_min"] in HORIZONS_MIN
        assert result["n"] > 0
    assert {r["signal"] for r in document["results"]} == set(EVAL_SIGNALS)


def test_eval_table_and_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    from engines.evaluate import eval_main

    assert eval_main([str(S25047), "--model", "persistence@2.0.0"]) == 0
    out = capsys.readouterr().out
    assert "persistence@2.0.0" in out
    table, events = out.split("\n\n")
    for line in table.splitlines()[2:]:
        assert line.split()[6] == "1.000"  # the ratio column: the baseline is persistence
    for event in EVENTS:  # persistence estimates no event: the baseline only
        assert f"{event.key}: " in events
        assert events.count("no event estimate") == len(EVENTS)
    assert "model    @" not in events


def test_eval_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from engines.evaluate import eval_main

    assert eval_main([str(tmp_path / "missing-record")]) == 66
    assert "missing-record" in capsys.readouterr().err
    assert eval_main([]) == 2
    assert eval_main([str(S25047), "--bogus"]) == 2
    assert eval_main([str(S25047), "--model", "no-such-model"]) == 69
    assert "no-such-model" in capsys.readouterr().err
    empty = tmp_path / "models"
    empty.mkdir()
    assert eval_main([str(S25047), "--models-dir", str(empty)]) == 69


def test_eval_event_warnings_on_p000020(capsys: pytest.CaptureFixture[str]) -> None:
    """End to end on the real record with SpO2 and arterial MAP: one object per event, as defined."""
    from engines.catalog import find_models, select_model
    from engines.evaluate import eval_main
    from engines.records import read_numerics_record

    card = select_model(find_models()).card
    assert eval_main([str(P000020), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["alarm_threshold"] == 0.7
    grid = read_numerics_record(P000020)
    assert [e["event"] for e in document["events"]] == [e.key for e in EVENTS]
    for entry, event in zip(document["events"], EVENTS, strict=True):
        column = SIGNAL_KEYS.index(event.signal)
        onsets = metrics.event_onsets(grid.values[:, column], grid.mask[:, column] > 0, below=event.below)
        assert entry["episodes"] == len(onsets) > 0
        assert entry["bed_hours"] > 10.0
        assert not entry["too_few_bed_hours"]
        baseline = entry["baseline_at_max_rate"]
        assert baseline["false_alarms_per_bed_hour"] <= 0.1
        assert baseline["threshold"] == -baseline["margin"]
        assert baseline["episodes"] == entry["episodes"]
        estimated = event.key in (card.events_estimated or ())
        assert entry["estimated"] is estimated
        if estimated:
            assert entry["note"] is None
            at_alarm, at_rate = entry["model_at_alarm_threshold"], entry["model_at_max_rate"]
            assert at_alarm["threshold"] == 0.7
            assert at_alarm["episodes"] == entry["episodes"]
            assert at_rate["false_alarms_per_bed_hour"] <= 0.1
            assert 0.0 <= at_rate["fraction_warned_early"] <= 1.0
        else:
            assert entry["note"] == "no event estimate"
            assert entry["model_at_alarm_threshold"] is None
            assert entry["model_at_max_rate"] is None
    assert eval_main([str(P000020), str(S25047), "--json"]) == 0
    pooled = json.loads(capsys.readouterr().out)["events"]
    assert eval_main([str(S25047), "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)["events"]
    for both, first, second in zip(pooled, document["events"], alone, strict=True):
        assert both["episodes"] == first["episodes"] + second["episodes"]
    assert eval_main([str(P000020)]) == 0
    text = capsys.readouterr().out
    for event in EVENTS:
        assert f"\n{event.key}: " in text
    assert "(alarm threshold)" in text
    assert "baseline @ spo2 <= " in text


def test_eval_runs_without_torch() -> None:
    """A field engineer's appliance has no torch: eval (events included) must not import it."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from engines.evaluate import eval_main\n"
        f"sys.exit(eval_main([{str(S25047)!r}, '--json']))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=root)
    assert done.returncode == 0, done.stderr
    assert [e["event"] for e in json.loads(done.stdout)["events"]] == [e.key for e in EVENTS]
