"""The alarm system's I/O side: feeds the manager, publishes, persists and audits, answers commands.

One owner, the daemon's event loop thread: the daemon hands it what changed (twin values, device
alarms and links, forecasts, the publisher's state) and the inbound messages the publisher
received; it publishes each alarm transition in order on `R/bed/{bed}/events` and as the retained
`R/bed/{bed}/alarm/{id}` (cleared once the alarm ended), saves it in the alarm store before anything
else, keeps the birth's active-alarm list current, and answers every command on `cmd-result`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from drivers.base import AlarmPriority
from edge.alarms.commands import (
    AckCommand,
    LimitsCommand,
    News2Command,
    PauseCommand,
    RebirthCommand,
    parse,
)
from edge.alarms.manager import AlarmManager, ApplianceCondition, CommandOutcome, Now, TechnicalSettings
from edge.alarms.news2 import Consciousness, News2Advisory, news2
from edge.alarms.profile import effective_limits, merge_limit
from edge.alarms.store import AlarmStore
from edge.config import AppConfig
from edge.contract import Topics
from edge.model import (
    Acknowledgement,
    AlarmBody,
    AlarmKind,
    AlarmLimit,
    CommandResultBody,
    CommandStatus,
    DeviceAlarm,
    DeviceState,
    EventBody,
    EventKind,
    ForecastBody,
    News2Body,
    TwinValue,
    utc_now,
)
from edge.outbox import DeliveryPriority
from edge.publisher import InboundMessage, Publisher, PublisherStats

LOGGER = logging.getLogger(__name__)

DROPS_QUIET_S = 60.0
"""The outbox-dropping alarm ends after this long without a new drop."""
CLOCK_JUMP_HOLD_S = 60.0
"""A wall-clock step stays an alarm condition this long (long enough for the station to see it)."""

CentralStation = Literal["online", "offline", "unknown"]
NEWS2_KEYS = ("rr", "spo2", "fio2", "abp_sys", "nbp_sys", "hr", "pr", "temp")


def now() -> Now:
    """Read both clocks."""
    return Now(mono_s=time.monotonic(), wall=utc_now())


def central_station_state(payload: bytes) -> CentralStation:
    """Read the central station's retained state: `{"online": bool}` (Sparkplug STATE) or online/offline."""
    text = payload.strip()
    if not text:
        return "unknown"
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return "unknown"
    if isinstance(document, dict):
        online = document.get("online", document.get("state"))
        if online is True or online == "online":
            return "online"
        if online is False or online == "offline":
            return "offline"
        return "unknown"
    if document in ("online", "offline"):
        return "online" if document == "online" else "offline"
    return "unknown"


class AlarmSystem:
    """The appliance's alarm system, wired to the publisher and the alarm store."""

    def __init__(
        self,
        *,
        config: AppConfig,
        store: AlarmStore,
        publisher: Publisher,
        topics: Topics,
        republish_bed: Callable[[str], None],
        mark_twin_dirty: Callable[[str], None],
        on_transition: Callable[[str, str, AlarmBody], None] | None = None,
    ) -> None:
        """`republish_bed`: publish a bed's retained state again (cmd/rebirth); `on_transition(bed,
        kind, alarm)`: told each transition after it was saved and published (the history); must not raise.
        """
        alarms = config.alarms
        self._config = config
        self._store = store
        self._publisher = publisher
        self._topics = topics
        self._republish_bed = republish_bed
        self._mark_twin_dirty = mark_twin_dirty
        self._on_transition = on_transition
        self._beds = [b.id for b in config.bed]
        limits = {b.id: effective_limits(ward=alarms.limits, bed=b.alarm_limits) for b in config.bed}
        for bed, by_key in store.limits().items():
            if bed in limits:
                limits[bed].update(by_key)
        self.manager = AlarmManager(
            beds=self._beds,
            limits=limits,
            settings=TechnicalSettings(
                device_lost_delay_s=alarms.device_lost_delay_s,
                connect_grace_s=alarms.connect_grace_s,
                no_data_s=alarms.no_data_s,
                invalid_value_delay_s=alarms.invalid_value_delay_s,
                predictive=alarms.predictive,
            ),
            restored=store.active_alarms(),
            now=now(),
            devices={b.id: [d.id for d in b.device] for b in config.bed},
        )
        self._spo2_scale = {b.id: int(b.news2_spo2_scale) for b in config.bed}
        self._consciousness: dict[str, Consciousness | None] = dict.fromkeys(self._beds)
        self._advisory = News2Advisory(
            emergency_at=alarms.news2_advisory.emergency_at,
            urgent_at=alarms.news2_advisory.urgent_at,
            single_parameter=alarms.news2_advisory.single_parameter,
        )
        self._news2_advisory: dict[str, str | None] = dict.fromkeys(self._beds)
        self.central_station: CentralStation = "unknown"
        self._last_dropped = 0
        self._last_drop_mono_s: float | None = None
        self._disconnected_since_mono_s: float | None = None
        self._clock_offset_s = time.time() - time.monotonic()
        self._clock_jump_mono_s: float | None = None
        self._store_was_healthy = True
        restored = sum(len(v) for v in self.manager.summaries().values())
        if restored:
            LOGGER.info("restored %d alarm(s) that had not ended (same ids, same states)", restored)
        self._publish_birth_state()

    # ---- inputs from the daemon ---------------------------------------------------------------

    def observe(self, *, bed: str, values: Mapping[str, TwinValue]) -> None:
        """Judge a bed's current values (those of its limited keys)."""
        self.manager.observe_values(bed=bed, values=values, now=now())
        self._flush()

    def limited_keys(self, bed: str) -> Sequence[str]:
        """The keys of a bed that have limits (the values `observe` needs)."""
        return list(self.manager.limits(bed))

    def device(self, *, bed: str, state: DeviceState) -> None:
        """Take a device's link state (connected, last frame, refused data)."""
        moment = now()
        last_frame_mono_s = None if state.last_frame_at is None else moment.mono_at(state.last_frame_at)
        self.manager.device_link(
            bed=bed,
            device=state.device,
            connected=state.connected,
            last_frame_mono_s=last_frame_mono_s,
            refused=state.refused,
            now=moment,
        )
        self._flush()

    def device_alarms(self, *, bed: str, device: str, alarms: Sequence[DeviceAlarm]) -> None:
        """Take the complete list of a device's own alarms."""
        self.manager.device_alarms(bed=bed, device=device, alarms=alarms, now=now())
        self._flush()

    def forecast(self, *, bed: str, forecast: ForecastBody) -> None:
        """Judge a forecast's event probabilities (predictive alarms)."""
        self.manager.forecast(bed=bed, forecast=forecast, now=now())
        self._flush()

    def tick(
        self, *, stats: PublisherStats, values_of: Callable[[str, Sequence[str]], Mapping[str, TwinValue]]
    ) -> None:
        """Let time act, and judge the appliance's own conditions (broker, outbox, clock, store).

        The keys with a pending limit condition are judged again first (`values_of(bed, keys)`: the
        twin's current values, aged now): a reading that went stale since it arrived stops the delay
        instead of letting it run out, and an intermittent reading (a cuff pressure, fresh for an hour)
        completes it without waiting for the next one. Only those: nothing else in the manager depends
        on time passing, and every bed's values at every tick would be work for nothing.
        """
        moment = now()
        for bed, keys in self.manager.pending_limit_keys().items():
            self.manager.observe_values(bed=bed, values=values_of(bed, keys), now=moment)
        self._judge_broker(stats, moment)
        self._judge_drops(stats, moment)
        self._judge_clock(moment)
        self._store.retry()
        self._judge_store(moment)
        self.manager.tick(now=moment)
        self._flush()

    def news2(self, *, bed: str, values: Mapping[str, TwinValue]) -> News2Body:
        """NEWS2 of a bed from its current values; an advisory change becomes an event."""
        body = news2(
            values,
            spo2_scale=self._spo2_scale[bed],
            consciousness=self._consciousness[bed],
            advisory=self._advisory,
            now=utc_now(),
        )
        if body.advisory != self._news2_advisory[bed]:
            before, self._news2_advisory[bed] = self._news2_advisory[bed], body.advisory
            detail = (
                f"NEWS2 {body.total}: {body.advisory} advisory ({body.risk} risk)"
                if body.advisory is not None
                else f"NEWS2 {body.total}: advisory {before} over"
            )
            if not body.complete:
                detail += f"; incomplete, missing {', '.join(body.missing)}"
            self._event(
                bed=bed, kind=EventKind.NEWS2_ADVISORY, detail=detail, priority=DeliveryPriority.STATE
            )
        return body

    def republish(self, bed: str) -> None:
        """Publish the retained state of every alarm of a bed again (rebirth, reconnection)."""
        for alarm in self.manager.active(bed):
            self._publisher.submit(
                topic=self._topics.alarm(bed, alarm.id),
                bed=bed,
                body=alarm,
                retain=True,
                priority=DeliveryPriority.ALARM,
            )

    def status(self) -> str:
        """One phrase for the systemd status line."""
        summaries = self.manager.summaries()
        count = sum(len(v) for v in summaries.values())
        high = sum(1 for v in summaries.values() for a in v if a.priority == AlarmPriority.HIGH)
        store = "" if self._store.healthy else "; alarm state NOT SAVED"
        return f"{count} alarm(s), {high} high; central station {self.central_station}{store}"

    # ---- inbound ------------------------------------------------------------------------------

    def inbound(self, message: InboundMessage) -> None:
        """Take a message the publisher received: a command, or the central station's state."""
        central = self._config.alarms.central_station_topic
        if central is not None and message.topic == central:
            self._central_station(central_station_state(message.payload))
            return
        parsed_topic = self._topics.parse_command(message.topic)
        if parsed_topic is None:
            LOGGER.warning("ignored a message on %s: not a command topic", message.topic)
            return
        bed, name = parsed_topic
        self._command(bed=bed, name=name, payload=message.payload, retained=message.retained)

    def _central_station(self, state: CentralStation) -> None:
        if state == self.central_station:
            return
        LOGGER.log(
            logging.WARNING if state == "offline" else logging.INFO,
            "the central station is %s (its state topic says so)",
            state,
        )
        self.central_station = state
        condition = ApplianceCondition.CENTRAL_STATION_OFFLINE
        cause = f"the central station's state topic says {state}"
        if state == "offline":
            text = "Central station offline: alarms are not being seen there"
            self.manager.raise_appliance(condition=condition, cause=cause, text=text, now=now())
        else:
            self.manager.clear_appliance(condition=condition, cause=cause, now=now())
        self._flush()

    def _command(self, *, bed: str, name: str, payload: bytes, retained: bool) -> None:
        parsed = parse(name, payload)
        moment = now()
        if bed not in self._beds:
            self._answer(
                bed=None, name=name, command_id=parsed.command_id, outcome=_no(f"no bed {bed!r} here")
            )
            return
        if retained:
            outcome = _no(
                "a retained command would be applied again at every reconnection: publish with retain off"
            )
            self._answer(bed=bed, name=name, command_id=parsed.command_id, outcome=outcome, store=False)
            return
        if parsed.command is None:
            assert parsed.problem is not None
            self._answer(
                bed=bed, name=name, command_id=parsed.command_id, outcome=_no(parsed.problem), store=False
            )
            return
        command = parsed.command
        earlier = self._store.command_result(bed=bed, command_id=command.command_id)
        if earlier is not None:
            self._publisher.submit(
                topic=self._topics.command_result(bed),
                bed=bed,
                body=earlier.model_copy(update={"duplicate": True, "at": moment.wall}),
                priority=DeliveryPriority.ALARM,
            )
            return
        match command:
            case AckCommand():
                outcome = self.manager.acknowledge(
                    bed=bed,
                    alarm_id=command.alarm_id,
                    by=Acknowledgement(
                        at=moment.wall,
                        command_id=command.command_id,
                        user=command.user,
                        role=command.role,
                        reason=command.reason,
                    ),
                    now=moment,
                )
            case PauseCommand():
                outcome = self._pause(bed=bed, command=command, moment=moment)
            case LimitsCommand():
                outcome = self._limits(bed=bed, command=command, moment=moment)
            case RebirthCommand():
                self._republish_bed(bed)
                outcome = CommandOutcome(accepted=True, reason="retained state of the bed published again")
            case News2Command():
                outcome = self._news2_inputs(bed=bed, command=command)
        self._flush()
        self._answer(
            bed=bed,
            name=name,
            command_id=command.command_id,
            outcome=outcome,
            actor=command.user,
            role=command.role,
            detail=payload.decode("utf-8", "replace"),
        )

    def _pause(self, *, bed: str, command: PauseCommand, moment: Now) -> CommandOutcome:
        alarms = self._config.alarms
        duration_s = command.duration_s if command.duration_s is not None else alarms.pause_default_s
        if duration_s > alarms.pause_max_s:
            return _no(f"a pause of {duration_s:g} s is longer than the {alarms.pause_max_s:g} s allowed")
        return self.manager.pause(bed=bed, duration_s=duration_s, alarm_id=command.alarm_id, now=moment)

    def _limits(self, *, bed: str, command: LimitsCommand, moment: Now) -> CommandOutcome:
        base = self.manager.limits(bed).get(command.key)
        try:
            limit = merge_limit(key=command.key, base=base, override=command.override(), origin="command")
        except ValueError as exc:
            return _no(str(exc))
        self.manager.set_limit(bed=bed, key=command.key, limit=limit, now=moment)
        self._store.save_limit(bed=bed, key=command.key, limit=limit)
        detail = f"{command.key} limits now {_describe(limit)} (by {command.user or 'unnamed user'})"
        LOGGER.warning("bed %s: %s", bed, detail, extra={"bed": bed})
        self._event(bed=bed, kind=EventKind.LIMITS_CHANGED, detail=detail, priority=DeliveryPriority.ALARM)
        self._mark_twin_dirty(bed)
        return CommandOutcome(accepted=True, reason=detail)

    def _news2_inputs(self, *, bed: str, command: News2Command) -> CommandOutcome:
        if command.consciousness is None and command.spo2_scale is None:
            return _no("give consciousness and/or spo2_scale")
        if command.consciousness is not None:
            self._consciousness[bed] = Consciousness(command.consciousness)
        if command.spo2_scale is not None:
            self._spo2_scale[bed] = command.spo2_scale
        self._mark_twin_dirty(bed)
        consciousness = self._consciousness[bed]
        return CommandOutcome(
            accepted=True,
            reason=f"NEWS2 inputs: consciousness {consciousness.value if consciousness else 'not set'}, "
            f"SpO2 scale {self._spo2_scale[bed]}",
        )

    def _answer(
        self,
        *,
        bed: str | None,
        name: str,
        command_id: str | None,
        outcome: CommandOutcome,
        store: bool = True,
        actor: str | None = None,
        role: str | None = None,
        detail: str = "",
    ) -> None:
        status = CommandStatus.ACCEPTED if outcome.accepted else CommandStatus.REJECTED
        result = CommandResultBody(
            command_id=command_id,
            command=name,
            status=status,
            reason=outcome.reason,
            alarm=outcome.alarm,
            at=utc_now(),
        )
        where = bed or "-"
        LOGGER.info("command %s %s on bed %s: %s (%s)", name, status.value, where, outcome.reason, command_id)
        self._store.audit(
            at=result.at,
            bed=where,
            actor=actor,
            role=role,
            action=f"cmd/{name}",
            detail=detail[:1000],
            result=f"{status.value}: {outcome.reason}",
        )
        if bed is None:
            return
        if store and command_id is not None:
            self._store.save_command_result(bed=bed, result=result)
        self._publisher.submit(
            topic=self._topics.command_result(bed), bed=bed, body=result, priority=DeliveryPriority.ALARM
        )

    # ---- the appliance's own conditions -------------------------------------------------------

    def _judge_broker(self, stats: PublisherStats, moment: Now) -> None:
        if stats.connected:
            if self._disconnected_since_mono_s is not None:
                self._disconnected_since_mono_s = None
                self.manager.clear_appliance(
                    condition=ApplianceCondition.BROKER_UNREACHABLE,
                    cause="connected to the broker again",
                    now=moment,
                )
            return
        if self._disconnected_since_mono_s is None:
            self._disconnected_since_mono_s = moment.mono_s
        away_s = moment.mono_s - self._disconnected_since_mono_s
        if away_s >= self._config.alarms.broker_unreachable_s:
            self.manager.raise_appliance(
                condition=ApplianceCondition.BROKER_UNREACHABLE,
                cause=f"no broker connection for {away_s:.0f} s ({stats.last_error or 'no reason given'}); "
                "messages wait in the outbox",
                text="Ward broker unreachable: the central station gets nothing new",
                now=moment,
            )

    def _judge_drops(self, stats: PublisherStats, moment: Now) -> None:
        dropped = sum(stats.dropped.values())
        if dropped > self._last_dropped:
            self._last_drop_mono_s = moment.mono_s
            self.manager.raise_appliance(
                condition=ApplianceCondition.OUTBOX_DROPPING,
                cause=f"{dropped - self._last_dropped} message(s) dropped ({stats.last_error or 'disk cap'})",
                text="Messages dropped: the outbox is full or the disk is",
                now=moment,
            )
        self._last_dropped = dropped
        if self._last_drop_mono_s is not None and moment.mono_s - self._last_drop_mono_s >= DROPS_QUIET_S:
            self._last_drop_mono_s = None
            self.manager.clear_appliance(
                condition=ApplianceCondition.OUTBOX_DROPPING,
                cause=f"no drop for {DROPS_QUIET_S:g} s",
                now=moment,
            )

    def _judge_clock(self, moment: Now) -> None:
        offset_s = moment.wall.timestamp() - moment.mono_s
        step_s = offset_s - self._clock_offset_s
        self._clock_offset_s = offset_s
        if abs(step_s) >= self._config.alarms.clock_jump_s:
            LOGGER.warning("the wall clock stepped by %+.1f s", step_s)
            self._clock_jump_mono_s = moment.mono_s
            self.manager.raise_appliance(
                condition=ApplianceCondition.CLOCK_JUMP,
                cause=f"the wall clock stepped by {step_s:+.1f} s (NTP, RTC): times around it do not compare",
                text="Clock stepped: check times around it",
                now=moment,
            )
        elif (
            self._clock_jump_mono_s is not None
            and moment.mono_s - self._clock_jump_mono_s >= CLOCK_JUMP_HOLD_S
        ):
            self._clock_jump_mono_s = None
            self.manager.clear_appliance(
                condition=ApplianceCondition.CLOCK_JUMP,
                cause=f"no step for {CLOCK_JUMP_HOLD_S:g} s",
                now=moment,
            )

    def _judge_store(self, moment: Now) -> None:
        healthy = self._store.healthy
        if healthy == self._store_was_healthy:
            return
        self._store_was_healthy = healthy
        if healthy:
            self.manager.clear_appliance(
                condition=ApplianceCondition.ALARM_STATE_NOT_SAVED,
                cause="alarm store writes again",
                now=moment,
            )
        else:
            self.manager.raise_appliance(
                condition=ApplianceCondition.ALARM_STATE_NOT_SAVED,
                cause=f"the alarm store cannot write: {self._store.last_error}",
                text="Alarm state not saved: a restart now would lose acknowledgements",
                now=moment,
            )

    # ---- output -------------------------------------------------------------------------------

    def _flush(self) -> None:
        transitions = self.manager.take_transitions()
        if not transitions:
            return
        for transition in transitions:
            bed, alarm = transition.bed, transition.alarm
            self._store.save_alarm(bed=bed, alarm=alarm)
            _log(transition.kind, bed, alarm, transition.detail)
            self._event(
                bed=bed,
                kind=transition.kind,
                detail=transition.detail,
                alarm=alarm,
                priority=DeliveryPriority.ALARM,
            )
            topic = self._topics.alarm(bed, alarm.id)
            self._publisher.submit(
                topic=topic, bed=bed, body=alarm, retain=True, priority=DeliveryPriority.ALARM
            )
            if transition.kind == EventKind.ALARM_ENDED:
                self._publisher.submit_clear(topic=topic, bed=bed)
            self._mark_twin_dirty(bed)
            if self._on_transition is not None:
                self._on_transition(bed, transition.kind.value, alarm)
        self._publish_birth_state()

    def _publish_birth_state(self) -> None:
        self._publisher.set_birth_state(alarms=self.manager.summaries(), central_station=self.central_station)

    def _event(
        self,
        *,
        bed: str,
        kind: EventKind,
        detail: str,
        priority: DeliveryPriority,
        alarm: AlarmBody | None = None,
    ) -> None:
        self._publisher.submit(
            topic=self._topics.events(bed),
            bed=bed,
            body=EventBody(
                kind=kind,
                device=None if alarm is None else alarm.device,
                detail=detail,
                alarm=alarm,
                at=utc_now(),
            ),
            priority=priority,
        )


def _no(reason: str) -> CommandOutcome:
    return CommandOutcome(accepted=False, reason=reason)


def _describe(limit: AlarmLimit) -> str:
    low = "-" if limit.low is None else f"{limit.low:g}"
    high = "-" if limit.high is None else f"{limit.high:g}"
    delay, hysteresis = limit.condition_delay_s, limit.end_hysteresis
    return f"{low}..{high}, {limit.priority}, delay {delay:g} s, hysteresis {hysteresis:g}"


def _log(kind: EventKind, bed: str, alarm: AlarmBody, detail: str) -> None:
    level = logging.WARNING if kind in (EventKind.ALARM_RAISED, EventKind.ALARM_ESCALATED) else logging.INFO
    if alarm.kind == AlarmKind.TECHNICAL and kind == EventKind.ALARM_RAISED:
        level = logging.WARNING
    LOGGER.log(
        level,
        "bed %s alarm %s %s (%s, %s): %s",
        bed,
        alarm.id,
        kind.value.removeprefix("alarm_"),
        alarm.priority,
        alarm.state,
        detail,
        extra={"bed": bed, "alarm_id": alarm.id},
    )
