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

The file's layout, and the reader `icu-edge report` uses, live in edge/history_file.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import sqlite3
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.config import HistoryConfig, StoreConfig
from edge.history_file import (
    ROW_TABLES,
    CorruptFile,
    HistoryUnavailable,
    encode_values,
    forecast_json,
    is_corrupt,
    open_for_writing,
    reason,
)
from edge.model import AlarmBody, ForecastBody, TwinValue
from edge.outbox import (
    DISK_MARGIN_FRACTION,
    DISK_MARGIN_MAX_BYTES,
    DISK_MARGIN_MIN_BYTES,
    is_disk_full,
    transaction,
)

LOGGER = logging.getLogger(__name__)

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
WAL_RESERVE_BYTES = 2 * 1024 * 1024
"""Free space kept for the WAL (checkpointed every ~1 MB, truncated to `JOURNAL_SIZE_LIMIT_BYTES`)."""
OPEN_MIN_BYTES = 1024 * 1024


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
        self._bugs_logged: set[str] = set()

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
        try:
            self._tick(now_mono_s=now_mono_s, values_of=values_of)
        except Exception as exc:  # noqa: BLE001 (rule 3: see _bug)
            self._bug(exc)

    def _tick(self, *, now_mono_s: float, values_of: Callable[[str], Mapping[str, TwinValue]]) -> None:
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
        try:
            self._offer(_Forecast(bed, body.made_at.timestamp(), body))
        except Exception as exc:  # noqa: BLE001 (rule 3: see _bug)
            self._bug(exc)

    def alarm(self, bed: str, transition: str, alarm: AlarmBody) -> None:
        """Keep one alarm transition (raised, state changed, escalated, ended)."""
        if not self._enabled:
            return
        try:
            self._offer(_Transition(bed, self._wall(), transition, alarm))
        except Exception as exc:  # noqa: BLE001 (rule 3: see _bug)
            self._bug(exc)

    def _bug(self, exc: Exception) -> None:
        """A bug here must not stop the vitals (rule 3): logged with its traceback once per place, counted."""
        self._queue_dropped += 1
        frames = traceback.extract_tb(exc.__traceback__)
        kind = type(exc).__name__ + "".join(f" at {f.filename}:{f.lineno}" for f in frames[-1:])
        if kind not in self._bugs_logged:
            self._bugs_logged.add(kind)
            LOGGER.error(
                "history %s: a bug lost a row (the vitals go on); counting further ones",
                self.path,
                exc_info=exc,
            )

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
                    if not is_disk_full(exc) or not at_own_cap or attempt == FULL_RETRIES:
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
            self._db = open_for_writing(self.path)
        except CorruptFile as exc:
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
        samples = [(r.bed, r.at_s, *encode_values(r.values)) for r in batch if isinstance(r, _Sample)]
        forecasts = [(r.bed, r.at_s, forecast_json(r.body)) for r in batch if isinstance(r, _Forecast)]
        alarms = [_alarm_row(r) for r in batch if isinstance(r, _Transition)]
        spans: dict[str, tuple[float, float]] = {}
        for r in batch:
            if isinstance(r, _Sample):
                first, last = spans.get(r.bed, (r.at_s, r.at_s))
                spans[r.bed] = (min(first, r.at_s), max(last, r.at_s))
        with transaction(db):
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
        with transaction(db):
            for table in ROW_TABLES:
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
        why = reason(exc)
        self.last_error = why
        self._log_once(f"cannot write ({why}); dropping rows and counting them, the vitals go on")
        if isinstance(exc, sqlite3.DatabaseError) and is_corrupt(exc) and self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _recovered(self) -> None:
        if self.last_error is None:
            return
        LOGGER.warning("history %s writes again; %d rows were dropped in all", self.path, self.dropped)
        self.last_error = None
        self._reasons_logged.clear()

    def _log_once(self, text: str) -> None:
        if text not in self._reasons_logged:
            self._reasons_logged.add(text)
            LOGGER.warning("history %s: %s", self.path, text)


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
