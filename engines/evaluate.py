"""Held-out evaluation of a forecasting model against persistence, and `icu-edge engines eval RECORD`.

The model forecasts at every minute t of a patient grid from the window ending at t (the same windows
the runtime builds, via `windows_from_grid`). A signal is scored at horizon h only where the target
minute t+h has a valid value and the signal was fresh at t (valid within spec.FRESH_WITHIN_STEPS steps):
the rule the runtime uses before it publishes a forecast. Persistence is the last valid value in the
window; the fixed smoothers are the means of the last k valid values in the window (SMOOTHER_MINUTES),
and each row names the best of them on the evaluated data (chosen after the fact: a bar the model has
to clear, not a forecaster that could have been run).
Event probabilities are scored in a forward design (engines.metrics): every labeled minute
where the event's signal is fresh, next to the "current value" baseline (minus the last valid value)
(`event_rows`, per horizon: the training cards' tables). `engines eval` reports event warnings the way
the daemon raises them instead (`event_warnings`, definitions in engines.lead_time): lead time and
false alarms per bed-hour at the daemon's alarm threshold and at <= 0.1 false alarms per bed-hour,
next to the current-value baseline at its margin for the same rate.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from engines import lead_time, metrics
from engines.backend import BatchInput, BatchOutput
from engines.catalog import EventMetricRow, MetricRow
from engines.features import windows_from_grid
from engines.records import PatientGrid
from engines.spec import (
    EVENT_ALARM_THRESHOLD,
    EVENTS,
    FRESH_WITHIN_STEPS,
    HORIZONS_MIN,
    QUANTILES,
    SIGNAL_KEYS,
    STEP_S,
    EventDefinition,
)

Predict = Callable[[BatchInput], BatchOutput]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

ALARM_SENSITIVITY = 0.8
"""Without given thresholds, an event alarm fires at the probability reaching 80 % sensitivity."""
SMOOTHER_MINUTES = (3, 5, 10, 15, 30)
"""The fixed smoothers every model is compared with: the mean of the last k valid minutes."""
EVAL_SIGNALS = ("hr", "rr", "spo2", "map")
"""Signals `engines eval` reports: our keys present in MIMIC numerics (`pr` is not forecast; see help)."""

EX_OK = 0
EX_USAGE = 2
EX_NOINPUT = 66
EX_UNAVAILABLE = 69


@dataclass(frozen=True, slots=True)
class GridForecast:
    """A model's forecasts over one grid: one row per end step t (0 .. N-2)."""

    grid: PatientGrid
    end_steps: npt.NDArray[np.int64]
    quantiles: F32
    """[M, signals, horizons, quantiles]"""
    event_probability: F32
    """[M, events, horizons]"""
    last_value: F32
    """[M, signals]: persistence, the last valid value in the window (0 where none)."""
    fresh: npt.NDArray[np.bool_]
    """[M, signals]: valid within FRESH_WITHIN_STEPS steps of t."""
    smoothed: F32
    """[M, len(SMOOTHER_MINUTES), signals]: the fixed smoothers' forecasts (0 where no valid value)."""


@dataclass(frozen=True, slots=True)
class EvaluationResult:
    """Accuracy rows per signal and horizon, and event rows per event and horizon."""

    metrics: list[MetricRow]
    event_metrics: list[EventMetricRow]


def last_valid(values: F32, mask: F32) -> F32:
    """Return the last valid value per window and signal of [B, T, S] inputs (0 where none)."""
    present = mask > 0
    t = values.shape[1]
    index = np.where(present, np.arange(t)[None, :, None], -1).max(axis=1)
    taken = np.take_along_axis(values, np.clip(index, 0, None)[:, None, :], axis=1)[:, 0, :]
    return np.where(index >= 0, taken, 0.0).astype(np.float32)


def smoothed_means(values: F32, mask: F32, minutes: Sequence[int] = SMOOTHER_MINUTES) -> F32:
    """Return [B, len(minutes), S]: per window and signal the mean of its last k valid values (0 if none).

    "Last k valid minutes": a gap does not shorten the average, it reaches further back in the window
    (fewer than k values when the window holds fewer).
    """
    present = mask > 0
    valid_from_here = np.cumsum(present[:, ::-1, :], axis=1)[:, ::-1, :]
    means = []
    for k in minutes:
        use = present & (valid_from_here <= k)
        count = use.sum(axis=1)
        total = np.where(use, values, 0.0).astype(np.float64).sum(axis=1)
        means.append(np.where(count > 0, total / np.maximum(count, 1), 0.0))
    return np.stack(means, axis=1).astype(np.float32)


def forecast_grid(predict: Predict, grid: PatientGrid, *, batch_size: int = 64) -> GridForecast:
    """Run the model at every minute t (window ending at t) that has at least one minute after it."""
    ends = np.arange(max(grid.minutes - 1, 0), dtype=np.int64)
    quantiles: list[F32] = []
    events: list[F32] = []
    lasts: list[F32] = []
    smoothed: list[F32] = []
    fresh: list[npt.NDArray[np.bool_]] = []
    for start in range(0, ends.size, batch_size):
        chunk = ends[start : start + batch_size]
        values, mask, context, context_mask = windows_from_grid(
            values=grid.values,
            mask=grid.mask,
            context=grid.context,
            context_mask=grid.context_mask,
            end_steps=chunk,
        )
        output = predict(BatchInput(values=values, mask=mask, context=context, context_mask=context_mask))
        quantiles.append(np.asarray(output.quantiles, dtype=np.float32))
        events.append(np.asarray(output.event_probability, dtype=np.float32))
        lasts.append(last_valid(values, mask))
        smoothed.append(smoothed_means(values, mask))
        fresh.append(mask[:, -FRESH_WITHIN_STEPS:, :].max(axis=1) > 0)
    signals, horizons, n_q, n_e = len(SIGNAL_KEYS), len(HORIZONS_MIN), len(QUANTILES), len(EVENTS)
    return GridForecast(
        grid=grid,
        end_steps=ends,
        quantiles=np.concatenate(quantiles)
        if quantiles
        else np.zeros((0, signals, horizons, n_q), np.float32),
        event_probability=np.concatenate(events) if events else np.zeros((0, n_e, horizons), np.float32),
        last_value=np.concatenate(lasts) if lasts else np.zeros((0, signals), np.float32),
        fresh=np.concatenate(fresh) if fresh else np.zeros((0, signals), bool),
        smoothed=np.concatenate(smoothed)
        if smoothed
        else np.zeros((0, len(SMOOTHER_MINUTES), signals), np.float32),
    )


@dataclass(frozen=True, slots=True)
class _Scored:
    median: F64
    lower: F64
    upper: F64
    persistence: F64
    target: F64
    smoothed: F64
    """[n, len(SMOOTHER_MINUTES)]"""


def _scored(forecasts: Sequence[GridForecast], signal: int, h_index: int) -> _Scored:
    horizon = HORIZONS_MIN[h_index] * 60 // STEP_S
    parts: list[tuple[F64, F64, F64, F64, F64, F64]] = []
    for fc in forecasts:
        target_steps = fc.end_steps + horizon
        inside = target_steps < fc.grid.minutes
        safe = np.where(inside, target_steps, 0)
        use = inside & fc.fresh[:, signal] & (fc.grid.mask[safe, signal] > 0)
        q = fc.quantiles[use, signal, h_index, :].astype(np.float64)
        parts.append(
            (
                q[:, 1],
                q[:, 0],
                q[:, 2],
                fc.last_value[use, signal].astype(np.float64),
                fc.grid.values[safe[use], signal].astype(np.float64),
                fc.smoothed[use, :, signal].astype(np.float64),
            )
        )
    if not parts:
        empty = np.zeros(0)
        return _Scored(empty, empty, empty, empty, empty, np.zeros((0, len(SMOOTHER_MINUTES))))
    return _Scored(*[np.concatenate([p[i] for p in parts]) for i in range(6)])


def best_smoother(smoothed: F64, target: F64) -> tuple[float, int]:
    """Return (MAE, k) of the fixed smoother with the lowest MAE (the shorter k on a tie)."""
    errors = [metrics.mae(smoothed[:, i], target) for i in range(len(SMOOTHER_MINUTES))]
    best = int(np.argmin(errors))
    return errors[best], SMOOTHER_MINUTES[best]


def _ratio(mae: float, mae_persistence: float) -> float:
    return mae / mae_persistence if mae_persistence > 0 else (1.0 if mae == 0 else math.inf)


def accuracy_rows(
    forecasts: Sequence[GridForecast], *, signals: Sequence[str] = SIGNAL_KEYS
) -> list[MetricRow]:
    """Return MAE, MAE of persistence and of the best fixed smoother, 10-90 coverage and mean pinball."""
    rows: list[MetricRow] = []
    for key in signals:
        signal = SIGNAL_KEYS.index(key)
        for h_index, horizon in enumerate(HORIZONS_MIN):
            s = _scored(forecasts, signal, h_index)
            if not s.target.size:
                continue
            mae = metrics.mae(s.median, s.target)
            mae_p = metrics.mae(s.persistence, s.target)
            ratio = _ratio(mae, mae_p)
            if not math.isfinite(ratio):
                continue
            mae_s, smoother_min = best_smoother(s.smoothed, s.target)
            pinball = float(
                np.mean(
                    [
                        metrics.pinball(pred, s.target, quantile=q)
                        for pred, q in zip((s.lower, s.median, s.upper), QUANTILES, strict=True)
                    ]
                )
            )
            rows.append(
                MetricRow(
                    signal=key,
                    horizon_min=horizon,
                    n=int(s.target.size),
                    mae=round(mae, 4),
                    mae_persistence=round(mae_p, 4),
                    mae_ratio=round(ratio, 4),
                    coverage_10_90=round(metrics.coverage(s.lower, s.upper, s.target), 4),
                    pinball=round(pinball, 4),
                    mae_smoother=round(mae_s, 4),
                    smoother_min=smoother_min,
                )
            )
    return rows


@dataclass(frozen=True, slots=True)
class EventScores:
    """Pooled forward-design samples of one event at one horizon."""

    probability: F64
    current_value: F64
    label: npt.NDArray[np.bool_]


def _event_labels(
    fc: GridForecast, e_index: int, h_index: int
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Return (event happens within the horizon, minute can be labeled) for every minute of one grid."""
    event = EVENTS[e_index]
    signal = SIGNAL_KEYS.index(event.signal)
    return metrics.event_labels(
        fc.grid.values[:, signal],
        fc.grid.mask[:, signal],
        below=event.below,
        end_steps=fc.end_steps,
        horizon_steps=HORIZONS_MIN[h_index] * 60 // STEP_S,
    )


def event_scores(forecasts: Sequence[GridForecast], e_index: int, h_index: int) -> EventScores:
    """Return every labeled, fresh minute's probability, current-value score and label, pooled."""
    signal = SIGNAL_KEYS.index(EVENTS[e_index].signal)
    probs: list[F64] = []
    current: list[F64] = []
    labels: list[npt.NDArray[np.bool_]] = []
    for fc in forecasts:
        label, labeled = _event_labels(fc, e_index, h_index)
        use = labeled & fc.fresh[:, signal]
        probs.append(fc.event_probability[use, e_index, h_index].astype(np.float64))
        current.append(-fc.last_value[use, signal].astype(np.float64))
        labels.append(label[use])
    return EventScores(
        probability=np.concatenate(probs) if probs else np.zeros(0),
        current_value=np.concatenate(current) if current else np.zeros(0),
        label=np.concatenate(labels) if labels else np.zeros(0, bool),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def event_rows(
    forecasts: Sequence[GridForecast], *, thresholds: dict[tuple[str, int], float] | None = None
) -> list[EventMetricRow]:
    """Return AUROC/AUPRC (model and current value), lead time and false alarms per event/horizon.

    The alarm threshold per (event, horizon) comes from `thresholds` (chosen on training data) or, when
    absent, is the probability reaching ALARM_SENSITIVITY on the evaluated data itself.
    """
    rows: list[EventMetricRow] = []
    for e_index, event in enumerate(EVENTS):
        signal = SIGNAL_KEYS.index(event.signal)
        for h_index, horizon in enumerate(HORIZONS_MIN):
            pooled = event_scores(forecasts, e_index, h_index)
            if not pooled.label.size:
                continue
            threshold = (thresholds or {}).get((event.key, horizon))
            if threshold is None:
                threshold = metrics.threshold_at_sensitivity(
                    pooled.probability, pooled.label, sensitivity=ALARM_SENSITIVITY
                )
            leads: list[int] = []
            episodes = 0
            bed_minutes = 0
            steps = horizon * 60 // STEP_S
            for fc in forecasts:
                label, labeled = _event_labels(fc, e_index, h_index)
                fresh = fc.fresh[:, signal]
                alarm = (
                    fresh & (fc.event_probability[:, e_index, h_index] >= threshold)
                    if threshold is not None
                    else np.zeros_like(fresh)
                )
                onsets = metrics.event_onsets(
                    fc.grid.values[:, signal], fc.grid.mask[:, signal], below=event.below
                )
                leads += metrics.lead_times(alarm, onsets, horizon_steps=steps)
                episodes += metrics.false_alarm_episodes(alarm, label, labeled & fresh)
                bed_minutes += int(np.sum(labeled & fresh))
            rows.append(
                EventMetricRow(
                    event=event.key,
                    horizon_min=horizon,
                    n=int(pooled.label.size),
                    positives=int(pooled.label.sum()),
                    auroc=_round(metrics.auroc(pooled.probability, pooled.label)),
                    auprc=_round(metrics.auprc(pooled.probability, pooled.label)),
                    auroc_current_value=_round(metrics.auroc(pooled.current_value, pooled.label)),
                    auprc_current_value=_round(metrics.auprc(pooled.current_value, pooled.label)),
                    lead_time_min=_round(float(np.mean(leads))) if leads else None,
                    false_alarms_per_bed_hour=_round(episodes / (bed_minutes / 60.0))
                    if bed_minutes
                    else None,
                    threshold=_round(threshold),
                )
            )
    return rows


def alarm_score(fc: GridForecast, e_index: int) -> F64:
    """Return the model's alarm score per minute of the grid, as the daemon reads it.

    The highest probability over the horizons (all <= 15 min, the daemon's default `horizon_max_min`),
    NaN where the event's signal is not fresh (the runtime publishes nothing then) and at the last
    minute (no minute after it to forecast from there).
    """
    signal = SIGNAL_KEYS.index(EVENTS[e_index].signal)
    score = np.full(fc.grid.minutes, np.nan)
    highest = fc.event_probability[:, e_index, :].max(axis=1, initial=0.0).astype(np.float64)
    score[fc.end_steps] = np.where(fc.fresh[:, signal], highest, np.nan)
    return score


@dataclass(frozen=True, slots=True)
class EventWarning:
    """One event's warnings over the evaluated records (definitions in engines.lead_time)."""

    event: EventDefinition
    estimated: bool
    """The model publishes this event (its card's `events_estimated`); False: no model figures."""
    episodes: int
    model_at_alarm_threshold: lead_time.LeadTimes | None
    model: lead_time.LeadTimes | None
    """At the lowest probability threshold with <= 0.1 false alarms per bed-hour on these records."""
    baseline: lead_time.LeadTimes | None
    """At the largest margin (the most sensitive) with <= 0.1 false alarms per bed-hour on these records."""
    bed_hours: float
    """Minutes at risk (not in an event) with the signal fresh, / 60."""

    @property
    def too_few_bed_hours(self) -> bool:
        """Return whether one false alarm already exceeds the rate: "<= 0.1 per bed-hour" then means none."""
        return self.bed_hours * lead_time.MAX_FALSE_ALARMS_PER_BED_HOUR < 1.0


def event_warnings(
    forecasts: Sequence[GridForecast],
    *,
    estimated: Collection[str],
    alarm_threshold: float = EVENT_ALARM_THRESHOLD,
) -> list[EventWarning]:
    """Return per event the model's and the current-value baseline's lead times and false alarms.

    Both operating points are chosen on the evaluated records themselves (pooled), after the fact:
    they say what each method could reach on this unit's data, not a setting chosen beforehand. An
    event the model does not estimate gets the baseline only.
    """
    warnings: list[EventWarning] = []
    for e_index, event in enumerate(EVENTS):
        signal = SIGNAL_KEYS.index(event.signal)
        values = [fc.grid.values[:, signal].astype(np.float64) for fc in forecasts]
        valid = [fc.grid.mask[:, signal] > 0 for fc in forecasts]
        largest, step = lead_time.BASELINE_MARGINS[event.signal]
        baseline_beds = [
            lead_time.BedSeries(lead_time.baseline_score(v, m, below=event.below), v, m)
            for v, m in zip(values, valid, strict=True)
        ]
        baseline = lead_time.operating_point(
            baseline_beds,
            below=event.below,
            candidates=lead_time.margin_candidates(largest=largest, step=step),
        )
        model: lead_time.LeadTimes | None = None
        at_alarm: lead_time.LeadTimes | None = None
        if event.key in estimated:
            model_beds = [
                lead_time.BedSeries(alarm_score(fc, e_index), v, m)
                for fc, v, m in zip(forecasts, values, valid, strict=True)
            ]
            model = lead_time.operating_point(
                model_beds, below=event.below, candidates=lead_time.PROBABILITY_CANDIDATES
            )
            at_alarm = lead_time.lead_times(model_beds, below=event.below, threshold=alarm_threshold)
        warnings.append(
            EventWarning(
                event=event,
                estimated=event.key in estimated,
                episodes=sum(
                    len(metrics.event_onsets(v, m, below=event.below))
                    for v, m in zip(values, valid, strict=True)
                ),
                model_at_alarm_threshold=at_alarm,
                model=model,
                baseline=baseline,
                bed_hours=sum(
                    int(np.sum(np.isfinite(bed.score) & ~lead_time.in_event(v, m, below=event.below)))
                    for bed, v, m in zip(baseline_beds, values, valid, strict=True)
                )
                / 60.0,
            )
        )
    return warnings


def evaluate(
    predict: Predict,
    grids: list[PatientGrid],
    *,
    batch_size: int = 64,
    signals: Sequence[str] = SIGNAL_KEYS,
    thresholds: dict[tuple[str, int], float] | None = None,
) -> EvaluationResult:
    """Forecast at every minute of every grid and score the model against persistence."""
    forecasts = [forecast_grid(predict, grid, batch_size=batch_size) for grid in grids]
    return EvaluationResult(
        metrics=accuracy_rows(forecasts, signals=signals),
        event_metrics=event_rows(forecasts, thresholds=thresholds),
    )


_EVAL_HELP = f"""\
Run a shipped model over PhysioNet WFDB minute-numerics records (MIMIC-III waveform database matched
subset: HR, PULSE, RESP, SpO2, ABPMean or NBPMean...) and print its MAE per signal and horizon next to
persistence's, then its event warnings next to the current-value baseline's.
The model forecasts at every minute from the 30 min window before it; a signal is scored
where the target minute is valid and the signal was fresh (valid within 5 min) at the forecast time.
Signals: hr, rr, spo2, map (ABPMean; NBPMean only where the record has no arterial mean). `pr` (PULSE) is
read but not reported: no model forecasts pulse rate, and scoring the hr forecast against it would
measure something else.
Event warnings, per event the model publishes (its card's events_estimated; "no event estimate" for
the others, which get the baseline only), over all given records pooled: episodes (first minute below
the event threshold after >= 10 min not below), lead time (onset minus the first alarming minute in
the 15 min before it; a miss counts 0), share warned >= {lead_time.EARLY_MIN} min early, and false
alarms per bed-hour (an alarm is raised at most once per {lead_time.REFRACTORY_MIN} min; false when
raised outside every warning window and not in an event), for the model at the alarm threshold and
at the lowest threshold giving <= {lead_time.MAX_FALSE_ALARMS_PER_BED_HOUR:g} false alarms per
bed-hour, and for the baseline "current value <= event threshold + margin" at the largest margin
giving that rate. Both rate-matched thresholds are chosen on the given records themselves; with fewer
than 10 bed-hours one false alarm exceeds the rate (a note says so).
Exit status: 0 ok, 2 usage, 66 record unreadable, 69 no model (or no wfdb).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icu-edge engines eval",
        description=_EVAL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "record",
        type=Path,
        nargs="+",
        help="WFDB record path without extension (…n.hea next to it); several are pooled",
    )
    parser.add_argument(
        "--model", metavar="ID[@VERSION]", help="model to evaluate (default: the default model)"
    )
    parser.add_argument(
        "--alarm-threshold",
        type=float,
        default=EVENT_ALARM_THRESHOLD,
        metavar="P",
        help=f"the daemon's predictive alarm threshold (default {EVENT_ALARM_THRESHOLD:g})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    parser.add_argument("--models-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=64, help=argparse.SUPPRESS)
    return parser


def _lead_json(figures: lead_time.LeadTimes | None) -> dict[str, float | int | None] | None:
    if figures is None:
        return None
    return {
        "threshold": round(figures.threshold, 4),
        "episodes": figures.episodes,
        "median_lead_min": _round(figures.median_lead_min),
        "mean_lead_min": _round(figures.mean_lead_min),
        "fraction_warned_early": _round(figures.fraction_early),
        "false_alarms": figures.false_alarms,
        "bed_hours": round(figures.bed_hours, 3),
        "false_alarms_per_bed_hour": round(figures.false_alarms_per_bed_hour, 4),
    }


def event_warning_json(warning: EventWarning) -> dict[str, object]:
    """Return one event's warnings as a JSON object (the baseline's threshold is minus its margin)."""
    baseline = _lead_json(warning.baseline)
    if baseline is not None and warning.baseline is not None:
        baseline["margin"] = round(-warning.baseline.threshold, 4)
    return {
        "event": warning.event.key,
        "signal": warning.event.signal,
        "below": warning.event.below,
        "estimated": warning.estimated,
        "note": None if warning.estimated else "no event estimate",
        "episodes": warning.episodes,
        "bed_hours": round(warning.bed_hours, 3),
        "too_few_bed_hours": warning.too_few_bed_hours,
        "early_min": lead_time.EARLY_MIN,
        "max_false_alarms_per_bed_hour": lead_time.MAX_FALSE_ALARMS_PER_BED_HOUR,
        "model_at_alarm_threshold": _lead_json(warning.model_at_alarm_threshold),
        "model_at_max_rate": _lead_json(warning.model),
        "baseline_at_max_rate": baseline,
    }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _lead_text(figures: lead_time.LeadTimes) -> str:
    rate = (
        f"{_count(figures.false_alarms, 'false alarm')} in {figures.bed_hours:.1f} bed-h "
        f"({figures.false_alarms_per_bed_hour:.3f}/bed-h)"
    )
    if figures.mean_lead_min is None:
        return f"no episode; {rate}"
    return (
        f"mean lead {figures.mean_lead_min:.1f} min, median {figures.median_lead_min:g}, "
        f"{figures.fraction_early:.0%} warned >= {lead_time.EARLY_MIN} min; {rate}"
    )


def event_warning_lines(warning: EventWarning, *, alarm_threshold: float) -> list[str]:
    """Return the text lines of one event's warnings."""
    event, rate = warning.event, f"<= {lead_time.MAX_FALSE_ALARMS_PER_BED_HOUR:g} FA/bed-h"
    lines = [f"{event.key}: {_count(warning.episodes, 'episode')}, {warning.bed_hours:.1f} bed-h at risk"]
    if warning.too_few_bed_hours:
        lines.append(
            f"  note: under {1 / lead_time.MAX_FALSE_ALARMS_PER_BED_HOUR:g} bed-h, one false alarm exceeds "
            f"{rate}: the rate-matched thresholds below mean no false alarm at all (too few to judge)"
        )
    if not warning.estimated:
        lines[0] += ": no event estimate (the model does not publish it)"
    else:
        assert warning.model_at_alarm_threshold is not None  # estimated events always have it
        lines.append(
            f"  model    @ p >= {alarm_threshold:.2f} (alarm threshold): "
            + _lead_text(warning.model_at_alarm_threshold)
        )
        lines.append(
            f"  model    @ p >= {warning.model.threshold:.2f} (lowest with {rate}): "
            + _lead_text(warning.model)
            if warning.model is not None
            else f"  model: no threshold gives {rate}"
        )
    if warning.baseline is None:
        lines.append(f"  baseline: no margin gives {rate}")
    else:
        margin = -warning.baseline.threshold
        lines.append(
            f"  baseline @ {event.signal} <= {event.below + margin:g} (margin {margin:g}, largest with "
            f"{rate}): " + _lead_text(warning.baseline)
        )
    return lines


def eval_main(argv: list[str]) -> int:
    """Run `icu-edge engines eval RECORD... [--model ID[@VERSION]] [--json]`; return the exit status."""
    from engines.catalog import SHIPPED_MODELS_DIR, ModelError, find_models, select_model
    from engines.records import RecordError, read_numerics_record

    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return EX_OK if exc.code in (0, None) else EX_USAGE
    try:
        grids = [read_numerics_record(record) for record in args.record]
    except RecordError as exc:
        print(f"icu-edge engines eval: {exc}", file=sys.stderr)
        return EX_NOINPUT
    except ImportError as exc:
        print(
            f"icu-edge engines eval: the wfdb package is needed (pip install 'icu-edge[eval]'): {exc}",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    try:
        model = select_model(find_models(args.models_dir or SHIPPED_MODELS_DIR), ref=args.model)
    except ModelError as exc:
        print(f"icu-edge engines eval: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    from engines.backends import open_backend

    backend, reason = open_backend(model=model, backend="onnxruntime")
    try:
        forecasts = [forecast_grid(backend.infer, grid, batch_size=args.batch_size) for grid in grids]
    finally:
        backend.close()
    rows = accuracy_rows(forecasts, signals=EVAL_SIGNALS)
    warnings = event_warnings(
        forecasts, estimated=model.card.events_estimated or (), alarm_threshold=args.alarm_threshold
    )
    if args.json:
        document = {
            "model": model.ref,
            "results": [
                {
                    "signal": row.signal,
                    "horizon_min": row.horizon_min,
                    "n": row.n,
                    "mae": row.mae,
                    "mae_persistence": row.mae_persistence,
                    "mae_smoother": row.mae_smoother,
                    "smoother_min": row.smoother_min,
                    "coverage_10_90": row.coverage_10_90,
                }
                for row in rows
            ],
            "alarm_threshold": args.alarm_threshold,
            "events": [event_warning_json(w) for w in warnings],
        }
        print(json.dumps(document, indent=2))
        return EX_OK
    records = ", ".join(f"{g.patient_id} ({g.minutes} min)" for g in grids)
    print(f"model {model.ref} on {backend.name} ({reason}); records {records}")
    print(
        f"{'signal':<7}{'horizon':>8}{'n':>7}{'MAE':>10}{'MAE pers.':>11}{'ratio':>8}"
        f"{'MAE smoother':>14}{'k':>4}{'cov 10-90':>11}"
    )
    for row in rows:
        print(
            f"{row.signal:<7}{row.horizon_min:>6} m{row.n:>7}{row.mae:>10.3f}"
            f"{row.mae_persistence:>11.3f}{row.mae_ratio:>8.3f}"
            f"{row.mae_smoother or 0.0:>14.3f}{row.smoother_min or 0:>4}{row.coverage_10_90 or 0.0:>11.3f}"
        )
    if not rows:
        print("no scorable minutes (no signal with valid values before and after a forecast time)")
    print()
    print(
        "event warnings (lead time: onset minus the first alarm in the 15 min before it, a miss counts 0; "
        "rate-matched thresholds chosen on these records)"
    )
    for warning in warnings:
        for line in event_warning_lines(warning, alarm_threshold=args.alarm_threshold):
            print(line)
    return EX_OK
