"""The one contract every device driver keeps.

A driver is a sans-I/O *session*: it is fed bytes and the time, and it hands back bytes to write and
typed events. It never touches a port, a socket or a clock; `edge/` owns the threads, the transports,
the reconnect and the watchdog, and never parses bytes. Drivers never import `edge/`.
"""

from __future__ import annotations

import difflib
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable


def unknown_option(driver: str, name: str, known: Sequence[str]) -> str:
    """The one message for an option a driver does not have: the nearest name, then every allowed one."""
    near = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"unknown {driver} option {name!r}{hint}; allowed: {', '.join(sorted(known))}"


class AlarmPriority(enum.StrEnum):
    """Alarm priority in the words of IEC 60601-1-8."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """One measured value as the device reported it, already mapped to our key and UCUM unit."""

    key: str
    """Short key in the ward's words (`ppeak`, `peep`, `vt`, ...)."""
    value: float | None
    """None when the device reported the parameter without a usable value."""
    unit: str
    """UCUM unit (`mbar`, `mL`, `L/min`, `%`, `mm[Hg]`, `/min`)."""
    device_code: str
    """The protocol's own code for the parameter (e.g. MEDIBUS data code `7D`)."""
    label: str
    """Human-readable parameter name."""
    mdc_code: str | None = None
    """IEEE 11073 MDC reference id where one exists (`MDC_PRESS_AWAY_INSP_PEAK`)."""
    valid: bool = True
    device_flag: str | None = None
    """The device's own word for why the value is not valid (`questionable`, `under_range`,
    `calibrating`, ...), when it said one; shown next to the null value, never instead of it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Setting:
    """One device setting (ventilator mode and targets)."""

    key: str
    value: float | str | None
    unit: str
    device_code: str
    label: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceAlarmReading:
    """One alarm the device itself reports as currently active."""

    code: str
    """The protocol's alarm code; unique per device."""
    priority: AlarmPriority
    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MeasurementsReceived:
    """A set of measurements taken at one instant (one poll answer)."""

    measurements: tuple[Measurement, ...]
    device_time: datetime | None = None
    """When the device says it measured; None when the protocol does not say."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SettingsReceived:
    """The device's current settings, complete."""

    settings: tuple[Setting, ...]
    device_time: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceAlarmsReceived:
    """The complete list of alarms the device reports active now (empty when none)."""

    alarms: tuple[DeviceAlarmReading, ...]
    device_time: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TextMessagesReceived:
    """The device's current text messages (complete list)."""

    messages: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class WaveformChunk:
    """Consecutive samples of one waveform signal, in physical units, oldest first.

    `signal` is a name of `drivers.vocabulary.WAVES`; a sample the device marked invalid is None.
    The chunk's last sample is the newest the device sent; the edge time-stamps it on receipt
    (and trusts `device_time`, the first sample's time, only where the protocol gives one).
    """

    signal: str
    unit: str
    sample_period_s: float
    samples: tuple[float | None, ...]
    device_code: str
    label: str
    device_time: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DataRefused:
    """The device sent values that must never reach a twin (demo or test data): they were dropped.

    Sent on every refused set, so the device status keeps saying why the bed has no values from it
    for as long as the device keeps sending such data; a valid `MeasurementsReceived` ends it.
    """

    reason: str
    """Machine-readable: `demo_data`, `test_data`."""
    detail: str
    """One line for the device status (`monitor in demo mode: its values are refused`)."""
    count: int
    """How many values this set refused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkUp:
    """The protocol handshake completed; data will follow."""

    model: str | None = None
    """Device model or identification string, when the device told us."""
    protocol_version: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkDown:
    """The link was lost (time-out, stop command); the session will try to re-establish it."""

    reason: str


DriverEvent = (
    MeasurementsReceived
    | SettingsReceived
    | DeviceAlarmsReceived
    | TextMessagesReceived
    | WaveformChunk
    | DataRefused
    | LinkUp
    | LinkDown
)


@dataclass(slots=True)
class LinkCounters:
    """Running counters of one device link, reported on the device status topic."""

    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    checksum_errors: int = 0
    resyncs: int = 0
    """Bytes or partial frames skipped to find the next frame start."""
    overflows: int = 0
    """Times the receive buffer hit its cap and was discarded."""
    timeouts: int = 0
    """Link time-outs (device silent past the protocol's limit)."""
    handshakes: int = 0
    unknown_commands: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, int]:
        """Return the counters as a plain dict (for payloads and logs)."""
        out = {
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "checksum_errors": self.checksum_errors,
            "resyncs": self.resyncs,
            "overflows": self.overflows,
            "timeouts": self.timeouts,
            "handshakes": self.handshakes,
            "unknown_commands": self.unknown_commands,
        }
        out.update(self.extra)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialSettings:
    """Line settings a driver needs on a serial port (ignored on sockets)."""

    baud: int
    bytesize: int = 8
    parity: str = "E"
    """pyserial parity letter: N, E, O."""
    stopbits: float = 1
    rtscts: bool = False
    """RTS/CTS hardware flow control (S/5 DRI); never asked of a pty, which has none."""


@runtime_checkable
class DeviceSession(Protocol):
    """A sans-I/O protocol session for one device link.

    The caller feeds received bytes and the monotonic time, calls `poll` whenever the time
    passes `next_deadline_s()`, writes what `data_to_send()` returns, and drains `events()`.
    `reset` is called when the transport is (re)opened: the session starts its handshake over.
    """

    protocol: str
    counters: LinkCounters

    def reset(self, *, now_s: float) -> None:
        """Forget the link state and begin the handshake anew."""

    def receive(self, data: bytes, *, now_s: float) -> None:
        """Feed bytes read from the transport."""

    def poll(self, *, now_s: float) -> None:
        """Run timers: keep-alive, cyclic requests, link time-out."""

    def next_deadline_s(self) -> float:
        """Return the monotonic time at which `poll` must run next."""

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes to write to the transport.

        The caller writes and calls again until it gets b"": a session on a datagram transport
        (IntelliVue LAN) hands back one message per call, a stream session everything at once.
        """

    def events(self) -> list[DriverEvent]:
        """Return (and forget) the events produced since the last call."""

    @property
    def link_up(self) -> bool:
        """True while the handshake holds and the device answers."""


@runtime_checkable
class ReleasingSession(Protocol):
    """A session whose protocol has a goodbye (IntelliVue's Release Request), optional to implement.

    The device link calls `release` once when it stops, writes what `data_to_send` then returns, and
    closes the transport; the device learns at once that the association ended instead of timing out.
    """

    def release(self, *, now_s: float) -> None:
        """Queue the goodbye and stop all further requests."""
