"""Cuts each device's waveform stream into fixed windows for `R/bed/{bed}/wave/{signal}`.

Drivers hand over chunks of whatever size their protocol delivers (a poll answer, a realtime burst);
a central station wants a steady stream of equal windows, each with the time of its first sample.
Within a continuous stream a sample's time follows from the sample count and period, not from when
its chunk happened to arrive, so windows tile the stream exactly. A chunk that does not continue the
stream (a gap, a device restart, a new sample period) closes what is buffered as a short window and
starts a new stream whose first window says `gap_before`. A stream that falls silent for one window
length has its buffered samples sent as a short window, so nothing waits unseen; the stream stays known,
and what comes next either continues it or says `gap_before`. One owner: the event loop thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from drivers.base import WaveformChunk
from drivers.vocabulary import WAVES
from edge.model import WaveBody

CONTINUITY_TOLERANCE_S = 0.5
"""A chunk whose first sample is further than this from where the stream expects it starts a new stream."""
SAMPLE_DECIMALS = 4
"""Samples are rounded to this many decimals (below any device's resolution) to keep payloads small."""


def round_samples(samples: tuple[float | None, ...]) -> list[float | None]:
    """Return the samples rounded to SAMPLE_DECIMALS, None kept; numpy for the usual chunk without a gap.

    A 64-bed ward sends ~150,000 samples a second: one Python `round` per sample was 7 % of the daemon's
    GIL time. numpy returns a correctly rounded k / 10**4 too, the same value (and JSON) as Python's
    `round` except where the sample lies within a rounding error of a decimal tie (one 1e-4 step apart).
    """
    if None in samples:
        return [None if v is None else round(v, SAMPLE_DECIMALS) for v in samples]
    rounded: list[float | None] = np.round(np.asarray(samples, dtype=np.float64), SAMPLE_DECIMALS).tolist()
    return rounded


@dataclass(slots=True, kw_only=True)
class _Stream:
    unit: str
    sample_period_s: float
    label: str
    start: datetime
    """Time of the first buffered sample."""
    next_mono_s: float
    """Monotonic time at which the sample after the buffered ones is due."""
    gap_before: bool
    samples: list[float | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class WaveWindow:
    """One window ready to publish."""

    bed: str
    body: WaveBody


class WaveWindows:
    """The open streams of every bed, device and signal."""

    def __init__(self, *, window_s: float, signals: Iterable[str] = ()) -> None:
        """`signals`: the ones to publish (empty: all)."""
        self._window_s = window_s
        self._signals = frozenset(signals)
        self._streams: dict[tuple[str, str, str], _Stream] = {}
        self.ignored_chunks = 0
        """Chunks of unknown or deselected signals, or without samples."""

    def add(
        self,
        *,
        bed: str,
        device: str,
        chunk: WaveformChunk,
        received_at: datetime,
        received_mono_s: float,
    ) -> list[WaveWindow]:
        """Take one chunk; return the windows it completed (oldest first)."""
        if (
            chunk.signal not in WAVES
            or (self._signals and chunk.signal not in self._signals)
            or not chunk.samples
            or chunk.sample_period_s <= 0
        ):
            self.ignored_chunks += 1
            return []
        key = (bed, device, chunk.signal)
        period_s = chunk.sample_period_s
        span_s = period_s * (len(chunk.samples) - 1)
        first_mono_s = received_mono_s - span_s
        windows: list[WaveWindow] = []
        stream = self._streams.get(key)
        continues = (
            stream is not None
            and stream.unit == chunk.unit
            and abs(stream.sample_period_s - period_s) <= 1e-9 * max(1.0, period_s)
            and abs(first_mono_s - stream.next_mono_s) <= max(CONTINUITY_TOLERANCE_S, self._window_s / 2)
        )
        if stream is not None and not continues:
            windows.extend(self._close(key, stream))
        if stream is None or not continues:
            first_at = chunk.device_time or received_at - timedelta(seconds=span_s)
            stream = _Stream(
                unit=chunk.unit,
                sample_period_s=period_s,
                label=chunk.label,
                start=first_at,
                next_mono_s=first_mono_s,
                gap_before=stream is not None,
            )
            self._streams[key] = stream
        stream.samples.extend(round_samples(chunk.samples))
        stream.next_mono_s += period_s * len(chunk.samples)
        per_window = max(1, round(self._window_s / period_s))
        while len(stream.samples) >= per_window:
            windows.append(self._emit(key, stream, per_window))
        return windows

    def flush_idle(self, *, now_mono_s: float) -> list[WaveWindow]:
        """Send the samples of streams silent for longer than one window as short windows."""
        windows: list[WaveWindow] = []
        for key, stream in self._streams.items():
            if now_mono_s - stream.next_mono_s > self._window_s:
                windows.extend(self._close(key, stream))
        return windows

    def _close(self, key: tuple[str, str, str], stream: _Stream) -> list[WaveWindow]:
        return [self._emit(key, stream, len(stream.samples))] if stream.samples else []

    def _emit(self, key: tuple[str, str, str], stream: _Stream, count: int) -> WaveWindow:
        bed, device, signal = key
        samples, stream.samples = stream.samples[:count], stream.samples[count:]
        body = WaveBody(
            device=device,
            signal=signal,
            unit=stream.unit,
            label=stream.label,
            mdc=WAVES[signal].mdc,
            sample_period_s=stream.sample_period_s,
            start=stream.start,
            samples=samples,
            gap_before=stream.gap_before,
        )
        stream.start += timedelta(seconds=stream.sample_period_s * count)
        stream.gap_before = False
        return WaveWindow(bed=bed, body=body)
