"""The one plausibility table: per key, its canonical UCUM unit and the range a real reading can have.

A checksum only proves that bytes arrived as sent; MEDIBUS's 8-bit sum lets structured line noise
through (FiO2 9421 %, VT 9352 mL). So every value is checked here before it can count as measured:
the edge twin (the single entry point to the twin) marks a value outside its key's range, in another
unit, or of a key without a row as not valid; the forecasting engines mask the same values.

The bounds are the *possible* range, not the normal one: adult and paediatric ICU (neonates included
for ventilator volumes and rates) at the physiological extremes, capped by what the measuring principle
or a ventilator can report. A value at a critical extreme (SpO2 40 %, HR 0 in asystole, etCO2 0 after
a disconnection) is real and must stay valid: alarming on it is the alarm system's job, hiding it
would be a safety bug. Only what no patient and no device can produce is rejected. Bounds are
inclusive; NaN and infinities are never plausible.

The forecasting engines take their signals' units and ranges from here too. A forecast signal's row
may carry a narrower *forecast input* range: a per-minute model input outside it (SpO2 36 %, pulse
277/min in a numerics record) is far more often an artefact than a patient, so the engines mask it,
while the twin still shows it as the valid reading it may be. The forecast range always lies inside
the possible range.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class Implausibility(enum.StrEnum):
    """Why a reading failed the table (the `invalid_reason` a central station sees)."""

    OUT_OF_RANGE = "implausible"
    WRONG_UNIT = "unit"
    UNKNOWN_KEY = "unknown_key"


@dataclass(frozen=True, slots=True, kw_only=True)
class PlausibleRange:
    """One key's canonical unit and its inclusive possible range, with why the bounds are what they are."""

    key: str
    unit: str
    minimum: float
    maximum: float
    rationale: str
    forecast_minimum: float | None = None
    """Lower bound of a forecast model input, when narrower than the possible range."""
    forecast_maximum: float | None = None

    def forecast_bounds(self) -> tuple[float, float]:
        """Return the inclusive range a forecast model input must lie in."""
        low = self.minimum if self.forecast_minimum is None else self.forecast_minimum
        high = self.maximum if self.forecast_maximum is None else self.forecast_maximum
        return low, high


def _rows(*rows: PlausibleRange) -> Mapping[str, PlausibleRange]:
    table = {row.key: row for row in rows}
    if len(table) != len(rows):
        raise ValueError("a key appears twice in the plausibility table")
    return MappingProxyType(table)


_R = PlausibleRange
_PRESSURE_VENT = "ventilator airway-pressure measuring range (Pmax settable up to ~100 mbar, sensor to 120)"
_VOLUME_ML = "tidal volume: neonates from ~2 mL, adults to ~2 L; ventilator measuring range to 4000 mL"
_MINUTE_VOLUME = "minute volume: ventilator measuring range 0-100 L/min (apnoea is 0)"
_RATE_VENT = "respiratory rate: apnoea 0, neonatal conventional ventilation up to 150/min"
_O2_FRACTION = "oxygen concentration: cannot exceed 100 %, not below air minus sensor tolerance (18 %)"
_CARDIAC_RATE = "heart/pulse rate: asystole 0, neonatal SVT and the monitors' range up to 350/min"
_ART_PRESSURE = "invasive/non-invasive arterial pressure: transducer and cuff range 0-300 mmHg"
_PULMONARY_PRESSURE = "pulmonary artery pressure: slightly negative on inspiration, severe PH to ~120 mmHg"

TABLE: Mapping[str, PlausibleRange] = _rows(
    # ---- ventilator measured values (MEDIBUS codepage 1) ------------------------------------------------
    _R(
        key="paw",
        unit="mbar",
        minimum=-30.0,
        maximum=120.0,
        rationale=_PRESSURE_VENT + "; negative on effort",
    ),
    _R(key="ppeak", unit="mbar", minimum=0.0, maximum=120.0, rationale=_PRESSURE_VENT),
    _R(key="pmean", unit="mbar", minimum=0.0, maximum=100.0, rationale=_PRESSURE_VENT),
    _R(key="pplat", unit="mbar", minimum=0.0, maximum=100.0, rationale=_PRESSURE_VENT),
    _R(
        key="peep",
        unit="mbar",
        minimum=0.0,
        maximum=50.0,
        rationale="PEEP settable up to 35-50 mbar",
        forecast_maximum=30.0,
    ),
    _R(key="peepi", unit="mbar", minimum=0.0, maximum=50.0, rationale="intrinsic PEEP below settable PEEP"),
    _R(
        key="pmin",
        unit="mbar",
        minimum=-30.0,
        maximum=60.0,
        rationale="minimum airway pressure: negative on strong effort, at most PEEP-level pressures",
    ),
    _R(
        key="p01",
        unit="mbar",
        minimum=-30.0,
        maximum=30.0,
        rationale="occlusion pressure P0.1: |P0.1| above ~20 mbar is not seen; sign varies by device",
    ),
    _R(key="vt", unit="mL", minimum=0.0, maximum=4000.0, rationale=_VOLUME_ML),
    _R(key="vti", unit="mL", minimum=0.0, maximum=4000.0, rationale=_VOLUME_ML),
    _R(key="vte_mand", unit="mL", minimum=0.0, maximum=4000.0, rationale=_VOLUME_ML),
    _R(key="vte_spon", unit="mL", minimum=0.0, maximum=4000.0, rationale=_VOLUME_ML),
    _R(key="mv", unit="L/min", minimum=0.0, maximum=100.0, rationale=_MINUTE_VOLUME),
    _R(key="mvi", unit="L/min", minimum=0.0, maximum=100.0, rationale=_MINUTE_VOLUME),
    _R(key="mve", unit="L/min", minimum=0.0, maximum=100.0, rationale=_MINUTE_VOLUME),
    _R(key="mvspon", unit="L/min", minimum=0.0, maximum=100.0, rationale=_MINUTE_VOLUME),
    _R(
        key="leak",
        unit="mL/min",
        minimum=0.0,
        maximum=200000.0,
        rationale="leakage minute volume: NIV mask leaks reach ~100 L/min; bounded by the flow sensor",
    ),
    _R(key="leak_pct", unit="%", minimum=0.0, maximum=100.0, rationale="a fraction of the delivered volume"),
    _R(
        key="cdyn",
        unit="L/bar",
        minimum=0.0,
        maximum=500.0,
        rationale="dynamic compliance (L/bar = mL/mbar): neonates ~1, healthy adults ~100, never 500",
    ),
    _R(
        key="r",
        unit="mbar/(L/s)",
        minimum=0.0,
        maximum=1000.0,
        rationale="airway resistance: adults 5-20, neonatal tubes and severe obstruction a few hundred",
    ),
    _R(
        key="vco2",
        unit="mL/min",
        minimum=0.0,
        maximum=1500.0,
        rationale="CO2 production: ~200 mL/min adult at rest, several times that in sepsis/fever",
    ),
    _R(key="fio2", unit="%", minimum=18.0, maximum=100.0, rationale=_O2_FRACTION, forecast_minimum=21.0),
    _R(key="o2", unit="%", minimum=18.0, maximum=100.0, rationale=_O2_FRACTION),
    _R(key="eto2", unit="%", minimum=0.0, maximum=100.0, rationale="end-tidal O2 fraction"),
    _R(
        key="etco2",
        unit="mm[Hg]",
        minimum=0.0,
        maximum=150.0,
        rationale="capnograph range 0-150 mmHg; 0 is real (apnoea, disconnection, arrest)",
        forecast_minimum=5.0,
        forecast_maximum=120.0,
    ),
    _R(key="etco2_pct", unit="%", minimum=0.0, maximum=20.0, rationale="capnograph range (150 mmHg ~ 20 %)"),
    _R(
        key="etco2_kpa",
        unit="kPa",
        minimum=0.0,
        maximum=20.0,
        rationale="capnograph range (150 mmHg = 20 kPa)",
    ),
    _R(
        key="spo2",
        unit="%",
        minimum=0.0,
        maximum=100.0,
        rationale="a saturation: 0-100 % by definition; deep desaturations are real and must stay valid",
        forecast_minimum=50.0,
    ),
    _R(
        key="hr",
        unit="/min",
        minimum=0.0,
        maximum=350.0,
        rationale=_CARDIAC_RATE,
        forecast_minimum=20.0,
        forecast_maximum=250.0,
    ),
    _R(
        key="pr",
        unit="/min",
        minimum=0.0,
        maximum=350.0,
        rationale=_CARDIAC_RATE,
        forecast_minimum=20.0,
        forecast_maximum=250.0,
    ),
    _R(key="ie_i", unit="1", minimum=0.0, maximum=100.0, rationale="I:E part: ventilators set 1:50 to 50:1"),
    _R(key="ie_e", unit="1", minimum=0.0, maximum=100.0, rationale="I:E part: ventilators set 1:50 to 50:1"),
    _R(
        key="rsbi",
        unit="/min/L",
        minimum=0.0,
        maximum=5000.0,
        rationale="RR/VT: 150/min over 0.03 L is 5000; weaning cut-off is ~105",
    ),
    _R(
        key="rr",
        unit="/min",
        minimum=0.0,
        maximum=150.0,
        rationale=_RATE_VENT,
        forecast_minimum=2.0,
        forecast_maximum=70.0,
    ),
    _R(key="rr_mand", unit="/min", minimum=0.0, maximum=150.0, rationale=_RATE_VENT),
    _R(key="rr_spon", unit="/min", minimum=0.0, maximum=150.0, rationale=_RATE_VENT),
    _R(key="rr_co2", unit="/min", minimum=0.0, maximum=150.0, rationale=_RATE_VENT),
    _R(key="rr_flow", unit="/min", minimum=0.0, maximum=150.0, rationale=_RATE_VENT),
    # ---- ventilator settings (MEDIBUS device settings) ----------------------------------------------
    _R(key="fio2_set", unit="%", minimum=21.0, maximum=100.0, rationale="a blender delivers air to pure O2"),
    _R(key="flow_set", unit="L/min", minimum=0.0, maximum=200.0, rationale="ventilator peak flow capability"),
    _R(key="vt_set", unit="mL", minimum=0.0, maximum=4000.0, rationale=_VOLUME_ML),
    _R(key="ti_set", unit="s", minimum=0.0, maximum=60.0, rationale="inspiratory time settings up to ~10 s"),
    _R(key="te_set", unit="s", minimum=0.0, maximum=60.0, rationale="expiratory time at the lowest rates"),
    _R(
        key="ie_i_set",
        unit="1",
        minimum=0.0,
        maximum=100.0,
        rationale="I:E part: ventilators set 1:50 to 50:1",
    ),
    _R(
        key="ie_e_set",
        unit="1",
        minimum=0.0,
        maximum=100.0,
        rationale="I:E part: ventilators set 1:50 to 50:1",
    ),
    _R(key="rr_set", unit="/min", minimum=0.0, maximum=150.0, rationale=_RATE_VENT),
    _R(key="peep_set", unit="mbar", minimum=0.0, maximum=50.0, rationale="PEEP settable up to 35-50 mbar"),
    _R(key="psupp_set", unit="mbar", minimum=0.0, maximum=100.0, rationale=_PRESSURE_VENT),
    _R(key="pmax_set", unit="mbar", minimum=0.0, maximum=120.0, rationale=_PRESSURE_VENT),
    _R(key="pinsp_set", unit="mbar", minimum=0.0, maximum=120.0, rationale=_PRESSURE_VENT),
    # ---- patient monitor values (monitor drivers) -------------------------------------------------------
    _R(
        key="map",
        unit="mm[Hg]",
        minimum=0.0,
        maximum=300.0,
        rationale=_ART_PRESSURE,
        forecast_minimum=20.0,
        forecast_maximum=200.0,
    ),
    _R(key="abp_sys", unit="mm[Hg]", minimum=0.0, maximum=300.0, rationale=_ART_PRESSURE),
    _R(key="abp_dia", unit="mm[Hg]", minimum=0.0, maximum=300.0, rationale=_ART_PRESSURE),
    _R(key="abp_mean", unit="mm[Hg]", minimum=0.0, maximum=300.0, rationale=_ART_PRESSURE),
    _R(key="nbp_sys", unit="mm[Hg]", minimum=0.0, maximum=300.0, rationale=_ART_PRESSURE),
    _R(key="nbp_dia", unit="mm[Hg]", minimum=0.0, maximum=300.0, rationale=_ART_PRESSURE),
    _R(key="nbp_mean", unit="mm[Hg]", minimum=0.0, maximum=300.0, rationale=_ART_PRESSURE),
    _R(key="pap_sys", unit="mm[Hg]", minimum=-10.0, maximum=150.0, rationale=_PULMONARY_PRESSURE),
    _R(key="pap_dia", unit="mm[Hg]", minimum=-10.0, maximum=150.0, rationale=_PULMONARY_PRESSURE),
    _R(key="pap_mean", unit="mm[Hg]", minimum=-10.0, maximum=150.0, rationale=_PULMONARY_PRESSURE),
    _R(
        key="icp",
        unit="mm[Hg]",
        minimum=-20.0,
        maximum=200.0,
        rationale="intracranial pressure: negative when drained, transducer range to 200 mmHg",
    ),
    _R(
        key="cvp",
        unit="mm[Hg]",
        minimum=-20.0,
        maximum=100.0,
        rationale="central venous pressure: negative on deep inspiration, transducer range to 100",
    ),
    _R(
        key="temp",
        unit="Cel",
        minimum=10.0,
        maximum=45.0,
        rationale="body temperature: accidental hypothermia survivors below 15 C, hyperthermia to ~44 C",
    ),
    _R(key="temp_2", unit="Cel", minimum=10.0, maximum=45.0, rationale="second temperature site: as temp"),
    _R(key="temp_blood", unit="Cel", minimum=10.0, maximum=45.0, rationale="blood temperature: as temp"),
    _R(
        key="imco2",
        unit="mm[Hg]",
        minimum=0.0,
        maximum=150.0,
        rationale="inspired CO2: capnograph range (rebreathing raises it above 0)",
    ),
    _R(
        key="pi", unit="%", minimum=0.0, maximum=30.0, rationale="perfusion index: oximeters report 0.02-20 %"
    ),
)


def check(*, key: str, value: float, unit: str) -> Implausibility | None:
    """Return why a reading is not plausible, or None when it is (finite, right unit, inside the range)."""
    row = TABLE.get(key)
    if row is None:
        return Implausibility.UNKNOWN_KEY
    if unit != row.unit:
        return Implausibility.WRONG_UNIT
    if not (math.isfinite(value) and row.minimum <= value <= row.maximum):
        return Implausibility.OUT_OF_RANGE
    return None
