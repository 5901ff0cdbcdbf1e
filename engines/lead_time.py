"""Lead time of an event warning at a fixed false-alarm rate, for a model and the "current value" baseline.

numpy only. A warning is judged the way a central station lives with it: per bed, per minute, with
alarms that are raised and end, not per scored sample. Definitions (one bed, minutes t = 0 .. N-1):

- **Score**: `score[t]` is what the warning source says at minute t (a model's probability, or for the
  baseline `below - last valid value`); NaN where it says nothing (the signal is not fresh: no valid
  value within the last `FRESH_WITHIN_STEPS` minutes, the runtime's rule). The alarm is *on* at t when
  `score[t] >= threshold`.
- **Low minute**: a minute with a valid value below the event threshold (`value < below`).
- **Episode**: starts at an onset k, a low minute after >= `ONSET_QUIET_STEPS` (10) minutes with no low
  minute and at least one valid value (`engines.metrics.event_onsets`: a record that starts low has
  no onset there).
- **In event**: minute t is in event when a low minute lies in [t - ONSET_QUIET_STEPS, t]. In-event
  minutes are not at risk: they count for no bed-hour, and an alarm raised in them is neither true nor
  false (the event is already there; the monitor's own limit alarm is on).
- **Alarm (refractory rule)**: an alarm is raised at minute t when the alarm is on at t and no alarm
  was raised in the `REFRACTORY_MIN` (30) minutes before t. So a flickering alarm counts once per
  30 min, and an alarm that stays on is raised again every 30 min (a standing alarm is not free).
- **Warning window** of an episode with onset k: minutes [k - WARNING_WINDOW_MIN, k - 1] (15 min, the
  longest forecast horizon).
- **Lead time** of an episode: k minus the first minute of its warning window with the alarm on; 0 when
  the alarm is never on in the window (missed, counted as 0, not dropped). At most WARNING_WINDOW_MIN.
- **False alarm**: an alarm raised in an at-risk minute outside every episode's warning window. One
  raised inside a warning window is a true warning; one raised in event is neither.
- **Bed-hours**: at-risk minutes with a score (not NaN), / 60. False-alarm rate = false alarms /
  bed-hours.
- **Operating point**: the lowest threshold among the candidates whose false-alarm rate over all beds
  is <= `MAX_FALSE_ALARMS_PER_BED_HOUR` (0.1); the lowest, so the most sensitive allowed. The baseline's
  candidates are margins: alarm when the last valid value is <= below + margin.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engines.metrics import ONSET_QUIET_STEPS, event_onsets
from engines.spec import FRESH_WITHIN_STEPS

F64 = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

MAX_FALSE_ALARMS_PER_BED_HOUR = 0.1
WARNING_WINDOW_MIN = 15
"""An alarm within 15 min (the longest horizon) before an onset warns of it."""
REFRACTORY_MIN = 30
"""No alarm is raised within 30 min of the previous one."""
EARLY_MIN = 2
"""An episode is warned early when its lead time is at least 2 min."""
PROBABILITY_CANDIDATES: F64 = np.round(np.arange(0.02, 0.995, 0.01), 2)
"""Model thresholds tried: 0.02 .. 0.99 in steps of 0.01."""
BASELINE_MARGINS = {"spo2": (10.0, 0.5), "map": (20.0, 1.0)}
"""The baseline's candidate margins per signal (largest, step) in physical units: 0 .. largest."""


@dataclass(frozen=True, slots=True)
class BedSeries:
    """One bed's per-minute warning score and the signal it warns about."""

    score: F64
    """[N]: NaN where the source gives no estimate."""
    value: F64
    """[N]: the signal in physical units (anything where not valid)."""
    valid: BoolArray
    """[N]"""

    def __post_init__(self) -> None:
        if not self.score.shape == self.value.shape == self.valid.shape or self.score.ndim != 1:
            raise ValueError(
                f"score, value and valid must be 1-D of one length: "
                f"{self.score.shape}, {self.value.shape}, {self.valid.shape}"
            )


@dataclass(frozen=True, slots=True)
class LeadTimes:
    """Lead times and false alarms of one warning source at one threshold, over a set of beds."""

    threshold: float
    episodes: int
    leads_min: tuple[int, ...]
    """One per episode (0: missed)."""
    false_alarms: int
    bed_hours: float

    @property
    def false_alarms_per_bed_hour(self) -> float:
        """Return false alarms per at-risk bed-hour (inf with alarms and no bed-hour, 0 without either)."""
        if self.bed_hours > 0:
            return self.false_alarms / self.bed_hours
        return float("inf") if self.false_alarms else 0.0

    @property
    def median_lead_min(self) -> float | None:
        """Return the median lead time over all episodes (missed ones count 0); None without episodes."""
        return float(np.median(self.leads_min)) if self.leads_min else None

    @property
    def mean_lead_min(self) -> float | None:
        """Return the mean lead time over all episodes (missed ones count 0); None without episodes."""
        return float(np.mean(self.leads_min)) if self.leads_min else None

    @property
    def fraction_early(self) -> float | None:
        """Return the fraction of episodes warned at least EARLY_MIN minutes before onset."""
        if not self.leads_min:
            return None
        return float(np.mean(np.asarray(self.leads_min) >= EARLY_MIN))


def in_event(
    value: F64, valid: BoolArray, *, below: float, quiet_steps: int = ONSET_QUIET_STEPS
) -> BoolArray:
    """Return per minute whether a low minute lies in [t - quiet_steps, t]."""
    low = valid & (value < below)
    cumulative = np.r_[0, np.cumsum(low)]
    t = np.arange(value.size)
    first = np.clip(t - quiet_steps, 0, None)
    return np.asarray((cumulative[t + 1] - cumulative[first]) > 0)


def alarm_raises(on: BoolArray, *, refractory: int = REFRACTORY_MIN) -> list[int]:
    """Return the minutes an alarm is raised: on, and none raised in the `refractory` minutes before."""
    raises: list[int] = []
    for t in np.flatnonzero(on).tolist():
        if not raises or t - raises[-1] >= refractory:
            raises.append(t)
    return raises


@dataclass(frozen=True, slots=True)
class _Episodes:
    """What does not depend on the threshold: onsets, warning windows, at-risk minutes."""

    series: BedSeries
    scored: BoolArray
    onsets: list[int]
    event: BoolArray
    warned: BoolArray
    """Minutes inside some episode's warning window."""


def _episodes(series: BedSeries, *, below: float) -> _Episodes:
    onsets = event_onsets(series.value, series.valid, below=below)
    warned = np.zeros(series.score.size, dtype=bool)
    for onset in onsets:
        warned[max(onset - WARNING_WINDOW_MIN, 0) : onset] = True
    return _Episodes(
        series=series,
        scored=np.isfinite(series.score),
        onsets=onsets,
        event=in_event(series.value, series.valid, below=below),
        warned=warned,
    )


def _at(episodes: Sequence[_Episodes], *, threshold: float) -> LeadTimes:
    leads: list[int] = []
    false_alarms = 0
    at_risk = 0
    for bed in episodes:
        on = bed.scored & (np.where(bed.scored, bed.series.score, -np.inf) >= threshold)
        for onset in bed.onsets:
            first = max(onset - WARNING_WINDOW_MIN, 0)
            hits = np.flatnonzero(on[first:onset])
            leads.append(onset - (first + int(hits[0])) if hits.size else 0)
        false_alarms += sum(1 for t in alarm_raises(on) if not bed.event[t] and not bed.warned[t])
        at_risk += int(np.sum(bed.scored & ~bed.event))
    return LeadTimes(
        threshold=threshold,
        episodes=len(leads),
        leads_min=tuple(leads),
        false_alarms=false_alarms,
        bed_hours=at_risk / 60.0,
    )


def lead_times(beds: Sequence[BedSeries], *, below: float, threshold: float) -> LeadTimes:
    """Return lead times and false alarms over the beds with the alarm at `score >= threshold`."""
    return _at([_episodes(series, below=below) for series in beds], threshold=threshold)


def operating_point(
    beds: Sequence[BedSeries],
    *,
    below: float,
    candidates: npt.ArrayLike,
    max_rate: float = MAX_FALSE_ALARMS_PER_BED_HOUR,
) -> LeadTimes | None:
    """Return the figures at the lowest candidate threshold whose false-alarm rate is <= max_rate, or None."""
    episodes = [_episodes(series, below=below) for series in beds]
    for threshold in np.sort(np.asarray(candidates, dtype=np.float64)):
        figures = _at(episodes, threshold=float(threshold))
        if figures.false_alarms_per_bed_hour <= max_rate:
            return figures
    return None


def baseline_score(
    value: F64, valid: BoolArray, *, below: float, fresh_within: int = FRESH_WITHIN_STEPS
) -> F64:
    """Return the "current value" baseline's score per minute: below - last valid value (NaN if not fresh).

    Its alarm at threshold -margin is "the last valid value is <= below + margin".
    """
    index = np.where(valid, np.arange(value.size), -1)
    last = np.maximum.accumulate(index) if value.size else index
    fresh = (last >= 0) & (np.arange(value.size) - last < fresh_within)
    taken = value[np.clip(last, 0, None)]
    return np.where(fresh, below - taken, np.nan)


def margin_candidates(*, largest: float, step: float) -> F64:
    """Return baseline thresholds for margins 0, step, .. largest (score = below - last value >= -margin)."""
    return -np.arange(0.0, largest + step / 2.0, step)


@dataclass(frozen=True, slots=True)
class Comparison:
    """A model against the current-value baseline, each at its own <= 0.1 false alarms per bed-hour."""

    model: LeadTimes | None
    baseline: LeadTimes | None
    model_at_alarm_threshold: LeadTimes
    """The model at the daemon's predictive alarm threshold (whatever its false-alarm rate)."""

    @property
    def episodes(self) -> int:
        """Return the number of episodes both were judged on."""
        return self.model_at_alarm_threshold.episodes

    def model_beats_baseline(self) -> bool:
        """Return whether the model's mean lead is longer and its early fraction no lower than the baseline's.

        A model with no operating point never beats; a baseline without one is beaten by any model
        that has one and warns at least one episode early.
        """
        if self.model is None or self.model.mean_lead_min is None or self.model.fraction_early is None:
            return False
        if self.baseline is None or self.baseline.mean_lead_min is None:
            return self.model.fraction_early > 0
        return self.model.mean_lead_min > self.baseline.mean_lead_min and self.model.fraction_early >= (
            self.baseline.fraction_early or 0.0
        )


def compare(
    model_scores: Sequence[F64],
    values: Sequence[F64],
    valid: Sequence[BoolArray],
    *,
    below: float,
    margins: F64,
    alarm_threshold: float,
) -> Comparison:
    """Compare per-minute model probabilities with the current-value baseline on the same beds."""
    model_beds = [BedSeries(s, v, m) for s, v, m in zip(model_scores, values, valid, strict=True)]
    baseline_beds = [
        BedSeries(baseline_score(v, m, below=below), v, m) for v, m in zip(values, valid, strict=True)
    ]
    return Comparison(
        model=operating_point(model_beds, below=below, candidates=PROBABILITY_CANDIDATES),
        baseline=operating_point(baseline_beds, below=below, candidates=margins),
        model_at_alarm_threshold=lead_times(model_beds, below=below, threshold=alarm_threshold),
    )
