"""The domain model and every payload that crosses the MQTT boundary (contract v1).

Each payload is a *body* (what the producer knows) plus the *envelope* (`schema`, `appliance`, `bed`,
`session`, `seq`, `ts`) that the outbox stamps when the message enters it, so `seq` is consecutive per
topic. The `...Message` classes are body + envelope: what a central station receives, and what the
JSON Schemas are generated from.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import ClassVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from drivers.base import AlarmPriority
from drivers.vocabulary import TERMS

CONTRACT_VERSION = 1


def format_rfc3339_ms(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with milliseconds (`2026-11-25T20:23:32.123Z`)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = AwareDatetime
"""A wall-clock instant; on the wire RFC 3339 UTC with milliseconds.

pydantic serializes it natively (no Python call per instant); `edge.contract.encode_message` brings
the text to that form (`Z`, exactly three fraction digits) on the encoded bytes.
"""


class _Frozen(BaseModel):
    # NaN and Infinity come out as the JSON-breaking constants, never as a silent null: the encoder
    # refuses them (edge.contract), the alarm store reads them back as they were.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


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
    source: str = Field(
        description="the key whose readings the forecast was made from: the signal's own, or `pr` (pulse "
        "rate: a pulse oximeter's or a ventilator's) for `hr` on a bed without a fresh heart rate; the "
        "whole input window is from this one source"
    )
    last_value: float = Field(description="the last valid value the forecast starts from")
    last_age_s: float = Field(description="age of the last valid input at forecast time")
    valid_minutes: int = Field(description="minutes of the input window with a valid value")
    horizons: list[HorizonForecast]


def source_name(key: str) -> str:
    """Return how a display names a forecast's `source` (`pulse rate` for pr), in lower case."""
    known = TERMS.get(key)
    return key if known is None else known.label.lower()


class EventProbability(_Frozen):
    """Probability that an event happens within one horizon."""

    horizon_min: int
    probability: float = Field(ge=0.0, le=1.0)


class EventForecast(_Frozen):
    """An event's probabilities at every horizon."""

    description: str
    horizons: list[EventProbability]


class AlarmKind(enum.StrEnum):
    """Where an alarm condition comes from."""

    PHYSIOLOGICAL = "physiological"
    """A limit crossing the appliance computes from the twin."""
    DEVICE = "device"
    """An alarm a ventilator or monitor reports (the device stays the primary alarm system)."""
    TECHNICAL = "technical"
    """A problem of the equipment or the alarm system: device lost, no valid data, broker, disk, clock."""
    PREDICTIVE = "predictive"
    """A forecast gives a limit crossing within its horizon a probability at or above the threshold."""


class AlarmState(enum.StrEnum):
    """The alarm signal's state (IEC 60601-1-8; IHE ACM alarm and inactivation states)."""

    ACTIVE = "active"
    """Condition present, signal on."""
    LATCHED = "latched"
    """Condition gone, signal held until acknowledged (latching alarms only)."""
    ACKNOWLEDGED = "acknowledged"
    """Acknowledged while the condition is present; ends when the condition does."""
    AUDIO_PAUSED = "audio_paused"
    """Audio paused until `audio_paused_until`; resumes by itself."""
    ENDED = "ended"
    """Over: the condition is gone (and, if latching, acknowledged). The retained topic is then cleared."""


class Acknowledgement(_Frozen):
    """Who acknowledged an alarm, and when (from the command)."""

    at: Timestamp
    command_id: str
    user: str | None = None
    role: str | None = None
    reason: str | None = None


class AlarmBody(_Frozen):
    """One alarm: its condition, its signal state and what caused it (`R/bed/{bed}/alarm/{id}`)."""

    SCHEMA: ClassVar[str] = "icu-edge/alarm/1"
    id: str = Field(description="stable for one condition episode on one bed, across daemon restarts")
    kind: AlarmKind
    condition: str = Field(
        description="machine-readable condition: spo2_low, map_high, device_disconnected, "
        "predicted_spo2_below_90, device:<code>, ..."
    )
    key: str | None = Field(description="the signal, for physiological and predictive alarms")
    text: str = Field(description="one line for the central station's display")
    priority: AlarmPriority = Field(description="current priority (after any escalation)")
    configured_priority: AlarmPriority = Field(description="priority before escalation")
    state: AlarmState
    condition_present: bool = Field(description="whether the alarm condition is present now")
    latching: bool = Field(
        description="the signal stays (latched) after the condition ends, until acknowledged"
    )
    onset: Timestamp = Field(description="when the condition began (the first reading beyond the limit)")
    determined_at: Timestamp = Field(
        description="when the appliance decided the condition exists (after delay)"
    )
    ended_at: Timestamp | None = None
    value: float | None = Field(default=None, description="the reading that caused it (latest while present)")
    unit: str | None = None
    limit: float | None = Field(default=None, description="the limit it crossed")
    direction: str | None = Field(default=None, description="low or high, for limit alarms")
    condition_delay_s: float = Field(description="how long the condition had to hold before the alarm")
    end_hysteresis: float | None = Field(
        default=None, description="the value must come back this far inside the limit to end the condition"
    )
    escalate_after_s: float | None = Field(
        default=None, description="unacknowledged for this long: priority goes up one level (null: never)"
    )
    probability: float | None = Field(default=None, description="predictive: the forecast probability")
    horizon_min: int | None = Field(default=None, description="predictive: the horizon of that probability")
    device: str | None = Field(default=None, description="the device it comes from, where there is one")
    cause: str = Field(description="what caused it, for the field engineer and the audit")
    acknowledged: Acknowledgement | None = None
    audio_paused_until: Timestamp | None = None
    updated_at: Timestamp = Field(description="time of the last change of this alarm")
    history: bool = Field(
        default=False,
        description="true when this message waited in the outbox while the broker was unreachable: show it "
        "in the log, never start an alarm signal from it (the birth and fresh messages carry the present)",
    )


class AlarmSummary(_Frozen):
    """One active alarm, short, for the birth (a restarted central station re-syncs from it)."""

    id: str
    kind: AlarmKind
    condition: str
    key: str | None
    priority: AlarmPriority
    state: AlarmState
    text: str
    onset: Timestamp


class AlarmLimit(_Frozen):
    """The limit alarm settings in force for one key of one bed."""

    low: float | None
    high: float | None
    priority: AlarmPriority
    low_priority: AlarmPriority | None = Field(default=None, description="when the low side differs")
    condition_delay_s: float
    end_hysteresis: float
    latching: bool
    escalate_after_s: float | None = Field(
        default=None, description="unacknowledged for this long: priority up one level (null: never)"
    )
    origin: str = Field(description="default, config or command (who set it last)")


class News2Body(_Frozen):
    """NEWS2 (RCP 2017) from the twin: decision support, not an alarm."""

    total: int = Field(description="sum of the sub-scores that could be computed")
    complete: bool = Field(description="every one of the seven parameters was available")
    missing: list[str] = Field(description="parameters without a fresh valid reading (or not set)")
    subscores: dict[str, int] = Field(
        description="rr, spo2, air_or_oxygen, sbp, hr, consciousness, temp (those available)"
    )
    spo2_scale: int = Field(description="1, or 2 for a target SpO2 of 88-92 % set by a clinician")
    on_oxygen: bool | None = Field(description="FiO2 above 21 %; null when FiO2 is unknown")
    consciousness: str | None = Field(
        description="alert, new_confusion, voice, pain, unresponsive (set by command)"
    )
    single_parameter_3: bool = Field(description="a single parameter scores 3 (a red score)")
    risk: str = Field(description="low, low_medium, medium or high (RCP clinical risk)")
    advisory: str | None = Field(
        description="the advisory the aggregate reached: emergency, urgent, single_parameter (null: none)"
    )
    computed_at: Timestamp


# ---- message bodies -----------------------------------------------------------------------------


class TwinBody(_Frozen):
    """Full twin snapshot of one bed."""

    SCHEMA: ClassVar[str] = "icu-edge/twin/5"
    values: dict[str, TwinValue] = Field(
        description="per key, the value of its source device: the configured one, else the monitor for "
        "haemodynamics and the ventilator for respiration, else any device with a fresh value"
    )
    settings: dict[str, VentilatorSetting]
    devices: dict[str, DeviceState]
    device_alarms: list[DeviceAlarm] = Field(
        description="the alarms the devices report right now, as reported"
    )
    forecast: ForecastBody | None = Field(default=None, description="the latest forecast of this bed")
    alarms: list[AlarmBody] = Field(
        default_factory=list, description="the bed's alarms that have not ended, highest priority first"
    )
    alarm_limits: dict[str, AlarmLimit] = Field(default_factory=dict, description="limit settings per key")
    news2: News2Body | None = Field(default=None, description="NEWS2 decision support")


class ForecastBody(_Frozen):
    """Where each signal of a bed is heading, and how likely hypotension or desaturation is.

    A signal without fresh input gets no forecast; `unavailable` says why. A bed with no fresh
    signal at all still gets this message (empty `signals`), so a retained forecast never outlives
    its inputs.
    """

    SCHEMA: ClassVar[str] = "icu-edge/forecast/2"
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
    DEVICE_TEXT_MESSAGES = "device_text_messages"
    OUTBOX_DROPPED = "outbox_dropped"
    ALARM_RAISED = "alarm_raised"
    """A new alarm (ACM phase start)."""
    ALARM_STATE_CHANGED = "alarm_state_changed"
    """Acknowledged, audio paused, pause over, latched, condition back (ACM update)."""
    ALARM_ESCALATED = "alarm_escalated"
    """Unacknowledged too long: priority up one level (ACM escalate)."""
    ALARM_ENDED = "alarm_ended"
    """Over (ACM end); the retained alarm topic is cleared after this."""
    LIMITS_CHANGED = "limits_changed"
    """A limit setting changed by command (the audit's public copy)."""
    NEWS2_ADVISORY = "news2_advisory"
    """The NEWS2 aggregate reached (or left) a configured advisory level."""


class EventBody(_Frozen):
    """One event, in order."""

    SCHEMA: ClassVar[str] = "icu-edge/event/2"
    kind: EventKind
    device: str | None = None
    detail: str
    alarm: AlarmBody | None = Field(default=None, description="the alarm after the change (alarm_* events)")
    at: Timestamp
    history: bool = Field(
        default=False,
        description="true when this event waited in the outbox while the broker was unreachable: it is the "
        "record of what happened, never a reason to start an alarm signal",
    )


class ApplianceState(enum.StrEnum):
    """Appliance status: `offline` is also the MQTT Will."""

    ONLINE = "online"
    OFFLINE = "offline"


class ApplianceStatusBody(_Frozen):
    """Birth / death of the edge node."""

    SCHEMA: ClassVar[str] = "icu-edge/status/2"
    state: ApplianceState
    version: str
    beds: list[str]
    reason: str | None = Field(default=None, description="why offline: shutdown, or lost (the Will)")
    alarms: dict[str, list[AlarmSummary]] = Field(
        default_factory=dict,
        description="in the birth: per bed, the alarms that have not ended, highest priority first",
    )
    central_station: str | None = Field(
        default=None, description="in the birth: online, offline or unknown, as its state topic says"
    )


class CommandStatus(enum.StrEnum):
    """The appliance's answer to a command: it decides, the central station only asks."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"


class CommandResultBody(_Frozen):
    """`R/bed/{bed}/cmd-result`: the answer to one command, matched by `command_id`."""

    SCHEMA: ClassVar[str] = "icu-edge/cmd-result/1"
    command_id: str | None = Field(description="null only when the command was too malformed to carry one")
    command: str = Field(description="ack, pause, limits, rebirth, news2, or what was sent")
    status: CommandStatus
    reason: str = Field(description="why rejected, or what accepting did (and did not do)")
    duplicate: bool = Field(
        default=False, description="this command_id was seen before: same answer, not re-applied"
    )
    alarm: AlarmBody | None = Field(default=None, description="the alarm after an ack")
    at: Timestamp


Body = (
    TwinBody
    | VitalsBody
    | DeviceStatusBody
    | EventBody
    | ApplianceStatusBody
    | ForecastBody
    | WaveBody
    | AlarmBody
    | CommandResultBody
)


class Envelope(_Frozen):
    """Fields every payload carries."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, ser_json_inf_nan="constants"
    )
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


class AlarmMessage(Envelope, AlarmBody):
    """`R/bed/{bed}/alarm/{id}`, retained while the alarm has not ended, QoS 1; cleared after it ends."""


class CommandResultMessage(Envelope, CommandResultBody):
    """`R/bed/{bed}/cmd-result`, QoS 1."""


class WaveMessage(Envelope, WaveBody):
    """`R/bed/{bed}/wave/{signal}`, QoS 0, not retained (only when `[waves] enabled`)."""


def utc_now() -> datetime:
    """Return the wall clock as an aware UTC datetime."""
    return datetime.now(tz=UTC)
