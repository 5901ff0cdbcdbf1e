"""The synthetic physiology: determined by the seed, plausible, with the episodes training needs."""

from __future__ import annotations

import numpy as np

from engines.spec import CONTEXT, CONTEXT_KEYS, SIGNAL_KEYS, SIGNALS
from engines.synthetic import synthetic_patients


def test_same_seed_same_patients_other_seed_differs() -> None:
    first = synthetic_patients(count=3, minutes=240, seed=11)
    again = synthetic_patients(count=3, minutes=240, seed=11)
    other = synthetic_patients(count=3, minutes=240, seed=12)
    for a, b in zip(first, again, strict=True):
        assert a.patient_id == b.patient_id
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.context, b.context)
    assert not np.array_equal(first[0].values, other[0].values)


def test_shapes_ranges_and_masks() -> None:
    for grid in synthetic_patients(count=6, minutes=300, seed=3):
        assert grid.values.shape == (300, len(SIGNALS))
        assert grid.context.shape == (300, len(CONTEXT))
        assert grid.values.dtype == np.float32
        for column, signal in enumerate(SIGNALS):
            valid = grid.values[grid.mask[:, column] > 0, column]
            assert ((valid >= signal.minimum) & (valid <= signal.maximum)).all()
            assert (grid.values[grid.mask[:, column] == 0, column] == 0).all()
        assert 0.5 < grid.mask[:, SIGNAL_KEYS.index("hr")].mean() < 1.0  # gaps, but mostly present


def test_episodes_and_clinician_response() -> None:
    patients = synthetic_patients(count=30, minutes=720, seed=7)
    spo2, map_, fio2 = SIGNAL_KEYS.index("spo2"), SIGNAL_KEYS.index("map"), CONTEXT_KEYS.index("fio2")
    hypotension = sum(bool(((p.values[:, map_] < 65) & (p.mask[:, map_] > 0)).any()) for p in patients)
    desaturation = sum(bool(((p.values[:, spo2] < 90) & (p.mask[:, spo2] > 0)).any()) for p in patients)
    assert hypotension >= 5
    assert desaturation >= 5
    raised = 0
    for p in patients:
        valid_fio2 = p.context[p.context_mask[:, fio2] > 0, fio2]
        if valid_fio2.size and valid_fio2.max() > valid_fio2[0]:
            raised += 1
    assert raised >= 1
    ventilated = [p for p in patients if p.context_mask.any()]
    assert ventilated
    assert len(ventilated) < len(patients)
