"""Tests of S/5 record contents: displayed-value decoding, scaling, "no data" codes, waves."""

from __future__ import annotations

import pytest

from drivers.base import Measurement
from drivers.datex.codec import DatexDecoder
from drivers.datex.codes import DEFAULT_WAVES, NO_DATA_FLAGS, WAVE_BUDGET_SAMPLES_PER_S, WAVE_INFO, NoData
from drivers.datex.records import (
    DEFAULT_PRESSURE_SITES,
    PHDB_SUBRECORD_BYTES,
    basic_subrecord,
    device_time,
    displayed_record,
    parse_basic,
    subrecord_class,
    to_measurements,
    to_wave_chunk,
    value_maps,
    wave_record,
    wave_subrecord,
    wave_subrecords,
)
from drivers.vocabulary import TERMS

MAPS = value_maps(pressure_sites=DEFAULT_PRESSURE_SITES)
RAW = {
    "ecg.hr": 78,
    "p1.sys": 11800,
    "p1.dia": 6800,
    "p1.mean": 8500,
    "p2.mean": 800,
    "nibp.sys": 12200,
    "nibp.dia": 7400,
    "nibp.mean": 9000,
    "t1.temp": 3710,
    "t2.temp": 3655,
    "spo2.spo2": 9700,
    "spo2.pr": 77,
    "co2.et": 500,
    "co2.fi": 0,
    "co2.rr": 14,
    "co2.amb_press": 7600,
    "o2.fi": 4000,
    "o2.et": 3500,
    "flow_vol.ppeak": 2200,
    "flow_vol.peep": 500,
    "flow_vol.pplat": 1800,
    "flow_vol.tv_exp": 4800,
    "flow_vol.mv_exp": 670,
}


def _decode(raw: dict[str, int], *, sites: dict[str, str] | None = None) -> dict[str, Measurement]:
    frame = displayed_record(subrecords=[basic_subrecord(raw=raw, time_s=1_700_000_000)]).to_frame()
    (record,) = DatexDecoder().feed(frame)
    sub = record.subrecord(0)
    assert len(sub) == PHDB_SUBRECORD_BYTES
    maps = value_maps(pressure_sites=sites) if sites is not None else MAPS
    return {m.key: m for m in to_measurements(parse_basic(sub), maps=maps)}


def test_every_basic_value_is_scaled_into_its_vocabulary_unit() -> None:
    got = _decode(RAW)
    expected = {
        "hr": 78.0,
        "abp_sys": 118.0,
        "abp_dia": 68.0,
        "abp_mean": 85.0,
        "cvp": 8.0,
        "nbp_sys": 122.0,
        "nbp_dia": 74.0,
        "nbp_mean": 90.0,
        "temp": 37.1,
        "temp_2": 36.55,
        "spo2": 97.0,
        "pr": 77.0,
        "etco2": 38.0,
        "imco2": 0.0,
        "rr": 14.0,
        "fio2": 40.0,
        "eto2": 35.0,
        "ppeak": round(22.0 * 0.980665, 2),
        "peep": round(5.0 * 0.980665, 2),
        "pplat": round(18.0 * 0.980665, 2),
        "vt": 480.0,
        "mve": 6.7,
    }
    assert {k: m.value for k, m in got.items()} == pytest.approx(expected)
    for key, measurement in got.items():
        assert measurement.unit == TERMS[key].unit
        assert measurement.mdc_code == TERMS[key].mdc
        assert measurement.valid
        assert measurement.device_flag is None
    assert "map" not in got


def test_etco2_follows_the_ambient_pressure() -> None:
    got = _decode({**RAW, "co2.et": 600, "co2.amb_press": 6000})
    assert got["etco2"].value == pytest.approx(6.0 / 100.0 * 600.0)


@pytest.mark.parametrize("code", list(NoData), ids=lambda c: c.name)
def test_every_no_data_code_becomes_an_invalid_value_with_its_flag(code: NoData) -> None:
    got = _decode({**RAW, "ecg.hr": int(code), "p1.sys": int(code), "spo2.spo2": int(code)})
    for key in ("hr", "abp_sys", "spo2"):
        assert got[key].value is None
        assert got[key].valid is False
        assert got[key].device_flag == NO_DATA_FLAGS[code]
    assert got["abp_dia"].value == 68.0


def test_no_data_flag_names_are_the_documented_words() -> None:
    assert sorted(NO_DATA_FLAGS.values()) == sorted(
        ["invalid", "not_updated", "discontinuity", "under_range", "over_range", "not_calibrated"]
    )


@pytest.mark.parametrize("raw", [-32768, -32002, -32761])
def test_any_other_code_below_the_limit_is_invalid_never_a_number(raw: int) -> None:
    got = _decode({**RAW, "t1.temp": raw})
    assert got["temp"].value is None
    assert got["temp"].device_flag == "invalid"


def test_the_limit_itself_is_a_number() -> None:
    assert _decode({**RAW, "p2.mean": -32001})["cvp"].value == pytest.approx(-320.01)


def test_a_missing_ambient_pressure_makes_gas_pressures_invalid() -> None:
    got = _decode({**RAW, "co2.amb_press": int(NoData.NOT_CALIBRATED)})
    assert got["etco2"].value is None
    assert got["etco2"].device_flag == "not_calibrated"
    assert got["rr"].value == 14.0
    assert _decode({**RAW, "co2.amb_press": 0})["etco2"].device_flag == "invalid"


def test_pressure_channels_are_named_by_the_options() -> None:
    got = _decode(
        {**RAW, "p3.sys": 2500, "p3.dia": 1000, "p3.mean": 1600, "p4.mean": 1200},
        sites={"p1": "abp", "p2": "cvp", "p3": "pap", "p4": "icp"},
    )
    assert (got["pap_sys"].value, got["pap_dia"].value, got["pap_mean"].value) == (25.0, 10.0, 16.0)
    assert got["icp"].value == 12.0
    swapped = _decode(RAW, sites={"p1": "cvp", "p2": "off", "p3": "off", "p4": "off"})
    assert swapped["cvp"].value == 85.0
    assert "abp_mean" not in swapped


def test_two_channels_may_not_name_one_site() -> None:
    with pytest.raises(ValueError, match="same site"):
        value_maps(pressure_sites={"p1": "abp", "p2": "abp"})


def test_class_time_and_labels() -> None:
    sub = basic_subrecord(raw=RAW, time_s=1_700_000_000, labels={"p1": 0x0102})
    assert subrecord_class(sub) == 0
    assert subrecord_class(sub[:-1]) is None
    parsed = parse_basic(sub)
    assert parsed.labels["p1"] == 0x0102
    assert device_time(parsed.time_s) is not None
    assert device_time(0) is None
    with pytest.raises(ValueError):
        parse_basic(sub[:200])


def test_wave_subrecords_scale_and_mark_invalid_samples() -> None:
    ecg = wave_subrecord([100, -50, int(NoData.DATA_INVALID), 0])
    co2 = wave_subrecord([500, 0])
    record = wave_record(waves=[(1, ecg), (9, co2), (0x12, wave_subrecord([1]))])
    (decoded,) = DatexDecoder().feed(record.to_frame())
    pieces = wave_subrecords(decoded)
    assert [w for w, _ in pieces] == [1, 9, 0x12]
    chunk = to_wave_chunk(1, pieces[0][1], ambient_mmhg=None)
    assert chunk is not None
    assert chunk.signal == "ecg"
    assert chunk.unit == "mV"
    assert chunk.samples == (1.0, -0.5, None, 0.0)
    assert chunk.sample_period_s == pytest.approx(1 / 300)
    assert to_wave_chunk(9, pieces[1][1], ambient_mmhg=None) is None
    co2_chunk = to_wave_chunk(9, pieces[1][1], ambient_mmhg=760.0)
    assert co2_chunk is not None
    assert co2_chunk.samples == pytest.approx((38.0, 0.0))
    assert to_wave_chunk(0x12, pieces[2][1], ambient_mmhg=760.0) is None


def test_a_wave_subrecord_longer_than_the_record_is_skipped() -> None:
    record = wave_record(waves=[(1, wave_subrecord([1, 2, 3]))])
    (decoded,) = DatexDecoder().feed(record.to_frame())
    truncated = type(decoded)(header=decoded.header, data=decoded.data[:-2])
    assert wave_subrecords(truncated) == []


def test_the_default_waves_fit_the_monitor_budget() -> None:
    assert sum(WAVE_INFO[w].rate_hz for w in DEFAULT_WAVES) <= WAVE_BUDGET_SAMPLES_PER_S
