"""The durable outbox: every QoS 1 message waits here (SQLite, WAL mode) until the broker's PUBACK.

Ownership: one `Outbox` holds one SQLite connection, and that connection belongs to ONE thread (the
publisher's worker). `check_same_thread` stays on, so a stray call from another thread fails loudly.

Durability (fsync policy): the database runs with `journal_mode=WAL` and `synchronous` from
`StoreConfig.synchronous`:

* `full` (default): SQLite fsyncs the WAL on every commit. A committed batch survives a power cut.
* `normal`: the WAL is fsynced only at checkpoints. A crash of the process loses nothing; a power cut
  may lose the last commits since the previous checkpoint, but never corrupts the database.

The publisher commits each worker step with `store_and_delete()`: the step's new rows and the rows
acknowledged since the last step, in ONE transaction, so `full` costs one fsync per step, not per
message, nor one for the inserts and another for the deletes. When that is not allowed (see below) it
falls back to `store()`, one transaction per chunk of at most the WAL budget (one chunk for a usual
batch), and `delete()`.

Size bookkeeping is not paid per step: `store_and_delete()` runs without looking at the files (no
stat, no statvfs, no size PRAGMAs) while a budget measured at the last careful pass lasts: at most
`FAST_STEPS_MAX` transactions and half the room that pass left under the cap in force, counted with
the same pessimistic estimate of the WAL frames and pages a transaction writes that the cap uses
(deletes at 2 frames a row). Past either bound it returns None and the caller takes the careful path,
which measures, sheds and sets a fresh budget. So the files never grow by more than half the room
measured at the last check before the next one, and another writer that fills the disk is seen at
most `FAST_STEPS_MAX` steps later (or at once, as SQLITE_FULL, which also ends the budget).

Disk cap: the cap bounds what the outbox occupies ON DISK: the database file, its `-wal`, `-journal`
and `-shm` files together (`disk_usage()`). The cap in force (`effective_cap_bytes()`) is the smaller
of `max_bytes` and the outbox's files plus the free space of their filesystem less a margin
(`DISK_MARGIN_*`), re-read on every `store()`, so the outbox sheds before the disk is full and leaves
room to the rest of the system. `store()` appends in transactions of at most `wal_budget_bytes` and,
before each, projects the size the files will reach (the WAL frames of the transaction plus the pages
the database will grow by at the next checkpoint). When the projection passes the cap it checkpoints
the WAL (`TRUNCATE`), and if that is not enough it sheds: the oldest row of the lowest priority goes
first, over the stored and the incoming rows together, down to `CAP_TARGET_FRACTION` of the cap, then
frees the pages (`incremental_vacuum`) and checkpoints again. After every write the WAL is truncated
once it passes `wal_budget_bytes` (also `journal_size_limit`). The slack: the projection is an
estimate; the tests sample the files on disk during write bursts and hold them to the cap.

Page reuse: databases are created with `auto_vacuum=INCREMENTAL` (it must be set before the first table
exists), so freed pages can be given back to the filesystem. A database created before that (by an
older version) is converted with one `VACUUM` at open when the cap and the free space allow twice its
size; otherwise it keeps its freed pages for reuse and a warning says so.

Priority order (lowest is shed first): OBSERVATION < STATE < ALARM < LOSS_REPORT. A report of loss is
shed only after every alarm, so the station learns what it did not receive.

Disk full: an insert that fails with SQLITE_FULL (the disk filled faster than the cap could see) is not
an error of the outbox: `store()` sheds, checkpoints and retries once, then hands the rows it could
not store back to the caller (`StoreResult.unstored`), which keeps what it can in memory.

Files: the database, WAL and shared-memory files are created 0600 whatever the umask (SQLite gives the
WAL and shm files the mode of the database), and an existing outbox is brought back to 0600 at open.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

LOGGER = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
CAP_TARGET_FRACTION = 0.9
"""A shed brings the projected size below this fraction of the cap, so the cap is not hit on every
following batch."""
WAL_BUDGET_DIVISOR = 8
"""The WAL may hold at most cap / 8 (within `WAL_BUDGET_MIN_BYTES`..`WAL_BUDGET_MAX_BYTES`)."""
WAL_BUDGET_MIN_BYTES = 64 * 1024
WAL_BUDGET_MAX_BYTES = 4 * 1024 * 1024
DISK_MARGIN_FRACTION = 0.05
"""Free space left to the rest of the system on the outbox's filesystem: 5 % of its size, within
`DISK_MARGIN_MIN_BYTES`..`DISK_MARGIN_MAX_BYTES`."""
DISK_MARGIN_MIN_BYTES = 256 * 1024
DISK_MARGIN_MAX_BYTES = 64 * 1024 * 1024
FILE_MODE = 0o600
_FILE_SUFFIXES = ("-wal", "-journal", "-shm")
_WAL_FRAME_HEADER_BYTES = 24
_RECORD_OVERHEAD_BYTES = 32
"""Per-row bytes besides topic, payload and time: record header, qos/retain/priority, rowid, cell
pointer; the index entry is counted apart."""
_INDEX_ENTRY_BYTES = 24
_TRANSACTION_EXTRA_PAGES = 24
"""Pages a write rewrites besides the new ones: b-tree parents, index leaves, header, freelist trunks."""
_TRANSACTION_EXTRA_FRACTION = 0.125
"""...and per new page: pointer-map and freelist pages touched by allocating it (measured: 5-20 %)."""
_SHED_BATCH_ROWS = 500
FAST_STEPS_MAX = 64
"""`store_and_delete` transactions between two measurements of the files and the free space, at most."""
_DELETE_FRAMES_PER_ROW = 2
_DELETE_MIN_BATCH_ROWS = 8
_SQLITE_FULL = 13


class DeliveryPriority(enum.IntEnum):
    """How precious a message is when the disk cap forces a drop; lower values are dropped first."""

    OBSERVATION = 1
    """Vitals batches and waveforms: dropped first."""
    STATE = 2
    """Retained snapshots (twin, forecast), device status, events."""
    ALARM = 3
    """Alarms and alarm-state messages."""
    LOSS_REPORT = 4
    """Reports of dropped messages: dropped only after every alarm, so the loss is always told."""


class OutboxError(Exception):
    """The outbox database cannot be opened or used; the message names the path and the reason."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRow:
    """A message to append: encoded payload plus what the publisher needs to send it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    priority: DeliveryPriority
    created_wall: str
    """RFC 3339 wall-clock time of submission (diagnostics only)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Row(NewRow):
    """A stored message; `id` is the delivery order."""

    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DropReport:
    """What a cap pass dropped (stored rows shed and incoming rows not stored)."""

    by_priority: Mapping[DeliveryPriority, int] = field(default_factory=dict)
    by_topic: Mapping[str, int] = field(default_factory=dict)
    size_before_bytes: int = 0
    size_after_bytes: int = 0
    cap_bytes: int = 0
    """The cap in force for this pass (`effective_cap_bytes`)."""

    @property
    def total(self) -> int:
        """Return the number of rows dropped."""
        return sum(self.by_priority.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreResult:
    """What `store` did with a batch."""

    ids: list[int]
    """Ids of the rows stored (and not shed again by a later chunk of the same call), in order."""
    dropped: DropReport
    unstored: list[NewRow]
    """Rows the disk had no room for even after shedding (SQLITE_FULL), in order: the caller's to keep."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskUsage:
    """Sizes of the outbox's files."""

    db_bytes: int
    wal_bytes: int
    other_bytes: int
    """`-journal` and `-shm`."""

    @property
    def total_bytes(self) -> int:
        """Return what the outbox occupies on disk."""
        return self.db_bytes + self.wal_bytes + self.other_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class _Layout:
    page_count: int
    freelist: int
    files: DiskUsage


class _Tally:
    """Counts of dropped rows for one `DropReport`."""

    def __init__(self) -> None:
        self.by_priority: Counter[DeliveryPriority] = Counter()
        self.by_topic: Counter[str] = Counter()
        self.shed_ids: set[int] = set()

    def add(self, *, topic: str, priority: DeliveryPriority) -> None:
        self.by_priority[priority] += 1
        self.by_topic[topic] += 1


def is_disk_full(exc: BaseException) -> bool:
    """Whether an SQLite error says the disk (or the database's limit) is full."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF == _SQLITE_FULL


def _row_bytes(row: NewRow) -> int:
    return len(row.payload) + len(row.topic.encode()) + len(row.created_wall)


class Outbox:
    """A FIFO of encoded MQTT messages on SQLite; used by exactly one thread."""

    def __init__(
        self,
        *,
        path: Path,
        max_bytes: int,
        synchronous: Literal["full", "normal"] = "full",
    ) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._synchronous = synchronous
        self._db: sqlite3.Connection | None = None
        self._page_size = 4096
        self._wal_budget_bytes = WAL_BUDGET_MIN_BYTES
        self._cap_bytes = max_bytes
        """The cap in force at the last `store`/`enforce_cap` (deletes keep their WAL within it)."""
        self._fast_budget_bytes = 0
        """What `store_and_delete` may still add to the files before the next careful pass."""
        self._fast_steps_left = 0
        self._commits = 0

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def max_bytes(self) -> int:
        """The configured disk cap."""
        return self._max_bytes

    @property
    def commits(self) -> int:
        """Transactions `store_and_delete` committed so far (one per publisher step on the fast path)."""
        return self._commits

    @property
    def wal_budget_bytes(self) -> int:
        """The WAL is truncated once it passes this size (set from the cap in force)."""
        return self._wal_budget_bytes

    def open(self) -> None:
        """Open (or create) the database; raise OutboxError naming the path and reason on failure."""
        if self._db is not None:
            raise OutboxError(f"outbox {self._path}: already open")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._make_private()
            db = sqlite3.connect(self._path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"outbox {self._path}: cannot open: {exc}") from exc
        try:
            # Before the first table exists, or it takes a VACUUM (see `_convert_to_incremental_vacuum`).
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"outbox {self._path}: cannot switch to WAL mode (got {mode!r})")
            db.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            # Debian builds SQLite with secure_delete on: every freed page would be zeroed through the
            # WAL, so a shed of N rows would write N pages. FAST zeroes what it can without extra I/O.
            db.execute("PRAGMA secure_delete=FAST")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise OutboxError(f"outbox {self._path}: database is corrupt: {check}")
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "CREATE TABLE IF NOT EXISTS messages ("
                " id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " topic TEXT NOT NULL,"
                " payload BLOB NOT NULL,"
                " qos INTEGER NOT NULL,"
                " retain INTEGER NOT NULL,"
                " priority INTEGER NOT NULL,"
                " created_wall TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS messages_priority ON messages (priority, id)")
            db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (_SCHEMA_VERSION,)
            )
            db.execute("COMMIT")
            version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            if version != _SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox {self._path}: schema version {version} is not supported"
                    f" (expected {_SCHEMA_VERSION})"
                )
            self._page_size = db.execute("PRAGMA page_size").fetchone()[0]
            self._db = db
            self._make_private()
            self._convert_to_incremental_vacuum()
            self._set_wal_budget(self.effective_cap_bytes())
            report = self.enforce_cap()
        except OutboxError:
            self._db = None
            db.close()
            raise
        except (OSError, sqlite3.Error) as exc:
            self._db = None
            db.close()
            raise OutboxError(f"outbox {self._path}: cannot use the database: {exc}") from exc
        LOGGER.info(
            "outbox %s open: %d rows, %d bytes on disk (cap in force %d, WAL budget %d), synchronous=%s%s",
            self._path,
            self.count(),
            self.disk_usage().total_bytes,
            report.cap_bytes,
            self._wal_budget_bytes,
            self._synchronous,
            f"; dropped {report.total} rows to fit the cap" if report.total else "",
        )

    def _files(self) -> list[Path]:
        return [self._path, *(Path(f"{self._path}{suffix}") for suffix in _FILE_SUFFIXES)]

    def _make_private(self) -> None:
        """Create the database file 0600 (SQLite copies its mode to the WAL and shm) and fix old files."""
        if not self._path.exists():
            os.close(os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
        for path in self._files():
            try:
                if path.stat().st_mode & 0o777 != FILE_MODE:
                    path.chmod(FILE_MODE)
            except FileNotFoundError:
                continue

    def _convert_to_incremental_vacuum(self) -> None:
        """Give an outbox made before auto_vacuum the ability to shrink, when a VACUUM fits."""
        db = self._conn()
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            return
        size = self.disk_usage().total_bytes
        if 2 * size > self.effective_cap_bytes() - size:
            LOGGER.warning(
                "outbox %s was created without auto_vacuum and a VACUUM (twice its %d bytes) does not fit;"
                " freed pages are reused but the file cannot shrink",
                self._path,
                size,
            )
            return
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("VACUUM")
        self._checkpoint()
        LOGGER.info("outbox %s converted to incremental auto_vacuum", self._path)

    def close(self) -> None:
        """Close the database (idempotent)."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError(f"outbox {self._path}: not open")
        return self._db

    def start_session(self) -> int:
        """Increment and persist the session number; the first session is 1."""
        db = self._conn()
        try:
            with transaction(db):
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('session', 0)")
                db.execute("UPDATE meta SET value = value + 1 WHERE key = 'session'")
                session: int = db.execute("SELECT value FROM meta WHERE key = 'session'").fetchone()[0]
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self._path}: cannot start a session: {exc}") from exc
        return session

    def store_and_delete(
        self, rows: Sequence[NewRow], delete_ids: Sequence[int]
    ) -> tuple[list[int], int] | None:
        """Append rows and delete acknowledged ones in ONE transaction, without size bookkeeping.

        Return (ids of the new rows in delivery order, rows deleted), or None when the budget of the
        last careful pass is spent or the disk is full (nothing was written): the caller then uses
        `store` and `delete`, which measure, shed and refresh the budget (module docstring).
        """
        growth = self._growth_bytes(rows, len(delete_ids))
        if self._fast_steps_left <= 0 or growth > self._fast_budget_bytes:
            return None
        db = self._conn()
        ids: list[int] = []
        deleted = 0
        try:
            with transaction(db):
                if delete_ids:
                    deleted = db.executemany(
                        "DELETE FROM messages WHERE id = ?", [(row_id,) for row_id in delete_ids]
                    ).rowcount
                for row in rows:
                    cursor = db.execute(
                        "INSERT INTO messages (topic, payload, qos, retain, priority, created_wall)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            row.topic,
                            row.payload,
                            row.qos,
                            int(row.retain),
                            int(row.priority),
                            row.created_wall,
                        ),
                    )
                    if cursor.lastrowid is None:
                        raise OutboxError(f"outbox {self._path}: insert returned no row id")
                    ids.append(cursor.lastrowid)
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            self._fast_budget_bytes = 0
            return None
        self._commits += 1
        self._fast_budget_bytes -= growth
        self._fast_steps_left -= 1
        return ids, deleted

    def _growth_bytes(self, rows: Sequence[NewRow], deletes: int) -> int:
        """Bound what one transaction adds to the files: its WAL frames and the pages it may add."""
        pages, frames = self._new_pages(rows)
        if deletes:
            frames += deletes * _DELETE_FRAMES_PER_ROW + (0 if rows else _TRANSACTION_EXTRA_PAGES)
        return pages * self._page_size + frames * (self._page_size + _WAL_FRAME_HEADER_BYTES)

    def _refresh_fast_budget(self, *, cap: int, usage: int) -> None:
        """After a careful pass: `store_and_delete` may add half the room left under the cap."""
        self._fast_budget_bytes = max(0, cap - usage) // 2
        self._fast_steps_left = FAST_STEPS_MAX

    def append_many(self, rows: Sequence[NewRow]) -> list[int]:
        """Append rows in one transaction, without looking at the cap; return their ids (delivery order)."""
        db = self._conn()
        ids: list[int] = []
        with transaction(db):
            for row in rows:
                cursor = db.execute(
                    "INSERT INTO messages (topic, payload, qos, retain, priority, created_wall)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (row.topic, row.payload, row.qos, int(row.retain), int(row.priority), row.created_wall),
                )
                if cursor.lastrowid is None:
                    raise OutboxError(f"outbox {self._path}: insert returned no row id")
                ids.append(cursor.lastrowid)
        return ids

    def store(self, rows: Sequence[NewRow]) -> StoreResult:
        """Append rows within the cap in force, shedding the least precious rows first (module docstring).

        Raises sqlite3.Error for anything but a full disk; rows a full disk refused come back unstored.
        """
        cap, size_before = self._begin_pass()
        tally = _Tally()
        ids: list[int] = []
        remaining = list(rows)
        while remaining:
            chunk, remaining = self._take_chunk(remaining)
            try:
                ids += self._store_chunk(chunk, cap=cap, tally=tally)
            except sqlite3.Error as exc:
                if not is_disk_full(exc):
                    raise
                # The disk filled faster than the cap saw: measure again, shed, retry once.
                LOGGER.debug("outbox %s: disk full while storing; shedding and retrying once", self._path)
                try:
                    self._checkpoint()
                    cap = self.effective_cap_bytes()
                    self._set_wal_budget(cap)
                    ids += self._store_chunk(chunk, cap=cap, tally=tally)
                except sqlite3.Error as again:
                    if not is_disk_full(again):
                        raise
                    return StoreResult(
                        ids=[row_id for row_id in ids if row_id not in tally.shed_ids],
                        dropped=self._report(tally, size_before, cap),
                        unstored=chunk + remaining,
                    )
        kept = [row_id for row_id in ids if row_id not in tally.shed_ids]
        return StoreResult(ids=kept, dropped=self._report(tally, size_before, cap), unstored=[])

    def _take_chunk(self, rows: list[NewRow]) -> tuple[list[NewRow], list[NewRow]]:
        """Split off the first rows whose WAL frames fit half the WAL budget (at least one row)."""
        limit = self._wal_budget_bytes // 2
        total = 0
        for index, row in enumerate(rows):
            total += _row_bytes(row)
            if total > limit and index > 0:
                return rows[:index], rows[index:]
        return rows, []

    def _store_chunk(self, chunk: list[NewRow], *, cap: int, tally: _Tally) -> list[int]:
        kept = self._make_room(chunk, cap=cap, tally=tally)
        if not kept:
            return []
        ids = self.append_many(kept)
        self._truncate_wal_above(self._wal_budget_bytes)
        return ids

    def delete(self, ids: Iterable[int]) -> int:
        """Delete rows by id; return how many existed.

        One transaction when the WAL frames it writes fit under the cap, else several (each commit
        deletes whole rows; a crash in between leaves rows that are sent again: at-least-once).
        """
        ids = list(ids)
        db = self._conn()
        frame = self._page_size + _WAL_FRAME_HEADER_BYTES
        deleted = 0
        start = 0
        while start < len(ids):
            usage = self.disk_usage()
            # A deleted row rewrites its table leaf and, with overflow pages, a page of their chain;
            # rows of one priority are interleaved with others (measured: ~2 frames a row).
            rows_fit = ((self._cap_bytes - usage.total_bytes) // frame - _TRANSACTION_EXTRA_PAGES) // 3
            if rows_fit < min(len(ids) - start, _DELETE_MIN_BATCH_ROWS) and usage.wal_bytes > 0:
                self._checkpoint()
                continue
            batch = ids[start : start + min(_SHED_BATCH_ROWS, max(1, rows_fit))]
            start += len(batch)
            with transaction(db):
                for row_id in batch:
                    deleted += db.execute("DELETE FROM messages WHERE id = ?", (row_id,)).rowcount
        self._truncate_wal_above(self._wal_budget_bytes)
        return deleted

    def pending(self, *, after_id: int, limit: int) -> list[Row]:
        """Return up to `limit` rows with id > after_id, in id order."""
        cursor = self._conn().execute(
            "SELECT id, topic, payload, qos, retain, priority, created_wall FROM messages"
            " WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [
            Row(
                id=row_id,
                topic=topic,
                payload=bytes(payload),
                qos=qos,
                retain=bool(retain),
                priority=DeliveryPriority(priority),
                created_wall=created_wall,
            )
            for row_id, topic, payload, qos, retain, priority, created_wall in cursor.fetchall()
        ]

    def count(self) -> int:
        """Return the number of stored rows."""
        value: int = self._conn().execute("SELECT count(*) FROM messages").fetchone()[0]
        return value

    def last_id(self) -> int:
        """Return the highest stored row id (0 when empty): rows stored later get higher ids."""
        value: int = self._conn().execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
        return value

    def size_bytes(self) -> int:
        """Return the bytes the database pages in use occupy (free pages and the WAL not counted)."""
        layout = self._layout()
        return (layout.page_count - layout.freelist) * self._page_size

    def disk_usage(self) -> DiskUsage:
        """Return the sizes of the database, WAL, journal and shm files (what the cap bounds)."""
        sizes: list[int] = []
        for path in self._files():
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:
                sizes.append(0)
        db, wal, journal, shm = sizes
        return DiskUsage(db_bytes=db, wal_bytes=wal, other_bytes=journal + shm)

    def effective_cap_bytes(self) -> int:
        """Return the cap in force: `max_bytes`, or less when the filesystem has less room left."""
        return self._cap_for(self.disk_usage().total_bytes)

    def _begin_pass(self) -> tuple[int, int]:
        """Set the WAL budget from the cap in force; return the cap and the bytes on disk now."""
        usage = self.disk_usage().total_bytes
        cap = self._cap_for(usage)
        self._set_wal_budget(cap)
        return cap, usage

    def _cap_for(self, usage: int) -> int:
        try:
            fs = os.statvfs(self._path.parent)
        except OSError:
            return self._max_bytes
        margin = int(fs.f_blocks * fs.f_frsize * DISK_MARGIN_FRACTION)
        margin = min(max(margin, DISK_MARGIN_MIN_BYTES), DISK_MARGIN_MAX_BYTES)
        return max(0, min(self._max_bytes, usage + fs.f_bavail * fs.f_frsize - margin))

    def enforce_cap(self) -> DropReport:
        """Shed stored rows, lowest priority and oldest first, until the files fit the cap in force."""
        cap, size_before = self._begin_pass()
        tally = _Tally()
        try:
            self._make_room([], cap=cap, tally=tally)
        except sqlite3.Error as exc:
            if not is_disk_full(exc):
                raise
            LOGGER.warning("outbox %s: the disk is full; cannot shed rows now", self._path)
        return self._report(tally, size_before, cap)

    # ---- the cap -------------------------------------------------------------------------------

    def _set_wal_budget(self, cap: int) -> None:
        self._cap_bytes = cap
        budget = min(max(cap // WAL_BUDGET_DIVISOR, WAL_BUDGET_MIN_BYTES), WAL_BUDGET_MAX_BYTES)
        if budget != self._wal_budget_bytes:
            db = self._conn()
            db.execute(f"PRAGMA journal_size_limit={budget}")
            db.execute(
                f"PRAGMA wal_autocheckpoint={max(1, budget // (self._page_size + _WAL_FRAME_HEADER_BYTES))}"
            )
            self._wal_budget_bytes = budget

    def _layout(self) -> _Layout:
        db = self._conn()
        return _Layout(
            page_count=db.execute("PRAGMA page_count").fetchone()[0],
            freelist=db.execute("PRAGMA freelist_count").fetchone()[0],
            files=self.disk_usage(),
        )

    def _pages_for(self, lengths: Iterable[int]) -> float:
        """Estimate the pages rows of these lengths (topic + payload + time) take, table and index."""
        usable = self._page_size
        max_local = usable - 35
        min_local = (usable - 12) * 32 // 255 - 23
        pages = 0.0
        rows = 0
        for length in lengths:
            rows += 1
            record = length + _RECORD_OVERHEAD_BYTES
            if record <= max_local:
                pages += 1.0 / max(1, (usable - 8) // (record + 4))
                continue
            spill = min_local + (record - min_local) % (usable - 4)
            local = spill if spill <= max_local else min_local
            pages += math.ceil((record - local) / (usable - 4)) + (local + 4) / (usable - 8)
        return pages + rows * _INDEX_ENTRY_BYTES / (usable / 2)

    def _new_pages(self, rows: Sequence[NewRow]) -> tuple[int, int]:
        """Estimate the pages appending `rows` adds to the database, and the WAL frames it writes."""
        if not rows:
            return 0, 0
        pages = math.ceil(self._pages_for(_row_bytes(r) for r in rows) * (1 + _TRANSACTION_EXTRA_FRACTION))
        return pages, pages + _TRANSACTION_EXTRA_PAGES

    def _projected(self, layout: _Layout, rows: Sequence[NewRow]) -> int:
        """Estimate the files' size after storing `rows` and checkpointing (WAL still full at that moment)."""
        page_size = self._page_size
        files = layout.files
        new_pages, frames = self._new_pages(rows)
        used = layout.page_count - layout.freelist
        db_after = max(files.db_bytes, layout.page_count * page_size, (used + new_pages) * page_size)
        wal_after = files.wal_bytes + frames * (page_size + _WAL_FRAME_HEADER_BYTES)
        return db_after + wal_after + files.other_bytes

    def _needed(self, layout: _Layout, rows: Sequence[NewRow]) -> int:
        """Like `_projected`, but counting only the pages in use (what shedding can reduce)."""
        page_size = self._page_size
        files = layout.files
        new_pages, frames = self._new_pages(rows)
        used = layout.page_count - layout.freelist
        return (
            (used + new_pages) * page_size
            + files.wal_bytes
            + frames * (page_size + _WAL_FRAME_HEADER_BYTES)
            + files.other_bytes
        )

    def _make_room(self, chunk: list[NewRow], *, cap: int, tally: _Tally) -> list[NewRow]:
        """Return the rows of `chunk` to store, having shed what makes them fit the cap."""
        layout = self._layout()
        if self._projected(layout, chunk) <= cap:
            return chunk
        self._checkpoint()
        layout = self._layout()
        if self._projected(layout, chunk) <= cap:
            return chunk
        target = int(cap * CAP_TARGET_FRACTION)
        kept = list(chunk)
        dropped_incoming: list[NewRow] = []
        while (excess := self._needed(layout, kept) - target) > 0:
            stored, incoming = self._pick_victims(excess_bytes=excess, incoming=kept)
            if not stored and not incoming:
                break
            self._shed(stored, tally=tally)
            dropped_incoming += [kept[i] for i in sorted(incoming)]
            kept = [row for i, row in enumerate(kept) if i not in incoming]
            layout = self._layout()
        for row in dropped_incoming:
            tally.add(topic=row.topic, priority=row.priority)
        self._shrink_to(cap=cap, rows=kept)
        return kept

    def _shed(self, stored: Sequence[tuple[int, str, DeliveryPriority]], *, tally: _Tally) -> None:
        """Delete chosen rows (within the cap, see `delete`), count them, and truncate the WAL."""
        self.delete(row_id for row_id, _, _ in stored)
        for row_id, topic, priority in stored:
            tally.add(topic=topic, priority=priority)
            tally.shed_ids.add(row_id)
        self._checkpoint()

    def _pick_victims(
        self, *, excess_bytes: int, incoming: Sequence[NewRow]
    ) -> tuple[list[tuple[int, str, DeliveryPriority]], set[int]]:
        """Choose rows worth `excess_bytes`: lowest priority first; in one, stored (oldest first) then new."""
        db = self._conn()
        page_size = self._page_size
        freed = 0.0
        stored: list[tuple[int, str, DeliveryPriority]] = []
        chosen: set[int] = set()
        for priority in sorted(DeliveryPriority):
            for row_id, topic, length in db.execute(
                "SELECT id, topic, length(payload) + length(CAST(topic AS BLOB)) + length(created_wall)"
                " FROM messages WHERE priority = ? ORDER BY id",
                (int(priority),),
            ):
                stored.append((row_id, topic, priority))
                freed += self._pages_for([length]) * page_size
                if freed >= excess_bytes:
                    return stored, chosen
            for index, row in enumerate(incoming):
                if row.priority == priority:
                    chosen.add(index)
                    freed += self._pages_for([_row_bytes(row)]) * (2 * page_size + _WAL_FRAME_HEADER_BYTES)
                    if freed >= excess_bytes:
                        return stored, chosen
        return stored, chosen

    def _shrink_to(self, *, cap: int, rows: Sequence[NewRow]) -> None:
        """Give free pages back to the filesystem while the file itself keeps `rows` from fitting."""
        db = self._conn()
        layout = self._layout()
        while layout.freelist > 0 and self._projected(layout, rows) > cap:
            room = cap - layout.files.total_bytes
            step = max(1, min(layout.freelist, room // (self._page_size + _WAL_FRAME_HEADER_BYTES) // 2))
            db.execute(f"PRAGMA incremental_vacuum({step})").fetchall()
            self._checkpoint()
            layout = self._layout()

    def _truncate_wal_above(self, limit_bytes: int) -> None:
        if self.disk_usage().wal_bytes > limit_bytes:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it to zero bytes."""
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _report(self, tally: _Tally, size_before: int, cap: int) -> DropReport:
        report = DropReport(
            by_priority=dict(tally.by_priority),
            by_topic=dict(tally.by_topic),
            size_before_bytes=size_before,
            size_after_bytes=self.disk_usage().total_bytes,
            cap_bytes=cap,
        )
        self._refresh_fast_budget(cap=cap, usage=report.size_after_bytes)
        if report.total:
            LOGGER.debug(
                "outbox %s: %d bytes on disk with a cap of %d: dropped %d rows (%s), now %d bytes",
                self._path,
                size_before,
                cap,
                report.total,
                ", ".join(f"{p.name.lower()}={n}" for p, n in sorted(report.by_priority.items())),
                report.size_after_bytes,
            )
        return report


class Spill:
    """Rows a full disk refused, kept in memory in order until the disk takes them or paho does.

    Bounded by `max_bytes`: a retained row replaces the older rows of its topic (a subscriber keeps
    only the newest state anyway), and past the bound the oldest row of the lowest priority goes.
    Every row removed that way is counted in the `DropReport` the call returns. Owned by one thread.
    """

    def __init__(self, *, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._rows: list[NewRow] = []
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, rows: Iterable[NewRow]) -> DropReport:
        """Append rows; return what had to go to keep the newest state within the bound."""
        tally = _Tally()
        for row in rows:
            if row.retain:
                for old in [r for r in self._rows if r.retain and r.topic == row.topic]:
                    self._remove(old)
                    tally.add(topic=old.topic, priority=old.priority)
            self._rows.append(row)
            self._bytes += _row_bytes(row)
        while self._bytes > self._max_bytes and self._rows:
            victim = min(self._rows, key=lambda r: r.priority)
            self._remove(victim)
            tally.add(topic=victim.topic, priority=victim.priority)
        return DropReport(by_priority=dict(tally.by_priority), by_topic=dict(tally.by_topic))

    def take(self, limit: int | None = None) -> list[NewRow]:
        """Remove and return the oldest `limit` rows (all when None)."""
        taken = self._rows[:limit] if limit is not None else self._rows
        self._rows = self._rows[len(taken) :]
        self._bytes -= sum(_row_bytes(r) for r in taken)
        return taken

    def _remove(self, row: NewRow) -> None:
        self._rows.remove(row)
        self._bytes -= _row_bytes(row)


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open (SQLite may already have rolled back on SQLITE_FULL)."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            LOGGER.debug("rollback failed", exc_info=True)


class transaction:
    """BEGIN IMMEDIATE ... COMMIT, or a safe ROLLBACK on any exception (which propagates).

    A ROLLBACK after SQLite already rolled back (SQLITE_FULL) would raise "no transaction is active"
    and hide the real error: it is issued only while a transaction is open.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
            except BaseException:
                _rollback(self._db)
                raise
        else:
            _rollback(self._db)
