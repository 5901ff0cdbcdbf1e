"""The forecasting contract every model, backend and caller shares: signals, window, horizons, I/O.

A model is an ONNX graph with these named inputs and outputs; a backend only needs this file to run
any shipped model, and the training pipeline exports exactly this shape. Values enter in physical
units (the units below) with 0 where the mask says missing; normalization lives inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from drivers.plausibility import TABLE

STEP_S: Final = 60
"""One window step: the resolution of the forecast inputs (the ICU numerics records are per minute)."""
WINDOW_STEPS: Final = 30
"""30 min of history at STEP_S."""


@dataclass(frozen=True, slots=True)
class Signal:
    """One forecast signal: our key, its canonical unit and the plausible physiological range."""

    key: str
    unit: str
    label: str
    minimum: float
    maximum: float
    """Values outside [minimum, maximum] are artefacts: masked as invalid, never fed to a model."""


def _signal(key: str, label: str) -> Signal:
    """Return the signal with its unit and forecast input range from the one plausibility table."""
    row = TABLE[key]
    return Signal(key, row.unit, label, *row.forecast_bounds())


SIGNALS: Final = (
    _signal("hr", "heart rate"),
    _signal("spo2", "SpO2"),
    _signal("map", "mean arterial pressure"),
    _signal("rr", "respiratory rate"),
    _signal("etco2", "end-tidal CO2"),
)
CONTEXT: Final = (
    _signal("fio2", "FiO2"),
    _signal("peep", "PEEP"),
)
SIGNAL_KEYS: Final = tuple(s.key for s in SIGNALS)


@dataclass(frozen=True, slots=True)
class StandIn:
    """A second source of a forecast signal, used only while the signal itself has no fresh value."""

    signal: str
    source: Signal


STAND_INS: Final = (StandIn("hr", _signal("pr", "pulse rate")),)
"""A bed without a fresh heart rate (no monitor, only a ventilator's or a pulse oximeter's pulse rate)
gets its `hr` forecast from `pr`. The window is then wholly pr, never hr and pr mixed, and the forecast
says so (`source`); while hr is fresh (a valid value within FRESH_WITHIN_STEPS) hr is used."""
CONTEXT_KEYS: Final = tuple(s.key for s in CONTEXT)

HORIZONS_MIN: Final = (1, 5, 10, 15)
QUANTILES: Final = (0.1, 0.5, 0.9)


@dataclass(frozen=True, slots=True)
class EventDefinition:
    """A predicted event: the signal crossing below a threshold at any step within the horizon."""

    key: str
    signal: str
    below: float
    description: str


EVENTS: Final = (
    EventDefinition("map_below_65", "map", 65.0, "MAP < 65 mmHg at any minute within the horizon"),
    EventDefinition("spo2_below_90", "spo2", 90.0, "SpO2 < 90 % at any minute within the horizon"),
)

EVENT_ALARM_THRESHOLD: Final = 0.7
"""The default probability at which a predictive alarm is raised (edge's `[alarms.predictive] threshold`):
the operating point the training gate judges an event head at."""

# ONNX I/O names and shapes (B = beds in the batch, dynamic).
INPUT_VALUES: Final = "values"
"""float32 [B, WINDOW_STEPS, len(SIGNALS)]: physical units, 0 where missing; the last step is 'now'."""
INPUT_MASK: Final = "mask"
"""float32 [B, WINDOW_STEPS, len(SIGNALS)]: 1 where the value is valid, else 0."""
INPUT_CONTEXT: Final = "context"
"""float32 [B, WINDOW_STEPS, len(CONTEXT)]: ventilator context, 0 where missing."""
INPUT_CONTEXT_MASK: Final = "context_mask"
"""float32 [B, WINDOW_STEPS, len(CONTEXT)]."""
OUTPUT_QUANTILES: Final = "quantiles"
"""float32 [B, len(SIGNALS), len(HORIZONS_MIN), len(QUANTILES)]: physical units."""
OUTPUT_EVENTS: Final = "event_probability"
"""float32 [B, len(EVENTS), len(HORIZONS_MIN)]: probability in [0, 1]."""

INPUT_NAMES: Final = (INPUT_VALUES, INPUT_MASK, INPUT_CONTEXT, INPUT_CONTEXT_MASK)
OUTPUT_NAMES: Final = (OUTPUT_QUANTILES, OUTPUT_EVENTS)
MAX_BATCH: Final = 64
"""Largest batch the engines are built and tested for (the TensorRT profile maximum)."""

FRESH_WITHIN_STEPS: Final = 5
"""A signal is forecast only when it has a valid value within the last 5 steps (5 min)."""
