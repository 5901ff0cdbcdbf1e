"""Forecast and event scores, numpy only: MAE, pinball loss, interval coverage, AUROC, AUPRC, alarms.

Event scoring is a forward design: every forecast minute t with a label is scored, never a case-control
sample. For an end step t and horizon h the label is whether the signal goes below the threshold at any
valid minute in (t, t+h]; it is undefined (unlabeled) when no minute in (t, t+h] has a valid value.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
BoolArray = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]

ONSET_QUIET_STEPS = 10
"""An event onset is a valid minute below the threshold after >= 10 min with no valid value below it."""


def mae(prediction: ArrayLike, target: ArrayLike) -> float:
    """Return the mean absolute error (NaN for no samples)."""
    p = np.asarray(prediction, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    return float(np.mean(np.abs(p - y))) if y.size else math.nan


def pinball(prediction: ArrayLike, target: ArrayLike, *, quantile: float) -> float:
    """Return the mean pinball (quantile) loss of one quantile forecast."""
    diff = np.asarray(target, dtype=np.float64) - np.asarray(prediction, dtype=np.float64)
    if not diff.size:
        return math.nan
    return float(np.mean(np.maximum(quantile * diff, (quantile - 1.0) * diff)))


def coverage(lower: ArrayLike, upper: ArrayLike, target: ArrayLike) -> float:
    """Return the fraction of targets inside [lower, upper]."""
    y = np.asarray(target, dtype=np.float64)
    if not y.size:
        return math.nan
    inside = (np.asarray(lower, dtype=np.float64) <= y) & (y <= np.asarray(upper, dtype=np.float64))
    return float(np.mean(inside))


def _average_ranks(scores: F64) -> F64:
    """Return 1-based ranks with ties given their average rank."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return ranks


def auroc(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """Return the area under the ROC curve (Mann-Whitney, ties count 1/2); None without both classes."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    positives = int(y.sum())
    negatives = int(y.size - positives)
    if positives == 0 or negatives == 0:
        return None
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def auprc(scores: ArrayLike, labels: ArrayLike) -> float | None:
    """Return the average precision (step-wise, tied scores form one threshold); None without positives."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    positives = int(y.sum())
    if positives == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), s.size - 1]
    true_pos = np.cumsum(y_sorted)[last_of_tie].astype(np.float64)
    predicted = (last_of_tie + 1).astype(np.float64)
    precision = true_pos / predicted
    recall = true_pos / positives
    previous_recall = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - previous_recall) * precision))


def event_labels(
    values: ArrayLike, mask: ArrayLike, *, below: float, end_steps: ArrayLike, horizon_steps: int
) -> tuple[BoolArray, BoolArray]:
    """Return (label, labeled) per end step: any valid value < below in (t, t+h]; labeled if any valid."""
    v = np.asarray(values, dtype=np.float64)
    valid = np.asarray(mask, dtype=bool)
    ends = np.asarray(end_steps, dtype=np.int64)
    low = valid & (v < below)
    low_cum = np.r_[0, np.cumsum(low)]
    valid_cum = np.r_[0, np.cumsum(valid)]
    first = np.clip(ends + 1, 0, v.size)
    last = np.clip(ends + horizon_steps + 1, 0, v.size)
    labeled = (valid_cum[last] - valid_cum[first]) > 0
    label = (low_cum[last] - low_cum[first]) > 0
    return label & labeled, labeled


def event_onsets(
    values: ArrayLike, mask: ArrayLike, *, below: float, quiet_steps: int = ONSET_QUIET_STEPS
) -> list[int]:
    """Return the minutes where an event starts: valid and below, after `quiet_steps` minutes not below.

    The quiet stretch must hold at least one valid value (so a record starting low has no onset).
    """
    v = np.asarray(values, dtype=np.float64)
    valid = np.asarray(mask, dtype=bool)
    low = valid & (v < below)
    onsets: list[int] = []
    for step in np.flatnonzero(low):
        start = int(step) - quiet_steps
        if start < 0:
            continue
        if not low[start:step].any() and valid[start:step].any():
            onsets.append(int(step))
    return onsets


def lead_times(alarm: ArrayLike, onsets: list[int], *, horizon_steps: int) -> list[int]:
    """Return, per detected onset k, k minus the first alarming end step t in [k-h, k-1] (minutes).

    `alarm[t]` is the alarm decision of the forecast made at end step t; onsets with no alarm in the
    window are missed and contribute nothing.
    """
    a = np.asarray(alarm, dtype=bool)
    leads: list[int] = []
    for onset in onsets:
        first = max(onset - horizon_steps, 0)
        hits = np.flatnonzero(a[first:onset])
        if hits.size:
            leads.append(onset - (first + int(hits[0])))
    return leads


def false_alarm_episodes(alarm: ArrayLike, label: ArrayLike, labeled: ArrayLike) -> int:
    """Return the number of false alarm episodes: maximal runs of alarming minutes labeled negative."""
    false = np.asarray(alarm, dtype=bool) & np.asarray(labeled, dtype=bool) & ~np.asarray(label, dtype=bool)
    return int(np.sum(false[1:] & ~false[:-1]) + (1 if false.size and false[0] else 0))


def threshold_at_sensitivity(
    scores: ArrayLike, labels: ArrayLike, *, sensitivity: float = 0.8
) -> float | None:
    """Return the highest score threshold (alarm: score >= threshold) reaching the given sensitivity."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    positive_scores = np.sort(s[y])[::-1]
    if not positive_scores.size:
        return None
    needed = max(math.ceil(sensitivity * positive_scores.size), 1)
    return float(positive_scores[needed - 1])
