"""A bed with a ventilator and a monitor: one source per key, `map` derived, demo data refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from drivers.base import DataRefused, LinkDown, LinkUp, Measurement, MeasurementsReceived
from drivers.vocabulary import NIBP_MAX_AGE_S, DeviceKind, term
from edge.twin import DeviceIdentity, TwinDelta, TwinStore

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
BED = "bed-01"
VENT = DeviceIdentity(bed=BED, device="vent-1", driver="medibus", protocol="MEDIBUS", port="/dev/a")
MONITOR = DeviceIdentity(
    bed=BED,
    device="mon-1",
    driver="intellivue",
    protocol="IntelliVue",
    port="/dev/b",
    kind=DeviceKind.MONITOR,
)


def _store(sources: dict[str, str] | None = None) -> TwinStore:
    store = TwinStore(stale_after_s={BED: 10.0}, devices=[VENT, MONITOR], sources={BED: sources or {}})
    for device in (VENT, MONITOR):
        _apply(store, device.device, LinkUp(model=device.driver), at_s=0.0)
    return store


def _apply(store: TwinStore, device: str, event: object, *, at_s: float) -> TwinDelta:
    return store.apply(
        bed=BED,
        device=device,
        event=event,  # type: ignore[arg-type]
        received_at=T0 + timedelta(seconds=at_s),
        received_mono_s=100.0 + at_s,
    )


def _values(device: str, *, at_s: float, store: TwinStore, **values: float | None) -> TwinDelta:
    measurements = tuple(
        Measurement(key=k, value=v, unit=term(k).unit, device_code=k, label=k) for k, v in values.items()
    )
    return _apply(store, device, MeasurementsReceived(measurements=measurements), at_s=at_s)


def test_the_monitor_is_the_source_of_spo2_and_the_ventilator_of_etco2() -> None:
    store = _store()
    _values("mon-1", at_s=1.0, store=store, spo2=95.0, etco2=41.0)
    _values("vent-1", at_s=2.0, store=store, spo2=97.0, etco2=38.0)
    snapshot = store.snapshot(bed=BED, now_mono_s=102.5)
    assert (snapshot.values["spo2"].value, snapshot.values["spo2"].device) == (95.0, "mon-1")
    assert (snapshot.values["etco2"].value, snapshot.values["etco2"].device) == (38.0, "vent-1")
    assert store.is_source(bed=BED, key="spo2", device="mon-1", now_mono_s=102.5)
    assert not store.is_source(bed=BED, key="spo2", device="vent-1", now_mono_s=102.5)


def test_the_config_overrides_the_default_source_of_a_key() -> None:
    store = _store({"spo2": "vent-1"})
    _values("mon-1", at_s=1.0, store=store, spo2=95.0)
    _values("vent-1", at_s=1.0, store=store, spo2=97.0)
    assert store.snapshot(bed=BED, now_mono_s=102.0).values["spo2"].device == "vent-1"


def test_a_stale_or_disconnected_source_gives_way_to_a_fresh_reading_and_back() -> None:
    store = _store()
    _values("mon-1", at_s=1.0, store=store, spo2=95.0)
    _values("vent-1", at_s=20.0, store=store, spo2=97.0)
    fallback = store.snapshot(bed=BED, now_mono_s=120.5).values["spo2"]
    assert (fallback.device, fallback.stale) == ("vent-1", False), "the monitor's reading is 19.5 s old"
    _values("mon-1", at_s=21.0, store=store, spo2=94.0)
    assert store.snapshot(bed=BED, now_mono_s=121.5).values["spo2"].device == "mon-1"
    _apply(store, "mon-1", LinkDown(reason="cable out"), at_s=22.0)
    _values("vent-1", at_s=22.0, store=store, spo2=97.0)
    assert store.snapshot(bed=BED, now_mono_s=122.5).values["spo2"].device == "vent-1"


def test_with_no_fresh_reading_the_source_order_decides_and_the_value_is_stale() -> None:
    store = _store()
    _values("vent-1", at_s=1.0, store=store, spo2=97.0)
    _values("mon-1", at_s=2.0, store=store, spo2=95.0)
    shown = store.snapshot(bed=BED, now_mono_s=200.0).values["spo2"]
    assert (shown.device, shown.stale) == ("mon-1", True)


def test_map_is_the_arterial_mean_else_the_cuff_mean() -> None:
    store = _store()
    delta = _values("mon-1", at_s=1.0, store=store, nbp_mean=88.0)
    assert [(o.key, o.value) for o in delta.observations if o.key == "map"] == [("map", 88.0)]
    delta = _values("mon-1", at_s=2.0, store=store, abp_mean=71.0)
    assert [(o.key, o.value) for o in delta.observations if o.key == "map"] == [("map", 71.0)]
    delta = _values("mon-1", at_s=3.0, store=store, nbp_mean=90.0)
    assert not [o for o in delta.observations if o.key == "map"], (
        "a cuff mean never overrides a valid arterial one"
    )
    snapshot = store.snapshot(bed=BED, now_mono_s=103.5)
    assert (snapshot.values["map"].value, snapshot.values["map"].label) == (71.0, "Mean arterial pressure")
    # the arterial line goes quiet: the next cuff reading is the map again
    delta = _values("mon-1", at_s=30.0, store=store, nbp_mean=86.0)
    assert [(o.key, o.value) for o in delta.observations if o.key == "map"] == [("map", 86.0)]


def test_an_implausible_arterial_mean_makes_map_invalid_not_a_number() -> None:
    store = _store()
    delta = _values("mon-1", at_s=1.0, store=store, abp_mean=900.0)
    derived = [o for o in delta.observations if o.key == "map"]
    assert len(derived) == 1
    assert (derived[0].value, derived[0].valid, derived[0].invalid_reason) == (None, False, "implausible")


def test_a_cuff_pressure_stays_current_for_its_cycle_not_for_the_bed_limit() -> None:
    store = _store()
    _values("mon-1", at_s=0.0, store=store, nbp_sys=120.0, hr=80.0)
    snapshot = store.snapshot(bed=BED, now_mono_s=100.0 + 600.0)
    assert snapshot.values["hr"].stale is True
    assert snapshot.values["nbp_sys"].stale is False
    assert store.snapshot(bed=BED, now_mono_s=100.0 + NIBP_MAX_AGE_S + 1).values["nbp_sys"].stale is True


def test_demo_data_is_shown_on_the_device_status_until_real_values_come() -> None:
    store = _store()
    delta = _apply(
        store,
        "mon-1",
        DataRefused(reason="demo_data", detail="monitor in demo mode: its values are refused", count=5),
        at_s=1.0,
    )
    assert delta.device_status_changed
    assert delta.changes_twin
    assert not delta.observations
    refused = store.device_state(bed=BED, device="mon-1").refused
    assert refused is not None
    assert (refused.reason, refused.refused_values) == ("demo_data", 5)
    _apply(store, "mon-1", DataRefused(reason="demo_data", detail="same", count=3), at_s=2.0)
    refused = store.device_state(bed=BED, device="mon-1").refused
    assert refused is not None
    assert refused.refused_values == 8
    assert store.snapshot(bed=BED, now_mono_s=102.0).values == {}
    delta = _values("mon-1", at_s=3.0, store=store, hr=72.0)
    assert delta.device_status_changed
    assert store.device_state(bed=BED, device="mon-1").refused is None


@pytest.mark.parametrize("flag", ["under_range", "not_calibrated"])
def test_the_devices_own_flag_travels_with_an_invalid_value(flag: str) -> None:
    store = _store()
    measurement = Measurement(
        key="abp_sys", value=None, unit="mm[Hg]", device_code="p1", label="ABP", valid=False, device_flag=flag
    )
    delta = _apply(store, "mon-1", MeasurementsReceived(measurements=(measurement,)), at_s=1.0)
    assert (delta.observations[0].device_flag, delta.observations[0].invalid_reason) == (flag, "no_value")
    assert store.snapshot(bed=BED, now_mono_s=101.0).values["abp_sys"].device_flag == flag


def test_a_cuff_pressure_the_monitor_repeats_ages_from_its_measurement_not_its_receipt() -> None:
    store = _store()
    measured = T0 - timedelta(seconds=NIBP_MAX_AGE_S - 5)
    cuff = (Measurement(key="nbp_sys", value=118.0, unit="mm[Hg]", device_code="170", label="NBP"),)
    for at_s in (1.0, 2.0, 3.0):
        _apply(store, "mon-1", MeasurementsReceived(measurements=cuff, device_time=measured), at_s=at_s)
    shown = store.snapshot(bed=BED, now_mono_s=103.0).values["nbp_sys"]
    assert shown.age_s == pytest.approx(NIBP_MAX_AGE_S - 2.0)
    assert shown.stale is False
    assert store.snapshot(bed=BED, now_mono_s=110.0).values["nbp_sys"].stale is True


def test_a_device_clock_ahead_of_ours_never_makes_a_value_younger_than_its_receipt() -> None:
    store = _store()
    cuff = (Measurement(key="nbp_sys", value=118.0, unit="mm[Hg]", device_code="170", label="NBP"),)
    future = T0 + timedelta(hours=1)
    _apply(store, "mon-1", MeasurementsReceived(measurements=cuff, device_time=future), at_s=1.0)
    assert store.snapshot(bed=BED, now_mono_s=103.0).values["nbp_sys"].age_s == pytest.approx(2.0)
