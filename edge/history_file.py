"""The history file: its layout, opening and checking it, the row encoding, and the read-only reader.

Shared by the daemon's history writer (edge/history.py) and `icu-edge report` (tools/report.py), so
both sides agree on one layout. A reader opens the file read-only; SQLite's WAL lets it read while the
daemon writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edge.model import ForecastBody
from edge.outbox import is_disk_full, transaction

APPLICATION_ID = 0x49434548
"""`PRAGMA application_id` of a history file ("ICEH"): tells our file from another program's."""
SCHEMA_VERSION = 1
FILE_MODE = 0o600
"""The history holds patient vitals: readable by the service user only, like the alarm store."""
BUSY_TIMEOUT_MS = 1000
JOURNAL_SIZE_LIMIT_BYTES = 1024 * 1024
WAL_AUTOCHECKPOINT_PAGES = 256

SCHEMA = (
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
TABLES = {"keysets", "samples", "forecasts", "alarms", "beds"}
ROW_TABLES = ("samples", "forecasts", "alarms")


class HistoryUnavailable(Exception):
    """The history file cannot be read (missing, not ours, corrupt); the message says which and why."""


class CorruptFile(Exception):
    """The file is not a usable SQLite database (it may be moved aside: it holds only review data)."""


def open_for_writing(path: Path) -> sqlite3.Connection:
    """Open (or create) the file for the writer; raise CorruptFile or HistoryUnavailable saying why."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            # created private: SQLite gives the WAL and shm files the database's mode
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    except (OSError, sqlite3.Error) as exc:
        raise HistoryUnavailable(f"cannot open: {exc}") from exc
    try:
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        check_or_create(db, path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    except sqlite3.DatabaseError as exc:
        db.close()
        if is_corrupt(exc):
            raise CorruptFile(str(exc)) from exc
        raise HistoryUnavailable(reason(exc)) from exc
    except BaseException:
        db.close()
        raise
    return db


def check_or_create(db: sqlite3.Connection, path: Path) -> None:
    """Create the layout in an empty file; refuse another program's or another layout's."""
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if app_id == 0 and not tables:
        with transaction(db):
            for statement in SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return
    check_ours(db, path, app_id=app_id, tables=tables)


def check_ours(db: sqlite3.Connection, path: Path, *, app_id: int, tables: set[str]) -> None:
    """Raise HistoryUnavailable unless the file is an icu-edge history of this layout."""
    if app_id != APPLICATION_ID or not tables >= TABLES:
        raise HistoryUnavailable(
            f"{path} is not an icu-edge history (application_id {app_id:#x}, tables {sorted(tables)});"
            " left alone: move it away or set [history] path"
        )
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION:
        raise HistoryUnavailable(f"{path}: history layout {version}, expected {SCHEMA_VERSION}")


def encode_values(values: Mapping[str, float]) -> tuple[str, str]:
    """Return the row's key set and its values in that order (JSON): half the bytes of an object."""
    keys = sorted(values)
    numbers = [_compact(values[key]) for key in keys]
    return json.dumps(keys, separators=(",", ":")), json.dumps(
        numbers, separators=(",", ":"), allow_nan=False
    )


def _compact(value: float) -> float | int:
    """78.0 is stored as 78."""
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def forecast_json(body: ForecastBody) -> str:
    """The headline: per signal [horizon_min, p10, p50, p90] rows (and `src` when the forecast was made
    from another key's readings: pr for hr); per event [horizon_min, p] rows."""
    return json.dumps(
        {
            "model": f"{body.model.id}@{body.model.version}",
            "signals": {
                key: {
                    "unit": signal.unit,
                    "last": signal.last_value,
                    "h": [[h.horizon_min, h.p10, h.p50, h.p90] for h in signal.horizons],
                    **({} if signal.source == key else {"src": signal.source}),
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


def is_corrupt(exc: BaseException) -> bool:
    """Whether an SQLite error says the file is no (longer a) database."""
    text = str(exc)
    return "not a database" in text or "malformed" in text


def reason(exc: BaseException) -> str:
    """One line saying why a write failed (the once-per-reason log's key)."""
    if is_disk_full(exc):
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
    sources: dict[str, str]
    """Signal -> the key its forecast was made from, where that is another key (pr for hr)."""


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
            check_ours(self._db, path, app_id=app_id, tables=tables)
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
                    sources={key: s["src"] for key, s in signals.items() if "src" in s},
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
