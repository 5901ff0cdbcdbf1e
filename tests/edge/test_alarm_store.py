"""The alarm store: state, idempotency, audit and limits survive a reopen; a full disk never raises."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import AlarmPriority
from edge.alarms.store import AUDIT_GAP_ACTION, AlarmStore, AlarmStoreError
from edge.model import (
    AlarmBody,
    AlarmKind,
    AlarmLimit,
    AlarmState,
    CommandResultBody,
    CommandStatus,
)

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


class _Clock:
    """The injected monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def _alarm(
    alarm_id: str, *, state: AlarmState = AlarmState.ACTIVE, value: float = 85.0, pad: int = 0
) -> AlarmBody:
    return AlarmBody(
        id=alarm_id,
        kind=AlarmKind.PHYSIOLOGICAL,
        condition="spo2_low",
        key="spo2",
        text="SpO2 low" + " " * pad,
        priority=AlarmPriority.HIGH,
        configured_priority=AlarmPriority.MEDIUM,
        state=state,
        condition_present=state is AlarmState.ACTIVE,
        latching=True,
        onset=T0,
        determined_at=T0 + timedelta(seconds=10),
        ended_at=T0 + timedelta(minutes=5) if state is AlarmState.ENDED else None,
        value=value,
        unit="%",
        limit=90.0,
        direction="low",
        condition_delay_s=10.0,
        end_hysteresis=2.0,
        cause="spo2 85 below 90 for 10 s",
        updated_at=T0 + timedelta(seconds=11),
    )


def _result(
    command_id: str, *, at: datetime = T0, status: CommandStatus = CommandStatus.ACCEPTED
) -> CommandResultBody:
    return CommandResultBody(
        command_id=command_id, command="ack", status=status, reason="acknowledged", alarm=_alarm("a1"), at=at
    )


def _limit(low: float, *, origin: str = "command") -> AlarmLimit:
    return AlarmLimit(
        low=low,
        high=None,
        priority=AlarmPriority.HIGH,
        condition_delay_s=10.0,
        end_hysteresis=2.0,
        latching=False,
        origin=origin,
    )


def _audit(store: AlarmStore, n: int, *, bed: str = "bed1", start: int = 0) -> None:
    for i in range(start, start + n):
        store.audit(
            at=T0 + timedelta(seconds=i),
            bed=bed,
            actor="nurse7",
            role="nurse",
            action="ack",
            detail=f"row {i}",
            result="accepted",
        )


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "alarms.db"


@pytest.fixture
def store(path: Path) -> Iterator[AlarmStore]:
    opened = AlarmStore(path)
    yield opened
    opened.close()


def test_new_store_is_private_wal_and_full_sync(path: Path, store: AlarmStore) -> None:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    db = store._conn()
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    assert store.healthy
    assert store.last_error is None
    assert store.write_failures == 0


def test_alarms_survive_reopen_and_ended_deletes(path: Path) -> None:
    store = AlarmStore(path)
    store.save_alarm(bed="bed1", alarm=_alarm("a1"))
    store.save_alarm(bed="bed1", alarm=_alarm("a2"))
    store.save_alarm(bed="bed2", alarm=_alarm("a1", value=80.0))
    store.save_alarm(bed="bed1", alarm=_alarm("a1", state=AlarmState.ACKNOWLEDGED, value=84.0))
    store.save_alarm(bed="bed1", alarm=_alarm("a2", state=AlarmState.ENDED))
    store.close()

    again = AlarmStore(path)
    try:
        active = again.active_alarms()
        assert active == {
            "bed1": [_alarm("a1", state=AlarmState.ACKNOWLEDGED, value=84.0)],
            "bed2": [_alarm("a1", value=80.0)],
        }
        again.save_alarm(bed="bed2", alarm=_alarm("a1", state=AlarmState.ENDED))
    finally:
        again.close()
    third = AlarmStore(path)
    try:
        assert third.active_alarms() == {"bed1": [_alarm("a1", state=AlarmState.ACKNOWLEDGED, value=84.0)]}
    finally:
        third.close()


def test_command_result_is_found_after_reopen(path: Path) -> None:
    store = AlarmStore(path)
    assert store.command_result(bed="bed1", command_id="c1") is None
    store.save_command_result(bed="bed1", result=_result("c1"))
    store.save_command_result(bed="bed1", result=_result("c2", status=CommandStatus.REJECTED))
    store.close()

    again = AlarmStore(path)
    try:
        assert again.command_result(bed="bed1", command_id="c1") == _result("c1")
        assert again.command_result(bed="bed1", command_id="c2") == _result(
            "c2", status=CommandStatus.REJECTED
        )
        assert again.command_result(bed="bed2", command_id="c1") is None, "a command_id is per bed"
    finally:
        again.close()


def test_command_results_older_than_seven_days_are_pruned(store: AlarmStore) -> None:
    store.save_command_result(bed="bed1", result=_result("old", at=T0))
    store.save_command_result(bed="bed1", result=_result("recent", at=T0 + timedelta(days=6)))
    assert store.command_result(bed="bed1", command_id="old") is not None
    store.save_command_result(bed="bed1", result=_result("new", at=T0 + timedelta(days=7, seconds=1)))
    assert store.command_result(bed="bed1", command_id="old") is None
    assert store.command_result(bed="bed1", command_id="recent") is not None
    assert store.command_result(bed="bed1", command_id="new") is not None


def test_limits_survive_reopen(path: Path) -> None:
    store = AlarmStore(path)
    store.save_limit(bed="bed1", key="spo2", limit=_limit(90.0))
    store.save_limit(bed="bed1", key="hr", limit=_limit(40.0))
    store.save_limit(bed="bed1", key="spo2", limit=_limit(88.0))
    store.save_limit(bed="bed2", key="spo2", limit=_limit(85.0))
    store.close()

    again = AlarmStore(path)
    try:
        assert again.limits() == {
            "bed1": {"spo2": _limit(88.0), "hr": _limit(40.0)},
            "bed2": {"spo2": _limit(85.0)},
        }
    finally:
        again.close()


def test_audit_is_newest_first_per_bed_and_survives_reopen(path: Path) -> None:
    store = AlarmStore(path)
    _audit(store, 3, bed="bed1")
    _audit(store, 2, bed="bed2", start=3)
    store.audit(
        at=T0, bed="bed1", actor=None, role=None, action="limits", detail="spo2 low 88", result="rejected"
    )
    store.close()

    again = AlarmStore(path)
    try:
        rows = again.audit_rows()
        assert [r.detail for r in rows] == ["spo2 low 88", "row 4", "row 3", "row 2", "row 1", "row 0"]
        assert rows[0].actor is None
        assert rows[0].result == "rejected"
        assert rows[1].at == T0 + timedelta(seconds=4)
        assert rows[1].actor == "nurse7"
        assert rows[1].role == "nurse"
        assert [r.detail for r in again.audit_rows(bed="bed1", limit=2)] == ["spo2 low 88", "row 2"]
        assert [r.detail for r in again.audit_rows(bed="bed2")] == ["row 4", "row 3"]
    finally:
        again.close()


def test_audit_keeps_the_newest_rows_pruning_in_batches(path: Path) -> None:
    store = AlarmStore(path, audit_max_rows=10, audit_prune_batch=4)
    _audit(store, 13)
    assert store._conn().execute("SELECT count(*) FROM audit").fetchone()[0] == 13, "below max + batch"
    _audit(store, 1, start=13)
    assert store._conn().execute("SELECT count(*) FROM audit").fetchone()[0] == 10
    store.close()

    again = AlarmStore(path, audit_max_rows=10, audit_prune_batch=4)
    try:
        assert [r.detail for r in again.audit_rows(limit=100)] == [f"row {i}" for i in range(13, 3, -1)]
        _audit(again, 3, start=14)
        assert again._conn().execute("SELECT count(*) FROM audit").fetchone()[0] == 13
    finally:
        again.close()


def test_audit_rejects_a_naive_time(store: AlarmStore) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        store.audit(at=datetime(2026, 1, 1), bed="b", actor=None, role=None, action="x", detail="", result="")  # noqa: DTZ001


def test_not_a_database_raises_a_helpful_error(path: Path) -> None:
    path.parent.mkdir(parents=True)
    garbage = b"this is not sqlite at all\n" * 200
    path.write_bytes(garbage)
    with pytest.raises(AlarmStoreError, match="not a usable SQLite database") as info:
        AlarmStore(path)
    assert str(path) in str(info.value)
    assert "move it away" in str(info.value)
    assert path.read_bytes() == garbage, "a possible safety record is never rewritten"


def test_foreign_database_raises_a_helpful_error(path: Path) -> None:
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE patients (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(AlarmStoreError, match="another program's database") as info:
        AlarmStore(path)
    assert str(path) in str(info.value)
    assert "move it away" in str(info.value)


def test_table_of_another_shape_raises_a_helpful_error(path: Path) -> None:
    AlarmStore(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE limits")
    db.execute("CREATE TABLE limits (bed TEXT, key TEXT)")
    db.commit()
    db.close()
    with pytest.raises(AlarmStoreError, match=r"table limits has columns \['bed', 'key'\]") as info:
        AlarmStore(path)
    assert str(path) in str(info.value)
    assert "move it away" in str(info.value)


def test_bad_path_raises_alarm_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AlarmStoreError, match="cannot open"):
        AlarmStore(blocker / "alarms.db")


def test_rows_of_an_unknown_shape_are_skipped_and_counted(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = AlarmStore(path)
    store.save_alarm(bed="bed1", alarm=_alarm("good"))
    store.save_limit(bed="bed1", key="spo2", limit=_limit(90.0))
    store.save_command_result(bed="bed1", result=_result("c1"))
    store.close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO alarms VALUES ('bed1', 'old1', '{\"id\": \"old1\", \"shape\": 0}')")
    db.execute("INSERT INTO alarms VALUES ('bed1', 'old2', 'not json')")
    db.execute("INSERT INTO limits VALUES ('bed1', 'hr', '{}')")
    db.execute("UPDATE command_results SET body = '{}'")
    db.commit()
    db.close()

    with caplog.at_level(logging.WARNING, logger="edge.alarms.store"):
        again = AlarmStore(path)
    try:
        assert again.active_alarms() == {"bed1": [_alarm("good")]}
        assert again.limits() == {"bed1": {"spo2": _limit(90.0)}}
        assert again.command_result(bed="bed1", command_id="c1") is None
        assert again.skipped_rows == 4
    finally:
        again.close()
    skips = [r for r in caplog.records if "unknown shape" in r.getMessage()]
    assert len(skips) == 3, "logged once per table, not per row"


def _fill_until_full(store: AlarmStore) -> int:
    """Save alarms until a write fails; return how many were saved."""
    for i in range(1000):
        store.save_alarm(bed="bed1", alarm=_alarm(f"f{i}", pad=2000))
        if not store.healthy:
            return i + 1
    raise AssertionError("the page cap never filled")


def test_full_disk_holds_state_in_memory_and_catches_up(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    store = AlarmStore(path, clock=clock)
    pages = store._conn().execute("PRAGMA page_count").fetchone()[0]
    store.set_max_pages(pages + 2)
    with caplog.at_level(logging.WARNING, logger="edge.alarms.store"):
        saved = _fill_until_full(store)
        # Everything below is accepted without an exception while the disk is "full".
        store.save_alarm(bed="bed1", alarm=_alarm("f0", state=AlarmState.ENDED))
        store.save_alarm(bed="bed2", alarm=_alarm("late", value=70.0))
        store.save_limit(bed="bed2", key="spo2", limit=_limit(85.0))
        store.save_command_result(bed="bed2", result=_result("c9"))
        _audit(store, 5, bed="bed2")
        clock.now_s += 1.0
        store.retry()
        clock.now_s += 1.0
        store.retry()
    assert not store.healthy
    assert store.last_error is not None
    assert "SQLITE_FULL" in store.last_error
    assert store.write_failures == 3, "one attempt at the failing save, then at most one per second"
    failures = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(failures) == 1, "logged once per distinct reason"
    # Reads see what is held in memory.
    expected_bed1 = {f"f{i}" for i in range(1, saved)}
    assert {a.id for a in store.active_alarms()["bed1"]} == expected_bed1
    assert store.active_alarms()["bed2"] == [_alarm("late", value=70.0)]
    assert store.limits()["bed2"] == {"spo2": _limit(85.0)}
    assert store.command_result(bed="bed2", command_id="c9") == _result("c9")
    assert [r.detail for r in store.audit_rows(bed="bed2")] == [f"row {i}" for i in range(4, -1, -1)]

    store.set_max_pages(1_000_000)
    store.retry()
    assert not store.healthy, "no retry before a second has passed"
    caplog.clear()
    clock.now_s += 1.0
    with caplog.at_level(logging.WARNING, logger="edge.alarms.store"):
        store.retry()
    assert store.healthy
    assert store.last_error is None
    assert store.pending == 0
    assert len([r for r in caplog.records if "nothing waits to be written anymore" in r.getMessage()]) == 1
    store.close()

    again = AlarmStore(path)
    try:
        assert {a.id for a in again.active_alarms()["bed1"]} == expected_bed1
        assert again.active_alarms()["bed2"] == [_alarm("late", value=70.0)]
        assert again.limits() == {"bed2": {"spo2": _limit(85.0)}}
        assert again.command_result(bed="bed2", command_id="c9") == _result("c9")
        assert [r.detail for r in again.audit_rows(bed="bed2")] == [f"row {i}" for i in range(4, -1, -1)]
    finally:
        again.close()


def test_full_disk_drops_the_oldest_audit_rows_counted_and_noted(path: Path) -> None:
    clock = _Clock()
    store = AlarmStore(path, clock=clock, pending_max_rows=4)
    store.set_max_pages(store._conn().execute("PRAGMA page_count").fetchone()[0])
    _fill_until_full(store)
    _audit(store, 7, bed="bed2")
    assert store.audit_rows_dropped == 3
    assert [r.detail for r in store.audit_rows(bed="bed2")] == ["row 6", "row 5", "row 4", "row 3"]

    store.set_max_pages(1_000_000)
    clock.now_s += 1.0
    store.retry()
    assert store.healthy
    store.close()
    again = AlarmStore(path)
    try:
        rows = again.audit_rows(bed="bed2")
        assert [r.detail for r in rows[:4]] == ["row 6", "row 5", "row 4", "row 3"]
        gap = rows[4]
        assert gap.action == AUDIT_GAP_ACTION
        assert gap.result == "lost"
        assert gap.detail.startswith("3 audit rows from ")
        assert gap.at == T0 + timedelta(seconds=2)
    finally:
        again.close()


def test_close_writes_what_is_pending_when_it_can(path: Path) -> None:
    clock = _Clock()
    store = AlarmStore(path, clock=clock)
    store.set_max_pages(store._conn().execute("PRAGMA page_count").fetchone()[0])
    _fill_until_full(store)
    store.save_limit(bed="bed1", key="hr", limit=_limit(45.0))
    store.set_max_pages(1_000_000)
    store.close()
    again = AlarmStore(path)
    try:
        assert again.limits() == {"bed1": {"hr": _limit(45.0)}}
    finally:
        again.close()


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["bed1", "bed2"]),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(list(AlarmState)),
        st.integers(min_value=0, max_value=100),
        st.booleans(),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS)
def test_reopen_gives_the_last_state_of_every_alarm_that_has_not_ended(
    ops: list[tuple[str, str, AlarmState, int, bool]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "alarms.db"
        clock = _Clock()
        store = AlarmStore(path, clock=clock)
        base_pages = store._conn().execute("PRAGMA page_count").fetchone()[0]
        model: dict[tuple[str, str], AlarmBody] = {}
        for bed, alarm_id, state, value, disk_full in ops:
            # The page cap toggles a "full disk" (only grows: SQLite keeps it at or above the size).
            store.set_max_pages(base_pages if disk_full else 1_000_000)
            clock.now_s += 0.6
            alarm = _alarm(alarm_id, state=state, value=float(value), pad=1500)
            store.save_alarm(bed=bed, alarm=alarm)
            if state is AlarmState.ENDED:
                model.pop((bed, alarm_id), None)
            else:
                model[(bed, alarm_id)] = alarm
        store.set_max_pages(1_000_000)
        store.close()
        again = AlarmStore(path)
        try:
            got = {(bed, a.id): a for bed, alarms in again.active_alarms().items() for a in alarms}
        finally:
            again.close()
        assert got == model


def test_a_locked_database_does_not_wedge_the_caller(path: Path) -> None:
    """Another process holding the write lock (a tool, a stray sqlite3 shell) delays a write briefly only."""
    clock = _Clock()
    store = AlarmStore(path, clock=clock)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        store.save_alarm(bed="bed1", alarm=_alarm("a1"))
        waited_s = time.monotonic() - started
        assert waited_s < 2.0, f"the loop thread waited {waited_s:.1f} s for the lock"
        assert not store.healthy
        assert store.last_error is not None
        assert "locked" in store.last_error
        other.execute("COMMIT")
    finally:
        other.close()
    clock.now_s += 1.0
    store.retry()
    assert store.healthy
    store.close()
    again = AlarmStore(path)
    try:
        assert again.active_alarms() == {"bed1": [_alarm("a1")]}
    finally:
        again.close()


def test_a_call_from_another_thread_fails_loudly(store: AlarmStore) -> None:
    """One owner thread: a stray call is a bug to see at once, not a write failure to retry quietly."""
    errors: list[BaseException] = []

    def stray() -> None:
        try:
            store.save_alarm(bed="bed1", alarm=_alarm("a1"))
        except sqlite3.ProgrammingError as exc:
            errors.append(exc)

    thread = threading.Thread(target=stray)
    thread.start()
    thread.join(timeout=10)
    assert len(errors) == 1
    assert "thread" in str(errors[0])


_FILE_SIZE_LIMIT_SCRIPT = """
import json, resource, signal, sys
from pathlib import Path
sys.path.insert(0, "tests/edge")
from test_alarm_store import _alarm, _Clock
from edge.alarms.store import AlarmStore

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
path = Path(sys.argv[1])
clock = _Clock()
store = AlarmStore(path, clock=clock)
sizes = [p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists()]
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (max(sizes) + 64 * 1024, hard))
saved = 0
while store.healthy and saved < 10_000:
    store.save_alarm(bed="bed1", alarm=_alarm(f"a{saved}", pad=2000))
    saved += 1
error = store.last_error
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
clock.now_s += 1.0
store.retry()
print(json.dumps({"saved": saved, "error": error, "healthy_after": store.healthy}))
store.close()
"""


def test_a_real_write_error_from_the_kernel_is_held_and_caught_up(path: Path) -> None:
    """RLIMIT_FSIZE makes the kernel refuse the write (EFBIG) as it refuses one on a full filesystem."""
    root = Path(__file__).resolve().parents[2]
    path.parent.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-c", _FILE_SIZE_LIMIT_SCRIPT, str(path)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    outcome = json.loads(done.stdout)
    assert outcome["saved"] < 10_000, "the file size limit never bit"
    assert outcome["error"] is not None
    assert "I/O error" in outcome["error"] or "full" in outcome["error"]
    assert outcome["healthy_after"] is True
    again = AlarmStore(path)
    try:
        assert {a.id for a in again.active_alarms()["bed1"]} == {f"a{i}" for i in range(outcome["saved"])}
    finally:
        again.close()
