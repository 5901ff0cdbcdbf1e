"""MEDIBUS.X realtime curves, sans-I/O: curve configuration records, sync commands, the sample decoder.

Wire facts (protocol notes §2.6, VSCaptureDrgVent `Class1.cs`/`Class2.cs`, OpenICE `RTMedibus.java`):
- The realtime stream shares the line with slow-data frames; every realtime byte has its MSB set, no
  slow-data byte has, so the two are separated before framing: one C-speed `bytes.translate` pass over
  the whole chunk each (`realtime_part` here, `MedibusDecoder.feed` for the slow data).
- A cycle starts with a sync byte `D0 | mask` (low nibble: which of data streams 1-4 carry a sample in
  this cycle). Sync commands `C0`-`CF` follow, each with one argument: `C4`/`C5` give the mask of streams
  5-8 / 9-12, `C6 C0` / `C6 C1` mark the start of inspiration / expiration, `CF` marks the cycle's data
  corrupt. Then one sample per present stream, in stream order: two bytes `10xxxxxx`, low six bits first,
  `raw = (b0 & 3F) | (b1 & 3F) << 6`; value = raw / maxbin * (max - min) + min.
- Streams are numbered in the order the host named the curves in its configure command (`1B 54`,
  per curve 2 hex code + 2-digit multiplier); the host enables them with raw, unframed sync bytes
  (`D0 C1 <C0|mask> C0 C0`).
- A configuration-response record (`1B 53`) is 23 characters: 2 hex curve code, 8-char sample interval
  (microseconds), 5-char minimum, 5-char maximum, 3 hex characters max binary value.

Assumption (not in our sources): the multiplier stretches a curve's sample interval (a curve with
multiplier m is present in every m-th cycle), so its sample period is interval x m.

The decoder works on whole chunks with numpy (no Python step per byte). A cycle is decoded when the
next sync byte arrives; a cycle that is malformed (sample count not matching its mask, a lone sync
command, a byte outside the realtime alphabet, marked corrupt, or longer than `MAX_CYCLE_BYTES`) gives
NaN for each stream its sync byte names, so the sample count still follows the time; it is counted,
never raised. What the decoder holds between calls is bounded (`max_buffered_bytes`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from drivers.base import LinkCounters

LOGGER = logging.getLogger(__name__)

SYNC_BYTE = 0xD0
SYNC_MASK = 0xF0
SYNC_COMMAND = 0xC0
MAX_STREAMS = 12
MAX_BIN_LIMIT = 0xFFF
"""Samples are 12 bits wide."""
CONFIG_RECORD_LEN = 23
MAX_CYCLE_BYTES = 1 + 2 * 4 + 2 * MAX_STREAMS
"""A sync byte, the four sync commands a device sends (C4, C5, C6, CF) with their arguments, and a
sample for each of the twelve streams: a longer run without a sync byte is not a cycle."""

MAX_BATCH_BYTES = 4096
EXTRA_BAD_CYCLES = "realtime_bad_cycles"
EXTRA_SKIPPED = "realtime_skipped_bytes"
EXTRA_OUT_OF_RANGE = "realtime_out_of_range"
EXTRA_CONFIG_MALFORMED = "realtime_config_malformed"


class SyncCommand(enum.IntEnum):
    """Sync commands (each followed by one argument byte)."""

    END_OF_SEQUENCE = 0xC0
    DATASTREAM_1_4 = 0xC1
    """Host -> device: enable (argument C0 | mask) streams 1-4."""
    DATASTREAM_5_8 = 0xC2
    DATASTREAM_9_12 = 0xC3
    TX_DATASTREAM_5_8 = 0xC4
    """Device -> host: streams 5-8 present in this cycle (argument C0 | mask)."""
    TX_DATASTREAM_9_12 = 0xC5
    START_CYCLE = 0xC6
    """Argument: a `BreathMark`."""
    CORRUPT_DATA = 0xCF


class BreathMark(enum.IntEnum):
    """The argument of `SyncCommand.START_CYCLE`."""

    INSPIRATION_START = 0xC0
    EXPIRATION_START = 0xC1


class CurveCode(enum.StrEnum):
    """Realtime curve codes (two uppercase hex characters on the wire)."""

    PAW = "00"
    FLOW = "01"
    PLETH = "02"
    VOLUME = "03"
    O2 = "05"
    CO2_MMHG = "06"
    CO2_KPA = "07"
    CO2_PCT = "08"
    AGENT = "0A"
    TRACHEAL_PRESSURE = "1C"
    INSP_DEVICE_FLOW = "1E"


CURVE_SIGNALS: Mapping[str, str] = MappingProxyType(
    {CurveCode.PAW: "paw", CurveCode.FLOW: "flow", CurveCode.VOLUME: "volume"}
)
"""The curves the host configures, in stream order, and their `drivers.vocabulary.WAVES` names (units
agree: Paw mbar, flow L/min, volume mL)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CurveConfig:
    """One curve of the device's realtime configuration (`1B 53` response record)."""

    code: str
    interval_us: int
    min_value: float
    max_value: float
    max_bin: int

    def __post_init__(self) -> None:
        if len(self.code) != 2 or any(c not in "0123456789ABCDEF" for c in self.code):
            raise ValueError(f"curve code {self.code!r} is not two uppercase hex characters")
        if not 0 < self.interval_us <= 99_999_999:
            raise ValueError(f"sample interval {self.interval_us!r} us does not fit 8 characters")
        if not 0 < self.max_bin <= MAX_BIN_LIMIT:
            raise ValueError(f"max binary value {self.max_bin!r} is not a positive 12-bit number")
        if not self.min_value < self.max_value:
            raise ValueError(f"minimum {self.min_value!r} is not below maximum {self.max_value!r}")

    def to_record(self) -> bytes:
        """Return the 23-character configuration record (the device side)."""
        low, high = _field(self.min_value), _field(self.max_value)
        return f"{self.code}{self.interval_us:>8d}{low}{high}{self.max_bin:03X}".encode("latin-1")

    def to_raw(self, values: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """Return the binary values for physical values, clipped to the range (the device side)."""
        scaled = (values - self.min_value) / (self.max_value - self.min_value) * self.max_bin
        result: npt.NDArray[np.int64] = np.clip(np.rint(scaled), 0, self.max_bin).astype(np.int64)
        return result

    def to_values(self, raw: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Return physical values for binary values; NaN where raw is negative (no sample) or above maxbin."""
        values = raw / self.max_bin * (self.max_value - self.min_value) + self.min_value
        result: npt.NDArray[np.float64] = np.where((raw < 0) | (raw > self.max_bin), np.nan, values)
        return result


def _field(value: float) -> str:
    text = f"{value:g}"
    if len(text) > 5:
        raise ValueError(f"{value!r} does not fit a 5-character field")
    return text.rjust(5)


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def _bump(counters: LinkCounters, name: str, by: int = 1) -> None:
    counters.extra[name] = counters.extra.get(name, 0) + by


def parse_realtime_config(data: bytes, *, counters: LinkCounters) -> tuple[CurveConfig, ...]:
    """Decode a realtime-configuration response payload; skip (and count) records that do not parse."""
    text = data.decode("latin-1")
    out: list[CurveConfig] = []
    for start in range(0, len(text), CONFIG_RECORD_LEN):
        record = text[start : start + CONFIG_RECORD_LEN]
        interval = _number(record[2:10]) if len(record) == CONFIG_RECORD_LEN else None
        low, high = _number(record[10:15]), _number(record[15:20])
        try:
            if interval is None or low is None or high is None or interval != int(interval):
                raise ValueError("not a configuration record")
            curve = CurveConfig(
                code=record[:2].upper(),
                interval_us=int(interval),
                min_value=low,
                max_value=high,
                max_bin=int(record[20:23], 16),
            )
        except ValueError as exc:
            _bump(counters, EXTRA_CONFIG_MALFORMED)
            LOGGER.debug("realtime configuration record %r skipped: %s", record, exc)
            continue
        out.append(curve)
    return tuple(out)


def configure_args(curves: Sequence[tuple[str, int]]) -> bytes:
    """Return the configure-realtime arguments: per curve its code and a 2-digit multiplier."""
    for code, multiplier in curves:
        if not 1 <= multiplier <= 99:
            raise ValueError(f"multiplier {multiplier!r} of curve {code} is not 1-99")
    return "".join(f"{code}{multiplier:02d}" for code, multiplier in curves).encode("latin-1")


def parse_configure_args(args: bytes) -> list[tuple[str, int]]:
    """Decode configure-realtime arguments (the device side); a record that does not parse is skipped."""
    text = args.decode("latin-1")
    out: list[tuple[str, int]] = []
    for start in range(0, len(text) - len(text) % 4, 4):
        code, multiplier = text[start : start + 2].upper(), text[start + 2 : start + 4]
        if multiplier.isdigit() and int(multiplier) > 0:
            out.append((code, int(multiplier)))
    return out


def enable_bytes(stream_count: int) -> bytes:
    """Return the raw sync sequence that enables streams 1..stream_count and disables the others."""
    if not 0 <= stream_count <= MAX_STREAMS:
        raise ValueError(f"{stream_count} streams: at most {MAX_STREAMS}")
    mask = (1 << stream_count) - 1
    groups = (SyncCommand.DATASTREAM_1_4, SyncCommand.DATASTREAM_5_8, SyncCommand.DATASTREAM_9_12)
    out = bytearray((SYNC_BYTE,))
    for group, command in enumerate(groups[: max(1, (stream_count + 3) // 4)]):
        out += bytes((command, SYNC_COMMAND | (mask >> (4 * group)) & 0x0F))
    return bytes(out + bytes((SyncCommand.END_OF_SEQUENCE, SyncCommand.END_OF_SEQUENCE)))


def encode_cycle(*, raws: Sequence[int | None], commands: bytes = b"") -> bytes:
    """Return one realtime cycle (the device side): raws[i] is stream i+1's sample, None when absent."""
    mask = sum(1 << i for i, raw in enumerate(raws) if raw is not None)
    out = bytearray((SYNC_BYTE | mask & 0x0F,))
    for group, command in ((1, SyncCommand.TX_DATASTREAM_5_8), (2, SyncCommand.TX_DATASTREAM_9_12)):
        if mask >> (4 * group):
            out += bytes((command, SYNC_COMMAND | (mask >> (4 * group)) & 0x0F))
    out += commands
    for raw in raws:
        if raw is not None:
            out += bytes((0x80 | raw & 0x3F, 0x80 | (raw >> 6) & 0x3F))
    return bytes(out)


_SLOW_ALPHABET = bytes(range(0x80))


def realtime_part(data: bytes) -> bytes:
    """Return the realtime bytes of a chunk in their order (the slow-data bytes removed)."""
    return data.translate(None, _SLOW_ALPHABET)


def _stream_tables() -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Return popcount[mask] and nth_stream[mask, k] (the k-th present stream, -1 past the last)."""
    masks = np.arange(1 << MAX_STREAMS)
    bits = (masks[:, None] >> np.arange(MAX_STREAMS)) & 1
    popcount = bits.sum(axis=1)
    nth = np.full((1 << MAX_STREAMS, MAX_STREAMS), -1, dtype=np.int64)
    rows, streams = np.nonzero(bits)
    ranks = np.cumsum(bits, axis=1)[rows, streams] - 1
    nth[rows, ranks] = streams
    return popcount.astype(np.int64), nth


_POPCOUNT, _NTH_STREAM = _stream_tables()


class RealtimeDecoder:
    """Turns realtime bytes (from `realtime_part`) into samples per configured stream.

    `feed` returns, per configured curve in stream order, the new samples in physical units (NaN: no
    usable sample). With `batch_bytes`, bytes are held until that many have come (one numpy pass per
    batch instead of per read: a serial read brings a few bytes at a time); `flush` decodes what is
    held. Not thread-safe: owned by the session.
    """

    def __init__(self, *, counters: LinkCounters | None = None) -> None:
        self.counters = counters if counters is not None else LinkCounters()
        self.curves: tuple[CurveConfig, ...] = ()
        self.batch_bytes = 0
        self._held = b""

    @property
    def buffered_bytes(self) -> int:
        """Return how many bytes (a partial cycle, an undecoded batch) the decoder holds."""
        return len(self._held)

    @property
    def max_buffered_bytes(self) -> int:
        """Return the most bytes the decoder holds between calls."""
        return max(MAX_CYCLE_BYTES, self.batch_bytes - 1)

    def configure(self, curves: Sequence[CurveConfig], *, batch_bytes: int = 0) -> None:
        """Decode streams 1..len(curves) as these curves from now on (empty: decode nothing)."""
        if len(curves) > MAX_STREAMS:
            raise ValueError(f"{len(curves)} curves: at most {MAX_STREAMS} streams")
        if not 0 <= batch_bytes <= MAX_BATCH_BYTES:
            raise ValueError(f"batch_bytes {batch_bytes!r} is not 0-{MAX_BATCH_BYTES}")
        self.curves = tuple(curves)
        self.batch_bytes = batch_bytes
        self._held = b""

    def feed(self, data: bytes) -> list[npt.NDArray[np.float64]]:
        """Consume realtime bytes; return each configured stream's new samples, oldest first."""
        if not self.curves:
            return []
        self._held += data
        if len(self._held) < max(1, self.batch_bytes):
            return [np.empty(0, dtype=np.float64) for _ in self.curves]
        return self.flush()

    def flush(self) -> list[npt.NDArray[np.float64]]:
        """Decode every complete cycle held; keep only the last, unfinished one."""
        empty = [np.empty(0, dtype=np.float64) for _ in self.curves]
        buf, self._held = self._held, b""
        if not buf:
            return empty
        a = np.frombuffer(buf, dtype=np.uint8).astype(np.int64)
        syncs = np.flatnonzero((a & SYNC_MASK) == SYNC_BYTE)
        if syncs.size == 0:
            _bump(self.counters, EXTRA_SKIPPED, len(buf))
            return empty
        first, last = int(syncs[0]), int(syncs[-1])
        if first:
            _bump(self.counters, EXTRA_SKIPPED, first)
        out = self._decode(a[first:last], syncs[:-1] - first)
        tail = buf[last:]
        if len(tail) > MAX_CYCLE_BYTES:
            return [np.concatenate((o, extra)) for o, extra in zip(out, self._drop(tail), strict=True)]
        self._held = tail
        return out

    def _drop(self, cycle: bytes) -> list[npt.NDArray[np.float64]]:
        """Give up on an over-long cycle: NaN for each stream its sync byte names."""
        _bump(self.counters, EXTRA_BAD_CYCLES)
        mask = cycle[0] & 0x0F
        return [np.full((mask >> i) & 1, np.nan) for i in range(len(self.curves))]

    def _decode(
        self, region: npt.NDArray[np.int64], starts: npt.NDArray[np.intp]
    ) -> list[npt.NDArray[np.float64]]:
        """Decode complete cycles: region starts with a sync byte, starts are the cycles' offsets."""
        n = starts.size
        counters = self.counters
        is_sync = np.zeros(region.size, dtype=bool)
        is_sync[starts] = True
        cycle_of = np.cumsum(is_sync) - 1
        lengths = np.diff(np.append(starts, region.size))
        base_mask = region[starts] & 0x0F
        mask = base_mask.copy()
        bad = lengths > MAX_CYCLE_BYTES
        is_command = (region & SYNC_MASK) == SYNC_COMMAND
        is_data = (region & 0xC0) == 0x80
        stray = ~(is_sync | is_command | is_data)
        np.logical_or.at(bad, cycle_of[stray], True)
        commands = np.flatnonzero(is_command)
        if commands.size:
            run_start = np.ones(commands.size, dtype=bool)
            run_start[1:] = np.diff(commands) != 1
            run_index = np.cumsum(run_start) - 1
            first_of_run = commands[run_start]
            position = commands - first_of_run[run_index]
            run_length = np.bincount(run_index)
            np.logical_or.at(bad, cycle_of[first_of_run[run_length % 2 == 1]], True)
            heads = commands[(position % 2 == 0) & (position + 1 < run_length[run_index])]
            ops, args, owner = region[heads], region[heads + 1] & 0x0F, cycle_of[heads]
            for op, shift in ((SyncCommand.TX_DATASTREAM_5_8, 4), (SyncCommand.TX_DATASTREAM_9_12, 8)):
                chosen = ops == op
                np.bitwise_or.at(mask, owner[chosen], args[chosen] << shift)
            np.logical_or.at(bad, owner[ops == SyncCommand.CORRUPT_DATA], True)
        data_at = np.flatnonzero(is_data)
        data_cycle = cycle_of[data_at]
        counts = np.bincount(data_cycle, minlength=n)
        bad |= counts != 2 * _POPCOUNT[mask]
        raw = np.full((n, MAX_STREAMS), -1, dtype=np.int64)
        keep = ~bad[data_cycle]
        data = region[data_at[keep]]
        pair_cycle = data_cycle[keep][0::2]
        pairs = (data[0::2] & 0x3F) | ((data[1::2] & 0x3F) << 6)
        per_cycle = np.bincount(pair_cycle, minlength=n)
        rank = np.arange(pair_cycle.size) - (np.cumsum(per_cycle) - per_cycle)[pair_cycle]
        raw[pair_cycle, _NTH_STREAM[mask[pair_cycle], rank]] = pairs
        bad_count = int(bad.sum())
        if bad_count:
            _bump(counters, EXTRA_BAD_CYCLES, bad_count)
            mask = np.where(bad, base_mask, mask)
        out: list[npt.NDArray[np.float64]] = []
        for stream, curve in enumerate(self.curves):
            present = ((mask >> stream) & 1).astype(bool)
            column = raw[present, stream]
            over = int((column > curve.max_bin).sum())
            if over:
                _bump(counters, EXTRA_OUT_OF_RANGE, over)
            out.append(curve.to_values(column))
        return out
