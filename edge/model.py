"""The domain model and every payload that crosses the MQTT boundary (contract v1).

Each payload is a *body* (what the producer knows) plus the *envelope* (`schema`, `appliance`, `bed`,
`session`, `seq`, `ts`) that the outbox stamps when the message enters it, so `seq` is consecutive per
topic. The `...Message` classes are body + envelope: what a central station receives, and what the
JSON Schemas are generated from.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PlainSerializer

from drivers.base import AlarmPriority

CONTRACT_VERSION = 1


def format_rfc3339_ms(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with milliseconds (`2026-11-25T20:23:32.123Z`)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[AwareDatetime, PlainSerializer(format_rfc3339_ms, return_type=str, when_used="json")]
"""A wall-clock instant; serialized as RFC 3339 UTC with milliseconds."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InvalidReason(enum.StrEnum):
    """Why an observation is not valid (machine-readable; `value` is then always null)."""

    NO_VALUE = "no_value"
    """The device reported the parameter without a usable value."""
    DEVICE = "device"
    """The device itself flagged the value as invalid."""
    IMPLAUSIBLE = "implausible"
    """Outside the key's possible range (drivers/plausibility.py): line noise, never a measurement."""
    UNIT = "unit"
    """Reported in another unit than the key's canonical UCUM unit."""
    UNKNOWN_KEY = "unknown_key"
    """A key the plausibility table has no row for: it cannot be checked, so it is not trusted."""


_VALUE_DESCRIPTION = "null whenever valid is false: a rejected number never sits where a value belongs"
_REJECTED_DESCRIPTION = "the number the device sent when the appliance rejected it (never a measurement)"
_DEVICE_FLAG_DESCRIPTION = (
    "the device's own word for why it flagged the value (questionable, under_range, not_calibrated, ...); "
    "null when it gave none"
)


class Observation(_Frozen):
    """One measured value of one bed, with where and when it came from."""

    key: str = Field(description="short key: hr, spo2, map, rr, etco2, ppeak, peep, vt, mv, fio2, ...")
    value: float | None = Field(description=_VALUE_DESCRIPTION)
    unit: str = Field(description="UCUM unit")
    mdc: str | None = Field(default=None, description="IEEE 11073 MDC reference id, where one exists")
    label: str = Field(description="human-readable parameter name")
    device: str = Field(description="id of the device that measured it (from the config)")
    device_code: str = Field(description="the device protocol's own code for the parameter")
    valid: bool
    invalid_reason: InvalidReason | None = Field(default=None, description="why not valid; null when valid")
    device_flag: str | None = Field(default=None, description=_DEVICE_FLAG_DESCRIPTION)
    rejected_value: float | None = Field(default=None, description=_REJECTED_DESCRIPTION)
    device_time: Timestamp | None = Field(description="when the device says it measured (null: not told)")
    received_at: Timestamp = Field(description="appliance wall clock when the value was received")


class VentilatorSetting(_Frozen):
    """One ventilator setting as the device reports it (a number outside the table's range: value null)."""

    key: str
    value: float | str | None
    unit: str
    invalid_reason: InvalidReason | None = Field(default=None, description="why value is null; null if not")
    rejected_value: float | None = Field(default=None, description=_REJECTED_DESCRIPTION)
    label: str
    device: str
    device_code: str
    received_at: Timestamp


class DeviceAlarm(_Frozen):
    """An alarm the device itself reports as active."""

    device: str
    code: str = Field(description="the device protocol's alarm code")
    priority: AlarmPriority
    text: str
    onset: Timestamp = Field(description="first time the appliance saw this alarm active")


class RejectedReading(_Frozen):
    """The last reading of a device that the plausibility table rejected (for the field engineer)."""

    key: str
    value: float = Field(description="the number the device sent")
    unit: str = Field(description="the unit it came with")
    reason: InvalidReason
    expected_unit: str | None = Field(description="the key's canonical unit; null for an unknown key")
    minimum: float | None = Field(description="lower bound of the key's possible range (inclusive)")
    maximum: float | None = Field(description="upper bound of the key's possible range (inclusive)")
    at: Timestamp = Field(description="appliance wall clock when it was received")


class RefusedData(_Frozen):
    """Values a device keeps sending that never reach the twin (a monitor in demo or test mode)."""

    reason: str = Field(description="demo_data or test_data")
    detail: str = Field(description="one line for the field engineer")
    since: Timestamp = Field(description="first refused set of this episode")
    refused_values: int = Field(description="values refused in this episode")


class DeviceState(_Frozen):
    """Connectivity and health of one device link."""

    device: str
    kind: str = Field(description="ventilator or monitor: the default source of a key follows it")
    driver: str
    protocol: str
    port: str = Field(description="where the data comes from: a device path, socket://, udp://, listen://")
    connected: bool
    model: str | None = None
    protocol_version: str | None = None
    connected_since: Timestamp | None = None
    last_frame_at: Timestamp | None = None
    last_error: str | None = None
    counters: dict[str, int] = Field(
        default_factory=dict,
        description="link counters, plus implausible_values, wrong_units and unknown_keys from the twin",
    )
    last_rejected: RejectedReading | None = Field(
        default=None, description="the latest reading the plausibility check rejected"
    )
    refused: RefusedData | None = Field(
        default=None, description="set while the device sends data the appliance refuses (demo, test)"
    )


class TwinValue(_Frozen):
    """The twin's latest reading of one key, with its age at snapshot time.

    It is always the latest reading: when that was rejected, the twin shows the rejection (value null,
    valid false, the reason), never an older value that the device's latest frame contradicts.
    """

    value: float | None = Field(description=_VALUE_DESCRIPTION)
    unit: str
    mdc: str | None
    label: str
    device: str = Field(description="the device this value comes from (the key's source, see `sources`)")
    valid: bool
    invalid_reason: InvalidReason | None = Field(default=None, description="why not valid; null when valid")
    device_flag: str | None = Field(default=None, description=_DEVICE_FLAG_DESCRIPTION)
    rejected_value: float | None = Field(default=None, description=_REJECTED_DESCRIPTION)
    device_time: Timestamp | None
    received_at: Timestamp
    age_s: float = Field(
        description="seconds since the value was measured, at snapshot time: since device_time for an "
        "intermittent value (a cuff pressure) whose device dates it, else since received_at"
    )
    stale: bool = Field(description="older than the bed's staleness limit, or its device is disconnected")


class ForecastModelRef(_Frozen):
    """Which model made a forecast, on which backend."""

    id: str
    version: str
    kind: str = Field(description="baseline or learned")
    backend: str = Field(description="onnxruntime or tensorrt")
    precision: str


class HorizonForecast(_Frozen):
    """A signal's forecast at one horizon: median and the 10-90 % interval."""

    horizon_min: int
    p10: float
    p50: float
    p90: float


class SignalForecast(_Frozen):
    """One signal's forecast at every horizon, with the freshness of its input."""

    unit: str
    last_value: float = Field(description="the last valid value the forecast starts from")
    last_age_s: float = Field(description="age of the last valid input at forecast time")
    valid_minutes: int = Field(description="minutes of the input window with a valid value")
    horizons: list[HorizonForecast]


class EventProbability(_Frozen):
    """Probability that an event happens within one horizon."""

    horizon_min: int
    probability: float = Field(ge=0.0, le=1.0)


class EventForecast(_Frozen):
    """An event's probabilities at every horizon."""

    description: str
    horizons: list[EventProbability]


# ---- message bodies -----------------------------------------------------------------------------


class TwinBody(_Frozen):
    """Full twin snapshot of one bed."""

    SCHEMA: ClassVar[str] = "icu-edge/twin/3"
    values: dict[str, TwinValue] = Field(
        description="per key, the value of its source device: the configured one, else the monitor for "
        "haemodynamics and the ventilator for respiration, else any device with a fresh value"
    )
    settings: dict[str, VentilatorSetting]
    devices: dict[str, DeviceState]
    device_alarms: list[DeviceAlarm]
    forecast: ForecastBody | None = Field(default=None, description="the latest forecast of this bed")


class ForecastBody(_Frozen):
    """Where each signal of a bed is heading, and how likely hypotension or desaturation is.

    A signal without fresh input gets no forecast; `unavailable` says why. A bed with no fresh
    signal at all still gets this message (empty `signals`), so a retained forecast never outlives
    its inputs.
    """

    SCHEMA: ClassVar[str] = "icu-edge/forecast/1"
    model: ForecastModelRef
    made_at: Timestamp
    horizons_min: list[int]
    signals: dict[str, SignalForecast]
    events: dict[str, EventForecast]
    unavailable: dict[str, str] = Field(description="signal or event key -> why it has no forecast")


class VitalsBody(_Frozen):
    """A batch of observations as they arrived from one device."""

    SCHEMA: ClassVar[str] = "icu-edge/vitals/3"
    device: str
    observations: list[Observation]
    coalesced: int = Field(
        default=0, description="observation batches merged into this one because a consumer fell behind"
    )


class DeviceStatusBody(_Frozen):
    """Retained device status."""

    SCHEMA: ClassVar[str] = "icu-edge/device/3"
    status: DeviceState


class WaveBody(_Frozen):
    """A fixed window of one waveform signal from one device (QoS 0, not retained, never stored)."""

    SCHEMA: ClassVar[str] = "icu-edge/wave/1"
    device: str
    signal: str = Field(description="ecg, pleth, abp, cvp, co2, resp, paw, flow, volume")
    unit: str = Field(description="UCUM unit of the samples")
    label: str
    mdc: str | None = None
    sample_period_s: float = Field(gt=0)
    start: Timestamp = Field(description="time of the first sample (appliance clock unless the device said)")
    samples: list[float | None] = Field(description="oldest first; null where the device marked it invalid")
    gap_before: bool = Field(description="samples were lost or the stream restarted before this window")


class EventKind(enum.StrEnum):
    """Lifecycle and connectivity events on `R/bed/{bed}/events`."""

    DEVICE_CONNECTED = "device_connected"
    DEVICE_DISCONNECTED = "device_disconnected"
    DEVICE_ALARM_RAISED = "device_alarm_raised"
    DEVICE_ALARM_ENDED = "device_alarm_ended"
    DEVICE_TEXT_MESSAGES = "device_text_messages"
    OUTBOX_DROPPED = "outbox_dropped"


class EventBody(_Frozen):
    """One event, in order."""

    SCHEMA: ClassVar[str] = "icu-edge/event/1"
    kind: EventKind
    device: str | None = None
    detail: str
    alarm: DeviceAlarm | None = None
    at: Timestamp


class ApplianceState(enum.StrEnum):
    """Appliance status: `offline` is also the MQTT Will."""

    ONLINE = "online"
    OFFLINE = "offline"


class ApplianceStatusBody(_Frozen):
    """Birth / death of the edge node."""

    SCHEMA: ClassVar[str] = "icu-edge/status/1"
    state: ApplianceState
    version: str
    beds: list[str]
    reason: str | None = Field(default=None, description="why offline: shutdown, or lost (the Will)")


Body = TwinBody | VitalsBody | DeviceStatusBody | EventBody | ApplianceStatusBody | ForecastBody | WaveBody


class Envelope(_Frozen):
    """Fields every payload carries."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    SCHEMA: ClassVar[str]
    schema_id: str = Field(alias="schema", description="payload schema, e.g. icu-edge/twin/1")
    appliance: str
    bed: str | None = Field(description="null on appliance-level topics")
    session: int = Field(ge=1, description="increments on each daemon start")
    seq: int = Field(ge=0, description="consecutive per topic within a session, from 0")
    ts: Timestamp


class TwinMessage(Envelope, TwinBody):
    """`R/bed/{bed}/twin`, retained, QoS 1."""


class VitalsMessage(Envelope, VitalsBody):
    """`R/bed/{bed}/vitals`, QoS 1 through the outbox."""


class DeviceStatusMessage(Envelope, DeviceStatusBody):
    """`R/bed/{bed}/device/{device}`, retained, QoS 1."""


class EventMessage(Envelope, EventBody):
    """`R/bed/{bed}/events`, QoS 1."""


class ApplianceStatusMessage(Envelope, ApplianceStatusBody):
    """`R/appliance/{id}/status`, retained, QoS 1; the Will carries state offline."""


class ForecastMessage(Envelope, ForecastBody):
    """`R/bed/{bed}/forecast`, retained, QoS 1."""


class WaveMessage(Envelope, WaveBody):
    """`R/bed/{bed}/wave/{signal}`, QoS 0, not retained (only when `[waves] enabled`)."""


def utc_now() -> datetime:
    """Return the wall clock as an aware UTC datetime."""
    return datetime.now(tz=UTC)
