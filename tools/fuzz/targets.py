"""Fuzz targets: every codec and every parser of input that comes from outside the process.

A target takes one input (bytes), drives the code under test with it and returns a small hashable
signature of what happened (used by the mutation engine to keep inputs that reach new behaviour). It
raises only on a defect: an exception the code's contract does not allow, or a broken invariant
(`FuzzInvariantError`). Expected rejections (ValueError from a frame parser, ConfigError from the
config loader) are caught here, because they are the documented answer to bad input.

Inputs that describe a conversation (session, simulator, ward view) are split into records by a small
framing documented on each target, so a mutation can move time, cut a frame between reads, or change
one message without touching the others.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import hl7
import numpy as np
from rich.console import Console

from drivers.base import (
    DataRefused,
    DeviceAlarmsReceived,
    LinkCounters,
    LinkDown,
    LinkUp,
    MeasurementsReceived,
    SettingsReceived,
    TextMessagesReceived,
    WaveformChunk,
)
from drivers.datex.codec import DatexDecoder
from drivers.datex.codec import Record as DatexRecord
from drivers.datex.session import DatexOptions, DatexSession
from drivers.datex.simulator import MonitorSimulator
from drivers.hl7.mllp import Block, MllpFramer, Oversized
from drivers.hl7.mllp import wrap as mllp_wrap
from drivers.hl7.session import Hl7Options, Hl7Session
from drivers.hl7.simulator import OruBuilder
from drivers.intellivue import messages as iv
from drivers.intellivue.framing import FrameDecoder as IvFrameDecoder
from drivers.intellivue.framing import encode_frame as iv_encode_frame
from drivers.intellivue.session import IntellivueOptions, IntellivueSession
from drivers.intellivue.simulator import MonitorSimulator as IvMonitorSimulator
from drivers.medibus.codec import (
    Command,
    ControlByte,
    MedibusDecoder,
    Response,
)
from drivers.medibus.codes import CommandCode
from drivers.medibus.device import (
    parse_alarms,
    parse_identification,
    parse_measurements,
    parse_settings,
    parse_text_messages,
)
from drivers.medibus.realtime import (
    MAX_CYCLE_BYTES,
    CurveConfig,
    RealtimeDecoder,
    encode_cycle,
    parse_configure_args,
    parse_realtime_config,
    realtime_part,
)
from drivers.medibus.session import MedibusOptions, MedibusSession
from drivers.medibus.simulator import (
    SIM_CURVES,
    SIM_IDENTIFICATION,
    SimAlarm,
    SteadyScenario,
    VentilatorSimulator,
    alarms_payload,
    measured_payload,
    settings_payload,
    texts_payload,
)
from drivers.scenario import PATIENTS, SteadyPatient
from drivers.vocabulary import TERMS
from edge.config import ConfigError, load_config
from tools.watch import WardState, render, render_plain
from tools.watch.plain import ChangeLog
from tools.watch.tiles import render_ward

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
"""Committed seed inputs, one folder per target (text seeds that are easier to keep as files)."""

_TIME_STEP_S = 0.05
_START_S = 1000.0


class FuzzInvariantError(AssertionError):
    """The code under test returned, but what it returned breaks a promise it makes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One fuzz target: the function, its seeds and the tokens a mutation may insert."""

    name: str
    run: Callable[[bytes], object]
    seeds: Callable[[], list[bytes]]
    description: str
    tokens: tuple[bytes, ...] = field(default=())
    max_len: int = 4096
    """Longest input the engine builds (longer inputs only slow the run down)."""


# ---- framing helpers -----------------------------------------------------------------------------


def _timed_chunks(data: bytes) -> Iterator[tuple[float, bytes]]:
    """Split `data` into (time step, chunk): per record one byte of time (x 50 ms), one length byte."""
    pos = 0
    while pos < len(data):
        step_s = (data[pos] & 0x3F) * _TIME_STEP_S
        length = data[pos + 1] if pos + 1 < len(data) else 0
        chunk = data[pos + 2 : pos + 2 + length]
        pos += 2 + length
        yield step_s, chunk


def timed_chunks_bytes(chunks: list[tuple[float, bytes]]) -> bytes:
    """Encode (time step, chunk) records in the framing `_timed_chunks` reads (for seeds and tests)."""
    out = bytearray()
    for step_s, chunk in chunks:
        for start in range(0, max(len(chunk), 1), 255):
            piece = chunk[start : start + 255]
            out += bytes((min(round(step_s / _TIME_STEP_S), 0x3F), len(piece))) + piece
            step_s = 0.0
    return bytes(out)


def _check_host_output(raw: bytes, *, who: str) -> int:
    """Everything a side of the link writes must decode as clean frames; return how many."""
    counters = LinkCounters()
    frames = MedibusDecoder(counters=counters, cap_bytes=1 << 20).feed(raw)
    if counters.checksum_errors or counters.resyncs or counters.overflows:
        raise FuzzInvariantError(f"{who} wrote bytes that are not clean MEDIBUS frames: {raw!r}")
    return len(frames)


def _conversation(*, steps: int, device_to_host: bool, waves: bool = False) -> bytes:
    """Record one side of an in-memory host <-> simulator conversation as a timed-chunk input."""
    now_s = _START_S
    host = MedibusSession(options=MedibusOptions(waves=waves))
    device = VentilatorSimulator(scenario=SteadyScenario(), start_s=now_s, device_command_interval_s=2.0)
    records: list[tuple[float, bytes]] = []
    for _ in range(steps):
        now_s += 0.25
        host.poll(now_s=now_s)
        to_device = host.data_to_send()
        device.receive(to_device, now_s=now_s)
        device.poll(now_s=now_s)
        to_host = device.data_to_send()
        host.receive(to_host, now_s=now_s)
        records.append((0.25, to_host if device_to_host else to_device))
    return timed_chunks_bytes(records)


def _corpus(name: str) -> list[bytes]:
    folder = CORPUS_DIR / name
    return [path.read_bytes() for path in sorted(folder.iterdir())] if folder.is_dir() else []


# ---- codec ---------------------------------------------------------------------------------------

_CODEC_CAP_BYTES = 96
"""A small receive cap, so that short inputs reach the overflow path too."""


def run_codec(data: bytes) -> object:
    """Decode `data` whole and split at a point chosen by its first byte: same frames both ways.

    Every decoded frame must re-encode to bytes that decode to the same frame; parsing `data` as one
    frame raises only ValueError.
    """
    whole_decoder = MedibusDecoder(cap_bytes=_CODEC_CAP_BYTES)
    whole = whole_decoder.feed(data)
    split = data[0] % (len(data) + 1) if data else 0
    split_decoder = MedibusDecoder(cap_bytes=_CODEC_CAP_BYTES)
    parts = split_decoder.feed(data[:split]) + split_decoder.feed(data[split:])
    if parts != whole:
        raise FuzzInvariantError(f"decoding depends on how the bytes were read: {whole!r} vs {parts!r}")
    if whole_decoder.buffered_bytes > _CODEC_CAP_BYTES:
        raise FuzzInvariantError(f"decoder holds {whole_decoder.buffered_bytes} bytes over its cap")
    for frame in whole:
        again = MedibusDecoder().feed(frame.to_bytes())
        if again != [frame]:
            raise FuzzInvariantError(f"{frame!r} does not survive a round trip: {again!r}")
    kinds = 0
    for parser in (Command.from_bytes, Response.from_bytes):
        try:
            parser(data)
            kinds += 1
        except ValueError:
            pass
    counters = whole_decoder.counters
    return (len(whole), kinds, counters.resyncs > 0, counters.checksum_errors > 0, counters.overflows > 0)


def _codec_seeds() -> list[bytes]:
    return [
        Command(code=CommandCode.ICC).to_bytes(),
        Response(code=CommandCode.DEVICE_ID, data=b"SIM0'SimVent XL'01.00:06.00").to_bytes(),
        _conversation(steps=12, device_to_host=True)[2:],
    ]


# ---- session -------------------------------------------------------------------------------------


_SESSION_EVENTS = (
    LinkUp,
    LinkDown,
    MeasurementsReceived,
    SettingsReceived,
    DeviceAlarmsReceived,
    TextMessagesReceived,
)


def run_session(data: bytes) -> object:
    """Feed a host session timed chunks of device bytes (see `_timed_chunks`), polling between them.

    The host must only ever write clean frames, keep its receive buffer under the cap, report only
    finite numbers, and name a deadline that is a number.
    """
    return _run_session(data, session=MedibusSession())


def run_session_waves(data: bytes) -> object:
    """`run_session` with MEDIBUS.X curves on: also every wave sample is None or inside its curve's range."""
    return _run_session(data, session=MedibusSession(options=MedibusOptions(waves=True)))


def _check_chunk(chunk: WaveformChunk, configured: set[CurveConfig]) -> None:
    """A chunk belongs to a curve the session configured during the run and stays inside its range."""
    curves = [c for c in configured if c.code == chunk.device_code]
    if not curves:
        raise FuzzInvariantError(f"wave chunk of a curve that was never configured: {chunk!r}")
    for value in chunk.samples:
        if value is not None and not any(c.min_value <= value <= c.max_value for c in curves):
            raise FuzzInvariantError(f"wave sample {value!r} outside {curves!r}")


def _run_session(data: bytes, *, session: MedibusSession) -> object:
    now_s = _START_S
    session.poll(now_s=now_s)
    seen: set[str] = set()
    configured: set[CurveConfig] = set()
    written = 0
    for step_s, chunk in _timed_chunks(data):
        now_s += step_s
        configured.update(session._realtime.curves)
        session.poll(now_s=now_s)
        configured.update(session._realtime.curves)
        session.receive(chunk, now_s=now_s)
        configured.update(session._realtime.curves)
        if session._realtime.buffered_bytes > session._realtime.max_buffered_bytes:
            raise FuzzInvariantError("realtime decoder over its cap")
        written += _check_host_output(session.data_to_send(), who="host session")
        if math.isnan(session.next_deadline_s()):
            raise FuzzInvariantError("next_deadline_s is NaN")
        for event in session.events():
            if isinstance(event, WaveformChunk) and session.options.waves:
                _check_chunk(event, configured)
            elif not isinstance(event, _SESSION_EVENTS):
                raise FuzzInvariantError(f"unexpected event {event!r}")
            seen.add(type(event).__name__)
            if isinstance(event, MeasurementsReceived):
                for measurement in event.measurements:
                    value = measurement.value
                    if value is not None and not math.isfinite(value):
                        raise FuzzInvariantError(f"non-finite measurement {measurement!r}")
    if session._decoder.buffered_bytes > session.options.buffer_cap_bytes + 1:
        raise FuzzInvariantError("session decoder over its cap")
    return (frozenset(seen), session.link_up, written > 0)


def _session_seeds() -> list[bytes]:
    return [_conversation(steps=14, device_to_host=True), _conversation(steps=6, device_to_host=True)]


def _session_waves_seeds() -> list[bytes]:
    return [_conversation(steps=14, device_to_host=True, waves=True)]


# ---- MEDIBUS.X realtime ----------------------------------------------------------------------------


def run_realtime(data: bytes) -> object:
    """Decode `data` as realtime bytes whole and split where its first byte says: same samples both ways.

    The first byte also picks how many of the simulator's curves are configured (1-4); the carried
    partial cycle stays under its cap; every sample is NaN or inside its curve's range. The same bytes
    read as a configuration response and as configure arguments raise nothing.
    """
    curves: list[CurveConfig] = list(SIM_CURVES[: 1 + (data[0] & 3 if data else 0)])
    whole = RealtimeDecoder()
    whole.configure(curves)
    expected = whole.feed(data)
    split_at = data[0] % (len(data) + 1) if data else 0
    split = RealtimeDecoder()
    split.configure(curves)
    first, second = split.feed(data[:split_at]), split.feed(data[split_at:])
    for stream, curve in enumerate(curves):
        got = np.concatenate((first[stream], second[stream]))
        if got.shape != expected[stream].shape or not np.array_equal(got, expected[stream], equal_nan=True):
            raise FuzzInvariantError(
                f"samples depend on how the bytes were read: {got!r} vs {expected[stream]!r}"
            )
        inside = np.isnan(got) | ((got >= curve.min_value) & (got <= curve.max_value))
        if not inside.all():
            raise FuzzInvariantError(f"sample outside {curve!r}: {got!r}")
    if max(whole.buffered_bytes, split.buffered_bytes) > MAX_CYCLE_BYTES:
        raise FuzzInvariantError("realtime decoder over its cap")
    counters = LinkCounters()
    configs = parse_realtime_config(bytes(b for b in data if b < 0x80), counters=counters)
    parse_configure_args(bytes(b for b in data if b < 0x80))
    return (
        len(curves),
        sum(int(samples.size > 0) for samples in expected),
        frozenset(whole.counters.extra),
        len(configs) > 0,
    )


def _realtime_seeds() -> list[bytes]:
    cycles = b"".join(
        encode_cycle(raws=[raw, 4095 - raw, raw // 2, None], commands=b"\xc6\xc0" if raw == 0 else b"")
        for raw in range(0, 4096, 512)
    )
    return [
        b"\x01" + cycles + b"\xd0",
        realtime_part(_conversation(steps=14, device_to_host=True, waves=True)),
    ]


_REALTIME_TOKENS = tuple(
    bytes((byte,)) for byte in (0xD0, 0xD7, 0xC4, 0xC6, 0xC0, 0xC1, 0xCF, 0x80, 0xBF, 0xE5)
)


# ---- device payload parsers ----------------------------------------------------------------------

_FRAME_UNSAFE = frozenset(
    (ControlByte.SOH, ControlByte.CR, ControlByte.XON, ControlByte.XOFF, ControlByte.ESC)
)


def run_device(data: bytes) -> object:
    """Parse a response payload with the parser its first byte selects (mod 5).

    The payload is first reduced to what a response frame can carry (the decoder drops the rest), so
    the parsers see exactly the byte range the session can hand them.
    """
    if not data:
        return None
    payload = bytes(b for b in data[1:] if b < 0x80 and b not in _FRAME_UNSAFE)
    counters = LinkCounters()
    which = data[0] % 5
    if which == 0:
        measurements = parse_measurements(payload, counters=counters)
        for measurement in measurements:
            if measurement.value is not None and not math.isfinite(measurement.value):
                raise FuzzInvariantError(f"non-finite measurement {measurement!r}")
            if measurement.valid != (measurement.value is not None):
                raise FuzzInvariantError(f"valid flag contradicts the value: {measurement!r}")
        return (which, len(measurements) > 0, frozenset(counters.extra))
    if which == 1:
        settings = parse_settings(payload, counters=counters)
        for setting in settings:
            if isinstance(setting.value, float) and not math.isfinite(setting.value):
                raise FuzzInvariantError(f"non-finite setting {setting!r}")
        return (which, len(settings) > 0, frozenset(counters.extra))
    if which == 2:
        return (which, len(parse_alarms(payload, counters=counters)) > 0, frozenset(counters.extra))
    if which == 3:
        return (which, len(parse_text_messages(payload, counters=counters)) > 0, frozenset(counters.extra))
    identification = parse_identification(payload)
    if identification is not None and parse_identification(identification.to_payload()) != identification:
        raise FuzzInvariantError(f"identification does not survive a round trip: {identification!r}")
    return (which, identification is not None)


def _device_seeds() -> list[bytes]:
    scenario = SteadyScenario()
    alarms = [
        SimAlarm(priority=3, code="01", text="Paw high"),
        SimAlarm(priority=2, code="2A", text="VT low"),
    ]
    return [
        b"\x00" + measured_payload(scenario.values_at(0.0)),
        b"\x01" + settings_payload(scenario.settings_at(0.0)),
        b"\x02" + alarms_payload(alarms),
        b"\x03" + texts_payload([*scenario.texts_at(0.0), ("02", "Standby")]),
        b"\x04" + SIM_IDENTIFICATION.to_payload(),
    ]


# ---- config loader -------------------------------------------------------------------------------

_CONFIG_FILE = Path(tempfile.gettempdir()) / f"icu-edge-fuzz-config-{os.getpid()}.toml"


def run_config(data: bytes) -> object:
    """Write `data` as a config file and load it: the only allowed failure is ConfigError."""
    _CONFIG_FILE.write_bytes(data)
    try:
        load_config(_CONFIG_FILE)
    except ConfigError as error:
        if not error.lines or not all(isinstance(line, str) and line for line in error.lines):
            raise FuzzInvariantError(f"ConfigError without a reason per line: {error.lines!r}") from error
        return ("error", error.lines[0].split(":", 1)[0][:40])
    return ("ok",)


def _config_seeds() -> list[bytes]:
    return _corpus("config")


_CONFIG_TOKENS = (
    b"[appliance]\n",
    b"[mqtt]\n",
    b"[store]\n",
    b"[engines]\n",
    b"[publish]\n",
    b"[[bed]]\n",
    b"[[bed.device]]\n",
    b'id = "x"\n',
    b"port = 1883\n",
    b'driver = "medibus"\n',
    b"options = {}\n",
    b"poll_interval_s = ",
    b"= nan\n",
    b"= inf\n",
    b"= -1\n",
    b"= 1e308\n",
    b"= true\n",
    b'= ""\n',
    b"= []\n",
    b"= {}\n",
    b'= "\\u0000"\n',
    b"= 1979-05-27T07:32:00Z\n",
    b"insecure = true\n",
)


# ---- ward view (inbound MQTT messages) -----------------------------------------------------------

_ROOT = "icu/v1/hosp-a/icu-3"
_WATCH_TOPICS = (
    f"{_ROOT}/appliance/edge-0001/status",
    f"{_ROOT}/bed/bed-01/twin",
    f"{_ROOT}/bed/bed-01/vitals",
    f"{_ROOT}/bed/bed-01/events",
    f"{_ROOT}/bed/bed-01/forecast",
    f"{_ROOT}/bed/bed-01/device/vent-1",
    f"{_ROOT}/bed/bed-02/twin",
)
_WATCH_T0 = datetime(2026, 11, 25, 20, 0, 0, tzinfo=UTC)


def run_watch(data: bytes) -> object:
    """Deliver messages to a ward view, then render it.

    Messages are separated by NUL (which neither JSON payloads nor topics contain). A message's first
    byte picks the topic (mod len(topics) + 1; the last value means: the topic is the text up to the
    first TAB) and whether it is retained (bit 7). The view must count bad input, never raise, and
    render whatever it accepted; the change log (`--plain`) follows every message. The rich renderings
    (the old detail view and the tiles at 80x24 and 160x45; a hundred times slower than the plain one)
    run for inputs whose length is 1 more than a multiple of 128 (never the truncated maximum).
    """
    state = WardState(clock=lambda: _START_S, wall_clock=lambda: _WATCH_T0)
    change_log = ChangeLog()
    for record in data.split(b"\x00"):
        if not record:
            continue
        header, body = record[0], record[1:]
        choice = header % (len(_WATCH_TOPICS) + 1)
        if choice < len(_WATCH_TOPICS):
            topic = _WATCH_TOPICS[choice]
        else:
            raw_topic, _, body = body.partition(b"\t")
            topic = raw_topic.decode("utf-8", errors="replace")
        state.apply(topic, body, retained=bool(header & 0x80))
        if not all(isinstance(line, str) for line in change_log.changes(state)):
            raise FuzzInvariantError("the change log gave a line that is no text")
    text = render_plain(state)
    if not isinstance(text, str):
        raise FuzzInvariantError("render_plain did not return text")
    if len(data) % 128 == 1:
        console = Console(file=io.StringIO(), width=160, force_terminal=True)
        console.print(render(state))
        selected = min(state.beds, default=None)
        for width, height in ((80, 24), (160, 45)):
            console.print(render_ward(state, width=width, height=height, selected=selected, keys_line="keys"))
    return (len(state.beds), len(state.appliances), state.violations > 0, state.lost > 0, state.reordered > 0)


def _watch_seeds() -> list[bytes]:
    return _corpus("watch")


_WATCH_TOKENS = (
    b'"session":',
    b'"seq":',
    b'"schema":',
    b'"bed":',
    b'"value":',
    b"null",
    b"true",
    b"1e999",
    b"-0",
    b"NaN",
    b"Infinity",
    b'"icu-edge/twin/1"',
    b'"icu-edge/vitals/1"',
    b'"2026-11-25T20:00:00.000Z"',
    b"\t",
    b"\x00",
    b"{",
    b"}",
    b"[",
    b"]",
    b'""',
    b"9007199254740993",
)


# ---- simulator (parses the host's commands) ------------------------------------------------------


def run_simulator(data: bytes) -> object:
    """Feed the simulated ventilator timed chunks of host bytes; it must only ever write clean frames."""
    now_s = _START_S
    device = VentilatorSimulator(scenario=SteadyScenario(), start_s=now_s, device_command_interval_s=0.5)
    written = 0
    for step_s, chunk in _timed_chunks(data):
        now_s += step_s
        device.receive(chunk, now_s=now_s)
        device.poll(now_s=now_s)
        written += _check_host_output(device.data_to_send(), who="simulator")
    return (device.linked, written > 0, device.counters.unknown_commands > 0)


def _simulator_seeds() -> list[bytes]:
    return [_conversation(steps=20, device_to_host=False)]


# ---- S/5 DRI (drivers/datex) ---------------------------------------------------------------------

_DATEX_CAP_BYTES = 512


def run_datex_codec(data: bytes) -> object:
    """Decode `data` whole and split at a point chosen by its first byte: same records both ways.

    The buffer stays under its cap; every record re-encodes to a frame that decodes to itself.
    """
    whole_decoder = DatexDecoder(cap_bytes=_DATEX_CAP_BYTES)
    whole = whole_decoder.feed(data)
    split = data[0] % (len(data) + 1) if data else 0
    split_decoder = DatexDecoder(cap_bytes=_DATEX_CAP_BYTES)
    parts = split_decoder.feed(data[:split]) + split_decoder.feed(data[split:])
    if parts != whole:
        raise FuzzInvariantError(f"decoding depends on how the bytes were read: {whole!r} vs {parts!r}")
    if max(whole_decoder.buffered_bytes, split_decoder.buffered_bytes) > _DATEX_CAP_BYTES:
        raise FuzzInvariantError("DRI decoder holds more bytes than its cap")
    for record in whole:
        if DatexDecoder().feed(record.to_frame()) != [record]:
            raise FuzzInvariantError(f"{record!r} does not survive a round trip")
    counters = whole_decoder.counters
    return (
        len(whole),
        frozenset(r.header.maintype for r in whole),
        counters.resyncs > 0,
        counters.checksum_errors > 0,
        counters.overflows > 0,
        frozenset(counters.extra),
    )


def _datex_conversation(*, steps: int, waves: bool) -> bytes:
    """Record the monitor's side of an in-memory session <-> simulator conversation as timed chunks."""
    now_s = _START_S
    session = DatexSession(options=DatexOptions(interval_s=1, link_timeout_s=3.0, waves=waves))
    monitor = MonitorSimulator(patient=SteadyPatient(), start_s=now_s, epoch_s=1_700_000_000.0)
    session.reset(now_s=now_s)
    records: list[tuple[float, bytes]] = []
    for _ in range(steps):
        now_s += 0.25
        monitor.receive(session.data_to_send(), now_s=now_s)
        monitor.poll(now_s=now_s)
        to_host = monitor.data_to_send()
        session.receive(to_host, now_s=now_s)
        records.append((0.25, to_host))
    return timed_chunks_bytes(records)


def _datex_codec_seeds() -> list[bytes]:
    return [_datex_conversation(steps=6, waves=False)[2:], _datex_conversation(steps=3, waves=True)[2:]]


def run_datex_session(data: bytes) -> object:
    """Feed a DRI client session (waves on) timed chunks of monitor bytes, polling between them.

    It must only ever write clean request records, keep its buffer under the cap, report only finite
    numbers (an invalid value has no number), and name a deadline that is a number.
    """
    session = DatexSession(options=DatexOptions(interval_s=1, link_timeout_s=3.0, waves=True))
    now_s = _START_S
    session.poll(now_s=now_s)
    seen: set[str] = set()
    for step_s, chunk in _timed_chunks(data):
        now_s += step_s
        session.poll(now_s=now_s)
        session.receive(chunk, now_s=now_s)
        counters = LinkCounters()
        written: list[DatexRecord] = DatexDecoder(counters=counters).feed(session.data_to_send())
        requests_only = all(r.header.maintype in (0, 1) for r in written)
        if counters.checksum_errors or counters.resyncs or not requests_only:
            raise FuzzInvariantError("the DRI session wrote something other than clean requests")
        if math.isnan(session.next_deadline_s()):
            raise FuzzInvariantError("next_deadline_s is NaN")
        for event in session.events():
            seen.add(type(event).__name__)
            values: tuple[float | None, ...] = ()
            if isinstance(event, MeasurementsReceived):
                values = tuple(m.value for m in event.measurements)
                if any(m.valid != (m.value is not None) for m in event.measurements):
                    raise FuzzInvariantError(f"valid flag contradicts the value: {event!r}")
            elif isinstance(event, WaveformChunk):
                values = event.samples
            if any(v is not None and not math.isfinite(v) for v in values):
                raise FuzzInvariantError(f"non-finite number in {event!r}")
    if session._decoder.buffered_bytes > session._decoder.cap_bytes:
        raise FuzzInvariantError("DRI session decoder over its cap")
    return (frozenset(seen), session.link_up, frozenset(session.counters.extra))


def _datex_session_seeds() -> list[bytes]:
    return [_datex_conversation(steps=12, waves=True), _datex_conversation(steps=6, waves=False)]


_DATEX_TOKENS = (b"\x7e", b"\x7d", b"\x7d\x5e", b"\x7d\x5d", b"\x00\x80", b"\x01\x80", b"\xff")


_MEDIBUS_TOKENS = tuple(
    bytes((byte,))
    for byte in (
        ControlByte.SOH,
        ControlByte.ETX,
        ControlByte.CR,
        ControlByte.XON,
        ControlByte.XOFF,
        ControlByte.ESC,
        0x80,
        0xFF,
    )
) + tuple(Command(code=code).to_bytes() for code in CommandCode)

# ---- HL7 over MLLP ------------------------------------------------------------------------------

_MLLP_CAP_BYTES = 1024
"""The smallest block limit the framer takes, so that short inputs reach the oversized path too."""


def run_mllp(data: bytes) -> object:
    """Frame `data` whole and split at a point chosen by its first byte: same blocks both ways.

    The buffer stays within the limit (+1), no block holds a start byte or exceeds the limit.
    """
    whole = MllpFramer(max_block_bytes=_MLLP_CAP_BYTES).feed(data)
    split = data[0] % (len(data) + 1) if data else 0
    framer = MllpFramer(max_block_bytes=_MLLP_CAP_BYTES)
    parts = framer.feed(data[:split])
    if framer.buffered_bytes > _MLLP_CAP_BYTES + 1:
        raise FuzzInvariantError("MLLP framer over its limit")
    parts += framer.feed(data[split:])
    if parts != whole:
        raise FuzzInvariantError(f"split at {split} framed differently: {parts!r} != {whole!r}")
    for item in whole:
        if isinstance(item, Block) and (len(item.payload) > _MLLP_CAP_BYTES or b"\x0b" in item.payload):
            raise FuzzInvariantError(f"block breaks the framing promise: {item!r}")
    oversized = sum(isinstance(item, Oversized) for item in whole)
    return (
        min(len(whole), 4),
        min(oversized, 2),
        framer.counters.junk_bytes > 0,
        framer.counters.truncated_blocks > 0,
    )


def _check_acks(raw: bytes, *, expected: int) -> frozenset[str]:
    """Everything the receiver writes must be clean MLLP blocks, one parsable ACK per block received."""
    framer = MllpFramer(max_block_bytes=1 << 20)
    blocks = framer.feed(raw)
    if framer.counters.junk_bytes or framer.in_block or len(blocks) != expected:
        raise FuzzInvariantError(f"receiver wrote {len(blocks)} answers for {expected} blocks: {raw!r}")
    codes: set[str] = set()
    for block in blocks:
        assert isinstance(block, Block)
        code = str(hl7.parse(block.payload.decode("utf-8")).segment("MSA")(1))
        if code not in {"AA", "AE", "AR"}:
            raise FuzzInvariantError(f"ACK code {code!r}")
        codes.add(code)
    return frozenset(codes)


def run_hl7(data: bytes) -> object:
    """Feed an HL7 receiver session timed chunks of sender bytes (see `_timed_chunks`).

    Every block gets exactly one AA/AE/AR answer; measurements carry vocabulary keys (never `map`)
    in the key's unit with finite values; the framer stays bounded.
    """
    session = Hl7Session(options=Hl7Options(max_block_bytes=_MLLP_CAP_BYTES, idle_timeout_s=5.0))
    now_s = _START_S
    session.reset(now_s=now_s)
    seen: set[str] = set()
    codes: frozenset[str] = frozenset()
    for step_s, chunk in _timed_chunks(data):
        now_s += step_s
        if now_s >= session.next_deadline_s():
            session.poll(now_s=now_s)
        before = session.counters.frames_in
        session.receive(chunk, now_s=now_s)
        codes |= _check_acks(session.data_to_send(), expected=session.counters.frames_in - before)
        if session.buffered_bytes > _MLLP_CAP_BYTES + 1:
            raise FuzzInvariantError("HL7 session framer over its limit")
        for event in session.events():
            seen.add(type(event).__name__)
            if isinstance(event, MeasurementsReceived):
                for m in event.measurements:
                    if m.key == "map" or m.key not in TERMS or m.unit != TERMS[m.key].unit:
                        raise FuzzInvariantError(f"measurement outside the vocabulary {m!r}")
                    if m.value is not None and not math.isfinite(m.value):
                        raise FuzzInvariantError(f"non-finite measurement {m!r}")
            elif not isinstance(event, DataRefused):
                raise FuzzInvariantError(f"unexpected event {event!r}")
    return (frozenset(seen), codes, session.link_up)


def _hl7_messages() -> list[bytes]:
    values = PATIENTS["steady"]().vitals_at(0.0)
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    return [
        OruBuilder(style=style, bed="bed-01").message(values, control_id=f"F{n}", now=now).encode()
        for n, style in enumerate(("mindray", "pcd01"))
    ]


def _mllp_seeds() -> list[bytes]:
    blocks = [mllp_wrap(m) for m in _hl7_messages()]
    return [blocks[0][:200], b"junk" + blocks[0][:100] + blocks[0][:50], mllp_wrap(b"A" * 1100)[:300]]


def _hl7_seeds() -> list[bytes]:
    blocks = [mllp_wrap(m) for m in _hl7_messages()]
    return [
        timed_chunks_bytes([(0.05, blocks[0][:100]), (0.05, blocks[0][100:])]),
        timed_chunks_bytes([(0.0, blocks[1])]),
        timed_chunks_bytes([(0.0, mllp_wrap(b"MSH|^~\\&|x||||||ADT^A01|9|P|2.5"))]),
    ]


_HL7_TOKENS = (
    b"\x0b",
    b"\x1c\r",
    b"\r",
    b"MSH|^~\\&|",
    b"|ORU^R01|",
    b"\rOBX||NM|",
    b"101^HR",
    b"147842^MDC_ECG_HEART_RATE^MDC",
    b"|266016^MDC_DIM_MMHG^MDC|",
    b"|||||F",
    b"|||||R|||20261130120000+0000",
    b"\rPV1||I|^^ICU&bed-01&",
    b"demo-data",
    b"|P|2.3.1",
    b"^",
    b"&",
    b"~",
    b"\\",
)

# ---- IntelliVue ------------------------------------------------------------------------------------

_IV_CAP_BYTES = 128
_IV_EVENTS = (LinkUp, LinkDown, MeasurementsReceived, DeviceAlarmsReceived, WaveformChunk, DataRefused)


def _iv_decode_all(message: bytes) -> int:
    """Run every IntelliVue decoder that could meet this message; only MessageError may escape."""
    decoded = 0
    for decode in (iv.decode_data, iv.decode_poll_result, iv.decode_poll_request, iv.decode_event_report):
        try:
            decode(message)
            decoded += 1
        except iv.MessageError:
            pass
    try:
        apdu = iv.decode_data(message)
        iv.decode_poll_result(apdu.payload)
        decoded += 1
    except iv.MessageError:
        pass
    return decoded


def run_intellivue_codec(data: bytes) -> object:
    """Decode `data` whole and split at a point its first byte picks: same messages both ways.

    Every message re-frames to bytes that decode to it again; the buffer stays under its cap; the
    message decoders raise only MessageError.
    """
    whole_decoder = IvFrameDecoder(cap_bytes=_IV_CAP_BYTES)
    whole = whole_decoder.feed(data)
    split = data[0] % (len(data) + 1) if data else 0
    split_decoder = IvFrameDecoder(cap_bytes=_IV_CAP_BYTES)
    parts = split_decoder.feed(data[:split]) + split_decoder.feed(data[split:])
    if parts != whole:
        raise FuzzInvariantError(f"decoding depends on how the bytes were read: {whole!r} vs {parts!r}")
    if whole_decoder.buffered_bytes > _IV_CAP_BYTES:
        raise FuzzInvariantError(f"decoder holds {whole_decoder.buffered_bytes} bytes over its cap")
    decoded = 0
    for message in whole:
        if IvFrameDecoder().feed(iv_encode_frame(message)) != [message]:
            raise FuzzInvariantError(f"{message!r} does not survive a round trip")
        decoded += _iv_decode_all(message)
    decoded += _iv_decode_all(data)
    counters = whole_decoder.counters
    return (len(whole), decoded, counters.resyncs > 0, counters.checksum_errors > 0, counters.overflows > 0)


def _iv_conversation(*, steps: int, lan: bool, waves: bool) -> bytes:
    """Record the monitor's side of an in-memory session <-> simulator run as a timed-chunk input."""
    now_s = _START_S
    session = IntellivueSession(options=IntellivueOptions(link="lan" if lan else "serial", waves=waves))
    monitor = IvMonitorSimulator(patient=SteadyPatient(), start_s=now_s, lan=lan, mtu_bytes=300)
    records: list[tuple[float, bytes]] = []
    for _ in range(steps):
        now_s += 0.25
        session.poll(now_s=now_s)
        while out := session.data_to_send():
            monitor.receive(out, now_s=now_s)
        step_s = 0.25
        while back := monitor.data_to_send():
            session.receive(back, now_s=now_s)
            records.append((step_s, back))
            step_s = 0.0
    return bytes((1 if lan else 0,)) + timed_chunks_bytes(records)


def _iv_codec_seeds() -> list[bytes]:
    return [
        _iv_conversation(steps=8, lan=False, waves=True)[1:],
        iv_encode_frame(iv.build_aarq()),
        bytes.fromhex("C0 3A 91 95 7D E1 C1"),
    ]


def run_intellivue_session(data: bytes) -> object:
    """Feed a client session the monitor's side as timed chunks; the first byte's bit 0 picks the LAN.

    The session must write only clean frames (serial) or known SPDUs (LAN), keep its buffer under its
    cap, emit only contract events with finite values, and name a deadline that is a number.
    """
    if not data:
        return None
    lan = bool(data[0] & 1)
    session = IntellivueSession(options=IntellivueOptions(link="lan" if lan else "serial", waves=True))
    now_s = _START_S
    session.poll(now_s=now_s)
    seen: set[str] = set()
    for step_s, chunk in _timed_chunks(data[1:]):
        now_s += step_s
        session.poll(now_s=now_s)
        session.receive(chunk, now_s=now_s)
        while out := session.data_to_send():
            if lan and iv.spdu_of(out) is None:
                raise FuzzInvariantError(f"session sent an unknown datagram {out!r}")
            if not lan:
                counters = LinkCounters()
                IvFrameDecoder(counters=counters, cap_bytes=1 << 20).feed(out)
                if counters.checksum_errors or counters.resyncs or counters.overflows:
                    raise FuzzInvariantError(f"session wrote bytes that are no clean frames: {out!r}")
        if math.isnan(session.next_deadline_s()):
            raise FuzzInvariantError("next_deadline_s is NaN")
        for event in session.events():
            if not isinstance(event, _IV_EVENTS):
                raise FuzzInvariantError(f"unexpected event {event!r}")
            seen.add(type(event).__name__)
            values: list[float | None] = []
            if isinstance(event, MeasurementsReceived):
                values = [m.value for m in event.measurements]
            elif isinstance(event, WaveformChunk):
                values = list(event.samples)
            if any(v is not None and not math.isfinite(v) for v in values):
                raise FuzzInvariantError(f"non-finite value in {event!r}")
    if session._decoder.buffered_bytes > session.options.buffer_cap_bytes:
        raise FuzzInvariantError("session decoder over its cap")
    return (frozenset(seen), session.link_up, lan)


def _iv_session_seeds() -> list[bytes]:
    return [
        _iv_conversation(steps=10, lan=False, waves=True),
        _iv_conversation(steps=10, lan=True, waves=True),
    ]


_IV_TOKENS = (b"\xc0", b"\xc1", b"\x7d", b"\x7d\xc1", b"\xe1\x00\x00\x02", b"\x00\x7f\xff\xff", b"\x04\x00")


TARGETS: dict[str, Target] = {
    target.name: target
    for target in (
        Target(
            name="codec",
            run=run_codec,
            seeds=_codec_seeds,
            tokens=_MEDIBUS_TOKENS,
            max_len=256,
            description="MEDIBUS stream decoder and frame parsers (drivers/medibus/codec.py)",
        ),
        Target(
            name="session",
            run=run_session,
            seeds=_session_seeds,
            tokens=_MEDIBUS_TOKENS,
            max_len=1024,
            description="MEDIBUS host session receive path (drivers/medibus/session.py)",
        ),
        Target(
            name="session_waves",
            run=run_session_waves,
            seeds=_session_waves_seeds,
            tokens=_MEDIBUS_TOKENS + _REALTIME_TOKENS,
            max_len=1024,
            description="MEDIBUS host session with MEDIBUS.X curves on (drivers/medibus/session.py)",
        ),
        Target(
            name="realtime",
            run=run_realtime,
            seeds=_realtime_seeds,
            tokens=_REALTIME_TOKENS,
            max_len=512,
            description="MEDIBUS.X realtime decoder and configuration parsers (drivers/medibus/realtime.py)",
        ),
        Target(
            name="device",
            run=run_device,
            seeds=_device_seeds,
            tokens=(b"301", b"  ---", b"-", b".", b"+", b"\x03", b"'", b":"),
            max_len=512,
            description="MEDIBUS response payload parsers (drivers/medibus/device.py)",
        ),
        Target(
            name="config",
            run=run_config,
            seeds=_config_seeds,
            tokens=_CONFIG_TOKENS,
            description="TOML config loader (edge/config.py load_config)",
        ),
        Target(
            name="watch",
            run=run_watch,
            seeds=_watch_seeds,
            tokens=_WATCH_TOKENS,
            description="ward view's inbound MQTT message parser and renderer (tools/watch.py)",
        ),
        Target(
            name="simulator",
            run=run_simulator,
            seeds=_simulator_seeds,
            tokens=_MEDIBUS_TOKENS,
            max_len=1024,
            description="simulator's command handling (drivers/medibus/simulator.py)",
        ),
        Target(
            name="intellivue_codec",
            run=run_intellivue_codec,
            seeds=_iv_codec_seeds,
            tokens=_IV_TOKENS,
            max_len=1024,
            description="IntelliVue serial framing and message decoders (drivers/intellivue/)",
        ),
        Target(
            name="intellivue_session",
            run=run_intellivue_session,
            seeds=_iv_session_seeds,
            tokens=_IV_TOKENS,
            max_len=4096,
            description="IntelliVue client session receive path (drivers/intellivue/session.py)",
        ),
        Target(
            name="datex_codec",
            run=run_datex_codec,
            seeds=_datex_codec_seeds,
            tokens=_DATEX_TOKENS,
            max_len=2048,
            description="S/5 DRI stream decoder and record parser (drivers/datex/codec.py)",
        ),
        Target(
            name="datex_session",
            run=run_datex_session,
            seeds=_datex_session_seeds,
            tokens=_DATEX_TOKENS,
            max_len=4096,
            description="S/5 DRI client session receive path (drivers/datex/session.py, records.py)",
        ),
        Target(
            name="mllp",
            run=run_mllp,
            seeds=_mllp_seeds,
            tokens=_HL7_TOKENS,
            max_len=2048,
            description="MLLP framer (drivers/hl7/mllp.py)",
        ),
        Target(
            name="hl7",
            run=run_hl7,
            seeds=_hl7_seeds,
            tokens=_HL7_TOKENS,
            max_len=4096,
            description="HL7 receiver session: parse, map, ACK (drivers/hl7/session.py)",
        ),
    )
}
