"""IntelliVue MIB/RS232 framing, sans-I/O: PPP FCS-16, byte stuffing and a resyncing stream decoder.

A frame is `C0` | escaped(header `11 01 u16 length` ‖ user data ‖ FCS low byte, high byte) | `C1`.
`C0`, `C1` and `7D` inside it travel as `7D` + (byte XOR `20`), the FCS bytes included; `7D C1` aborts
the frame. The FCS is RFC 1662's FCS-16 (CRC-16/X-25) over header + user data before escaping.

Speed: the decoder scans each chunk with `bytes.find`, unescapes with `split`, and computes the FCS
with `binascii.crc_hqx` on bit-reversed bytes (a reflected CRC is the bit-mirror of the plain one on
mirrored input), so no Python code runs per byte.

On the LAN there is no framing: one message per UDP datagram (see `drivers.intellivue.session`).
"""

from __future__ import annotations

import binascii
import logging
import struct

from drivers.base import LinkCounters

LOGGER = logging.getLogger(__name__)

BOF = 0xC0
EOF = 0xC1
ESC = 0x7D
ESC_XOR = 0x20
PROTOCOL_ID = 0x11
MSG_TYPE = 0x01
HEADER = struct.Struct(">BBH")
DEFAULT_BUFFER_CAP_BYTES = 16 * 1024
"""Largest escaped frame we hold: a serial poll reply is at most ~1.5 kB of user data (the client's
max_mtu_rx), which doubles at worst when escaped."""

EXTRA_ABORTS = "frame_aborts"
EXTRA_BAD_HEADERS = "bad_headers"

_BITREV = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
_BOF_BYTES = bytes((BOF,))
_EOF_BYTES = bytes((EOF,))
_ESC_BYTES = bytes((ESC,))


def _reverse16(value: int) -> int:
    return int(f"{value:016b}"[::-1], 2)


def fcs16(data: bytes) -> int:
    """Return the PPP FCS-16 (CRC-16/X-25) of data: reflected 0x1021, init FFFF, one's complement."""
    return _reverse16(binascii.crc_hqx(data.translate(_BITREV), 0xFFFF)) ^ 0xFFFF


def escape(data: bytes) -> bytes:
    """Return data with C0, C1 and 7D stuffed as 7D + byte XOR 20."""
    return data.replace(b"\x7d", b"\x7d\x5d").replace(b"\xc0", b"\x7d\xe0").replace(b"\xc1", b"\x7d\xe1")


def unescape(data: bytes) -> bytes:
    """Undo the stuffing; ValueError on a 7D with nothing (or another 7D) after it."""
    if ESC not in data:
        return data
    parts = data.split(_ESC_BYTES)
    out = bytearray(parts[0])
    for part in parts[1:]:
        if not part:
            raise ValueError("7D escape without a following byte")
        out.append(part[0] ^ ESC_XOR)
        out += part[1:]
    return bytes(out)


def encode_frame(user_data: bytes) -> bytes:
    """Return user data as one wire frame: BOF, escaped header + data + FCS (low byte first), EOF."""
    if len(user_data) > 0xFFFF:
        raise ValueError(f"user data of {len(user_data)} bytes does not fit a 16-bit length")
    body = HEADER.pack(PROTOCOL_ID, MSG_TYPE, len(user_data)) + user_data
    fcs = fcs16(body)
    return _BOF_BYTES + escape(body + bytes((fcs & 0xFF, fcs >> 8))) + _EOF_BYTES


def decode_body(body: bytes) -> bytes:
    """Check one unescaped frame body (header + data + FCS) and return its user data; ValueError if bad."""
    if len(body) < HEADER.size + 2:
        raise ValueError(f"frame of {len(body)} bytes is shorter than header + FCS")
    received = body[-2] | (body[-1] << 8)
    computed = fcs16(body[:-2])
    if received != computed:
        raise ValueError(f"FCS mismatch: got {received:#06x}, computed {computed:#06x}")
    protocol, msg_type, length = HEADER.unpack_from(body)
    if protocol != PROTOCOL_ID or msg_type != MSG_TYPE or length != len(body) - HEADER.size - 2:
        raise ValueError(f"bad header {body[:4].hex()} for {len(body) - HEADER.size - 2} bytes of data")
    return body[HEADER.size : -2]


class FrameDecoder:
    """Streaming decoder of the serial framing: resyncs on BOF, caps its buffer, counts what it drops.

    Rules: bytes outside a frame are skipped (one resync per run); a BOF inside a frame drops the
    partial frame (a resync); `7D C1` aborts the frame (counted in `frame_aborts`); a frame with a bad
    FCS is dropped and counted in `checksum_errors`; a frame whose header does not match its length is
    dropped and counted in `bad_headers`; a frame longer than the cap is discarded (`overflows`),
    whether it arrives in one read or in many.
    """

    def __init__(
        self, *, counters: LinkCounters | None = None, cap_bytes: int = DEFAULT_BUFFER_CAP_BYTES
    ) -> None:
        if cap_bytes < 8:
            raise ValueError("cap_bytes must hold at least one minimal frame (8 bytes)")
        self.counters = counters if counters is not None else LinkCounters()
        self.cap_bytes = cap_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._in_garbage = False

    @property
    def buffered_bytes(self) -> int:
        """Return how many bytes of a partial frame the decoder holds."""
        return len(self._buffer)

    def clear(self) -> None:
        """Forget the partial frame (after a transport reopen)."""
        self._buffer.clear()
        self._in_frame = False
        self._in_garbage = False

    def _bump_extra(self, name: str) -> None:
        self.counters.extra[name] = self.counters.extra.get(name, 0) + 1

    def feed(self, data: bytes) -> list[bytes]:
        """Consume received bytes and return the user data of each complete, FCS-valid frame."""
        messages: list[bytes] = []
        view = bytes(data)
        pos = 0
        while pos < len(view):
            if not self._in_frame:
                start = view.find(_BOF_BYTES, pos)
                if start < 0:
                    self._note_garbage()
                    return messages
                if start > pos:
                    self._note_garbage()
                self._in_garbage = False
                self._in_frame = True
                pos = start + 1
                continue
            end = view.find(_EOF_BYTES, pos)
            stop = len(view) if end < 0 else end
            restart = view.find(_BOF_BYTES, pos, stop)
            if restart >= 0:
                self.counters.resyncs += 1
                self._buffer.clear()
                pos = restart + 1
                continue
            self._buffer += view[pos:stop]
            if len(self._buffer) > self.cap_bytes:
                self.counters.overflows += 1
                LOGGER.warning("IntelliVue receive buffer passed %d bytes; discarded", self.cap_bytes)
                self._buffer.clear()
                self._in_frame = False
                self._in_garbage = end < 0
                if end < 0:
                    return messages
                pos = end + 1
                continue
            if end < 0:
                return messages
            pos = end + 1
            self._in_frame = False
            message = self._finish()
            if message is not None:
                messages.append(message)
        return messages

    def _note_garbage(self) -> None:
        if not self._in_garbage:
            self._in_garbage = True
            self.counters.resyncs += 1

    def _finish(self) -> bytes | None:
        raw = bytes(self._buffer)
        self._buffer.clear()
        if raw.endswith(_ESC_BYTES):
            self._bump_extra(EXTRA_ABORTS)
            return None
        try:
            body = unescape(raw)
            if len(body) < HEADER.size + 2:
                raise ValueError("short frame")
        except ValueError as exc:
            self.counters.checksum_errors += 1
            LOGGER.debug("dropped IntelliVue frame %s: %s", raw[:16].hex(), exc)
            return None
        received = body[-2] | (body[-1] << 8)
        if received != fcs16(body[:-2]):
            self.counters.checksum_errors += 1
            LOGGER.debug("dropped IntelliVue frame %s: FCS mismatch", raw[:16].hex())
            return None
        try:
            message = decode_body(body)
        except ValueError as exc:
            self._bump_extra(EXTRA_BAD_HEADERS)
            LOGGER.debug("dropped IntelliVue frame %s: %s", raw[:16].hex(), exc)
            return None
        self.counters.frames_in += 1
        return message
