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
import re
import zlib
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

_FORBIDDEN_IN_PAYLOAD = re.compile(rb"[\x01\x0d\x11\x13\x1b\x80-\xff]")
"""SOH, CR, XON, XOFF, ESC and every realtime byte: none of them can travel inside a frame."""

EXTRA_REALTIME_BYTES = "realtime_bytes"
EXTRA_FLOW_CONTROL_BYTES = "flow_control_bytes"
_ESC, _SOH, _CR = int(ControlByte.ESC), int(ControlByte.SOH), int(ControlByte.CR)
"""Plain ints for the decoder's inner loop (an IntEnum comparison costs more)."""
_OUTSIDE_FRAMES = bytes(range(REALTIME_MASK, 0x100)) + bytes((ControlByte.XON, ControlByte.XOFF))
"""Bytes no frame contains, removed from each chunk (one `bytes.translate` pass) before framing."""
_PIECES = re.compile(rb"[\x01\x1b]?[^\x01\x1b\r]*\r?")
"""What the decoder walks instead of bytes: an optional start byte, the bytes up to the next framing
byte, and the CR if that is the next one. A whole frame is one piece; the empty match at the end is not
a piece."""
_HEX = tuple(b"%02X" % value for value in range(0x100))
_ADLER_EXACT_BYTES = 515
"""Up to this length a frame's Adler-32 `A` half is 1 + its byte sum exactly (bytes < 0x80 after the
translate: 127 x 515 + 1 < 65521), so `zlib.adler32` gives the checksum sum at C speed."""


def checksum(data: bytes) -> bytes:
    """Return the MEDIBUS checksum of data (start byte through last data byte) as two hex chars."""
    return _HEX[sum(data) & 0xFF]


def _check_fields(*, code: int, payload: bytes) -> None:
    """Raise ValueError when code or payload cannot travel inside one frame."""
    if not 0x20 <= code <= 0x7E:
        raise ValueError(f"command code {code:#04x} is not a printable ASCII byte")
    bad = _FORBIDDEN_IN_PAYLOAD.search(payload)
    if bad is not None:
        raise ValueError(f"payload byte {bad[0][0]:#04x} cannot appear inside a MEDIBUS frame")


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

_new_frame = object.__new__
_set_field = object.__setattr__


def _decoded_frame(raw: bytes) -> Frame | None:
    """Return the frame a piece the decoder assembled holds, None when it is not a valid one.

    The decoder's pieces can only hold payload bytes a frame may carry (the framing and realtime bytes
    were split off), so only the length, the checksum and the code remain to check: the frame is built
    without `__post_init__` checking its payload again, the one cost that would be per byte.
    """
    size = len(raw)
    if size < 5 or not 0x20 <= raw[1] <= 0x7E:
        return None
    if size <= _ADLER_EXACT_BYTES:
        total = (zlib.adler32(raw) & 0xFFFF) - 1 - raw[-3] - raw[-2] - _CR
    else:
        total = sum(raw) - raw[-3] - raw[-2] - _CR
    if _HEX[total & 0xFF] != raw[-3:-1]:
        return None
    frame: Frame
    if raw[0] == _ESC:
        frame = _new_frame(Command)
        _set_field(frame, "args", raw[2:-3])
    else:
        frame = _new_frame(Response)
        _set_field(frame, "data", raw[2:-3])
    _set_field(frame, "code", raw[1])
    return frame


class MedibusDecoder:
    """MEDIBUS frame decoder with XON/XOFF and realtime filtering and a capped buffer.

    Rules: XON/XOFF and realtime bytes (MSB set) are removed from each chunk before framing (counted;
    `drivers.medibus.realtime` reads the realtime ones where curves are enabled); the remaining bytes
    are framed as by a byte-at-a-time state machine: an ESC inside a response suspends it (nested
    device command); a second SOH, or an ESC inside a command, drops the partial frame (a resync); bytes
    outside any frame are skipped (one resync per run of garbage); a partial frame that passes
    `cap_bytes` is discarded (an overflow). The frames and counters do not depend on how the stream is
    split into `feed` calls.

    Speed: the chunk is cut into pieces (`_PIECES`, one regex pass) and a whole frame arriving while no
    frame is pending is decoded from its piece directly, checksum at C speed; only pieces that continue
    or interrupt a pending frame go through the buffers (`_absorb`). A one-byte feed of a payload byte
    into a pending frame is appended without cutting anything.
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
        if len(data) == 1 and 0x20 <= data[0] < REALTIME_MASK:
            target = self._command if self._in_command else self._response
            if target and len(self._command) + len(self._response) < self.cap_bytes:
                target.append(data[0])
                return []
        slow = data.translate(None, _OUTSIDE_FRAMES)
        if len(slow) != len(data):
            self._count_outside(data, removed=len(data) - len(slow))
        frames: list[Frame] = []
        limit = self.cap_bytes + 1
        for piece in _PIECES.findall(slow):
            if (
                not self._command
                and not self._response
                and piece[-1:] == b"\r"
                and (piece[0] == _ESC or piece[0] == _SOH)
                and len(piece) <= limit
            ):
                self._in_garbage = False
                frame = _decoded_frame(piece)
                if frame is None:
                    self._reject(piece)
                else:
                    self.counters.frames_in += 1
                    frames.append(frame)
            elif piece:
                self._absorb(piece, frames)
        return frames

    def _absorb(self, piece: bytes, frames: list[Frame]) -> None:
        """Apply one piece to the partial frames, exactly as the byte-at-a-time rules would."""
        first = piece[0]
        if first == _ESC:
            self._in_garbage = False
            if self._command:
                self._resync()
                self._command.clear()
            self._in_command = True
            target, other = self._command, self._response
        elif first == _SOH:
            self._in_garbage = False
            if self._command or self._response:
                self._resync()
            self._command.clear()
            self._response.clear()
            self._in_command = False
            target, other = self._response, self._command
        else:
            target, other = (
                (self._command, self._response) if self._in_command else (self._response, self._command)
            )
            if not target:
                if not self._in_garbage:
                    self._in_garbage = True
                    self._resync()
                return
        ends_frame = piece[-1] == _CR
        room = self.cap_bytes - len(target) - len(other)
        if len(piece) - ends_frame > room:
            self.counters.overflows += 1
            LOGGER.warning("MEDIBUS receive buffer passed %d bytes; discarded", self.cap_bytes)
            self.clear()
            if len(piece) > room + 1:
                self._in_garbage = True
                self._resync()
            return
        target += piece
        if ends_frame:
            raw = bytes(target)
            target.clear()
            self._in_command = False
            frame = _decoded_frame(raw)
            if frame is None:
                self._reject(raw)
            else:
                self.counters.frames_in += 1
                frames.append(frame)

    def _reject(self, raw: bytes) -> None:
        """Count a complete frame that is not valid, and log why at debug level."""
        self.counters.checksum_errors += 1
        try:
            Command.from_bytes(raw) if raw[0] == _ESC else Response.from_bytes(raw)
        except ValueError as exc:
            LOGGER.debug("dropped MEDIBUS frame %r: %s", raw, exc)

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
