"""The alarm manager: alarm conditions and alarm signal states of every bed (IEC 60601-1-8).

Sans-I/O and single-owner: the daemon's event loop thread feeds it what it knows (twin values, device
alarm lists, device link states, forecasts, the appliance's own troubles) and the time (`Now`, a
monotonic and a wall clock reading, injected so delays, pauses and escalations are tested to the
millisecond); the manager answers with `Transition`s, which the daemon publishes, persists and audits.

Condition and signal are kept apart. A *condition* (`spo2` below its low limit, a device disconnected)
is tracked from its onset; once it has held for its condition delay the manager *determines* it and
an alarm exists, with an id that stays for the whole episode (and across restarts: the daemon hands
the persisted alarms back at start, and a condition found present again continues its alarm instead
of raising a new one). The alarm's *signal state* then moves:

    active --ack--> acknowledged --condition ends--> ended
    active --condition ends--> ended, or latched (latching alarms: high priority by default)
    latched --ack--> ended;  latched --condition back--> active
    active/latched --pause--> audio_paused --time up--> active/latched (a pause always ends by itself)
    active/latched/audio_paused --unacknowledged for escalate_after_s--> priority one level up

A new alarm, and an escalated one, breaks through a pause. Nothing here turns an alarm off.

What ends a condition needs evidence: a limit alarm ends only on a valid, fresh value back inside
its limit by the hysteresis. A value that turns invalid or stale stops a pending condition (its delay
cannot be confirmed) but leaves a determined alarm as it is; the lost signal is then a technical alarm
of its own (no valid value, device disconnected), so nothing goes quiet because a sensor fell off.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from drivers.base import AlarmPriority
from drivers.vocabulary import TERMS
from edge.alarms.profile import PredictiveConfig
from edge.model import (
    Acknowledgement,
    AlarmBody,
    AlarmKind,
    AlarmLimit,
    AlarmState,
    AlarmSummary,
    DeviceAlarm,
    EventKind,
    ForecastBody,
    RefusedData,
    TwinValue,
)

_RANK = {AlarmPriority.LOW: 0, AlarmPriority.MEDIUM: 1, AlarmPriority.HIGH: 2}
_BY_RANK = {rank: priority for priority, rank in _RANK.items()}

PREDICTIVE_EVENTS: Mapping[str, tuple[str, str]] = {
    "map_below_65": ("map", "low"),
    "spo2_below_90": ("spo2", "low"),
}
"""Forecast event -> (key, direction) of the limit alarm it predicts (for de-duplication)."""


class ApplianceCondition(enum.StrEnum):
    """The appliance's own technical conditions; each is raised on every bed (every bed is affected)."""

    BROKER_UNREACHABLE = "broker_unreachable"
    OUTBOX_DROPPING = "outbox_dropping"
    CLOCK_JUMP = "clock_jump"
    CENTRAL_STATION_OFFLINE = "central_station_offline"
    ALARM_STATE_NOT_SAVED = "alarm_state_not_saved"


TECHNICAL_PRIORITY: Mapping[str, AlarmPriority] = {
    "device_disconnected": AlarmPriority.MEDIUM,
    "device_no_data": AlarmPriority.MEDIUM,
    "demo_data_refused": AlarmPriority.MEDIUM,
    "value_invalid": AlarmPriority.LOW,
    ApplianceCondition.BROKER_UNREACHABLE: AlarmPriority.MEDIUM,
    ApplianceCondition.OUTBOX_DROPPING: AlarmPriority.MEDIUM,
    ApplianceCondition.CLOCK_JUMP: AlarmPriority.LOW,
    ApplianceCondition.CENTRAL_STATION_OFFLINE: AlarmPriority.MEDIUM,
    ApplianceCondition.ALARM_STATE_NOT_SAVED: AlarmPriority.MEDIUM,
}
"""Priority of each technical condition (README, 'Alarms'): medium where monitoring of the bed is lost."""


@dataclass(frozen=True, slots=True)
class Now:
    """One reading of both clocks: monotonic for durations, wall for what is published."""

    mono_s: float
    wall: datetime

    def wall_at(self, mono_s: float) -> datetime:
        """Return the wall time of an earlier (or later) monotonic instant."""
        return self.wall + timedelta(seconds=mono_s - self.mono_s)

    def mono_at(self, wall: datetime) -> float:
        """Return the monotonic instant of a wall time (for state restored from disk)."""
        return self.mono_s + (wall - self.wall).total_seconds()


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """One change of one alarm, to publish in order (event, retained state, store, audit)."""

    bed: str
    kind: EventKind
    alarm: AlarmBody
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TechnicalSettings:
    """The `[alarms]` settings the manager needs, in its own terms."""

    device_lost_delay_s: float
    connect_grace_s: float
    no_data_s: float
    invalid_value_delay_s: float
    predictive: PredictiveConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandOutcome:
    """What a command did: accepted or not, why, and the alarm afterwards (for the cmd-result)."""

    accepted: bool
    reason: str
    alarm: AlarmBody | None = None


@dataclass(slots=True, kw_only=True)
class _Spec:
    """What a condition is, before and while it is an alarm."""

    kind: AlarmKind
    condition: str
    key: str | None
    device: str | None
    text: str
    cause: str
    priority: AlarmPriority
    latching: bool
    delay_s: float
    value: float | None = None
    unit: str | None = None
    limit: float | None = None
    direction: str | None = None
    hysteresis: float | None = None
    escalate_after_s: float | None = None
    probability: float | None = None
    horizon_min: int | None = None


@dataclass(slots=True, kw_only=True)
class _Pending:
    onset_mono_s: float
    spec: _Spec


@dataclass(slots=True, kw_only=True)
class _Alarm:
    id: str
    bed: str
    spec: _Spec
    priority: AlarmPriority
    onset: datetime
    determined_at: datetime
    escalate_from_mono_s: float
    condition_present: bool = True
    acknowledged: Acknowledgement | None = None
    paused_until: datetime | None = None
    paused_until_mono_s: float | None = None
    ended_at: datetime | None = None
    updated_at: datetime = field(default_factory=lambda: datetime.min.replace(tzinfo=UTC))

    @property
    def state(self) -> AlarmState:
        if self.ended_at is not None:
            return AlarmState.ENDED
        if self.acknowledged is not None:
            return AlarmState.ACKNOWLEDGED
        if self.paused_until is not None:
            return AlarmState.AUDIO_PAUSED
        if not self.condition_present:
            return AlarmState.LATCHED
        return AlarmState.ACTIVE

    def body(self) -> AlarmBody:
        spec = self.spec
        return AlarmBody(
            id=self.id,
            kind=spec.kind,
            condition=spec.condition,
            key=spec.key,
            text=spec.text,
            priority=self.priority,
            configured_priority=spec.priority,
            state=self.state,
            condition_present=self.condition_present,
            latching=spec.latching,
            onset=self.onset,
            determined_at=self.determined_at,
            ended_at=self.ended_at,
            value=spec.value,
            unit=spec.unit,
            limit=spec.limit,
            direction=spec.direction,
            condition_delay_s=spec.delay_s,
            end_hysteresis=spec.hysteresis,
            escalate_after_s=spec.escalate_after_s,
            probability=spec.probability,
            horizon_min=spec.horizon_min,
            device=spec.device,
            cause=spec.cause,
            acknowledged=self.acknowledged,
            audio_paused_until=self.paused_until,
            updated_at=self.updated_at,
        )


def _technical(
    *,
    condition: str,
    device: str | None,
    text: str,
    cause: str,
    priority: AlarmPriority,
    key: str | None = None,
    delay_s: float = 0.0,
) -> _Spec:
    """A technical condition: never latching (it ends when its cause clears)."""
    return _Spec(
        kind=AlarmKind.TECHNICAL,
        condition=condition,
        key=key,
        device=device,
        text=text,
        cause=cause,
        priority=priority,
        latching=False,
        delay_s=delay_s,
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-")[:40] or "alarm"


def _sort_key(alarm: _Alarm) -> tuple[int, datetime, str]:
    return (-_RANK[alarm.priority], alarm.onset, alarm.id)


def _restored(alarm: AlarmBody, *, bed: str, now: Now) -> _Alarm:
    spec = _Spec(
        kind=alarm.kind,
        condition=alarm.condition,
        key=alarm.key,
        device=alarm.device,
        text=alarm.text,
        cause=alarm.cause,
        priority=alarm.configured_priority,
        latching=alarm.latching,
        delay_s=alarm.condition_delay_s,
        value=alarm.value,
        unit=alarm.unit,
        limit=alarm.limit,
        direction=alarm.direction,
        hysteresis=alarm.end_hysteresis,
        escalate_after_s=alarm.escalate_after_s,
        probability=alarm.probability,
        horizon_min=alarm.horizon_min,
    )
    paused_until = alarm.audio_paused_until
    return _Alarm(
        id=alarm.id,
        bed=bed,
        spec=spec,
        priority=alarm.priority,
        onset=alarm.onset,
        determined_at=alarm.determined_at,
        escalate_from_mono_s=now.mono_at(alarm.updated_at),
        condition_present=alarm.condition_present,
        acknowledged=alarm.acknowledged,
        paused_until=paused_until,
        paused_until_mono_s=None if paused_until is None else now.mono_at(paused_until),
        updated_at=alarm.updated_at,
    )


class AlarmManager:
    """Every bed's alarm conditions and alarms; one owner (the event loop thread)."""

    def __init__(
        self,
        *,
        beds: Sequence[str],
        limits: Mapping[str, Mapping[str, AlarmLimit]],
        settings: TechnicalSettings,
        restored: Mapping[str, Sequence[AlarmBody]],
        now: Now,
        devices: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """`limits`: per bed, per key; `restored`: the alarms the store kept from the last run;
        `devices`: per bed, the configured device ids (a restored alarm of another device ends)."""
        self._beds = list(beds)
        self._limits = {bed: dict(limits.get(bed, {})) for bed in beds}
        self._settings = settings
        self._started_mono_s = now.mono_s
        self._alarms: dict[tuple[str, str], _Alarm] = {}
        """(bed, condition) -> the alarm of the condition's current episode (not ended)."""
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._seen_valid: set[tuple[str, str]] = set()
        self._devices: dict[tuple[str, str], tuple[bool, float | None, RefusedData | None]] = {}
        self._transitions: list[Transition] = []
        for bed, alarms in restored.items():
            if bed not in self._limits:
                continue
            for body in alarms:
                if body.state == AlarmState.ENDED:
                    continue
                alarm = _restored(body, bed=bed, now=now)
                self._alarms[(bed, body.condition)] = alarm
                gone = self._no_longer_configured(
                    alarm, devices=None if devices is None else devices.get(bed, ())
                )
                if gone is not None:
                    # nothing would ever judge it again: it would stay forever
                    self._end(alarm, now=now, cause=gone)

    def _no_longer_configured(self, alarm: _Alarm, *, devices: Sequence[str] | None) -> str | None:
        """Why a restored alarm can no longer be judged (its limit or device left the config), or None."""
        spec = alarm.spec
        if spec.kind == AlarmKind.PHYSIOLOGICAL and spec.key is not None:
            limit = self._limits[alarm.bed].get(spec.key)
            bound = None if limit is None else (limit.low if spec.direction == "low" else limit.high)
            if bound is None:
                return f"no {spec.direction} limit for {spec.key} in the config any more"
        if devices is not None and spec.device is not None and spec.device not in devices:
            return f"device {spec.device} is no longer in the config"
        return None

    # ---- reading ------------------------------------------------------------------------------

    def active(self, bed: str) -> list[AlarmBody]:
        """The bed's alarms that have not ended, highest priority first (then oldest first)."""
        alarms = sorted((a for (b, _), a in self._alarms.items() if b == bed), key=_sort_key)
        return [a.body() for a in alarms]

    def summaries(self) -> dict[str, list[AlarmSummary]]:
        """Per bed, short forms of `active` (for the birth)."""
        return {
            bed: [
                AlarmSummary(
                    id=a.id,
                    kind=a.kind,
                    condition=a.condition,
                    key=a.key,
                    priority=a.priority,
                    state=a.state,
                    text=a.text,
                    onset=a.onset,
                )
                for a in self.active(bed)
            ]
            for bed in self._beds
        }

    def limits(self, bed: str) -> dict[str, AlarmLimit]:
        """The limit settings in force for a bed."""
        return dict(self._limits[bed])

    def find(self, *, bed: str, alarm_id: str) -> AlarmBody | None:
        """The alarm of a bed with this id, if it has not ended."""
        alarm = self._by_id(bed, alarm_id)
        return None if alarm is None else alarm.body()

    def pending_limit_keys(self) -> dict[str, list[str]]:
        """Per bed, the keys whose limit condition is pending (waiting out its delay)."""
        pending: dict[str, list[str]] = {}
        for (bed, _), condition in self._pending.items():
            key = condition.spec.key
            if condition.spec.kind == AlarmKind.PHYSIOLOGICAL and key is not None:
                pending.setdefault(bed, []).append(key)
        return pending

    def take_transitions(self) -> list[Transition]:
        """Return (and forget) the transitions since the last call, oldest first."""
        transitions, self._transitions = self._transitions, []
        return transitions

    # ---- inputs -------------------------------------------------------------------------------

    def observe_values(self, *, bed: str, values: Mapping[str, TwinValue], now: Now) -> None:
        """Judge the bed's current twin values (the keys' sources) against its limits."""
        for key, limit in self._limits[bed].items():
            value = values.get(key)
            if value is None:
                continue
            self._judge_validity(bed=bed, key=key, value=value, now=now)
            usable = value.valid and not value.stale and value.value is not None
            for direction, bound in (("low", limit.low), ("high", limit.high)):
                if bound is None:
                    continue
                condition = f"{key}_{direction}"
                if not usable:
                    # cannot be confirmed either way: a pending delay starts over, an alarm stays
                    self._pending.pop((bed, condition), None)
                    continue
                assert value.value is not None
                self._judge_limit(
                    bed=bed,
                    key=key,
                    direction=direction,
                    bound=bound,
                    limit=limit,
                    reading=value.value,
                    read_at=value.received_at,
                    now=now,
                )

    def _judge_limit(
        self,
        *,
        bed: str,
        key: str,
        direction: str,
        bound: float,
        limit: AlarmLimit,
        reading: float,
        read_at: datetime,
        now: Now,
    ) -> None:
        condition = f"{key}_{direction}"
        beyond = reading < bound if direction == "low" else reading > bound
        alarm = self._alarms.get((bed, condition))
        if alarm is not None and alarm.condition_present:
            back = (
                reading >= bound + limit.end_hysteresis
                if direction == "low"
                else reading <= bound - limit.end_hysteresis
            )
            if back:
                self._condition_gone(
                    alarm, now=now, cause=f"{self._label(key)} back at {self._show(key, reading)}"
                )
            else:
                alarm.spec.value = reading
            return
        if not beyond:
            self._pending.pop((bed, condition), None)
            return
        priority = (
            limit.low_priority if direction == "low" and limit.low_priority is not None else limit.priority
        )
        word = "<" if direction == "low" else ">"
        label, shown, limit_shown = self._label(key), self._show(key, reading), self._show(key, bound)
        spec = _Spec(
            kind=AlarmKind.PHYSIOLOGICAL,
            condition=condition,
            key=key,
            device=None,
            text=f"{label} {direction} ({shown} {word} {limit_shown})",
            cause=f"{label} {shown} {word} {direction} limit {limit_shown}",
            priority=priority,
            latching=limit.latching,
            delay_s=limit.condition_delay_s,
            value=reading,
            unit=TERMS[key].unit if key in TERMS else None,
            limit=bound,
            direction=direction,
            hysteresis=limit.end_hysteresis,
            escalate_after_s=limit.escalate_after_s,
        )
        if alarm is not None:
            # latched, and the condition is back: the same alarm is active again
            alarm.spec = replace(spec, priority=alarm.spec.priority)
            self._condition_back(alarm, now=now)
            return
        # the condition began with the reading (its delay too), not when the loop got to it
        self._hold(bed=bed, spec=spec, now=now, onset_mono_s=min(now.mono_s, now.mono_at(read_at)))

    def _judge_validity(self, *, bed: str, key: str, value: TwinValue, now: Now) -> None:
        """A limited key that had a valid value and has none now is a technical alarm (signal lost)."""
        condition = f"value_invalid:{key}"
        if value.valid and value.value is not None:
            self._seen_valid.add((bed, key))
            self._clear(bed=bed, condition=condition, now=now, cause=f"{self._label(key)} valid again")
            return
        if value.stale or (bed, key) not in self._seen_valid:
            return
        why = value.invalid_reason.value if value.invalid_reason is not None else "no value"
        flag = f", device says {value.device_flag}" if value.device_flag else ""
        self._hold(
            bed=bed,
            spec=_technical(
                condition=condition,
                key=key,
                device=value.device,
                text=f"{self._label(key)}: no valid value",
                cause=f"{value.device} sends {self._label(key)} without a valid value ({why}{flag})",
                priority=TECHNICAL_PRIORITY["value_invalid"],
                delay_s=self._settings.invalid_value_delay_s,
            ),
            now=now,
        )

    def device_alarms(self, *, bed: str, device: str, alarms: Sequence[DeviceAlarm], now: Now) -> None:
        """Take the device's complete list of its own active alarms."""
        reported = {f"device:{device}:{a.code}": a for a in alarms}
        for condition, reading in reported.items():
            self._hold(
                bed=bed,
                spec=_Spec(
                    kind=AlarmKind.DEVICE,
                    condition=condition,
                    key=None,
                    device=device,
                    text=f"{device}: {reading.text}",
                    cause=f"{device} reports alarm {reading.code} ({reading.priority})",
                    priority=reading.priority,
                    latching=False,
                    delay_s=0.0,
                ),
                now=now,
            )
        prefix = f"device:{device}:"
        for b, condition in list(self._alarms):
            if b == bed and condition.startswith(prefix) and condition not in reported:
                self._clear(bed=bed, condition=condition, now=now, cause=f"{device} no longer reports it")

    def device_link(
        self,
        *,
        bed: str,
        device: str,
        connected: bool,
        last_frame_mono_s: float | None,
        refused: RefusedData | None,
        now: Now,
    ) -> None:
        """Take a device's link state (called on every change and every tick)."""
        self._devices[(bed, device)] = (connected, last_frame_mono_s, refused)
        self._judge_device(bed=bed, device=device, now=now)

    def _judge_device(self, *, bed: str, device: str, now: Now) -> None:
        connected, last_frame_mono_s, refused = self._devices[(bed, device)]
        settings = self._settings
        lost = f"device_disconnected:{device}"
        if connected:
            self._clear(bed=bed, condition=lost, now=now, cause=f"{device} connected")
        elif last_frame_mono_s is not None or now.mono_s - self._started_mono_s >= settings.connect_grace_s:
            # a device that never answered gets `connect_grace_s` after the start to do so
            self._hold(
                bed=bed,
                spec=_technical(
                    condition=lost,
                    device=device,
                    text=f"{device} disconnected",
                    cause=f"no link to {device}",
                    priority=TECHNICAL_PRIORITY["device_disconnected"],
                    delay_s=settings.device_lost_delay_s,
                ),
                now=now,
            )
        silent = f"device_no_data:{device}"
        quiet_s = None if last_frame_mono_s is None else now.mono_s - last_frame_mono_s
        if connected and quiet_s is not None and quiet_s >= settings.no_data_s:
            self._hold(
                bed=bed,
                spec=_technical(
                    condition=silent,
                    device=device,
                    text=f"{device}: no data",
                    cause=f"{device} is connected but sent nothing for {quiet_s:.0f} s",
                    priority=TECHNICAL_PRIORITY["device_no_data"],
                ),
                now=now,
            )
        else:
            self._clear(bed=bed, condition=silent, now=now, cause=f"{device} sends data again")
        demo = f"demo_data_refused:{device}"
        if refused is not None:
            self._hold(
                bed=bed,
                spec=_technical(
                    condition=demo,
                    device=device,
                    text=f"{device}: {refused.reason.replace('_', ' ')} refused",
                    cause=refused.detail,
                    priority=TECHNICAL_PRIORITY["demo_data_refused"],
                ),
                now=now,
            )
        else:
            self._clear(bed=bed, condition=demo, now=now, cause=f"{device} sends patient data")

    def forecast(self, *, bed: str, forecast: ForecastBody, now: Now) -> None:
        """Judge a bed's forecast's event probabilities (predictive alarms)."""
        config = self._settings.predictive
        for event, (key, direction) in PREDICTIVE_EVENTS.items():
            condition = f"predicted_{event}"
            prediction = forecast.events.get(event)
            if not config.enabled or prediction is None:
                self._clear(bed=bed, condition=condition, now=now, cause="no forecast for it")
                continue
            physiological = self._alarms.get((bed, f"{key}_{direction}"))
            if physiological is not None:
                self._clear(bed=bed, condition=condition, now=now, cause="the limit alarm itself is raised")
                continue
            within = [p for p in prediction.horizons if p.horizon_min <= config.horizon_max_min]
            if not within:
                continue
            best = max(within, key=lambda p: p.probability)
            existing = self._alarms.get((bed, condition))
            threshold = config.threshold - (config.hysteresis if existing is not None else 0.0)
            if best.probability < threshold:
                self._pending.pop((bed, condition), None)
                self._clear(
                    bed=bed, condition=condition, now=now, cause=f"probability down to {best.probability:.0%}"
                )
                continue
            first = next(p for p in within if p.probability >= threshold)
            spec = _Spec(
                kind=AlarmKind.PREDICTIVE,
                condition=condition,
                key=key,
                device=None,
                text=f"{prediction.description}: {best.probability:.0%} within {first.horizon_min} min",
                cause=f"forecast of {forecast.model.id} {forecast.model.version} at {forecast.made_at:%H:%M}",
                priority=config.priority,
                latching=False,
                delay_s=0.0,
                probability=best.probability,
                horizon_min=first.horizon_min,
            )
            if existing is not None:
                existing.spec.probability = best.probability
                existing.spec.horizon_min = first.horizon_min
                continue
            self._hold(bed=bed, spec=spec, now=now)

    def raise_appliance(self, *, condition: ApplianceCondition, cause: str, text: str, now: Now) -> None:
        """One of the appliance's own technical conditions is present: on every bed."""
        for bed in self._beds:
            spec = _technical(
                condition=condition.value,
                device=None,
                text=text,
                cause=cause,
                priority=TECHNICAL_PRIORITY[condition],
            )
            self._hold(bed=bed, spec=spec, now=now)

    def clear_appliance(self, *, condition: ApplianceCondition, cause: str, now: Now) -> None:
        """One of the appliance's own technical conditions is gone: on every bed."""
        for bed in self._beds:
            self._clear(bed=bed, condition=condition.value, now=now, cause=cause)

    def tick(self, *, now: Now) -> None:
        """Let time act: delays complete, devices fall silent, pauses end, alarms escalate."""
        for (bed, condition), pending in list(self._pending.items()):
            if now.mono_s - pending.onset_mono_s >= pending.spec.delay_s:
                self._determine(bed=bed, condition=condition, pending=pending, now=now)
        for bed, device in list(self._devices):
            self._judge_device(bed=bed, device=device, now=now)
        for alarm in list(self._alarms.values()):
            if alarm.paused_until_mono_s is not None and now.mono_s >= alarm.paused_until_mono_s:
                alarm.paused_until = alarm.paused_until_mono_s = None
                self._emit(alarm, EventKind.ALARM_STATE_CHANGED, "audio pause over", now=now)
            self._escalate_if_due(alarm, now=now)

    # ---- commands -----------------------------------------------------------------------------

    def acknowledge(self, *, bed: str, alarm_id: str, by: Acknowledgement, now: Now) -> CommandOutcome:
        """Acknowledge one alarm of a bed (the signal of the current condition)."""
        alarm = self._by_id(bed, alarm_id)
        if alarm is None:
            return CommandOutcome(accepted=False, reason=f"no alarm {alarm_id} on {bed} that has not ended")
        note = (
            "; recorded on the appliance only: the device keeps its own alarm until silenced at the bedside"
            if alarm.spec.kind == AlarmKind.DEVICE
            else ""
        )
        if alarm.acknowledged is not None:
            return CommandOutcome(accepted=True, reason=f"already acknowledged{note}", alarm=alarm.body())
        alarm.acknowledged = by
        alarm.paused_until = alarm.paused_until_mono_s = None
        who = by.user or "unnamed user"
        if not alarm.condition_present:
            self._end(alarm, now=now, cause=f"latched alarm acknowledged by {who}")
            return CommandOutcome(
                accepted=True, reason=f"acknowledged; the condition had gone: ended{note}", alarm=alarm.body()
            )
        self._emit(alarm, EventKind.ALARM_STATE_CHANGED, f"acknowledged by {who}", now=now)
        return CommandOutcome(
            accepted=True, reason=f"acknowledged; it ends when the condition does{note}", alarm=alarm.body()
        )

    def pause(self, *, bed: str, duration_s: float, alarm_id: str | None, now: Now) -> CommandOutcome:
        """Pause the audio of a bed's sounding alarms (or of one) for a limited time."""
        if alarm_id is not None:
            one = self._by_id(bed, alarm_id)
            if one is None:
                return CommandOutcome(
                    accepted=False, reason=f"no alarm {alarm_id} on {bed} that has not ended"
                )
            targets = [one]
        else:
            targets = [a for (b, _), a in self._alarms.items() if b == bed]
        sounding = [a for a in targets if a.acknowledged is None]
        if not sounding:
            return CommandOutcome(
                accepted=False, reason="no unacknowledged alarm to pause (new alarms always sound anyway)"
            )
        until_mono_s = now.mono_s + duration_s
        until = now.wall_at(until_mono_s)
        for alarm in sounding:
            alarm.paused_until, alarm.paused_until_mono_s = until, until_mono_s
            self._emit(alarm, EventKind.ALARM_STATE_CHANGED, f"audio paused for {duration_s:g} s", now=now)
        return CommandOutcome(
            accepted=True,
            reason=f"audio of {len(sounding)} alarm(s) paused until {until:%H:%M:%S} UTC; "
            "new or higher-priority alarms break through",
            alarm=sounding[0].body() if alarm_id is not None else None,
        )

    def set_limit(self, *, bed: str, key: str, limit: AlarmLimit, now: Now) -> None:
        """Put a validated limit setting in force for one key of a bed."""
        self._limits[bed][key] = limit
        for direction, bound in (("low", limit.low), ("high", limit.high)):
            if bound is None:
                self._pending.pop((bed, f"{key}_{direction}"), None)
                self._clear(
                    bed=bed, condition=f"{key}_{direction}", now=now, cause="limit removed by command"
                )

    # ---- lifecycle ----------------------------------------------------------------------------

    def _hold(self, *, bed: str, spec: _Spec, now: Now, onset_mono_s: float | None = None) -> None:
        """The condition is present (since `onset_mono_s`, default now): start its delay, determine
        it, or keep its alarm going."""
        alarm = self._alarms.get((bed, spec.condition))
        if alarm is not None:
            if not alarm.condition_present:
                alarm.spec = replace(spec, priority=alarm.spec.priority)
                self._condition_back(alarm, now=now)
            else:
                alarm.spec.value = spec.value
            return
        pending = self._pending.get((bed, spec.condition))
        if pending is None:
            pending = _Pending(onset_mono_s=now.mono_s if onset_mono_s is None else onset_mono_s, spec=spec)
            self._pending[(bed, spec.condition)] = pending
        else:
            pending.spec = spec
        if now.mono_s - pending.onset_mono_s >= spec.delay_s:
            self._determine(bed=bed, condition=spec.condition, pending=pending, now=now)

    def _determine(self, *, bed: str, condition: str, pending: _Pending, now: Now) -> None:
        del self._pending[(bed, condition)]
        spec = pending.spec
        alarm = _Alarm(
            id=f"{_slug(condition)}-{uuid.uuid4().hex[:12]}",
            bed=bed,
            spec=spec,
            priority=spec.priority,
            onset=now.wall_at(pending.onset_mono_s),
            determined_at=now.wall,
            escalate_from_mono_s=now.mono_s,
        )
        self._alarms[(bed, condition)] = alarm
        delay = f" after {spec.delay_s:g} s" if spec.delay_s else ""
        self._emit(
            alarm, EventKind.ALARM_RAISED, f"{spec.priority} {spec.kind} alarm{delay}: {spec.cause}", now=now
        )

    def _clear(self, *, bed: str, condition: str, now: Now, cause: str) -> None:
        self._pending.pop((bed, condition), None)
        alarm = self._alarms.get((bed, condition))
        if alarm is not None and alarm.condition_present:
            self._condition_gone(alarm, now=now, cause=cause)

    def _condition_gone(self, alarm: _Alarm, *, now: Now, cause: str) -> None:
        alarm.condition_present = False
        if alarm.acknowledged is not None or not alarm.spec.latching:
            self._end(alarm, now=now, cause=cause)
        else:
            self._emit(
                alarm,
                EventKind.ALARM_STATE_CHANGED,
                f"condition gone ({cause}); latched until acknowledged",
                now=now,
            )

    def _condition_back(self, alarm: _Alarm, *, now: Now) -> None:
        alarm.condition_present = True
        self._emit(alarm, EventKind.ALARM_STATE_CHANGED, f"condition back: {alarm.spec.cause}", now=now)

    def _end(self, alarm: _Alarm, *, now: Now, cause: str) -> None:
        alarm.condition_present = False
        alarm.ended_at = now.wall
        alarm.paused_until = alarm.paused_until_mono_s = None
        del self._alarms[(alarm.bed, alarm.spec.condition)]
        self._emit(alarm, EventKind.ALARM_ENDED, f"ended: {cause}", now=now)

    def _escalate_if_due(self, alarm: _Alarm, *, now: Now) -> None:
        after_s = alarm.spec.escalate_after_s
        if after_s is None or alarm.acknowledged is not None:
            return
        ceiling = AlarmPriority.HIGH
        if alarm.spec.kind == AlarmKind.PREDICTIVE and not self._settings.predictive.allow_high:
            ceiling = AlarmPriority.MEDIUM
        if _RANK[alarm.priority] >= _RANK[ceiling] or now.mono_s - alarm.escalate_from_mono_s < after_s:
            return
        alarm.priority = _BY_RANK[_RANK[alarm.priority] + 1]
        alarm.escalate_from_mono_s = now.mono_s
        # an escalated alarm breaks through a pause
        alarm.paused_until = alarm.paused_until_mono_s = None
        self._emit(
            alarm,
            EventKind.ALARM_ESCALATED,
            f"unacknowledged for {after_s:g} s: priority raised to {alarm.priority}",
            now=now,
        )

    def _emit(self, alarm: _Alarm, kind: EventKind, detail: str, *, now: Now) -> None:
        alarm.updated_at = now.wall
        self._transitions.append(Transition(bed=alarm.bed, kind=kind, alarm=alarm.body(), detail=detail))

    def _by_id(self, bed: str, alarm_id: str) -> _Alarm | None:
        return next((a for (b, _), a in self._alarms.items() if b == bed and a.id == alarm_id), None)

    @staticmethod
    def _label(key: str) -> str:
        term = TERMS.get(key)
        return term.label if term is not None else key

    @staticmethod
    def _show(key: str, value: float) -> str:
        term = TERMS.get(key)
        unit = term.unit if term is not None else ""
        shown = {"mm[Hg]": "mmHg", "Cel": "°C", "/min": "/min", "%": "%"}.get(unit, unit)
        return f"{value:g} {shown}".strip()
