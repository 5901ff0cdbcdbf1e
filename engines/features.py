"""Feature windows: the last WINDOW_STEPS steps of every signal, with masks, in canonical units.

Two producers, one shape. At run time `BedHistory` is fed each observation as it arrives and keeps a
ring of per-step sums, so building a window each tick costs O(window), never a rescan of history.
For training and evaluation, `windows_from_grid` slices a per-minute grid (a WFDB numerics record, a
synthetic patient). In both, a step's value is the mean of its valid observations; a value in an
unknown unit or outside the signal's plausible range is counted and masked, never fed to a model.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from engines.spec import CONTEXT, FRESH_WITHIN_STEPS, SIGNALS, STEP_S, WINDOW_STEPS, Signal

LOGGER = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

MMHG_PER_KPA = 7.50062
MBAR_PER_CMH2O = 0.980665

_UNIT_FACTORS: dict[tuple[str, str], float] = {
    ("mm[Hg]", "mm[Hg]"): 1.0,
    ("mmHg", "mm[Hg]"): 1.0,
    ("kPa", "mm[Hg]"): MMHG_PER_KPA,
    ("/min", "/min"): 1.0,
    ("1/min", "/min"): 1.0,
    ("{beats}/min", "/min"): 1.0,
    ("{breaths}/min", "/min"): 1.0,
    ("%", "%"): 1.0,
    ("mbar", "mbar"): 1.0,
    ("cm[H2O]", "mbar"): MBAR_PER_CMH2O,
    ("cmH2O", "mbar"): MBAR_PER_CMH2O,
}
"""(observed unit, canonical unit) -> factor. Conversions that need more than a factor are absent."""


def to_canonical(signal: Signal, *, value: float, unit: str) -> float | None:
    """Return value in the signal's canonical unit, or None when the unit is not convertible."""
    factor = _UNIT_FACTORS.get((unit, signal.unit))
    return None if factor is None else value * factor


def plausible(signal: Signal, value: float) -> bool:
    """Return whether value lies in the signal's physiological range (finite, inside the bounds)."""
    return math.isfinite(value) and signal.minimum <= value <= signal.maximum


@dataclass(frozen=True, slots=True)
class FeatureWindow:
    """One bed's model input: rows are steps (oldest first, the last row is the step holding 'now')."""

    values: FloatArray
    """[WINDOW_STEPS, len(SIGNALS)], 0 where masked."""
    mask: FloatArray
    context: FloatArray
    """[WINDOW_STEPS, len(CONTEXT)]."""
    context_mask: FloatArray

    def fresh_signals(self, *, within_steps: int = FRESH_WITHIN_STEPS) -> dict[str, bool]:
        """Return, per signal key, whether it has a valid value within the last `within_steps` steps."""
        recent = self.mask[-within_steps:]
        return {signal.key: bool(recent[:, index].any()) for index, signal in enumerate(SIGNALS)}

    def last_valid_age_steps(self) -> dict[str, int | None]:
        """Return, per signal key, how many steps ago its last valid value was (None: none in window)."""
        ages: dict[str, int | None] = {}
        for index, signal in enumerate(SIGNALS):
            valid = np.flatnonzero(self.mask[:, index])
            ages[signal.key] = None if valid.size == 0 else int(self.mask.shape[0] - 1 - valid[-1])
        return ages


@dataclass(slots=True)
class _Channel:
    signal: Signal
    sums: npt.NDArray[np.float64]
    counts: npt.NDArray[np.int64]
    steps: npt.NDArray[np.int64]
    """Absolute step number held in each ring slot (-1: empty)."""


def _channel(signal: Signal, steps: int) -> _Channel:
    return _Channel(
        signal=signal,
        sums=np.zeros(steps, dtype=np.float64),
        counts=np.zeros(steps, dtype=np.int64),
        steps=np.full(steps, -1, dtype=np.int64),
    )


@dataclass(slots=True)
class BedHistory:
    """The recent history of one bed, kept as a ring of per-step sums (incremental, bounded)."""

    step_s: float = STEP_S
    steps: int = WINDOW_STEPS
    rejected: Counter[str] = field(default_factory=Counter)
    """Observations not used, by reason (`unit`, `implausible`, `invalid`, `late`)."""
    _channels: dict[str, _Channel] = field(init=False)

    def __post_init__(self) -> None:
        self._channels = {s.key: _channel(s, self.steps) for s in (*SIGNALS, *CONTEXT)}

    def observe(self, *, key: str, value: float | None, unit: str, valid: bool, at_s: float) -> bool:
        """Add one observation taken at wall time at_s (epoch seconds); return whether it was used."""
        channel = self._channels.get(key)
        if channel is None:
            return False
        if not valid or value is None:
            self.rejected["invalid"] += 1
            return False
        canonical = to_canonical(channel.signal, value=value, unit=unit)
        if canonical is None:
            self.rejected["unit"] += 1
            LOGGER.debug("%s in unit %r is not convertible to %s", key, unit, channel.signal.unit)
            return False
        if not plausible(channel.signal, canonical):
            self.rejected["implausible"] += 1
            return False
        step = math.floor(at_s / self.step_s)
        slot = step % self.steps
        held = int(channel.steps[slot])
        if held > step:
            self.rejected["late"] += 1
            return False
        if held != step:
            channel.steps[slot] = step
            channel.sums[slot] = 0.0
            channel.counts[slot] = 0
        channel.sums[slot] += canonical
        channel.counts[slot] += 1
        return True

    def window(self, *, now_s: float) -> FeatureWindow:
        """Return the window ending with the step that holds now_s."""
        last_step = math.floor(now_s / self.step_s)
        wanted = np.arange(last_step - self.steps + 1, last_step + 1, dtype=np.int64)
        slots = wanted % self.steps

        def grid(signals: tuple[Signal, ...]) -> tuple[FloatArray, FloatArray]:
            values = np.zeros((self.steps, len(signals)), dtype=np.float32)
            mask = np.zeros((self.steps, len(signals)), dtype=np.float32)
            for column, signal in enumerate(signals):
                channel = self._channels[signal.key]
                present = (channel.steps[slots] == wanted) & (channel.counts[slots] > 0)
                counts = np.where(present, channel.counts[slots], 1)
                values[:, column] = np.where(present, channel.sums[slots] / counts, 0.0)
                mask[:, column] = present
            return values, mask

        values, mask = grid(SIGNALS)
        context, context_mask = grid(CONTEXT)
        return FeatureWindow(values=values, mask=mask, context=context, context_mask=context_mask)


def clean_grid(values: npt.ArrayLike, signals: tuple[Signal, ...]) -> tuple[FloatArray, FloatArray]:
    """Mask missing (NaN) and implausible entries of a [steps, len(signals)] grid in canonical units."""
    grid = np.asarray(values, dtype=np.float64)
    mask = np.isfinite(grid)
    for column, signal in enumerate(signals):
        with np.errstate(invalid="ignore"):
            mask[:, column] &= (grid[:, column] >= signal.minimum) & (grid[:, column] <= signal.maximum)
    return np.where(mask, grid, 0.0).astype(np.float32), mask.astype(np.float32)


def windows_from_grid(
    *,
    values: FloatArray,
    mask: FloatArray,
    context: FloatArray,
    context_mask: FloatArray,
    end_steps: npt.ArrayLike,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Slice batch inputs [B, WINDOW_STEPS, ...] whose last row is each end step (earlier rows masked)."""
    ends = np.asarray(end_steps, dtype=np.int64)
    offsets = np.arange(-WINDOW_STEPS + 1, 1, dtype=np.int64)
    index = ends[:, None] + offsets[None, :]
    inside = index >= 0
    safe = np.clip(index, 0, None)

    def take(grid: FloatArray) -> FloatArray:
        taken = grid[safe]
        return np.where(inside[:, :, None], taken, 0.0).astype(np.float32)

    return take(values), take(mask), take(context), take(context_mask)
