"""`icu-edge diag sniff`: every frame on a serial line, decoded, with direction, time and checksum verdict.

Two sources, one output:
- a recording made by `icu-edge record` (`diag sniff FILE`): both directions decoded passively, at
  the recorded times; nothing is opened but the file;
- a live port (`diag sniff --port PORT`): the port is opened and locked as the daemon would, and the
  driver's own session talks to the device as the daemon does (handshake, polls, keep-alive), so the
  device keeps answering; every frame either way is printed until Ctrl-C or `--seconds`. A port the
  daemon holds is refused (the lock says so). The protocol is `--protocol`, or what `diag probe`
  finds on the port first.

Verdicts: `ok` a frame with a valid checksum; `resynced` a valid frame that came after skipped bytes
(garbage, or a broken partial frame); `bad` a frame dropped by the decoder (checksum, escape, length,
overflow: the reason is printed). Each direction has its own decoder. Frames are found by feeding the
driver's own decoder one byte at a time, so every verdict sits at the byte where the decoder made it.

Output: plain text lines, or with `--json` one JSON object per line (`"type": "frame" | "link" |
"summary"`). Exit status: 0 done; 1 no protocol could be told (say `--protocol`); 65 the file is no
recording; 69 the port is busy or cannot be opened.

Threads: one. Live, the loop reads with a 0.1 s time-out and runs the session's timers in between;
SIGINT/SIGTERM only set a flag the loop checks.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

from drivers.base import LinkCounters, LinkDown, LinkUp, SerialSettings
from drivers.datex.codec import EXTRA_BAD_ESCAPES, EXTRA_BAD_LENGTHS, DatexDecoder, Record
from drivers.datex.codes import MainType
from drivers.intellivue import messages as ivm
from drivers.intellivue.framing import EXTRA_ABORTS, EXTRA_BAD_HEADERS, FrameDecoder
from drivers.medibus.codec import Command, MedibusDecoder
from drivers.medibus.codes import CommandCode
from drivers.probe import BUSY_PREFIX, CANNOT_OPEN_PREFIX, drain, goodbye, probe_port, recognise
from drivers.recording import Direction, RecordingError, read_recording
from drivers.registry import get_driver
from drivers.transport import PortBusy, TransportError, open_transport

HELP = "decode every frame of a recording or a live port, both directions, with checksum verdicts"
DESCRIPTION = (
    "Decode every frame on a serial line with its direction, time and checksum verdict (ok, bad, "
    "resynced). FILE: a recording made by `icu-edge record` (the protocol is guessed from its bytes "
    "unless --protocol). --port PORT: open a port the daemon does not hold, talk to the device as the "
    "daemon would (the protocol from --protocol, else probed) and print frames until Ctrl-C or "
    "--seconds. Counts of each verdict at the end."
)

PROTOCOLS = ("medibus", "intellivue", "datex")
LIVE_READ_TIMEOUT_S = 0.1
HEX_HEAD_BYTES = 24
EX_NO_PROTOCOL = 1
EX_DATAERR = 65
EX_UNAVAILABLE = 69

Verdict = str
"""`ok`, `resynced` or `bad`."""
VERDICTS = ("ok", "resynced", "bad")


@dataclass(frozen=True, slots=True, kw_only=True)
class TapFrame:
    """One frame (or one dropped frame) as the tap saw it."""

    offset_s: float
    direction: Direction
    verdict: Verdict
    summary: str
    """What the frame is (`response 0x24 MEASURED_CP1 ...`), or why it was dropped."""
    size: int
    """Bytes fed since the previous frame ended: this frame and anything skipped before it."""
    hex_head: str


@dataclass(slots=True, kw_only=True)
class _Broken:
    """Counter readings that say a frame was dropped or bytes were skipped."""

    checksum: int = 0
    other: int = 0
    skipped: int = 0


def _broken(counters: LinkCounters) -> _Broken:
    extra = counters.extra
    other = sum(
        extra.get(n, 0) for n in (EXTRA_BAD_ESCAPES, EXTRA_BAD_LENGTHS, EXTRA_ABORTS, EXTRA_BAD_HEADERS)
    )
    return _Broken(
        checksum=counters.checksum_errors, other=other + counters.overflows, skipped=counters.resyncs
    )


class FrameTap:
    """A passive decoder of one direction of one protocol (sans-I/O: bytes and times in, frames out)."""

    def __init__(self, *, driver: str, direction: Direction) -> None:
        self.driver = driver
        self.direction = direction
        self.counters = LinkCounters()
        self.verdicts: dict[Verdict, int] = dict.fromkeys(VERDICTS, 0)
        self._feed = _decoder_feed(driver, self.counters)
        self._pending = bytearray()
        self._skipped = False

    def feed(self, data: bytes, *, offset_s: float) -> list[TapFrame]:
        """Feed bytes that crossed at offset_s; return the frames (and dropped frames) they finished."""
        out: list[TapFrame] = []
        for index in range(len(data)):
            byte = data[index : index + 1]
            before = _broken(self.counters)
            frames = self._feed(byte)
            after = _broken(self.counters)
            self._pending += byte
            if after.skipped != before.skipped:
                self._skipped = True
            if after.checksum != before.checksum:
                out.append(self._emit("bad", "checksum bad", offset_s=offset_s))
            elif after.other != before.other:
                out.append(self._emit("bad", "frame broken (escape, length or overflow)", offset_s=offset_s))
            for frame in frames:
                verdict = "resynced" if self._skipped else "ok"
                out.append(self._emit(verdict, summarise(self.driver, frame), offset_s=offset_s))
        return out

    def _emit(self, verdict: Verdict, summary: str, *, offset_s: float) -> TapFrame:
        raw = bytes(self._pending)
        self._pending.clear()
        self._skipped = False
        self.verdicts[verdict] += 1
        return TapFrame(
            offset_s=offset_s,
            direction=self.direction,
            verdict=verdict,
            summary=summary,
            size=len(raw),
            hex_head=raw[:HEX_HEAD_BYTES].hex(" "),
        )


def _decoder_feed(driver: str, counters: LinkCounters) -> Callable[[bytes], Sequence[object]]:
    if driver == "medibus":
        return MedibusDecoder(counters=counters).feed
    if driver == "intellivue":
        return FrameDecoder(counters=counters).feed
    if driver == "datex":
        return DatexDecoder(counters=counters).feed
    raise ValueError(f"no frame decoder for driver {driver!r}; one of {', '.join(PROTOCOLS)}")


def summarise(driver: str, frame: object) -> str:
    """One line on what a decoded frame is."""
    if isinstance(frame, Record):
        header = frame.header
        try:
            kind = MainType(header.maintype).name
        except ValueError:
            kind = f"maintype {header.maintype}"
        types = ",".join(str(d.type) for d in header.subrecords)
        return f"DRI record {kind} ({header.r_len} bytes, subrecord types {types or '-'})"
    if isinstance(frame, bytes):
        return _intellivue_summary(frame)
    command = isinstance(frame, Command)
    code: int = getattr(frame, "code", 0)
    payload: bytes = getattr(frame, "args" if command else "data", b"")
    name = CommandCode.lookup(code)
    text = payload[:40].decode("latin-1")
    more = "..." if len(payload) > 40 else ""
    what = "command" if command else "response"
    label = name.name if name else "unknown"
    return f"MEDIBUS {what} {code:#04x} {label} ({len(payload)} data bytes) {text!r}{more}"


def _intellivue_summary(message: bytes) -> str:
    spdu = ivm.spdu_of(message)
    if spdu is not ivm.Spdu.DATA:
        return f"IntelliVue {spdu.name if spdu else 'unknown SPDU'} ({len(message)} bytes)"
    try:
        apdu = ivm.decode_data(message)
    except ivm.MessageError as exc:
        return f"IntelliVue data, undecodable ({exc})"
    known = {int(c): c.name for c in ivm.Command}
    command = known.get(apdu.command, f"command {apdu.command}")
    what = f"error {apdu.command}" if apdu.ro_type is ivm.RoType.ROER else command
    head = f"IntelliVue {apdu.ro_type.name} invoke {apdu.invoke_id} {what}"
    return f"{head} ({len(message)} bytes)"


# ---- output ------------------------------------------------------------------------------------------


class Printer:
    """Writes frames, link events and the summary as text or JSON lines."""

    def __init__(self, *, out: TextIO, as_json: bool) -> None:
        self._out = out
        self._json = as_json

    def frames(self, frames: Sequence[TapFrame]) -> None:
        """Print frames, one line each."""
        for frame in frames:
            if self._json:
                self._line({"type": "frame", **asdict(frame)})
            else:
                self._out.write(
                    f"{frame.offset_s:10.3f} {frame.direction:<6} {frame.verdict:<8} {frame.summary}"
                    f"  [{frame.size} B: {frame.hex_head}{' ...' if frame.size > HEX_HEAD_BYTES else ''}]\n"
                )
        self._out.flush()

    def link(self, *, offset_s: float, state: str, detail: str) -> None:
        """Print a link event of the live session (up with the model, down with the reason)."""
        if self._json:
            self._line({"type": "link", "offset_s": offset_s, "state": state, "detail": detail})
        else:
            self._out.write(f"{offset_s:10.3f} link   {state:<8} {detail}\n")
        self._out.flush()

    def summary(self, taps: Sequence[FrameTap], *, note: str = "") -> None:
        """Print the count of each verdict per direction (and a note: skipped recording lines)."""
        counts = {tap.direction: dict(tap.verdicts) for tap in taps}
        if self._json:
            self._line({"type": "summary", "protocol": taps[0].driver, "counts": counts, "note": note})
            return
        parts = [
            f"{direction}: " + ", ".join(f"{n} {verdict}" for verdict, n in verdicts.items())
            for direction, verdicts in counts.items()
        ]
        self._out.write(f"summary ({taps[0].driver}): {'; '.join(parts)}{'; ' + note if note else ''}\n")
        self._out.flush()

    def _line(self, body: dict[str, object]) -> None:
        self._out.write(json.dumps(body) + "\n")


# ---- the two sources ---------------------------------------------------------------------------------


def sniff_recording(path: Path, *, protocol: str | None, printer: Printer) -> int:
    """Decode a recording both ways; exit status as the module says."""
    try:
        with path.open(encoding="utf-8", errors="replace") as source:
            recording = read_recording(source)
    except OSError as exc:
        print(f"diag sniff: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EX_DATAERR
    except RecordingError as exc:
        print(f"diag sniff: {path} is not a recording: {exc}", file=sys.stderr)
        return EX_DATAERR
    driver = protocol
    if driver is None:
        device_bytes = b"".join(c.data for c in recording.chunks if c.direction == "device")
        driver = _guess(device_bytes)
        if driver is None:
            seen = recognise(device_bytes).describe()
            print(f"diag sniff: cannot tell the protocol of {path} ({seen}); say --protocol", file=sys.stderr)
            return EX_NO_PROTOCOL
    taps = {d: FrameTap(driver=driver, direction=d) for d in ("device", "host")}
    for chunk in recording.chunks:
        printer.frames(taps[chunk.direction].feed(chunk.data, offset_s=chunk.offset_s))
    note = (
        f"{recording.skipped_lines} unreadable recording line(s) skipped" if recording.skipped_lines else ""
    )
    printer.summary(list(taps.values()), note=note)
    return 0


def _guess(device_bytes: bytes) -> str | None:
    best = recognise(device_bytes).best()
    if best is None or not best.frames:
        return None
    return {"MEDIBUS": "medibus", "IntelliVue": "intellivue", "DRI": "datex"}[best.protocol]


@dataclass(slots=True)
class _StopFlag:
    """Set by SIGINT/SIGTERM; the live loop checks it between reads."""

    stopped: bool = False
    previous: dict[int, object] = field(default_factory=dict)

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self._stop)

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopped = True


def sniff_live(
    port: str,
    *,
    protocol: str | None,
    seconds: float | None,
    printer: Printer,
    baud_override: int | None = None,
    parity_override: str | None = None,
) -> int:
    """Run the driver's session on port and print every frame until stopped (exit status: module doc)."""
    options: dict[str, object] = {}
    driver, baud, parity = protocol, baud_override, parity_override
    if driver is None:
        found = probe_port(port)
        if found.protocol is None:
            print(
                f"diag sniff: no protocol answered on {port} ({found.saw}); say --protocol", file=sys.stderr
            )
            return (
                EX_UNAVAILABLE if found.saw.startswith((BUSY_PREFIX, CANNOT_OPEN_PREFIX)) else EX_NO_PROTOCOL
            )
        driver = found.protocol
        options.update(found.options)
        baud, parity = baud or found.baud, parity or found.parity
    info = get_driver(driver)
    default = info.default_line
    line = SerialSettings(
        baud=baud or default.baud,
        bytesize=default.bytesize,
        parity=parity or default.parity,
        stopbits=default.stopbits,
        rtscts=default.rtscts,
    )
    try:
        transport = open_transport(port, line=line, read_timeout_s=LIVE_READ_TIMEOUT_S)
    except PortBusy as exc:
        print(f"diag sniff: {exc}; the daemon (or another reader) has it: nothing sent", file=sys.stderr)
        return EX_UNAVAILABLE
    except TransportError as exc:
        print(f"diag sniff: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    session = info.create_session(options)
    taps = {d: FrameTap(driver=driver, direction=d) for d in ("device", "host")}
    flag = _StopFlag()
    flag.install()
    start_s = time.monotonic()
    try:
        for now_s in _ticks(start_s, seconds=seconds, flag=flag):
            data = transport.read(max_bytes=4096)
            now_s = time.monotonic()
            if data:
                printer.frames(taps["device"].feed(data, offset_s=now_s - start_s))
                session.receive(data, now_s=now_s)
            for event in session.events():
                if isinstance(event, LinkUp):
                    detail = " ".join(w for w in (info.protocol, event.model, event.protocol_version) if w)
                    printer.link(offset_s=now_s - start_s, state="up", detail=detail)
                elif isinstance(event, LinkDown):
                    printer.link(offset_s=now_s - start_s, state="down", detail=event.reason)
            if now_s >= session.next_deadline_s():
                session.poll(now_s=now_s)
            sent = drain(session)
            if sent:
                transport.write(sent)
                printer.frames(taps["host"].feed(sent, offset_s=now_s - start_s))
        printer.frames(
            taps["host"].feed(goodbye(driver, session, transport), offset_s=time.monotonic() - start_s)
        )
    except TransportError as exc:
        print(f"diag sniff: {exc}", file=sys.stderr)
    finally:
        transport.close()
        flag.restore()
    printer.summary(list(taps.values()))
    return 0


def _ticks(start_s: float, *, seconds: float | None, flag: _StopFlag) -> Iterator[float]:
    while not flag.stopped:
        now_s = time.monotonic()
        if seconds is not None and now_s >= start_s + seconds:
            return
        yield now_s


# ---- command line ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `diag sniff`."""
    parser.add_argument(
        "recording", nargs="?", type=Path, metavar="FILE", help="a recording by `icu-edge record`"
    )
    parser.add_argument(
        "--port", metavar="PORT", help="sniff this port live instead (one the daemon does not hold)"
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="the driver (default: guessed from a recording, probed on a port)",
    )
    parser.add_argument(
        "--seconds", type=float, metavar="N", help="live: stop after N seconds (default: run until Ctrl-C)"
    )
    parser.add_argument("--baud", type=int, help="live: line speed (default: the probed or the driver's)")
    parser.add_argument(
        "--parity", choices=("N", "E", "O"), help="live: parity (default: the probed or the driver's)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of text")


def run(args: argparse.Namespace) -> int:
    """Sniff a recording or a port."""
    if (args.recording is None) == (args.port is None):
        print("diag sniff: give a recording FILE or --port PORT (one of them)", file=sys.stderr)
        return 2
    if args.seconds is not None and not args.seconds > 0:
        print("diag sniff: --seconds must be a positive number", file=sys.stderr)
        return 2
    printer = Printer(out=sys.stdout, as_json=args.json)
    if args.recording is not None:
        return sniff_recording(args.recording, protocol=args.protocol, printer=printer)
    return sniff_live(
        args.port,
        protocol=args.protocol,
        seconds=args.seconds,
        printer=printer,
        baud_override=args.baud,
        parity_override=args.parity,
    )
