"""engines.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from engines import metrics


def test_mae_pinball_coverage() -> None:
    assert metrics.mae([1.0, 2.0, 4.0], [2.0, 2.0, 1.0]) == pytest.approx(4.0 / 3.0)
    # y = 10: prediction 8 under-forecasts (0.9 * 2), prediction 12 over-forecasts (0.1 * 2).
    assert metrics.pinball([8.0, 12.0], [10.0, 10.0], quantile=0.9) == pytest.approx(1.0)
    assert metrics.pinball([8.0, 12.0], [10.0, 10.0], quantile=0.5) == pytest.approx(1.0)
    assert metrics.coverage([0, 0, 0], [1, 1, 1], [0.5, 1.0, 1.5]) == pytest.approx(2.0 / 3.0)
    assert math.isnan(metrics.mae([], []))


def test_auroc_known_values_and_ties() -> None:
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # Ties count one half: pos 2 vs neg 2 is a tie.
    assert metrics.auroc([1, 2, 2, 3], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert metrics.auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert metrics.auroc([1, 2], [1, 1]) is None
    # Invariant under a monotone transform (the "current value" baseline relies on it).
    scores = np.array([3.0, 1.0, 2.5, 7.0, 0.1])
    labels = np.array([1, 0, 0, 1, 0])
    assert metrics.auroc(scores, labels) == metrics.auroc(np.exp(scores), labels)


def test_auprc_average_precision() -> None:
    # Ranked: 0.8 (pos), 0.4 (neg), 0.35 (pos), 0.1 (neg): AP = 0.5 * 1 + 0.5 * 2/3.
    assert metrics.auprc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.5 + 1.0 / 3.0)
    # One tied threshold holding everything: precision 0.5 at recall 1.
    assert metrics.auprc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert metrics.auprc([0.9, 0.1], [1, 0]) == pytest.approx(1.0)
    assert metrics.auprc([0.9, 0.1], [0, 0]) is None


def test_event_labels_forward_design() -> None:
    values = [70, 66, 60, 0, 70, 64]
    mask = [1, 1, 1, 0, 1, 1]
    label, labeled = metrics.event_labels(values, mask, below=65, end_steps=range(6), horizon_steps=2)
    assert labeled.tolist() == [True, True, True, True, True, False]
    assert label.tolist() == [True, True, False, True, True, False]


def test_onsets_lead_times_false_alarms() -> None:
    values = [70, 70, 70, 60, 60, 70, 70, 70, 70, 60]
    onsets = metrics.event_onsets(values, [1] * 10, below=65, quiet_steps=3)
    assert onsets == [3, 9]
    # No onset when the quiet stretch holds no valid value.
    assert metrics.event_onsets([0, 0, 0, 60], [0, 0, 0, 1], below=65, quiet_steps=3) == []
    alarm = [0, 0, 1, 1, 0, 0, 0, 1, 0, 0]
    assert metrics.lead_times(alarm, onsets, horizon_steps=5) == [1, 2]
    assert metrics.lead_times([0] * 10, onsets, horizon_steps=5) == []
    episodes = metrics.false_alarm_episodes([1, 1, 0, 1, 1, 1, 0, 1], [0, 0, 0, 0, 1, 0, 0, 1], [True] * 8)
    assert episodes == 3


def test_threshold_at_sensitivity() -> None:
    scores = [0.9, 0.8, 0.3, 0.2, 0.1, 0.5]
    labels = [1, 1, 1, 1, 1, 0]
    assert metrics.threshold_at_sensitivity(scores, labels, sensitivity=0.8) == pytest.approx(0.2)
    assert metrics.threshold_at_sensitivity(scores, labels, sensitivity=0.4) == pytest.approx(0.8)
    assert metrics.threshold_at_sensitivity([0.1], [0]) is None
