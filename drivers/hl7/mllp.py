"""MLLP framer, sans-I/O: `0B` + HL7 message + `1C 0D`, with resync and a bounded buffer.

Scans whole chunks with `bytes.find` (never a Python step per byte). Policies:
- bytes outside a block are skipped and counted (`junk_bytes`; CR/LF between blocks is not junk);
- a `0B` inside an open block means the sender started over (its end was lost): the partial block is
  dropped and counted (`truncated_blocks`), the new block begins;
- a block that grows past `max_block_bytes` is not kept: the framer remembers only its head (enough
  for the MSH segment, so the receiver can still answer with the original control id) and discards
  the rest up to its end, then reports it as `Oversized`. The buffer never holds more than
  `max_block_bytes` + 1 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
_FS = 0x1C
_CR = 0x0D
_BLANK = b"\r\n \t"
DEFAULT_MAX_BLOCK_BYTES = 64 * 1024
"""Largest HL7 message accepted in one MLLP block; a monitor's ORU^R01 is a few kilobytes."""
HEAD_KEEP_BYTES = 1024
"""How much of an oversized block is kept (its MSH segment, for the refusal's control id)."""


def wrap(message: bytes) -> bytes:
    """Return message in an MLLP block."""
    return START_BLOCK + message + END_BLOCK


@dataclass(frozen=True, slots=True)
class Block:
    """One complete MLLP block's content (the HL7 message bytes)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Oversized:
    """A block longer than the limit: only its head was kept."""

    head: bytes
    size: int
    """Length of the refused block's content in bytes."""


@dataclass(slots=True)
class MllpCounters:
    """What the framer saw and threw away."""

    blocks: int = 0
    junk_bytes: int = 0
    truncated_blocks: int = 0
    oversized_blocks: int = 0


class MllpFramer:
    """Split a byte stream into MLLP blocks (one framer per connection)."""

    def __init__(self, *, max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES) -> None:
        if max_block_bytes < HEAD_KEEP_BYTES:
            raise ValueError(f"max_block_bytes must be at least {HEAD_KEEP_BYTES}")
        self.max_block_bytes = max_block_bytes
        self.counters = MllpCounters()
        self._in_block = False
        self._buffer = bytearray()
        self._discarding = False
        self._discarded = 0
        self._head = b""
        self._fs_pending = False
        """The last byte taken into the open block was FS (0x1C): a CR next ends the block."""

    @property
    def buffered_bytes(self) -> int:
        """Return how many bytes the framer holds (for the bound checks)."""
        return len(self._buffer)

    @property
    def in_block(self) -> bool:
        """Return whether a block has started and not ended."""
        return self._in_block

    def feed(self, data: bytes) -> list[Block | Oversized]:
        """Take received bytes; return the blocks they complete, in order."""
        out: list[Block | Oversized] = []
        pos, size = 0, len(data)
        while pos < size:
            if not self._in_block:
                start = data.find(START_BLOCK, pos)
                stop = size if start < 0 else start
                if stop > pos:
                    self.counters.junk_bytes += len(data[pos:stop].strip(_BLANK))
                if start < 0:
                    break
                self._open()
                pos = start + 1
                continue
            if self._fs_pending:
                self._fs_pending = False
                if data[pos] == _CR:
                    out.append(self._close(drop_last=1))
                    pos += 1
                    continue
            end = data.find(END_BLOCK, pos)
            limit = size if end < 0 else end
            restart = data.find(START_BLOCK, pos, limit)
            if restart >= 0:
                self.counters.truncated_blocks += 1
                self._open()
                pos = restart + 1
                continue
            self._take(data[pos:limit])
            if end < 0:
                self._fs_pending = data[size - 1] == _FS
                break
            out.append(self._close(drop_last=0))
            pos = end + len(END_BLOCK)
        return out

    def _open(self) -> None:
        self._in_block = True
        self._buffer.clear()
        self._discarding = False
        self._discarded = 0
        self._head = b""
        self._fs_pending = False

    def _take(self, chunk: bytes) -> None:
        if self._discarding:
            self._discarded += len(chunk)
            return
        if len(self._buffer) + len(chunk) <= self.max_block_bytes + 1:
            # One byte over the limit may be the FS of an end split across two reads.
            self._buffer += chunk
            return
        self._discarding = True
        self._head = (
            bytes(self._buffer[:HEAD_KEEP_BYTES]) + chunk[: max(0, HEAD_KEEP_BYTES - len(self._buffer))]
        )
        self._discarded = len(self._buffer) + len(chunk)
        self._buffer.clear()

    def _close(self, *, drop_last: int) -> Block | Oversized:
        self._in_block = False
        if self._discarding:
            self._discarding = False
            self.counters.oversized_blocks += 1
            return Oversized(head=self._head, size=self._discarded - drop_last)
        payload = bytes(self._buffer[: len(self._buffer) - drop_last])
        self._buffer.clear()
        if len(payload) > self.max_block_bytes:
            self.counters.oversized_blocks += 1
            return Oversized(head=payload[:HEAD_KEEP_BYTES], size=len(payload))
        self.counters.blocks += 1
        return Block(payload=payload)
