"""The ward view's state: a pure class fed `(topic, payload, retained)`, no I/O, no rendering.

It validates every payload against the contract's pydantic models; payloads that break the contract
are counted and kept for display, never raised; `seq` gaps per (topic, session) are counted as lost
or reordered, per bed too. Since the view started it also keeps, per bed, the recent values of each
twin key (the trend sparklines) — only from twin snapshots that are news, not from retained replays.
Single-threaded: the view's main thread owns it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TypeVar

from pydantic import BaseModel, ValidationError

from edge.model import (
    ApplianceStatusMessage,
    DeviceState,
    DeviceStatusMessage,
    Envelope,
    EventMessage,
    ForecastBody,
    ForecastMessage,
    TwinMessage,
    VitalsMessage,
)

DEFAULT_PREFIX: Final = "icu/v1"
EVENTS_SHOWN: Final = 5
PROBLEMS_KEPT: Final = 8
TREND_PERIOD_S: Final = 10.0
"""One trend point per key per this many seconds of the view's clock (the last value in that period)."""
TREND_SAMPLES: Final = 60
"""Trend points kept per key: ten minutes."""

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
    lost: int = 0
    """Messages of this bed's topics that never came (seq gaps)."""
    reordered: int = 0
    vitals_batches: int = 0
    vitals_observations: int = 0
    vitals_coalesced: int = 0
    last_vitals: VitalsMessage | None = None
    forecast_message: ForecastMessage | None = None
    """The latest message on the bed's forecast topic."""
    trends: dict[str, deque[float]] = field(default_factory=dict)
    """Valid values of each twin key seen since the view started, one per `TREND_PERIOD_S`, oldest first."""
    trend_periods: dict[str, int] = field(default_factory=dict)
    """The period number of each trend's last point."""

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
        self._wall_clock = wall_clock if wall_clock is not None else utc_now
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
        self.gaps_noted = 0
        """How many lines `gap_log` has ever had (the change log prints the new ones)."""
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
            self._note_gap(f"{topic} session {session}: {missing} lost (seq {last} -> {seq})")
            self._last_seq[key] = seq
            return True
        if retained:
            return False  # the broker replaying its retained copy (resubscribe): not news
        self.reordered += 1
        self._note_gap(f"{topic} session {session}: seq {seq} after {last} (reordered/duplicate)")
        return False

    def _note_gap(self, line: str) -> None:
        self.gap_log.append(line)
        self.gaps_noted += 1

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
        lost, reordered = self.lost, self.reordered
        news = self._track_seq(topic, session=message.session, seq=message.seq, retained=retained)
        bed = self._bed(shape)
        bed.lost += self.lost - lost
        bed.reordered += self.reordered - reordered
        if not news:
            return None
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
        period = math.floor(self._clock() / TREND_PERIOD_S)
        for key, value in message.values.items():
            if value.valid and value.value is not None and math.isfinite(value.value):
                trend = bed.trends.get(key)
                if trend is None:
                    trend = bed.trends[key] = deque(maxlen=TREND_SAMPLES)
                if trend and bed.trend_periods.get(key) == period:
                    trend[-1] = value.value
                else:
                    trend.append(value.value)
                    bed.trend_periods[key] = period

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


def utc_now() -> datetime:
    """Return the wall clock (UTC)."""
    return datetime.now(tz=UTC)
