"""The terminal ward view: subscribe to the MQTT contract v1 like a central station would, and show it.

`icu-edge watch --broker mqtt://host:port` subscribes to `{prefix}/#`, validates every payload against
the contract's pydantic models, and shows per appliance its birth/death status (and the central station's
state the birth reports) and per bed the twin, ventilator settings, the appliance's own alarms (state,
age, acknowledgement), NEWS2, the alarms the devices report, the latest forecast, devices and recent
events (alarm events by priority and state; events replayed from the outbox marked). Payloads that
break the contract are counted and shown, never fatal; `seq` gaps per (topic, session) are counted
as lost or reordered.

The state (`WardState`) is a pure class fed `(topic, payload, retained)`; paho's callbacks only enqueue,
and the main thread applies and renders.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import queue
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TypeVar
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ValidationError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from edge.model import (
    AlarmBody,
    AlarmState,
    ApplianceState,
    ApplianceStatusMessage,
    DeviceState,
    DeviceStatusMessage,
    Envelope,
    EventMessage,
    ForecastBody,
    ForecastMessage,
    News2Body,
    TwinMessage,
    VitalsMessage,
)

LOGGER = logging.getLogger(__name__)

EX_OK: Final = 0
EX_USAGE: Final = 2
EX_UNAVAILABLE: Final = 69

DEFAULT_BROKER: Final = "mqtt://127.0.0.1:1883"
DEFAULT_PREFIX: Final = "icu/v1"
DEFAULT_CONNECT_TIMEOUT_S: Final = 5.0
REFRESH_PER_SECOND: Final = 4
PLAIN_MIN_PERIOD_S: Final = 1.0
EVENTS_SHOWN: Final = 5
PROBLEMS_KEPT: Final = 8

PRIORITY_STYLE: Final[dict[str, str]] = {"high": "bold red", "medium": "yellow", "low": "cyan"}
CENTRAL_STATION_STYLE: Final[dict[str, str]] = {"online": "green", "offline": "bold red"}
NEWS2_RISK_STYLE: Final[dict[str, str]] = {"high": "bold red", "medium": "red", "low_medium": "yellow"}
CONDITION_GONE: Final = "CONDITION GONE"
"""Shown for an alarm whose condition has ended while its signal is still held (latched)."""
EVENT_RED_AT: Final = 0.5
"""An event probability at or above this is shown red."""
EVENT_YELLOW_AT: Final = 0.2
"""An event probability at or above this (and below red) is shown yellow."""

_M = TypeVar("_M", bound=BaseModel)
_E = TypeVar("_E", bound=Envelope)

BedKey = tuple[str, str, str]
"""(site, ward, bed)."""
ApplianceKey = tuple[str, str, str]
"""(site, ward, appliance id)."""


# ---- state ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ApplianceView:
    """What the ward view knows about one appliance."""

    status: ApplianceStatusMessage


@dataclass(slots=True)
class BedView:
    """What the ward view knows about one bed."""

    appliance: str | None = None
    twin: TwinMessage | None = None
    twin_lag_s: float = 0.0
    """How old the snapshot already was when it arrived (retained snapshots only)."""
    twin_received_mono_s: float = 0.0
    device_status: dict[str, DeviceStatusMessage] = field(default_factory=dict)
    events: deque[EventMessage] = field(default_factory=lambda: deque(maxlen=EVENTS_SHOWN))
    vitals_batches: int = 0
    vitals_observations: int = 0
    vitals_coalesced: int = 0
    last_vitals: VitalsMessage | None = None
    forecast_message: ForecastMessage | None = None
    """The latest message on the bed's forecast topic."""

    def forecast(self) -> ForecastBody | None:
        """Return the latest forecast: the forecast topic's message, else the one inside the twin."""
        if self.forecast_message is not None:
            return self.forecast_message
        return None if self.twin is None else self.twin.forecast

    def forecast_source(self) -> str:
        """Return where `forecast()` comes from, for the view's heading."""
        message = self.forecast_message
        if message is not None:
            return f"session {message.session} seq {message.seq}"
        return "from the twin"

    def devices(self) -> dict[str, DeviceState]:
        """Return the newest known state of every device, from the twin or the device topic."""
        chosen: dict[str, tuple[datetime, DeviceState]] = {}
        if self.twin is not None:
            for device_id, state in self.twin.devices.items():
                chosen[device_id] = (self.twin.ts, state)
        for device_id, message in self.device_status.items():
            known = chosen.get(device_id)
            if known is None or message.ts >= known[0]:
                chosen[device_id] = (message.ts, message.status)
        return {device_id: chosen[device_id][1] for device_id in sorted(chosen)}


@dataclass(frozen=True, slots=True)
class _TopicShape:
    site: str
    ward: str
    kind: str  # appliance | twin | vitals | events | forecast | device | other
    name: str  # appliance id or bed id
    device: str | None = None


class WardState:
    """Everything the ward view shows, built only from `(topic, payload, retained)` deliveries."""

    def __init__(
        self,
        *,
        prefix: str = DEFAULT_PREFIX,
        site: str | None = None,
        ward: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        """Create an empty ward; `site`/`ward` filter what is kept, clocks are injectable for tests."""
        self.prefix = prefix.strip("/")
        self.site = site
        self.ward = ward
        self._clock = clock
        self._wall_clock = wall_clock if wall_clock is not None else _utc_now
        self.appliances: dict[ApplianceKey, ApplianceView] = {}
        self.beds: dict[BedKey, BedView] = {}
        self.messages = 0
        self.ignored = 0
        self.violations = 0
        self.lost = 0
        self.reordered = 0
        self.internal_errors = 0
        self.violation_log: deque[str] = deque(maxlen=PROBLEMS_KEPT)
        self.gap_log: deque[str] = deque(maxlen=PROBLEMS_KEPT)
        self.connection = "connecting"
        self._last_seq: dict[tuple[str, int], int] = {}

    # -- input --------------------------------------------------------------------------------------

    def set_connection(self, text: str) -> None:
        """Record the broker connection state shown in the header."""
        self.connection = text

    def apply(self, topic: str, payload: bytes, *, retained: bool) -> None:
        """Apply one delivered message; contract violations are counted, never raised."""
        shape = self._parse_topic(topic)
        if shape is None:
            self.ignored += 1
            return
        self.messages += 1
        if shape.kind == "other":
            self.ignored += 1
            return
        if not payload:
            self._clear_retained(shape)
            return
        if shape.kind == "appliance":
            self._apply_status(topic, shape, payload, retained=retained)
        elif shape.kind == "twin":
            self._apply_twin(topic, shape, payload, retained=retained)
        elif shape.kind == "vitals":
            self._apply_vitals(topic, shape, payload, retained=retained)
        elif shape.kind == "events":
            self._apply_event(topic, shape, payload, retained=retained)
        elif shape.kind == "forecast":
            self._apply_forecast(topic, shape, payload, retained=retained)
        elif shape.kind == "device":
            self._apply_device(topic, shape, payload, retained=retained)

    def note_internal_error(self) -> None:
        """Count a bug in the viewer itself (logged by the caller with its traceback)."""
        self.internal_errors += 1

    # -- queries ------------------------------------------------------------------------------------

    def now_mono_s(self) -> float:
        """Return the state's monotonic clock."""
        return self._clock()

    def now_wall(self) -> datetime:
        """Return the state's wall clock (alarm ages are measured against it)."""
        return self._wall_clock()

    def twin_extra_age_s(self, bed: BedView) -> float:
        """Return how much older than its `age_s` fields the bed's twin snapshot is now."""
        return bed.twin_lag_s + max(0.0, self._clock() - bed.twin_received_mono_s)

    def appliance_state(self, site: str, ward: str, appliance: str | None) -> str:
        """Return `online`, `offline` or `unknown` for the appliance that owns a bed."""
        if appliance is None:
            return "unknown"
        view = self.appliances.get((site, ward, appliance))
        return "unknown" if view is None else str(view.status.state)

    # -- internals ----------------------------------------------------------------------------------

    def _parse_topic(self, topic: str) -> _TopicShape | None:
        head = self.prefix + "/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) < 3:
            return None
        site, ward = parts[0], parts[1]
        if (self.site is not None and site != self.site) or (self.ward is not None and ward != self.ward):
            return None
        rest = parts[2:]
        if len(rest) == 3 and rest[0] == "appliance" and rest[2] == "status":
            return _TopicShape(site, ward, "appliance", rest[1])
        if len(rest) == 3 and rest[0] == "bed" and rest[2] in ("twin", "vitals", "events", "forecast"):
            return _TopicShape(site, ward, rest[2], rest[1])
        if len(rest) == 4 and rest[0] == "bed" and rest[2] == "device":
            return _TopicShape(site, ward, "device", rest[1], rest[3])
        return _TopicShape(site, ward, "other", "")

    def _violation(self, topic: str, what: str) -> None:
        self.violations += 1
        self.violation_log.append(f"{topic}: {what}")

    def _validate(self, model: type[_M], topic: str, payload: bytes) -> _M | None:
        try:
            return model.model_validate_json(payload)
        except ValidationError as error:
            first = error.errors()[0]
            location = ".".join(str(part) for part in first["loc"]) or "(payload)"
            more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
            self._violation(topic, f"schema violation: {location}: {first['msg']}{more}")
            return None

    def _check_envelope(
        self,
        topic: str,
        message: Envelope,
        *,
        schema: str,
        bed: str | None,
        appliance: str | None = None,
    ) -> bool:
        if message.schema_id != schema:
            self._violation(topic, f"schema {message.schema_id!r} on a topic that carries {schema!r}")
            return False
        if message.bed != bed:
            self._violation(topic, f"bed {message.bed!r} does not match the topic ({bed!r})")
            return False
        if appliance is not None and message.appliance != appliance:
            self._violation(topic, f"appliance {message.appliance!r} does not match the topic")
            return False
        return True

    def _track_seq(self, topic: str, *, session: int, seq: int, retained: bool) -> bool:
        """Count gaps; return False for a retained replay of something already seen."""
        key = (topic, session)
        last = self._last_seq.get(key)
        if last is None:
            self._last_seq[key] = seq
            return True
        if seq == last + 1:
            self._last_seq[key] = seq
            return True
        if seq > last + 1:
            missing = seq - last - 1
            self.lost += missing
            self.gap_log.append(f"{topic} session {session}: {missing} lost (seq {last} -> {seq})")
            self._last_seq[key] = seq
            return True
        if retained:
            return False  # the broker replaying its retained copy (resubscribe): not news
        self.reordered += 1
        self.gap_log.append(f"{topic} session {session}: seq {seq} after {last} (reordered/duplicate)")
        return False

    def _bed(self, shape: _TopicShape) -> BedView:
        key = (shape.site, shape.ward, shape.name)
        view = self.beds.get(key)
        if view is None:
            view = self.beds[key] = BedView()
        return view

    def _clear_retained(self, shape: _TopicShape) -> None:
        if shape.kind == "appliance":
            self.appliances.pop((shape.site, shape.ward, shape.name), None)
        elif shape.kind == "twin":
            bed = self.beds.get((shape.site, shape.ward, shape.name))
            if bed is not None:
                bed.twin = None
        elif shape.kind == "forecast":
            bed = self.beds.get((shape.site, shape.ward, shape.name))
            if bed is not None:
                bed.forecast_message = None
        elif shape.kind == "device" and shape.device is not None:
            bed = self.beds.get((shape.site, shape.ward, shape.name))
            if bed is not None:
                bed.device_status.pop(shape.device, None)
        else:
            self.ignored += 1

    def _apply_status(self, topic: str, shape: _TopicShape, payload: bytes, *, retained: bool) -> None:
        message = self._validate(ApplianceStatusMessage, topic, payload)
        if message is None or not self._check_envelope(
            topic, message, schema=ApplianceStatusMessage.SCHEMA, bed=None, appliance=shape.name
        ):
            return
        if not self._track_seq(topic, session=message.session, seq=message.seq, retained=retained):
            return
        key = (shape.site, shape.ward, shape.name)
        known = self.appliances.get(key)
        if known is not None and message.session < known.status.session:
            return  # a late message from an older daemon run
        self.appliances[key] = ApplianceView(status=message)
        for bed in message.beds:
            view = self._bed(_TopicShape(shape.site, shape.ward, "twin", bed))
            view.appliance = message.appliance

    def _accept(
        self, model: type[_E], topic: str, shape: _TopicShape, payload: bytes, *, retained: bool
    ) -> tuple[BedView, _E] | None:
        """Validate a bed-topic payload, check its envelope and seq; return its bed view and message."""
        message = self._validate(model, topic, payload)
        if message is None or not self._check_envelope(topic, message, schema=model.SCHEMA, bed=shape.name):
            return None
        if isinstance(message, DeviceStatusMessage) and message.status.device != shape.device:
            self._violation(topic, f"device {message.status.device!r} does not match the topic")
            return None
        if not self._track_seq(topic, session=message.session, seq=message.seq, retained=retained):
            return None
        bed = self._bed(shape)
        bed.appliance = message.appliance
        return bed, message

    def _apply_twin(self, topic: str, shape: _TopicShape, payload: bytes, *, retained: bool) -> None:
        accepted = self._accept(TwinMessage, topic, shape, payload, retained=retained)
        if accepted is None:
            return
        bed, message = accepted
        bed.twin = message
        bed.twin_received_mono_s = self._clock()
        lag_s = (self._wall_clock() - message.ts).total_seconds() if retained else 0.0
        bed.twin_lag_s = max(0.0, lag_s)

    def _apply_vitals(self, topic: str, shape: _TopicShape, payload: bytes, *, retained: bool) -> None:
        accepted = self._accept(VitalsMessage, topic, shape, payload, retained=retained)
        if accepted is None:
            return
        bed, message = accepted
        bed.vitals_batches += 1
        bed.vitals_observations += len(message.observations)
        bed.vitals_coalesced += message.coalesced
        bed.last_vitals = message

    def _apply_event(self, topic: str, shape: _TopicShape, payload: bytes, *, retained: bool) -> None:
        accepted = self._accept(EventMessage, topic, shape, payload, retained=retained)
        if accepted is not None:
            bed, message = accepted
            bed.events.append(message)

    def _apply_forecast(self, topic: str, shape: _TopicShape, payload: bytes, *, retained: bool) -> None:
        accepted = self._accept(ForecastMessage, topic, shape, payload, retained=retained)
        if accepted is not None:
            bed, message = accepted
            bed.forecast_message = message

    def _apply_device(self, topic: str, shape: _TopicShape, payload: bytes, *, retained: bool) -> None:
        accepted = self._accept(DeviceStatusMessage, topic, shape, payload, retained=retained)
        if accepted is not None:
            bed, message = accepted
            bed.device_status[message.status.device] = message


def _utc_now() -> datetime:
    return datetime.now(tz=UTC)


# ---- formatting -----------------------------------------------------------------------------------


def _number(value: float | str | None) -> str:
    if value is None:
        return "--"
    if isinstance(value, str):
        return value
    if not math.isfinite(value):
        return str(value)  # JSON cannot carry these, but pydantic accepts 1e999, Infinity and NaN
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _clock_time(moment: datetime | None) -> str:
    if moment is None:
        return "--"
    try:
        return moment.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3] + "Z"
    except OverflowError:  # a valid aware timestamp whose UTC instant lies outside years 1..9999
        return moment.isoformat()


def _clock_seconds(moment: datetime) -> str:
    try:
        return moment.astimezone(UTC).strftime("%H:%M:%SZ")
    except OverflowError:
        return moment.isoformat()


def _age(age_s: float) -> str:
    """Return an age as `45 s`, `3m05s` or `2h03m` (negative: the moment lies in the future)."""
    sign = "-" if age_s < 0 else ""
    seconds = int(abs(age_s))
    if seconds < 60:
        return f"{sign}{seconds} s"
    if seconds < 3600:
        return f"{sign}{seconds // 60}m{seconds % 60:02d}s"
    return f"{sign}{seconds // 3600}h{seconds // 60 % 60:02d}m"


def _alarm_age(state: WardState, alarm: AlarmBody) -> str:
    return _age((state.now_wall() - alarm.onset).total_seconds())


def _alarm_priority(alarm: AlarmBody) -> str:
    """Return the priority in capitals, saying so when escalation raised it."""
    escalated = alarm.priority != alarm.configured_priority
    return str(alarm.priority).upper() + (f" (was {alarm.configured_priority})" if escalated else "")


def _alarm_state(alarm: AlarmBody) -> str:
    if alarm.state == AlarmState.AUDIO_PAUSED:
        until = alarm.audio_paused_until
        return "audio paused" + ("" if until is None else f" until {_clock_seconds(until)}")
    return str(alarm.state)


def _acknowledged_by(alarm: AlarmBody) -> str:
    ack = alarm.acknowledged
    if ack is None:
        return ""
    return f"ack by {ack.user or ack.role or f'command {ack.command_id}'}"


def _alarm_event_text(alarm: AlarmBody) -> str:
    return f"{str(alarm.priority).upper()} {alarm.text} ({_alarm_state(alarm)})"


def _news2_parts(news2: News2Body) -> tuple[str, str]:
    """Return the NEWS2 line as (score and advice, completeness)."""
    red = ", red score" if news2.single_parameter_3 else ""
    head = (
        f"NEWS2 {news2.total} risk {news2.risk}, advisory {news2.advisory or 'none'}{red},"
        f" SpO2 scale {news2.spo2_scale}, "
    )
    if news2.complete:
        return head, "complete"
    return head, f"incomplete: missing {', '.join(news2.missing) or '?'}"


def _model_line(forecast: ForecastBody) -> str:
    model = forecast.model
    return (
        f"model {model.id}@{model.version} ({model.kind}) on {model.backend} {model.precision},"
        f" made {_clock_seconds(forecast.made_at)}"
    )


def _forecast_horizons(forecast: ForecastBody) -> list[int]:
    """Return the horizons to show: the forecast's own list, plus any a signal carries beyond it."""
    horizons = list(dict.fromkeys(forecast.horizons_min))
    extra = {h.horizon_min for signal in forecast.signals.values() for h in signal.horizons}
    return horizons + sorted(extra - set(horizons))


def _interval(forecast: ForecastBody, key: str, horizon_min: int) -> str:
    for horizon in forecast.signals[key].horizons:
        if horizon.horizon_min == horizon_min:
            return f"{horizon.p50:.1f} [{horizon.p10:.1f}\u2013{horizon.p90:.1f}]"
    return "--"


def _percent(probability: float) -> str:
    return f"{probability * 100:.0f}%"


def _probability_style(probability: float) -> str:
    if probability >= EVENT_RED_AT:
        return "red"
    if probability >= EVENT_YELLOW_AT:
        return "yellow"
    return ""


def _counters(state: DeviceState) -> str:
    return " ".join(f"{name}={count}" for name, count in sorted(state.counters.items())) or "-"


def _summary(state: WardState) -> str:
    return (
        f"broker {state.connection} | messages {state.messages} | contract violations {state.violations}"
        f" | lost {state.lost} | reordered {state.reordered}"
        + (f" | viewer errors {state.internal_errors}" if state.internal_errors else "")
    )


def _bed_title(state: WardState, key: BedKey, bed: BedView) -> tuple[str, str]:
    site, ward, bed_id = key
    appliance_state = state.appliance_state(site, ward, bed.appliance)
    return f"bed {bed_id} ({site}/{ward}) on {bed.appliance or '?'}", appliance_state


# ---- rich rendering -------------------------------------------------------------------------------


def render(state: WardState) -> RenderableType:
    """Return the whole ward view as one rich renderable."""
    parts: list[RenderableType] = [_render_header(state)]
    for key in sorted(state.beds):
        parts.append(_render_bed(state, key, state.beds[key]))
    if state.violation_log or state.gap_log:
        lines = [Text(f"contract violation: {line}", style="red") for line in state.violation_log]
        lines += [Text(f"seq: {line}", style="yellow") for line in state.gap_log]
        problems = Text("\n").join(lines)
        parts.append(Panel(problems, title="problems", border_style="red"))
    return Group(*parts)


def _render_header(state: WardState) -> RenderableType:
    table = Table(title="icu-edge ward view", title_justify="left", expand=True)
    for column in ("appliance", "state", "session", "version", "beds", "central station", "since"):
        table.add_column(column)
    for (site, ward, appliance_id), view in sorted(state.appliances.items()):
        status = view.status
        online = status.state == ApplianceState.ONLINE
        label = "online" if online else f"OFFLINE ({status.reason or 'no reason'})"
        table.add_row(
            f"{site}/{ward}/{appliance_id}",
            Text(label, style="green" if online else "bold red"),
            str(status.session),
            status.version,
            ", ".join(status.beds) or "-",
            Text(
                status.central_station or "-",
                style=CENTRAL_STATION_STYLE.get(status.central_station or "", ""),
            ),
            _clock_time(status.ts),
        )
    if not state.appliances:
        table.add_row("(no appliance seen yet)", "", "", "", "", "", "")
    style = "red" if state.violations or state.lost or state.reordered or state.internal_errors else "dim"
    return Group(table, Text(_summary(state), style=style))


def _render_bed(state: WardState, key: BedKey, bed: BedView) -> RenderableType:
    title, appliance_state = _bed_title(state, key, bed)
    offline = appliance_state == "offline"
    parts: list[RenderableType] = []
    twin = bed.twin
    if twin is None:
        parts.append(Text("no twin snapshot yet", style="dim"))
    else:
        extra_s = state.twin_extra_age_s(bed)
        values = Table(title="twin", title_justify="left", expand=True)
        for column in ("key", "value", "unit", "age s", "device", ""):
            values.add_column(column, justify="right" if column in ("value", "age s") else "left")
        for value_key, value in sorted(twin.values.items()):
            flags = []
            style = ""
            if value.stale:
                flags.append("stale")
                style = "dim"
            if not value.valid:
                flags.append("invalid")
                style = "red"
            values.add_row(
                value_key,
                _number(value.value),
                value.unit,
                f"{value.age_s + extra_s:.1f}",
                value.device,
                " ".join(flags),
                style=style or None,
            )
        parts.append(values)
        if twin.settings:
            settings = Table(title="ventilator settings", title_justify="left", expand=True)
            for column in ("key", "value", "unit", "label", "device"):
                settings.add_column(column)
            for setting_key, setting in sorted(twin.settings.items()):
                settings.add_row(
                    setting_key, _number(setting.value), setting.unit, setting.label, setting.device
                )
            parts.append(settings)
        parts.append(_render_alarms(state, twin.alarms))
        parts.append(_render_news2(twin.news2))
        alarms = Table(
            title="device alarms (as the devices report them now)", title_justify="left", expand=True
        )
        for column in ("priority", "device", "code", "text", "onset"):
            alarms.add_column(column)
        for alarm in twin.device_alarms:
            style = PRIORITY_STYLE.get(str(alarm.priority), "")
            alarms.add_row(
                Text(str(alarm.priority).upper(), style=style),
                alarm.device,
                alarm.code,
                Text(alarm.text, style=style),
                _clock_time(alarm.onset),
            )
        if not twin.device_alarms:
            alarms.add_row("-", "", "", Text("none active", style="dim"), "")
        parts.append(alarms)
    forecast = bed.forecast()
    if forecast is not None:
        parts.append(_render_forecast(forecast, bed.forecast_source()))
    devices = bed.devices()
    if devices:
        table = Table(title="devices", title_justify="left", expand=True)
        for column in ("device", "connected", "model", "protocol", "port", "last frame", "counters", "error"):
            table.add_column(column)
        for device_id, device in devices.items():
            table.add_row(
                device_id,
                Text("yes", style="green") if device.connected else Text("NO", style="bold red"),
                device.model or "-",
                device.protocol + (f" {device.protocol_version}" if device.protocol_version else ""),
                device.port,
                _clock_time(device.last_frame_at),
                _counters(device),
                Text(device.last_error or "", style="red"),
            )
        parts.append(table)
    parts.append(
        Text(
            f"vitals: {bed.vitals_batches} batches, {bed.vitals_observations} observations, "
            f"{bed.vitals_coalesced} coalesced",
            style="dim",
        )
    )
    if bed.events:
        events = Table(title="events", title_justify="left", expand=True)
        for column in ("at", "kind", "device", "detail"):
            events.add_column(column)
        for event in bed.events:
            event_alarm = event.alarm
            if event_alarm is None:
                detail = Text(event.detail)
            else:
                detail = Text(
                    str(event_alarm.priority).upper(), style=PRIORITY_STYLE.get(str(event_alarm.priority), "")
                )
                detail.append(f" {event_alarm.text} ({_alarm_state(event_alarm)})")
            if event.history:
                detail.append(" (replayed)")
            events.add_row(
                _clock_time(event.at),
                str(event.kind),
                event.device or (event_alarm.device if event_alarm is not None else None) or "-",
                detail,
                style="dim" if event.history else None,
            )
        parts.append(events)
    border = "red" if offline else ("green" if appliance_state == "online" else "yellow")
    subtitle = f"appliance {appliance_state.upper() if offline else appliance_state}"
    return Panel(Group(*parts), title=title, subtitle=subtitle, border_style=border)


def _render_alarms(state: WardState, alarms: list[AlarmBody]) -> RenderableType:
    table = Table(title="alarms", title_justify="left", expand=True)
    for column in ("priority", "state", "kind", "text", "since", "condition", "ack"):
        table.add_column(column)
    for alarm in alarms:
        style = PRIORITY_STYLE.get(str(alarm.priority), "")
        table.add_row(
            Text(_alarm_priority(alarm), style=style),
            Text(_alarm_state(alarm), style="bold" if alarm.state == AlarmState.LATCHED else ""),
            str(alarm.kind),
            Text(alarm.text, style=style),
            _alarm_age(state, alarm),
            Text("present") if alarm.condition_present else Text(CONDITION_GONE, style="bold yellow"),
            _acknowledged_by(alarm),
        )
    if not alarms:
        table.add_row("-", "", "", Text("none", style="dim"), "", "", "")
    return table


def _render_news2(news2: News2Body | None) -> RenderableType:
    if news2 is None:
        return Text("NEWS2: not computed", style="dim")
    head, completeness = _news2_parts(news2)
    line = Text(head, style=NEWS2_RISK_STYLE.get(news2.risk, ""))
    line.append(completeness, style="" if news2.complete else "yellow")
    return line


def _render_forecast(forecast: ForecastBody, source: str) -> RenderableType:
    horizons = _forecast_horizons(forecast)
    table = Table(title=f"forecast ({source})", title_justify="left", expand=True)
    for column in ("key", "unit", "now"):
        table.add_column(column, justify="right" if column == "now" else "left")
    for horizon_min in horizons:
        table.add_column(f"{horizon_min}m", justify="right")
    for key, signal in sorted(forecast.signals.items()):
        table.add_row(
            key,
            signal.unit,
            _number(signal.last_value),
            *(_interval(forecast, key, horizon_min) for horizon_min in horizons),
        )
    if not forecast.signals:
        table.add_row(Text("no signal forecast", style="dim"), "", "", *("" for _ in horizons))
    lines: list[Text] = []
    for key, event in sorted(forecast.events.items()):
        line = Text(f"P({key}):")
        for index, probability in enumerate(event.horizons):
            line.append(f"{'  ' if index else ' '}{probability.horizon_min}m ")
            line.append(_percent(probability.probability), style=_probability_style(probability.probability))
        lines.append(line)
    for key, reason in sorted(forecast.unavailable.items()):
        lines.append(Text(f"{key}: {reason}", style="dim"))
    lines.append(Text(_model_line(forecast), style="dim"))
    return Group(table, *lines)


# ---- plain rendering ------------------------------------------------------------------------------


def render_plain(state: WardState) -> str:
    """Return the whole ward view as plain text (no colour), one snapshot."""
    lines = [f"== icu-edge ward view: {_summary(state)}"]
    if not state.appliances:
        lines.append("appliance: none seen yet")
    for (site, ward, appliance_id), view in sorted(state.appliances.items()):
        status = view.status
        state_text = "online" if status.state == ApplianceState.ONLINE else "OFFLINE"
        reason = f" ({status.reason})" if status.reason else ""
        central = f" central station {status.central_station}" if status.central_station else ""
        lines.append(
            f"appliance {site}/{ward}/{appliance_id}: {state_text}{reason} session {status.session}"
            f" version {status.version} beds {','.join(status.beds) or '-'}{central}"
        )
    for key in sorted(state.beds):
        lines.extend(_plain_bed(state, key, state.beds[key]))
    for line in state.violation_log:
        lines.append(f"contract violation: {line}")
    for line in state.gap_log:
        lines.append(f"seq: {line}")
    return "\n".join(lines) + "\n"


def _plain_bed(state: WardState, key: BedKey, bed: BedView) -> list[str]:
    title, appliance_state = _bed_title(state, key, bed)
    shown_state = appliance_state.upper() if appliance_state == "offline" else appliance_state
    lines = [f"-- {title}: appliance {shown_state}"]
    twin = bed.twin
    if twin is None:
        lines.append("  twin: none yet")
    else:
        extra_s = state.twin_extra_age_s(bed)
        lines.append(f"  twin (session {twin.session} seq {twin.seq} at {_clock_time(twin.ts)}):")
        for value_key, value in sorted(twin.values.items()):
            flags = ("  STALE" if value.stale else "") + ("  INVALID" if not value.valid else "")
            lines.append(
                f"    {value_key:<8} {_number(value.value):>8} {value.unit:<10}"
                f" age {value.age_s + extra_s:.1f} s  [{value.device}]{flags}"
            )
        for setting_key, setting in sorted(twin.settings.items()):
            lines.append(
                f"  setting {setting_key:<8} {_number(setting.value):>8} {setting.unit:<10}"
                f" [{setting.device}]"
            )
        lines.extend(_plain_alarms(state, twin.alarms))
        if twin.news2 is None:
            lines.append("  NEWS2: not computed")
        else:
            lines.append("  " + "".join(_news2_parts(twin.news2)))
        if not twin.device_alarms:
            lines.append("  device alarms: none active")
        for device_alarm in twin.device_alarms:
            lines.append(
                f"  device alarm {str(device_alarm.priority).upper()} {device_alarm.device}"
                f" {device_alarm.code}: {device_alarm.text} (since {_clock_time(device_alarm.onset)})"
            )
    for device_id, device in bed.devices().items():
        version = f" {device.protocol_version}" if device.protocol_version else ""
        error = f" error: {device.last_error}" if device.last_error else ""
        lines.append(
            f"  device {device_id}: connected {'yes' if device.connected else 'NO'}"
            f" model {device.model or '-'} protocol {device.protocol}{version} port {device.port}"
            f" last frame {_clock_time(device.last_frame_at)} counters {_counters(device)}{error}"
        )
    lines.append(
        f"  vitals: {bed.vitals_batches} batches, {bed.vitals_observations} observations,"
        f" {bed.vitals_coalesced} coalesced"
    )
    forecast = bed.forecast()
    if forecast is not None:
        lines.extend(_plain_forecast(forecast, bed.forecast_source()))
    for event in bed.events:
        if event.alarm is None:
            what = f"{event.device or '-'}: {event.detail}"
        else:
            what = _alarm_event_text(event.alarm)
        replayed = " (replayed)" if event.history else ""
        lines.append(f"  event {_clock_time(event.at)} {event.kind} {what}{replayed}")
    return lines


def _plain_alarms(state: WardState, alarms: list[AlarmBody]) -> list[str]:
    if not alarms:
        return ["  alarms: none"]
    lines = []
    for alarm in alarms:
        gone = "" if alarm.condition_present else f" {CONDITION_GONE}"
        ack = _acknowledged_by(alarm)
        lines.append(
            f"  alarm {_alarm_priority(alarm)} {_alarm_state(alarm)} {alarm.kind}: {alarm.text}"
            f" (since {_alarm_age(state, alarm)}){gone}{' ' + ack if ack else ''}"
        )
    return lines


def _plain_forecast(forecast: ForecastBody, source: str) -> list[str]:
    horizons = _forecast_horizons(forecast)
    lines = [f"  forecast ({source}), {_model_line(forecast)}:"]
    for key, signal in sorted(forecast.signals.items()):
        intervals = "  ".join(f"{h}m {_interval(forecast, key, h)}" for h in horizons)
        lines.append(f"    {key:<8} {signal.unit:<10} now {_number(signal.last_value):>8}  {intervals}")
    if not forecast.signals:
        lines.append("    no signal forecast")
    for key, event in sorted(forecast.events.items()):
        chances = "  ".join(f"{p.horizon_min}m {_percent(p.probability)}" for p in event.horizons)
        lines.append(f"    P({key}): {chances}")
    for key, reason in sorted(forecast.unavailable.items()):
        lines.append(f"    unavailable {key}: {reason}")
    return lines


# ---- MQTT plumbing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Connected:
    failure: bool
    reason: str


@dataclass(frozen=True, slots=True)
class _Disconnected:
    reason: str


@dataclass(frozen=True, slots=True)
class _Received:
    topic: str
    payload: bytes
    retained: bool


_Event = _Connected | _Disconnected | _Received


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerUrl:
    """Where the broker is."""

    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerUrl:
    """Parse `mqtt://host[:port]` or `mqtts://host[:port]`; raise ValueError when it is neither."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"broker URL must be mqtt://host:port or mqtts://host:port, not {url!r}")
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"bad port in broker URL {url!r}") from error
    if not parts.hostname:
        raise ValueError(f"no host in broker URL {url!r}")
    tls = parts.scheme == "mqtts"
    return BrokerUrl(host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls)


def _make_client(events: queue.Queue[_Event]) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"icu-edge-watch-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv5,
    )

    def on_connect(
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        events.put(_Connected(failure=reason_code.is_failure, reason=str(reason_code)))

    def on_disconnect(
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        events.put(_Disconnected(reason=str(reason_code)))

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        events.put(_Received(topic=message.topic, payload=bytes(message.payload), retained=message.retain))

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    return client


def _subscription(args: argparse.Namespace) -> str:
    prefix = str(args.prefix).strip("/")
    if args.site is None and args.ward is None:
        return f"{prefix}/#"
    return f"{prefix}/{args.site or '+'}/{args.ward or '+'}/#"


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from error
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `icu-edge watch`."""
    parser = argparse.ArgumentParser(
        prog="icu-edge watch",
        description="Terminal ward view: subscribe to the MQTT contract v1 like a central station.",
    )
    parser.add_argument("--broker", default=DEFAULT_BROKER, help=f"broker URL (default {DEFAULT_BROKER})")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")
    parser.add_argument("--site", default=None, help="show only this site")
    parser.add_argument("--ward", default=None, help="show only this ward")
    parser.add_argument(
        "--seconds", type=_positive_seconds, default=None, metavar="N", help="run for N seconds, then exit"
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one plain snapshot after collecting for --seconds (default 2 s), then exit",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="print text snapshots instead of a live screen (default off a TTY)",
    )
    parser.add_argument(
        "--connect-timeout",
        dest="connect_timeout_s",
        type=_positive_seconds,
        default=DEFAULT_CONNECT_TIMEOUT_S,
        metavar="S",
        help="give up when the broker is not reached within S seconds (default %(default)g)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ward view; return 0, 2 (usage) or 69 (broker unreachable)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        broker = parse_broker_url(args.broker)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else EX_USAGE
    except ValueError as error:
        print(f"icu-edge watch: {error}", file=sys.stderr)
        return EX_USAGE

    events: queue.Queue[_Event] = queue.Queue()
    client = _make_client(events)
    client.connect_timeout = args.connect_timeout_s
    if broker.tls:
        client.tls_set()
    state = WardState(prefix=args.prefix, site=args.site, ward=args.ward)
    try:
        client.connect_async(broker.host, broker.port, keepalive=30)
        client.loop_start()
    except (OSError, ValueError) as error:
        print(f"icu-edge watch: cannot reach broker {args.broker}: {error}", file=sys.stderr)
        return EX_UNAVAILABLE
    try:
        if not _await_connection(client, events, state, args, timeout_s=args.connect_timeout_s):
            return EX_UNAVAILABLE
        plain = bool(args.plain or args.once or not sys.stdout.isatty())
        seconds: float | None = args.seconds
        if args.once and seconds is None:
            seconds = 2.0
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            if plain:
                _run_plain(
                    client,
                    events,
                    state,
                    deadline=deadline,
                    once=bool(args.once),
                    subscription=_subscription(args),
                )
            else:
                _run_live(client, events, state, deadline=deadline, subscription=_subscription(args))
        except KeyboardInterrupt:
            pass
        except BrokenPipeError:  # `icu-edge watch --plain | head`: the reader left, so do we
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EX_OK
    finally:
        client.disconnect()
        client.loop_stop()


def _await_connection(
    client: mqtt.Client,
    events: queue.Queue[_Event],
    state: WardState,
    args: argparse.Namespace,
    *,
    timeout_s: float,
) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            print(
                f"icu-edge watch: cannot reach broker {args.broker} within {timeout_s:g} s", file=sys.stderr
            )
            return False
        try:
            event = events.get(timeout=left_s)
        except queue.Empty:
            continue
        if isinstance(event, _Connected):
            if event.failure:
                print(f"icu-edge watch: broker {args.broker} refused: {event.reason}", file=sys.stderr)
                return False
            state.set_connection("connected")
            client.subscribe(_subscription(args), qos=1)
            return True


def _drain(
    client: mqtt.Client, events: queue.Queue[_Event], state: WardState, *, wait_s: float, subscription: str
) -> bool:
    """Apply every queued event (waiting up to `wait_s` for the first); return True if anything changed."""
    changed = False
    try:
        event = events.get(timeout=max(wait_s, 0.0))
    except queue.Empty:
        return False
    while True:
        changed = True
        try:
            _handle(client, event, state, subscription=subscription)
        except Exception:
            LOGGER.exception("ward view failed to apply %r", event)
            state.note_internal_error()
        try:
            event = events.get_nowait()
        except queue.Empty:
            return changed


def _handle(client: mqtt.Client, event: _Event, state: WardState, *, subscription: str) -> None:
    if isinstance(event, _Received):
        state.apply(event.topic, event.payload, retained=event.retained)
    elif isinstance(event, _Connected):
        if event.failure:
            state.set_connection(f"refused ({event.reason})")
        else:
            state.set_connection("connected")
            client.subscribe(subscription, qos=1)
    else:
        state.set_connection(f"disconnected ({event.reason}), reconnecting")


def _run_live(
    client: mqtt.Client,
    events: queue.Queue[_Event],
    state: WardState,
    *,
    deadline: float | None,
    subscription: str,
) -> None:
    period_s = 1.0 / REFRESH_PER_SECOND
    with Live(render(state), auto_refresh=False, console=Console(), screen=False) as live:
        next_render = time.monotonic()
        while deadline is None or time.monotonic() < deadline:
            wait_s = next_render - time.monotonic()
            if deadline is not None:
                wait_s = min(wait_s, deadline - time.monotonic())
            _drain(client, events, state, wait_s=wait_s, subscription=subscription)
            if time.monotonic() >= next_render:
                live.update(render(state), refresh=True)  # ages tick, so refresh even without news
                next_render = time.monotonic() + period_s
        live.update(render(state), refresh=True)


def _run_plain(
    client: mqtt.Client,
    events: queue.Queue[_Event],
    state: WardState,
    *,
    deadline: float | None,
    once: bool,
    subscription: str,
) -> None:
    dirty = False
    next_print = time.monotonic() + PLAIN_MIN_PERIOD_S
    while deadline is None or time.monotonic() < deadline:
        wait_s = (
            PLAIN_MIN_PERIOD_S if deadline is None else min(PLAIN_MIN_PERIOD_S, deadline - time.monotonic())
        )
        dirty = _drain(client, events, state, wait_s=wait_s, subscription=subscription) or dirty
        if not once and dirty and time.monotonic() >= next_print:
            sys.stdout.write(render_plain(state) + "\n")
            sys.stdout.flush()
            dirty = False
            next_print = time.monotonic() + PLAIN_MIN_PERIOD_S
    _drain(client, events, state, wait_s=0.0, subscription=subscription)
    sys.stdout.write(render_plain(state))
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
