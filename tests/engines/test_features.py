"""Feature windows: WardHistory at run time and windows_from_grid for training agree, with masks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engines.features import (
    MBAR_PER_CMH2O,
    MMHG_PER_KPA,
    FeatureWindows,
    WardHistory,
    clean_grid,
    to_canonical,
    windows_from_grid,
)
from engines.spec import (
    CONTEXT,
    CONTEXT_KEYS,
    FRESH_WITHIN_STEPS,
    SIGNAL_KEYS,
    SIGNALS,
    STAND_INS,
    STEP_S,
    WINDOW_STEPS,
)

HR, SPO2, MAP, RR, ETCO2 = (SIGNAL_KEYS.index(k) for k in ("hr", "spo2", "map", "rr", "etco2"))
FIO2, PEEP = (CONTEXT_KEYS.index(k) for k in ("fio2", "peep"))
T0 = 1_700_000_000.0 - (1_700_000_000 % STEP_S)
"""A wall time on a step boundary."""


def at(step: int, offset_s: float = 1.0) -> float:
    return T0 + step * STEP_S + offset_s


class OneBed:
    """A WardHistory of one bed, read as that bed's window (what most tests below look at)."""

    def __init__(self) -> None:
        self.ward = WardHistory(beds=["bed"])

    def observe(self, *, key: str, value: float | None, unit: str, valid: bool, at_s: float) -> bool:
        return self.ward.observe(bed="bed", key=key, value=value, unit=unit, valid=valid, at_s=at_s)

    @property
    def rejected(self) -> Counter[str]:
        return self.ward.rejected(bed="bed")

    def window(self, *, now_s: float) -> FeatureWindows:
        windows = self.ward.windows(now_s=now_s)
        return FeatureWindows(
            values=windows.values[0],
            mask=windows.mask[0],
            context=windows.context[0],
            context_mask=windows.context_mask[0],
            stand_in=windows.stand_in[0],
        )


def test_gaps_are_masked_steps() -> None:
    history = OneBed()
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
    history = OneBed()
    assert not history.observe(key="hr", value=80.0, unit="/min", valid=False, at_s=at(0))
    assert not history.observe(key="hr", value=None, unit="/min", valid=True, at_s=at(0))
    assert history.rejected["invalid"] == 2
    assert history.window(now_s=at(0)).mask.sum() == 0
    assert not history.observe(key="not-a-signal", value=1.0, unit="/min", valid=True, at_s=at(0))


def test_units_are_converted_to_canonical() -> None:
    history = OneBed()
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
    history = OneBed()
    assert not history.observe(key="hr", value=1.2, unit="Hz", valid=True, at_s=at(0))
    assert not history.observe(key="spo2", value=0.95, unit="1", valid=True, at_s=at(0))
    assert history.rejected["unit"] == 2
    assert history.window(now_s=at(0)).mask.sum() == 0


def test_implausible_values_are_rejected() -> None:
    history = OneBed()
    assert not history.observe(key="hr", value=277.0, unit="/min", valid=True, at_s=at(0))
    assert not history.observe(key="spo2", value=36.0, unit="%", valid=True, at_s=at(0))
    assert not history.observe(key="map", value=float("nan"), unit="mm[Hg]", valid=True, at_s=at(0))
    assert history.observe(key="rr", value=55.7, unit="/min", valid=True, at_s=at(0))
    assert history.rejected["implausible"] == 3


def test_late_observation_after_the_slot_moved_on() -> None:
    history = OneBed()
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
    history = OneBed()
    for offset_s, value in ((0.5, 60.0), (20.0, 70.0), (59.0, 80.0)):
        history.observe(key="hr", value=value, unit="/min", valid=True, at_s=at(5, offset_s))
    history.observe(key="hr", value=90.0, unit="/min", valid=True, at_s=at(6, 0.0))  # next step
    window = history.window(now_s=at(6))
    assert window.values[-2, HR] == pytest.approx(70.0)
    assert window.values[-1, HR] == pytest.approx(90.0)


def test_ring_wraps_over_many_steps() -> None:
    history = OneBed()
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
    history = OneBed()
    history.observe(key="hr", value=75.0, unit="/min", valid=True, at_s=at(50, 59.0))
    history.observe(key="hr", value=99.0, unit="/min", valid=True, at_s=at(51, 0.0))  # after now
    window = history.window(now_s=at(50, 59.5))
    assert window.values.shape == (WINDOW_STEPS, len(SIGNALS))
    assert window.context.shape == (WINDOW_STEPS, len(CONTEXT))
    assert window.values[-1, HR] == pytest.approx(75.0)
    assert window.mask[:, HR].sum() == 1
    assert history.window(now_s=at(51, 0.0)).values[-2:, HR].tolist() == pytest.approx([75.0, 99.0])


def test_fresh_signals_and_last_valid_age() -> None:
    history = WardHistory(beds=["a", "b"])
    history.observe(bed="a", key="hr", value=80.0, unit="/min", valid=True, at_s=at(29))
    history.observe(
        bed="a", key="spo2", value=97.0, unit="%", valid=True, at_s=at(29 - FRESH_WITHIN_STEPS + 1)
    )
    history.observe(
        bed="a", key="map", value=70.0, unit="mm[Hg]", valid=True, at_s=at(29 - FRESH_WITHIN_STEPS)
    )
    history.observe(bed="b", key="rr", value=14.0, unit="/min", valid=True, at_s=at(20))
    history.observe(bed="b", key="rr", value=15.0, unit="/min", valid=True, at_s=at(27))
    windows = history.windows(now_s=at(29))
    assert windows.fresh().tolist() == [
        [True, True, False, False, False],
        [False, False, False, True, False],
    ]
    assert windows.last_valid_steps_ago().tolist() == [
        [0, FRESH_WITHIN_STEPS - 1, FRESH_WITHIN_STEPS, -1, -1],
        [-1, -1, -1, 2, -1],
    ]
    assert windows.valid_steps().tolist() == [[1, 1, 1, 0, 0], [0, 0, 0, 2, 0]]


def test_pulse_rate_stands_in_for_a_missing_or_stale_heart_rate_never_mixed() -> None:
    """hr while it is fresh; else the whole window from pr when pr is fresh; else hr (not fresh)."""
    history = WardHistory(beds=["monitor", "ventilator", "monitor-gone", "nothing-fresh"])
    for step in range(20, 30):
        for bed in ("monitor", "ventilator", "monitor-gone"):
            history.observe(bed=bed, key="pr", value=100.0 + step, unit="/min", valid=True, at_s=at(step))
        history.observe(bed="monitor", key="hr", value=60.0 + step, unit="/min", valid=True, at_s=at(step))
        if step < 30 - FRESH_WITHIN_STEPS:  # the monitor's hr stopped: not fresh any more
            history.observe(
                bed="monitor-gone", key="hr", value=60.0 + step, unit="/min", valid=True, at_s=at(step)
            )
    history.observe(bed="nothing-fresh", key="hr", value=70.0, unit="/min", valid=True, at_s=at(10))
    history.observe(bed="nothing-fresh", key="pr", value=71.0, unit="/min", valid=True, at_s=at(11))
    windows = history.windows(now_s=at(29))
    assert windows.stand_in[:, HR].tolist() == [False, True, True, False]
    assert not windows.stand_in[:, SPO2:].any()
    hr = windows.values[:, -10:, HR]
    assert hr[0].tolist() == [60.0 + step for step in range(20, 30)], "the monitor's hr, no pr in it"
    assert hr[1].tolist() == [100.0 + step for step in range(20, 30)], "the ventilator's pr"
    assert hr[2].tolist() == [100.0 + step for step in range(20, 30)], "all pr, not the stale hr before"
    assert windows.values[3, :, HR].tolist().count(70.0) == 1, "neither fresh: hr's own (stale) window"
    assert windows.values[3, :, HR].tolist().count(71.0) == 0
    assert windows.fresh()[:, HR].tolist() == [True, True, True, False]
    assert windows.valid_steps()[:, HR].tolist() == [10, 10, 10, 1]


def test_beds_never_share_a_slot() -> None:
    history = WardHistory(beds=["a", "b"])
    history.observe(bed="a", key="hr", value=80.0, unit="/min", valid=True, at_s=at(3))
    assert not history.observe(bed="b", key="hr", value=300.0, unit="/min", valid=True, at_s=at(3))
    windows = history.windows(now_s=at(3))
    assert windows.values[:, -1, HR].tolist() == [80.0, 0.0]
    assert windows.mask[:, -1, HR].tolist() == [1.0, 0.0]
    assert history.rejected(bed="a") == Counter()
    assert history.rejected(bed="b") == Counter(implausible=1)
    with pytest.raises(KeyError):
        history.observe(bed="c", key="hr", value=80.0, unit="/min", valid=True, at_s=at(3))
    with pytest.raises(ValueError, match="unique"):
        WardHistory(beds=["a", "a"])


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
    history = OneBed()
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


_STAND_IN_SOURCES = tuple(stand_in.source for stand_in in STAND_INS)
_KEYS = (*SIGNAL_KEYS, *CONTEXT_KEYS, *(source.key for source in _STAND_IN_SOURCES))
_BY_KEY = {signal.key: signal for signal in (*SIGNALS, *CONTEXT, *_STAND_IN_SOURCES)}
_OTHER_UNITS = {"etco2": "kPa", "peep": "cm[H2O]", "map": "mmHg", "hr": "Hz"}


Feed = tuple[list[str], list[tuple[str, str, float | None, str, bool, float]], float]


@st.composite
def ward_feeds(draw: st.DrawFn) -> Feed:
    """Beds, observations in arrival order (late, future, invalid, implausible, other units), and now.

    Few distinct steps (0-3, each WINDOW_STEPS * 0-3 later), so ring slots are shared often.
    """
    rng = np.random.default_rng(draw(st.integers(min_value=0, max_value=2**32 - 1)))
    beds = [f"bed-{i}" for i in range(draw(st.integers(min_value=1, max_value=3)))]
    keys = (*_KEYS, "not-a-signal")
    feed: list[tuple[str, str, float | None, str, bool, float]] = []
    for _ in range(draw(st.sampled_from((0, 1, 5, 20, 60, 150)))):
        key = str(rng.choice(("hr", "pr", "peep", *keys)))
        signal = _BY_KEY.get(key, SIGNALS[0])
        kind = rng.random()
        value: float | None = (
            None
            if kind < 0.1
            else float(rng.uniform(signal.minimum - 20, signal.maximum + 20))
            if kind < 0.25
            else float(rng.uniform(signal.minimum, signal.maximum))
        )
        unit = _OTHER_UNITS.get(key, signal.unit) if rng.random() < 0.15 else signal.unit
        step = int(rng.integers(0, 4) + WINDOW_STEPS * rng.integers(0, 4))
        at_s = at(step, float(rng.uniform(0.0, STEP_S)))
        feed.append((str(rng.choice(beds)), key, value, unit, bool(rng.random() < 0.9), at_s))
    now_s = at(int(rng.integers(0, 3 * WINDOW_STEPS + 4)), float(rng.uniform(0.0, STEP_S)))
    return beds, feed, now_s


@settings(max_examples=150, deadline=None)
@given(ward_feeds())
def test_the_ward_ring_equals_a_straightforward_reference(feed: Feed) -> None:
    """Every bed's window from the one ring equals the mean of the bed's accepted observations per step,
    with pr's window in place of hr's where hr is not fresh and pr is.

    The reference keeps every accepted observation in a list; an observation is late when the same
    bed and key already accepted a newer step that shares its ring slot (a step WINDOW_STEPS apart),
    and a step in the window is empty when a newer step (after now) took its slot.
    """
    beds, observations, now_s = feed
    history = WardHistory(beds=beds)
    accepted: dict[tuple[str, str], list[tuple[int, float]]] = {}
    rejected = {bed: Counter[str]() for bed in beds}
    for bed, key, value, unit, valid, at_s in observations:
        used = history.observe(bed=bed, key=key, value=value, unit=unit, valid=valid, at_s=at_s)
        signal = _BY_KEY.get(key)
        expected_used = False
        if signal is None:
            pass
        elif not valid or value is None:
            rejected[bed]["invalid"] += 1
        elif (canonical := to_canonical(signal, value=value, unit=unit)) is None:
            rejected[bed]["unit"] += 1
        elif not signal.minimum <= canonical <= signal.maximum:
            rejected[bed]["implausible"] += 1
        else:
            step = int(at_s // STEP_S)
            kept = accepted.setdefault((bed, key), [])
            if any(s > step and (s - step) % WINDOW_STEPS == 0 for s, _ in kept):
                rejected[bed]["late"] += 1
            else:
                kept.append((step, canonical))
                expected_used = True
        assert used == expected_used
    for bed in beds:
        assert history.rejected(bed=bed) == rejected[bed]

    windows = history.windows(now_s=now_s)
    last_step = int(now_s // STEP_S)

    def expected_window(bed: str, key: str) -> list[tuple[np.float32, float]]:
        """(value, mask) per step of the window: the mean of the step's accepted observations."""
        kept = accepted.get((bed, key), [])
        window: list[tuple[np.float32, float]] = []
        for step in range(last_step - WINDOW_STEPS + 1, last_step + 1):
            same = [v for s, v in kept if s == step]
            overwritten = any(s > step and (s - step) % WINDOW_STEPS == 0 for s, _ in kept)
            if same and not overwritten:
                total = 0.0
                for v in same:
                    total += v
                window.append((np.float32(total / len(same)), 1.0))
            else:
                window.append((np.float32(0.0), 0.0))
        return window

    def fresh(window: list[tuple[np.float32, float]]) -> bool:
        return any(mask for _, mask in window[-FRESH_WITHIN_STEPS:])

    for row, bed in enumerate(beds):
        for signals, values, mask in (
            (SIGNALS, windows.values, windows.mask),
            (CONTEXT, windows.context, windows.context_mask),
        ):
            for column, signal in enumerate(signals):
                expected = expected_window(bed, signal.key)
                stand_in = False
                if signal.key == "hr" and not fresh(expected) and fresh(pulse := expected_window(bed, "pr")):
                    expected, stand_in = pulse, True
                if signals is SIGNALS:
                    assert windows.stand_in[row, column] == stand_in
                for index, (value, valid) in enumerate(expected):
                    assert (values[row, index, column], mask[row, index, column]) == (value, valid)
