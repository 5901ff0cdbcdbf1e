"""HL7 v2 receiver session over MLLP, sans-I/O: one session per TCP connection.

Bytes in -> MLLP blocks -> `hl7.parse` -> measurements (events) and one ACK per block (in
`data_to_send()`). Every block gets an answer, with the original control id where the message has one:
- `AA`: an ORU^R01 that was read (values that could not be mapped are counted, not fed);
- `AE`: the message cannot be read (no MSH, no control id, not HL7, bad encoding);
- `AR`: a readable message this receiver refuses: not ORU^R01, too large, or meant for another bed
  (`expect_bed` / `expect_unit` against PV1-3). MSA-3 and an ERR segment say why.

Only OBX rows with result status (OBX-11) F (final), C (corrected) or R (results entered, not verified:
what IHE PCD-01 devices send for live measurements) are read; others are counted. OBX-8 may carry the
IEEE 11073 measurement status: `demo-data`/`test-data` values are refused (`DataRefused`), `invalid`,
`questionable`, `not-available`, `calibration-ongoing` make the value invalid. A message with processing
id (MSH-11) T or D is training/debugging data: its values are refused too. OBX-14 (else OBR-7) becomes
`device_time` when it carries a UTC offset; a local time without offset is not guessed at.

Routing: messages go to the bed of the device the listener is declared under. There is deliberately no
map from PV1-3 to other beds: the only PV1-3 rule is a check that refuses what is not for this bed.

The session never touches a socket or a clock: `now_s` is passed in; an idle connection (nothing
received for `idle_timeout_s`) turns `link_up` false and the listener closes it.
"""

from __future__ import annotations

import logging
import math
import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime

import hl7

from drivers.base import (
    DataRefused,
    DriverEvent,
    LinkCounters,
    Measurement,
    MeasurementsReceived,
    SerialSettings,
    unknown_option,
)
from drivers.hl7.codes import (
    MDC_NAMES,
    MDC_NUMBERS,
    MINDRAY_CODES,
    UNITS,
    CodeEntry,
    CodeMapError,
    parse_code_map,
)
from drivers.hl7.mllp import DEFAULT_MAX_BLOCK_BYTES, HEAD_KEEP_BYTES, Block, MllpFramer, Oversized, wrap
from drivers.registry import DriverInfo
from drivers.vocabulary import TERMS, DeviceKind

LOGGER = logging.getLogger(__name__)

PROTOCOL = "HL7v2/MLLP"
ACK_APPLICATION = "icu-edge"
ACCEPTED_RESULT_STATUS = frozenset({"F", "C", "R"})
INVALID_FLAGS = frozenset({"invalid", "questionable", "not-available", "calibration-ongoing"})
REFUSED_FLAGS = {"demo-data": "demo_data", "test-data": "test_data"}
REFUSED_PROCESSING_IDS = {"T": "training", "D": "debugging"}
CODE_STYLES = ("auto", "mindray", "pcd01")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_MAX_TEXT = 80
_MAX_LOGGED_REASONS = 1024
LOG_REPEAT_S = 600.0
"""A problem reason is logged again at most this often (its counter still counts every time)."""
_LOGGED_AT_S: dict[str, float] = {}
"""When each problem reason was last logged, shared by all sessions: a sender that opens one
connection per message gets a new session every time, and must not get a log line every time. Shared
by the listener threads; a race costs at most one duplicate line."""

# Counter names (LinkCounters.extra), shown on the device status.
ACK_AA, ACK_AE, ACK_AR = "acks_aa", "acks_ae", "acks_ar"
MALFORMED = "malformed_messages"
UNSUPPORTED = "unsupported_messages"
WRONG_BED = "wrong_bed_messages"
OVERSIZED = "oversized_blocks"
JUNK_BYTES = "junk_bytes"
UNKNOWN_CODES = "unknown_codes"
UNKNOWN_UNITS = "unknown_units"
MISSING_UNITS = "missing_units"
CODE_CONFLICTS = "code_conflicts"
STATUS_REFUSED = "obx_status_refused"
NOT_NUMERIC = "obx_not_numeric"
BAD_NUMBERS = "bad_numbers"
DUPLICATE_KEYS = "duplicate_keys"
REFUSED_VALUES = "refused_values"
TIMES_WITHOUT_ZONE = "times_without_zone"


@dataclass(frozen=True, slots=True, kw_only=True)
class Hl7Options:
    """Driver options of an HL7 listener device (all optional)."""

    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES
    """Largest message accepted; a longer block is refused (AR) and counted."""
    idle_timeout_s: float = 300.0
    """A connection that sends nothing this long is closed (the sender reconnects when it has data)."""
    max_connections: int = 8
    """Senders connected at once; a further connection is closed at once and counted."""
    expect_bed: str = ""
    """When set, only messages whose PV1-3 bed is exactly this are accepted; others get AR."""
    expect_unit: str = ""
    """When set, PV1-3 point of care (Mindray: the unit before the bed) must be exactly this."""
    device_timezone: str = ""
    """IANA zone (`Europe/Berlin`) of senders whose times carry no UTC offset (Mindray): with it, such
    times become `device_time`; without it they are not guessed at (counted as times_without_zone)."""
    code_style: str = "auto"
    """Which built-in code table applies: auto (MDC rows -> PCD-01 table, bare ids -> Mindray), mindray,
    pcd01."""
    codes: str = ""
    """Extra or overriding OBX-3 entries: `CODE=KEY[@UNIT]; ...`."""

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> Hl7Options:
        """Build options from a config mapping; ValueError naming every unknown or invalid option."""
        problems = option_problems(options)
        if problems:
            raise ValueError("; ".join(f"{name}: {text}" for name, text in problems.items()))
        values = {k: float(v) if k == "idle_timeout_s" else v for k, v in options.items()}  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


_LIMITS: dict[str, tuple[float, float]] = {
    "max_block_bytes": (HEAD_KEEP_BYTES, 16 * 1024 * 1024),
    "idle_timeout_s": (1.0, 86_400.0),
    "max_connections": (1, 256),
}


def option_problems(values: Mapping[str, object]) -> dict[str, str]:
    """Return one problem per bad option (name -> what is wrong and what is allowed); empty: usable."""
    known = [f.name for f in fields(Hl7Options)]
    problems: dict[str, str] = {}
    for name, raw in values.items():
        if name not in known:
            problems[name] = unknown_option("hl7", name, known)
        elif name in _LIMITS:
            low, high = _LIMITS[name]
            integral = name != "idle_timeout_s"
            if (
                isinstance(raw, bool)
                or not isinstance(raw, int | float)
                or (integral and not isinstance(raw, int))
            ):
                problems[name] = f"must be {'an integer' if integral else 'a number'}, got {raw!r}"
            elif not math.isfinite(raw) or not low <= raw <= high:
                problems[name] = f"must be between {low:g} and {high:g}, got {raw!r}"
        elif not isinstance(raw, str):
            problems[name] = f"must be a string, got {raw!r}"
        elif name == "code_style" and raw not in CODE_STYLES:
            problems[name] = f"must be one of {', '.join(CODE_STYLES)}, got {raw!r}"
        elif name == "device_timezone" and raw:
            try:
                zoneinfo.ZoneInfo(raw)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                problems[name] = f"must be an IANA time zone such as Europe/Berlin, got {raw!r}"
        elif name == "codes":
            try:
                parse_code_map(raw)
            except CodeMapError as exc:
                problems[name] = str(exc)
        elif name in {"expect_bed", "expect_unit"} and (
            raw != raw.strip() or any(c in raw for c in "|^~\\&")
        ):
            problems[name] = (
                f"must be the plain PV1-3 text (no spaces around, no HL7 separators), got {raw!r}"
            )
    return problems


class _Refusal(Exception):
    """A block that is answered AE/AR instead of being read."""

    def __init__(self, code: str, counter: str, text: str, error_code: str) -> None:
        super().__init__(text)
        self.code = code
        self.counter = counter
        self.text = text
        self.error_code = error_code
        """HL7 table 0357 message error condition code for ERR-3."""


_ERROR_TEXT = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "200": "Unsupported message type",
    "202": "Unsupported processing id",
    "207": "Application internal error",
}

_ACK_CONTROL_DROP = {c: None for c in range(0x20) if c != 0x0D}
"""Control characters an ACK must not carry: fields copied from the message (MSH-3..12, MSA-2) may hold
a stray FS or VT, which would end or restart the sender's MLLP block in the middle of the answer."""

_ACK_TEMPLATE = "MSH|^~\\&|||||||ORU^R01|0|P|2.3.1"


def _field(segment: hl7.Segment, field: int, rep: int = 1, comp: int = 1, sub: int = 1) -> str:
    """Return one (unescaped) leaf of a segment, "" when absent."""
    try:
        value = segment.extract_field(1, field, rep, comp, sub)
    except (IndexError, KeyError, TypeError, ValueError):
        return ""
    return str(value)


def _repetitions(segment: hl7.Segment, field: int) -> int:
    try:
        return max(1, len(segment(field))) if field < len(segment) else 0
    except (IndexError, TypeError):
        return 0


def _first(message: hl7.Message, segment_id: str) -> hl7.Segment | None:
    try:
        return message.segment(segment_id)
    except KeyError:
        return None


def _encoding_problem(text: str) -> str | None:
    """Return why MSH-1/MSH-2 are no usable separators (None when they are).

    The ACK is written with the message's own separators: letters or repeats there would make the
    answer unreadable, so such a message is answered with the standard ones instead.
    """
    if not text.startswith("MSH") or len(text) < 5:
        return None  # not even an MSH: hl7.parse says so
    separator = text[3]
    end = text.find(separator, 4)
    encoding = text[4:end] if end > 0 else text[4:]
    characters = separator + encoding
    if (
        len(encoding) not in (4, 5)
        or len(set(characters)) != len(characters)
        or any(c.isalnum() or c.isspace() for c in characters)
    ):
        return f"MSH-1/MSH-2 separators {characters[:8]!r} are not 5-6 distinct symbols"
    return None


def _device_time(text: str, zone: zoneinfo.ZoneInfo | None) -> tuple[datetime | None, bool]:
    """Return (aware time or None, whether a time was given without a UTC offset nor a zone)."""
    if not text:
        return None, False
    try:
        parsed = hl7.parse_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None, False
    if not isinstance(parsed, datetime):
        return None, False
    if parsed.tzinfo is None:
        if zone is None:
            return None, True
        return parsed.replace(tzinfo=zone), False
    return parsed, False


class Hl7Session:
    """The receiving side of one MLLP connection."""

    protocol = PROTOCOL

    def __init__(self, *, options: Hl7Options = Hl7Options()) -> None:
        self.options = options
        self.counters = LinkCounters()
        for name in (
            ACK_AA,
            ACK_AE,
            ACK_AR,
            MALFORMED,
            UNSUPPORTED,
            WRONG_BED,
            UNKNOWN_CODES,
            REFUSED_VALUES,
        ):
            self.counters.extra[name] = 0
        self._codes = parse_code_map(options.codes)
        self._zone = zoneinfo.ZoneInfo(options.device_timezone) if options.device_timezone else None
        self._framer = MllpFramer(max_block_bytes=options.max_block_bytes)
        self._out = bytearray()
        self._events: list[DriverEvent] = []
        self._last_rx_s: float | None = None
        self._up = True
        self._now_s = 0.0

    # ---- DeviceSession -------------------------------------------------------------------------------
    def reset(self, *, now_s: float) -> None:
        """Start a fresh connection."""
        self._framer = MllpFramer(max_block_bytes=self.options.max_block_bytes)
        self._out.clear()
        self._last_rx_s = now_s
        self._up = True

    def receive(self, data: bytes, *, now_s: float) -> None:
        """Feed bytes from the connection; complete blocks are read and answered."""
        if self._last_rx_s is None:
            self._last_rx_s = now_s
        if not data:
            return
        self._last_rx_s = self._now_s = now_s
        self.counters.bytes_in += len(data)
        framer = self._framer
        before = (framer.counters.junk_bytes, framer.counters.truncated_blocks)
        for block in framer.feed(data):
            self.counters.frames_in += 1
            self._handle(block)
        junk, truncated = framer.counters.junk_bytes, framer.counters.truncated_blocks
        if junk != before[0] or truncated != before[1]:
            self.counters.resyncs += (truncated - before[1]) + (1 if junk != before[0] else 0)
            self._bump(JUNK_BYTES, junk - before[0])

    def poll(self, *, now_s: float) -> None:
        """End an idle connection (no bytes for `idle_timeout_s`)."""
        if self._last_rx_s is None:
            self._last_rx_s = now_s
        if self._up and now_s - self._last_rx_s >= self.options.idle_timeout_s:
            self._up = False
            self.counters.timeouts += 1

    def next_deadline_s(self) -> float:
        """Return when `poll` must run (the idle time-out)."""
        if self._last_rx_s is None or not self._up:
            return math.inf
        return self._last_rx_s + self.options.idle_timeout_s

    def data_to_send(self) -> bytes:
        """Return the pending ACK blocks."""
        out = bytes(self._out)
        self._out.clear()
        self.counters.bytes_out += len(out)
        return out

    def events(self) -> list[DriverEvent]:
        """Return the events since the last call."""
        events, self._events = self._events, []
        return events

    @property
    def link_up(self) -> bool:
        """False once the connection was idle past `idle_timeout_s` (the listener closes it)."""
        return self._up

    @property
    def buffered_bytes(self) -> int:
        """Return the bytes held by the framer (bounded by max_block_bytes + 1)."""
        return self._framer.buffered_bytes

    # ---- one block -----------------------------------------------------------------------------------
    def _handle(self, block: Block | Oversized) -> None:
        source: hl7.Message | None = None
        try:
            if isinstance(block, Oversized):
                self.counters.overflows += 1
                self._bump(OVERSIZED)
                source = self._header_of(block.head)
                raise _Refusal(
                    "AR",
                    OVERSIZED,
                    f"message of {block.size} bytes exceeds max_block_bytes {self.options.max_block_bytes}",
                    "207",
                )
            text = self._decode(block.payload)
            problem = _encoding_problem(text)
            if problem is not None:
                raise _Refusal("AE", MALFORMED, problem, "102")
            try:
                source = hl7.parse(text)
            except Exception as exc:  # hl7.parse raises whatever its splitting meets (IndexError, ...)
                source = self._header_of(block.payload)
                raise _Refusal("AE", MALFORMED, f"not an HL7 message: {type(exc).__name__}", "100") from exc
            try:
                self._read(source)
            except (IndexError, KeyError, TypeError, ValueError, AttributeError) as exc:
                # The library parses lazily: a segment it cannot walk surfaces while reading (the
                # events of a message are only added once all of its rows were read).
                raise _Refusal("AE", MALFORMED, f"unreadable segment: {type(exc).__name__}", "102") from exc
        except _Refusal as refusal:
            self._bump(refusal.counter)
            self._note_once(
                f"{refusal.code}:{refusal.counter}", "HL7 message answered %s: %s", refusal.code, refusal.text
            )
            self._answer(source, refusal.code, text=refusal.text, error_code=refusal.error_code)
            return
        self._answer(source, "AA")

    @staticmethod
    def _decode(payload: bytes) -> str:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            text = payload.decode("latin-1")
        segments = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
        return "\r".join(segment for segment in segments if segment.strip())

    def _header_of(self, raw: bytes) -> hl7.Message | None:
        """Parse only the first segment (MSH) of a block that cannot be read whole."""
        first = self._decode(raw[:HEAD_KEEP_BYTES]).lstrip().split("\r", 1)[0]
        if not first.startswith("MSH") or len(first) < 8 or _encoding_problem(first) is not None:
            return None
        try:
            return hl7.parse(first)
        except Exception:  # noqa: BLE001 - no header: the ACK goes without a control id
            return None

    def _read(self, message: hl7.Message) -> None:
        msh = _first(message, "MSH")
        if msh is None:
            raise _Refusal("AE", MALFORMED, "first segment is not MSH", "100")
        if not _field(msh, 10):
            raise _Refusal("AE", MALFORMED, "MSH-10 (message control id) is empty", "101")
        kind, event = _field(msh, 9, 1, 1), _field(msh, 9, 1, 2)
        if (kind, event) != ("ORU", "R01"):
            raise _Refusal(
                "AR", UNSUPPORTED, f"message type {kind}^{event} not supported (ORU^R01 only)", "200"
            )
        self._check_bed(message)
        processing = _field(msh, 11)
        refused_as = REFUSED_PROCESSING_IDS.get(processing[:1])
        self._read_observations(message, refused_as=refused_as)

    def _check_bed(self, message: hl7.Message) -> None:
        expect_bed, expect_unit = self.options.expect_bed, self.options.expect_unit
        if not expect_bed and not expect_unit:
            return
        pv1 = _first(message, "PV1")
        unit, bed = ("", "") if pv1 is None else self._location(pv1)
        if (expect_bed and bed != expect_bed) or (expect_unit and unit != expect_unit):
            where = "no PV1 segment" if pv1 is None else f"PV1-3 unit {unit!r} bed {bed!r}"
            raise _Refusal(
                "AR", WRONG_BED, f"not for this bed ({where}; expected {expect_unit!r} {expect_bed!r})", "207"
            )

    @staticmethod
    def _location(pv1: hl7.Segment) -> tuple[str, str]:
        """Return (unit, bed) of PV1-3: standard PL point of care and bed, or Mindray's `unit&bed&ip&port`."""
        if _field(pv1, 3, 1, 3, 2):
            return _field(pv1, 3, 1, 3, 1), _field(pv1, 3, 1, 3, 2)
        return _field(pv1, 3, 1, 1), _field(pv1, 3, 1, 3)

    def _read_observations(self, message: hl7.Message, *, refused_as: str | None) -> None:
        obr = _first(message, "OBR")
        default_time = _field(obr, 7) if obr is not None else ""
        groups: dict[datetime | None, list[Measurement]] = {}
        refused: dict[str, int] = {}
        seen: set[str] = set()
        try:
            rows = list(message.segments("OBX"))
        except KeyError:
            rows = []
        for obx in rows:
            outcome = self._read_row(obx)
            if outcome is None:
                continue
            measurement, flag_refusal = outcome
            if measurement.key in seen:
                self._bump(DUPLICATE_KEYS)
                continue
            seen.add(measurement.key)
            reason = flag_refusal or (None if refused_as is None else "test_data")
            if reason is not None:
                refused[reason] = refused.get(reason, 0) + 1
                continue
            when, unzoned = _device_time(_field(obx, 14) or default_time, self._zone)
            if unzoned:
                self._bump(TIMES_WITHOUT_ZONE)
            groups.setdefault(when, []).append(measurement)
        for reason, count in refused.items():
            self._bump(REFUSED_VALUES, count)
            if refused_as is not None and reason == "test_data":
                detail = f"HL7 processing id {refused_as}: its values are refused"
            else:
                detail = f"HL7 sender marks values as {reason.replace('_', ' ')}: they are refused"
            self._events.append(DataRefused(reason=reason, detail=detail, count=count))
        for when, measurements in groups.items():
            self._events.append(MeasurementsReceived(measurements=tuple(measurements), device_time=when))

    def _read_row(self, obx: hl7.Segment) -> tuple[Measurement, str | None] | None:
        """Map one OBX row; None when it carries no value for the twin (counted)."""
        value_type = _field(obx, 2)
        if not value_type:
            return None  # a PCD-01 MDS/VMD/channel header row: structure, no value
        if value_type != "NM":
            self._bump(NOT_NUMERIC)
            return None
        identifier, text, system = _field(obx, 3, 1, 1), _field(obx, 3, 1, 2), _field(obx, 3, 1, 3)
        entry = self._lookup(identifier, text, system)
        if entry is None:
            return None
        status = _field(obx, 11)
        if status not in ACCEPTED_RESULT_STATUS:
            self._bump(STATUS_REFUSED)
            self._note_once(f"status:{status}", "HL7 OBX result status %r not read (F, C, R only)", status)
            return None
        flags = [_field(obx, 8, rep).lower() for rep in range(1, _repetitions(obx, 8) + 1)]
        refusal = next((REFUSED_FLAGS[f] for f in flags if f in REFUSED_FLAGS), None)
        invalid_flag = next((f for f in flags if f in INVALID_FLAGS), None)
        term = TERMS[entry.key]
        device_code = f"{identifier}^{text}" if text else identifier
        raw = _field(obx, 5).strip()
        value: float | None = None
        if raw:
            if not _NUMBER.fullmatch(raw):
                self._bump(BAD_NUMBERS)
                return None
            conversion = self._unit(obx, entry)
            if conversion is None:
                return None
            value = round(float(raw) * conversion[0] + conversion[1], 6)
        valid = value is not None and invalid_flag is None
        measurement = Measurement(
            key=term.key,
            value=value if valid else None,
            unit=term.unit,
            device_code=device_code,
            label=term.label,
            mdc_code=term.mdc,
            valid=valid,
            device_flag=invalid_flag or (None if raw else "no_value"),
        )
        return measurement, refusal

    def _lookup(self, identifier: str, text: str, system: str) -> CodeEntry | None:
        custom = self._codes.get(identifier) or (self._codes.get(text) if text else None)
        if custom is not None:
            return custom
        style = self.options.code_style
        is_mdc = system.upper() == "MDC" or text.startswith("MDC_") or identifier.startswith("MDC_")
        entry: CodeEntry | None = None
        if is_mdc and style != "mindray":
            by_name = MDC_NAMES.get(text) or MDC_NAMES.get(identifier)
            number_name = MDC_NUMBERS.get(identifier)
            by_number = MDC_NAMES.get(number_name) if number_name else None
            if by_name and by_number and by_name.key != by_number.key:
                self._bump(CODE_CONFLICTS)
                self._note_once(
                    f"conflict:{identifier}^{text}",
                    "HL7 OBX-3 %s^%s: code and name disagree",
                    identifier,
                    text,
                )
                return None
            entry = by_name or by_number
        elif not is_mdc and not system and style != "pcd01":
            entry = MINDRAY_CODES.get(identifier)
        if entry is None:
            self._bump(UNKNOWN_CODES)
            self._note_once(
                f"code:{identifier}^{text}^{system}",
                "HL7 OBX-3 %r not in the code map: not fed",
                f"{identifier}^{text}^{system}",
            )
        return entry

    def _unit(self, obx: hl7.Segment, entry: CodeEntry) -> tuple[float, float] | None:
        """Return (factor, offset) into the key's unit, or None (counted) when the unit does not fit."""
        identifier, text = _field(obx, 6, 1, 1), _field(obx, 6, 1, 2)
        if not identifier and not text:
            if entry.native_unit is None:
                self._bump(MISSING_UNITS)
                return None
            identifier = entry.native_unit
        conversion = UNITS.get(identifier) or (UNITS.get(text) if text else None)
        target = TERMS[entry.key].unit
        if conversion is None or conversion.ucum != target:
            self._bump(UNKNOWN_UNITS)
            self._note_once(
                f"unit:{entry.key}:{identifier}^{text}",
                "HL7 unit %r for %s not convertible to %s",
                f"{identifier}^{text}",
                entry.key,
                target,
            )
            return None
        return conversion.factor, conversion.offset

    # ---- answers -------------------------------------------------------------------------------------
    def _answer(self, source: hl7.Message | None, code: str, *, text: str = "", error_code: str = "") -> None:
        ack = _build_ack(source, code)
        if text:
            ack.segment("MSA").assign_field(ack.escape(text[:_MAX_TEXT]), 3)
            err = ack.create_segment([ack.create_field(["ERR"])])
            err.assign_field(error_code, 3, 1, 1)
            err.assign_field(_ERROR_TEXT.get(error_code, ""), 3, 1, 2)
            err.assign_field("HL70357", 3, 1, 3)
            err.assign_field("E", 4)
            err.assign_field(ack.escape(text), 8)
            ack.append(err)
        self._out += wrap(str(ack).translate(_ACK_CONTROL_DROP).encode("utf-8"))
        self.counters.frames_out += 1
        self._bump({"AA": ACK_AA, "AE": ACK_AE, "AR": ACK_AR}[code])

    def _bump(self, name: str, by: int = 1) -> None:
        self.counters.extra[name] = self.counters.extra.get(name, 0) + by

    def _note_once(self, reason: str, message: str, *args: object) -> None:
        """Log a problem once per distinct reason and `LOG_REPEAT_S` (senders repeat their faults)."""
        last_s = _LOGGED_AT_S.get(reason)
        if last_s is not None and self._now_s - last_s < LOG_REPEAT_S:
            return
        if len(_LOGGED_AT_S) >= _MAX_LOGGED_REASONS:
            _LOGGED_AT_S.clear()
        _LOGGED_AT_S[reason] = self._now_s
        LOGGER.warning(message, *args)


def _build_ack(source: hl7.Message | None, code: str) -> hl7.Message:
    """Return an ACK for source (original control id in MSA-2), built by the hl7 library."""
    if source is not None:
        try:
            return source.create_ack(code, application=ACK_APPLICATION, facility="")
        except (IndexError, KeyError, TypeError, ValueError):
            pass
    template = hl7.parse(_ACK_TEMPLATE)
    control_id = ""
    if source is not None:
        msh = _first(source, "MSH")
        control_id = "" if msh is None else _field(msh, 10)
    template.segment("MSH").assign_field(template.escape(control_id), 10)
    ack = template.create_ack(code, application=ACK_APPLICATION, facility="")
    ack.segment("MSH").assign_field("ACK", 9)
    return ack


def create_session(options: Mapping[str, object]) -> Hl7Session:
    """Build the session of one connection from the device's driver options (ValueError when bad)."""
    return Hl7Session(options=Hl7Options.from_mapping(options))


DRIVER = DriverInfo(
    name="hl7",
    protocol=PROTOCOL,
    default_line=SerialSettings(baud=0),
    create_session=create_session,
    check_options=option_problems,
    device_kind=DeviceKind.MONITOR,
    connections=frozenset({"listen"}),
    option_names=frozenset(f.name for f in fields(Hl7Options)),
)
