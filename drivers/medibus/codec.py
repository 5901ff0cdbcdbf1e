"""MEDIBUS link layer, sans-I/O: immutable frames, checksum and a resyncing stream decoder.

A command is `ESC cmd args CK1 CK2 CR`, a response `SOH cmd-echo data CK1 CK2 CR`; the checksum is the
byte sum from the start byte through the last data byte, mod 256, as two uppercase hex characters.

Nested frames: the device may start a command while one of its responses is still being sent. The
decoder keeps two partial buffers, one for a command and one for a response (VSCapture's approach), so
an ESC inside a response suspends the response, the command is decoded when its CR arrives, and the
response then resumes. This keeps both frames intact, whereas treating the ESC as a resync would lose
the response and force a re-request every time the device interleaves a command.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from drivers.base import LinkCounters

LOGGER = logging.getLogger(__name__)

DEFAULT_BUFFER_CAP_BYTES = 4096


class ControlByte(enum.IntEnum):
    """Bytes with a framing meaning on a MEDIBUS line."""

    SOH = 0x01
    """Starts a response."""
    ETX = 0x03
    """Ends one text-message record inside a response."""
    CR = 0x0D
    """Ends every frame."""
    XON = 0x11
    XOFF = 0x13
    ESC = 0x1B
    """Starts a command."""


REALTIME_MASK = 0x80
"""Bytes with this bit set belong to the MEDIBUS.X realtime stream, never to a slow frame."""

_FORBIDDEN_IN_PAYLOAD = frozenset(
    {ControlByte.SOH, ControlByte.CR, ControlByte.XON, ControlByte.XOFF, ControlByte.ESC}
)

EXTRA_REALTIME_BYTES = "realtime_bytes"
EXTRA_FLOW_CONTROL_BYTES = "flow_control_bytes"
_ESC, _SOH, _CR = int(ControlByte.ESC), int(ControlByte.SOH), int(ControlByte.CR)
"""Plain ints for the per-byte state machine (an IntEnum comparison costs more)."""
_OUTSIDE_FRAMES = bytes(range(REALTIME_MASK, 0x100)) + bytes((ControlByte.XON, ControlByte.XOFF))
"""Bytes no frame contains, removed from each chunk (one `bytes.translate` pass) before framing."""


def checksum(data: bytes) -> bytes:
    """Return the MEDIBUS checksum of data (start byte through last data byte) as two hex chars."""
    return b"%02X" % (sum(data) & 0xFF)


def _check_fields(*, code: int, payload: bytes) -> None:
    """Raise ValueError when code or payload cannot travel inside one frame."""
    if not 0x20 <= code <= 0x7E:
        raise ValueError(f"command code {code:#04x} is not a printable ASCII byte")
    for byte in payload:
        if byte in _FORBIDDEN_IN_PAYLOAD or byte & REALTIME_MASK:
            raise ValueError(f"payload byte {byte:#04x} cannot appear inside a MEDIBUS frame")


def _split(raw: bytes, *, start: ControlByte) -> tuple[int, bytes]:
    """Check one complete frame and return its code and payload; ValueError when invalid."""
    if len(raw) < 5 or raw[0] != start or raw[-1] != ControlByte.CR:
        raise ValueError("not a complete MEDIBUS frame")
    body, received = raw[:-3], raw[-3:-1]
    if checksum(body) != received:
        raise ValueError(f"checksum mismatch: got {received!r}, computed {checksum(body)!r}")
    code, payload = body[1], bytes(body[2:])
    _check_fields(code=code, payload=payload)
    return code, payload


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """A command frame (`ESC`): a request or a device-initiated command."""

    code: int
    """Command byte; compare with `CommandCode` members (an unknown code stays a plain int)."""
    args: bytes = b""

    def __post_init__(self) -> None:
        _check_fields(code=self.code, payload=self.args)

    def to_bytes(self) -> bytes:
        """Return the frame as sent on the wire, checksum and CR included."""
        body = bytes((ControlByte.ESC, self.code)) + self.args
        return body + checksum(body) + b"\r"

    @classmethod
    def from_bytes(cls, raw: bytes) -> Command:
        """Parse one complete command frame; ValueError when it is not one."""
        code, payload = _split(raw, start=ControlByte.ESC)
        return cls(code=code, args=payload)


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """A response frame (`SOH`): the echo of a command code followed by its data."""

    code: int
    data: bytes = b""

    def __post_init__(self) -> None:
        _check_fields(code=self.code, payload=self.data)

    def to_bytes(self) -> bytes:
        """Return the frame as sent on the wire, checksum and CR included."""
        body = bytes((ControlByte.SOH, self.code)) + self.data
        return body + checksum(body) + b"\r"

    @classmethod
    def from_bytes(cls, raw: bytes) -> Response:
        """Parse one complete response frame; ValueError when it is not one."""
        code, payload = _split(raw, start=ControlByte.SOH)
        return cls(code=code, data=payload)


Frame = Command | Response


class MedibusDecoder:
    """MEDIBUS frame decoder with XON/XOFF and realtime filtering and a capped buffer.

    Rules: XON/XOFF and realtime bytes (MSB set) are removed from each chunk before framing (counted;
    `drivers.medibus.realtime` reads the realtime ones where curves are enabled); the remaining bytes
    go through a byte-at-a-time state machine: an ESC inside a response suspends it (nested device
    command); a second SOH, or an ESC inside a command, drops the partial frame (a resync); bytes
    outside any frame are skipped (one resync per run of garbage).
    """

    def __init__(
        self, *, counters: LinkCounters | None = None, cap_bytes: int = DEFAULT_BUFFER_CAP_BYTES
    ) -> None:
        if cap_bytes < 5:
            raise ValueError("cap_bytes must hold at least one minimal frame (5 bytes)")
        self.counters = counters if counters is not None else LinkCounters()
        self.cap_bytes = cap_bytes
        self._command = bytearray()
        self._response = bytearray()
        self._in_command = False
        self._in_garbage = False

    @property
    def buffered_bytes(self) -> int:
        """Return how many bytes of partial frames the decoder holds."""
        return len(self._command) + len(self._response)

    def clear(self) -> None:
        """Forget partial frames (after a transport reopen)."""
        self._command.clear()
        self._response.clear()
        self._in_command = False
        self._in_garbage = False

    def feed(self, data: bytes) -> list[Frame]:
        """Consume received bytes and return the complete, checksum-valid frames they finished."""
        slow = data.translate(None, _OUTSIDE_FRAMES)
        if len(slow) != len(data):
            self._count_outside(data, removed=len(data) - len(slow))
        frames: list[Frame] = []
        step = self._step
        for byte in slow:
            frame = step(byte)
            if frame is not None:
                frames.append(frame)
        return frames

    def _count_outside(self, data: bytes, *, removed: int) -> None:
        """Count the flow-control and realtime bytes a chunk had."""
        flow_control = data.count(ControlByte.XON) + data.count(ControlByte.XOFF)
        self._bump_extra(EXTRA_FLOW_CONTROL_BYTES, flow_control)
        self._bump_extra(EXTRA_REALTIME_BYTES, removed - flow_control)

    def _bump_extra(self, name: str, count: int) -> None:
        if count:
            extra = self.counters.extra
            extra[name] = extra.get(name, 0) + count

    def _resync(self) -> None:
        self.counters.resyncs += 1

    def _step(self, byte: int) -> Frame | None:
        if byte == _ESC:
            self._start_command()
        elif byte == _SOH:
            self._start_response()
        else:
            target = self._command if self._in_command else self._response
            if not target:
                if not self._in_garbage:
                    self._in_garbage = True
                    self._resync()
                return None
            target.append(byte)
            if byte == _CR:
                return self._finish()
        if len(self._command) + len(self._response) > self.cap_bytes:
            self.counters.overflows += 1
            LOGGER.warning("MEDIBUS receive buffer passed %d bytes; discarded", self.cap_bytes)
            self.clear()
        return None

    def _start_command(self) -> None:
        self._in_garbage = False
        if self._command:
            self._resync()
            self._command.clear()
        self._command.append(ControlByte.ESC)
        self._in_command = True

    def _start_response(self) -> None:
        self._in_garbage = False
        if self._command or self._response:
            self._resync()
        self._command.clear()
        self._response.clear()
        self._response.append(ControlByte.SOH)
        self._in_command = False

    def _finish(self) -> Frame | None:
        raw = bytes(self._command if self._in_command else self._response)
        if self._in_command:
            self._command.clear()
            self._in_command = False
        else:
            self._response.clear()
        try:
            frame: Frame = Command.from_bytes(raw) if raw[0] == ControlByte.ESC else Response.from_bytes(raw)
        except ValueError as exc:
            self.counters.checksum_errors += 1
            LOGGER.debug("dropped MEDIBUS frame %r: %s", raw, exc)
            return None
        self.counters.frames_in += 1
        return frame
