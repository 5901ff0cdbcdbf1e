"""S/5 computer interface (DRI) client session, sans-I/O: one request, then the monitor pushes records.

There is no handshake. On `reset` the session sends the PHDB request for displayed values every
`interval_s` seconds (and, with `waves = true`, the wave request); the link is up at the first valid
record and down when no record has arrived for `link_timeout_s`; then, and every `link_timeout_s` while
the monitor stays silent, the requests go out again (the monitor may have been restarted and forgotten
them).

Policies worth knowing:
- Only the basic class is requested and decoded; a subrecord of another class, of a type we do not
  read, or a record of another maintype (alarms, network management) is counted, never guessed at.
- "No data" codes (< -32001) become invalid values with the device's flag, never numbers.
- Invasive pressure channels are named by the options `p1`..`p4` (see `drivers.datex.records`).
- Waves: the fixed set `DEFAULT_WAVES` (525 samples/s, inside the monitor's 600 samples/s budget).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from drivers.base import (
    DeviceSession,
    DriverEvent,
    LinkCounters,
    LinkDown,
    LinkUp,
    MeasurementsReceived,
    SerialSettings,
    unknown_option,
)
from drivers.datex.codec import DatexDecoder, Record
from drivers.datex.codes import (
    DEFAULT_WAVES,
    DriLevel,
    MainType,
    PhdbClass,
    PhdbSubrecordType,
    WaveRequestType,
    no_data_flag,
)
from drivers.datex.records import (
    AMBIENT_FIELD,
    BASIC_FIELDS,
    DEFAULT_PRESSURE_SITES,
    PRESSURE_SITES,
    ValueMap,
    device_time,
    parse_basic,
    phdb_request,
    subrecord_class,
    to_measurements,
    to_wave_chunk,
    value_maps,
    wave_request,
    wave_subrecords,
)
from drivers.registry import DriverInfo
from drivers.vocabulary import DeviceKind

LOGGER = logging.getLogger(__name__)

PROTOCOL = "DRI"
INTERVAL_RANGE_S = (1, 60)
"""interval_s: the monitor's tx_interval is whole seconds; rarer than once a minute leaves a bed's
values unrefreshed for longer than any ward would accept."""
MAX_LINK_TIMEOUT_S = 300.0
DEFAULT_INTERVAL_S = 5
"""The protocol notes' displayed-value interval (§3.3 computed vector: 5 s)."""
DEFAULT_LINK_TIMEOUT_S = 15.0
"""Three default intervals without a record: the link is down."""

EXTRA_OTHER_CLASSES = "phdb_other_class_subrecords"
EXTRA_UNKNOWN_SUBRECORDS = "unknown_subrecords"
EXTRA_UNKNOWN_MAINTYPES = "unknown_maintype_records"
EXTRA_ALARM_RECORDS = "alarm_records_ignored"
EXTRA_UNREQUESTED_WAVES = "unrequested_wave_records"
EXTRA_UNMAPPED_WAVES = "unmapped_wave_subrecords"
EXTRA_REQUEST_RETRIES = "request_retries"


def level_name(level: int) -> str:
    """Return a record's DRI level in words (`DRI level 2005`; an unknown level by its number)."""
    try:
        known = DriLevel(level)
    except ValueError:
        return f"DRI level {level:#04x}"
    return "DRI level any" if known is DriLevel.ANY else f"DRI level {known.name.removeprefix('L')}"


def option_problems(values: Mapping[str, object]) -> dict[str, str]:
    """Return one problem per bad option (name -> what is wrong and what is allowed); empty: usable."""
    known = [f.name for f in fields(DatexOptions)]
    problems: dict[str, str] = {}
    for name, raw in values.items():
        if name not in known:
            problems[name] = unknown_option("datex", name, known)
        elif name in DEFAULT_PRESSURE_SITES:
            if raw not in PRESSURE_SITES:
                problems[name] = f"must be one of {', '.join(PRESSURE_SITES)}, got {raw!r}"
        elif name == "waves":
            if not isinstance(raw, bool):
                problems[name] = f"must be true or false, got {raw!r}"
        elif name == "interval_s":
            low, high = INTERVAL_RANGE_S
            if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
                problems[name] = f"must be a whole number of seconds {low}..{high}, got {raw!r}"
        elif isinstance(raw, bool) or not isinstance(raw, int | float):
            problems[name] = f"must be a number of seconds, got {raw!r}"
        elif not math.isfinite(raw) or raw <= 0 or raw > MAX_LINK_TIMEOUT_S:
            problems[name] = f"must be a positive number of seconds up to {MAX_LINK_TIMEOUT_S!r}, got {raw!r}"
    if not problems:
        problems.update(_cross_problems(values))
    return problems


def _cross_problems(values: Mapping[str, object]) -> dict[str, str]:
    interval = values.get("interval_s", DEFAULT_INTERVAL_S)
    timeout = values.get("link_timeout_s", DEFAULT_LINK_TIMEOUT_S)
    problems: dict[str, str] = {}
    if isinstance(interval, int) and isinstance(timeout, int | float) and timeout <= 2 * interval:
        problems["link_timeout_s"] = (
            f"must exceed two transmission intervals (2 x interval_s = {2 * interval} s), got {timeout!r}"
        )
    sites = {c: values.get(c, DEFAULT_PRESSURE_SITES[c]) for c in DEFAULT_PRESSURE_SITES}
    named = [s for s in sites.values() if s != "off"]
    if len(named) != len(set(named)):
        problems["p1"] = f"two pressure channels name the same site: {sites}"
    return problems


@dataclass(frozen=True, slots=True, kw_only=True)
class DatexOptions:
    """Driver options a device config may set."""

    interval_s: int = DEFAULT_INTERVAL_S
    """tx_interval of the displayed-value request: the monitor sends a record this often."""
    link_timeout_s: float = DEFAULT_LINK_TIMEOUT_S
    """No record for this long: the link is down and the requests go out again."""
    waves: bool = False
    """Also request the waves of `DEFAULT_WAVES`."""
    p1: str = DEFAULT_PRESSURE_SITES["p1"]
    """Which pressure the invasive channel carries: abp, pap, cvp, icp or off."""
    p2: str = DEFAULT_PRESSURE_SITES["p2"]
    p3: str = DEFAULT_PRESSURE_SITES["p3"]
    p4: str = DEFAULT_PRESSURE_SITES["p4"]

    def __post_init__(self) -> None:
        problems = option_problems({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise ValueError("; ".join(f"{name}: {text}" for name, text in problems.items()))

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> DatexOptions:
        """Build options from a config mapping; ValueError naming every unknown or invalid option."""
        problems = option_problems(options)
        if problems:
            raise ValueError("; ".join(f"{name}: {text}" for name, text in problems.items()))
        values = dict(options)
        if "link_timeout_s" in values:
            values["link_timeout_s"] = float(values["link_timeout_s"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    @property
    def pressure_sites(self) -> dict[str, str]:
        """Return the site per invasive channel."""
        return {"p1": self.p1, "p2": self.p2, "p3": self.p3, "p4": self.p4}


class DatexSession:
    """The client side of one S/5 DRI link (implements `drivers.base.DeviceSession`)."""

    protocol = PROTOCOL

    def __init__(self, *, options: DatexOptions | None = None) -> None:
        self.options = options if options is not None else DatexOptions()
        self.counters = LinkCounters()
        self._maps: tuple[ValueMap, ...] = value_maps(pressure_sites=self.options.pressure_sites)
        self._decoder = DatexDecoder(counters=self.counters)
        self._out = bytearray()
        self._events: list[DriverEvent] = []
        self._started = False
        self._link_up = False
        self._last_rx_s = 0.0
        self._last_request_s = 0.0
        self._ambient_mmhg: float | None = None

    @property
    def link_up(self) -> bool:
        """True while the monitor keeps sending records."""
        return self._link_up

    def reset(self, *, now_s: float) -> None:
        """Forget the link state and send the requests anew."""
        self._decoder.clear()
        self._out.clear()
        self._link_up = False
        self._started = True
        self._send_requests(now_s=now_s)

    def receive(self, data: bytes, *, now_s: float) -> None:
        """Feed bytes read from the transport."""
        if not self._started:
            self.reset(now_s=now_s)
        self.counters.bytes_in += len(data)
        for record in self._decoder.feed(data):
            self._last_rx_s = now_s
            if not self._link_up:
                self._link_up = True
                self.counters.handshakes += 1
                level = level_name(record.header.dri_level)
                self._events.append(LinkUp(protocol_version=level))
                LOGGER.info("DRI link up (records at %s)", level)
            self._handle(record)

    def poll(self, *, now_s: float) -> None:
        """Run timers: link time-out, and the request retry while the monitor is silent."""
        if not self._started:
            self.reset(now_s=now_s)
            return
        timeout_s = self.options.link_timeout_s
        if self._link_up and now_s >= self._last_rx_s + timeout_s:
            self.counters.timeouts += 1
            self._link_up = False
            reason = f"monitor silent for {now_s - self._last_rx_s:.1f} s"
            LOGGER.warning("DRI link down: %s; requesting again", reason)
            self._events.append(LinkDown(reason=reason))
            self._send_requests(now_s=now_s)
        elif not self._link_up and now_s >= self._last_request_s + timeout_s:
            self._bump(EXTRA_REQUEST_RETRIES)
            self._send_requests(now_s=now_s)

    def next_deadline_s(self) -> float:
        """Return the monotonic time at which `poll` must run next."""
        if not self._started:
            return -math.inf
        since = self._last_rx_s if self._link_up else self._last_request_s
        return since + self.options.link_timeout_s

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

    def _bump(self, name: str) -> None:
        self.counters.extra[name] = self.counters.extra.get(name, 0) + 1

    def _send(self, record: Record) -> None:
        raw = record.to_frame()
        self._out += raw
        self.counters.bytes_out += len(raw)
        self.counters.frames_out += 1

    def _send_requests(self, *, now_s: float) -> None:
        self._last_request_s = now_s
        self._send(phdb_request(interval_s=self.options.interval_s))
        if self.options.waves:
            self._send(wave_request(waves=DEFAULT_WAVES, request=WaveRequestType.START_CONTINUOUS))

    def _handle(self, record: Record) -> None:
        maintype = record.header.maintype
        if maintype == MainType.PHDB:
            self._handle_phdb(record)
        elif maintype == MainType.WAVE:
            if self.options.waves:
                self._handle_waves(record)
            else:
                self._bump(EXTRA_UNREQUESTED_WAVES)
        elif maintype == MainType.ALARM:
            self._bump(EXTRA_ALARM_RECORDS)
        else:
            self._bump(EXTRA_UNKNOWN_MAINTYPES)

    def _handle_phdb(self, record: Record) -> None:
        for index, descriptor in enumerate(record.header.subrecords):
            subrecord = record.subrecord(index)
            if descriptor.type != PhdbSubrecordType.DISPLAYED:
                self._bump(EXTRA_UNKNOWN_SUBRECORDS)
                continue
            kind = subrecord_class(subrecord)
            if kind is None:
                self._bump(EXTRA_UNKNOWN_SUBRECORDS)
                continue
            if kind != PhdbClass.BASIC:
                self._bump(EXTRA_OTHER_CLASSES)
                continue
            values = parse_basic(subrecord)
            ambient_raw = values.raw[AMBIENT_FIELD]
            if no_data_flag(ambient_raw) is None and ambient_raw > 0:
                self._ambient_mmhg = ambient_raw * BASIC_FIELDS[AMBIENT_FIELD].scale
            self._events.append(
                MeasurementsReceived(
                    measurements=to_measurements(values, maps=self._maps),
                    device_time=device_time(values.time_s),
                )
            )

    def _handle_waves(self, record: Record) -> None:
        for wave_id, subrecord in wave_subrecords(record):
            chunk = to_wave_chunk(wave_id, subrecord, ambient_mmhg=self._ambient_mmhg)
            if chunk is None:
                self._bump(EXTRA_UNMAPPED_WAVES)
            elif chunk.samples:
                self._events.append(chunk)


def create_session(options: Mapping[str, object]) -> DeviceSession:
    """Build a DRI session from a device's driver options (ValueError on a bad option)."""
    return DatexSession(options=DatexOptions.from_mapping(options))


DRIVER = DriverInfo(
    name="datex",
    protocol=PROTOCOL,
    default_line=SerialSettings(baud=19200, bytesize=8, parity="E", stopbits=1, rtscts=True),
    create_session=create_session,
    check_options=option_problems,
    device_kind=DeviceKind.MONITOR,
    connections=frozenset({"port"}),
    option_names=frozenset(f.name for f in fields(DatexOptions)),
)
