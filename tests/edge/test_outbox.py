"""The durable outbox: order, sessions, deletes, the disk cap and its drop order, bad files."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from edge.outbox import FAST_STEPS_MAX, DeliveryPriority, NewRow, Outbox, OutboxError, Spill

CAP_BYTES = 256 * 1024


def _row(topic: str, *, priority: DeliveryPriority, size: int = 100, tag: int = 0) -> NewRow:
    return NewRow(
        topic=topic,
        payload=tag.to_bytes(4, "big") + bytes(size),
        qos=1,
        retain=False,
        priority=priority,
        created_wall="2026-01-01T00:00:00.000Z",
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    box = Outbox(path=tmp_path / "outbox.db", max_bytes=CAP_BYTES, synchronous="full")
    box.open()
    yield box  # type: ignore[misc]
    box.close()


def test_wal_mode_and_synchronous(tmp_path: Path) -> None:
    for synchronous, expected in (("full", 2), ("normal", 1)):
        box = Outbox(path=tmp_path / f"{synchronous}.db", max_bytes=CAP_BYTES, synchronous=synchronous)  # type: ignore[arg-type]
        box.open()
        try:
            db = box._conn()
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert db.execute("PRAGMA synchronous").fetchone()[0] == expected
        finally:
            box.close()


def test_rows_come_back_in_append_order(outbox: Outbox) -> None:
    ids = outbox.append_many([_row(f"t/{i % 3}", priority=DeliveryPriority.STATE, tag=i) for i in range(10)])
    ids += outbox.append_many([_row("t/x", priority=DeliveryPriority.ALARM, tag=10 + i) for i in range(5)])
    assert ids == sorted(ids)
    assert len(set(ids)) == 15
    first = outbox.pending(after_id=0, limit=4)
    assert [r.id for r in first] == ids[:4]
    rest = outbox.pending(after_id=first[-1].id, limit=100)
    assert [r.id for r in rest] == ids[4:]
    assert [int.from_bytes(r.payload[:4], "big") for r in first + rest] == list(range(15))
    assert rest[-1].priority is DeliveryPriority.ALARM
    assert rest[-1].topic == "t/x"
    assert outbox.count() == 15


def test_delete_removes_only_named_rows_and_ids_never_repeat(outbox: Outbox) -> None:
    ids = outbox.append_many([_row("t", priority=DeliveryPriority.STATE, tag=i) for i in range(6)])
    assert outbox.delete([ids[0], ids[2], 999_999]) == 2
    assert [r.id for r in outbox.pending(after_id=0, limit=10)] == [ids[1], *ids[3:]]
    outbox.delete(ids)
    assert outbox.count() == 0
    (new_id,) = outbox.append_many([_row("t", priority=DeliveryPriority.STATE)])
    assert new_id > ids[-1]


def test_session_counter_starts_at_one_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path=path, max_bytes=CAP_BYTES)
    box.open()
    assert box.start_session() == 1
    assert box.start_session() == 2
    box.append_many([_row("t", priority=DeliveryPriority.STATE, tag=7)])
    box.close()
    again = Outbox(path=path, max_bytes=CAP_BYTES)
    again.open()
    try:
        assert again.start_session() == 3
        (row,) = again.pending(after_id=0, limit=10)
        assert int.from_bytes(row.payload[:4], "big") == 7
    finally:
        again.close()


def test_append_many_is_one_transaction(outbox: Outbox) -> None:
    bad = NewRow(
        topic="t", payload=None, qos=1, retain=False, priority=DeliveryPriority.STATE, created_wall="x"
    )  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        outbox.append_many([_row("t", priority=DeliveryPriority.STATE), bad])
    assert outbox.count() == 0


def test_cap_drops_observations_first_then_state_alarms_last(outbox: Outbox) -> None:
    alarms = outbox.append_many(
        [_row("b/alarm", priority=DeliveryPriority.ALARM, size=2000) for _ in range(10)]
    )
    states = outbox.append_many(
        [_row("b/twin", priority=DeliveryPriority.STATE, size=2000) for _ in range(20)]
    )
    observations = outbox.append_many(
        [_row(f"b/vitals/{i % 2}", priority=DeliveryPriority.OBSERVATION, size=2000) for i in range(100)]
    )
    assert outbox.size_bytes() > CAP_BYTES
    report = outbox.enforce_cap()
    assert outbox.size_bytes() <= CAP_BYTES
    assert report.size_after_bytes == outbox.disk_usage().total_bytes <= report.cap_bytes == CAP_BYTES
    assert set(report.by_priority) == {DeliveryPriority.OBSERVATION}
    dropped = report.by_priority[DeliveryPriority.OBSERVATION]
    assert dropped == report.total
    assert sum(report.by_topic.values()) == dropped
    assert set(report.by_topic) <= {"b/vitals/0", "b/vitals/1"}
    remaining = [r.id for r in outbox.pending(after_id=0, limit=1000)]
    # the oldest observations went, every alarm and state row stayed
    assert remaining == alarms + states + observations[dropped:]


def test_cap_drops_state_after_all_observations_and_alarms_last(outbox: Outbox) -> None:
    observations = outbox.append_many(
        [_row("b/vitals", priority=DeliveryPriority.OBSERVATION, size=2000) for _ in range(10)]
    )
    states = outbox.append_many(
        [_row("b/twin", priority=DeliveryPriority.STATE, size=2000) for _ in range(40)]
    )
    alarms = outbox.append_many(
        [_row("b/alarm", priority=DeliveryPriority.ALARM, size=2000) for _ in range(30)]
    )
    report = outbox.enforce_cap()
    assert report.by_priority[DeliveryPriority.OBSERVATION] == len(observations)
    dropped_states = report.by_priority[DeliveryPriority.STATE]
    assert 0 < dropped_states < len(states)
    assert DeliveryPriority.ALARM not in report.by_priority
    assert report.by_topic == {"b/vitals": len(observations), "b/twin": dropped_states}
    assert [r.id for r in outbox.pending(after_id=0, limit=1000)] == states[dropped_states:] + alarms

    more = outbox.append_many(
        [_row("b/alarm", priority=DeliveryPriority.ALARM, size=2000) for _ in range(40)]
    )
    report = outbox.enforce_cap()
    assert report.by_priority[DeliveryPriority.STATE] == len(states) - dropped_states
    assert report.by_priority[DeliveryPriority.ALARM] > 0
    assert DeliveryPriority.OBSERVATION not in report.by_priority
    left = [r.id for r in outbox.pending(after_id=0, limit=1000)]
    assert left == (alarms + more)[report.by_priority[DeliveryPriority.ALARM] :]
    assert outbox.size_bytes() <= CAP_BYTES


def test_under_cap_drops_nothing(outbox: Outbox) -> None:
    outbox.append_many([_row("t", priority=DeliveryPriority.OBSERVATION) for _ in range(10)])
    report = outbox.enforce_cap()
    assert report.total == 0
    assert outbox.count() == 10


def test_corrupt_file_raises_naming_path_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not an SQLite database at all" * 200)
    box = Outbox(path=path, max_bytes=CAP_BYTES)
    with pytest.raises(OutboxError) as caught:
        box.open()
    message = str(caught.value)
    assert str(path) in message
    assert "not a database" in message


def test_unopenable_path_raises_naming_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = blocker / "outbox.db"
    with pytest.raises(OutboxError) as caught:
        Outbox(path=path, max_bytes=CAP_BYTES).open()
    assert str(path) in str(caught.value)
    assert "cannot open" in str(caught.value)


def _disk_bytes(path: Path) -> int:
    """Bytes the outbox occupies on disk: the database, its WAL, journal and shared-memory files."""
    return sum(
        p.stat().st_size
        for p in (path, *(Path(f"{path}{s}") for s in ("-wal", "-journal", "-shm")))
        if p.exists()
    )


def test_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        box = Outbox(path=tmp_path / "outbox.db", max_bytes=CAP_BYTES)
        box.open()
        box.append_many([_row("t", priority=DeliveryPriority.STATE)])
        modes = {
            p.name: stat.S_IMODE(p.stat().st_mode)
            for p in tmp_path.iterdir()
            if p.name.startswith("outbox.db")
        }
        box.close()
    finally:
        os.umask(previous)
    assert {"outbox.db", "outbox.db-wal", "outbox.db-shm"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o600)


def test_files_on_disk_stay_under_the_cap_during_a_write_burst(tmp_path: Path) -> None:
    """The cap bounds database + WAL + journal + shm at every moment, not only the pages in use."""
    # Red before the fix (append_many + enforce_cap): "outbox files reached 5595720 bytes on disk with a
    # cap of 1048576".
    path = tmp_path / "outbox.db"
    cap = 1024 * 1024
    box = Outbox(path=path, max_bytes=cap)
    box.open()
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                peak = max(peak, _disk_bytes(path))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for wave in range(60):  # ~6 MB in batches of 50 rows, 1 to 4 KB each, mixed priorities
            batch = [
                _row(
                    f"b/{wave % 3}",
                    priority=DeliveryPriority(1 + (wave + i) % 3),
                    size=1000 + (i * 997) % 3000,
                    tag=i,
                )
                for i in range(50)
            ]
            box.store(batch)
            peak = max(peak, _disk_bytes(path))
        # the broker is back: acked rows are deleted 64 at a time while new rows keep coming
        last_id = box.pending(after_id=0, limit=100_000)[-1].id
        while rows := [r for r in box.pending(after_id=0, limit=64) if r.id <= last_id]:
            box.delete(r.id for r in rows)
            box.store([_row("b/0", priority=DeliveryPriority.OBSERVATION, size=500)])
            peak = max(peak, _disk_bytes(path))
    finally:
        stop.set()
        sampler.join()
        box.close()
    assert peak <= cap, f"outbox files reached {peak} bytes on disk with a cap of {cap}"


def test_loss_reports_are_shed_only_after_every_alarm(outbox: Outbox) -> None:
    reports = outbox.store(
        [_row("b/events", priority=DeliveryPriority.LOSS_REPORT, size=2000, tag=i) for i in range(10)]
    ).ids
    result = outbox.store([_row("b/alarm", priority=DeliveryPriority.ALARM, size=2000) for _ in range(200)])
    assert set(result.dropped.by_priority) == {DeliveryPriority.ALARM}
    assert result.unstored == []
    left = outbox.pending(after_id=0, limit=1000)
    assert [r.id for r in left[: len(reports)]] == reports
    assert {r.priority for r in left[len(reports) :]} == {DeliveryPriority.ALARM}
    assert outbox.disk_usage().total_bytes <= CAP_BYTES


def test_incoming_rows_below_everything_stored_are_the_ones_dropped(tmp_path: Path) -> None:
    cap = 1024 * 1024  # the smallest `store.max_bytes` the config allows
    outbox = Outbox(path=tmp_path / "outbox.db", max_bytes=cap)
    outbox.open()
    try:
        alarms = outbox.store(
            [_row("b/alarm", priority=DeliveryPriority.ALARM, size=2000) for _ in range(100)]
        )
        assert alarms.dropped.total == 0
        result = outbox.store(
            [_row("b/vitals", priority=DeliveryPriority.OBSERVATION, size=2000, tag=i) for i in range(400)]
        )
        assert result.dropped.by_priority.get(DeliveryPriority.OBSERVATION, 0) > 0
        assert DeliveryPriority.ALARM not in result.dropped.by_priority
        left = outbox.pending(after_id=0, limit=10_000)
        assert [r.id for r in left][:100] == alarms.ids
        assert [r.id for r in left][100:] == result.ids
        # the observations kept are the newest ones
        tags = [int.from_bytes(r.payload[:4], "big") for r in left[100:]]
        assert tags == list(range(400 - len(tags), 400))
        assert outbox.disk_usage().total_bytes <= cap
    finally:
        outbox.close()


def test_outbox_made_without_auto_vacuum_is_converted_at_open(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path=path, max_bytes=CAP_BYTES)
    box.open()
    box.append_many([_row("t", priority=DeliveryPriority.STATE, tag=3)])
    db = box._conn()
    db.execute("PRAGMA auto_vacuum=NONE")
    db.execute("VACUUM")
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    box.close()
    again = Outbox(path=path, max_bytes=CAP_BYTES)
    again.open()
    try:
        assert again._conn().execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        (row,) = again.pending(after_id=0, limit=10)
        assert int.from_bytes(row.payload[:4], "big") == 3
    finally:
        again.close()


def test_spill_keeps_the_newest_state_per_topic_and_sheds_lowest_priority_first() -> None:
    spill = Spill(max_bytes=20_000)
    twin = [replace(_row("b/twin", priority=DeliveryPriority.STATE, tag=i), retain=True) for i in range(3)]
    report = spill.add(twin)
    assert report.by_topic == {"b/twin": 2}  # a retained topic keeps only its newest state
    report = spill.add(
        [_row("b/vitals", priority=DeliveryPriority.OBSERVATION, size=5000, tag=i) for i in range(3)]
    )
    report = spill.add([_row("b/alarm", priority=DeliveryPriority.ALARM, size=5000, tag=i) for i in range(2)])
    assert report.by_priority == {DeliveryPriority.OBSERVATION: 2}
    kept = spill.take()
    assert [(r.topic, int.from_bytes(r.payload[:4], "big")) for r in kept] == [
        ("b/twin", 2),
        ("b/vitals", 2),
        ("b/alarm", 0),
        ("b/alarm", 1),
    ]
    assert len(spill) == 0


def test_store_and_delete_is_one_transaction_without_size_bookkeeping(tmp_path: Path) -> None:
    """A publisher step: new rows in, acked rows out, one COMMIT, no stat of the files nor size PRAGMA."""
    outbox = Outbox(path=tmp_path / "outbox.db", max_bytes=16 * 1024 * 1024)
    outbox.open()
    acked = outbox.store(
        [_row("b/vitals", priority=DeliveryPriority.OBSERVATION, tag=i) for i in range(5)]
    ).ids
    statements: list[str] = []
    db = outbox._conn()
    db.set_trace_callback(statements.append)
    done = outbox.store_and_delete(
        [_row("b/vitals", priority=DeliveryPriority.OBSERVATION, tag=10 + i) for i in range(3)], acked[:4]
    )
    db.set_trace_callback(None)
    assert done is not None
    ids, deleted = done
    assert deleted == 4
    assert ids == sorted(ids)
    assert ids[0] > acked[-1]
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
    assert not [s for s in statements if s.startswith("PRAGMA")]
    left = outbox.pending(after_id=0, limit=10)
    assert [int.from_bytes(r.payload[:4], "big") for r in left] == [4, 10, 11, 12]
    assert outbox.commits == 1
    outbox.close()


def test_store_and_delete_hands_over_to_the_careful_path_before_the_cap(tmp_path: Path) -> None:
    """The size budget of the last careful pass ends the fast path before the files can pass the cap,
    and after at most FAST_STEPS_MAX transactions however small; the careful pass renews it."""
    roomy = Outbox(path=tmp_path / "roomy.db", max_bytes=64 * 1024 * 1024)
    roomy.open()
    try:
        roomy.store([])
        small = 0
        while roomy.store_and_delete([_row("b/vitals", priority=DeliveryPriority.OBSERVATION, size=10)], []):
            small += 1
            assert small <= FAST_STEPS_MAX
        assert small == FAST_STEPS_MAX
        roomy.store([])  # a careful pass: a fresh budget
        assert (
            roomy.store_and_delete([_row("b/vitals", priority=DeliveryPriority.OBSERVATION)], []) is not None
        )
    finally:
        roomy.close()
    cap = 1024 * 1024
    box = Outbox(path=tmp_path / "outbox.db", max_bytes=cap)
    box.open()
    try:
        box.store([])
        fast = 0
        while box.store_and_delete(
            [_row("b/vitals", priority=DeliveryPriority.OBSERVATION, size=3000) for _ in range(10)], []
        ):
            fast += 1
            assert box.disk_usage().total_bytes <= cap
        assert fast < FAST_STEPS_MAX  # the bytes ran out first
        dropped = 0
        for _ in range(20):  # the careful path sheds to keep the cap
            dropped += box.store(
                [_row("b/vitals", priority=DeliveryPriority.OBSERVATION, size=3000) for _ in range(20)]
            ).dropped.total
            box.store_and_delete([_row("b/vitals", priority=DeliveryPriority.OBSERVATION, size=3000)], [])
            assert box.disk_usage().total_bytes <= cap
        assert dropped > 0
    finally:
        box.close()
