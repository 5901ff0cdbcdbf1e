"""Wave chunks of any size become equal windows that tile the stream; gaps and silence are said."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from drivers.base import WaveformChunk
from edge.waves import SAMPLE_DECIMALS, WaveWindows, round_samples

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _chunk(first: int, count: int, *, period_s: float = 0.01, signal: str = "pleth") -> WaveformChunk:
    return WaveformChunk(
        signal=signal,
        unit="1",
        sample_period_s=period_s,
        samples=tuple(float(first + i) for i in range(count)),
        device_code="4BB4",
        label="Pleth",
    )


def _feed(windows: WaveWindows, chunk: WaveformChunk, *, last_sample_s: float):  # type: ignore[no-untyped-def]
    return windows.add(
        bed="bed-01",
        device="mon-1",
        chunk=chunk,
        received_at=T0 + timedelta(seconds=last_sample_s),
        received_mono_s=1000.0 + last_sample_s,
    )


def test_chunks_of_odd_sizes_become_one_second_windows_with_exact_start_times() -> None:
    windows = WaveWindows(window_s=1.0)
    out = []
    sample = 0
    for size in (36, 65, 128, 7, 200, 301, 64, 100):
        sample += size
        # arrival jitter of up to 40 ms must not move the windows' times: they follow the sample count
        jitter_s = 0.04 if size % 2 else 0.0
        out += _feed(windows, _chunk(sample - size, size), last_sample_s=(sample - 1) * 0.01 + jitter_s)
    assert [len(w.body.samples) for w in out] == [100] * 9
    assert [w.body.samples[0] for w in out] == [100.0 * i for i in range(9)]
    assert [w.body.start for w in out] == [T0 + timedelta(seconds=i) for i in range(9)]
    assert not any(w.body.gap_before for w in out)
    assert {w.body.signal for w in out} == {"pleth"}
    assert out[0].body.mdc == "MDC_PULS_OXIM_PLETH"


def test_a_gap_closes_the_window_short_and_the_next_one_says_so() -> None:
    windows = WaveWindows(window_s=1.0)
    assert [len(w.body.samples) for w in _feed(windows, _chunk(0, 150), last_sample_s=1.49)] == [100]
    out = _feed(windows, _chunk(1000, 50), last_sample_s=10.49)
    assert [len(w.body.samples) for w in out] == [50]
    assert out[0].body.gap_before is False
    out = _feed(windows, _chunk(1050, 100), last_sample_s=11.49)
    assert len(out) == 1
    assert out[0].body.gap_before is True
    assert out[0].body.start == T0 + timedelta(seconds=10.0)


def test_a_silent_stream_is_flushed_after_one_window() -> None:
    windows = WaveWindows(window_s=1.0)
    _feed(windows, _chunk(0, 30), last_sample_s=0.29)
    assert windows.flush_idle(now_mono_s=1000.0 + 0.8) == []
    out = windows.flush_idle(now_mono_s=1000.0 + 1.5)
    assert [len(w.body.samples) for w in out] == [30]
    assert windows.flush_idle(now_mono_s=1000.0 + 5.0) == []


def test_a_stream_resuming_after_a_flush_either_continues_or_says_gap_before() -> None:
    windows = WaveWindows(window_s=1.0)
    _feed(windows, _chunk(0, 30), last_sample_s=0.29)
    assert [len(w.body.samples) for w in windows.flush_idle(now_mono_s=1001.5)] == [30]
    # a late burst that carries on exactly where the stream stopped: not a gap
    out = _feed(windows, _chunk(30, 130), last_sample_s=1.59)
    assert [(len(w.body.samples), w.body.gap_before) for w in out] == [(100, False)]
    assert out[0].body.start == T0 + timedelta(seconds=0.3)
    assert [len(w.body.samples) for w in windows.flush_idle(now_mono_s=1004.0)] == [30]
    # silence and then samples from much later: the station must learn that samples are missing
    out = _feed(windows, _chunk(5000, 100), last_sample_s=50.99)
    assert [(len(w.body.samples), w.body.gap_before) for w in out] == [(100, True)]
    assert out[0].body.start == T0 + timedelta(seconds=50.0)


def test_unknown_or_deselected_signals_and_empty_chunks_are_ignored_and_counted() -> None:
    windows = WaveWindows(window_s=0.5, signals=["ecg"])
    assert _feed(windows, _chunk(0, 100, signal="pleth"), last_sample_s=1.0) == []
    assert _feed(windows, _chunk(0, 100, signal="brainwaves"), last_sample_s=1.0) == []
    assert _feed(windows, _chunk(0, 0, signal="ecg"), last_sample_s=1.0) == []
    assert windows.ignored_chunks == 3
    out = _feed(windows, _chunk(0, 100, signal="ecg"), last_sample_s=1.0)
    assert [len(w.body.samples) for w in out] == [50, 50]


def test_invalid_samples_stay_null_and_values_are_rounded() -> None:
    windows = WaveWindows(window_s=0.04)
    chunk = WaveformChunk(
        signal="abp",
        unit="mm[Hg]",
        sample_period_s=0.01,
        samples=(80.123456, None, 81.0, 82.5),
        device_code="4A14",
        label="ABP",
    )
    (window,) = _feed(windows, chunk, last_sample_s=0.03)
    assert window.body.samples == [80.1235, None, 81.0, 82.5]


@given(st.lists(st.floats(min_value=-1e4, max_value=1e4, allow_nan=False), min_size=1, max_size=64))
def test_chunk_rounding_is_pythons_round_but_within_an_error_of_a_tie(samples: list[float]) -> None:
    rounded = round_samples(tuple(samples))
    for value, got in zip(samples, rounded, strict=True):
        expected = round(value, SAMPLE_DECIMALS)
        assert got is not None
        near_tie = abs(abs(value * 10**SAMPLE_DECIMALS) % 1.0 - 0.5) < 1e-6
        assert got == expected or (near_tie and abs(got - expected) <= 1.0001e-4), (value, got, expected)
