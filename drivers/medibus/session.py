"""MEDIBUS host session, sans-I/O: ICC handshake, device identification, cyclic polling, keep-alive.

Driven only by the bytes and the monotonic `now_s` it is given. One request is outstanding at a time;
each answer chains the next request of the cycle (measured data CP1, settings, alarms CP1, text
messages); a new cycle starts every `poll_interval_s`. A NOP goes out whenever the host has sent nothing
for `keepalive_s`, so the device never sees the 3 s pause that ends a MEDIBUS link.

Policies worth knowing:
- Device commands are answered with their echo response; a device-identification request is answered
  with `HOST_IDENTIFICATION`; unknown commands get an empty echo and are counted.
- Frames with a bad checksum are dropped and counted, never answered: VSCapture replies `01 15`, but
  that response is not in the documented command set, and an unanswered request simply times out and
  the cycle moves on, while an unanswered device command is repeated by the device.
- A bad frame that arrives while a request is pending was most likely its answer: the request is sent
  again at once (at most `MAX_CORRUPT_RETRIES` times), so a noisy line costs a retry, not a 3 s wait.
- With `waves = true` (MEDIBUS.X), after the first poll cycle of a link the session asks for the
  realtime configuration, configures the curves it knows (Paw, flow, volume; those the device offers)
  and enables them with the raw sync sequence; values are polled from the start either way. Realtime
  bytes are split from the slow-data bytes before framing; their samples leave as `WaveformChunk`
  events of `WAVE_CHUNK_S` worth of samples per curve, appended after the slow-data events of the same
  read, so they never hold a value back. A device's "realtime configuration changed" command disables
  the streams and configures them anew after the next cycle. A device that offers none of the curves,
  or does not answer, is polled without waves (and asked again after the next link loss).
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from drivers.base import (
    DeviceAlarmsReceived,
    DeviceSession,
    DriverEvent,
    LinkCounters,
    LinkDown,
    LinkUp,
    MeasurementsReceived,
    SerialSettings,
    SettingsReceived,
    TextMessagesReceived,
    WaveformChunk,
    unknown_option,
)
from drivers.medibus.codec import DEFAULT_BUFFER_CAP_BYTES, Command, Frame, MedibusDecoder, Response
from drivers.medibus.codes import CommandCode
from drivers.medibus.device import (
    DeviceIdentification,
    parse_alarms,
    parse_identification,
    parse_measurements,
    parse_settings,
    parse_text_messages,
)
from drivers.medibus.realtime import (
    CURVE_SIGNALS,
    MAX_BATCH_BYTES,
    CurveConfig,
    RealtimeDecoder,
    configure_args,
    enable_bytes,
    parse_realtime_config,
    realtime_part,
)
from drivers.registry import DriverInfo
from drivers.vocabulary import WAVES, DeviceKind

LOGGER = logging.getLogger(__name__)

PROTOCOL = "MEDIBUS"
MAX_LINK_TIMEOUT_S = 3.0
"""MEDIBUS ends a link after a pause longer than 3 s (protocol notes §2.1)."""

HOST_IDENTIFICATION = DeviceIdentification(
    device_id="0161", name="icu-edge", revision="01.00", medibus_version="06.00"
)
"""What we answer to a device's identification request. `0161` follows VSCapture's host answer; the
protocol notes do not say which id a host should use."""

POLL_CYCLE: tuple[CommandCode, ...] = (
    CommandCode.MEASURED_CP1,
    CommandCode.DEVICE_SETTINGS,
    CommandCode.ALARMS_CP1,
    CommandCode.TEXT_MESSAGES,
)

EXTRA_RESPONSE_TIMEOUTS = "response_timeouts"
EXTRA_UNEXPECTED_RESPONSES = "unexpected_responses"
EXTRA_CORRUPT_RETRIES = "corrupt_response_retries"
EXTRA_NO_CURVES = "realtime_no_curves"
EXTRA_CURVES_UNCONFIRMED = "realtime_configure_unanswered"
WAVE_CHUNK_S = 0.25
"""Samples per `WaveformChunk`: this much of each curve's time (at least one sample)."""
MAX_CORRUPT_RETRIES = 2
"""Times one request is sent again at once because a frame with a bad checksum arrived while it was
pending; after that the response time-out decides."""


_SECONDS_LIMITS: dict[str, float] = {
    "poll_interval_s": 60.0,
    "keepalive_s": MAX_LINK_TIMEOUT_S,
    "link_timeout_s": MAX_LINK_TIMEOUT_S,
    "response_timeout_s": 10.0,
    "icc_retry_s": 60.0,
}
"""Upper bound of each time option. keepalive_s must stay *below* the 3 s MEDIBUS link pause, the link
time-out must not outwait it; a poll or handshake retry rarer than once a minute leaves a ventilated
patient's values unrefreshed for longer than any ward would accept."""
BUFFER_CAP_RANGE = (64, 16 * 1024 * 1024)
"""buffer_cap_bytes: a frame must fit; more than 16 MiB per device is a typo, not a need."""


def _buffer_cap_problem(raw: float) -> dict[str, str]:
    low, high = BUFFER_CAP_RANGE
    if not isinstance(raw, int):
        return {"buffer_cap_bytes": f"must be an integer number of bytes, got {raw!r}"}
    if raw < low:
        return {"buffer_cap_bytes": f"must be at least {low} bytes (one frame), got {raw!r}"}
    if raw > high:
        return {"buffer_cap_bytes": f"must not exceed {high} bytes, got {raw!r}"}
    return {}


def option_problems(values: Mapping[str, object]) -> dict[str, str]:
    """Return one problem per bad option (name -> what is wrong and what is allowed); empty: usable."""
    known = [f.name for f in fields(MedibusOptions)]
    problems: dict[str, str] = {}
    for name, raw in values.items():
        if name not in known:
            problems[name] = unknown_option("medibus", name, known)
        elif name == "waves":
            if not isinstance(raw, bool):
                problems[name] = f"must be true or false, got {raw!r}"
        elif isinstance(raw, bool) or not isinstance(raw, int | float):
            problems[name] = f"must be a number, got {raw!r}"
        elif name == "buffer_cap_bytes":
            problems.update(_buffer_cap_problem(raw))
        elif not math.isfinite(raw) or raw <= 0:
            problems[name] = f"must be a positive, finite number of seconds, got {raw!r}"
        elif name == "keepalive_s" and raw >= MAX_LINK_TIMEOUT_S:
            problems[name] = f"must stay below {MAX_LINK_TIMEOUT_S!r} s (the MEDIBUS link pause), got {raw!r}"
        elif raw > _SECONDS_LIMITS[name]:
            problems[name] = f"must not exceed {_SECONDS_LIMITS[name]!r} s, got {raw!r}"
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class MedibusOptions:
    """Driver options a device config may set; times in seconds of the monotonic clock."""

    poll_interval_s: float = 1.0
    keepalive_s: float = 1.0
    link_timeout_s: float = MAX_LINK_TIMEOUT_S
    response_timeout_s: float = 3.0
    icc_retry_s: float = 1.0
    buffer_cap_bytes: int = DEFAULT_BUFFER_CAP_BYTES
    waves: bool = False
    """MEDIBUS.X realtime curves (Paw, flow, volume) as `WaveformChunk` events."""

    def __post_init__(self) -> None:
        problems = option_problems({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise ValueError("; ".join(f"{name}: {text}" for name, text in problems.items()))

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> MedibusOptions:
        """Build options from a config mapping; ValueError naming every unknown or invalid option."""
        problems = option_problems(options)
        if problems:
            raise ValueError("; ".join(f"{name}: {text}" for name, text in problems.items()))
        values = {
            name: raw if name in ("buffer_cap_bytes", "waves") else float(raw)  # type: ignore[arg-type]
            for name, raw in options.items()
        }
        return cls(**values)  # type: ignore[arg-type]


class _State(enum.Enum):
    NEW = enum.auto()
    """Created; the handshake starts on the first call that brings a time."""
    HANDSHAKE = enum.auto()
    """ICC sent, waiting for its echo."""
    IDENTIFY = enum.auto()
    """Device-identification request sent, waiting for the answer."""
    RUNNING = enum.auto()


class MedibusSession:
    """The host side of one MEDIBUS link (implements `drivers.base.DeviceSession`)."""

    protocol = PROTOCOL

    def __init__(self, *, options: MedibusOptions | None = None) -> None:
        self.options = options if options is not None else MedibusOptions()
        self.counters = LinkCounters()
        self.identification: DeviceIdentification | None = None
        self._decoder = MedibusDecoder(counters=self.counters, cap_bytes=self.options.buffer_cap_bytes)
        self._out = bytearray()
        self._events: list[DriverEvent] = []
        self._state = _State.NEW
        self._link_up = False
        self._last_tx_s = 0.0
        self._last_rx_s = 0.0
        self._pending: CommandCode | None = None
        self._pending_args = b""
        self._pending_since_s = 0.0
        self._corrupt_retries = 0
        self._cycle_index = 0
        self._next_cycle_s = 0.0
        self._realtime = RealtimeDecoder(counters=self.counters)
        self._offered: tuple[CurveConfig, ...] = ()
        self._wave_pending: list[npt.NDArray[np.float64]] = []
        self._realtime_stale = self.options.waves

    @property
    def link_up(self) -> bool:
        """True while the handshake holds and the device answers."""
        return self._link_up

    def reset(self, *, now_s: float) -> None:
        """Forget the link state and begin the handshake anew."""
        self._decoder.clear()
        self._out.clear()
        self._link_up = False
        self._stop_waves()
        self._start_handshake(now_s=now_s)

    def receive(self, data: bytes, *, now_s: float) -> None:
        """Feed bytes read from the transport."""
        if self._state is _State.NEW:
            self.reset(now_s=now_s)
        self.counters.bytes_in += len(data)
        bad_frames = self.counters.checksum_errors
        for frame in self._decoder.feed(data):
            self._last_rx_s = now_s
            if isinstance(frame, Command):
                self._answer_device_command(frame, now_s=now_s)
            else:
                self._handle_response(frame, now_s=now_s)
        if self.counters.checksum_errors != bad_frames:
            self._retry_after_corruption(now_s=now_s)
        if self._realtime.curves:
            self._receive_waves(realtime_part(data))

    def poll(self, *, now_s: float) -> None:
        """Run timers: link time-out, ICC retry, response time-out, cycle start, keep-alive."""
        if self._state is _State.NEW:
            self.reset(now_s=now_s)
            return
        opts = self.options
        if self._state is _State.HANDSHAKE:
            if now_s >= self._last_tx_s + opts.icc_retry_s:
                self._send_request(CommandCode.ICC, now_s=now_s)
            return
        if now_s >= self._last_rx_s + opts.link_timeout_s:
            self.counters.timeouts += 1
            self._link_lost(reason=f"device silent for {now_s - self._last_rx_s:.1f} s", now_s=now_s)
            return
        if self._pending is not None and now_s >= self._pending_since_s + opts.response_timeout_s:
            self._bump_extra(EXTRA_RESPONSE_TIMEOUTS)
            LOGGER.info("MEDIBUS request %s unanswered; moving on", self._pending.name)
            self._advance(now_s=now_s, answered=False)
        if self._state is _State.RUNNING and self._pending is None and now_s >= self._next_cycle_s:
            self._start_cycle(now_s=now_s)
        if now_s >= self._last_tx_s + opts.keepalive_s:
            self._send(Command(code=CommandCode.NOP), now_s=now_s)

    def next_deadline_s(self) -> float:
        """Return the monotonic time at which `poll` must run next."""
        if self._state is _State.NEW:
            return -math.inf
        opts = self.options
        if self._state is _State.HANDSHAKE:
            return self._last_tx_s + opts.icc_retry_s
        deadlines = [self._last_rx_s + opts.link_timeout_s, self._last_tx_s + opts.keepalive_s]
        if self._pending is not None:
            deadlines.append(self._pending_since_s + opts.response_timeout_s)
        elif self._state is _State.RUNNING:
            deadlines.append(self._next_cycle_s)
        return min(deadlines)

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes to write to the transport."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def events(self) -> list[DriverEvent]:
        """Return (and forget) the events produced since the last call."""
        out = self._events
        self._events = []
        return out

    def _bump_extra(self, name: str) -> None:
        self.counters.extra[name] = self.counters.extra.get(name, 0) + 1

    def _send(self, frame: Frame, *, now_s: float) -> None:
        raw = frame.to_bytes()
        self._out += raw
        self.counters.bytes_out += len(raw)
        self.counters.frames_out += 1
        self._last_tx_s = now_s

    def _send_request(self, code: CommandCode, *, now_s: float, args: bytes = b"") -> None:
        if code is not self._pending:
            self._corrupt_retries = 0
        self._send(Command(code=code, args=args), now_s=now_s)
        self._pending = code
        self._pending_args = args
        self._pending_since_s = now_s

    def _retry_after_corruption(self, *, now_s: float) -> None:
        """Ask again for the pending answer that probably arrived corrupted."""
        pending = self._pending
        if pending is None or self._pending_since_s == now_s or self._corrupt_retries >= MAX_CORRUPT_RETRIES:
            return
        self._corrupt_retries += 1
        self._bump_extra(EXTRA_CORRUPT_RETRIES)
        self._send_request(pending, now_s=now_s, args=self._pending_args)

    def _start_handshake(self, *, now_s: float) -> None:
        self._state = _State.HANDSHAKE
        self._pending = None
        self._last_rx_s = now_s
        self._send_request(CommandCode.ICC, now_s=now_s)

    def _link_lost(self, *, reason: str, now_s: float) -> None:
        LOGGER.warning("MEDIBUS link down: %s", reason)
        self._stop_waves()
        if self._link_up:
            self._link_up = False
            self._events.append(LinkDown(reason=reason))
        self._start_handshake(now_s=now_s)

    def _declare_up(self, *, now_s: float) -> None:
        ident = self.identification
        model = None if ident is None else f"{ident.name} {ident.revision}".strip()
        version = None if ident is None else ident.medibus_version
        self._state = _State.RUNNING
        self._link_up = True
        self._events.append(LinkUp(model=model, protocol_version=version))
        LOGGER.info("MEDIBUS link up: %s (MEDIBUS %s)", model, version)
        self._start_cycle(now_s=now_s)

    def _start_cycle(self, *, now_s: float) -> None:
        self._cycle_index = 0
        self._next_cycle_s = now_s + self.options.poll_interval_s
        self._send_request(POLL_CYCLE[0], now_s=now_s)

    def _advance(self, *, now_s: float, answered: bool = True) -> None:
        """Finish the pending step: continue the handshake or send the next request of the cycle."""
        pending, self._pending = self._pending, None
        if pending is CommandCode.ICC:
            self.counters.handshakes += 1
            self._state = _State.IDENTIFY
            self._send_request(CommandCode.DEVICE_ID, now_s=now_s)
        elif pending is CommandCode.DEVICE_ID:
            self._declare_up(now_s=now_s)
        elif pending is CommandCode.REALTIME_CONFIG:
            self._configure_waves(now_s=now_s)
        elif pending is CommandCode.CONFIGURE_REALTIME:
            self._enable_waves(answered=answered, now_s=now_s)
        elif self._state is _State.RUNNING and self._cycle_index + 1 < len(POLL_CYCLE):
            self._cycle_index += 1
            self._send_request(POLL_CYCLE[self._cycle_index], now_s=now_s)
        elif self._state is _State.RUNNING and self._realtime_stale:
            self._realtime_stale = False
            self._offered = ()
            self._send_request(CommandCode.REALTIME_CONFIG, now_s=now_s)

    def _handle_response(self, frame: Response, *, now_s: float) -> None:
        code = CommandCode.lookup(frame.code)
        if code is CommandCode.NOP:
            return
        if code is None or code is not self._pending:
            self._bump_extra(EXTRA_UNEXPECTED_RESPONSES)
            LOGGER.debug("MEDIBUS response %#04x while waiting for %s", frame.code, self._pending)
            return
        data, counters = frame.data, self.counters
        if code is CommandCode.DEVICE_ID:
            self.identification = parse_identification(data)
            if self.identification is None:
                LOGGER.warning("MEDIBUS device identification unreadable: %r", data)
        elif code is CommandCode.MEASURED_CP1:
            measurements = parse_measurements(data, counters=counters)
            self._events.append(MeasurementsReceived(measurements=measurements))
        elif code is CommandCode.DEVICE_SETTINGS:
            self._events.append(SettingsReceived(settings=parse_settings(data, counters=counters)))
        elif code is CommandCode.ALARMS_CP1:
            self._events.append(DeviceAlarmsReceived(alarms=parse_alarms(data, counters=counters)))
        elif code is CommandCode.TEXT_MESSAGES:
            self._events.append(TextMessagesReceived(messages=parse_text_messages(data, counters=counters)))
        elif code is CommandCode.REALTIME_CONFIG:
            self._offered = parse_realtime_config(data, counters=counters)
        self._advance(now_s=now_s)

    def _answer_device_command(self, frame: Command, *, now_s: float) -> None:
        code = CommandCode.lookup(frame.code)
        if code is CommandCode.DEVICE_ID:
            self._send(Response(code=frame.code, data=HOST_IDENTIFICATION.to_payload()), now_s=now_s)
            return
        self._send(Response(code=frame.code), now_s=now_s)
        if code is None:
            self.counters.unknown_commands += 1
            LOGGER.info("MEDIBUS device sent unknown command %#04x; answered with an empty echo", frame.code)
        elif code is CommandCode.STOP:
            self._link_lost(reason="device sent stop communication", now_s=now_s)
        elif code is CommandCode.REALTIME_CONFIG_CHANGED and self.options.waves:
            LOGGER.info("MEDIBUS realtime configuration changed; curves configured anew")
            self._stop_waves()
            self._send_raw(enable_bytes(0), now_s=now_s)

    def _send_raw(self, raw: bytes, *, now_s: float) -> None:
        """Send unframed realtime sync bytes."""
        self._out += raw
        self.counters.bytes_out += len(raw)
        self._last_tx_s = now_s

    def _wanted_curves(self) -> list[CurveConfig]:
        """Return the offered curves the session decodes, in `CURVE_SIGNALS` order."""
        offered = {curve.code: curve for curve in self._offered}
        return [offered[code] for code in CURVE_SIGNALS if code in offered]

    def _configure_waves(self, *, now_s: float) -> None:
        """Configure the wanted curves the device offered; without any, poll without waves."""
        curves = self._wanted_curves()
        if not curves:
            self._bump_extra(EXTRA_NO_CURVES)
            LOGGER.warning("MEDIBUS device offers none of the realtime curves %s", ", ".join(CURVE_SIGNALS))
            return
        args = configure_args([(curve.code, 1) for curve in curves])
        self._send_request(CommandCode.CONFIGURE_REALTIME, now_s=now_s, args=args)

    def _enable_waves(self, *, answered: bool, now_s: float) -> None:
        """Start decoding the configured curves and let the device send them, once it confirmed them.

        Without the device's echo its streams may still be in an older order: decoding them as ours
        could put one curve's samples under another's name, so this link goes without waves.
        """
        if not answered:
            self._bump_extra(EXTRA_CURVES_UNCONFIRMED)
            LOGGER.warning(
                "MEDIBUS device did not confirm the realtime configuration; no curves on this link"
            )
            return
        curves = self._wanted_curves()
        self._realtime.configure(curves, batch_bytes=wave_batch_bytes(curves))
        self._wave_pending = [np.empty(0, dtype=np.float64) for _ in curves]
        self._send_raw(enable_bytes(len(curves)), now_s=now_s)

    def _stop_waves(self) -> None:
        """Hand out the samples still held or pending and decode no realtime bytes until configured again."""
        self._emit_windows(self._realtime.flush())
        for curve, pending in zip(self._realtime.curves, self._wave_pending, strict=True):
            if pending.size:
                self._emit_chunk(curve, pending)
        self._realtime.configure(())
        self._wave_pending = []
        self._realtime_stale = self.options.waves

    def _receive_waves(self, realtime: bytes) -> None:
        """Decode realtime bytes and emit a chunk per curve for every full window of samples."""
        self._emit_windows(self._realtime.feed(realtime))

    def _emit_windows(self, new_samples: list[npt.NDArray[np.float64]]) -> None:
        for index, (curve, samples) in enumerate(zip(self._realtime.curves, new_samples, strict=True)):
            pending = np.concatenate((self._wave_pending[index], samples))
            window = _window_samples(curve.interval_us)
            full = pending.size - pending.size % window
            for start in range(0, full, window):
                self._emit_chunk(curve, pending[start : start + window])
            self._wave_pending[index] = pending[full:]

    def _emit_chunk(self, curve: CurveConfig, samples: npt.NDArray[np.float64]) -> None:
        wave = WAVES[CURVE_SIGNALS[curve.code]]
        values: tuple[float | None, ...] = tuple(samples.tolist())
        if np.isnan(samples).any():
            values = tuple(None if math.isnan(v) else v for v in samples.tolist())
        self._events.append(
            WaveformChunk(
                signal=wave.signal,
                unit=wave.unit,
                sample_period_s=curve.interval_us * 1e-6,
                samples=values,
                device_code=curve.code,
                label=wave.label,
            )
        )


def _window_samples(interval_us: int) -> int:
    """Return how many samples of a curve one `WaveformChunk` carries."""
    return max(1, round(WAVE_CHUNK_S / (interval_us * 1e-6)))


def wave_batch_bytes(curves: Sequence[CurveConfig]) -> int:
    """Return the realtime bytes decoded at once: about one chunk window of cycles (a sync byte and a
    sample per curve each), so a serial read of a few bytes costs no numpy pass of its own."""
    window = _window_samples(min(curve.interval_us for curve in curves))
    return min(MAX_BATCH_BYTES, window * (1 + 2 * len(curves)))


def create_session(options: Mapping[str, object]) -> DeviceSession:
    """Build a MEDIBUS session from a device's driver options (ValueError on a bad option)."""
    return MedibusSession(options=MedibusOptions.from_mapping(options))


DRIVER = DriverInfo(
    name="medibus",
    protocol=PROTOCOL,
    default_line=SerialSettings(baud=19200, bytesize=8, parity="E", stopbits=1),
    create_session=create_session,
    check_options=option_problems,
    device_kind=DeviceKind.VENTILATOR,
    option_names=frozenset(f.name for f in fields(MedibusOptions)),
)
