"""What a field engineer can ask the running daemon: raw-byte rings per device and a snapshot socket.

`RawRing` keeps the last bytes one device link moved, both directions, timestamped, bounded by
`RING_MAX_BYTES` and `RING_MAX_AGE_S` (constant memory whatever the uptime: 64 devices hold at most
4 MiB). Writer: the link's own thread (`add`, one uncontended lock and a deque append per read or
write); readers: any thread (`chunks`).

`DiagnosticsServer` listens on a Unix socket (mode 0600; by default `diag.sock` next to the outbox, in
the daemon's state directory) and answers every connection with one JSON document and closes it; the
client sends nothing. The daemon's `snapshot` callable runs on the event loop and only copies what the
daemon already tracks; copying the rings (`raw`, keyed `bed/device`), the outbox query and the JSON
encoding (a few MiB at 64 beds) run in a worker thread, at most `MAX_CLIENTS` at once (further
connections are closed unanswered), and a client that does not read its answer within
`WRITE_TIMEOUT_S` is dropped: a slow or stuck client never holds the loop that carries the vitals.
The socket failing to open is logged and the daemon runs on.

`outbox_state` reads the outbox's SQLite file read-only (WAL readers never block the daemon's writer);
`icu-edge diag bundle` uses it too when the daemon is down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import sqlite3
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from edge.outbox import DeliveryPriority

LOGGER = logging.getLogger(__name__)

RING_MAX_BYTES = 64 * 1024
"""Raw bytes kept per device link (both directions together)."""
RING_MAX_AGE_S = 120.0
"""...and no older than this."""
MAX_CLIENTS = 2
WRITE_TIMEOUT_S = 10.0
SOCKET_NAME = "diag.sock"
SNAPSHOT_SCHEMA = "icu-edge/diag-snapshot/1"
_SOCKET_PATH_MAX_BYTES = 107
"""sun_path holds 108 bytes with its terminating NUL."""

Direction = Literal["rx", "tx"]


def socket_path(store_path: Path) -> Path:
    """Where the daemon of a config listens: `diag.sock` next to its outbox (`[store] path`)."""
    return store_path.with_name(SOCKET_NAME)


class RawRing:
    """The recent raw bytes of one device link, both directions, with monotonic timestamps."""

    def __init__(self, *, max_bytes: int = RING_MAX_BYTES, max_age_s: float = RING_MAX_AGE_S) -> None:
        self._max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._chunks: deque[tuple[float, Direction, bytes]] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self.total_rx_bytes = 0
        self.total_tx_bytes = 0

    def add(self, *, direction: Direction, data: bytes, now_s: float) -> None:
        """Keep `data` (moved at monotonic `now_s`); forget what falls out of the byte or age bound."""
        if not data:
            return
        if len(data) > self._max_bytes:
            data = data[-self._max_bytes :]
        with self._lock:
            if direction == "rx":
                self.total_rx_bytes += len(data)
            else:
                self.total_tx_bytes += len(data)
            chunks = self._chunks
            chunks.append((now_s, direction, bytes(data)))
            self._bytes += len(data)
            oldest_s = now_s - self._max_age_s
            while self._bytes > self._max_bytes or chunks[0][0] < oldest_s:
                self._bytes -= len(chunks.popleft()[2])

    def chunks(self, *, now_s: float) -> list[tuple[float, Direction, bytes]]:
        """Return a copy of the chunks younger than the age bound at `now_s`, oldest first."""
        oldest_s = now_s - self._max_age_s
        with self._lock:
            return [chunk for chunk in self._chunks if chunk[0] >= oldest_s]


def ring_document(ring: RawRing, *, now_mono_s: float, epoch_offset_s: float) -> dict[str, Any]:
    """The JSON form of a ring: totals, and the chunks as parallel columns (compact to encode).

    `t` (epoch s), `dir` (one letter per chunk: `r` received, `t` sent) and `len` (bytes) per chunk,
    oldest first; `b64` is every chunk's bytes concatenated in that order, base64.
    """
    chunks = ring.chunks(now_s=now_mono_s)
    return {
        "max_bytes": RING_MAX_BYTES,
        "max_age_s": RING_MAX_AGE_S,
        "total_rx_bytes": ring.total_rx_bytes,
        "total_tx_bytes": ring.total_tx_bytes,
        "t": [round(t + epoch_offset_s, 6) for t, _, _ in chunks],
        "dir": "".join(direction[0] for _, direction, _ in chunks),
        "len": [len(data) for _, _, data in chunks],
        "b64": base64.b64encode(b"".join(data for _, _, data in chunks)).decode(),
    }


def ring_chunks(document: Mapping[str, Any]) -> list[tuple[float, Direction, bytes]]:
    """The chunks of a `ring_document` back as (epoch s, direction, bytes)."""
    data = base64.b64decode(document["b64"])
    chunks: list[tuple[float, Direction, bytes]] = []
    offset = 0
    for t, letter, size in zip(document["t"], document["dir"], document["len"], strict=True):
        chunks.append((t, "rx" if letter == "r" else "tx", data[offset : offset + size]))
        offset += size
    return chunks


def outbox_state(path: Path) -> dict[str, Any]:
    """Rows, bytes, rows per priority, the oldest row and its age, read read-only; `error` on failure."""
    files = {suffix or "db": Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")}
    state: dict[str, Any] = {
        "path": str(path),
        "disk_bytes": {name: p.stat().st_size for name, p in files.items() if p.exists()},
    }
    if not path.exists():
        state["error"] = "no outbox file"
        return state
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as exc:
        state["error"] = f"cannot open read-only: {exc}"
        return state
    try:
        rows, payload_bytes = db.execute(
            "SELECT count(*), coalesce(sum(length(payload) + length(topic)), 0) FROM messages"
        ).fetchone()
        state["rows"] = rows
        state["payload_bytes"] = payload_bytes
        state["rows_by_priority"] = {
            _priority_name(priority): count
            for priority, count in db.execute("SELECT priority, count(*) FROM messages GROUP BY priority")
        }
        oldest = db.execute("SELECT created_wall FROM messages ORDER BY id LIMIT 1").fetchone()
        state["oldest_created"] = None if oldest is None else oldest[0]
        state["oldest_age_s"] = None if oldest is None else _age_s(oldest[0])
    except sqlite3.Error as exc:
        state["error"] = f"cannot read: {exc}"
    finally:
        db.close()
    return state


def _priority_name(value: int) -> str:
    try:
        return DeliveryPriority(value).name.lower()
    except ValueError:
        return str(value)


def _age_s(rfc3339: str) -> float | None:
    """Seconds since an outbox row's `created_wall` (RFC 3339, `Z`), None if it does not parse."""
    try:
        created = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((datetime.now(UTC) - created).total_seconds(), 3)


def encode_snapshot(document: Mapping[str, Any]) -> bytes:
    """The snapshot as sent: one JSON document, UTF-8, newline-terminated."""
    return (json.dumps(document, default=str, separators=(",", ":")) + "\n").encode("utf-8")


class DiagnosticsServer:
    """The daemon's diagnostics socket: one JSON snapshot per connection, then close."""

    def __init__(
        self,
        *,
        path: Path,
        snapshot: Callable[[], dict[str, Any]],
        rings: Mapping[str, RawRing],
        outbox_path: Path | None,
        max_clients: int = MAX_CLIENTS,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        self.path = path
        self._snapshot = snapshot
        self._rings = rings
        self._outbox_path = outbox_path
        self._max_clients = max_clients
        self._write_timeout_s = write_timeout_s
        self._clients = 0
        self._server: asyncio.AbstractServer | None = None
        self.refused = 0
        self.served = 0

    async def start(self) -> bool:
        """Listen; on failure log why once and return False (the daemon runs without diagnostics)."""
        path = self.path
        if len(os.fsencode(path)) > _SOCKET_PATH_MAX_BYTES:
            LOGGER.warning("diagnostics socket not opened: path %s is too long for a Unix socket", path)
            return False
        try:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()  # left by a daemon that was killed
            old_umask = os.umask(0o177)
            try:
                self._server = await asyncio.start_unix_server(self._serve, path=str(path))
            finally:
                os.umask(old_umask)
            os.chmod(path, 0o600)
        except OSError as exc:
            LOGGER.warning("diagnostics socket %s not opened: %s", path, exc.strerror or exc)
            return False
        LOGGER.info("diagnostics socket listening on %s", path)
        return True

    async def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        del reader  # the client sends nothing
        if self._clients >= self._max_clients:
            self.refused += 1
            writer.close()
            return
        self._clients += 1
        try:
            document = self._snapshot()
            body = await asyncio.to_thread(self._complete_and_encode, document)
            writer.write(body)
            await asyncio.wait_for(writer.drain(), timeout=self._write_timeout_s)
            self.served += 1
        except (TimeoutError, ConnectionError) as exc:
            LOGGER.debug("diagnostics client dropped: %s", type(exc).__name__)
        except Exception:
            LOGGER.exception("diagnostics snapshot failed")
        finally:
            self._clients -= 1
            writer.close()

    def _complete_and_encode(self, document: dict[str, Any]) -> bytes:
        """Add the rings and what takes I/O (the outbox file), and encode; runs in a worker thread."""
        started_s = time.monotonic()
        epoch_offset_s = time.time() - started_s
        document["raw"] = {
            name: ring_document(ring, now_mono_s=started_s, epoch_offset_s=epoch_offset_s)
            for name, ring in self._rings.items()
        }
        if self._outbox_path is not None:
            document["outbox"] = outbox_state(self._outbox_path)
        document["snapshot_ms"] = round((time.monotonic() - started_s) * 1000.0, 1)
        return encode_snapshot(document)


def read_snapshot(path: Path, *, timeout_s: float = 10.0) -> dict[str, Any]:
    """Ask a daemon's diagnostics socket for its snapshot; raise OSError or ValueError on failure."""
    chunks: list[bytes] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        while data := sock.recv(1 << 16):
            chunks.append(data)
    if not chunks:
        raise ValueError(f"{path}: the daemon closed the connection without an answer (busy?)")
    document = json.loads(b"".join(chunks))
    if not isinstance(document, dict):
        raise ValueError(f"{path}: not a snapshot")
    return document
