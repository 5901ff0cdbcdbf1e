"""The durable outbox: every QoS 1 message waits here (SQLite, WAL mode) until the broker's PUBACK.

Ownership: one `Outbox` holds one SQLite connection, and that connection belongs to ONE thread (the
publisher's worker). `check_same_thread` stays on, so a stray call from another thread fails loudly.

Durability (fsync policy): the database runs with `journal_mode=WAL` and `synchronous` from
`StoreConfig.synchronous`:

* `full` (default): SQLite fsyncs the WAL on every commit. A committed batch survives a power cut.
* `normal`: the WAL is fsynced only at checkpoints. A crash of the process loses nothing; a power cut
  may lose the last commits since the previous checkpoint, but never corrupts the database.

The publisher commits one transaction per batch of submissions (`append_many`), so `full` costs one
fsync per batch, not per message. Deletes after PUBACK are batched the same way.

Disk cap: `size_bytes()` counts the pages the database occupies (page_count - freelist_count) x
page_size; the WAL adds at most `journal_size_limit` on top. When `enforce_cap()` finds the database
above `max_bytes`, it drops the oldest OBSERVATION rows first, then STATE, ALARM last, until the size is
below `max_bytes`, logs a WARNING with counts, and returns a `DropReport` for the publisher to report.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

LOGGER = logging.getLogger(__name__)

_SCHEMA_VERSION = 1
_JOURNAL_SIZE_LIMIT_BYTES = 8 * 1024 * 1024
_CAP_TARGET_FRACTION = 0.9
"""After a drop the database is brought below this fraction of `max_bytes`, so the cap is not hit on
every following batch."""
_ROW_OVERHEAD_BYTES = 64
"""Rough per-row cost besides the payload, used to decide how many rows to drop."""


class DeliveryPriority(enum.IntEnum):
    """How precious a message is when the disk cap forces a drop; lower values are dropped first."""

    OBSERVATION = 1
    """Vitals batches and waveforms: dropped first."""
    STATE = 2
    """Retained snapshots (twin, forecast), device status, events."""
    ALARM = 3
    """Alarms and alarm-state messages: dropped last."""


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
    """What `enforce_cap` dropped."""

    by_priority: Mapping[DeliveryPriority, int] = field(default_factory=dict)
    by_topic: Mapping[str, int] = field(default_factory=dict)
    size_before_bytes: int = 0
    size_after_bytes: int = 0

    @property
    def total(self) -> int:
        """Return the number of rows dropped."""
        return sum(self.by_priority.values())


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

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def max_bytes(self) -> int:
        """The disk cap."""
        return self._max_bytes

    def open(self) -> None:
        """Open (or create) the database; raise OutboxError naming the path and reason on failure."""
        if self._db is not None:
            raise OutboxError(f"outbox {self._path}: already open")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"outbox {self._path}: cannot open: {exc}") from exc
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"outbox {self._path}: cannot switch to WAL mode (got {mode!r})")
            db.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
            db.execute(f"PRAGMA journal_size_limit={_JOURNAL_SIZE_LIMIT_BYTES}")
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
        except OutboxError:
            db.close()
            raise
        except sqlite3.Error as exc:
            db.close()
            raise OutboxError(f"outbox {self._path}: cannot use the database: {exc}") from exc
        self._db = db
        LOGGER.info(
            "outbox %s open: %d rows, %d bytes, synchronous=%s",
            self._path,
            self.count(),
            self.size_bytes(),
            self._synchronous,
        )

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
        with _transaction(db):
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('session', 0)")
            db.execute("UPDATE meta SET value = value + 1 WHERE key = 'session'")
            session: int = db.execute("SELECT value FROM meta WHERE key = 'session'").fetchone()[0]
        return session

    def append_many(self, rows: Sequence[NewRow]) -> list[int]:
        """Append rows in one transaction; return their ids (the delivery order)."""
        db = self._conn()
        ids: list[int] = []
        with _transaction(db):
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

    def delete(self, ids: Iterable[int]) -> int:
        """Delete rows by id in one transaction; return how many existed."""
        db = self._conn()
        deleted = 0
        with _transaction(db):
            for row_id in ids:
                deleted += db.execute("DELETE FROM messages WHERE id = ?", (row_id,)).rowcount
        return deleted

    def count(self) -> int:
        """Return the number of stored rows."""
        value: int = self._conn().execute("SELECT count(*) FROM messages").fetchone()[0]
        return value

    def size_bytes(self) -> int:
        """Return the bytes the database pages in use occupy (the quantity the cap limits)."""
        db = self._conn()
        page_count: int = db.execute("PRAGMA page_count").fetchone()[0]
        freelist: int = db.execute("PRAGMA freelist_count").fetchone()[0]
        page_size: int = db.execute("PRAGMA page_size").fetchone()[0]
        return (page_count - freelist) * page_size

    def enforce_cap(self) -> DropReport:
        """Drop oldest rows, lowest priority first, until the database is below `max_bytes`."""
        size_before = self.size_bytes()
        if size_before <= self._max_bytes:
            return DropReport(size_before_bytes=size_before, size_after_bytes=size_before)
        db = self._conn()
        by_priority: Counter[DeliveryPriority] = Counter()
        by_topic: Counter[str] = Counter()
        target = int(self._max_bytes * _CAP_TARGET_FRACTION)
        size = size_before
        for priority in sorted(DeliveryPriority):
            while size > target:
                excess = size - target
                chosen: list[int] = []
                freed = 0
                for row_id, topic, length in db.execute(
                    "SELECT id, topic, length(payload) + length(topic) FROM messages"
                    " WHERE priority = ? ORDER BY id",
                    (int(priority),),
                ):
                    chosen.append(row_id)
                    by_topic[topic] += 1
                    freed += length + _ROW_OVERHEAD_BYTES
                    if freed >= excess:
                        break
                if not chosen:
                    break
                self.delete(chosen)
                by_priority[priority] += len(chosen)
                size = self.size_bytes()
            if size <= target:
                break
        report = DropReport(
            by_priority=dict(by_priority),
            by_topic=dict(by_topic),
            size_before_bytes=size_before,
            size_after_bytes=size,
        )
        LOGGER.warning(
            "outbox %s above its cap of %d bytes (%d): dropped %d rows (%s), now %d bytes",
            self._path,
            self._max_bytes,
            size_before,
            report.total,
            ", ".join(f"{p.name.lower()}={n}" for p, n in sorted(by_priority.items())) or "none",
            size,
        )
        return report


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (which propagates)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
