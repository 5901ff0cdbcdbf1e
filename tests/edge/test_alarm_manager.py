"""The alarm manager with an injected clock: delays, hysteresis, latching, ack, pause, escalation, restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from drivers.base import AlarmPriority
from edge.alarms.manager import AlarmManager, ApplianceCondition, Now, TechnicalSettings, Transition
from edge.alarms.profile import DEFAULT_LIMITS, LimitOverride, PredictiveConfig, effective_limits
from edge.model import (
    Acknowledgement,
    AlarmKind,
    AlarmState,
    DeviceAlarm,
    EventForecast,
    EventKind,
    EventProbability,
    ForecastBody,
    ForecastModelRef,
    InvalidReason,
    RefusedData,
    TwinValue,
)

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
SETTINGS = TechnicalSettings(
    device_lost_delay_s=2.0,
    connect_grace_s=15.0,
    no_data_s=10.0,
    invalid_value_delay_s=10.0,
    predictive=PredictiveConfig(),
)


def at(t_s: float) -> Now:
    return Now(mono_s=1000.0 + t_s, wall=T0 + timedelta(seconds=t_s))


def value(
    key: str, reading: float | None, *, t_s: float, valid: bool = True, stale: bool = False
) -> TwinValue:
    return TwinValue(
        value=reading if valid else None,
        unit="%",
        mdc=None,
        label=key,
        device="mon-1",
        valid=valid,
        invalid_reason=None if valid else InvalidReason.NO_VALUE,
        device_time=None,
        received_at=T0 + timedelta(seconds=t_s),
        age_s=0.0,
        stale=stale,
    )


def manager(*, bed_limits: dict[str, LimitOverride] | None = None, restored=None, start_s: float = 0.0):  # type: ignore[no-untyped-def]
    limits = {
        "bed-1": effective_limits(ward={}, bed=bed_limits or {}),
        "bed-2": effective_limits(ward={}, bed={}),
    }
    return AlarmManager(
        beds=["bed-1", "bed-2"], limits=limits, settings=SETTINGS, restored=restored or {}, now=at(start_s)
    )


def spo2(alarms: AlarmManager, reading: float | None, t_s: float, **kwargs: bool) -> list[Transition]:
    now = at(t_s)
    alarms.observe_values(bed="bed-1", values={"spo2": value("spo2", reading, t_s=t_s, **kwargs)}, now=now)
    alarms.tick(now=now)
    return alarms.take_transitions()


def test_spo2_low_is_raised_after_its_delay_and_not_before_with_onset_at_the_first_crossing() -> None:
    alarms = manager()
    assert DEFAULT_LIMITS["spo2"].low == 90
    assert DEFAULT_LIMITS["spo2"].condition_delay_s == 10
    for t_s in range(10):
        assert spo2(alarms, 86.0, t_s) == [], f"raised early at {t_s} s"
    raised = spo2(alarms, 86.0, 10.0)
    assert [(t.kind, t.alarm.condition, t.alarm.state) for t in raised] == [
        (EventKind.ALARM_RAISED, "spo2_low", AlarmState.ACTIVE)
    ]
    alarm = raised[0].alarm
    assert (alarm.onset, alarm.determined_at) == (T0, T0 + timedelta(seconds=10))
    assert (alarm.kind, alarm.key, alarm.priority, alarm.value, alarm.limit) == (
        AlarmKind.PHYSIOLOGICAL,
        "spo2",
        AlarmPriority.MEDIUM,
        86.0,
        90.0,
    )
    assert alarm.condition_delay_s == 10
    assert alarm.direction == "low"
    assert [a.id for a in alarms.active("bed-1")] == [alarm.id]
    assert alarms.active("bed-2") == []


def test_a_value_back_within_the_limit_restarts_the_delay() -> None:
    alarms = manager()
    for t_s in range(8):
        spo2(alarms, 86.0, t_s)
    spo2(alarms, 90.0, 8)  # at the limit: not below it
    for t_s in range(9, 18):
        assert spo2(alarms, 86.0, t_s) == []
    assert spo2(alarms, 86.0, 19)[0].kind == EventKind.ALARM_RAISED


def test_an_invalid_or_stale_value_stops_the_delay_but_never_ends_an_alarm() -> None:
    alarms = manager()
    for t_s in range(6):
        spo2(alarms, 86.0, t_s)
    spo2(alarms, 86.0, 6, stale=True)
    assert spo2(alarms, 86.0, 12) == []  # the delay started over at 12
    assert spo2(alarms, 86.0, 22)[0].kind == EventKind.ALARM_RAISED
    assert spo2(alarms, None, 23, valid=False) == []
    assert spo2(alarms, 99.0, 24, stale=True) == []
    assert [a.state for a in alarms.active("bed-1")] == [AlarmState.ACTIVE]


def test_the_condition_ends_only_past_the_hysteresis_and_a_medium_alarm_then_ends() -> None:
    alarms = manager()
    for t_s in range(11):
        spo2(alarms, 86.0, t_s)
    assert spo2(alarms, 90.5, 11) == []  # above the limit, inside the 1 % hysteresis
    ended = spo2(alarms, 91.0, 12)
    assert [(t.kind, t.alarm.state, t.alarm.condition_present) for t in ended] == [
        (EventKind.ALARM_ENDED, AlarmState.ENDED, False)
    ]
    assert alarms.active("bed-1") == []
    for t_s in range(13, 23):
        spo2(alarms, 85.0, t_s)
    again = spo2(alarms, 85.0, 23)
    assert again[0].kind == EventKind.ALARM_RAISED
    assert again[0].alarm.id != ended[0].alarm.id


def test_a_high_priority_alarm_latches_until_acknowledged_and_the_ack_ends_it() -> None:
    alarms = manager(bed_limits={"spo2": LimitOverride(priority=AlarmPriority.HIGH)})
    for t_s in range(11):
        spo2(alarms, 80.0, t_s)
    latched = spo2(alarms, 97.0, 12)
    assert [(t.kind, t.alarm.state) for t in latched] == [(EventKind.ALARM_STATE_CHANGED, AlarmState.LATCHED)]
    assert spo2(alarms, 97.0, 300) == []
    alarm_id = latched[0].alarm.id
    outcome = alarms.acknowledge(bed="bed-1", alarm_id=alarm_id, by=_ack("c-1"), now=at(301))
    assert outcome.accepted
    assert outcome.alarm is not None
    assert outcome.alarm.state == AlarmState.ENDED
    assert [t.kind for t in alarms.take_transitions()] == [EventKind.ALARM_ENDED]
    # the latched condition coming back before an ack makes the same alarm active again
    for t_s in range(400, 411):
        spo2(alarms, 80.0, t_s)
    spo2(alarms, 97.0, 412)
    back = spo2(alarms, 80.0, 413)
    assert [(t.kind, t.alarm.state, t.alarm.condition_present) for t in back] == [
        (EventKind.ALARM_STATE_CHANGED, AlarmState.ACTIVE, True)
    ]


def _ack(command_id: str) -> Acknowledgement:
    return Acknowledgement(at=T0, command_id=command_id, user="nurse-7", role="rn")


def test_ack_of_a_present_condition_is_acknowledged_until_the_condition_ends() -> None:
    alarms = manager()
    alarm_id = next(t for s in range(11) for t in spo2(alarms, 86.0, s)).alarm.id
    outcome = alarms.acknowledge(bed="bed-1", alarm_id=alarm_id, by=_ack("c-1"), now=at(12))
    assert outcome.accepted
    assert "ends when the condition does" in outcome.reason
    assert [t.alarm.state for t in alarms.take_transitions()] == [AlarmState.ACKNOWLEDGED]
    again = alarms.acknowledge(bed="bed-1", alarm_id=alarm_id, by=_ack("c-2"), now=at(13))
    assert again.accepted
    assert "already" in again.reason
    assert alarms.take_transitions() == []
    assert not alarms.acknowledge(bed="bed-2", alarm_id=alarm_id, by=_ack("c-3"), now=at(13)).accepted
    assert not alarms.acknowledge(bed="bed-1", alarm_id="nope", by=_ack("c-4"), now=at(13)).accepted
    assert [t.kind for t in spo2(alarms, 95.0, 14)] == [EventKind.ALARM_ENDED]


def test_a_pause_is_time_limited_and_a_new_alarm_breaks_through_it() -> None:
    alarms = manager()
    first = next(t for s in range(11) for t in spo2(alarms, 86.0, s)).alarm
    outcome = alarms.pause(bed="bed-1", duration_s=120, alarm_id=None, now=at(20))
    assert outcome.accepted
    paused = alarms.take_transitions()
    assert [t.alarm.state for t in paused] == [AlarmState.AUDIO_PAUSED]
    assert paused[0].alarm.audio_paused_until == T0 + timedelta(seconds=140)
    # a new condition during the pause sounds
    for t_s in range(30, 37):
        alarms.observe_values(bed="bed-1", values={"hr": value("hr", 150.0, t_s=t_s)}, now=at(t_s))
        alarms.tick(now=at(t_s))
    hr = [t.alarm for t in alarms.take_transitions()]
    assert [(a.condition, a.state) for a in hr] == [("hr_high", AlarmState.ACTIVE)]
    assert spo2(alarms, 86.0, 139.9) == []
    over = spo2(alarms, 86.0, 140)
    assert [(t.alarm.id, t.alarm.state, t.detail) for t in over] == [
        (first.id, AlarmState.ACTIVE, "audio pause over")
    ]


def test_pause_with_nothing_sounding_is_rejected() -> None:
    alarms = manager()
    assert not alarms.pause(bed="bed-1", duration_s=60, alarm_id=None, now=at(0)).accepted


def test_an_unacknowledged_alarm_escalates_once_per_period_and_breaks_through_a_pause() -> None:
    alarms = manager(bed_limits={"spo2": LimitOverride(escalate_after_s=60)})
    raised = next(t for s in range(11) for t in spo2(alarms, 86.0, s)).alarm
    assert raised.priority == AlarmPriority.MEDIUM
    alarms.pause(bed="bed-1", duration_s=120, alarm_id=None, now=at(20))
    alarms.take_transitions()
    assert spo2(alarms, 86.0, 69.9) == []
    escalated = spo2(alarms, 86.0, 70)
    assert [(t.kind, t.alarm.priority, t.alarm.state) for t in escalated] == [
        (EventKind.ALARM_ESCALATED, AlarmPriority.HIGH, AlarmState.ACTIVE)
    ]
    assert escalated[0].alarm.configured_priority == AlarmPriority.MEDIUM
    assert spo2(alarms, 86.0, 500) == []  # already high: nothing above


def test_a_restart_keeps_the_alarm_id_and_state_and_never_raises_it_again() -> None:
    alarms = manager()
    raised = next(t for s in range(11) for t in spo2(alarms, 86.0, s)).alarm
    alarms.pause(bed="bed-1", duration_s=120, alarm_id=None, now=at(20))
    saved = alarms.take_transitions()[-1].alarm
    # the daemon restarts 30 s later: a new monotonic clock
    later = Now(mono_s=5.0, wall=T0 + timedelta(seconds=50))
    restarted = AlarmManager(
        beds=["bed-1", "bed-2"],
        limits={"bed-1": effective_limits(ward={}, bed={}), "bed-2": {}},
        settings=SETTINGS,
        restored={"bed-1": [saved]},
        now=later,
    )
    assert [(a.id, a.state) for a in restarted.active("bed-1")] == [(raised.id, AlarmState.AUDIO_PAUSED)]
    restarted.observe_values(bed="bed-1", values={"spo2": value("spo2", 85.0, t_s=50)}, now=later)
    restarted.tick(now=later)
    assert restarted.take_transitions() == []
    # the pause still ends at its wall time: 140 s after T0
    end = Now(mono_s=5.0 + 90.0, wall=T0 + timedelta(seconds=140))
    restarted.tick(now=end)
    assert [(t.alarm.id, t.alarm.state) for t in restarted.take_transitions()] == [
        (raised.id, AlarmState.ACTIVE)
    ]


def test_device_alarms_follow_the_devices_list_and_an_ack_says_the_device_still_sounds() -> None:
    alarms = manager()
    apnea = DeviceAlarm(device="vent-1", code="A12", priority=AlarmPriority.HIGH, text="Apnea", onset=T0)
    alarms.device_alarms(bed="bed-1", device="vent-1", alarms=[apnea], now=at(0))
    raised = alarms.take_transitions()
    assert [(t.alarm.kind, t.alarm.condition, t.alarm.priority) for t in raised] == [
        (AlarmKind.DEVICE, "device:vent-1:A12", AlarmPriority.HIGH)
    ]
    assert not raised[0].alarm.latching
    outcome = alarms.acknowledge(bed="bed-1", alarm_id=raised[0].alarm.id, by=_ack("c-1"), now=at(1))
    assert outcome.accepted
    assert "bedside" in outcome.reason
    alarms.device_alarms(bed="bed-1", device="vent-1", alarms=[apnea], now=at(2))
    alarms.take_transitions()
    alarms.device_alarms(bed="bed-1", device="vent-1", alarms=[], now=at(3))
    assert [t.kind for t in alarms.take_transitions()] == [EventKind.ALARM_ENDED]


def test_a_lost_device_is_a_technical_alarm_after_its_delay_that_ends_on_reconnect() -> None:
    alarms = manager()
    alarms.device_link(
        bed="bed-1", device="mon-1", connected=True, last_frame_mono_s=1000.0, refused=None, now=at(0)
    )
    alarms.device_link(
        bed="bed-1", device="mon-1", connected=False, last_frame_mono_s=1004.0, refused=None, now=at(5)
    )
    alarms.tick(now=at(6.9))
    assert alarms.take_transitions() == []
    alarms.tick(now=at(7))
    lost = alarms.take_transitions()
    assert [(t.alarm.kind, t.alarm.condition, t.alarm.device) for t in lost] == [
        (AlarmKind.TECHNICAL, "device_disconnected:mon-1", "mon-1")
    ]
    assert lost[0].alarm.onset == T0 + timedelta(seconds=5)
    alarms.device_link(
        bed="bed-1", device="mon-1", connected=True, last_frame_mono_s=1008.0, refused=None, now=at(8)
    )
    assert [t.kind for t in alarms.take_transitions()] == [EventKind.ALARM_ENDED]


def test_a_device_that_never_connects_gets_the_grace_period_first() -> None:
    alarms = manager()
    alarms.device_link(
        bed="bed-1", device="vent-1", connected=False, last_frame_mono_s=None, refused=None, now=at(0)
    )
    for step in range(34):  # ticks every 0.5 s up to 16.5 s: 15 s of grace, then the 2 s delay
        alarms.tick(now=at(step / 2))
    assert alarms.take_transitions() == []
    alarms.tick(now=at(17))
    assert [t.alarm.condition for t in alarms.take_transitions()] == ["device_disconnected:vent-1"]


def test_silence_and_refused_demo_data_are_technical_alarms() -> None:
    alarms = manager()
    refused = RefusedData(reason="demo_data", detail="monitor in demo mode", since=T0, refused_values=3)
    alarms.device_link(
        bed="bed-1", device="mon-1", connected=True, last_frame_mono_s=1000.0, refused=refused, now=at(0)
    )
    alarms.tick(now=at(10))
    conditions = sorted(t.alarm.condition for t in alarms.take_transitions())
    assert conditions == ["demo_data_refused:mon-1", "device_no_data:mon-1"]


def test_a_signal_lost_after_it_was_valid_is_a_technical_alarm() -> None:
    alarms = manager()
    assert spo2(alarms, None, 0, valid=False) == []  # never valid: a sensor not in use
    spo2(alarms, 97.0, 1)
    for t_s in range(2, 12):
        assert spo2(alarms, None, t_s, valid=False) == []
    lost = spo2(alarms, None, 12, valid=False)
    assert [(t.alarm.condition, t.alarm.kind) for t in lost] == [("value_invalid:spo2", AlarmKind.TECHNICAL)]
    assert [t.kind for t in spo2(alarms, 97.0, 13)] == [EventKind.ALARM_ENDED]


def _forecast(probability: float) -> ForecastBody:
    return ForecastBody(
        model=ForecastModelRef(id="m", version="1", kind="learned", backend="onnxruntime", precision="fp32"),
        made_at=T0,
        horizons_min=[1, 5, 10, 15],
        signals={},
        events={
            "spo2_below_90": EventForecast(
                description="SpO2 < 90 %",
                horizons=[
                    EventProbability(horizon_min=h, probability=probability * h / 15) for h in (1, 5, 10, 15)
                ],
            )
        },
        unavailable={},
    )


def test_a_predictive_alarm_is_low_priority_and_steps_aside_for_the_limit_alarm() -> None:
    alarms = manager()
    alarms.forecast(bed="bed-1", forecast=_forecast(0.6), now=at(0))
    assert alarms.take_transitions() == []
    alarms.forecast(bed="bed-1", forecast=_forecast(0.8), now=at(1))
    raised = [t.alarm for t in alarms.take_transitions()]
    assert [(a.kind, a.priority, a.key, a.horizon_min) for a in raised] == [
        (AlarmKind.PREDICTIVE, AlarmPriority.LOW, "spo2", 15)
    ]
    assert raised[0].probability == pytest.approx(0.8)
    alarms.forecast(bed="bed-1", forecast=_forecast(0.65), now=at(2))  # within the hysteresis
    assert alarms.take_transitions() == []
    for t_s in range(3, 14):
        spo2(alarms, 86.0, t_s)
    alarms.forecast(bed="bed-1", forecast=_forecast(0.95), now=at(14))
    assert [a.condition for a in alarms.active("bed-1")] == ["spo2_low"]


def test_appliance_conditions_reach_every_bed() -> None:
    alarms = manager()
    alarms.raise_appliance(
        condition=ApplianceCondition.CENTRAL_STATION_OFFLINE, cause="offline", text="x", now=at(0)
    )
    assert sorted(t.bed for t in alarms.take_transitions()) == ["bed-1", "bed-2"]
    alarms.clear_appliance(condition=ApplianceCondition.CENTRAL_STATION_OFFLINE, cause="online", now=at(1))
    assert [t.kind for t in alarms.take_transitions()] == [EventKind.ALARM_ENDED] * 2


def test_active_alarms_are_ordered_highest_priority_first() -> None:
    alarms = manager(bed_limits={"hr": LimitOverride(delay_s=0, priority=AlarmPriority.HIGH)})
    for t_s in range(11):
        spo2(alarms, 86.0, t_s)
    alarms.observe_values(bed="bed-1", values={"hr": value("hr", 30.0, t_s=12)}, now=at(12))
    assert [a.condition for a in alarms.active("bed-1")] == ["hr_low", "spo2_low"]
    assert [s.condition for s in alarms.summaries()["bed-1"]] == ["hr_low", "spo2_low"]


def test_a_restored_alarm_whose_limit_or_device_left_the_config_ends_at_start() -> None:
    alarms = manager()
    spo2_alarm = next(t for s in range(11) for t in spo2(alarms, 86.0, s)).alarm
    alarms.device_link(
        bed="bed-1", device="mon-1", connected=False, last_frame_mono_s=1000.0, refused=None, now=at(12)
    )
    alarms.tick(now=at(15))
    lost = alarms.take_transitions()[-1].alarm
    assert lost.condition == "device_disconnected:mon-1"
    restarted = AlarmManager(
        beds=["bed-1"],
        limits={"bed-1": effective_limits(ward={}, bed={"spo2": LimitOverride(low=None, high=99)})},
        settings=SETTINGS,
        restored={"bed-1": [spo2_alarm, lost]},
        now=at(20),
        devices={"bed-1": ["vent-1"]},
    )
    ended = restarted.take_transitions()
    assert sorted((t.kind, t.alarm.id) for t in ended) == sorted(
        [(EventKind.ALARM_ENDED, spo2_alarm.id), (EventKind.ALARM_ENDED, lost.id)]
    )
    assert restarted.active("bed-1") == []
