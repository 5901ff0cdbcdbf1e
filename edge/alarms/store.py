"""The alarm system's durable state: active alarms, command answers, the audit trail, limit overrides.

Why: the alarm manager lives in memory; after a daemon restart an alarm that has not ended must keep its
id and state (never announced again as new), a command_id seen before must get the same answer, and
limits set by command must still be in force. Every command and limit change is audited.

Ownership: one `AlarmStore` holds one SQLite connection, and it belongs to ONE thread: the asyncio loop
thread that runs the alarm manager. Open it on that thread; `check_same_thread` stays on, so a call from
another thread fails loudly.

Durability: SQLite in WAL mode with `synchronous=FULL`: every write call is one committed transaction
(one fsync of the WAL), so what a call saved survives a power cut. The state is small (a few rows per
bed); the audit is bounded (`audit_max_rows`, pruned oldest first in batches of `audit_prune_batch`).

Command idempotency window: a command result is kept at least `COMMAND_RESULT_KEEP_S` (7 days) after its
`at`; older results are pruned whenever newer rows are written (relative to the newest `at` written, so
no wall clock is read here). A command_id repeated after that is treated as new.

Writes never raise to the caller (only bugs do: a call from another thread, a naive `at`). A write that
fails (a full disk: SQLITE_FULL; a lock held by another process past `BUSY_TIMEOUT_MS`; any other
sqlite3.DatabaseError or OSError) keeps what was to be written in memory: the latest state per alarm id
and per limit key, command results and audit rows in bounded queues (`pending_max_rows`; the oldest are
dropped and counted, and the dropped audit rows are replaced on disk by one `audit_gap` row per bed saying
how many were lost and when). The store then reports `healthy` False with `last_error`, logs once per
distinct reason, and retries on the next write call or `retry()`, at most every `RETRY_INTERVAL_S` by the
injected clock. When a retry succeeds it writes everything pending (state first in one transaction, then
the audit in order, in chunks) and logs the recovery once. Reads include what is still pending; active
alarms and limits are read from disk once, at open, and kept in memory.

Cost on the loop thread: each write call is one transaction with an fsync; while unhealthy, at most one
attempt per second. A slow disk (eMMC) therefore costs the loop one fsync per call.

Opening: a missing file (and its folder) is created 0600 (0700); a file that is not a SQLite database,
another program's database, or one whose tables have another shape raises `AlarmStoreError` naming the
path and what to do: it is never deleted or rewritten, because it may be a safety record (a new store
that cannot be created for lack of space also raises it). Rows whose JSON no longer validates (an older
or unknown shape) are skipped, counted (`skipped_rows`) and logged once; they never stop the daemon.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from edge.model import AlarmBody, AlarmLimit, AlarmState, CommandResultBody
from edge.outbox import is_disk_full, transaction

LOGGER = logging.getLogger(__name__)

APPLICATION_ID = 0x49434541
"""`PRAGMA application_id` of an alarm store ("ICEA"): tells our file from another program's."""
SCHEMA_VERSION = 1
"""`PRAGMA user_version` of the layout below."""
FILE_MODE = 0o600
DIR_MODE = 0o700
BUSY_TIMEOUT_MS = 100
"""How long a write waits for another connection's lock: short, because it blocks the loop thread; a write
that times out is held in memory and retried like one that failed for lack of space."""
RETRY_INTERVAL_S = 1.0
"""While unhealthy, a write is attempted at most this often (by the injected clock)."""
COMMAND_RESULT_KEEP_S = 7 * 24 * 3600.0
"""The command_id idempotency window."""
AUDIT_MAX_ROWS = 100_000
PENDING_MAX_ROWS = 10_000
"""Bound of each in-memory queue (command results, audit rows) while writes fail."""
AUDIT_CHUNK_ROWS = 1000
"""Audit rows per transaction when catching up, so a disk with a little room still makes progress."""
AUDIT_GAP_ACTION = "audit_gap"

_TABLES: dict[str, tuple[str, list[str]]] = {
    "alarms": (
        "CREATE TABLE alarms (bed TEXT NOT NULL, alarm_id TEXT NOT NULL, body TEXT NOT NULL,"
        " PRIMARY KEY (bed, alarm_id)) WITHOUT ROWID",
        ["bed", "alarm_id", "body"],
    ),
    "limits": (
        "CREATE TABLE limits (bed TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL,"
        " PRIMARY KEY (bed, key)) WITHOUT ROWID",
        ["bed", "key", "body"],
    ),
    "command_results": (
        "CREATE TABLE command_results (bed TEXT NOT NULL, command_id TEXT NOT NULL, at_s REAL NOT NULL,"
        " body TEXT NOT NULL, PRIMARY KEY (bed, command_id)) WITHOUT ROWID",
        ["bed", "command_id", "at_s", "body"],
    ),
    "audit": (
        "CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, bed TEXT NOT NULL,"
        " actor TEXT, role TEXT, action TEXT NOT NULL, detail TEXT NOT NULL, result TEXT NOT NULL)",
        ["id", "at", "bed", "actor", "role", "action", "detail", "result"],
    ),
}
_INDEXES = (
    "CREATE INDEX command_results_at ON command_results (at_s)",
    "CREATE INDEX audit_bed ON audit (bed, id)",
)
_OWN_TABLES = {*_TABLES, "sqlite_sequence"}

_MOVE_AWAY = "move it away (keep it for the investigation) and restart: a new empty store is created"


class AlarmStoreError(Exception):
    """The store's file cannot be used (bad path, not a database, another shape); names path and reason."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRow:
    """One audit entry: who did what to which bed, when, and what came of it."""

    at: datetime
    bed: str
    actor: str | None
    role: str | None
    action: str
    detail: str
    result: str


_AlarmKey = tuple[str, str]
_Model = TypeVar("_Model", AlarmBody, AlarmLimit, CommandResultBody)


class AlarmStore:
    """Durable alarm state on SQLite (module docstring); used by exactly one thread."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        audit_max_rows: int = AUDIT_MAX_ROWS,
        audit_prune_batch: int | None = None,
        pending_max_rows: int = PENDING_MAX_ROWS,
        max_pages: int | None = None,
    ) -> None:
        """Open (or create) the store; raise AlarmStoreError naming the path and what to do.

        `max_pages` is for tests only: it caps the database with `PRAGMA max_page_count`, so writes
        fail with SQLITE_FULL as on a full disk (see also `set_max_pages`).
        """
        if audit_max_rows < 1 or pending_max_rows < 1:
            raise ValueError("audit_max_rows and pending_max_rows must be at least 1")
        self._path = path
        self._audit_max_rows = audit_max_rows
        self._audit_prune_batch = audit_prune_batch or max(1, audit_max_rows // 100)
        self._health = _Health(path=path, clock=clock)
        self._skipped_rows = 0
        self._skip_logged: set[str] = set()
        # Mirrors of what is (or will be) on disk; pending = not yet written.
        self._alarms: dict[str, dict[str, AlarmBody]] = {}
        self._limits: dict[str, dict[str, AlarmLimit]] = {}
        self._stored_alarm_keys: set[_AlarmKey] = set()
        self._pending = _Pending(max_rows=pending_max_rows)
        self._db: sqlite3.Connection | None = _connect(path, max_pages=max_pages)
        try:
            self._audit_count: int = self._conn().execute("SELECT count(*) FROM audit").fetchone()[0]
            self._load()
        except (sqlite3.DatabaseError, OSError) as exc:
            self._conn().close()
            raise AlarmStoreError(f"alarm store {path}: cannot read the database: {exc}") from exc
        LOGGER.info(
            "alarm store %s open: %d active alarms, %d limit overrides, %d audit rows",
            self._path,
            sum(len(alarms) for alarms in self._alarms.values()),
            sum(len(limits) for limits in self._limits.values()),
            self._audit_count,
        )

    def _load(self) -> None:
        db = self._conn()
        alarms = db.execute("SELECT bed, alarm_id, body FROM alarms ORDER BY bed, alarm_id").fetchall()
        for bed, alarm_id, body in alarms:
            self._stored_alarm_keys.add((bed, alarm_id))
            alarm = self._parse(AlarmBody, body, table="alarms")
            if alarm is not None:
                self._alarms.setdefault(bed, {})[alarm_id] = alarm
        for bed, key, body in db.execute("SELECT bed, key, body FROM limits ORDER BY bed, key"):
            limit = self._parse(AlarmLimit, body, table="limits")
            if limit is not None:
                self._limits.setdefault(bed, {})[key] = limit

    def _parse(self, model: type[_Model], body: str, *, table: str) -> _Model | None:
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            self._skipped_rows += 1
            if table not in self._skip_logged:
                self._skip_logged.add(table)
                LOGGER.warning(
                    "alarm store %s: skipping a row of %s of an unknown shape (%d error(s), first: %s);"
                    " further ones are only counted",
                    self._path,
                    table,
                    exc.error_count(),
                    exc.errors()[0]["msg"] if exc.errors() else "?",
                )
            return None

    # -- properties ------------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def healthy(self) -> bool:
        """Whether the last write attempt succeeded (nothing is waiting in memory)."""
        return self._health.healthy

    @property
    def last_error(self) -> str | None:
        """Why the last write attempt failed; None while healthy."""
        return self._health.last_error

    @property
    def write_failures(self) -> int:
        """Write attempts that failed since open (retries are at most every RETRY_INTERVAL_S)."""
        return self._health.write_failures

    @property
    def skipped_rows(self) -> int:
        """Stored rows of an unknown shape that were skipped."""
        return self._skipped_rows

    @property
    def audit_rows_dropped(self) -> int:
        """Audit rows dropped from the full in-memory queue while writes failed."""
        return self._pending.audit_dropped

    @property
    def command_results_dropped(self) -> int:
        """Command results dropped from the full in-memory queue while writes failed."""
        return self._pending.commands_dropped

    @property
    def pending(self) -> int:
        """Items held in memory, waiting to be written."""
        return len(self._pending)

    # -- alarms ----------------------------------------------------------------------------------------

    def save_alarm(self, *, bed: str, alarm: AlarmBody) -> None:
        """Save the alarm's current state; an ENDED alarm is deleted."""
        key = (bed, alarm.id)
        if alarm.state is AlarmState.ENDED:
            beds = self._alarms.get(bed, {})
            beds.pop(alarm.id, None)
            if not beds:
                self._alarms.pop(bed, None)
            if key not in self._stored_alarm_keys:
                # Never written: nothing to delete on disk.
                self._pending.alarms.pop(key, None)
                self._write()
                return
        else:
            self._alarms.setdefault(bed, {})[alarm.id] = alarm
        self._pending.alarms.pop(key, None)
        self._pending.alarms[key] = alarm
        self._write()

    def active_alarms(self) -> dict[str, list[AlarmBody]]:
        """Return the alarms that have not ended, per bed, as saved."""
        return {bed: list(alarms.values()) for bed, alarms in self._alarms.items()}

    # -- command idempotency ---------------------------------------------------------------------------

    def command_result(self, *, bed: str, command_id: str) -> CommandResultBody | None:
        """Return the answer given to this command_id on this bed (within the window), or None."""
        pending = self._pending.commands.get((bed, command_id))
        if pending is not None:
            return pending
        try:
            row = (
                self._conn()
                .execute(
                    "SELECT body FROM command_results WHERE bed = ? AND command_id = ?", (bed, command_id)
                )
                .fetchone()
            )
        except sqlite3.ProgrammingError:
            raise
        except (sqlite3.DatabaseError, OSError) as exc:
            self._health.log_once(f"cannot read a command result: {_reason(exc)}")
            return None
        if row is None:
            return None
        return self._parse(CommandResultBody, row[0], table="command_results")

    def save_command_result(self, *, bed: str, result: CommandResultBody) -> None:
        """Save the answer to a command, for an identical answer to a repeat (even after a restart).

        A result without a command_id (a command too malformed to carry one) is not kept: no repeat can
        name it.
        """
        if result.command_id is None:
            return
        key = (bed, result.command_id)
        if self._pending.add_command(key, result):
            self._health.log_once("the in-memory queue of command results is full: dropping the oldest")
        self._write()

    # -- audit -----------------------------------------------------------------------------------------

    def audit(
        self,
        *,
        at: datetime,
        bed: str,
        actor: str | None,
        role: str | None,
        action: str,
        detail: str,
        result: str,
    ) -> None:
        """Append one audit row (never rewritten; the oldest are pruned beyond `audit_max_rows`)."""
        if at.tzinfo is None:
            raise ValueError("audit time must be timezone-aware")
        row = AuditRow(at=at, bed=bed, actor=actor, role=role, action=action, detail=detail, result=result)
        if self._pending.add_audit(row):
            self._health.log_once("the in-memory audit queue is full: dropping the oldest rows")
        self._write()

    def audit_rows(self, *, bed: str | None = None, limit: int = 100) -> list[AuditRow]:
        """Return the newest audit rows (of one bed, or all), newest first, pending ones included."""
        rows = [row for row in reversed(self._pending.audit) if bed is None or row.bed == bed][:limit]
        if len(rows) >= limit:
            return rows
        query = "SELECT at, bed, actor, role, action, detail, result FROM audit"
        args: tuple[object, ...] = ()
        if bed is not None:
            query += " WHERE bed = ?"
            args = (bed,)
        query += " ORDER BY id DESC LIMIT ?"
        try:
            stored = self._conn().execute(query, (*args, limit - len(rows))).fetchall()
        except sqlite3.ProgrammingError:
            raise
        except (sqlite3.DatabaseError, OSError) as exc:
            self._health.log_once(f"cannot read the audit: {_reason(exc)}")
            return rows
        return rows + [
            AuditRow(
                at=datetime.fromisoformat(at),
                bed=b,
                actor=actor,
                role=role,
                action=action,
                detail=detail,
                result=result,
            )
            for at, b, actor, role, action, detail, result in stored
        ]

    # -- limits ----------------------------------------------------------------------------------------

    def save_limit(self, *, bed: str, key: str, limit: AlarmLimit) -> None:
        """Save the limit settings of one key of one bed (set by command)."""
        self._limits.setdefault(bed, {})[key] = limit
        self._pending.limits.pop((bed, key), None)
        self._pending.limits[(bed, key)] = limit
        self._write()

    def limits(self) -> dict[str, dict[str, AlarmLimit]]:
        """Return the saved limit overrides, per bed and key."""
        return {bed: dict(limits) for bed, limits in self._limits.items()}

    # -- writing ---------------------------------------------------------------------------------------

    def retry(self) -> None:
        """Write what is pending, if anything is and the last failed attempt is RETRY_INTERVAL_S old."""
        self._write()

    def set_max_pages(self, pages: int) -> None:
        """For tests only: change the page cap (`PRAGMA max_page_count`) that simulates a full disk."""
        self._conn().execute(f"PRAGMA max_page_count={int(pages)}")

    def close(self) -> None:
        """Write what is pending (one last try) and close (idempotent)."""
        if self._db is None:
            return
        if self.pending:
            self._write(now=True)
            if self.pending:
                LOGGER.error(
                    "alarm store %s: closing with %d items that could not be written (%s)",
                    self._path,
                    self.pending,
                    self._health.last_error,
                )
        self._db.close()
        self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise AlarmStoreError(f"alarm store {self._path}: not open")
        return self._db

    def _write(self, *, now: bool = False) -> None:
        """Write everything pending: state first, then the audit in order; on failure keep it pending."""
        if not self.pending:
            # What was held (an alarm that ended before it could be written) may need no write anymore.
            self._health.recovered(_Written(), pending=self._pending)
            return
        if not self._health.may_attempt(now=now):
            return
        written = _Written()
        try:
            self._write_state(written)
            while self._pending.audit or self._pending.gaps:
                self._write_audit_chunk(written)
        except sqlite3.ProgrammingError:
            raise  # a bug (a call from another thread, a closed connection): loud, never retried
        except (sqlite3.DatabaseError, OSError) as exc:
            self._health.failed(exc, pending=len(self._pending))
            return
        self._health.recovered(written, pending=self._pending)

    def _write_state(self, written: _Written) -> None:
        """Alarms, limits and command results in one transaction (all or nothing)."""
        if not (self._pending.alarms or self._pending.limits or self._pending.commands):
            return
        db = self._conn()
        deleted: set[_AlarmKey] = set()
        upserted: set[_AlarmKey] = set()
        with transaction(db):
            for (bed, alarm_id), alarm in self._pending.alarms.items():
                if alarm.state is AlarmState.ENDED:
                    db.execute("DELETE FROM alarms WHERE bed = ? AND alarm_id = ?", (bed, alarm_id))
                    deleted.add((bed, alarm_id))
                else:
                    db.execute(
                        "INSERT INTO alarms (bed, alarm_id, body) VALUES (?, ?, ?)"
                        " ON CONFLICT (bed, alarm_id) DO UPDATE SET body = excluded.body",
                        (bed, alarm_id, alarm.model_dump_json()),
                    )
                    upserted.add((bed, alarm_id))
            for (bed, key), limit in self._pending.limits.items():
                db.execute(
                    "INSERT INTO limits (bed, key, body) VALUES (?, ?, ?)"
                    " ON CONFLICT (bed, key) DO UPDATE SET body = excluded.body",
                    (bed, key, limit.model_dump_json()),
                )
            newest_s: float | None = None
            for (bed, command_id), result in self._pending.commands.items():
                at_s = result.at.timestamp()
                newest_s = at_s if newest_s is None else max(newest_s, at_s)
                db.execute(
                    "INSERT INTO command_results (bed, command_id, at_s, body) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (bed, command_id) DO UPDATE SET at_s = excluded.at_s, body = excluded.body",
                    (bed, command_id, at_s, result.model_dump_json()),
                )
            if newest_s is not None:
                self._prune_command_results(db, newest_s=newest_s)
        written.alarms += len(self._pending.alarms)
        written.limits += len(self._pending.limits)
        written.commands += len(self._pending.commands)
        self._stored_alarm_keys -= deleted
        self._stored_alarm_keys |= upserted
        self._pending.alarms.clear()
        self._pending.limits.clear()
        self._pending.commands.clear()

    def _write_audit_chunk(self, written: _Written) -> None:
        """Up to AUDIT_CHUNK_ROWS audit rows (gap notes first) in one transaction, then prune."""
        gaps = list(self._pending.gaps)
        rows = [gap.row(bed) for bed, gap in self._pending.gaps.items()]
        taken = min(len(self._pending.audit), max(0, AUDIT_CHUNK_ROWS - len(rows)))
        rows += [self._pending.audit[i] for i in range(taken)]
        db = self._conn()
        with transaction(db):
            db.executemany(
                "INSERT INTO audit (at, bed, actor, role, action, detail, result)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        row.at.astimezone(UTC).isoformat(),
                        row.bed,
                        row.actor,
                        row.role,
                        row.action,
                        row.detail,
                        row.result,
                    )
                    for row in rows
                ],
            )
            count = self._audit_count + len(rows)
            excess = count - self._audit_max_rows
            pruned = 0
            if excess >= self._audit_prune_batch:
                pruned = db.execute(
                    "DELETE FROM audit WHERE id IN (SELECT id FROM audit ORDER BY id LIMIT ?)", (excess,)
                ).rowcount
                self._prune_command_results(db, newest_s=max(row.at.timestamp() for row in rows))
        self._audit_count = count - pruned
        written.audit += len(rows)
        for bed in gaps:
            del self._pending.gaps[bed]
        for _ in range(taken):
            self._pending.audit.popleft()

    def _prune_command_results(self, db: sqlite3.Connection, *, newest_s: float) -> None:
        db.execute("DELETE FROM command_results WHERE at_s < ?", (newest_s - COMMAND_RESULT_KEEP_S,))


class _Health:
    """Whether writes work, why not, when to try again, and the once-per-reason log of an outage."""

    def __init__(self, *, path: Path, clock: Callable[[], float]) -> None:
        self._path = path
        self._clock = clock
        self.healthy = True
        self.last_error: str | None = None
        self.write_failures = 0
        self._failures_this_outage = 0
        self._reasons_logged: set[str] = set()
        self._last_attempt_s: float | None = None

    def may_attempt(self, *, now: bool = False) -> bool:
        """Whether to try a write: always while healthy, else at most every RETRY_INTERVAL_S."""
        now_s = self._clock()
        last_s = self._last_attempt_s
        if not (now or self.healthy or last_s is None or now_s - last_s >= RETRY_INTERVAL_S):
            return False
        self._last_attempt_s = now_s
        return True

    def failed(self, exc: BaseException, *, pending: int) -> None:
        """Count a failed write and log its reason once."""
        self.write_failures += 1
        self._failures_this_outage += 1
        self.healthy = False
        self.last_error = _reason(exc)
        self.log_once(
            f"cannot write: {self.last_error}",
            also=f"; holding {pending} items in memory, retrying at most every {RETRY_INTERVAL_S:g} s",
        )

    def recovered(self, written: _Written, *, pending: _Pending) -> None:
        """Note that nothing waits anymore; log the end of an outage once."""
        if self.healthy:
            return
        LOGGER.warning(
            "alarm store %s: nothing waits to be written anymore after %d failed attempts; wrote what"
            " was held in memory (%d alarm states, %d limits, %d command results, %d audit rows);"
            " %d audit rows and %d command results were dropped in all",
            self._path,
            self._failures_this_outage,
            written.alarms,
            written.limits,
            written.commands,
            written.audit,
            pending.audit_dropped,
            pending.commands_dropped,
        )
        self.healthy = True
        self.last_error = None
        self._failures_this_outage = 0
        self._reasons_logged.clear()

    def log_once(self, reason: str, *, also: str = "") -> None:
        """Log a problem once per distinct reason (until writes work again); `also` is not part of it."""
        if reason in self._reasons_logged:
            return
        self._reasons_logged.add(reason)
        LOGGER.warning("alarm store %s: %s%s", self._path, reason, also)


class _Pending:
    """What waits in memory to be written: the latest state per alarm and limit key, and bounded queues
    of command results and audit rows (the oldest dropped and counted; dropped audit rows leave a gap)."""

    def __init__(self, *, max_rows: int) -> None:
        self.max_rows = max_rows
        self.alarms: dict[_AlarmKey, AlarmBody] = {}
        self.limits: dict[_AlarmKey, AlarmLimit] = {}
        self.commands: OrderedDict[_AlarmKey, CommandResultBody] = OrderedDict()
        self.audit: deque[AuditRow] = deque()
        self.gaps: dict[str, _Gap] = {}
        self.audit_dropped = 0
        self.commands_dropped = 0

    def __len__(self) -> int:
        return len(self.alarms) + len(self.limits) + len(self.commands) + len(self.audit) + len(self.gaps)

    def add_command(self, key: _AlarmKey, result: CommandResultBody) -> bool:
        """Queue a command result; return whether the oldest was dropped to make room."""
        self.commands.pop(key, None)
        self.commands[key] = result
        if len(self.commands) <= self.max_rows:
            return False
        self.commands.popitem(last=False)
        self.commands_dropped += 1
        return True

    def add_audit(self, row: AuditRow) -> bool:
        """Queue an audit row; return whether the oldest was dropped (and noted in its bed's gap)."""
        self.audit.append(row)
        if len(self.audit) <= self.max_rows:
            return False
        dropped = self.audit.popleft()
        self.audit_dropped += 1
        gap = self.gaps.setdefault(dropped.bed, _Gap(first=dropped.at, last=dropped.at))
        gap.last = dropped.at
        gap.count += 1
        return True


@dataclass(slots=True, kw_only=True)
class _Gap:
    """Audit rows of one bed dropped from the memory queue: how many, and their time span."""

    first: datetime
    last: datetime
    count: int = 0

    def row(self, bed: str) -> AuditRow:
        """Return the audit row that records the loss."""
        return AuditRow(
            at=self.last,
            bed=bed,
            actor=None,
            role=None,
            action=AUDIT_GAP_ACTION,
            detail=f"{self.count} audit rows from {self.first.isoformat()} to {self.last.isoformat()} were"
            " lost: the store could not write and its memory queue was full",
            result="lost",
        )


@dataclass(slots=True)
class _Written:
    alarms: int = 0
    limits: int = 0
    commands: int = 0
    audit: int = 0


def _connect(path: Path, *, max_pages: int | None) -> sqlite3.Connection:
    """Open (or create) the database in WAL mode; raise AlarmStoreError naming the path and the remedy."""
    try:
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        _make_private(path)
        db = sqlite3.connect(path, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise AlarmStoreError(f"alarm store {path}: cannot open: {exc}") from exc
    try:
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _check_or_create(db, path)
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise AlarmStoreError(f"alarm store {path}: cannot switch to WAL mode (got {mode!r})")
        db.execute("PRAGMA synchronous=FULL")
        _make_private(path)
        if max_pages is not None:
            db.execute(f"PRAGMA max_page_count={int(max_pages)}")
    except AlarmStoreError:
        db.close()
        raise
    except sqlite3.DatabaseError as exc:
        db.close()
        if "not a database" in str(exc) or "malformed" in str(exc):
            raise AlarmStoreError(
                f"alarm store {path} is not a usable SQLite database ({exc}): {_MOVE_AWAY}"
            ) from exc
        raise AlarmStoreError(f"alarm store {path}: cannot use the database: {exc}") from exc
    except OSError as exc:
        db.close()
        raise AlarmStoreError(f"alarm store {path}: cannot use the database: {exc}") from exc
    return db


def _check_or_create(db: sqlite3.Connection, path: Path) -> None:
    """Create the layout in an empty file; refuse a foreign or differently shaped one."""
    check = db.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise AlarmStoreError(f"alarm store {path} is corrupt ({check}): {_MOVE_AWAY}")
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if app_id == 0 and not tables:
        with transaction(db):
            for create, _ in _TABLES.values():
                db.execute(create)
            for create in _INDEXES:
                db.execute(create)
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return
    if app_id != APPLICATION_ID:
        raise AlarmStoreError(
            f"alarm store {path} is another program's database (application_id {app_id:#x},"
            f" tables {sorted(tables)}): {_MOVE_AWAY}"
        )
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        raise AlarmStoreError(
            f"alarm store {path}: layout version {version} is not supported (expected"
            f" {SCHEMA_VERSION}): {_MOVE_AWAY}"
        )
    if tables - _OWN_TABLES:
        raise AlarmStoreError(
            f"alarm store {path} has unknown tables {sorted(tables - _OWN_TABLES)}: {_MOVE_AWAY}"
        )
    for name, (_, columns) in _TABLES.items():
        found = [row[1] for row in db.execute(f"PRAGMA table_info({name})")]
        if found != columns:
            raise AlarmStoreError(
                f"alarm store {path}: table {name} has columns {found}, expected {columns}: {_MOVE_AWAY}"
            )


def _make_private(path: Path) -> None:
    """Create the database file 0600 (SQLite gives the WAL and shm its mode) and fix wider files."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
    for suffix in ("", "-wal", "-shm", "-journal"):
        file = Path(f"{path}{suffix}")
        try:
            if file.stat().st_mode & 0o777 != FILE_MODE:
                file.chmod(FILE_MODE)
        except FileNotFoundError:
            continue


def _reason(exc: BaseException) -> str:
    if is_disk_full(exc):
        return f"disk full (SQLITE_FULL): {exc}"
    return f"{type(exc).__name__}: {exc}"
