"""Feature windows: the last WINDOW_STEPS steps of every signal, with masks, in canonical units.

Two producers, one shape. At run time `WardHistory` is fed each observation as it arrives and keeps
one ring of per-step sums for all beds, so building every bed's window each tick is a few array
operations, never a rescan of history nor a loop over beds.
For training and evaluation, `windows_from_grid` slices a per-minute grid (a WFDB numerics record, a
synthetic patient). In both, a step's value is the mean of its valid observations; a value in an
unknown unit or outside the signal's plausible range is counted and masked, never fed to a model.
At run time a signal without a fresh value takes its stand-in's window (`STAND_INS`: pr for hr) when
that is fresh, and the windows say which beds did (`FeatureWindows.stand_in`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engines.spec import (
    CONTEXT,
    FRESH_WITHIN_STEPS,
    SIGNAL_KEYS,
    SIGNALS,
    STAND_INS,
    STEP_S,
    WINDOW_STEPS,
    Signal,
)

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


BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class FeatureWindows:
    """Every bed's model input at one tick: rows are beds, then steps (oldest first, the last holds 'now')."""

    values: FloatArray
    """[beds, WINDOW_STEPS, len(SIGNALS)], 0 where masked."""
    mask: FloatArray
    context: FloatArray
    """[beds, WINDOW_STEPS, len(CONTEXT)]."""
    context_mask: FloatArray
    stand_in: BoolArray
    """[beds, len(SIGNALS)]: True where the signal's window holds its stand-in's readings (`STAND_INS`)."""

    @property
    def beds(self) -> int:
        """Return how many beds the windows hold."""
        return int(self.values.shape[0])

    def fresh(self, *, within_steps: int = FRESH_WITHIN_STEPS) -> BoolArray:
        """Return [beds, len(SIGNALS)]: whether the signal has a valid value within the last steps."""
        return np.asarray(self.mask[:, -within_steps:, :].any(axis=1))

    def last_valid_steps_ago(self) -> IntArray:
        """Return [beds, len(SIGNALS)]: how many steps ago the last valid value was (-1: none in window)."""
        valid = self.mask > 0
        from_end = np.argmax(valid[:, ::-1, :], axis=1)
        return np.where(valid.any(axis=1), from_end, -1).astype(np.int64)

    def valid_steps(self) -> IntArray:
        """Return [beds, len(SIGNALS)]: how many steps of the window hold a valid value."""
        return np.asarray(np.count_nonzero(self.mask, axis=1), dtype=np.int64)


_CHANNELS: tuple[Signal, ...] = (*SIGNALS, *CONTEXT, *(stand_in.source for stand_in in STAND_INS))
"""The ring's channel axis: the forecast signals, the ventilator context, then the stand-in sources."""
_CHANNEL_INDEX = {signal.key: (index, signal) for index, signal in enumerate(_CHANNELS)}
_STAND_IN_COLUMNS = tuple(
    (SIGNAL_KEYS.index(stand_in.signal), _CHANNEL_INDEX[stand_in.source.key][0]) for stand_in in STAND_INS
)
"""(signal column, stand-in channel) pairs."""


class WardHistory:
    """The recent history of every bed, kept as one ring of per-step sums [beds, channels, steps].

    `observe` adds one observation to its bed's slot (incremental, bounded); `windows` reads every
    bed's window at once with one gather per ring array, so a tick costs a few array operations
    whatever the number of beds. Each bed keeps its own counters of rejected observations.
    """

    def __init__(self, *, beds: Iterable[str], step_s: float = STEP_S, steps: int = WINDOW_STEPS) -> None:
        self.beds = tuple(beds)
        if len(set(self.beds)) != len(self.beds):
            raise ValueError(f"bed ids must be unique: {self.beds}")
        self.step_s = step_s
        self.steps = steps
        self._bed_index = {bed: index for index, bed in enumerate(self.beds)}
        shape = (len(self.beds), len(_CHANNELS), steps)
        self._sums = np.zeros(shape, dtype=np.float64)
        self._counts = np.zeros(shape, dtype=np.int64)
        self._held = np.full(shape, -1, dtype=np.int64)
        """Absolute step number held in each ring slot (-1: empty)."""
        self._rejected = [Counter[str]() for _ in self.beds]

    def rejected(self, *, bed: str) -> Counter[str]:
        """Return the bed's observations not used, by reason (`unit`, `implausible`, `invalid`, `late`)."""
        return self._rejected[self._bed_index[bed]]

    def observe(
        self, *, bed: str, key: str, value: float | None, unit: str, valid: bool, at_s: float
    ) -> bool:
        """Add one observation of a bed at wall time at_s (epoch seconds); return whether it was used."""
        row = self._bed_index[bed]
        channel = _CHANNEL_INDEX.get(key)
        if channel is None:
            return False
        column, signal = channel
        rejected = self._rejected[row]
        if not valid or value is None:
            rejected["invalid"] += 1
            return False
        canonical = to_canonical(signal, value=value, unit=unit)
        if canonical is None:
            rejected["unit"] += 1
            LOGGER.debug("%s in unit %r is not convertible to %s", key, unit, signal.unit)
            return False
        if not plausible(signal, canonical):
            rejected["implausible"] += 1
            return False
        step = math.floor(at_s / self.step_s)
        slot = (row, column, step % self.steps)
        held = int(self._held[slot])
        if held > step:
            rejected["late"] += 1
            return False
        if held != step:
            self._held[slot] = step
            self._sums[slot] = 0.0
            self._counts[slot] = 0
        self._sums[slot] += canonical
        self._counts[slot] += 1
        return True

    def _steps(
        self, beds: slice | IntArray, channels: slice | int, wanted: IntArray, slots: IntArray
    ) -> tuple[npt.NDArray[np.float64], BoolArray]:
        """Return the means and presence of the wanted steps of some beds and channels (steps last)."""
        counts = self._counts[beds, channels][..., slots]
        present = (self._held[beds, channels][..., slots] == wanted) & (counts > 0)
        means = np.divide(
            self._sums[beds, channels][..., slots], counts, out=np.zeros(counts.shape), where=present
        )
        return means, present

    def windows(self, *, now_s: float) -> FeatureWindows:
        """Return every bed's window ending with the step that holds now_s."""
        last_step = math.floor(now_s / self.step_s)
        wanted = np.arange(last_step - self.steps + 1, last_step + 1, dtype=np.int64)
        slots = wanted % self.steps
        split = len(SIGNALS)
        means, present = self._steps(slice(None), slice(None, split + len(CONTEXT)), wanted, slots)
        stand_in = np.zeros((len(self.beds), split), dtype=np.bool_)
        recent = slice(-FRESH_WITHIN_STEPS, None)
        for column, source in _STAND_IN_COLUMNS:
            # The whole window from one source: a bed whose signal is not fresh takes the stand-in's
            # window when that is fresh, never a mix of the two. Only those beds read the stand-in.
            latest = slots[recent]
            source_fresh = (
                (self._held[:, source, latest] == wanted[recent]) & (self._counts[:, source, latest] > 0)
            ).any(axis=1)
            use = source_fresh & ~present[:, column, recent].any(axis=1)
            if use.any():
                beds = np.flatnonzero(use)
                means[beds, column], present[beds, column] = self._steps(beds, source, wanted, slots)
                stand_in[:, column] = use

        def rows(grid: npt.NDArray[np.generic], channels: slice) -> FloatArray:
            """[beds, channels, steps] -> contiguous float32 [beds, steps, channels]."""
            return np.ascontiguousarray(grid[:, channels].transpose(0, 2, 1), dtype=np.float32)

        return FeatureWindows(
            values=rows(means, slice(None, split)),
            mask=rows(present, slice(None, split)),
            context=rows(means, slice(split, None)),
            context_mask=rows(present, slice(split, None)),
            stand_in=stand_in,
        )


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
