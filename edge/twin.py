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
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from drivers.base import (
    DeviceAlarmsReceived,
    DriverEvent,
    LinkDown,
    LinkUp,
    Measurement,
    MeasurementsReceived,
    SettingsReceived,
    TextMessagesReceived,
)
from drivers.plausibility import TABLE, Implausibility, check
from edge.model import (
    DeviceAlarm,
    DeviceState,
    ForecastBody,
    InvalidReason,
    Observation,
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
    text_messages: tuple[str, ...] | None = None
    """Set when the device's text messages changed."""

    @property
    def changes_twin(self) -> bool:
        """True when a twin snapshot would now differ."""
        return bool(self.observations or self.alarms_raised or self.alarms_ended or self.device_state)


@dataclass(slots=True)
class _StoredValue:
    observation: Observation
    received_mono_s: float


@dataclass(slots=True, kw_only=True)
class _BedTwin:
    bed: str
    stale_after_s: float
    values: dict[str, _StoredValue] = field(default_factory=dict)
    settings: dict[str, VentilatorSetting] = field(default_factory=dict)
    devices: dict[str, DeviceState] = field(default_factory=dict)
    device_alarms: dict[tuple[str, str], DeviceAlarm] = field(default_factory=dict)
    text_messages: dict[str, tuple[str, ...]] = field(default_factory=dict)
    forecast: ForecastBody | None = None


class TwinStore:
    """All beds' twins; applies driver events as transactions."""

    def __init__(self, *, stale_after_s: dict[str, float], devices: list[DeviceIdentity]) -> None:
        self._beds = {bed: _BedTwin(bed=bed, stale_after_s=s) for bed, s in stale_after_s.items()}
        self._identity: dict[tuple[str, str], DeviceIdentity] = {}
        self._rejects: dict[tuple[str, str], Counter[str]] = {}
        self._logged_rejects: set[tuple[str, str, str, InvalidReason]] = set()
        for identity in devices:
            self._identity[(identity.bed, identity.device)] = identity
            self._beds[identity.bed].devices[identity.device] = DeviceState(
                device=identity.device,
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
                rejected_value=rejected_value,
                device_time=event.device_time,
                received_at=received_at,
            )
            twin.values[measurement.key] = _StoredValue(observation, received_mono_s)
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

    def snapshot(self, *, bed: str, now_mono_s: float) -> TwinBody:
        """Return the bed's full twin with ages computed at now_mono_s."""
        twin = self._beds[bed]
        values: dict[str, TwinValue] = {}
        for key, stored in twin.values.items():
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
                rejected_value=observation.rejected_value,
                device_time=observation.device_time,
                received_at=observation.received_at,
                age_s=round(age_s, 3),
                stale=age_s > twin.stale_after_s or not device_connected,
            )
        return TwinBody(
            values=values,
            settings=dict(twin.settings),
            devices=dict(twin.devices),
            device_alarms=list(twin.device_alarms.values()),
            forecast=twin.forecast,
        )
