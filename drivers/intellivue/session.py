"""IntelliVue Data Export client session, sans-I/O: association, MDS create, extended polls, keep-alive.

Driven only by the bytes and the monotonic `now_s` it is given. The sequence (protocol notes §1.1,
§4.3-4.4): send the AARQ (again every `aarq_retry_s` until answered; a refusal waits one retry
period), take the AARE, answer the monitor's MDS Create Event with the 28-byte result, then send an
extended poll of the numerics every `poll_interval_s`, of the real-time waves as well when `waves`
is on, and of the alarm monitor every `alarm_interval_s`. A poll answer may come as a chain of linked
results (RORLS) ended by a plain result (RORS): the chain's values are emitted together when the
final RORS arrives. When nothing went to the monitor for `keepalive_s` a single MDS poll goes out, so
the association never idles towards its time-out. When nothing came back for `link_timeout_s`, the
link is declared down and the association starts over. `release` sends a Release Request.

Serial (MIB/RS232) messages travel in C0/C1 frames with an FCS; on the LAN (udp://) each message is
one datagram without framing, and `data_to_send` returns one message per call. Option `link` says
which; `auto` (default) sends the AARQ framed and unframed by turns until the monitor answers, then
keeps the form the monitor answered in.

Values: numerics map to vocabulary keys through `drivers.intellivue.physio`; a value whose
MeasurementState carries DEMO_DATA (0400) or TEST_DATA (0800) is refused, never a Measurement: a
`DataRefused` event names the reason and the count (`demo_values_refused` / `test_values_refused`).
"""

from __future__ import annotations

import enum
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, fields

from drivers.base import (
    AlarmPriority,
    DataRefused,
    DeviceAlarmReading,
    DeviceAlarmsReceived,
    DeviceSession,
    DriverEvent,
    LinkCounters,
    LinkDown,
    LinkUp,
    Measurement,
    MeasurementsReceived,
    SerialSettings,
    WaveformChunk,
    unknown_option,
)
from drivers.intellivue import messages as m
from drivers.intellivue.framing import DEFAULT_BUFFER_CAP_BYTES, FrameDecoder, encode_frame
from drivers.intellivue.physio import (
    WaveFormat,
    invalid_flag,
    numeric_key,
    refusal_of,
    scale_samples,
    to_measurement,
    wave_signal,
)
from drivers.registry import DriverInfo
from drivers.vocabulary import WAVES, DeviceKind

LOGGER = logging.getLogger(__name__)

PROTOCOL = "IntelliVue"
RELATIVE_TIME_PER_S = 8000
"""RelativeTime ticks per second (1/8 ms)."""

EXTRA_DEMO_REFUSED = "demo_values_refused"
EXTRA_TEST_REFUSED = "test_values_refused"
EXTRA_UNKNOWN_PHYSIO = "unknown_physio_ids"
EXTRA_MALFORMED = "malformed_messages"
EXTRA_REFUSALS = "association_refusals"
EXTRA_REMOTE_ERRORS = "remote_errors"
EXTRA_UNEXPECTED = "unexpected_messages"
EXTRA_KEEPALIVES = "keepalives"
EXTRA_ABORTS_RECEIVED = "aborts_received"
_REFUSED_COUNTERS = {"demo_data": EXTRA_DEMO_REFUSED, "test_data": EXTRA_TEST_REFUSED}
_REFUSED_DETAIL = {
    "demo_data": "monitor in demo mode (state DEMO_DATA): its values are refused",
    "test_data": "monitor sends test data (state TEST_DATA): its values are refused",
}

DEFAULT_KEEPALIVE_S = 3.0
DEFAULT_LINK_TIMEOUT_S = 10.0
MAX_PENDING_POLLS = 16
MAX_CHAIN_PARTS = 64
"""A linked-result chain longer than this is dropped as a whole (a monitor answers in a few parts)."""
LINKS = ("auto", "serial", "lan")
RTSA_PRIORITY: tuple[int, ...] = (0x00020102, 0x00024BB4, 0x00024A14, 0x00024A10, 0x000250AC, 0x00025000)
"""Waves asked for when `waves` is on (TextId labels): ECG II, pleth, ABP, ART, CO2, resp; within the
monitor's limit of 3 ECG + 8 other waves (VSCaptureMP `CreateWaveformSet`)."""
MAX_WAVE_OBJECTS = 64
"""Sample-array formats remembered per object handle (a monitor has a few dozen at most)."""

_SECONDS_LIMITS: dict[str, tuple[float, float]] = {
    "poll_interval_s": (0.25, 60.0),
    "alarm_interval_s": (0.5, 300.0),
    "keepalive_s": (0.5, 30.0),
    "link_timeout_s": (1.0, 120.0),
    "aarq_retry_s": (0.5, 60.0),
}
"""(lowest, highest) of each time option: the monitor takes about one poll per type per second, so a
faster poll only fills its queue; a link time-out of two minutes already hides a dead monitor too long."""
BUFFER_CAP_RANGE = (512, 16 * 1024 * 1024)


def option_problems(values: Mapping[str, object]) -> dict[str, str]:
    """Return one problem per bad option (name -> what is wrong and what is allowed); empty: usable."""
    known = [f.name for f in fields(IntellivueOptions)]
    problems: dict[str, str] = {}
    for name, raw in values.items():
        if name not in known:
            problems[name] = unknown_option("intellivue", name, known)
        elif name in ("waves", "alarms"):
            if not isinstance(raw, bool):
                problems[name] = f"must be true or false, got {raw!r}"
        elif name == "link":
            if raw not in LINKS:
                problems[name] = f"must be one of {', '.join(LINKS)}, got {raw!r}"
        elif isinstance(raw, bool) or not isinstance(raw, int | float):
            problems[name] = f"must be a number, got {raw!r}"
        elif name == "buffer_cap_bytes":
            low, high = BUFFER_CAP_RANGE
            if not isinstance(raw, int) or not low <= raw <= high:
                problems[name] = f"must be an integer number of bytes from {low} to {high}, got {raw!r}"
        elif not math.isfinite(raw):
            problems[name] = f"must be a finite number of seconds, got {raw!r}"
        else:
            low_s, high_s = _SECONDS_LIMITS[name]
            if not low_s <= raw <= high_s:
                problems[name] = f"must be from {low_s!r} to {high_s!r} s, got {raw!r}"
    if not problems:
        keepalive = values.get("keepalive_s", DEFAULT_KEEPALIVE_S)
        timeout = values.get("link_timeout_s", DEFAULT_LINK_TIMEOUT_S)
        if isinstance(keepalive, int | float) and isinstance(timeout, int | float) and keepalive >= timeout:
            problems["keepalive_s"] = f"must stay below link_timeout_s ({timeout!r} s), got {keepalive!r}"
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class IntellivueOptions:
    """Driver options a device config may set; times in seconds of the monotonic clock."""

    poll_interval_s: float = 1.0
    """Numerics (and waves) are polled this often."""
    alarm_interval_s: float = 5.0
    keepalive_s: float = DEFAULT_KEEPALIVE_S
    link_timeout_s: float = DEFAULT_LINK_TIMEOUT_S
    aarq_retry_s: float = 2.0
    waves: bool = False
    alarms: bool = True
    link: str = "auto"
    """`serial` (C0/C1 frames), `lan` (one message per datagram) or `auto` (find out)."""
    buffer_cap_bytes: int = DEFAULT_BUFFER_CAP_BYTES

    def __post_init__(self) -> None:
        problems = option_problems({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise ValueError("; ".join(f"{name}: {text}" for name, text in problems.items()))

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> IntellivueOptions:
        """Build options from a config mapping; ValueError naming every unknown or invalid option."""
        problems = option_problems(options)
        if problems:
            raise ValueError("; ".join(f"{name}: {text}" for name, text in problems.items()))
        values: dict[str, object] = {}
        for name, raw in options.items():
            values[name] = float(raw) if name.endswith("_s") else raw  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


class _State(enum.Enum):
    NEW = enum.auto()
    ASSOCIATING = enum.auto()
    """AARQ sent, waiting for the AARE."""
    WAIT_CREATE = enum.auto()
    """Associated, waiting for the MDS Create Event."""
    RUNNING = enum.auto()
    RELEASING = enum.auto()
    """Release Request sent; the link is quiet from now on."""


@dataclass(slots=True)
class _Pending:
    object_class: int
    sent_s: float
    parts: int = 0
    measurements: list[Measurement] | None = None


_ALARM_PRIORITY = (
    (0x0400 | 0x0004, AlarmPriority.HIGH),
    (0x0200 | 0x0002, AlarmPriority.MEDIUM),
    (0x0100 | 0x0001, AlarmPriority.LOW),
)


class IntellivueSession:
    """The client (appliance) side of one IntelliVue Data Export link (implements `DeviceSession`)."""

    protocol = PROTOCOL

    def __init__(self, *, options: IntellivueOptions | None = None) -> None:
        self.options = options if options is not None else IntellivueOptions()
        self.counters = LinkCounters()
        self.model: str | None = None
        self._decoder = FrameDecoder(counters=self.counters, cap_bytes=self.options.buffer_cap_bytes)
        self._link: str | None = None if self.options.link == "auto" else self.options.link
        self._next_guess = "serial"
        self._out: list[bytes] = []
        self._events: list[DriverEvent] = []
        self._state = _State.NEW
        self._link_up = False
        self._last_tx_s = 0.0
        self._last_rx_s = 0.0
        self._aarq_due_s = 0.0
        self._next_poll_s = 0.0
        self._next_alarm_s = 0.0
        self._invoke_id = 0
        self._poll_number = 0
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._wave_formats: dict[int, WaveFormat] = {}
        self._warned: set[str] = set()

    @property
    def link_up(self) -> bool:
        """True while associated and the monitor answers."""
        return self._link_up

    @property
    def link(self) -> str | None:
        """`serial` or `lan` once known (None while `auto` has not heard the monitor yet)."""
        return self._link

    # ---- DeviceSession ----------------------------------------------------------------------------

    def reset(self, *, now_s: float) -> None:
        """Forget the link state and begin the association anew."""
        self._decoder.clear()
        self._out.clear()
        self._link_up = False
        self._start_association(now_s=now_s)

    def receive(self, data: bytes, *, now_s: float) -> None:
        """Feed bytes read from the transport (on the LAN: exactly one datagram)."""
        if self._state is _State.NEW:
            self.reset(now_s=now_s)
        self.counters.bytes_in += len(data)
        if self._link is None:
            incoming = self._detect_link(data)
        elif self._link == "lan":
            if not data:
                return
            self.counters.frames_in += 1
            incoming = [bytes(data)]
        else:
            incoming = self._decoder.feed(data)
        for message in incoming:
            self._last_rx_s = now_s
            try:
                self._handle(message, now_s=now_s)
            except m.MessageError as exc:
                self._bump(EXTRA_MALFORMED)
                LOGGER.debug("IntelliVue message dropped: %s", exc)

    def _detect_link(self, data: bytes) -> list[bytes]:
        """`auto`: decide on serial at the first valid frame, on LAN at the first association answer.

        Anything else (line noise, a partial frame) decides nothing, so a noisy serial line is never
        taken for a LAN and the other way round.
        """
        frames = self._decoder.feed(data)
        if frames:
            self._link = "serial"
        elif m.spdu_of(data) in (m.Spdu.AC, m.Spdu.RF, m.Spdu.AB) and data[:1] != b"\xc0":
            self._decoder.clear()
            self.counters.frames_in += 1
            self._link = "lan"
            frames = [bytes(data)]
        else:
            return []
        LOGGER.info("IntelliVue monitor answers on a %s link", self._link)
        return frames

    def poll(self, *, now_s: float) -> None:
        """Run timers: AARQ retry, link time-out, poll cycles, keep-alive."""
        if self._state is _State.NEW:
            self.reset(now_s=now_s)
            return
        opts = self.options
        if self._state is _State.RELEASING:
            return
        if self._state is _State.ASSOCIATING:
            if now_s >= self._aarq_due_s:
                self._send_aarq(now_s=now_s)
            return
        if now_s >= self._last_rx_s + opts.link_timeout_s:
            self.counters.timeouts += 1
            self._link_lost(reason=f"monitor silent for {now_s - self._last_rx_s:.1f} s", now_s=now_s)
            return
        if self._state is not _State.RUNNING:
            return
        if now_s >= self._next_poll_s:
            self._next_poll_s = now_s + opts.poll_interval_s
            self._send_poll(m.ObjectClass.NUMERIC, now_s=now_s)
            if opts.waves:
                self._send_poll(m.ObjectClass.SAMPLE_ARRAY_RT, now_s=now_s)
        if opts.alarms and now_s >= self._next_alarm_s:
            self._next_alarm_s = now_s + opts.alarm_interval_s
            self._send_poll(m.ObjectClass.ALARM_MONITOR, now_s=now_s)
        if now_s >= self._last_tx_s + opts.keepalive_s:
            self._bump(EXTRA_KEEPALIVES)
            self._send_poll(m.ObjectClass.MDS, now_s=now_s, extended=False)

    def next_deadline_s(self) -> float:
        """Return the monotonic time at which `poll` must run next."""
        opts = self.options
        if self._state is _State.NEW:
            return -math.inf
        if self._state is _State.RELEASING:
            return math.inf
        if self._state is _State.ASSOCIATING:
            return self._aarq_due_s
        deadlines = [self._last_rx_s + opts.link_timeout_s]
        if self._state is _State.RUNNING:
            deadlines += [self._next_poll_s, self._last_tx_s + opts.keepalive_s]
            if opts.alarms:
                deadlines.append(self._next_alarm_s)
        return min(deadlines)

    def data_to_send(self) -> bytes:
        """Return (and forget) what to write: all frames on serial, one datagram per call on the LAN."""
        if not self._out:
            return b""
        if self._link == "lan":
            return self._out.pop(0)
        out = b"".join(self._out)
        self._out.clear()
        return out

    def events(self) -> list[DriverEvent]:
        """Return (and forget) the events produced since the last call."""
        out = self._events
        self._events = []
        return out

    def release(self, *, now_s: float) -> None:
        """Send a Release Request (graceful end of the association) and stay quiet afterwards."""
        if self._state in (_State.WAIT_CREATE, _State.RUNNING):
            self._send_message(m.RELEASE_REQUEST, now_s=now_s)
        if self._link_up:
            self._link_up = False
            self._events.append(LinkDown(reason="association released"))
        self._state = _State.RELEASING

    # ---- sending ----------------------------------------------------------------------------------

    def _bump(self, name: str, by: int = 1) -> None:
        self.counters.extra[name] = self.counters.extra.get(name, 0) + by

    def _send_message(self, message: bytes, *, now_s: float, link: str | None = None) -> None:
        form = link or self._link or "serial"
        raw = encode_frame(message) if form == "serial" else message
        self._out.append(raw)
        self.counters.bytes_out += len(raw)
        self.counters.frames_out += 1
        self._last_tx_s = now_s

    def _next_invoke(self) -> int:
        self._invoke_id = (self._invoke_id + 1) & 0xFFFF
        return self._invoke_id

    def _send_aarq(self, *, now_s: float) -> None:
        form = self._link
        if form is None:
            form = self._next_guess
            self._next_guess = "lan" if form == "serial" else "serial"
        self._send_message(m.build_aarq(_client_profile(self.options)), now_s=now_s, link=form)
        self._aarq_due_s = now_s + self.options.aarq_retry_s

    def _send_poll(self, object_class: int, *, now_s: float, extended: bool = True) -> None:
        invoke = self._next_invoke()
        self._poll_number = (self._poll_number + 1) & 0xFFFF
        period = round(self.options.poll_interval_s * RELATIVE_TIME_PER_S) if extended else None
        request = m.PollRequest(
            extended=extended, poll_number=self._poll_number, object_class=object_class, period=period
        )
        argument = m.encode_poll_request(request)
        self._send_message(
            m.encode_roiv(invoke_id=invoke, command=m.Command.CONFIRMED_ACTION, argument=argument),
            now_s=now_s,
        )
        self._pending[invoke] = _Pending(object_class=object_class, sent_s=now_s)
        while len(self._pending) > MAX_PENDING_POLLS:
            self._pending.popitem(last=False)

    # ---- state changes ----------------------------------------------------------------------------

    def _start_association(self, *, now_s: float) -> None:
        self._state = _State.ASSOCIATING
        self._pending.clear()
        self._wave_formats.clear()
        self._last_rx_s = now_s
        self._send_aarq(now_s=now_s)

    def _warn_once(self, reason: str, message: str, *args: object) -> None:
        """Log a problem once per distinct reason until the link comes up again."""
        if reason not in self._warned:
            self._warned.add(reason)
            LOGGER.warning(message, *args)
        else:
            LOGGER.debug(message, *args)

    def _link_lost(self, *, reason: str, now_s: float) -> None:
        self._warn_once(reason.split(" for ")[0], "IntelliVue link down: %s", reason)
        if self._link_up:
            self._link_up = False
            self._events.append(LinkDown(reason=reason))
        if self.options.link == "auto" and self.counters.handshakes == 0:
            self._link = None
        self._start_association(now_s=now_s)

    # ---- receiving --------------------------------------------------------------------------------

    def _handle(self, message: bytes, *, now_s: float) -> None:
        spdu = m.spdu_of(message)
        if spdu is m.Spdu.DATA:
            self._handle_data(m.decode_data(message), now_s=now_s)
        elif spdu is m.Spdu.AC:
            m.check_association(message)
            if self._state is _State.ASSOCIATING:
                self.counters.handshakes += 1
                self._state = _State.WAIT_CREATE
                LOGGER.info("IntelliVue association accepted; waiting for the MDS create event")
            else:
                self._bump(EXTRA_UNEXPECTED)
        elif spdu is m.Spdu.RF:
            self._bump(EXTRA_REFUSALS)
            self._warn_once(
                "refused",
                "IntelliVue monitor refused the association; asking again every %.1f s",
                self.options.aarq_retry_s,
            )
            if self._state is _State.ASSOCIATING:
                self._aarq_due_s = now_s + self.options.aarq_retry_s
        elif spdu is m.Spdu.FN:
            self._send_message(m.RELEASE_RESPONSE, now_s=now_s)
            self._link_lost(reason="monitor released the association", now_s=now_s)
        elif spdu is m.Spdu.AB:
            self._bump(EXTRA_ABORTS_RECEIVED)
            if self._state is not _State.ASSOCIATING:
                self._link_lost(reason="monitor aborted the association", now_s=now_s)
        elif spdu is m.Spdu.DN:
            return
        else:
            self.counters.unknown_commands += 1

    def _handle_data(self, apdu: m.DataApdu, *, now_s: float) -> None:
        if apdu.ro_type is m.RoType.ROIV:
            if apdu.command in (m.Command.CONFIRMED_EVENT_REPORT, m.Command.EVENT_REPORT):
                self._handle_event(apdu, now_s=now_s)
            else:
                self.counters.unknown_commands += 1
            return
        if apdu.ro_type is m.RoType.ROER:
            self._bump(EXTRA_REMOTE_ERRORS)
            LOGGER.info("IntelliVue monitor answered invoke %d with error %d", apdu.invoke_id, apdu.command)
            self._pending.pop(apdu.invoke_id, None)
            return
        if apdu.command != m.Command.CONFIRMED_ACTION:
            return
        pending = self._pending.get(apdu.invoke_id)
        if pending is None or self._state is not _State.RUNNING:
            self._bump(EXTRA_UNEXPECTED)
            return
        reply = m.decode_poll_result(apdu.payload)
        pending.parts += 1
        if pending.parts > MAX_CHAIN_PARTS:
            self._pending.pop(apdu.invoke_id, None)
            self._bump(EXTRA_MALFORMED)
            return
        final = apdu.ro_type is m.RoType.RORS
        if final:
            self._pending.pop(apdu.invoke_id, None)
        if reply.object_class == m.ObjectClass.NUMERIC:
            self._numerics(reply, pending=pending, final=final)
        elif reply.object_class == m.ObjectClass.SAMPLE_ARRAY_RT:
            self._waves(reply)
        elif reply.object_class == m.ObjectClass.ALARM_MONITOR:
            self._alarms(reply, pending=pending, final=final)

    def _handle_event(self, apdu: m.DataApdu, *, now_s: float) -> None:
        """Answer every confirmed event report (a monitor repeats an unanswered one); act on MDS create."""
        report = m.decode_event_report(apdu.payload)
        if apdu.command == m.Command.CONFIRMED_EVENT_REPORT:
            result = m.encode_event_result(
                invoke_id=apdu.invoke_id, event_time=report.event_time, event_type=report.event_type
            )
            self._send_message(result, now_s=now_s)
        if report.event_type != m.NOM_NOTI_MDS_CREAT:
            self.counters.unknown_commands += 1
            return
        model = None
        try:
            for attribute_id, value in m.decode_mds_create_info(report.info):
                if attribute_id == m.Attr.ID_MODEL:
                    model = m.decode_system_model(value) or None
        except m.MessageError as exc:
            self._bump(EXTRA_MALFORMED)
            LOGGER.info("IntelliVue MDS create event without a readable model: %s", exc)
        if self._state is _State.WAIT_CREATE:
            self.model = model
            self._state = _State.RUNNING
            self._link_up = True
            self._warned.clear()
            self._events.append(LinkUp(model=model, protocol_version="Data Export MDDL 1"))
            LOGGER.info("IntelliVue link up: %s", model)
            self._next_poll_s = now_s
            self._next_alarm_s = now_s
            if self.options.waves:
                self._send_wave_priority(now_s=now_s)
            self.poll(now_s=now_s)

    def _send_wave_priority(self, *, now_s: float) -> None:
        """Ask for our waves: a confirmed SET of the RTSA priority list (VSCaptureMP does the same).

        A monitor that refuses (ROER) keeps its own list; its waves are still polled and mapped.
        """
        value = m.encode_text_id_list(RTSA_PRIORITY)
        argument = m.encode_set_argument([(m.Attr.POLL_RTSA_PRIO_LIST, value)])
        message = m.encode_roiv(
            invoke_id=self._next_invoke(), command=m.Command.CONFIRMED_SET, argument=argument
        )
        self._send_message(message, now_s=now_s)

    # ---- poll results -----------------------------------------------------------------------------

    def _numerics(self, reply: m.PollReply, *, pending: _Pending, final: bool) -> None:
        if pending.measurements is None:
            pending.measurements = []
        refused: dict[str, int] = {}
        for observation in reply.observations:
            for attribute_id, value in observation.attributes:
                if attribute_id == m.Attr.NU_VAL_OBS:
                    values = [m.decode_nu_obs(value)]
                elif attribute_id == m.Attr.NU_CMPD_VAL_OBS:
                    values = m.decode_nu_compound(value)
                else:
                    continue
                for obs in values:
                    self._numeric(obs, into=pending.measurements, refused=refused)
        self._refuse(refused)
        if final and pending.measurements:
            self._events.append(MeasurementsReceived(measurements=tuple(pending.measurements)))

    def _numeric(self, obs: m.NuObsValue, *, into: list[Measurement], refused: dict[str, int]) -> None:
        reason = refusal_of(obs.state)
        if reason is not None:
            refused[reason] = refused.get(reason, 0) + 1
            return
        key = numeric_key(obs.physio_id)
        if key is None:
            self._bump(EXTRA_UNKNOWN_PHYSIO)
            LOGGER.debug("IntelliVue numeric with unmapped physio id %#06x", obs.physio_id)
            return
        into.append(to_measurement(obs, key=key))

    def _refuse(self, refused: Mapping[str, int]) -> None:
        for reason, count in refused.items():
            self._bump(_REFUSED_COUNTERS[reason], count)
            self._events.append(DataRefused(reason=reason, detail=_REFUSED_DETAIL[reason], count=count))

    def _waves(self, reply: m.PollReply) -> None:
        refused: dict[str, int] = {}
        for observation in reply.observations:
            attributes = dict(observation.attributes)
            known = self._wave_formats.get(observation.handle)
            spec = known.spec if known else None
            scale = known.scale if known else None
            period = known.sample_period_s if known else None
            if m.Attr.SA_SPECN in attributes:
                spec = m.decode_sa_spec(attributes[m.Attr.SA_SPECN])
            if m.Attr.SCALE_SPECN_I16 in attributes:
                scale = m.decode_scale_spec(attributes[m.Attr.SCALE_SPECN_I16])
            if m.Attr.TIME_PD_SAMP in attributes:
                period = m.decode_u32(attributes[m.Attr.TIME_PD_SAMP]) / RELATIVE_TIME_PER_S
            wave = None
            if spec is not None and period is not None:
                wave = WaveFormat(spec=spec, scale=scale, sample_period_s=period)
                if (
                    len(self._wave_formats) >= MAX_WAVE_OBJECTS
                    and observation.handle not in self._wave_formats
                ):
                    self._wave_formats.clear()
                self._wave_formats[observation.handle] = wave
            arrays: list[m.SaObsValue] = []
            if m.Attr.SA_VAL_OBS in attributes:
                arrays.append(m.decode_sa_obs(attributes[m.Attr.SA_VAL_OBS]))
            if m.Attr.SA_CMPD_VAL_OBS in attributes:
                arrays += m.decode_sa_compound(attributes[m.Attr.SA_CMPD_VAL_OBS])
            for array in arrays:
                self._wave(array, wave=wave, refused=refused)
        self._refuse(refused)

    def _wave(self, array: m.SaObsValue, *, wave: WaveFormat | None, refused: dict[str, int]) -> None:
        reason = refusal_of(array.state)
        if reason is not None:
            refused[reason] = refused.get(reason, 0) + 1
            return
        signal = wave_signal(array.physio_id)
        if signal is None or wave is None or wave.sample_period_s <= 0:
            self._bump(EXTRA_UNKNOWN_PHYSIO)
            return
        try:
            samples = scale_samples(array.samples, wave=wave)
        except ValueError as exc:
            raise m.MessageError(str(exc)) from exc
        if invalid_flag(array.state) is not None:
            samples = tuple(None for _ in samples)
        vocabulary = WAVES[signal]
        self._events.append(
            WaveformChunk(
                signal=signal,
                unit=vocabulary.unit,
                sample_period_s=wave.sample_period_s,
                samples=samples,
                device_code=f"{array.physio_id:04X}",
                label=vocabulary.label,
            )
        )

    def _alarms(self, reply: m.PollReply, *, pending: _Pending, final: bool) -> None:
        readings: list[DeviceAlarmReading] = []
        for observation in reply.observations:
            for attribute_id, value in observation.attributes:
                if attribute_id in (m.Attr.AL_MON_P_AL_LIST, m.Attr.AL_MON_T_AL_LIST):
                    for alarm in m.decode_alarm_list(value):
                        readings.append(
                            DeviceAlarmReading(
                                code=f"{alarm.source:04X}-{alarm.code:04X}",
                                priority=_priority(alarm.alert_type),
                                text=alarm.text,
                            )
                        )
        if final:
            self._events.append(DeviceAlarmsReceived(alarms=tuple(readings)))


def _priority(alert_type: int) -> AlarmPriority:
    for bits, priority in _ALARM_PRIORITY:
        if alert_type & bits:
            return priority
    return AlarmPriority.LOW


def _client_profile(options: IntellivueOptions) -> m.PollProfile:
    """The poll profile we offer: our poll period and the serial MTU VSCapture's wave AARQ uses."""
    return m.PollProfile(
        min_poll_period=round(min(options.poll_interval_s, 0.5) * RELATIVE_TIME_PER_S),
        max_mtu_rx=1456,
        max_mtu_tx=1456,
        max_bw_tx=0xFFFFFFFF,
    )


def create_session(options: Mapping[str, object]) -> DeviceSession:
    """Build an IntelliVue session from a device's driver options (ValueError on a bad option)."""
    return IntellivueSession(options=IntellivueOptions.from_mapping(options))


DRIVER = DriverInfo(
    name="intellivue",
    protocol=PROTOCOL,
    default_line=SerialSettings(baud=115200, bytesize=8, parity="N", stopbits=1),
    create_session=create_session,
    check_options=option_problems,
    device_kind=DeviceKind.MONITOR,
    connections=frozenset({"port", "address"}),
    option_names=frozenset(f.name for f in fields(IntellivueOptions)),
)
