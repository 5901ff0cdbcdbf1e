"""A recording of a serial line, both directions, as JSON Lines (sans-I/O: no files, no clock).

Line 1 is the header, a JSON object: `{"format": "icu-edge-recording", "version": 1, "created": ISO
time, "port": ..., "line": {"baud", "bytesize", "parity", "stopbits"}, "note": ...}`. Every further
line is one chunk as it crossed the line: `{"t": seconds since the recording began (monotonic),
"dir": "device" (device -> host) or "host" (host -> device), "b": base64 of the bytes}`.

The reader is tolerant of the end of a file, where a recorder killed mid-write leaves half a line:
a chunk line that does not parse is skipped and counted, never raised. A header that is not ours is
a clear error (`RecordingError`), because then nothing after it can be trusted to be a recording.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

FORMAT_NAME = "icu-edge-recording"
FORMAT_VERSION = 1

Direction = Literal["device", "host"]
DIRECTIONS: tuple[Direction, ...] = ("device", "host")


class RecordingError(Exception):
    """The file is not a recording this version can read (bad or missing header)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordingHeader:
    """What the first line says: when, which port, which line settings, and a free note."""

    created: str
    port: str
    baud: int
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    note: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    """Bytes that crossed the line in one direction, `offset_s` after the recording began."""

    offset_s: float
    direction: Direction
    data: bytes


@dataclass(slots=True, kw_only=True)
class Recording:
    """A read recording: its header, its chunks in file order, and how many lines were skipped."""

    header: RecordingHeader
    chunks: list[Chunk] = field(default_factory=list)
    skipped_lines: int = 0

    def bytes_in(self, direction: Direction) -> int:
        """Return how many bytes went in direction."""
        return sum(len(chunk.data) for chunk in self.chunks if chunk.direction == direction)


def header_line(header: RecordingHeader) -> str:
    """Return the header as one line (with its newline)."""
    body = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "created": header.created,
        "port": header.port,
        "line": {
            "baud": header.baud,
            "bytesize": header.bytesize,
            "parity": header.parity,
            "stopbits": header.stopbits,
        },
        "note": header.note,
    }
    return json.dumps(body, separators=(",", ":")) + "\n"


def chunk_line(chunk: Chunk) -> str:
    """Return one chunk as one line (with its newline)."""
    if chunk.direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {chunk.direction!r}")
    encoded = base64.b64encode(chunk.data).decode("ascii")
    return json.dumps({"t": round(chunk.offset_s, 6), "dir": chunk.direction, "b": encoded}) + "\n"


def parse_header(line: str) -> RecordingHeader:
    """Return the header of line 1; raise RecordingError saying what is wrong."""
    try:
        body = json.loads(line)
    except ValueError as exc:
        raise RecordingError(f"line 1 is not a recording header (not JSON: {exc})") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
        raise RecordingError(f'line 1 is not a recording header (no "format": "{FORMAT_NAME}")')
    if body.get("version") != FORMAT_VERSION:
        raise RecordingError(
            f"recording format version {body.get('version')!r}, this reader knows {FORMAT_VERSION}"
        )
    settings = body.get("line")
    if not isinstance(settings, dict):
        raise RecordingError('line 1: recording header has no "line" settings')
    try:
        return RecordingHeader(
            created=str(body["created"]),
            port=str(body["port"]),
            baud=int(settings["baud"]),
            bytesize=int(settings["bytesize"]),
            parity=str(settings["parity"]),
            stopbits=float(settings["stopbits"]),
            note=str(body.get("note", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordingError(f"line 1: recording header incomplete or malformed ({exc!r})") from exc


def parse_chunk(line: str) -> Chunk | None:
    """Return the chunk on line, or None when the line is not a whole, valid chunk."""
    try:
        body = json.loads(line)
        if not isinstance(body, dict):
            return None
        offset_s = body["t"]
        direction = body["dir"]
        if isinstance(offset_s, bool) or not isinstance(offset_s, int | float) or not math.isfinite(offset_s):
            return None
        if direction not in DIRECTIONS or not isinstance(body["b"], str):
            return None
        data = base64.b64decode(body["b"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    return Chunk(offset_s=float(offset_s), direction=direction, data=data)


def read_recording(lines: Iterable[str]) -> Recording:
    """Read a recording from its lines; raise RecordingError for a bad header, skip bad chunk lines."""
    iterator = iter(lines)
    first = next(iterator, None)
    if first is None:
        raise RecordingError("empty file: no recording header")
    recording = Recording(header=parse_header(first))
    for line in iterator:
        if not line.strip():
            continue
        chunk = parse_chunk(line)
        if chunk is None:
            recording.skipped_lines += 1
        else:
            recording.chunks.append(chunk)
    return recording
