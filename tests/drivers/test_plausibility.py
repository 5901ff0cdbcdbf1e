"""The one plausibility table: a row for every key a driver produces, sane bounds, exact unit checks."""

from __future__ import annotations

import math

import pytest

from drivers.medibus.codes import DEVICE_SETTINGS, MEASURED_CP1, ParameterSpec
from drivers.plausibility import TABLE, Implausibility, PlausibleRange, check
from drivers.vocabulary import TERMS
from engines.spec import CONTEXT, SIGNALS

UCUM_UNITS = {"mbar", "mL", "L/min", "mL/min", "%", "mm[Hg]", "kPa", "/min", "1", "/min/L", "L/bar", "s"}
UCUM_UNITS |= {"mbar/(L/s)", "Cel"}
MONITOR_KEYS = set(TERMS)


@pytest.mark.parametrize("spec", [*MEASURED_CP1.values(), *DEVICE_SETTINGS.values()], ids=lambda s: s.key)
def test_every_medibus_key_has_a_row_in_its_unit(spec: ParameterSpec) -> None:
    key, unit = spec.key, spec.unit
    assert key in TABLE, f"MEDIBUS produces {key!r} but the plausibility table has no row for it"
    assert TABLE[key].unit == unit, f"{key}: driver unit {unit!r}, table unit {TABLE[key].unit!r}"


def test_monitor_keys_and_forecast_signals_have_rows() -> None:
    assert set(TABLE) >= MONITOR_KEYS
    for signal in (*SIGNALS, *CONTEXT):
        row = TABLE[signal.key]
        assert (signal.unit, (signal.minimum, signal.maximum)) == (row.unit, row.forecast_bounds()), (
            f"engines/spec.py's {signal.key} must come from the one table"
        )


@pytest.mark.parametrize("row", TABLE.values(), ids=lambda r: r.key)
def test_forecast_input_range_lies_inside_the_possible_range(row: PlausibleRange) -> None:
    low, high = row.forecast_bounds()
    assert row.minimum <= low < high <= row.maximum


@pytest.mark.parametrize("row", TABLE.values(), ids=lambda r: r.key)
def test_rows_are_sane(row: PlausibleRange) -> None:
    key, unit = row.key, row.unit
    minimum, maximum = row.minimum, row.maximum
    assert TABLE[key] is row
    assert unit in UCUM_UNITS
    assert math.isfinite(minimum)
    assert math.isfinite(maximum)
    assert minimum < maximum
    assert len(row.rationale) > 10
    if unit == "%":
        assert minimum >= 0.0, "a percentage cannot leave 0-100"
        assert maximum <= 100.0, "a percentage cannot leave 0-100"
    if key.startswith(("vt", "mv", "rr", "hr", "pr", "spo2", "leak", "vco2", "etco2")):
        assert minimum >= 0.0, "a volume, rate or concentration cannot be negative"


@pytest.mark.parametrize(
    ("key", "value", "unit"),
    [
        ("fio2", 9421.0, "%"),  # issue 6
        ("vt", 9352.0, "mL"),  # issue 6
        ("rr", 6618.0, "/min"),  # issue 6
        ("spo2", 100.1, "%"),
        ("hr", -1.0, "/min"),
        ("fio2", 17.0, "%"),
        ("hr", math.nan, "/min"),
        ("ppeak", math.inf, "mbar"),
    ],
)
def test_impossible_values_are_out_of_range(key: str, value: float, unit: str) -> None:
    assert check(key=key, value=value, unit=unit) is Implausibility.OUT_OF_RANGE


@pytest.mark.parametrize(
    ("key", "value", "unit"),
    [
        ("spo2", 40.0, "%"),  # a deep desaturation is real: hiding it would be the safety bug
        ("hr", 0.0, "/min"),  # asystole
        ("etco2", 0.0, "mm[Hg]"),  # disconnection / apnoea
        ("fio2", 100.0, "%"),  # bounds are inclusive
        ("fio2", 21.0, "%"),
        ("vt", 3.0, "mL"),  # a neonate
        ("paw", -12.0, "mbar"),  # a strong inspiratory effort
        ("temp", 28.0, "Cel"),  # therapeutic / accidental hypothermia
    ],
)
def test_extreme_but_real_values_pass(key: str, value: float, unit: str) -> None:
    assert check(key=key, value=value, unit=unit) is None


def test_a_value_in_another_unit_or_of_an_unknown_key_is_rejected() -> None:
    assert check(key="etco2", value=5.1, unit="kPa") is Implausibility.WRONG_UNIT
    assert check(key="ppeak", value=22.0, unit="cm[H2O]") is Implausibility.WRONG_UNIT
    assert check(key="no_such_key", value=1.0, unit="1") is Implausibility.UNKNOWN_KEY
