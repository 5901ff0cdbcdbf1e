"""The twin is the single entry point: nothing outside the plausibility table becomes a valid value."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import LinkUp, Measurement, MeasurementsReceived, Setting, SettingsReceived
from drivers.plausibility import TABLE, check
from edge.twin import DeviceIdentity, TwinDelta, TwinStore

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
VENT = DeviceIdentity(bed="bed-07", device="vent-1", driver="medibus", protocol="MEDIBUS", port="/dev/x")
UNITS = {"fio2": "%", "vt": "mL", "rr": "/min", "etco2": "mm[Hg]", "ppeak": "mbar"}


def _store() -> TwinStore:
    store = TwinStore(stale_after_s={"bed-07": 10.0}, devices=[VENT])
    _apply(store, LinkUp())
    return store


def _measure(key: str, value: float | None, *, unit: str | None = None, valid: bool = True) -> Measurement:
    return Measurement(
        key=key, value=value, unit=unit or UNITS[key], device_code="F0", label=key, valid=valid
    )


def _apply(store: TwinStore, *measurements: Measurement | LinkUp, at_s: float = 0.0) -> TwinDelta:
    event = measurements[0] if isinstance(measurements[0], LinkUp) else None
    return store.apply(
        bed="bed-07",
        device="vent-1",
        event=event or MeasurementsReceived(measurements=measurements),  # type: ignore[arg-type]
        received_at=T0 + timedelta(seconds=at_s),
        received_mono_s=100.0 + at_s,
    )


def test_issue_6_values_are_not_valid_not_shown_and_counted() -> None:
    store = _store()
    delta = _apply(store, _measure("fio2", 9421.0), _measure("vt", 9352.0), _measure("rr", 6618.0))
    for observation in delta.observations:
        assert observation.valid is False, observation
        assert observation.value is None, "a rejected number never sits where a value belongs"
        assert observation.invalid_reason == "implausible"
    assert [o.rejected_value for o in delta.observations] == [9421.0, 9352.0, 6618.0]
    snapshot = store.snapshot(bed="bed-07", now_mono_s=100.0)
    assert all(not v.valid and v.value is None for v in snapshot.values.values())
    state = store.device_state(bed="bed-07", device="vent-1")
    assert state.counters["implausible_values"] == 3
    assert state.last_rejected is not None
    last = state.last_rejected
    assert (last.key, last.value, last.unit, last.minimum, last.maximum) == ("rr", 6618.0, "/min", 0.0, 150.0)
    assert snapshot.devices["vent-1"].counters["implausible_values"] == 3


def test_an_implausible_reading_replaces_the_last_valid_one_with_the_marker() -> None:
    """Documented choice: the twin shows the latest reading; a rejected one is shown as rejected."""
    store = _store()
    _apply(store, _measure("fio2", 40.0))
    _apply(store, _measure("fio2", 9421.0), at_s=1.0)
    fio2 = store.snapshot(bed="bed-07", now_mono_s=101.5).values["fio2"]
    assert (fio2.valid, fio2.value, fio2.invalid_reason, fio2.rejected_value) == (
        False,
        None,
        "implausible",
        9421.0,
    )
    assert fio2.age_s == 0.5, "the marker is the latest reading, with its own age"
    _apply(store, _measure("fio2", 41.0), at_s=2.0)
    fio2 = store.snapshot(bed="bed-07", now_mono_s=102.0).values["fio2"]
    assert (fio2.valid, fio2.value, fio2.invalid_reason, fio2.rejected_value) == (True, 41.0, None, None)


def test_rejection_counts_survive_link_health_updates() -> None:
    store = _store()
    _apply(store, _measure("vt", 9352.0))
    state = store.update_link_health(
        bed="bed-07", device="vent-1", counters={"frames_in": 7}, last_frame_at=T0, last_error=None
    )
    assert state.counters == {"frames_in": 7, "implausible_values": 1}


def test_wrong_unit_unknown_key_and_device_flag_are_not_valid(caplog: pytest.LogCaptureFixture) -> None:
    store = _store()
    with caplog.at_level(logging.WARNING, logger="edge.twin"):
        delta = _apply(
            store,
            _measure("etco2", 5.1, unit="kPa"),
            _measure("mystery", 1.0, unit="1"),
            _measure("ppeak", 25.0, valid=False),
            _measure("ppeak", None),
        )
        _apply(store, _measure("etco2", 5.2, unit="kPa"), at_s=1.0)
    reasons = [(o.valid, o.value, o.invalid_reason, o.rejected_value) for o in delta.observations]
    assert reasons == [
        (False, None, "unit", 5.1),
        (False, None, "unknown_key", 1.0),
        (False, None, "device", None),
        (False, None, "no_value", None),
    ]
    counters = store.device_state(bed="bed-07", device="vent-1").counters
    assert (counters["wrong_units"], counters["unknown_keys"]) == (2, 1)
    assert "implausible_values" not in counters
    assert len([r for r in caplog.records if "etco2" in r.getMessage()]) == 1, "logged once per reason"


def test_an_impossible_setting_is_withheld_and_counted_like_a_value() -> None:
    store = _store()
    store.apply(
        bed="bed-07",
        device="vent-1",
        event=SettingsReceived(
            settings=(
                Setting(key="fio2_set", value=9421.0, unit="%", device_code="01", label="FiO2 setting"),
                Setting(key="peep_set", value=5.0, unit="mbar", device_code="0B", label="PEEP setting"),
                Setting(key="mode", value="VC-CMV", unit="1", device_code="99", label="mode"),
            )
        ),
        received_at=T0,
        received_mono_s=100.0,
    )
    settings = store.snapshot(bed="bed-07", now_mono_s=100.0).settings
    fio2 = settings["fio2_set"]
    assert (fio2.value, fio2.invalid_reason, fio2.rejected_value) == (None, "implausible", 9421.0)
    assert (settings["peep_set"].value, settings["peep_set"].invalid_reason) == (5.0, None)
    assert settings["mode"].value == "VC-CMV", "text settings are not numbers to range-check"
    state = store.device_state(bed="bed-07", device="vent-1")
    assert state.counters["implausible_values"] == 1
    assert state.last_rejected is not None
    assert (state.last_rejected.key, state.last_rejected.maximum) == ("fio2_set", 100.0)


_KEYS = st.sampled_from([*TABLE, "mystery"])
_VALUES = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(-10.0, 500.0))


@st.composite
def _measurements(draw: st.DrawFn) -> Measurement:
    key = draw(_KEYS)
    row = TABLE.get(key)
    unit = draw(st.sampled_from([row.unit if row else "1", "kPa", "%", "mbar"]))
    return Measurement(
        key=key, value=draw(_VALUES), unit=unit, device_code="00", label=key, valid=draw(st.booleans())
    )


@settings(max_examples=300, deadline=None)
@given(batches=st.lists(st.lists(_measurements(), min_size=1, max_size=6), min_size=1, max_size=5))
def test_valid_implies_within_range_for_every_observation_and_twin_value(
    batches: list[list[Measurement]],
) -> None:
    store = _store()
    for index, batch in enumerate(batches):
        delta = _apply(store, *batch, at_s=float(index))
        for observation in delta.observations:
            if observation.valid:
                assert observation.value is not None
                assert check(key=observation.key, value=observation.value, unit=observation.unit) is None
            else:
                assert observation.value is None
        for key, value in store.snapshot(bed="bed-07", now_mono_s=100.0 + index).values.items():
            if value.valid:
                assert value.value is not None
                assert check(key=key, value=value.value, unit=value.unit) is None
            else:
                assert value.value is None
