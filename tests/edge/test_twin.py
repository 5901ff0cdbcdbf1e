"""The twin applies driver events as transactions and reports exactly what changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from drivers.base import (
    AlarmPriority,
    DeviceAlarmReading,
    DeviceAlarmsReceived,
    LinkDown,
    LinkUp,
    Measurement,
    MeasurementsReceived,
    Setting,
    SettingsReceived,
)
from edge.twin import DeviceIdentity, TwinStore

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
VENT = DeviceIdentity(bed="bed-07", device="vent-1", driver="medibus", protocol="MEDIBUS", port="/dev/x")


def _store() -> TwinStore:
    return TwinStore(stale_after_s={"bed-07": 10.0}, devices=[VENT])


def _measure(key: str, value: float | None, *, valid: bool = True) -> Measurement:
    return Measurement(key=key, value=value, unit="mbar", device_code="7D", label=key, valid=valid)


def _apply(store: TwinStore, event: object, *, at_s: float = 0.0):  # type: ignore[no-untyped-def]
    return store.apply(
        bed="bed-07",
        device="vent-1",
        event=event,  # type: ignore[arg-type]
        received_at=T0 + timedelta(seconds=at_s),
        received_mono_s=100.0 + at_s,
    )


def test_link_up_then_values_then_snapshot_ages() -> None:
    store = _store()
    delta = _apply(store, LinkUp(model="Evita sim", protocol_version="06.00"))
    assert delta.device_state is not None
    assert delta.device_state.connected
    assert delta.device_state.model == "Evita sim"
    delta = _apply(
        store, MeasurementsReceived(measurements=(_measure("ppeak", 25.0), _measure("peep", None))), at_s=1
    )
    assert [o.key for o in delta.observations] == ["ppeak", "peep"]
    assert delta.observations[1].valid is False, "a value-less measurement is never valid"
    snapshot = store.snapshot(bed="bed-07", now_mono_s=103.5)
    assert snapshot.values["ppeak"].value == 25.0
    assert snapshot.values["ppeak"].unit == "mbar"
    assert snapshot.values["ppeak"].age_s == 2.5
    assert snapshot.values["ppeak"].stale is False
    assert store.snapshot(bed="bed-07", now_mono_s=112.0).values["ppeak"].stale is True


def test_values_of_a_disconnected_device_are_stale() -> None:
    store = _store()
    _apply(store, LinkUp())
    _apply(store, MeasurementsReceived(measurements=(_measure("ppeak", 25.0),)))
    delta = _apply(store, LinkDown(reason="link time-out"), at_s=0.5)
    assert delta.device_state is not None
    assert not delta.device_state.connected
    assert delta.device_state.last_error == "link time-out"
    assert store.snapshot(bed="bed-07", now_mono_s=100.6).values["ppeak"].stale is True
    repeated = _apply(store, LinkDown(reason="again"), at_s=1)
    assert repeated.device_state is None, "a second LinkDown is not a change"


def test_device_alarms_raise_once_and_end() -> None:
    store = _store()
    paw = DeviceAlarmReading(code="11", priority=AlarmPriority.HIGH, text="Paw high")
    leak = DeviceAlarmReading(code="22", priority=AlarmPriority.LOW, text="Leakage")
    delta = _apply(store, DeviceAlarmsReceived(alarms=(paw,)))
    assert [a.code for a in delta.alarms_raised] == ["11"]
    delta = _apply(store, DeviceAlarmsReceived(alarms=(paw, leak)), at_s=1)
    assert [a.code for a in delta.alarms_raised] == ["22"]
    snapshot = store.snapshot(bed="bed-07", now_mono_s=101)
    assert {a.code: a.onset for a in snapshot.device_alarms}["11"] == T0
    delta = _apply(store, DeviceAlarmsReceived(alarms=(leak,)), at_s=2)
    assert [a.code for a in delta.alarms_ended] == ["11"]
    assert delta.alarms_raised == []


def test_link_loss_ends_device_alarms() -> None:
    store = _store()
    _apply(store, LinkUp())
    _apply(
        store,
        DeviceAlarmsReceived(alarms=(DeviceAlarmReading(code="11", priority=AlarmPriority.HIGH, text="x"),)),
    )
    delta = _apply(store, LinkDown(reason="cable"))
    assert [a.code for a in delta.alarms_ended] == ["11"]
    assert store.snapshot(bed="bed-07", now_mono_s=100).device_alarms == []


def test_settings_go_to_ventilator_settings() -> None:
    store = _store()
    setting = Setting(key="peep_set", value=5.0, unit="mbar", device_code="0B", label="PEEP")
    delta = _apply(store, SettingsReceived(settings=(setting,)))
    assert not delta.changes_twin or delta.observations == []
    assert store.snapshot(bed="bed-07", now_mono_s=100).settings["peep_set"].value == 5.0
