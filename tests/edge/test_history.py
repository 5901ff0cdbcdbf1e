"""The bed history behind `icu-edge report`: batching, pruning, and rule 3 (it never stops the vitals).

Real SQLite files, a real writer thread, and for the full disk a real small filesystem (tmpfs, see
tests/disks.py). Time is injected (the wall clock) where pruning by age needs it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from broker import MosquittoBroker, Subscriber, wait_for
from disks import fill, tmpfs
from ward import Ward, WardLayout, bed_topic

from drivers.base import AlarmPriority
from edge.config import HistoryConfig, StoreConfig
from edge.history import History
from edge.history_file import HistoryReader, HistoryUnavailable
from edge.model import (
    AlarmBody,
    AlarmKind,
    AlarmState,
    ForecastBody,
    ForecastModelRef,
    HorizonForecast,
    SignalForecast,
    TwinValue,
)
from edge.outbox import DISK_MARGIN_MIN_BYTES

T0 = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
BEDS = ["bed-01", "bed-02", "bed-03", "bed-04"]


def _value(value: float | None, *, valid: bool = True, stale: bool = False) -> TwinValue:
    return TwinValue(
        value=value,
        unit="/min",
        mdc=None,
        label="x",
        device="vent-1",
        valid=valid,
        device_time=None,
        received_at=T0,
        age_s=0.5,
        stale=stale,
    )


def _values(bed: str) -> dict[str, TwinValue]:
    return {
        "hr": _value(80.0 + BEDS.index(bed)),
        "spo2": _value(97.0),
        "rr": _value(400.0, valid=False),
        "map": _value(70.0, stale=True),
        "etco2": _value(None),
    }


class Wall:
    """An injected wall clock the test moves."""

    def __init__(self, start_s: float) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s


def _history(path: Path, *, wall: Callable[[], float] = time.time, **kwargs: object) -> History:
    settings = {"sample_s": 1.0, **{k: v for k, v in kwargs.items() if k in HistoryConfig.model_fields}}
    options = {k: v for k, v in kwargs.items() if k not in HistoryConfig.model_fields}
    return History(
        config=HistoryConfig.model_validate(settings),
        path=path,
        beds=BEDS,
        wall=wall,
        **options,  # type: ignore[arg-type]
    )


def _forecast(made_at: datetime) -> ForecastBody:
    return ForecastBody(
        model=ForecastModelRef(
            id="baseline", version="1", kind="baseline", backend="onnxruntime", precision="fp32"
        ),
        made_at=made_at,
        horizons_min=[1, 5, 15],
        signals={
            "hr": SignalForecast(
                unit="/min",
                source="hr",
                last_value=80.0,
                last_age_s=1.0,
                valid_minutes=10,
                horizons=[
                    HorizonForecast(horizon_min=h, p10=70.0 + h, p50=80.0 + h, p90=90.0 + h)
                    for h in (1, 5, 15)
                ],
            )
        },
        events={},
        unavailable={},
    )


def _alarm(alarm_id: str, *, priority: AlarmPriority, state: AlarmState, ended: bool = False) -> AlarmBody:
    return AlarmBody(
        id=alarm_id,
        kind=AlarmKind.PHYSIOLOGICAL,
        condition="spo2_low",
        key="spo2",
        text="SpO2 low",
        priority=priority,
        configured_priority=AlarmPriority.MEDIUM,
        state=state,
        condition_present=not ended,
        latching=False,
        onset=T0,
        determined_at=T0 + timedelta(seconds=10),
        ended_at=T0 + timedelta(minutes=5) if ended else None,
        value=85.0,
        unit="%",
        limit=90.0,
        direction="low",
        condition_delay_s=10.0,
        end_hysteresis=2.0,
        cause="spo2 85 below 90 for 10 s",
        updated_at=T0,
    )


def _run_ticks(history: History, *, ticks: int, step_s: float = 0.25, start_s: float = 1000.0) -> None:
    for i in range(ticks):
        history.tick(now_mono_s=start_s + i * step_s, values_of=_values)


def test_samples_one_row_per_bed_per_period_with_only_valid_fresh_numbers(tmp_path: Path) -> None:
    history = _history(tmp_path / "history.db", wall=Wall(T0.timestamp()))
    history.start()
    _run_ticks(history, ticks=40)  # 10 s at a 0.25 s tick, sample_s 1
    history.close()
    reader = HistoryReader(tmp_path / "history.db")
    for bed in BEDS:
        rows = reader.samples(bed=bed, since_s=0, until_s=2e9)
        assert len(rows) == 10, (bed, rows)
        # invalid (rr), stale (map) and empty (etco2) values are not history
        assert all(values == {"hr": 80.0 + BEDS.index(bed), "spo2": 97.0} for _, values in rows)
    assert set(reader.beds()) == set(BEDS)
    assert history.stats().dropped == 0


def test_beds_are_sampled_at_staggered_times(tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def values_of(bed: str) -> dict[str, TwinValue]:
        seen[-1].append(bed)
        return _values(bed)

    history = _history(tmp_path / "history.db")
    for i in range(8):
        seen.append([])
        history.tick(now_mono_s=i * 0.25, values_of=values_of)
    # 4 beds, sample_s 1, a 0.25 s tick: one bed per tick, each once a second
    assert seen == [[bed] for bed in BEDS] * 2


def test_rows_of_one_batch_are_written_in_one_transaction(tmp_path: Path) -> None:
    history = _history(tmp_path / "history.db", batch_s=2.0)
    history.start()
    for i in range(200):
        history.alarm(
            "bed-01", "alarm_raised", _alarm(f"a{i}", priority=AlarmPriority.HIGH, state=AlarmState.ACTIVE)
        )
    assert wait_for(lambda: history.stats().written == 200, timeout_s=20), history.stats()
    history.close()
    # 200 rows offered at once: one transaction (two if the writer woke between them), not 200
    assert history.stats().batches <= 2, history.stats()


def test_forecast_headlines_at_most_once_per_period(tmp_path: Path) -> None:
    history = _history(tmp_path / "history.db", forecast_s=60.0)
    history.start()
    for i, offset_s in enumerate((0.0, 10.0, 59.0, 61.0, 200.0)):
        history.forecast(bed="bed-01", body=_forecast(T0 + timedelta(seconds=offset_s)), now_mono_s=offset_s)
        assert i < 5
    history.close()
    headlines = HistoryReader(tmp_path / "history.db").forecasts(bed="bed-01", since_s=0, until_s=2e9)
    assert [h.at_s - T0.timestamp() for h in headlines] == [0.0, 61.0, 200.0]
    assert headlines[0].signals["hr"] == [
        (1, 71.0, 81.0, 91.0),
        (5, 75.0, 85.0, 95.0),
        (15, 85.0, 95.0, 105.0),
    ]
    assert headlines[0].model == "baseline@1"
    assert [h.sources for h in headlines] == [{}, {}, {}]


def test_a_forecast_made_from_the_pulse_rate_is_stored_so(tmp_path: Path) -> None:
    history = _history(tmp_path / "history.db", forecast_s=60.0)
    history.start()
    body = _forecast(T0)
    hr = body.signals["hr"].model_copy(update={"source": "pr"})
    history.forecast(bed="bed-01", body=body.model_copy(update={"signals": {"hr": hr}}), now_mono_s=0.0)
    history.close()
    (headline,) = HistoryReader(tmp_path / "history.db").forecasts(bed="bed-01", since_s=0, until_s=2e9)
    assert headline.sources == {"hr": "pr"}
    assert headline.last_values == {"hr": 80.0}


def test_alarm_transitions_become_spans_with_the_highest_priority(tmp_path: Path) -> None:
    wall = Wall(T0.timestamp())
    history = _history(tmp_path / "history.db", wall=wall)
    history.start()
    history.alarm(
        "bed-01", "alarm_raised", _alarm("spo2-1", priority=AlarmPriority.MEDIUM, state=AlarmState.ACTIVE)
    )
    wall.now_s += 60
    history.alarm(
        "bed-01", "alarm_escalated", _alarm("spo2-1", priority=AlarmPriority.HIGH, state=AlarmState.ACTIVE)
    )
    wall.now_s += 240
    history.alarm(
        "bed-01",
        "alarm_ended",
        _alarm("spo2-1", priority=AlarmPriority.MEDIUM, state=AlarmState.ENDED, ended=True),
    )
    history.alarm(
        "bed-02", "alarm_raised", _alarm("spo2-9", priority=AlarmPriority.LOW, state=AlarmState.ACTIVE)
    )
    history.close()
    reader = HistoryReader(tmp_path / "history.db")
    (span,) = reader.alarms(bed="bed-01", since_s=T0.timestamp(), until_s=T0.timestamp() + 3600)
    assert span.alarm_id == "spo2-1"
    assert span.priority == "high"
    assert (span.onset_s, span.ended_s) == (T0.timestamp(), T0.timestamp() + 300)
    assert [t for _, t, _ in span.transitions] == ["alarm_raised", "alarm_escalated", "alarm_ended"]
    # an alarm that ended before the range is not in it
    assert reader.alarms(bed="bed-01", since_s=T0.timestamp() + 301, until_s=T0.timestamp() + 3600) == []


def test_rows_older_than_the_retention_are_pruned(tmp_path: Path) -> None:
    wall = Wall(T0.timestamp())
    history = _history(
        tmp_path / "history.db", wall=wall, retention_h=1.0, batch_s=0.05, prune_interval_s=0.0
    )
    history.start()
    _run_ticks(history, ticks=8)  # 2 rows per bed at T0
    assert wait_for(lambda: history.stats().written == 8, timeout_s=20)
    wall.now_s += 2 * 3600  # two hours later
    history.tick(now_mono_s=1100.0, values_of=_values)
    history.close()
    reader = HistoryReader(tmp_path / "history.db")
    rows = [row for bed in BEDS for row in reader.samples(bed=bed, since_s=0, until_s=2e9)]
    assert [at_s for at_s, _ in rows] == [wall.now_s] * len(rows), "only the new rows remain"
    assert history.stats().pruned == 8
    first_s, _ = reader.beds()["bed-01"]
    assert first_s >= wall.now_s - 3600


def test_the_file_stays_under_its_cap_and_keeps_the_newest_rows(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    history = _history(path, max_mb=1, batch_s=0.05, prune_interval_s=0.0)
    history.start()
    big = {f"k{i:03d}": _value(float(i) + 0.123456789) for i in range(100)}
    for i in range(2000):  # ~2000 rows of ~2.5 kB: about 5 MB offered to a 1 MB cap
        history.tick(now_mono_s=float(i), values_of=lambda bed: big)
        if i % 10 == 0:
            assert wait_for(lambda: history.stats().pending == 0, timeout_s=30)
    history.close()
    stats = history.stats()
    assert stats.dropped == 0, stats
    assert stats.pruned > 0, stats
    assert path.stat().st_size <= 1024 * 1024
    reader = HistoryReader(path)
    rows = [row for bed in BEDS for row in reader.samples(bed=bed, since_s=0, until_s=2e9)]
    kept = sorted(at_s for at_s, _ in rows)
    assert 0 < len(kept) < 2000
    newest = max(at_s for bed in BEDS for at_s, _ in reader.samples(bed=bed, since_s=0, until_s=2e9))
    assert newest == kept[-1]


def test_a_restart_continues_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    for run in range(2):
        history = _history(path, wall=Wall(T0.timestamp() + run * 100))
        history.start()
        _run_ticks(history, ticks=4)
        history.close()
    rows = HistoryReader(path).samples(bed="bed-01", since_s=0, until_s=2e9)
    assert [at_s - T0.timestamp() for at_s, _ in rows] == [0.0, 100.0]


def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    """A writer that cannot keep up (here: not started, as a disk that hangs) never holds the caller."""
    history = _history(tmp_path / "history.db", queue_max_rows=3)
    _run_ticks(history, ticks=40)
    stats = history.stats()
    assert (stats.pending, stats.dropped) == (3, 37)


def test_a_corrupt_file_is_moved_aside_and_a_new_one_started(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"this is not a database, it is garbage from a bad shutdown" * 100)
    history = _history(path, batch_s=0.05)
    history.start()
    _run_ticks(history, ticks=4)
    assert wait_for(lambda: history.stats().dropped == 4, timeout_s=20), history.stats()
    _run_ticks(history, ticks=8)
    history.close()
    assert history.stats().written > 0, history.stats()
    assert len(list(tmp_path.glob("history.db.corrupt-*"))) == 1
    assert HistoryReader(path).samples(bed="bed-01", since_s=0, until_s=2e9)
    assert sum("corrupt file" in r.getMessage() for r in caplog.records) == 1


def test_another_programs_database_is_left_alone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "history.db"
    with sqlite3.connect(path) as other:
        other.execute("CREATE TABLE patients (name TEXT)")
    before = path.read_bytes()
    history = _history(path, batch_s=0.05)
    history.start()
    _run_ticks(history, ticks=8)
    history.close()
    assert path.read_bytes() == before
    assert history.stats().written == 0
    assert history.stats().dropped == 8
    assert sum("not an icu-edge history" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(HistoryUnavailable, match="not an icu-edge history"):
        HistoryReader(path)


def test_a_missing_file_is_a_clear_error_for_the_reader(tmp_path: Path) -> None:
    with pytest.raises(HistoryUnavailable, match=r"no history file at .*history\.db"):
        HistoryReader(tmp_path / "history.db")


def test_disabled_history_writes_nothing(tmp_path: Path) -> None:
    history = _history(tmp_path / "history.db", enabled=False)
    history.start()
    _run_ticks(history, ticks=8)
    history.alarm("bed-01", "alarm_raised", _alarm("a", priority=AlarmPriority.HIGH, state=AlarmState.ACTIVE))
    history.close()
    assert not (tmp_path / "history.db").exists()


def test_a_full_disk_never_raises_into_the_caller_and_writing_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rule 3 on a real full filesystem: rows are dropped and counted, logged once, and kept again later."""
    with tmpfs(tmp_path / "disk", size="8m") as disk:
        history = _history(disk / "history.db", batch_s=0.05, prune_interval_s=0.0)
        history.start()
        _run_ticks(history, ticks=4)
        assert wait_for(lambda: history.stats().written == 4, timeout_s=20)
        hog = disk / "hog"
        fill(hog)
        calls_returned = threading.Event()
        big = {f"k{i:03d}": _value(float(i) + 0.123456789) for i in range(100)}
        for i in range(400):  # ~4 MB of rows at a full disk
            history.tick(now_mono_s=2000.0 + i, values_of=lambda bed: big)
        calls_returned.set()
        assert wait_for(lambda: history.stats().dropped > 0, timeout_s=30), history.stats()
        assert wait_for(lambda: history.stats().pending == 0, timeout_s=30), history.stats()
        full = [r for r in caplog.records if "cannot write" in r.getMessage()]
        assert len({r.getMessage() for r in full}) == len(full), "each reason is logged once"
        assert history.stats().last_error is not None
        written = history.stats().written
        os.unlink(hog)
        _run_ticks(history, ticks=8, start_s=3000.0)
        assert wait_for(lambda: history.stats().written > written, timeout_s=30), history.stats()
        assert wait_for(lambda: history.stats().pending == 0, timeout_s=30), history.stats()
        assert history.stats().last_error is None
        history.close()
        assert calls_returned.is_set()


def test_the_history_leaves_the_outbox_its_room(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """On the outbox's filesystem the history grows only while all the outbox may still need stays free."""
    big = {f"k{i:03d}": _value(float(i) + 0.123456789) for i in range(100)}
    with tmpfs(tmp_path / "disk", size="8m") as disk:
        # an outbox that may grow to 16 MB: no room at all, the file is not even created
        history = _history(disk / "history.db", batch_s=0.05, outbox=StoreConfig(path=disk / "outbox.db"))
        history.start()
        _run_ticks(history, ticks=8)
        assert wait_for(lambda: history.stats().dropped == 8, timeout_s=20), history.stats()
        history.close()
        assert not (disk / "history.db").exists()
        assert sum("not created" in r.getMessage() for r in caplog.records) == 1
        # an outbox capped at 1 MB: the history takes what is left above it and the margins, then drops
        outbox = StoreConfig(path=disk / "outbox.db", max_bytes=1024 * 1024)
        history = _history(disk / "history.db", batch_s=0.05, prune_interval_s=0.0, outbox=outbox)
        history.start()
        for i in range(800):  # ~8 MB of rows offered
            history.tick(now_mono_s=float(i), values_of=lambda bed: big)
            if i % 10 == 0:
                assert wait_for(lambda: history.stats().pending == 0, timeout_s=30)
                fs = os.statvfs(disk)
                assert fs.f_bavail * fs.f_frsize >= outbox.max_bytes + DISK_MARGIN_MIN_BYTES
        history.close()
        stats = history.stats()
        assert stats.written > 0, stats
        assert stats.dropped > 0, stats
        assert stats.pruned == 0, "the disk's limit drops new rows; it does not eat the history"


@pytest.mark.integration
def test_a_daemon_with_a_corrupt_history_file_delivers_vitals_and_starts_a_new_one(
    tmp_path: Path, broker: MosquittoBroker, subscribe: Callable[..., Subscriber]
) -> None:
    """Rule 3 end to end: the daemon never stops for its history; the bad file is kept aside."""
    ward = Ward(workdir=tmp_path, broker=broker, layout=WardLayout(extra_toml="[history]\nsample_s = 0.5"))
    (tmp_path / "history.db").write_bytes(b"not a database: a torn write from another life\n" * 200)
    station = subscribe(f"{bed_topic('bed-01')}/vitals")
    try:
        ward.start_simulators()
        ward.start_daemon()
        assert wait_for(lambda: len(station.on_topic(f"{bed_topic('bed-01')}/vitals")) >= 3, timeout_s=60), (
            ward.log("daemon")
        )

        def sampled() -> bool:
            try:
                reader = HistoryReader(tmp_path / "history.db")
            except HistoryUnavailable:
                return False
            try:
                return len(reader.samples(bed="bed-01", since_s=0, until_s=2e9)) >= 3
            finally:
                reader.close()

        assert wait_for(sampled, timeout_s=60), ward.log("daemon")
        assert len(list(tmp_path.glob("history.db.corrupt-*"))) == 1
        assert ward.stop_daemon() == 0, ward.log("daemon")
        assert ward.log("daemon").count("corrupt file") == 1
        assert "Traceback" not in ward.log("daemon")
    finally:
        ward.close()


def test_the_file_is_private(tmp_path: Path) -> None:
    """Patient vitals: readable by the service user only, whatever the umask (like the alarm store)."""
    history = _history(tmp_path / "history.db", batch_s=0.05)
    history.start()
    _run_ticks(history, ticks=4)
    assert wait_for(lambda: history.stats().written == 4, timeout_s=20)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.glob("history.db*")}
    history.close()
    assert modes["history.db"] == 0o600, modes
    assert set(modes.values()) == {0o600}, modes


def test_a_bug_behind_the_history_never_reaches_the_caller(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rule 3 against our own mistakes: the loop's call returns, the loss is counted, logged once."""

    def broken(bed: str) -> dict[str, TwinValue]:
        raise KeyError(bed)

    history = _history(tmp_path / "history.db")
    for i in range(8):
        history.tick(now_mono_s=i * 0.25, values_of=broken)
    assert history.stats().dropped == 8  # every bed twice (4 beds, 2 s at sample_s 1)
    errors = [r for r in caplog.records if "a bug lost a row" in r.getMessage()]
    assert len(errors) == 1  # once per kind and place, whatever the message
    assert all(r.exc_info is not None for r in errors)
