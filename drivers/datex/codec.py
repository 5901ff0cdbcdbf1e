"""S/5 computer interface (DRI) link layer, sans-I/O: records, checksum, escaping, a resyncing decoder.

A frame is `7E` + escaped(record ‖ checksum) + `7E`; escaping replaces `7E` with `7D 5E` and `7D` with
`7D 5D`; the checksum is the 8-bit sum of the unescaped record bytes. A record is a 40-byte
little-endian header (`RecordHeader`) followed by up to 1450 data bytes.

We write the checksum escaped like every other byte. VSCapture's writer does not escape it and sums
the *escaped* bytes of the record; the decoder accepts that variant too (a dangling `7D` as the last
byte, the sum over the wire bytes) and counts it, so a simulator can serve a VSCapture-style client.

The decoder scans whole chunks: it splits on the flag with `bytes.find` and unescapes with
`bytes.split`, never a Python step per byte. Its buffer holds at most one escaped maximal frame.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field

from drivers.base import LinkCounters
from drivers.datex.codes import END_OF_SUBRECORDS

LOGGER = logging.getLogger(__name__)

FLAG = 0x7E
ESCAPE = 0x7D
_FLAG_BYTES = b"\x7e"
_ESCAPE_BYTES = b"\x7d"

HEADER_BYTES = 40
MAX_RECORD_BYTES = 1490
"""Header plus 1450 data bytes (VSCapture's receive buffer type)."""
MAX_ESCAPED_BODY_BYTES = 2 * (MAX_RECORD_BYTES + 1)
"""The longest frame body (record and checksum, every byte escaped) between two flags."""
SUBRECORD_SLOTS = 8

EXTRA_CHECKSUM_VARIANT = "vscapture_checksum_frames"
"""Frames accepted with VSCapture's checksum (sum of escaped bytes, unescaped checksum byte)."""
EXTRA_BAD_ESCAPES = "bad_escapes"
"""Frames dropped because a `7D` was followed by something other than `5D`/`5E`."""
EXTRA_BAD_LENGTHS = "bad_record_lengths"
"""Frames dropped because the record was shorter than a header or longer than 1490 bytes."""


class FrameError(ValueError):
    """A frame body that is no valid record; the subclass says which counter it belongs to."""


class ChecksumError(FrameError):
    """The checksum does not match (either the standard sum or VSCapture's)."""


class EscapeError(FrameError):
    """A `7D` followed by something other than `5D` or `5E`."""


class RecordLengthError(FrameError):
    """Shorter than a header or longer than 1490 bytes."""


_HEADER = struct.Struct("<hBBHIBBHh" + "hB" * SUBRECORD_SLOTS)
assert _HEADER.size == HEADER_BYTES


def checksum(record: bytes) -> int:
    """Return the DRI checksum of an unescaped record: the sum of its bytes mod 256."""
    return sum(record) & 0xFF


def escape(data: bytes) -> bytes:
    """Escape flag and escape bytes (`7E` -> `7D 5E`, `7D` -> `7D 5D`)."""
    return data.replace(_ESCAPE_BYTES, b"\x7d\x5d").replace(_FLAG_BYTES, b"\x7d\x5e")


def unescape(body: bytes) -> bytes:
    """Undo `escape`; ValueError on a `7D` not followed by `5D` or `5E`."""
    if _ESCAPE_BYTES not in body:
        return body
    parts = body.split(_ESCAPE_BYTES)
    out = bytearray(parts[0])
    for part in parts[1:]:
        if not part or part[0] not in (0x5D, 0x5E):
            raise EscapeError("escape byte 7D not followed by 5D or 5E")
        out.append(part[0] ^ 0x20)
        out += part[1:]
    return bytes(out)


def encode_frame(record: bytes) -> bytes:
    """Return the frame for an unescaped record: flags, escaped record and escaped checksum."""
    if not HEADER_BYTES <= len(record) <= MAX_RECORD_BYTES:
        raise ValueError(f"a record holds {HEADER_BYTES}..{MAX_RECORD_BYTES} bytes, got {len(record)}")
    return b"\x7e" + escape(record + bytes((checksum(record),))) + b"\x7e"


@dataclass(frozen=True, slots=True, kw_only=True)
class SubrecordDescriptor:
    """One entry of the header's subrecord list: where (offset from the data start) and what."""

    offset: int
    type: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordHeader:
    """The 40-byte little-endian record header (`datex_hdr_type`)."""

    r_len: int
    """Total record length including the header, as the sender wrote it (iCollect's wave request
    says 88 for 90 bytes: it is reported, not enforced)."""
    maintype: int
    dri_level: int = 0
    r_nbr: int = 0
    plug_id: int = 0
    r_time: int = 0
    """Unix seconds on the sender's clock (0 when the sender does not say)."""
    n_subnet: int = 0
    subrecords: tuple[SubrecordDescriptor, ...] = field(default=())
    """The descriptors before the end-of-list entry (at most 8)."""

    def __post_init__(self) -> None:
        if len(self.subrecords) > SUBRECORD_SLOTS:
            raise ValueError(f"a header lists at most {SUBRECORD_SLOTS} subrecords")

    def to_bytes(self) -> bytes:
        """Return the 40 header bytes; unused descriptor slots after the end marker are zero."""
        slots: list[int] = []
        for descriptor in self.subrecords:
            slots += (descriptor.offset, descriptor.type)
        if len(self.subrecords) < SUBRECORD_SLOTS:
            slots += (0, END_OF_SUBRECORDS)
        slots += (0, 0) * (SUBRECORD_SLOTS - len(slots) // 2)
        return _HEADER.pack(
            self.r_len,
            self.r_nbr,
            self.dri_level,
            self.plug_id,
            self.r_time,
            self.n_subnet,
            0,
            0,
            self.maintype,
            *slots,
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> RecordHeader:
        """Parse the first 40 bytes of raw; ValueError when raw is shorter."""
        if len(raw) < HEADER_BYTES:
            raise ValueError(f"a record header has {HEADER_BYTES} bytes, got {len(raw)}")
        fields = _HEADER.unpack_from(raw)
        r_len, r_nbr, level, plug_id, r_time, n_subnet, _, _, maintype = fields[:9]
        descriptors: list[SubrecordDescriptor] = []
        slots = fields[9:]
        for index in range(SUBRECORD_SLOTS):
            offset, kind = slots[2 * index], slots[2 * index + 1]
            if kind == END_OF_SUBRECORDS:
                break
            descriptors.append(SubrecordDescriptor(offset=offset, type=kind))
        return cls(
            r_len=r_len,
            maintype=maintype,
            dri_level=level,
            r_nbr=r_nbr,
            plug_id=plug_id,
            r_time=r_time,
            n_subnet=n_subnet,
            subrecords=tuple(descriptors),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One DRI record: header and data (the bytes after the header)."""

    header: RecordHeader
    data: bytes

    def to_bytes(self) -> bytes:
        """Return the unescaped record bytes."""
        return self.header.to_bytes() + self.data

    def to_frame(self) -> bytes:
        """Return the record as a frame on the wire."""
        return encode_frame(self.to_bytes())

    def subrecord(self, index: int) -> bytes:
        """Return the data of the index-th listed subrecord (to the next one's offset or the end)."""
        descriptors = self.header.subrecords
        start = descriptors[index].offset
        ends = [d.offset for d in descriptors if d.offset > start]
        end = min(ends) if ends else len(self.data)
        if not 0 <= start <= len(self.data):
            return b""
        return self.data[start:end]

    @classmethod
    def from_bytes(cls, raw: bytes) -> Record:
        """Parse one unescaped record (without checksum); ValueError when it cannot be one."""
        if not HEADER_BYTES <= len(raw) <= MAX_RECORD_BYTES:
            raise RecordLengthError(
                f"a record holds {HEADER_BYTES}..{MAX_RECORD_BYTES} bytes, got {len(raw)}"
            )
        return cls(header=RecordHeader.from_bytes(raw), data=bytes(raw[HEADER_BYTES:]))


def decode_body(body: bytes, *, counters: LinkCounters | None = None) -> Record:
    """Check and parse one frame body (the bytes between two flags); ValueError when invalid.

    The VSCapture variant is tried only when the standard check fails; it differs from the standard
    only for records that contain escaped bytes, so it cannot pass a body without `7D` that failed.
    """
    try:
        raw: bytes | None = unescape(body)
    except EscapeError:
        raw = None
    if raw is not None and len(raw) > 1 and checksum(raw[:-1]) == raw[-1]:
        return Record.from_bytes(raw[:-1])
    wire, received = body[:-1], body[-1:]
    if _ESCAPE_BYTES in body and received and checksum(wire) == received[0]:
        record = Record.from_bytes(unescape(wire))
        if counters is not None:
            extra = counters.extra
            extra[EXTRA_CHECKSUM_VARIANT] = extra.get(EXTRA_CHECKSUM_VARIANT, 0) + 1
        return record
    if raw is None:
        raise EscapeError("escape byte 7D not followed by 5D or 5E")
    raise ChecksumError("checksum mismatch")


class DatexDecoder:
    """Stream decoder: flag framing with resync, checksum check, a capped buffer, counters.

    Bytes before the first flag are skipped (one resync per run); an empty body (two flags in a row,
    the closing flag of one frame and the opening flag of the next) is normal; a body shorter than a
    header counts as a resync, a longer bad one as a checksum error; a body that outgrows an escaped
    maximal frame is discarded (an overflow) and the decoder waits for the next flag.
    """

    def __init__(
        self, *, counters: LinkCounters | None = None, cap_bytes: int = MAX_ESCAPED_BODY_BYTES
    ) -> None:
        if cap_bytes < HEADER_BYTES + 1:
            raise ValueError("cap_bytes must hold at least one minimal frame body (41 bytes)")
        self.counters = counters if counters is not None else LinkCounters()
        self.cap_bytes = cap_bytes
        self._body = bytearray()
        self._synced = False
        self._in_garbage = False

    @property
    def buffered_bytes(self) -> int:
        """Return how many bytes of a partial frame the decoder holds."""
        return len(self._body)

    def clear(self) -> None:
        """Forget a partial frame and wait for the next flag (after a transport reopen)."""
        self._body.clear()
        self._synced = False
        self._in_garbage = False

    def feed(self, data: bytes) -> list[Record]:
        """Consume received bytes and return the complete, checksum-valid records they finished."""
        records: list[Record] = []
        pos, end = 0, len(data)
        while pos < end:
            flag = data.find(_FLAG_BYTES, pos)
            if flag < 0:
                self._take(data, pos, end)
                break
            if self._synced:
                self._take(data, pos, flag)
                if self._synced:
                    record = self._finish()
                    if record is not None:
                        records.append(record)
            elif flag > pos and not self._in_garbage:
                self.counters.resyncs += 1
            self._synced = True
            self._in_garbage = False
            pos = flag + 1
        return records

    def _take(self, data: bytes, start: int, stop: int) -> None:
        """Append data[start:stop] to the partial body (or skip it as garbage while unsynced)."""
        if start >= stop:
            return
        if not self._synced:
            if not self._in_garbage:
                self._in_garbage = True
                self.counters.resyncs += 1
            return
        if len(self._body) + stop - start > self.cap_bytes:
            self.counters.overflows += 1
            LOGGER.warning("DRI receive buffer passed %d bytes without a flag; discarded", self.cap_bytes)
            self._body.clear()
            self._synced = False
            self._in_garbage = True
            return
        self._body += data[start:stop]

    def _finish(self) -> Record | None:
        body = bytes(self._body)
        self._body.clear()
        if not body:
            return None
        if len(body) <= HEADER_BYTES:
            self.counters.resyncs += 1
            return None
        try:
            record = decode_body(body, counters=self.counters)
        except FrameError as exc:
            if isinstance(exc, RecordLengthError):
                self._bump(EXTRA_BAD_LENGTHS)
            elif isinstance(exc, EscapeError):
                self._bump(EXTRA_BAD_ESCAPES)
            else:
                self.counters.checksum_errors += 1
            LOGGER.debug("dropped DRI frame body of %d bytes: %s", len(body), exc)
            return None
        self.counters.frames_in += 1
        return record

    def _bump(self, name: str) -> None:
        extra = self.counters.extra
        extra[name] = extra.get(name, 0) + 1
