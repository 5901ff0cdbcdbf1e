"""Lead time at a fixed false-alarm rate, on hand-built minute series (engines.lead_time)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engines.lead_time import (
    BedSeries,
    Comparison,
    LeadTimes,
    alarm_raises,
    baseline_score,
    compare,
    in_event,
    lead_times,
    margin_candidates,
    operating_point,
)

F = np.float64


def _desaturation(minutes: int = 120, *, onset: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """SpO2 97, then one point a minute down from onset - 8: first below 90 at `onset`, back at 97 later."""
    value = np.full(minutes, 97.0)
    start = onset - 8
    for t in range(start, onset + 10):
        value[t] = 97.0 - (t - start)
    valid = np.ones(minutes, dtype=bool)
    return value, valid


def _score(minutes: int, on: list[tuple[int, int]], *, level: float = 0.9) -> np.ndarray:
    score = np.full(minutes, 0.05)
    for first, last in on:
        score[first : last + 1] = level
    return score


def test_the_desaturation_helper_crosses_at_the_onset() -> None:
    value, _ = _desaturation()
    assert value[59] == 90.0
    assert value[60] == 89.0


def test_lead_is_minutes_from_the_first_alarm_in_the_warning_window_to_the_onset() -> None:
    value, valid = _desaturation()
    figures = lead_times([BedSeries(_score(120, [(55, 75)]), value, valid)], below=90.0, threshold=0.7)
    assert figures.episodes == 1
    assert figures.leads_min == (5,)
    assert figures.false_alarms == 0
    assert figures.fraction_early == 1.0
    assert figures.median_lead_min == 5.0


def test_an_alarm_at_or_after_the_onset_is_a_miss_counted_as_zero() -> None:
    value, valid = _desaturation()
    figures = lead_times([BedSeries(_score(120, [(60, 75)]), value, valid)], below=90.0, threshold=0.7)
    assert figures.leads_min == (0,)
    assert figures.fraction_early == 0.0
    assert figures.false_alarms == 0, "raised in event: neither true nor false"


def test_lead_is_capped_at_the_warning_window_and_a_standing_alarm_is_raised_again() -> None:
    value, valid = _desaturation()
    figures = lead_times([BedSeries(_score(120, [(20, 75)]), value, valid)], below=90.0, threshold=0.7)
    assert figures.leads_min == (15,)
    # Raised at 20 (40 min before the onset: false), again at 50 (in the warning window: true).
    assert figures.false_alarms == 1


def test_an_alarm_far_from_any_episode_is_false_and_bed_hours_are_the_at_risk_minutes() -> None:
    value = np.full(180, 97.0)
    valid = np.ones(180, dtype=bool)
    figures = lead_times([BedSeries(_score(180, [(30, 32)]), value, valid)], below=90.0, threshold=0.7)
    assert figures.episodes == 0
    assert figures.false_alarms == 1
    assert figures.bed_hours == 3.0
    assert figures.false_alarms_per_bed_hour == pytest.approx(1 / 3)
    assert figures.median_lead_min is None
    assert figures.fraction_early is None


def test_unscored_and_in_event_minutes_are_not_at_risk() -> None:
    value, valid = _desaturation()
    score = _score(120, [])
    score[:30] = np.nan
    figures = lead_times([BedSeries(score, value, valid)], below=90.0, threshold=0.7)
    low = int(np.sum(value < 90.0))
    event_minutes = int(np.sum(in_event(value, valid, below=90.0)))
    assert event_minutes == low + 10  # the low run and the 10 quiet minutes after it
    assert figures.bed_hours == pytest.approx((120 - 30 - event_minutes) / 60.0)


def test_no_alarm_is_raised_within_the_refractory_period_of_the_last() -> None:
    on = np.zeros(100, dtype=bool)
    on[10:13] = True
    on[18:20] = True  # 8 min after the first raise: the same alarm
    on[40:42] = True  # 30 min after it: raised again
    on[60:100] = True  # standing from 60: raised at 70, 30 min after the raise at 40
    assert alarm_raises(on, refractory=30) == [10, 40, 70]
    assert alarm_raises(on, refractory=1) == [10, 11, 12, 18, 19, 40, 41, *range(60, 100)]


def test_a_flickering_alarm_counts_once() -> None:
    value = np.full(180, 97.0)
    valid = np.ones(180, dtype=bool)
    score = _score(180, [(30, 30), (33, 33), (36, 36), (39, 39)])
    figures = lead_times([BedSeries(score, value, valid)], below=90.0, threshold=0.7)
    assert figures.false_alarms == 1


def test_operating_point_is_the_lowest_threshold_within_the_false_alarm_rate() -> None:
    value, valid = _desaturation(600, onset=300)
    score = np.full(600, 0.05)
    score[100] = 0.4  # a false alarm at 0.4 and below
    score[200] = 0.6  # and one at 0.6 and below
    score[293:320] = 0.8  # warns 7 min early at 0.8 and below
    beds = [BedSeries(score, value, valid)]
    # 600 min, 10 + 18 in event -> ~9.5 bed-hours: one false alarm is 0.105/h, over 0.1.
    chosen = operating_point(beds, below=90.0, candidates=[0.3, 0.5, 0.7, 0.9])
    assert chosen is not None
    assert chosen.threshold == 0.7
    assert chosen.leads_min == (7,)
    assert chosen.false_alarms == 0
    lenient = operating_point(beds, below=90.0, candidates=[0.3, 0.5, 0.7], max_rate=0.15)
    assert lenient is not None
    assert lenient.threshold == 0.5
    assert lenient.false_alarms == 1
    assert operating_point(beds, below=90.0, candidates=[0.01], max_rate=0.1) is None


def test_baseline_score_is_the_margin_of_the_last_fresh_value() -> None:
    value = np.array([97.0, 0.0, 95.0, 0, 0, 0, 0, 0, 0, 92.0])
    valid = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    score = baseline_score(value, valid, below=90.0, fresh_within=5)
    expected = [-7.0, -7.0, -5.0, -5.0, -5.0, -5.0, -5.0, math.nan, math.nan, -2.0]
    np.testing.assert_array_equal(score, np.array(expected))
    assert baseline_score(np.zeros(0), np.zeros(0, dtype=bool), below=90.0).shape == (0,)


def test_margin_candidates_alarm_at_or_below_threshold_plus_margin() -> None:
    candidates = margin_candidates(largest=2.0, step=0.5)
    np.testing.assert_array_equal(candidates, -np.array([0.0, 0.5, 1.0, 1.5, 2.0]))
    value, valid = _desaturation()
    # Margin 3: alarm when SpO2 <= 93, reached at minute 56: 4 min before the onset at 60.
    figures = lead_times(
        [BedSeries(baseline_score(value, valid, below=90.0), value, valid)], below=90.0, threshold=-3.0
    )
    assert figures.leads_min == (4,)


def test_compare_judges_each_source_at_its_own_operating_point() -> None:
    value, valid = _desaturation(600, onset=300)
    early = np.full(600, 0.05)
    early[290:320] = 0.9  # warns 10 min early
    result = compare(
        [early],
        [value],
        [valid],
        below=90.0,
        margins=margin_candidates(largest=5.0, step=1.0),
        alarm_threshold=0.7,
    )
    assert result.model is not None
    assert result.baseline is not None
    assert result.model.leads_min == (10,)
    assert result.baseline.leads_min == (6,), "margin 5: SpO2 <= 95 six minutes before the onset"
    assert result.model_at_alarm_threshold.leads_min == (10,)
    assert result.model_beats_baseline()
    late = np.full(600, 0.05)
    late[300:320] = 0.9
    assert not compare(
        [late],
        [value],
        [valid],
        below=90.0,
        margins=margin_candidates(largest=5.0, step=1.0),
        alarm_threshold=0.7,
    ).model_beats_baseline()


def test_a_model_without_an_operating_point_never_beats() -> None:
    none = LeadTimes(threshold=0.5, episodes=1, leads_min=(0,), false_alarms=0, bed_hours=1.0)
    assert not Comparison(model=None, baseline=None, model_at_alarm_threshold=none).model_beats_baseline()


def test_series_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="one length"):
        BedSeries(np.zeros(3, F), np.zeros(4, F), np.zeros(3, dtype=bool))
