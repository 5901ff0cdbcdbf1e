"""What a forecast is made from: hr or a pulse rate standing in; only the events the model estimates.

Real onnxruntime and the shipped models (the default one and persistence): a bed with only a
ventilator's pulse rate gets an hr forecast marked `source: pr`; a bed with a monitor's hr and a
ventilator's pr uses hr. A model publishes only the event probabilities its card lists in
`events_estimated` (the default estimates spo2_below_90 only, persistence none), says why for the others,
and the predictive alarms never fire from them (a test model that does estimate the event makes the
same bed alarm, so the check can fail).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge.alarms.manager import AlarmManager, Now, TechnicalSettings
from edge.alarms.profile import PredictiveConfig, effective_limits
from edge.contract import encode_message
from edge.forecasting import forecast_body
from edge.model import AlarmKind, ForecastBody, ForecastMessage
from engines.catalog import (
    SHIPPED_MODELS_DIR,
    InstalledModel,
    ModelError,
    load_model,
    scan_models,
    write_manifest,
)
from engines.runtime import BedForecast, ForecastRuntime
from engines.spec import EVENTS, FRESH_WITHIN_STEPS
from engines.testing import build_test_model

NOW_S = 1_764_000_000.0 + 30.0
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def _feed(
    runtime: ForecastRuntime, bed: str, key: str, unit: str, values: list[float], *, end_s: float
) -> None:
    """One value a minute, the last at end_s."""
    for minutes_ago, value in enumerate(reversed(values)):
        runtime.observe(bed=bed, key=key, value=value, unit=unit, valid=True, at_s=end_s - 60.0 * minutes_ago)


async def _tick(
    runtime: ForecastRuntime, feed: list[tuple[str, str, str, list[float], float]]
) -> dict[str, BedForecast]:
    await runtime.start()
    try:
        for bed, key, unit, values, end_s in feed:
            _feed(runtime, bed, key, unit, values, end_s=end_s)
        return {forecast.bed: forecast for forecast in await runtime.tick(now_s=NOW_S)}
    finally:
        await runtime.close()


def _wire(forecast: BedForecast) -> ForecastMessage:
    """The forecast as a central station receives it (encoded, then read with the published model)."""
    payload = encode_message(
        forecast_body(forecast), appliance="icu-a", bed=forecast.bed, session=1, seq=1, ts=T0
    )
    return ForecastMessage.model_validate_json(payload)


VENTILATOR_PR = [92.0, 94.0, 95.0, 97.0, 99.0, 101.0, 104.0, 106.0]
MONITOR_HR = [80.0, 81.0, 80.0, 82.0, 83.0, 82.0, 84.0, 85.0]


@pytest.mark.parametrize("model_ref", [None, "persistence"], ids=["default", "persistence"])
async def test_a_pulse_rate_stands_in_for_hr_only_where_the_bed_has_no_fresh_hr(
    model_ref: str | None,
) -> None:
    beds = ["ventilator-only", "monitor-and-ventilator", "monitor-gone", "no-cardiac-rate"]
    runtime = ForecastRuntime(beds=beds, backend="onnxruntime", model_ref=model_ref)
    stale_end_s = NOW_S - 60.0 * (FRESH_WITHIN_STEPS + 1)
    forecasts = await _tick(
        runtime,
        [
            ("ventilator-only", "pr", "/min", VENTILATOR_PR, NOW_S),
            ("ventilator-only", "spo2", "%", [96.0] * 8, NOW_S),
            ("monitor-and-ventilator", "hr", "/min", MONITOR_HR, NOW_S),
            ("monitor-and-ventilator", "pr", "/min", VENTILATOR_PR, NOW_S),
            ("monitor-gone", "hr", "/min", MONITOR_HR, stale_end_s),
            ("monitor-gone", "pr", "/min", VENTILATOR_PR, NOW_S),
            ("no-cardiac-rate", "hr", "/min", MONITOR_HR, stale_end_s),
            ("no-cardiac-rate", "spo2", "%", [96.0] * 8, NOW_S),
        ],
    )
    ventilator = _wire(forecasts["ventilator-only"]).signals["hr"]
    assert ventilator.source == "pr"
    assert ventilator.last_value == VENTILATOR_PR[-1]
    assert ventilator.valid_minutes == len(VENTILATOR_PR)
    assert 80.0 <= ventilator.horizons[0].p50 <= 130.0, "forecast from the pulse rate near 106 /min"

    both = _wire(forecasts["monitor-and-ventilator"]).signals["hr"]
    assert both.source == "hr"
    assert both.last_value == MONITOR_HR[-1]
    assert both.horizons[0].p50 < 95.0, "the monitor's hr (85 /min), not the pulse rate (106 /min)"

    gone = _wire(forecasts["monitor-gone"]).signals["hr"]
    assert (gone.source, gone.last_value, gone.valid_minutes) == (
        "pr",
        VENTILATOR_PR[-1],
        len(VENTILATOR_PR),
    ), "hr stale: the whole window is the pulse rate's, the old hr is not mixed in"
    assert gone.last_age_s == pytest.approx(30.0)

    neither = _wire(forecasts["no-cardiac-rate"])
    assert "hr" not in neither.signals
    assert neither.unavailable["hr"] == (
        f"last valid hr is {FRESH_WITHIN_STEPS + 1} min old (needs one within {FRESH_WITHIN_STEPS} min)"
        f"; no pr within {FRESH_WITHIN_STEPS} min to stand in either"
    )
    assert neither.signals["spo2"].source == "spo2"


SHIPPED = scan_models(SHIPPED_MODELS_DIR)[0]


@pytest.mark.parametrize("model", SHIPPED, ids=[model.ref for model in SHIPPED])
async def test_a_shipped_model_publishes_only_the_events_its_card_estimates(model: InstalledModel) -> None:
    """Exactly the card's `events_estimated` (the shipped default: SpO2 only; persistence: none)."""
    runtime = ForecastRuntime(beds=["bed-07"], backend="onnxruntime", model_ref=model.ref)
    (forecast,) = (
        await _tick(
            runtime,
            [
                ("bed-07", "spo2", "%", [95.0, 93.0, 91.0, 89.0, 87.0, 85.0], NOW_S),
                ("bed-07", "map", "mm[Hg]", [70.0, 66.0, 63.0, 60.0], NOW_S),
            ],
        )
    ).values()
    message = _wire(forecast)
    assert {"spo2", "map"} <= set(message.signals), "the signals are forecast whatever the events"
    assert set(message.events) == model.events_estimated
    reason = f"model {model.ref} has no event estimate that beats the current-value baseline"
    for event in EVENTS:
        if event.key not in model.events_estimated:
            assert message.unavailable[event.key] == reason


async def test_a_card_without_events_estimated_estimates_none_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unstated = build_test_model(tmp_path, model_id="unstated", default=False, events_estimated=None)
    card = json.loads((unstated.onnx_path.parent / "card.json").read_text(encoding="utf-8"))
    assert card["events_estimated"] is None
    runtime = ForecastRuntime(
        beds=["bed-07"], backend="onnxruntime", model_ref="unstated", extra_models_dir=tmp_path
    )
    with caplog.at_level(logging.WARNING, logger="engines.runtime"):
        await runtime.start()
        try:
            _feed(runtime, "bed-07", "spo2", "%", [95.0, 93.0, 91.0, 89.0, 87.0, 85.0], end_s=NOW_S)
            (forecast,) = await runtime.tick(now_s=NOW_S)
            assert await runtime.reload(force=True) is True
            (again,) = await runtime.tick(now_s=NOW_S)
        finally:
            await runtime.close()
    assert forecast.events == again.events == {}
    assert forecast.unavailable["spo2_below_90"] == (
        "model unstated@1.0.0 has no event estimate that beats the current-value baseline"
    )
    said = [r.getMessage() for r in caplog.records if "events_estimated" in r.getMessage()]
    assert said == [
        "unstated@1.0.0: its card lists no events_estimated: read as estimating no event, so no event "
        "probability is published and no predictive alarm can fire"
    ], "said once, not at every load"


def test_the_shipped_cards_are_checked_and_an_unknown_event_is_refused(tmp_path: Path) -> None:
    models, problems = scan_models(SHIPPED_MODELS_DIR)
    assert problems == []
    assert {model.card.id for model in models} >= {"nlinear-q", "persistence"}
    odd = build_test_model(tmp_path, model_id="odd", default=False)
    card_path = odd.onnx_path.parent / "card.json"
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["events_estimated"] = ["spo2_below_90", "hr_above_150"]
    card_path.write_text(json.dumps(card), encoding="utf-8")
    write_manifest(card_path.parent)
    with pytest.raises(ModelError, match=r"hr_above_150"):
        load_model(card_path.parent)


def _alarms() -> AlarmManager:
    settings = TechnicalSettings(
        device_lost_delay_s=2.0,
        connect_grace_s=15.0,
        no_data_s=10.0,
        invalid_value_delay_s=10.0,
        predictive=PredictiveConfig(),
    )
    return AlarmManager(
        beds=["bed-07"],
        limits={"bed-07": effective_limits(ward={}, bed={})},
        settings=settings,
        restored={},
        now=Now(mono_s=1000.0, wall=T0),
    )


async def test_no_predictive_alarm_from_a_model_without_the_event_estimate(tmp_path: Path) -> None:
    """The same desaturating bed: a model that estimates the event alarms, the shipped baseline does not."""
    desaturating = [("bed-07", "spo2", "%", [96.0, 94.0, 92.0, 90.0, 88.0, 86.0, 84.0], NOW_S)]
    build_test_model(tmp_path, model_id="estimates-events", default=False)
    estimating = ForecastRuntime(
        beds=["bed-07"], backend="onnxruntime", model_ref="estimates-events", extra_models_dir=tmp_path
    )
    shipped = ForecastRuntime(beds=["bed-07"], backend="onnxruntime", model_ref="persistence")
    with_estimate: ForecastBody = forecast_body((await _tick(estimating, desaturating))["bed-07"])
    without: ForecastBody = forecast_body((await _tick(shipped, desaturating))["bed-07"])
    assert set(with_estimate.events) == {"spo2_below_90"}
    assert without.events == {}

    alarms = _alarms()
    for second in range(5):
        now = Now(mono_s=1000.0 + second, wall=T0 + timedelta(seconds=second))
        alarms.forecast(bed="bed-07", forecast=without, now=now)
        alarms.tick(now=now)
    assert alarms.take_transitions() == []
    assert alarms.active("bed-07") == []

    now = Now(mono_s=1010.0, wall=T0 + timedelta(seconds=10))
    alarms.forecast(bed="bed-07", forecast=with_estimate, now=now)
    alarms.tick(now=now)
    raised = [t.alarm for t in alarms.take_transitions()]
    assert [(a.kind, a.condition) for a in raised] == [(AlarmKind.PREDICTIVE, "predicted_spo2_below_90")]

    now = Now(mono_s=1011.0, wall=T0 + timedelta(seconds=11))
    alarms.forecast(bed="bed-07", forecast=without, now=now)
    alarms.tick(now=now)
    assert alarms.active("bed-07") == [], "a model without the estimate ends the predictive alarm"
