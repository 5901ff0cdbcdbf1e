"""Tests of MEDIBUS payload decoding: measured data, settings, alarms, text messages, identification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from drivers.base import AlarmPriority, LinkCounters
from drivers.medibus.codes import DEVICE_SETTINGS, MEASURED_CP1, alarm_priority
from drivers.medibus.device import (
    EXTRA_MALFORMED,
    EXTRA_UNKNOWN_CODES,
    DeviceIdentification,
    format_value,
    parse_alarms,
    parse_identification,
    parse_measurements,
    parse_settings,
    parse_text_messages,
)

VECTORS = json.loads(
    (Path(__file__).parents[2] / "data" / "medibus" / "vectors.json").read_text(encoding="utf-8")
)


@pytest.mark.parametrize("vector", VECTORS["measurements"], ids=lambda v: v["name"])
def test_measurement_vectors(vector: dict[str, Any]) -> None:
    got = parse_measurements(vector["payload"].encode("latin-1"), counters=LinkCounters())
    assert [
        {"key": m.key, "value": m.value, "unit": m.unit, "device_code": m.device_code, "mdc_code": m.mdc_code}
        for m in got
    ] == vector["expected"]
    assert all(m.valid for m in got)


def test_measurements_blank_dashes_and_text_are_invalid_not_errors() -> None:
    counters = LinkCounters()
    got = parse_measurements(b"D6    88----F0 abcB9 6.7E6nan ", counters=counters)
    assert [(m.key, m.value, m.valid) for m in got] == [
        ("rr", None, False),
        ("vt", None, False),
        ("fio2", None, False),
        ("mv", 6.7, True),
        ("etco2", None, False),
    ]
    assert got[-1].unit == "mm[Hg]"
    assert counters.extra == {}


def test_measurements_signed_and_decimal_values() -> None:
    got = parse_measurements(b"79-0.5E3 5.1", counters=LinkCounters())
    assert [(m.key, m.value, m.unit) for m in got] == [("peepi", -0.5, "mbar"), ("etco2_kpa", 5.1, "kPa")]


def test_measurements_unknown_code_skipped_and_trailing_partial_counted() -> None:
    counters = LinkCounters()
    got = parse_measurements(b"ZZ  12FF  1378  10D6", counters=counters)
    assert [(m.key, m.value) for m in got] == [("peep", 10.0)]
    assert counters.extra == {EXTRA_UNKNOWN_CODES: 2, EXTRA_MALFORMED: 1}


def test_measured_table_has_required_keys_and_units() -> None:
    by_key = {spec.key: (code.value, spec.unit) for code, spec in MEASURED_CP1.items()}
    assert by_key["ppeak"] == ("7D", "mbar")
    assert by_key["peep"] == ("78", "mbar")
    assert by_key["rr"] == ("D6", "/min")
    assert by_key["vt"] == ("88", "mL")
    assert by_key["mv"] == ("B9", "L/min")
    assert by_key["fio2"] == ("F0", "%")
    assert by_key["etco2"] == ("E6", "mm[Hg]")
    assert by_key["etco2_pct"] == ("DB", "%")
    assert by_key["etco2_kpa"] == ("E3", "kPa")
    assert by_key["pr"] == ("E1", "/min")
    assert by_key["cdyn"] == ("07", "L/bar")
    assert by_key["r"] == ("08", "mbar/(L/s)")
    assert by_key["vco2"] == ("09", "mL/min")
    assert len(by_key) == len(MEASURED_CP1)


def test_settings_records_with_scale_and_text() -> None:
    counters = LinkCounters()
    got = parse_settings(b"01   400B    504 0.4809   1412-----45 AUTOXX    1", counters=counters)
    assert [(s.key, s.value, s.unit) for s in got] == [
        ("fio2_set", 40.0, "%"),
        ("peep_set", 5.0, "mbar"),
        ("vt_set", 480.0, "mL"),
        ("rr_set", 14.0, "/min"),
        ("psupp_set", None, "mbar"),
        ("pinsp_set", "AUTO", "mbar"),
    ]
    assert counters.extra == {EXTRA_UNKNOWN_CODES: 1}


def test_settings_table_keys() -> None:
    keys = {spec.key for spec in DEVICE_SETTINGS.values()}
    assert keys == {
        "fio2_set",
        "flow_set",
        "vt_set",
        "ti_set",
        "te_set",
        "ie_i_set",
        "ie_e_set",
        "rr_set",
        "peep_set",
        "psupp_set",
        "pmax_set",
        "pinsp_set",
    }


def test_alarms_records_and_priority_mapping() -> None:
    counters = LinkCounters()
    got = parse_alarms(b"821Paw high    43AVT low      02FApnea ventil", counters=counters)
    assert [(a.code, a.priority, a.text) for a in got] == [
        ("21", AlarmPriority.HIGH, "Paw high"),
        ("3A", AlarmPriority.MEDIUM, "VT low"),
        ("2F", AlarmPriority.LOW, "Apnea ventil"),
    ]
    assert counters.extra == {}


def test_alarms_empty_payload_is_empty_list() -> None:
    assert parse_alarms(b"", counters=LinkCounters()) == ()


def test_alarms_malformed_record_skipped() -> None:
    counters = LinkCounters()
    got = parse_alarms(b"8ZZPaw high    \x2521Paw high    ", counters=counters)
    assert [a.code for a in got] == []
    assert counters.extra == {EXTRA_MALFORMED: 2}


@pytest.mark.parametrize(
    ("level", "priority"),
    [
        (0, AlarmPriority.LOW),
        (2, AlarmPriority.LOW),
        (3, AlarmPriority.MEDIUM),
        (5, AlarmPriority.MEDIUM),
        (6, AlarmPriority.HIGH),
        (31, AlarmPriority.HIGH),
    ],
)
def test_alarm_priority_bands(level: int, priority: AlarmPriority) -> None:
    assert alarm_priority(level) is priority


def test_text_messages() -> None:
    counters = LinkCounters()
    assert parse_text_messages(b"016VC-CMV\x03224Tube\x03", counters=counters) == ("VC-CMV", "Tube")
    assert parse_text_messages(b"", counters=counters) == ()
    assert counters.extra == {}


def test_text_messages_bad_length_stops_and_counts() -> None:
    counters = LinkCounters()
    assert parse_text_messages(b"016VC-CMV\x0301:VC\x03", counters=counters) == ("VC-CMV",)
    assert counters.extra == {EXTRA_MALFORMED: 1}


def test_identification_round_trip_and_vscapture_example() -> None:
    ident = parse_identification(b"0161'VSCaptureDrgVent'01.03:06.00")
    assert ident == DeviceIdentification(
        device_id="0161", name="VSCaptureDrgVent", revision="01.03", medibus_version="06.00"
    )
    assert parse_identification(ident.to_payload()) == ident


@pytest.mark.parametrize(
    "bad", [b"", b"0161", b"0161VSC'01.03:06.00", b"0161'VSC01.03:06.00", b"0161'V'0103"]
)
def test_identification_malformed_is_none(bad: bytes) -> None:
    assert parse_identification(bad) is None


@pytest.mark.parametrize(
    ("value", "width", "text"),
    [
        (25.0, 4, "  25"),
        (6.7, 4, " 6.7"),
        (0.48, 5, " 0.48"),
        (0.4806, 5, "0.481"),
        (-0.5, 4, "-0.5"),
        (480.0, 5, "  480"),
    ],
)
def test_format_value(value: float, width: int, text: str) -> None:
    assert format_value(value, width=width) == text


def test_format_value_too_wide() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        format_value(123456.0, width=4)
