"""Feature windows: BedHistory at run time and windows_from_grid for training agree, with masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.features import MBAR_PER_CMH2O, MMHG_PER_KPA, BedHistory, clean_grid, windows_from_grid
from engines.spec import CONTEXT, CONTEXT_KEYS, FRESH_WITHIN_STEPS, SIGNAL_KEYS, SIGNALS, STEP_S, WINDOW_STEPS

HR, SPO2, MAP, RR, ETCO2 = (SIGNAL_KEYS.index(k) for k in ("hr", "spo2", "map", "rr", "etco2"))
FIO2, PEEP = (CONTEXT_KEYS.index(k) for k in ("fio2", "peep"))
T0 = 1_700_000_000.0 - (1_700_000_000 % STEP_S)
"""A wall time on a step boundary."""


def at(step: int, offset_s: float = 1.0) -> float:
    return T0 + step * STEP_S + offset_s


def test_gaps_are_masked_steps() -> None:
    history = BedHistory()
    for step in range(WINDOW_STEPS):
        if not 10 <= step < 15:
            assert history.observe(key="hr", value=70.0 + step, unit="/min", valid=True, at_s=at(step))
    window = history.window(now_s=at(WINDOW_STEPS - 1))
    expected = np.array([0.0 if 10 <= s < 15 else 1.0 for s in range(WINDOW_STEPS)], np.float32)
    np.testing.assert_array_equal(window.mask[:, HR], expected)
    assert (window.values[10:15, HR] == 0).all()
    assert window.values[-1, HR] == pytest.approx(70.0 + WINDOW_STEPS - 1)
    assert window.mask[:, SPO2].sum() == 0  # never observed


def test_invalid_and_none_values_are_rejected() -> None:
    history = BedHistory()
    assert not history.observe(key="hr", value=80.0, unit="/min", valid=False, at_s=at(0))
    assert not history.observe(key="hr", value=None, unit="/min", valid=True, at_s=at(0))
    assert history.rejected["invalid"] == 2
    assert history.window(now_s=at(0)).mask.sum() == 0
    assert not history.observe(key="not-a-signal", value=1.0, unit="/min", valid=True, at_s=at(0))


def test_units_are_converted_to_canonical() -> None:
    history = BedHistory()
    assert history.observe(key="etco2", value=5.0, unit="kPa", valid=True, at_s=at(0))
    assert history.observe(key="peep", value=10.0, unit="cm[H2O]", valid=True, at_s=at(0))
    assert history.observe(key="map", value=72.0, unit="mmHg", valid=True, at_s=at(0))
    assert history.observe(key="fio2", value=40.0, unit="%", valid=True, at_s=at(0))
    window = history.window(now_s=at(0))
    assert window.values[-1, ETCO2] == pytest.approx(5.0 * MMHG_PER_KPA, rel=1e-6)
    assert window.context[-1, PEEP] == pytest.approx(10.0 * MBAR_PER_CMH2O, rel=1e-6)
    assert window.values[-1, MAP] == pytest.approx(72.0)
    assert window.context[-1, FIO2] == pytest.approx(40.0)
    assert window.context_mask[-1].tolist() == [1.0, 1.0]


def test_unknown_unit_is_rejected_and_counted() -> None:
    history = BedHistory()
    assert not history.observe(key="hr", value=1.2, unit="Hz", valid=True, at_s=at(0))
    assert not history.observe(key="spo2", value=0.95, unit="1", valid=True, at_s=at(0))
    assert history.rejected["unit"] == 2
    assert history.window(now_s=at(0)).mask.sum() == 0


def test_implausible_values_are_rejected() -> None:
    history = BedHistory()
    assert not history.observe(key="hr", value=277.0, unit="/min", valid=True, at_s=at(0))
    assert not history.observe(key="spo2", value=36.0, unit="%", valid=True, at_s=at(0))
    assert not history.observe(key="map", value=float("nan"), unit="mm[Hg]", valid=True, at_s=at(0))
    assert history.observe(key="rr", value=55.7, unit="/min", valid=True, at_s=at(0))
    assert history.rejected["implausible"] == 3


def test_late_observation_after_the_slot_moved_on() -> None:
    history = BedHistory()
    assert history.observe(key="hr", value=80.0, unit="/min", valid=True, at_s=at(WINDOW_STEPS + 3))
    # Step 3 shares the ring slot with step WINDOW_STEPS + 3, which already holds newer data.
    assert not history.observe(key="hr", value=60.0, unit="/min", valid=True, at_s=at(3))
    assert history.rejected["late"] == 1
    window = history.window(now_s=at(WINDOW_STEPS + 3))
    assert window.values[-1, HR] == pytest.approx(80.0)
    # A late observation whose slot still holds its own step is used.
    assert history.observe(key="hr", value=70.0, unit="/min", valid=True, at_s=at(WINDOW_STEPS + 1))
    assert history.window(now_s=at(WINDOW_STEPS + 3)).values[-3, HR] == pytest.approx(70.0)


def test_step_value_is_the_mean_of_its_observations() -> None:
    history = BedHistory()
    for offset_s, value in ((0.5, 60.0), (20.0, 70.0), (59.0, 80.0)):
        history.observe(key="hr", value=value, unit="/min", valid=True, at_s=at(5, offset_s))
    history.observe(key="hr", value=90.0, unit="/min", valid=True, at_s=at(6, 0.0))  # next step
    window = history.window(now_s=at(6))
    assert window.values[-2, HR] == pytest.approx(70.0)
    assert window.values[-1, HR] == pytest.approx(90.0)


def test_ring_wraps_over_many_steps() -> None:
    history = BedHistory()
    steps = 3 * WINDOW_STEPS + 7
    for step in range(steps):
        history.observe(key="map", value=50.0 + step, unit="mm[Hg]", valid=True, at_s=at(step))
    window = history.window(now_s=at(steps - 1))
    expected = 50.0 + np.arange(steps - WINDOW_STEPS, steps, dtype=np.float32)
    np.testing.assert_array_equal(window.values[:, MAP], expected)
    assert window.mask[:, MAP].all()
    # Later, with no new data, old steps fall out of the window instead of reappearing.
    later = history.window(now_s=at(steps - 1 + 10))
    assert later.mask[-10:, MAP].sum() == 0
    np.testing.assert_array_equal(later.values[:-10, MAP], expected[10:])


def test_window_is_aligned_on_the_step_holding_now() -> None:
    history = BedHistory()
    history.observe(key="hr", value=75.0, unit="/min", valid=True, at_s=at(50, 59.0))
    history.observe(key="hr", value=99.0, unit="/min", valid=True, at_s=at(51, 0.0))  # after now
    window = history.window(now_s=at(50, 59.5))
    assert window.values.shape == (WINDOW_STEPS, len(SIGNALS))
    assert window.context.shape == (WINDOW_STEPS, len(CONTEXT))
    assert window.values[-1, HR] == pytest.approx(75.0)
    assert window.mask[:, HR].sum() == 1
    assert history.window(now_s=at(51, 0.0)).values[-2:, HR].tolist() == pytest.approx([75.0, 99.0])


def test_fresh_signals_and_last_valid_age() -> None:
    history = BedHistory()
    history.observe(key="hr", value=80.0, unit="/min", valid=True, at_s=at(29))
    history.observe(key="spo2", value=97.0, unit="%", valid=True, at_s=at(29 - FRESH_WITHIN_STEPS + 1))
    history.observe(key="map", value=70.0, unit="mm[Hg]", valid=True, at_s=at(29 - FRESH_WITHIN_STEPS))
    window = history.window(now_s=at(29))
    fresh = window.fresh_signals()
    assert fresh == {"hr": True, "spo2": True, "map": False, "rr": False, "etco2": False}
    ages = window.last_valid_age_steps()
    assert ages == {
        "hr": 0,
        "spo2": FRESH_WITHIN_STEPS - 1,
        "map": FRESH_WITHIN_STEPS,
        "rr": None,
        "etco2": None,
    }


def test_windows_from_grid_pads_before_the_start() -> None:
    values, mask = clean_grid(np.full((5, len(SIGNALS)), 80.0), SIGNALS)
    context, context_mask = clean_grid(np.full((5, len(CONTEXT)), np.nan), CONTEXT)
    v, m, _c, cm = windows_from_grid(
        values=values, mask=mask, context=context, context_mask=context_mask, end_steps=[2]
    )
    assert v.shape == (1, WINDOW_STEPS, len(SIGNALS))
    assert m[0, :, HR].sum() == 3
    assert m[0, -3:, HR].all()
    assert cm.sum() == 0
    assert v.dtype == np.float32


def test_clean_grid_masks_nan_and_implausible() -> None:
    raw = np.array([[np.nan, 300.0, 19.0, 55.7, 40.0], [70.0, 97.0, 65.0, 1.0, 150.0]])
    values, mask = clean_grid(raw, SIGNALS)
    # NaN, SpO2 300 %, MAP 19 mmHg, RR 1 /min and EtCO2 150 mmHg are masked; RR 55.7 /min is kept.
    assert mask.tolist() == [[0, 0, 0, 1, 1], [1, 1, 1, 0, 0]]
    assert (values[mask == 0] == 0).all()


@st.composite
def grids(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    steps = draw(st.integers(min_value=1, max_value=80))
    seed = draw(st.integers(min_value=0, max_value=2**31 - 1))
    present = draw(st.floats(min_value=0.0, max_value=1.0))
    rng = np.random.default_rng(seed)

    def column(signal_range: tuple[float, float], n: int) -> np.ndarray:
        return rng.uniform(*signal_range, size=n).astype(np.float32)

    values = np.stack([column((s.minimum, s.maximum), steps) for s in SIGNALS], axis=1)
    context = np.stack([column((s.minimum, s.maximum), steps) for s in CONTEXT], axis=1)
    mask = (rng.random(values.shape) < present).astype(np.float32)
    context_mask = (rng.random(context.shape) < present).astype(np.float32)
    end = draw(st.integers(min_value=0, max_value=steps - 1))
    return values * mask, mask, context * context_mask, context_mask, end


@settings(max_examples=60, deadline=None)
@given(grids())
def test_windows_from_grid_equals_bed_history(
    case: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int],
) -> None:
    values, mask, context, context_mask, end = case
    history = BedHistory()
    for step in range(end + 1):
        for column, signal in enumerate(SIGNALS):
            if mask[step, column]:
                history.observe(
                    key=signal.key,
                    value=float(values[step, column]),
                    unit=signal.unit,
                    valid=True,
                    at_s=at(step),
                )
        for column, signal in enumerate(CONTEXT):
            if context_mask[step, column]:
                history.observe(
                    key=signal.key,
                    value=float(context[step, column]),
                    unit=signal.unit,
                    valid=True,
                    at_s=at(step),
                )
    window = history.window(now_s=at(end))
    v, m, c, cm = windows_from_grid(
        values=values, mask=mask, context=context, context_mask=context_mask, end_steps=[end]
    )
    np.testing.assert_array_equal(v[0], window.values)
    np.testing.assert_array_equal(m[0], window.mask)
    np.testing.assert_array_equal(c[0], window.context)
    np.testing.assert_array_equal(cm[0], window.context_mask)
