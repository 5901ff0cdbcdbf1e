"""A bounded local history of each bed (values, forecast headlines, alarm transitions) for review.

Why: the appliance otherwise keeps no past (the outbox deletes what the broker acknowledged, the twin is
live, the alarm store keeps only the alarms that have not ended), yet a field engineer or a clinician
reviewing an event asks "what did the box see before that alarm?". `icu-edge report` reads this file.

What is kept (one SQLite file, default `history.db` next to the outbox):
- `samples`: one row per bed every `sample_s` with the twin's valid, fresh numeric values (not every
  reading); the beds' sample times are staggered so a 64-bed ward costs the loop a few beds per tick;
- `forecasts`: per bed at most one headline every `forecast_s`: per signal each horizon's median and
  10-90 % interval, and the event probabilities;
- `alarms`: every alarm transition (raised, state changed, escalated, ended) with its priority, state,
  onset and end;
- `beds`: each bed's first and last sample time (the report's list of known beds and ranges).

Rule 3 (no failing part stops the vitals of the others) outranks this history: it is review data, not
the delivery guarantee (that is the outbox). So `synchronous=NORMAL` (a power cut may lose the last
second), and nothing here ever blocks or raises into the daemon: a full disk, a corrupt or foreign file,
a slow disk are logged once per distinct reason, the rows that could not be kept are counted
(`HistoryStats.dropped`), and the history goes on when it can. A corrupt file is moved aside
(`history.db.corrupt-<epoch>`) and a new one started; another program's file is left alone.

Threads: `History` is called on the daemon's event loop thread only (`tick`, `forecast`, `alarm`); it
builds small immutable rows and hands them to its writer thread through a bounded queue
(`queue_max_rows`; when full, the row is dropped and counted: a slow disk never slows the loop). The
writer thread alone owns the SQLite connection: it opens the file, writes each batch (what arrived in
`batch_s`) in one transaction, and prunes by age (`retention_h`) and by size (`max_mb`, also enforced
by `PRAGMA max_page_count`: the database file never grows past it; the WAL adds at most ~1 MB).

Disk space: the history never takes the outbox's room. Before each batch it sets `max_page_count` so
that the file grows only while its filesystem keeps free the outbox's margin for the rest of the system
(`edge.outbox.DISK_MARGIN_*`), the WAL's reserve, and, when the outbox lives on the same filesystem,
all the outbox may still grow to (`[store] max_bytes` less what it occupies). Short of that, rows are
dropped and counted (the oldest history is not eaten to make room: it may be what a review needs); at
its own cap (`max_mb`) the oldest rows go instead. A file is not even created with less than
`OPEN_MIN_BYTES` of such room.
The counters are plain ints written by one thread and read by others (a stale read is harmless).

Readers (`HistoryReader`) open the file read-only; SQLite's WAL lets them read while the daemon writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.config import HistoryConfig, StoreConfig
from edge.model import AlarmBody, ForecastBody, TwinValue
from edge.outbox import DISK_MARGIN_FRACTION, DISK_MARGIN_MAX_BYTES, DISK_MARGIN_MIN_BYTES

LOGGER = logging.getLogger(__name__)

APPLICATION_ID = 0x49434548
"""`PRAGMA application_id` of a history file ("ICEH"): tells our file from another program's."""
SCHEMA_VERSION = 1
FILE_MODE = 0o640
BATCH_S = 1.0
"""The writer collects rows this long and writes them in one transaction."""
BATCH_MAX_ROWS = 2000
QUEUE_MAX_ROWS = 10_000
"""Rows waiting for the writer; beyond it a row is dropped and counted (about 12 min of a 64-bed ward)."""
PRUNE_INTERVAL_S = 60.0
REOPEN_INTERVAL_S = 30.0
"""While the file cannot be opened, try again this often (rows meanwhile are dropped and counted)."""
SIZE_PRUNE_FRACTION = 0.1
"""When the file is near its cap, the oldest tenth of the rows goes."""
SIZE_PRUNE_AT = 0.9
FULL_RETRIES = 3
"""A batch that does not fit makes room (a tenth each time) and is tried again this often, then dropped."""
BUSY_TIMEOUT_MS = 1000
JOURNAL_SIZE_LIMIT_BYTES = 1024 * 1024
WAL_AUTOCHECKPOINT_PAGES = 256
WAL_RESERVE_BYTES = 2 * 1024 * 1024
"""Free space kept for the WAL (checkpointed every ~1 MB, truncated to `JOURNAL_SIZE_LIMIT_BYTES`)."""
OPEN_MIN_BYTES = 1024 * 1024

_SCHEMA = (
    "CREATE TABLE keysets (id INTEGER PRIMARY KEY, keys TEXT NOT NULL UNIQUE)",
    "CREATE TABLE samples (id INTEGER PRIMARY KEY, bed TEXT NOT NULL, at_s REAL NOT NULL,"
    " keyset INTEGER NOT NULL, vals TEXT NOT NULL)",
    "CREATE INDEX samples_bed ON samples (bed, at_s)",
    "CREATE TABLE forecasts (id INTEGER PRIMARY KEY, bed TEXT NOT NULL, at_s REAL NOT NULL,"
    " body TEXT NOT NULL)",
    "CREATE INDEX forecasts_bed ON forecasts (bed, at_s)",
    "CREATE TABLE alarms (id INTEGER PRIMARY KEY, bed TEXT NOT NULL, at_s REAL NOT NULL,"
    " alarm_id TEXT NOT NULL, transition TEXT NOT NULL, kind TEXT NOT NULL, priority TEXT NOT NULL,"
    " state TEXT NOT NULL, key TEXT, text TEXT NOT NULL, onset_s REAL NOT NULL, ended_s REAL)",
    "CREATE INDEX alarms_bed ON alarms (bed, at_s)",
    "CREATE TABLE beds (bed TEXT PRIMARY KEY, first_s REAL NOT NULL, last_s REAL NOT NULL) WITHOUT ROWID",
)
_TABLES = {"keysets", "samples", "forecasts", "alarms", "beds"}
_ROW_TABLES = ("samples", "forecasts", "alarms")


class HistoryUnavailable(Exception):
    """The history file cannot be read (missing, not ours, corrupt); the message says which and why."""


@dataclass(frozen=True, slots=True)
class _Sample:
    bed: str
    at_s: float
    values: dict[str, float]


@dataclass(frozen=True, slots=True)
class _Forecast:
    bed: str
    at_s: float
    body: ForecastBody


@dataclass(frozen=True, slots=True)
class _Transition:
    bed: str
    at_s: float
    transition: str
    alarm: AlarmBody


_Row = _Sample | _Forecast | _Transition


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryStats:
    """What the history kept and lost since the daemon started."""

    written: int
    batches: int
    """Transactions that wrote rows (one per batch)."""
    dropped: int
    """Rows lost: the queue was full (a slow disk) or a write failed (a full disk, a bad file)."""
    pruned: int
    pending: int
    """Rows waiting for the writer or being written."""
    last_error: str | None


class History:
    """The loop side: samples the twin on schedule and hands rows to the writer (module docstring)."""

    def __init__(
        self,
        *,
        config: HistoryConfig,
        path: Path,
        beds: Sequence[str],
        wall: Callable[[], float] = time.time,
        batch_s: float = BATCH_S,
        queue_max_rows: int = QUEUE_MAX_ROWS,
        prune_interval_s: float = PRUNE_INTERVAL_S,
        outbox: StoreConfig | None = None,
        max_pages: int | None = None,
    ) -> None:
        """Prepare (nothing is opened until `start`); leave `outbox` its room on a shared filesystem.

        `max_pages` caps the file in tests (SQLITE_FULL as at `max_mb`).
        """
        self._enabled = config.enabled
        self._sample_s = config.sample_s
        self._forecast_s = config.forecast_s
        self._wall = wall
        # Staggered: bed i is first sampled i/len(beds) of a period after start.
        self._next_sample_s: dict[str, float] = {
            bed: config.sample_s * i / max(1, len(beds)) for i, bed in enumerate(beds)
        }
        self._started_s: float | None = None
        self._last_forecast_s: dict[str, float] = {}
        self._queue: queue.Queue[_Row | None] = queue.Queue(maxsize=queue_max_rows)
        self._writer = _Writer(
            path=path,
            rows=self._queue,
            retention_s=config.retention_h * 3600.0,
            max_bytes=config.max_mb * 1024 * 1024,
            batch_s=batch_s,
            prune_interval_s=prune_interval_s,
            wall=wall,
            outbox=None if outbox is None else (outbox.path, outbox.max_bytes),
            max_pages=max_pages,
        )
        self._queue_dropped = 0
        self._queue_full_logged = False

    @property
    def path(self) -> Path:
        """The history file."""
        return self._writer.path

    def start(self) -> None:
        """Start the writer thread (it opens the file: a slow disk does not delay the daemon's start)."""
        if self._enabled:
            self._writer.start()

    def close(self, *, timeout_s: float = 5.0) -> None:
        """Write what waits (up to `timeout_s`) and stop the writer; never raises, never hangs the exit."""
        if not self._writer.is_alive():
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._writer.join(timeout=timeout_s)
        if self._writer.is_alive():
            LOGGER.warning("history %s: the writer did not finish in %g s; leaving it", self.path, timeout_s)

    def stats(self) -> HistoryStats:
        """Counters for tests, diagnostics and the log."""
        writer = self._writer
        return HistoryStats(
            written=writer.written,
            batches=writer.batches,
            dropped=writer.dropped + self._queue_dropped,
            pruned=writer.pruned,
            pending=self._queue.qsize() + writer.in_flight,
            last_error=writer.last_error,
        )

    def tick(self, *, now_mono_s: float, values_of: Callable[[str], Mapping[str, TwinValue]]) -> None:
        """Sample the beds whose time has come: their valid, fresh numeric values, one row each."""
        if not self._enabled:
            return
        if self._started_s is None:
            self._started_s = now_mono_s
        elapsed_s = now_mono_s - self._started_s
        at_s: float | None = None
        for bed, next_s in self._next_sample_s.items():
            if elapsed_s < next_s:
                continue
            # the next slot of this bed's phase (a late tick does not bunch the beds together)
            self._next_sample_s[bed] = next_s + self._sample_s * (1 + (elapsed_s - next_s) // self._sample_s)
            values = {
                key: value.value
                for key, value in values_of(bed).items()
                if value.valid and not value.stale and value.value is not None and math.isfinite(value.value)
            }
            if values:
                at_s = self._wall() if at_s is None else at_s
                self._offer(_Sample(bed, at_s, values))

    def forecast(self, *, bed: str, body: ForecastBody, now_mono_s: float) -> None:
        """Keep a bed's forecast headline, at most one every `forecast_s`."""
        if not self._enabled or (not body.signals and not body.events):
            return
        last_s = self._last_forecast_s.get(bed)
        if last_s is not None and now_mono_s - last_s < self._forecast_s:
            return
        self._last_forecast_s[bed] = now_mono_s
        self._offer(_Forecast(bed, body.made_at.timestamp(), body))

    def alarm(self, bed: str, transition: str, alarm: AlarmBody) -> None:
        """Keep one alarm transition (raised, state changed, escalated, ended)."""
        if self._enabled:
            self._offer(_Transition(bed, self._wall(), transition, alarm))

    def _offer(self, row: _Row) -> None:
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self._queue_dropped += 1
            if not self._queue_full_logged:
                self._queue_full_logged = True
                LOGGER.warning(
                    "history %s: the writer is behind (slow disk?); dropping rows, counting them",
                    self.path,
                )
            return
        self._queue_full_logged = False


class _Writer(threading.Thread):
    """The one owner of the history's SQLite connection."""

    def __init__(
        self,
        *,
        path: Path,
        rows: queue.Queue[_Row | None],
        retention_s: float,
        max_bytes: int,
        batch_s: float,
        prune_interval_s: float,
        wall: Callable[[], float],
        outbox: tuple[Path, int] | None,
        max_pages: int | None,
    ) -> None:
        super().__init__(name="history-writer", daemon=True)
        self._outbox = outbox
        self.path = path
        self._rows = rows
        self._retention_s = retention_s
        self._max_bytes = max_bytes
        self._batch_s = batch_s
        self._prune_interval_s = prune_interval_s
        self._wall = wall
        self._max_pages = max_pages
        self._db: sqlite3.Connection | None = None
        self._next_open_s = 0.0
        self._next_prune_s = 0.0
        self._reasons_logged: set[str] = set()
        self.written = 0
        self.in_flight = 0
        """Rows taken from the queue and not yet written or dropped."""
        self.batches = 0
        self.dropped = 0
        self.pruned = 0
        self.last_error: str | None = None

    def run(self) -> None:
        stop = False
        while not stop:
            first = self._rows.get()
            if first is None:
                break
            batch = [first]
            self.in_flight = 1
            deadline_s = time.monotonic() + self._batch_s
            while len(batch) < BATCH_MAX_ROWS:
                try:
                    row = self._rows.get(timeout=max(0.0, deadline_s - time.monotonic()))
                except queue.Empty:
                    break
                if row is None:
                    stop = True
                    break
                batch.append(row)
                self.in_flight = len(batch)
            self._write(batch)
            self.in_flight = 0
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        LOGGER.info("history %s closed: %d rows written, %d dropped", self.path, self.written, self.dropped)

    def _write(self, batch: list[_Row]) -> None:
        """Write one batch in one transaction; on failure drop it (counted) and go on."""
        try:
            db = self._open()
            if db is None:
                self.dropped += len(batch)
                return
            at_own_cap = self._limit_pages(db)
            for attempt in range(FULL_RETRIES + 1):
                try:
                    self._insert(db, batch)
                    break
                except sqlite3.DatabaseError as exc:
                    if not _is_full(exc) or not at_own_cap or attempt == FULL_RETRIES:
                        raise
                    # At the cap (or a full disk): make room from the oldest rows, then try again.
                    self._prune_by_size(db, force=True)
            self.written += len(batch)
            self.batches += 1
            self._recovered()
            now_s = time.monotonic()
            if now_s >= self._next_prune_s:
                self._next_prune_s = now_s + self._prune_interval_s
                self._prune_by_age(db)
                self._prune_by_size(db, force=False)
        except (sqlite3.DatabaseError, OSError) as exc:
            self.dropped += len(batch)
            self._failed(exc)

    def _open(self) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        now_s = time.monotonic()
        if now_s < self._next_open_s:
            return None
        self._next_open_s = now_s + REOPEN_INTERVAL_S
        try:
            room_bytes = self._room_bytes()
            if room_bytes < OPEN_MIN_BYTES:
                raise HistoryUnavailable(
                    f"not created: {max(0, room_bytes)} bytes of room on its filesystem after what the outbox"
                    " and the rest of the system may need"
                )
            self._db = _open_for_writing(self.path)
        except _Corrupt as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(self._wall())}")
            self._log_once(f"corrupt file ({exc}): moved aside to {aside.name}; starting a new one")
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):
                    Path(f"{self.path}{suffix}").rename(f"{aside}{suffix}")
            self._next_open_s = 0.0
            return None
        except HistoryUnavailable as exc:
            self._failed(exc)
            return None
        LOGGER.info("history %s open", self.path)
        return self._db

    def _limit_pages(self, db: sqlite3.Connection) -> bool:
        """Let the file grow only within its cap and the room on its disk; return whether the cap binds."""
        page_size: int = db.execute("PRAGMA page_size").fetchone()[0]
        pages: int = db.execute("PRAGMA page_count").fetchone()[0]
        cap_pages = self._max_pages or max(16, self._max_bytes // page_size)
        disk_pages = pages + max(0, self._room_bytes()) // page_size
        db.execute(f"PRAGMA max_page_count={min(cap_pages, disk_pages)}")
        return cap_pages <= disk_pages

    def _room_bytes(self) -> int:
        """Free bytes the history may take: less the system's margin, the WAL's, and the outbox's growth."""
        try:
            fs = os.statvfs(self.path.parent)
        except OSError:
            return OPEN_MIN_BYTES  # a folder not there yet (created at open): no measure, a small start
        total = fs.f_blocks * fs.f_frsize
        margin = min(max(int(total * DISK_MARGIN_FRACTION), DISK_MARGIN_MIN_BYTES), DISK_MARGIN_MAX_BYTES)
        return fs.f_bavail * fs.f_frsize - margin - WAL_RESERVE_BYTES - self._outbox_claim()

    def _outbox_claim(self) -> int:
        """What the outbox may still grow by, when it shares the history's filesystem."""
        if self._outbox is None:
            return 0
        path, max_bytes = self._outbox
        try:
            if path.parent.stat().st_dev != self.path.parent.stat().st_dev:
                return 0
        except OSError:
            return 0
        used = 0
        for suffix in ("", "-wal", "-journal", "-shm"):
            with contextlib.suppress(OSError):
                used += Path(f"{path}{suffix}").stat().st_size
        return max(0, max_bytes - used)

    def _insert(self, db: sqlite3.Connection, batch: list[_Row]) -> None:
        samples = [(r.bed, r.at_s, *_encode(r.values)) for r in batch if isinstance(r, _Sample)]
        forecasts = [(r.bed, r.at_s, _forecast_json(r.body)) for r in batch if isinstance(r, _Forecast)]
        alarms = [_alarm_row(r) for r in batch if isinstance(r, _Transition)]
        spans: dict[str, tuple[float, float]] = {}
        for r in batch:
            if isinstance(r, _Sample):
                first, last = spans.get(r.bed, (r.at_s, r.at_s))
                spans[r.bed] = (min(first, r.at_s), max(last, r.at_s))
        with _transaction(db):
            keysets: dict[str, int] = {}
            for keys in {keys for _, _, keys, _ in samples}:
                db.execute("INSERT INTO keysets (keys) VALUES (?) ON CONFLICT (keys) DO NOTHING", (keys,))
                keysets[keys] = db.execute("SELECT id FROM keysets WHERE keys = ?", (keys,)).fetchone()[0]
            db.executemany(
                "INSERT INTO samples (bed, at_s, keyset, vals) VALUES (?, ?, ?, ?)",
                [(bed, at_s, keysets[keys], vals) for bed, at_s, keys, vals in samples],
            )
            db.executemany("INSERT INTO forecasts (bed, at_s, body) VALUES (?, ?, ?)", forecasts)
            db.executemany(
                "INSERT INTO alarms (bed, at_s, alarm_id, transition, kind, priority, state, key, text,"
                " onset_s, ended_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                alarms,
            )
            db.executemany(
                "INSERT INTO beds (bed, first_s, last_s) VALUES (?, ?, ?) ON CONFLICT (bed) DO UPDATE SET"
                " first_s = min(first_s, excluded.first_s), last_s = max(last_s, excluded.last_s)",
                [(bed, first, last) for bed, (first, last) in spans.items()],
            )

    def _prune_by_age(self, db: sqlite3.Connection) -> None:
        """Delete rows older than the retention (rows go in roughly in time order: found by id)."""
        cutoff_s = self._wall() - self._retention_s
        self._delete_before(db, cutoff_s=cutoff_s)

    def _prune_by_size(self, db: sqlite3.Connection, *, force: bool) -> None:
        """Near the cap (or at it: `force`), delete the oldest tenth of the samples and what is older."""
        page_size, pages, free = (
            db.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("page_size", "page_count", "freelist_count")
        )
        if not force and (pages - free) * page_size < SIZE_PRUNE_AT * self._max_bytes:
            return
        low, high = db.execute("SELECT min(id), max(id) FROM samples").fetchone()
        if low is None:
            return
        cut_id = low + max(1, int((high - low + 1) * SIZE_PRUNE_FRACTION))
        row = db.execute("SELECT at_s FROM samples WHERE id >= ? ORDER BY id LIMIT 1", (cut_id,)).fetchone()
        cutoff_s = row[0] if row is not None else math.inf
        self._delete_before(db, cutoff_s=cutoff_s)

    def _delete_before(self, db: sqlite3.Connection, *, cutoff_s: float) -> None:
        deleted = 0
        with _transaction(db):
            for table in _ROW_TABLES:
                row = db.execute(
                    f"SELECT id FROM {table} WHERE at_s >= ? ORDER BY id LIMIT 1",  # noqa: S608 (our names)
                    (cutoff_s,),
                ).fetchone()
                if row is None:
                    deleted += db.execute(f"DELETE FROM {table}").rowcount  # noqa: S608
                else:
                    deleted += db.execute(f"DELETE FROM {table} WHERE id < ?", (row[0],)).rowcount  # noqa: S608
            db.execute("UPDATE beds SET first_s = max(first_s, ?)", (cutoff_s,))
            db.execute("DELETE FROM beds WHERE last_s < first_s")
        self.pruned += deleted

    def _failed(self, exc: BaseException) -> None:
        reason = _reason(exc)
        self.last_error = reason
        self._log_once(f"cannot write ({reason}); dropping rows and counting them, the vitals go on")
        if isinstance(exc, sqlite3.DatabaseError) and _is_corrupt(exc) and self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _recovered(self) -> None:
        if self.last_error is None:
            return
        LOGGER.warning("history %s writes again; %d rows were dropped in all", self.path, self.dropped)
        self.last_error = None
        self._reasons_logged.clear()

    def _log_once(self, reason: str) -> None:
        if reason not in self._reasons_logged:
            self._reasons_logged.add(reason)
            LOGGER.warning("history %s: %s", self.path, reason)


class _Corrupt(Exception):
    """The file is not a usable SQLite database (it may be moved aside: it holds only review data)."""


def _open_for_writing(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    except (OSError, sqlite3.Error) as exc:
        raise HistoryUnavailable(f"cannot open: {exc}") from exc
    try:
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _check_or_create(db, path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        with contextlib.suppress(OSError):
            path.chmod(FILE_MODE)
    except sqlite3.DatabaseError as exc:
        db.close()
        if _is_corrupt(exc):
            raise _Corrupt(str(exc)) from exc
        raise HistoryUnavailable(_reason(exc)) from exc
    except BaseException:
        db.close()
        raise
    return db


def _check_or_create(db: sqlite3.Connection, path: Path) -> None:
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if app_id == 0 and not tables:
        with _transaction(db):
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return
    _check_ours(db, path, app_id=app_id, tables=tables)


def _check_ours(db: sqlite3.Connection, path: Path, *, app_id: int, tables: set[str]) -> None:
    if app_id != APPLICATION_ID or not tables >= _TABLES:
        raise HistoryUnavailable(
            f"{path} is not an icu-edge history (application_id {app_id:#x}, tables {sorted(tables)});"
            " left alone: move it away or set [history] path"
        )
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        raise HistoryUnavailable(f"{path}: history layout {version}, expected {SCHEMA_VERSION}")


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _encode(values: Mapping[str, float]) -> tuple[str, str]:
    """Return the row's key set and its values in that order (JSON): half the bytes of an object."""
    keys = sorted(values)
    numbers = [_compact(values[key]) for key in keys]
    return json.dumps(keys, separators=(",", ":")), json.dumps(
        numbers, separators=(",", ":"), allow_nan=False
    )


def _compact(value: float) -> float | int:
    """78.0 is stored as 78."""
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _forecast_json(body: ForecastBody) -> str:
    """The headline: per signal [horizon_min, p10, p50, p90] rows; per event [horizon_min, p] rows."""
    return json.dumps(
        {
            "model": f"{body.model.id}@{body.model.version}",
            "signals": {
                key: {
                    "unit": signal.unit,
                    "last": signal.last_value,
                    "h": [[h.horizon_min, h.p10, h.p50, h.p90] for h in signal.horizons],
                }
                for key, signal in body.signals.items()
            },
            "events": {
                key: [[p.horizon_min, p.probability] for p in event.horizons]
                for key, event in body.events.items()
            },
        },
        separators=(",", ":"),
    )


def _alarm_row(row: _Transition) -> tuple[object, ...]:
    alarm = row.alarm
    return (
        row.bed,
        row.at_s,
        alarm.id,
        row.transition,
        str(alarm.kind),
        str(alarm.priority),
        str(alarm.state),
        alarm.key,
        alarm.text,
        alarm.onset.timestamp(),
        None if alarm.ended_at is None else alarm.ended_at.timestamp(),
    )


def _is_full(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)


def _is_corrupt(exc: BaseException) -> bool:
    text = str(exc)
    return "not a database" in text or "malformed" in text


def _reason(exc: BaseException) -> str:
    if _is_full(exc):
        return f"disk full or at the size cap (SQLITE_FULL): {exc}"
    return f"{type(exc).__name__}: {exc}"


# --- reading ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ForecastHeadline:
    """One stored forecast: when it was made and, per signal, (horizon_min, p10, p50, p90) rows."""

    at_s: float
    model: str
    signals: dict[str, list[tuple[int, float, float, float]]]
    last_values: dict[str, float]
    events: dict[str, list[tuple[int, float]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class AlarmSpan:
    """One alarm as the history saw it: from onset to end (None: not ended by the end of the range)."""

    alarm_id: str
    kind: str
    priority: str
    """The highest priority it reached."""
    key: str | None
    text: str
    onset_s: float
    ended_s: float | None
    last_state: str
    transitions: list[tuple[float, str, str]]
    """(at_s, transition, state), oldest first."""


class HistoryReader:
    """Read-only access to a history file (works while the daemon writes: SQLite WAL readers)."""

    def __init__(self, path: Path) -> None:
        """Open; raise HistoryUnavailable naming the path and why it cannot be read."""
        if not path.is_file():
            raise HistoryUnavailable(
                f"no history file at {path}: the daemon writes it when [history] is enabled (the default)"
            )
        self.path = path
        try:
            self._db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            app_id = self._db.execute("PRAGMA application_id").fetchone()[0]
            tables = {
                row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            _check_ours(self._db, path, app_id=app_id, tables=tables)
        except sqlite3.Error as exc:
            raise HistoryUnavailable(f"cannot read the history {path}: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def beds(self) -> dict[str, tuple[float, float]]:
        """Every bed with samples, and the time span they cover (epoch seconds)."""
        rows = self._db.execute("SELECT bed, first_s, last_s FROM beds ORDER BY bed").fetchall()
        return {bed: (first, last) for bed, first, last in rows}

    def samples(self, *, bed: str, since_s: float, until_s: float) -> list[tuple[float, dict[str, float]]]:
        """The bed's samples in [since_s, until_s], oldest first."""
        rows = self._db.execute(
            "SELECT at_s, keys, vals FROM samples JOIN keysets ON keysets.id = samples.keyset"
            " WHERE bed = ? AND at_s BETWEEN ? AND ? ORDER BY at_s",
            (bed, since_s, until_s),
        )
        keysets: dict[str, list[str]] = {}
        samples = []
        for at_s, keys, vals in rows:
            names = keysets.get(keys) or keysets.setdefault(keys, json.loads(keys))
            samples.append((at_s, {key: float(v) for key, v in zip(names, json.loads(vals), strict=True)}))
        return samples

    def forecasts(self, *, bed: str, since_s: float, until_s: float) -> list[ForecastHeadline]:
        """The bed's forecast headlines made in [since_s, until_s], oldest first."""
        rows = self._db.execute(
            "SELECT at_s, body FROM forecasts WHERE bed = ? AND at_s BETWEEN ? AND ? ORDER BY at_s",
            (bed, since_s, until_s),
        )
        headlines = []
        for at_s, body in rows:
            document = json.loads(body)
            signals = document["signals"]
            headlines.append(
                ForecastHeadline(
                    at_s=at_s,
                    model=document["model"],
                    signals={
                        key: [(int(h), float(p10), float(p50), float(p90)) for h, p10, p50, p90 in s["h"]]
                        for key, s in signals.items()
                    },
                    last_values={key: s["last"] for key, s in signals.items()},
                    events={
                        key: [(int(h), float(p)) for h, p in probabilities]
                        for key, probabilities in document["events"].items()
                    },
                )
            )
        return headlines

    def alarms(self, *, bed: str, since_s: float, until_s: float) -> list[AlarmSpan]:
        """The bed's alarms active at any time in [since_s, until_s], by onset."""
        rows = self._db.execute(
            "SELECT at_s, alarm_id, transition, kind, priority, state, key, text, onset_s, ended_s"
            " FROM alarms WHERE bed = ? AND at_s <= ? ORDER BY id",
            (bed, until_s),
        ).fetchall()
        spans: dict[str, AlarmSpan] = {}
        rank = {"low": 0, "medium": 1, "high": 2}
        for at_s, alarm_id, transition, kind, priority, state, key, text, onset_s, ended_s in rows:
            earlier = spans.get(alarm_id)
            if earlier is not None and rank.get(earlier.priority, 0) > rank.get(priority, 0):
                priority = earlier.priority
            spans[alarm_id] = AlarmSpan(
                alarm_id=alarm_id,
                kind=kind,
                priority=priority,
                key=key,
                text=text,
                onset_s=onset_s,
                ended_s=ended_s,
                last_state=state,
                transitions=[*(earlier.transitions if earlier else []), (at_s, transition, state)],
            )
        return sorted(
            (
                span
                for span in spans.values()
                if span.onset_s <= until_s and (span.ended_s is None or span.ended_s >= since_s)
            ),
            key=lambda span: span.onset_s,
        )
