"""Which device is on this serial port? Try each serial driver's own handshake and name what answers.

`probe_port(path)` opens the port at one driver's line settings at a time (MEDIBUS 19200 8E1,
IntelliVue MIB/RS232 115200 8N1, S/5 DRI 19200 8E1, MEDIBUS 9600 8E1), runs that driver's real
sans-I/O session until its link comes up (`LinkUp`, with the model where the protocol reports one),
and gives up on it after its share of the deadline. Nothing is parsed twice: recognition is the
driver's own session, so a port the probe names is a port the daemon will read.

What the probe sends, and what it leaves behind:
- only the handshake of each driver (MEDIBUS ICC and device identification, answers to the device's
  own commands; the IntelliVue AARQ and the MDS create result; the DRI displayed-values request);
  the first poll a session queues once its link is up is never written;
- a goodbye where the protocol has one: IntelliVue gets its Release Request, a DRI monitor a request
  with interval 0 (stop) after every DRI try, answered or not; a MEDIBUS device ends the link itself
  after 3 s of silence (its stop command would end the device's communication, not just ours);
- each try closes the port before the next opens it.
A pseudo-terminal has no baud rate or parity, so there each protocol is tried once.

When nothing answers, `saw` says what came back, in one line: byte count, a hex head, and what the
bytes look like to each driver's frame decoder ("MEDIBUS framing but checksum bad", ...).
`recognise` (sans-I/O) does that part and never raises on any input.

Threads: none; `probe_port` blocks the calling thread for at most about `deadline_s` (plus the
close of the port), reading with a short time-out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from drivers.base import DeviceSession, LinkCounters, LinkUp, ReleasingSession, SerialSettings
from drivers.datex.codec import EXTRA_BAD_ESCAPES, EXTRA_BAD_LENGTHS, DatexDecoder
from drivers.datex.records import phdb_request
from drivers.intellivue import messages as ivm
from drivers.intellivue.framing import EXTRA_ABORTS, EXTRA_BAD_HEADERS, FrameDecoder, encode_frame
from drivers.medibus.codec import MedibusDecoder, Response
from drivers.registry import get_driver
from drivers.transport import (
    PortBusy,
    SerialTransport,
    Transport,
    TransportError,
    is_pty,
    open_serial_port,
    open_transport,
)

LOGGER = logging.getLogger(__name__)

READ_TIMEOUT_S = 0.05
HEX_HEAD_BYTES = 16
BUSY_PREFIX = "port busy"
"""How `saw` begins when another process holds the port (the probe sent nothing)."""
CANNOT_OPEN_PREFIX = "cannot open"
"""How `saw` begins when the port cannot be opened at all (missing, no permission)."""


@dataclass(frozen=True)
class ProbeResult:
    """What a probe of one port found."""

    port: str
    """The path probed."""
    protocol: str | None
    """Driver name as in the config (`medibus`, `intellivue`, `datex`); None if none answered."""
    device: str | None
    """Model / identity as the device reports it; None where the protocol does not say."""
    baud: int | None
    """The line settings that worked."""
    parity: str | None
    """`N`, `E` or `O`."""
    options: dict[str, str]
    """Driver options the config needs for this device (may be empty)."""
    saw: str
    """One line: how it matched, or what was seen when nothing matched."""
    elapsed_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """One try: a driver, the line settings and the session options it is tried with."""

    driver: str
    baud: int
    parity: str
    weight: float
    """Share of the deadline this try gets, relative to the others."""
    session_options: Mapping[str, object] = field(default_factory=dict)
    config_options: Mapping[str, str] = field(default_factory=dict)
    """What the config needs for a device found this way."""

    @property
    def line(self) -> SerialSettings:
        """The line settings of this try (the driver's, at this baud and parity)."""
        default = get_driver(self.driver).default_line
        return SerialSettings(
            baud=self.baud,
            bytesize=default.bytesize,
            parity=self.parity,
            stopbits=default.stopbits,
            rtscts=default.rtscts,
        )

    @property
    def settings(self) -> str:
        """`19200 8E1`."""
        return f"{self.baud} 8{self.parity}1"


CANDIDATES: tuple[Candidate, ...] = (
    Candidate(driver="medibus", baud=19200, parity="E", weight=2.0, session_options={"icc_retry_s": 0.7}),
    Candidate(
        driver="intellivue",
        baud=115200,
        parity="N",
        weight=2.5,
        session_options={"link": "serial", "aarq_retry_s": 1.0},
        config_options={"link": "serial"},
    ),
    Candidate(
        driver="datex",
        baud=19200,
        parity="E",
        weight=2.5,
        session_options={"interval_s": 1, "link_timeout_s": 3.0},
    ),
    Candidate(driver="medibus", baud=9600, parity="E", weight=1.5, session_options={"icc_retry_s": 0.7}),
)
"""The tries in order: the usual settings of each protocol first, the rarer MEDIBUS speed last."""


# ---- recognition of unanswered bytes (sans-I/O) ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FramingGuess:
    """What one driver's frame decoder made of some bytes."""

    protocol: str
    frames: int
    """Complete frames with a valid checksum."""
    bad_checksums: int
    """Complete frames whose checksum did not match."""
    noise: int
    """Runs of bytes outside any frame, and frames broken in other ways (bad escapes, lengths)."""

    @property
    def plausible(self) -> bool:
        """Whether the bytes look like this protocol's framing at all.

        Random bytes contain the odd start and end byte of every protocol, but between such chance
        frames lie runs of garbage; a real stream is mostly frames, back to back, even when its
        checksums are bad (wrong parity, noise).
        """
        framed = self.frames + self.bad_checksums
        return framed > 0 and framed >= 2 * self.noise


@dataclass(frozen=True, slots=True, kw_only=True)
class Recognition:
    """What a run of received bytes looks like to each protocol's frame decoder."""

    byte_count: int
    hex_head: str
    printable_share: float
    """Share of the bytes that are printable ASCII, tab, CR or LF (a text protocol or console?)."""
    guesses: tuple[FramingGuess, ...]

    def best(self) -> FramingGuess | None:
        """The plausible framing with the most valid frames (then the most framed-but-bad ones)."""
        framed = [g for g in self.guesses if g.plausible]
        if not framed:
            return None
        return max(framed, key=lambda g: (g.frames, g.bad_checksums))

    def describe(self) -> str:
        """One line: the byte count, a hex head and a framing guess."""
        if not self.byte_count:
            return "0 bytes"
        head = f"{self.byte_count} bytes, head {self.hex_head}"
        best = self.best()
        if best is None:
            return f"{head}; {self.printable_share:.0%} printable; no MEDIBUS, IntelliVue or DRI framing"
        if best.frames:
            extra = f", {best.bad_checksums} with bad checksum" if best.bad_checksums else ""
            return f"{head}; {best.frames} valid {best.protocol} frame(s){extra}"
        return f"{head}; looks like {best.protocol} framing but checksum bad ({best.bad_checksums} frame(s))"


_DRIVER_OF_FRAMING = {"MEDIBUS": "medibus", "IntelliVue": "intellivue", "DRI": "datex"}
_BROKEN_FRAME_COUNTERS = (EXTRA_BAD_ESCAPES, EXTRA_BAD_LENGTHS, EXTRA_ABORTS, EXTRA_BAD_HEADERS)
_PRINTABLE = frozenset(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}


def _guess(protocol: str, counters: LinkCounters) -> FramingGuess:
    broken = sum(counters.extra.get(name, 0) for name in _BROKEN_FRAME_COUNTERS)
    return FramingGuess(
        protocol=protocol,
        frames=counters.frames_in,
        bad_checksums=counters.checksum_errors,
        noise=counters.resyncs + counters.overflows + broken,
    )


def recognise(data: bytes) -> Recognition:
    """Run each protocol's frame decoder over data and say what each found; never raises."""
    medibus, intellivue, datex = LinkCounters(), LinkCounters(), LinkCounters()
    MedibusDecoder(counters=medibus).feed(data)
    FrameDecoder(counters=intellivue).feed(data)
    DatexDecoder(counters=datex).feed(data)
    printable = sum(1 for byte in data if byte in _PRINTABLE)
    return Recognition(
        byte_count=len(data),
        hex_head=data[:HEX_HEAD_BYTES].hex(" "),
        printable_share=printable / len(data) if data else 0.0,
        guesses=(_guess("MEDIBUS", medibus), _guess("IntelliVue", intellivue), _guess("DRI", datex)),
    )


# ---- the probe (I/O) ---------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class _Outcome:
    received: bytearray = field(default_factory=bytearray)
    link_up: LinkUp | None = None
    error: str | None = None
    up_after_s: float = 0.0


def probe_port(path: str, *, deadline_s: float = 10.0, force: bool = False) -> ProbeResult:
    """Try each serial driver's handshake on path and name the protocol and device, within deadline_s.

    `force` opens the port without the lock the daemon takes, for a port another process holds
    (its data and ours then mix on the line: a field engineer's last resort, never the default).
    A port another process holds is not touched without `force`: `saw` then begins with
    `BUSY_PREFIX`.
    """
    start_s = time.monotonic()
    end_s = start_s + deadline_s
    pending = list(_plan(path))
    seen: list[str] = []
    silent: list[str] = []  # the tries that got no byte back and no error
    while pending:
        candidate = pending.pop(0)
        now_s = time.monotonic()
        if now_s >= end_s:
            break
        weight_left = candidate.weight + sum(c.weight for c in pending)
        budget_s = (end_s - now_s) * candidate.weight / weight_left
        try:
            outcome = _attempt(path, candidate, budget_s=budget_s, force=force)
        except PortBusy as exc:
            return _nothing(
                path, start_s, f"{_prefixed(BUSY_PREFIX, exc)}; nothing sent (force to probe anyway)"
            )
        except TransportError as exc:
            return _nothing(path, start_s, _prefixed(CANNOT_OPEN_PREFIX, exc))
        if outcome.link_up is not None:
            return _matched(path, candidate, outcome, start_s=start_s)
        recognition = recognise(bytes(outcome.received))
        note = f"{candidate.driver} {candidate.settings}: {recognition.describe()}"
        seen.append(note if outcome.error is None else f"{note} ({outcome.error})")
        if not outcome.received and outcome.error is None:
            silent.append(f"{candidate.driver} {candidate.settings}")
        _try_next(pending, recognition)
    if not seen:
        return _nothing(path, start_s, f"no time to try anything in {deadline_s:g} s")
    if len(silent) == len(seen):
        return _nothing(path, start_s, f"nothing at any setting (silent; tried {'; '.join(silent)})")
    return _nothing(path, start_s, "no handshake answered; " + "; ".join(seen))


def _reason(exc: Exception) -> str:
    """The error text without the port path in front (the result names the port already)."""
    text = str(exc)
    head, sep, rest = text.partition(": ")
    return rest if sep and head.startswith(("/", "socket:", "loop:")) else text


def _prefixed(prefix: str, exc: Exception) -> str:
    """The error text, beginning with prefix (once)."""
    reason = _reason(exc)
    return reason if reason.startswith(prefix) else f"{prefix}: {reason}"


def _plan(path: str) -> list[Candidate]:
    """The tries for path: on a pty (no baud, no parity) each protocol once."""
    if not is_pty(path):
        return list(CANDIDATES)
    plan: list[Candidate] = []
    for candidate in CANDIDATES:
        if all(c.driver != candidate.driver for c in plan):
            plan.append(candidate)
    return plan


def _try_next(pending: list[Candidate], recognition: Recognition) -> None:
    """Move the protocol whose frames the device already sent to the front of the remaining tries."""
    best = recognition.best()
    if best is None:
        return
    driver = _DRIVER_OF_FRAMING[best.protocol]
    for index, candidate in enumerate(pending):
        if candidate.driver == driver:
            pending.insert(0, pending.pop(index))
            return


def _nothing(path: str, start_s: float, saw: str) -> ProbeResult:
    return ProbeResult(
        port=path,
        protocol=None,
        device=None,
        baud=None,
        parity=None,
        options={},
        saw=saw,
        elapsed_s=round(time.monotonic() - start_s, 3),
    )


def _matched(path: str, candidate: Candidate, outcome: _Outcome, *, start_s: float) -> ProbeResult:
    up = outcome.link_up
    assert up is not None
    info = get_driver(candidate.driver)
    details = [f"{len(outcome.received)} bytes in {outcome.up_after_s:.2f} s"]
    if up.model:
        details.append(f"device says {up.model!r}")
    if up.protocol_version:
        details.append(f"version {up.protocol_version}")
    return ProbeResult(
        port=path,
        protocol=candidate.driver,
        device=up.model,
        baud=candidate.baud,
        parity=candidate.parity,
        options=dict(candidate.config_options),
        saw=f"{info.protocol} handshake answered at {candidate.settings} ({', '.join(details)})",
        elapsed_s=round(time.monotonic() - start_s, 3),
    )


def _open(path: str, line: SerialSettings, *, force: bool) -> Transport:
    """Open path as the daemon would (claimed and locked), or without the lock when forced."""
    if not force:
        return open_transport(path, line=line, read_timeout_s=READ_TIMEOUT_S)
    port = open_serial_port(path, line=line, read_timeout_s=READ_TIMEOUT_S, exclusive=False)
    return SerialTransport(url=path, port=port)


def _attempt(path: str, candidate: Candidate, *, budget_s: float, force: bool) -> _Outcome:
    """Run one driver's session on path for at most budget_s; stop at its first `LinkUp`."""
    transport = _open(path, candidate.line, force=force)
    session = get_driver(candidate.driver).create_session(candidate.session_options)
    outcome = _Outcome()
    start_s = time.monotonic()
    try:
        session.reset(now_s=start_s)
        _write(transport, session.data_to_send())
        while (now_s := time.monotonic()) < start_s + budget_s:
            data = transport.read(max_bytes=4096)
            now_s = time.monotonic()
            if data:
                outcome.received += data
                session.receive(data, now_s=now_s)
            up = next((e for e in session.events() if isinstance(e, LinkUp)), None)
            if up is not None:
                outcome.link_up = up
                outcome.up_after_s = now_s - start_s
                _write(transport, _handshake_part(candidate.driver, drain(session)))
                break
            if now_s >= session.next_deadline_s():
                session.poll(now_s=now_s)
            _write(transport, drain(session))
        goodbye(candidate.driver, session, transport)
    except TransportError as exc:
        outcome.error = _reason(exc)
    finally:
        transport.close()
    return outcome


def drain(session: DeviceSession) -> bytes:
    """Everything the session has to send now (a datagram session hands it over one message a call)."""
    out = bytearray()
    while chunk := session.data_to_send():
        out += chunk
    return bytes(out)


def _write(transport: Transport, data: bytes) -> None:
    if data:
        transport.write(data)


def _handshake_part(driver: str, queued: bytes) -> bytes:
    """Of what a session queued as its link came up, the part that still belongs to the handshake.

    MEDIBUS: the answers to the device's own commands (responses), not our first poll (commands).
    IntelliVue: the MDS create result (a RORS), not the polls (ROIV). DRI queues nothing then.
    """
    if driver == "medibus":
        return b"".join(f.to_bytes() for f in MedibusDecoder().feed(queued) if isinstance(f, Response))
    if driver == "intellivue":
        kept = []
        for message in FrameDecoder().feed(queued):
            try:
                if ivm.decode_data(message).ro_type is not ivm.RoType.ROIV:
                    kept.append(encode_frame(message))
            except ivm.MessageError:
                continue
        return b"".join(kept)
    return b""


def goodbye(driver: str, session: DeviceSession, transport: Transport) -> bytes:
    """Leave the device as it was: release an association, stop a DRI transmission we may have started.

    Return the bytes written (for a tool that shows them).
    """
    sent = b""
    if isinstance(session, ReleasingSession):
        drain(session)
        session.release(now_s=time.monotonic())
        sent += drain(session)
    if driver == "datex":
        sent += phdb_request(interval_s=0).to_frame()
    _write(transport, sent)
    return sent
