"""The patient twin: one per bed, the latest value of every key with its age and validity.

The twin changes only inside `TwinStore.apply`, which takes one driver event, applies it as a
transaction and returns the committed `TwinDelta`; the publisher sees deltas and snapshots, never a
half-applied change. One owner: the event loop thread.

This is the single entry point of measurements into the twin, so it is where plausibility is decided:
every measurement is checked against the one table (`drivers.plausibility`) before it can be valid.
A rejected reading becomes `value: null, valid: false` with its reason and the device's number in
`rejected_value`; it is counted per device (`implausible_values`, `wrong_units`, `unknown_keys` in
the device status counters) and the latest one is shown as the device status's `last_rejected`.
A key's twin value is always its latest reading: a rejected one replaces the last valid value with the
rejection marker, as a monitor shows `---` for an artefact, rather than keep a number the device's
latest frame contradicts.

A bed has several devices (a ventilator, a monitor, an HL7 feed) and two of them may report the same
key (SpO2 from the ventilator's and the monitor's sensor). The twin keeps each device's latest reading
of a key apart and shows one: the key's *source*. The source order is the bed's `sources` entry for the
key when the config has one, then the devices of the kind the key's domain prefers (the monitor for
haemodynamics, the ventilator for respiration; `drivers.vocabulary`), then the others in config order;
the first of them with a fresh reading wins, and when none is fresh the first with any reading is shown
(stale). `map` is derived here, never taken from a driver: the arterial mean when it is valid and
fresh, else the cuff (NIBP) mean when that is, else the arterial mean's latest (invalid) reading.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from drivers.base import (
    DataRefused,
    DeviceAlarmsReceived,
    DriverEvent,
    LinkDown,
    LinkUp,
    Measurement,
    MeasurementsReceived,
    SettingsReceived,
    TextMessagesReceived,
    WaveformChunk,
)
from drivers.plausibility import TABLE, Implausibility, check
from drivers.vocabulary import PREFERRED_KIND, TERMS, DeviceKind, domain_of
from edge.model import (
    DeviceAlarm,
    DeviceState,
    ForecastBody,
    InvalidReason,
    Observation,
    RefusedData,
    RejectedReading,
    TwinBody,
    TwinValue,
    VentilatorSetting,
)

LOGGER = logging.getLogger(__name__)

_REASONS = {
    Implausibility.OUT_OF_RANGE: InvalidReason.IMPLAUSIBLE,
    Implausibility.WRONG_UNIT: InvalidReason.UNIT,
    Implausibility.UNKNOWN_KEY: InvalidReason.UNKNOWN_KEY,
}
REJECT_COUNTERS = {
    InvalidReason.IMPLAUSIBLE: "implausible_values",
    InvalidReason.UNIT: "wrong_units",
    InvalidReason.UNKNOWN_KEY: "unknown_keys",
}
"""Device status counter per rejection reason (merged into the link's counters)."""


def judge(measurement: Measurement) -> tuple[float | None, InvalidReason | None]:
    """Return the value the twin may show and why it is not valid (None: valid).

    A value is valid only when the device gave one, did not flag it, and the plausibility table
    accepts its unit and range; otherwise the value is withheld (None) and the reason says why.
    """
    value = measurement.value
    if value is None:
        return None, InvalidReason.NO_VALUE
    rejected = check(key=measurement.key, value=value, unit=measurement.unit)
    if rejected is not None:
        return None, _REASONS[rejected]
    if not measurement.valid:
        return None, InvalidReason.DEVICE
    return value, None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceIdentity:
    """What the config says about a device: fixed for the daemon's life."""

    bed: str
    device: str
    driver: str
    protocol: str
    port: str
    kind: DeviceKind = DeviceKind.VENTILATOR


MAP_SOURCES = ("abp_mean", "nbp_mean")
"""What `map` is derived from, in order of preference."""


@dataclass(slots=True, kw_only=True)
class TwinDelta:
    """What one committed transaction changed in one bed's twin."""

    bed: str
    device: str
    observations: list[Observation] = field(default_factory=list)
    alarms_raised: list[DeviceAlarm] = field(default_factory=list)
    alarms_ended: list[DeviceAlarm] = field(default_factory=list)
    device_state: DeviceState | None = None
    """Set when the device's connectivity changed."""
    device_status_changed: bool = False
    """Set when the device status changed otherwise (refused data began or ended): publish it."""
    text_messages: tuple[str, ...] | None = None
    """Set when the device's text messages changed."""

    @property
    def changes_twin(self) -> bool:
        """True when a twin snapshot would now differ."""
        return bool(
            self.observations
            or self.alarms_raised
            or self.alarms_ended
            or self.device_state
            or self.device_status_changed
        )


@dataclass(slots=True)
class _StoredValue:
    observation: Observation
    received_mono_s: float
    max_age_s: float
    """Older than this, the reading is stale."""

    def fresh(self, now_mono_s: float) -> bool:
        return now_mono_s - self.received_mono_s <= self.max_age_s


@dataclass(slots=True, kw_only=True)
class _BedTwin:
    bed: str
    stale_after_s: float
    sources: dict[str, str]
    """key -> the device the config names as its source."""
    values: dict[str, dict[str, _StoredValue]] = field(default_factory=dict)
    """key -> device -> that device's latest reading of the key."""
    source_order: dict[str, tuple[str, ...]] = field(default_factory=dict)
    settings: dict[str, VentilatorSetting] = field(default_factory=dict)
    devices: dict[str, DeviceState] = field(default_factory=dict)
    device_alarms: dict[tuple[str, str], DeviceAlarm] = field(default_factory=dict)
    text_messages: dict[str, tuple[str, ...]] = field(default_factory=dict)
    forecast: ForecastBody | None = None


class TwinStore:
    """All beds' twins; applies driver events as transactions."""

    def __init__(
        self,
        *,
        stale_after_s: dict[str, float],
        devices: list[DeviceIdentity],
        sources: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """`sources`: per bed, key -> device id that is the key's source (the config's `sources`)."""
        sources = sources or {}
        self._beds = {
            bed: _BedTwin(bed=bed, stale_after_s=s, sources=dict(sources.get(bed, {})))
            for bed, s in stale_after_s.items()
        }
        self._identity: dict[tuple[str, str], DeviceIdentity] = {}
        self._rejects: dict[tuple[str, str], Counter[str]] = {}
        self._logged_rejects: set[tuple[str, str, str, InvalidReason]] = set()
        for identity in devices:
            self._identity[(identity.bed, identity.device)] = identity
            self._beds[identity.bed].devices[identity.device] = DeviceState(
                device=identity.device,
                kind=identity.kind,
                driver=identity.driver,
                protocol=identity.protocol,
                port=identity.port,
                connected=False,
            )

    @property
    def beds(self) -> list[str]:
        """Return the bed ids in config order."""
        return list(self._beds)

    def device_state(self, *, bed: str, device: str) -> DeviceState:
        """Return the current state of one device link."""
        return self._beds[bed].devices[device]

    def update_link_health(
        self,
        *,
        bed: str,
        device: str,
        counters: dict[str, int],
        last_frame_at: datetime | None,
        last_error: str | None,
    ) -> DeviceState:
        """Record the link's counters and last frame time (no connectivity change) and return the state."""
        twin = self._beds[bed]
        merged = {**counters, **self._rejects.get((bed, device), {})}
        state = twin.devices[device].model_copy(
            update={"counters": merged, "last_frame_at": last_frame_at, "last_error": last_error}
        )
        twin.devices[device] = state
        return state

    def apply(
        self, *, bed: str, device: str, event: DriverEvent, received_at: datetime, received_mono_s: float
    ) -> TwinDelta:
        """Apply one driver event to the bed's twin and return what changed."""
        twin = self._beds[bed]
        delta = TwinDelta(bed=bed, device=device)
        match event:
            case MeasurementsReceived():
                self._apply_measurements(twin, delta, event, received_at, received_mono_s)
                self._end_refusal(twin, delta)
            case DataRefused():
                self._note_refusal(twin, delta, event, received_at)
            case WaveformChunk():
                pass  # waves never enter the twin: the daemon windows and publishes them
            case SettingsReceived():
                self._apply_settings(twin, delta, event, received_at)
            case DeviceAlarmsReceived():
                self._apply_alarms(twin, delta, device, event, received_at)
            case TextMessagesReceived():
                if twin.text_messages.get(device) != event.messages:
                    twin.text_messages[device] = event.messages
                    delta.text_messages = event.messages
            case LinkUp():
                delta.device_state = self._set_connected(
                    twin,
                    device,
                    connected=True,
                    at=received_at,
                    model=event.model,
                    protocol_version=event.protocol_version,
                    error=None,
                )
            case LinkDown():
                delta.device_state = self._set_connected(
                    twin,
                    device,
                    connected=False,
                    at=received_at,
                    model=None,
                    protocol_version=None,
                    error=event.reason,
                )
                # A device that is gone no longer reports its alarms: they end with the link, and
                # the loss itself is what the ward must see (as a disconnect event).
                for key in [k for k in twin.device_alarms if k[0] == device]:
                    delta.alarms_ended.append(twin.device_alarms.pop(key))
        return delta

    def _apply_measurements(
        self,
        twin: _BedTwin,
        delta: TwinDelta,
        event: MeasurementsReceived,
        received_at: datetime,
        received_mono_s: float,
    ) -> None:
        for measurement in event.measurements:
            value, reason = judge(measurement)
            rejected_value = measurement.value if reason in REJECT_COUNTERS else None
            observation = Observation(
                key=measurement.key,
                value=value,
                unit=measurement.unit,
                mdc=measurement.mdc_code,
                label=measurement.label,
                device=delta.device,
                device_code=measurement.device_code,
                valid=reason is None,
                invalid_reason=reason,
                device_flag=measurement.device_flag if reason is not None else None,
                rejected_value=rejected_value,
                device_time=event.device_time,
                received_at=received_at,
            )
            twin.values.setdefault(measurement.key, {})[delta.device] = _StoredValue(
                observation,
                self._measured_mono_s(measurement.key, event, received_at, received_mono_s),
                self._max_age_s(twin, measurement.key),
            )
            delta.observations.append(observation)
            if reason is not None and rejected_value is not None:
                self._count_rejected(
                    twin,
                    delta.device,
                    key=measurement.key,
                    unit=measurement.unit,
                    reason=reason,
                    value=rejected_value,
                    at=received_at,
                )

        if any(o.key in MAP_SOURCES for o in delta.observations):
            self._derive_map(twin, delta, received_mono_s)

    @staticmethod
    def _measured_mono_s(
        key: str, event: MeasurementsReceived, received_at: datetime, received_mono_s: float
    ) -> float:
        """Return when the value was measured, on the monotonic clock.

        A monitor repeats the last cuff pressure in every answer (Mindray's HL7 feed with its old
        OBX-14, IntelliVue's poll replies): its age runs from the measurement the device dates, or it
        would look fresh for ever. A device time in the future (a skewed clock) is not believed.
        Continuous values age from their receipt.
        """
        found = TERMS.get(key)
        if found is None or found.intermittent_max_age_s is None or event.device_time is None:
            return received_mono_s
        lag_s = (received_at - event.device_time).total_seconds()
        return received_mono_s - max(0.0, lag_s)

    def _max_age_s(self, twin: _BedTwin, key: str) -> float:
        found = TERMS.get(key)
        intermittent = None if found is None else found.intermittent_max_age_s
        return twin.stale_after_s if intermittent is None else max(twin.stale_after_s, intermittent)

    def _derive_map(self, twin: _BedTwin, delta: TwinDelta, now_mono_s: float) -> None:
        """Record `map` from the arterial mean, else the cuff mean, when this set changed the one in use."""
        chosen: _StoredValue | None = None
        for key in MAP_SOURCES:
            current = self._current(twin, key, now_mono_s)
            if current is not None and current.observation.valid and current.fresh(now_mono_s):
                chosen = current
                break
        if chosen is None:
            arterial = self._current(twin, MAP_SOURCES[0], now_mono_s)
            if arterial is None or not arterial.fresh(now_mono_s):
                return
            chosen = arterial
        if not any(o is chosen.observation for o in delta.observations):
            return
        row = TERMS["map"]
        derived = chosen.observation.model_copy(update={"key": "map", "label": row.label, "mdc": row.mdc})
        twin.values.setdefault("map", {})[chosen.observation.device] = _StoredValue(
            derived, chosen.received_mono_s, chosen.max_age_s
        )
        delta.observations.append(derived)

    def _order(self, twin: _BedTwin, key: str) -> tuple[str, ...]:
        """Return the devices of the bed in source order for key (cached: the config does not change)."""
        order = twin.source_order.get(key)
        if order is None:
            preferred_kind = PREFERRED_KIND[domain_of(key)]
            devices = list(twin.devices)
            ranked = sorted(devices, key=lambda d: twin.devices[d].kind != preferred_kind)
            configured = twin.sources.get(key)
            if configured in twin.devices:
                ranked.remove(configured)
                ranked.insert(0, configured)
            order = twin.source_order[key] = tuple(ranked)
        return order

    def _current(self, twin: _BedTwin, key: str, now_mono_s: float) -> _StoredValue | None:
        """Return the reading the twin shows for key: the first fresh one in source order, else the first."""
        readings = twin.values.get(key)
        if not readings:
            return None
        if len(readings) == 1:
            return next(iter(readings.values()))
        fallback: _StoredValue | None = None
        for device in self._order(twin, key):
            stored = readings.get(device)
            if stored is None:
                continue
            if stored.fresh(now_mono_s) and twin.devices[device].connected:
                return stored
            fallback = fallback or stored
        return fallback

    def is_source(self, *, bed: str, key: str, device: str, now_mono_s: float) -> bool:
        """Return whether device's reading of key is the one the twin shows (forecasts follow only it)."""
        current = self._current(self._beds[bed], key, now_mono_s)
        return current is not None and current.observation.device == device

    def _note_refusal(
        self, twin: _BedTwin, delta: TwinDelta, event: DataRefused, received_at: datetime
    ) -> None:
        """Show on the device status that its values are refused, counting them for this episode."""
        state = twin.devices[delta.device]
        refused = state.refused
        if refused is None or refused.reason != event.reason:
            LOGGER.warning(
                "%s/%s: %s",
                twin.bed,
                delta.device,
                event.detail,
                extra={"bed": twin.bed, "device": delta.device},
            )
            refused = RefusedData(
                reason=event.reason, detail=event.detail, since=received_at, refused_values=event.count
            )
            twin.devices[delta.device] = state.model_copy(update={"refused": refused})
            delta.device_status_changed = True
        else:
            twin.devices[delta.device] = state.model_copy(
                update={
                    "refused": refused.model_copy(
                        update={"refused_values": refused.refused_values + event.count}
                    )
                }
            )

    def _end_refusal(self, twin: _BedTwin, delta: TwinDelta) -> None:
        state = twin.devices[delta.device]
        if state.refused is not None:
            LOGGER.info(
                "%s/%s: values accepted again (%s ended after %d refused values)",
                twin.bed,
                delta.device,
                state.refused.reason,
                state.refused.refused_values,
                extra={"bed": twin.bed, "device": delta.device},
            )
            twin.devices[delta.device] = state.model_copy(update={"refused": None})
            delta.device_status_changed = True

    def _apply_settings(
        self, twin: _BedTwin, delta: TwinDelta, event: SettingsReceived, received_at: datetime
    ) -> None:
        """Record the settings; a number the table rejects is withheld like a measured value."""
        for setting in event.settings:
            value, reason, rejected_value = setting.value, None, None
            if isinstance(setting.value, float):
                rejected = check(key=setting.key, value=setting.value, unit=setting.unit)
                if rejected is not None:
                    value, reason, rejected_value = None, _REASONS[rejected], setting.value
                    self._count_rejected(
                        twin,
                        delta.device,
                        key=setting.key,
                        unit=setting.unit,
                        reason=reason,
                        value=setting.value,
                        at=received_at,
                    )
            twin.settings[setting.key] = VentilatorSetting(
                key=setting.key,
                value=value,
                unit=setting.unit,
                invalid_reason=reason,
                rejected_value=rejected_value,
                label=setting.label,
                device=delta.device,
                device_code=setting.device_code,
                received_at=received_at,
            )

    def _count_rejected(
        self,
        twin: _BedTwin,
        device: str,
        *,
        key: str,
        unit: str,
        reason: InvalidReason,
        value: float,
        at: datetime,
    ) -> None:
        """Count a rejected reading on its device and show it as the device's last rejected one.

        The device status carries both; the daemon publishes it when the counters change.
        """
        row = TABLE.get(key)
        reading = RejectedReading(
            key=key,
            value=value,
            unit=unit,
            reason=reason,
            expected_unit=None if row is None else row.unit,
            minimum=None if row is None else row.minimum,
            maximum=None if row is None else row.maximum,
            at=at,
        )
        rejects = self._rejects.setdefault((twin.bed, device), Counter())
        rejects[REJECT_COUNTERS[reason]] += 1
        state = twin.devices[device]
        twin.devices[device] = state.model_copy(
            update={"counters": {**state.counters, **rejects}, "last_rejected": reading}
        )
        log_key = (twin.bed, device, key, reason)
        if log_key not in self._logged_rejects:
            # Once per bed, device, key and reason: constant line noise must not flood the log.
            self._logged_rejects.add(log_key)
            LOGGER.warning(
                "%s/%s %s %r %s rejected (%s; possible %s..%s %s); further ones are only counted",
                twin.bed,
                device,
                key,
                value,
                unit,
                reason,
                reading.minimum,
                reading.maximum,
                reading.expected_unit,
            )

    def _apply_alarms(
        self,
        twin: _BedTwin,
        delta: TwinDelta,
        device: str,
        event: DeviceAlarmsReceived,
        received_at: datetime,
    ) -> None:
        reported = {reading.code: reading for reading in event.alarms}
        for key in [k for k in twin.device_alarms if k[0] == device and k[1] not in reported]:
            delta.alarms_ended.append(twin.device_alarms.pop(key))
        for code, reading in reported.items():
            known = twin.device_alarms.get((device, code))
            if known is not None and known.priority == reading.priority and known.text == reading.text:
                continue
            alarm = DeviceAlarm(
                device=device,
                code=code,
                priority=reading.priority,
                text=reading.text,
                onset=known.onset if known is not None else received_at,
            )
            twin.device_alarms[(device, code)] = alarm
            if known is None:
                delta.alarms_raised.append(alarm)

    def _set_connected(
        self,
        twin: _BedTwin,
        device: str,
        *,
        connected: bool,
        at: datetime,
        model: str | None,
        protocol_version: str | None,
        error: str | None,
    ) -> DeviceState | None:
        previous = twin.devices[device]
        if previous.connected == connected and not connected:
            return None
        update: dict[str, object] = {
            "connected": connected,
            "connected_since": at if connected else None,
            "last_error": error,
        }
        if connected:
            update["model"] = model or previous.model
            update["protocol_version"] = protocol_version or previous.protocol_version
        state = previous.model_copy(update=update)
        twin.devices[device] = state
        return state

    def set_forecast(self, *, bed: str, forecast: ForecastBody) -> None:
        """Record the bed's latest forecast (shown in the twin)."""
        self._beds[bed].forecast = forecast

    def forecast(self, *, bed: str) -> ForecastBody | None:
        """Return the bed's latest forecast, if any."""
        return self._beds[bed].forecast

    def snapshot(self, *, bed: str, now_mono_s: float) -> TwinBody:
        """Return the bed's full twin with ages computed at now_mono_s."""
        twin = self._beds[bed]
        return TwinBody(
            values=self.values(bed=bed, now_mono_s=now_mono_s),
            settings=dict(twin.settings),
            devices=dict(twin.devices),
            device_alarms=list(twin.device_alarms.values()),
            forecast=twin.forecast,
        )

    def device_alarms(self, *, bed: str, device: str) -> list[DeviceAlarm]:
        """Return the alarms one device reports active now."""
        return [alarm for (d, _), alarm in self._beds[bed].device_alarms.items() if d == device]

    def values(
        self, *, bed: str, now_mono_s: float, keys: Iterable[str] | None = None
    ) -> dict[str, TwinValue]:
        """Return the bed's current value per key (of `keys`, default all), aged at now_mono_s."""
        twin = self._beds[bed]
        values: dict[str, TwinValue] = {}
        for key in twin.values if keys is None else keys:
            if key not in twin.values:
                continue
            stored = self._current(twin, key, now_mono_s)
            if stored is None:
                continue
            observation = stored.observation
            age_s = max(0.0, now_mono_s - stored.received_mono_s)
            device_connected = twin.devices[observation.device].connected
            values[key] = TwinValue(
                value=observation.value,
                unit=observation.unit,
                mdc=observation.mdc,
                label=observation.label,
                device=observation.device,
                valid=observation.valid,
                invalid_reason=observation.invalid_reason,
                device_flag=observation.device_flag,
                rejected_value=observation.rejected_value,
                device_time=observation.device_time,
                received_at=observation.received_at,
                age_s=round(age_s, 3),
                stale=age_s > stored.max_age_s or not device_connected,
            )
        return values
