"""Per-minute patient grids: PhysioNet WFDB numerics records (MIMIC-III matched subset), synthetic patients.

A `PatientGrid` is the training and evaluation form of a patient: one row per minute, one column per
forecast signal (engines.spec.SIGNALS) in canonical units, with masks. WFDB signal names are mapped to
our keys; values <= 0 or NaN mean "no value" in these records; values in a unit we cannot convert stop
the read with an error naming the signal; implausible values (artefacts) are masked by `clean_grid`.

Mapping (WFDB name -> our key):
- `HR` -> hr; `RESP` -> rr; `SpO2` / `%SpO2` -> spo2.
- `ABPMean` / `ABP Mean` / `ABPM` / `ART Mean` -> map (invasive arterial mean).
- `NBPMean` / `NBP Mean` -> map, but only when the record has no invasive arterial mean: a
  non-invasive cuff mean is sparse (every 15-60 min) and is a fallback, never mixed with an arterial line.
- `PULSE` (pleth / arterial pulse rate) -> `pr`, kept in `extra` for `engines eval`; it is not a model
  signal (the models forecast hr).
There is no ventilator context in these records: `context` is all masked.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt

from drivers.plausibility import TABLE
from engines.features import clean_grid, to_canonical
from engines.spec import CONTEXT, SIGNAL_KEYS, SIGNALS, STEP_S, Signal

LOGGER = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

PULSE_RATE = Signal("pr", TABLE["pr"].unit, "pulse rate", *TABLE["pr"].forecast_bounds())
"""The extra `pr` column, checked against the one plausibility table like every signal."""

_NAMES: dict[str, str] = {
    "HR": "hr",
    "RESP": "rr",
    "SPO2": "spo2",
    "%SPO2": "spo2",
    "ABPMEAN": "map",
    "ABP MEAN": "map",
    "ABPM": "map",
    "ART MEAN": "map",
    "ARTMEAN": "map",
    "ETCO2": "etco2",
    "PULSE": "pr",
}
_MAP_FALLBACK = frozenset({"NBPMEAN", "NBP MEAN", "NBPM"})

_UNITS: dict[str, str] = {
    "bpm": "{beats}/min",
    "/min": "/min",
    "1/min": "/min",
    "pm": "{breaths}/min",
    "bpm_resp": "{breaths}/min",
    "brpm": "{breaths}/min",
    "rpm": "{breaths}/min",
    "mmhg": "mmHg",
    "mm[hg]": "mm[Hg]",
    "kpa": "kPa",
    "%": "%",
}
"""WFDB unit strings (case-insensitive) -> the unit strings engines.features.to_canonical knows."""


class RecordError(Exception):
    """A record is missing, unreadable, or holds a signal in a unit we cannot convert."""


@dataclass(frozen=True, slots=True)
class PatientGrid:
    """One patient as a per-minute grid in canonical units (rows: minutes; 0 where masked)."""

    patient_id: str
    values: FloatArray
    """[N, len(SIGNALS)]"""
    mask: FloatArray
    context: FloatArray
    """[N, len(CONTEXT)]"""
    context_mask: FloatArray
    extra: dict[str, tuple[FloatArray, FloatArray]] = field(default_factory=dict)
    """Columns that are not model signals (`pr`): key -> (values [N], mask [N])."""
    step_s: int = STEP_S

    @property
    def minutes(self) -> int:
        """Return the number of rows N."""
        return int(self.values.shape[0])


def _canonical_unit(signal: Signal, unit: str, *, name: str, path: Path) -> float:
    observed = _UNITS.get(unit.strip().lower())
    factor = None if observed is None else to_canonical(signal, value=1.0, unit=observed)
    if factor is None:
        raise RecordError(
            f"{path}: signal {name!r} has unit {unit!r}, which cannot be converted to {signal.unit}"
        )
    return factor


def import_wfdb() -> ModuleType:
    """Import wfdb (an optional extra), silencing the deprecation warnings its import emits.

    wfdb 4.3 builds a pandas table at import time with an argument pandas deprecates; that is the
    library's business, and under `-W error` (our tests) it would turn every import into a failure.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module("wfdb")


def read_numerics_record(path: Path) -> PatientGrid:
    """Read a WFDB minute-numerics record (path without extension) into a PatientGrid."""
    wfdb = import_wfdb()
    try:
        record = wfdb.rdrecord(str(path))
    except (OSError, ValueError, IndexError, KeyError, EOFError) as exc:
        raise RecordError(f"{path}: cannot read WFDB record: {type(exc).__name__}: {exc}") from exc
    signal_values = record.p_signal
    if signal_values is None or not record.sig_name:
        raise RecordError(f"{path}: record has no physical signals")
    raw = np.asarray(signal_values, dtype=np.float64)
    if raw.ndim != 2:
        raise RecordError(f"{path}: unexpected signal shape {raw.shape}")
    rows = raw.shape[0]
    names = [str(name).strip() for name in record.sig_name]
    units = [str(unit) for unit in (record.units or [""] * len(names))]
    has_arterial_mean = any(_NAMES.get(n.upper()) == "map" for n in names)

    by_key: dict[str, Signal] = {s.key: s for s in SIGNALS}
    by_key[PULSE_RATE.key] = PULSE_RATE
    columns: dict[str, npt.NDArray[np.float64]] = {}
    for index, (name, unit) in enumerate(zip(names, units, strict=True)):
        upper = name.upper()
        key = _NAMES.get(upper)
        if key is None and upper in _MAP_FALLBACK and not has_arterial_mean:
            key = "map"
        if key is None or key in columns:
            continue
        signal = by_key[key]
        factor = _canonical_unit(signal, unit, name=name, path=path)
        column = raw[:, index].copy()
        with np.errstate(invalid="ignore"):
            column[~(column > 0)] = np.nan
        columns[key] = column * factor
        LOGGER.debug("%s: %s (%s) -> %s", path.name, name, unit, key)

    grid = np.full((rows, len(SIGNALS)), np.nan)
    for column_index, key in enumerate(SIGNAL_KEYS):
        if key in columns:
            grid[:, column_index] = columns[key]
    values, mask = clean_grid(grid, SIGNALS)
    extra: dict[str, tuple[FloatArray, FloatArray]] = {}
    if "pr" in columns:
        pr_values, pr_mask = clean_grid(columns["pr"][:, None], (PULSE_RATE,))
        extra["pr"] = (pr_values[:, 0], pr_mask[:, 0])
    step_s = round(1.0 / float(record.fs)) if record.fs else STEP_S
    if step_s != STEP_S:
        raise RecordError(f"{path}: sampled every {step_s} s, expected minute numerics ({STEP_S} s)")
    return PatientGrid(
        patient_id=str(record.record_name),
        values=values,
        mask=mask,
        context=np.zeros((rows, len(CONTEXT)), dtype=np.float32),
        context_mask=np.zeros((rows, len(CONTEXT)), dtype=np.float32),
        extra=extra,
        step_s=STEP_S,
    )


def read_concatenated_records(
    path: Path, *, record_minutes: int, separator_minutes: int
) -> list[PatientGrid]:
    """Split a WFDB record of equal-length records joined by "no value" separators into one grid each.

    The layout must hold exactly (N x (record + separator) rows, every separator row without a value):
    anything else means the file is not what its description says, and the read stops with an error.
    Grid ids are `<record name>#<index>` (0-based, in file order).
    """
    whole = read_numerics_record(path)
    period = record_minutes + separator_minutes
    if whole.minutes % period:
        raise RecordError(
            f"{path}: {whole.minutes} rows is not a multiple of {record_minutes}+{separator_minutes}"
        )
    count = whole.minutes // period
    is_separator = (np.arange(whole.minutes) % period) >= record_minutes
    if whole.mask[is_separator].any():
        raise RecordError(
            f"{path}: a separator row holds a value: the records are not {record_minutes} min each"
        )
    grids: list[PatientGrid] = []
    for index in range(count):
        rows = slice(index * period, index * period + record_minutes)
        grids.append(
            PatientGrid(
                patient_id=f"{whole.patient_id}#{index:03d}",
                values=whole.values[rows].copy(),
                mask=whole.mask[rows].copy(),
                context=whole.context[rows].copy(),
                context_mask=whole.context_mask[rows].copy(),
                step_s=whole.step_s,
            )
        )
    return grids
