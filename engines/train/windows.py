"""Training windows: every forecast minute of a patient grid with its targets and event labels.

Shared by the forecaster's pipeline and the event head (engines.train.events), which both train on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from engines import metrics
from engines.features import windows_from_grid
from engines.records import PatientGrid
from engines.spec import EVENTS, FRESH_WITHIN_STEPS, HORIZONS_MIN, SIGNAL_KEYS, SIGNALS, STEP_S

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Windows:
    """Training windows with their targets (arrays over M windows)."""

    values: F32
    mask: F32
    context: F32
    context_mask: F32
    target: F32
    """[M, S, H]"""
    target_mask: F32
    """[M, S, H]: target valid and signal fresh at t."""
    event_label: F32
    """[M, E, H]"""
    event_mask: F32

    def arrays(self) -> list[F32]:
        """Return every array in field order (the order the constructor takes them)."""
        return [getattr(self, f.name) for f in fields(self)]


def build_windows(grids: Sequence[PatientGrid]) -> Windows:
    """Slice every forecast minute of every grid with its targets and event labels."""
    parts: list[tuple[F32, ...]] = []
    for grid in grids:
        ends = np.arange(max(grid.minutes - 1, 0), dtype=np.int64)
        if not ends.size:
            continue
        values, mask, context, context_mask = windows_from_grid(
            values=grid.values,
            mask=grid.mask,
            context=grid.context,
            context_mask=grid.context_mask,
            end_steps=ends,
        )
        fresh = mask[:, -FRESH_WITHIN_STEPS:, :].max(axis=1) > 0
        target = np.zeros((ends.size, len(SIGNALS), len(HORIZONS_MIN)), np.float32)
        target_mask = np.zeros_like(target)
        labels = np.zeros((ends.size, len(EVENTS), len(HORIZONS_MIN)), np.float32)
        labeled = np.zeros_like(labels)
        for h_index, horizon in enumerate(HORIZONS_MIN):
            steps = horizon * 60 // STEP_S
            index = ends + steps
            inside = index < grid.minutes
            safe = np.where(inside, index, 0)
            target[:, :, h_index] = grid.values[safe]
            target_mask[:, :, h_index] = (grid.mask[safe] > 0) & inside[:, None] & fresh
            for e_index, event in enumerate(EVENTS):
                column = SIGNAL_KEYS.index(event.signal)
                label, has_label = metrics.event_labels(
                    grid.values[:, column],
                    grid.mask[:, column],
                    below=event.below,
                    end_steps=ends,
                    horizon_steps=steps,
                )
                labels[:, e_index, h_index] = label
                labeled[:, e_index, h_index] = has_label & fresh[:, column]
        parts.append((values, mask, context, context_mask, target, target_mask, labels, labeled))
    stacked = [np.concatenate([p[i] for p in parts]).astype(np.float32) for i in range(8)]
    return Windows(*stacked)


def concat_windows(a: Windows, b: Windows, *, repeat_a: int) -> Windows:
    """Return `a` repeated `repeat_a` times followed by `b` (real windows weighted over synthetic)."""
    return Windows(
        *[
            np.concatenate([*([x] * repeat_a), y]).astype(np.float32)
            for x, y in zip(a.arrays(), b.arrays(), strict=True)
        ]
    )
