"""A loopback TCP proxy in front of the broker that can stall, resume and reset its connections.

A stall stops forwarding in both directions without closing anything: bytes and end-of-stream wait
in the kernel buffers and in the proxy, like on a link whose packets are held by a middlebox. Clients
that connect during a stall are accepted, and their bytes are held too. `resume` forwards everything
held, newest connection first by default (the order that makes a stale CONNECT of an abandoned
connection attempt reach the broker after the live one). One thread owns every socket; the public
methods only set flags under a lock.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

_CHUNK = 65536


@dataclass(slots=True, kw_only=True)
class _Pair:
    client: socket.socket
    upstream: socket.socket | None = None
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    client_eof: bool = False
    upstream_eof: bool = False
    closed: bool = False


def _abort(sock: socket.socket | None) -> None:
    """Close with RST (linger 0), as a link reset does."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class StallProxy:
    """Forward 127.0.0.1:`port` to the broker; `stall`, `resume` and `reset` on demand."""

    def __init__(self, *, upstream_host: str, upstream_port: int, resume_gap_s: float = 0.1) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._resume_gap_s = resume_gap_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._stalled = False
        self._resume_newest_first: bool | None = None
        self._reset_requested = False
        self._closing = False
        self._accept_times: list[float] = []
        self._pairs: list[_Pair] = []
        self._thread = threading.Thread(target=self._run, name="stall-proxy", daemon=True)
        self._thread.start()

    @property
    def accept_times(self) -> list[float]:
        """Monotonic times at which client connections were accepted."""
        with self._lock:
            return list(self._accept_times)

    def stall(self) -> None:
        """Stop forwarding both ways, on every connection, old and new, without closing any."""
        with self._lock:
            self._stalled = True

    def resume(self, *, newest_first: bool = True) -> None:
        """Forward everything held, one connection after another, then forward as usual."""
        with self._lock:
            self._resume_newest_first = newest_first

    def reset(self) -> None:
        """Reset (RST) every open connection, both sides."""
        with self._lock:
            self._reset_requested = True

    def close(self) -> None:
        """Reset every connection, stop the thread and the listener."""
        with self._lock:
            self._closing = True
        self._thread.join(timeout=5)

    # ---- the proxy thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    closing = self._closing
                    reset, self._reset_requested = self._reset_requested, False
                    resume, self._resume_newest_first = self._resume_newest_first, None
                    stalled = self._stalled
                if closing:
                    return
                if reset:
                    for pair in self._pairs:
                        self._close(pair)
                if resume is not None:
                    self._flush_held(newest_first=resume)
                    with self._lock:
                        self._stalled = stalled = False
                self._pairs = [p for p in self._pairs if not p.closed]
                self._accept()
                if stalled:
                    time.sleep(0.02)
                else:
                    self._forward(timeout_s=0.02)
        finally:
            for pair in self._pairs:
                self._close(pair)
            self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except BlockingIOError:
                return
            client.setblocking(False)
            with self._lock:
                self._accept_times.append(time.monotonic())
            self._pairs.append(_Pair(client=client))

    def _connect_upstream(self, pair: _Pair) -> None:
        if pair.upstream is None and not pair.closed:
            try:
                upstream = socket.create_connection(self._upstream, timeout=2)
            except OSError:
                self._close(pair)
                return
            upstream.setblocking(False)
            pair.upstream = upstream

    def _flush_held(self, *, newest_first: bool) -> None:
        """Deliver each connection's held bytes (and end-of-stream) before the next one's."""
        pairs = list(reversed(self._pairs)) if newest_first else list(self._pairs)
        for pair in pairs:
            self._connect_upstream(pair)
            self._pump(pair, read_client=True, read_upstream=False)
            time.sleep(self._resume_gap_s)

    def _forward(self, *, timeout_s: float) -> None:
        for pair in self._pairs:
            self._connect_upstream(pair)
        live = [p for p in self._pairs if not p.closed and p.upstream is not None]
        if not live:
            time.sleep(timeout_s)
            return
        with selectors.DefaultSelector() as selector:
            for pair in live:
                assert pair.upstream is not None
                for sock, want_read, pending in (
                    (pair.client, not pair.client_eof, pair.to_client),
                    (pair.upstream, not pair.upstream_eof, pair.to_upstream),
                ):
                    events = (selectors.EVENT_READ if want_read else 0) | (
                        selectors.EVENT_WRITE if pending else 0
                    )
                    if events:
                        selector.register(sock, events, pair)
            if not selector.get_map():
                time.sleep(timeout_s)
                return
            ready = selector.select(timeout_s)
        for key, _ in ready:
            pair = key.data
            if not pair.closed:
                self._pump(
                    pair, read_client=key.fileobj is pair.client, read_upstream=key.fileobj is pair.upstream
                )

    def _pump(self, pair: _Pair, *, read_client: bool, read_upstream: bool) -> None:
        """Move bytes one step: read what is ready, write what is pending, pass end-of-stream on."""
        if pair.closed or pair.upstream is None:
            return
        try:
            if read_client and not pair.client_eof:
                pair.client_eof = self._read(pair.client, pair.to_upstream)
            if read_upstream and not pair.upstream_eof:
                pair.upstream_eof = self._read(pair.upstream, pair.to_client)
            self._write(pair.upstream, pair.to_upstream)
            self._write(pair.client, pair.to_client)
        except OSError:
            self._close(pair)
            return
        if pair.client_eof and not pair.to_upstream:
            self._shutdown_write(pair.upstream)
        if pair.upstream_eof and not pair.to_client:
            self._shutdown_write(pair.client)
        if pair.client_eof and pair.upstream_eof and not pair.to_client and not pair.to_upstream:
            pair.closed = True
            pair.client.close()
            pair.upstream.close()

    @staticmethod
    def _read(sock: socket.socket, into: bytearray) -> bool:
        """Read everything available; return True at end-of-stream."""
        while True:
            try:
                chunk = sock.recv(_CHUNK)
            except BlockingIOError:
                return False
            if not chunk:
                return True
            into.extend(chunk)

    @staticmethod
    def _write(sock: socket.socket, pending: bytearray) -> None:
        while pending:
            try:
                sent = sock.send(pending)
            except BlockingIOError:
                return
            del pending[:sent]

    @staticmethod
    def _shutdown_write(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    def _close(self, pair: _Pair) -> None:
        if not pair.closed:
            pair.closed = True
            _abort(pair.client)
            _abort(pair.upstream)
