"""One listener thread per `listen = "HOST:PORT"` device: accepts senders, feeds one session per connection.

The counterpart of `edge.device_link.DeviceLink` for devices that connect to us (HL7 over MLLP). One
thread runs a `selectors` loop over the listening socket and every accepted connection, all
non-blocking: a slow or silent sender never holds up another; reads take what is there, ACKs that
cannot be written at once wait for the socket to be writable. Each connection has its own sans-I/O
session (its own framer state); the events of all of them go, in arrival order, to the device's one
bed through `deliver` (which must only enqueue, as for DeviceLink).

Policies:
- a bind failure (port in use, address not local) is shown on the device status (`last_error`) and
  retried with capped backoff; it never stops other beds;
- at most `max_connections` senders at once: a further connection is closed at once and counted;
- a connection whose session goes down (idle past its time-out) is closed; a sender that does not read
  its ACKs (more than `MAX_PENDING_OUT_BYTES` unsent) is closed;
- the device is `LinkUp` when its first sender connects and `LinkDown` once no sender has been
  connected for `linger_s` (senders that connect per message keep the link up between messages).

Threads: the listener thread owns the sockets, the sessions and the counters. It sleeps in its select
until a socket is ready, a session deadline or report is due (at most `MAX_WAIT_S`), or `stop()`
writes to its wake-up pipe.
"""

from __future__ import annotations

import contextlib
import logging
import math
import selectors
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.base import DeviceSession, DriverEvent, LinkDown, LinkUp
from drivers.registry import get_driver
from edge.config import DeviceConfig
from edge.device_link import Backoff, DeviceReport, LinkThread
from edge.twin import DeviceIdentity

LOGGER = logging.getLogger(__name__)

READ_CHUNK_BYTES = 65536
DEFAULT_MAX_CONNECTIONS = 8
MAX_PENDING_OUT_BYTES = 1024 * 1024
"""Unsent answers one connection may hold before its sender is judged not to read them."""
LINGER_S = 30.0
"""How long the device stays `connected` after its last sender left."""
ACCEPT_BACKLOG = 16
BIND_BACKOFF = Backoff(maximum_s=5.0)
"""Retries of a failed bind: a port held by another program is not freed within milliseconds."""
_WAKE = object()
"""Selector data of the wake-up pipe (the listening socket's is None, a connection's its state)."""


def listen_address(listen: str) -> tuple[str, int]:
    """Return (host, port) of a `HOST:PORT` the config accepted (IPv6 as `[::1]:2575`)."""
    parts = urllib.parse.urlsplit(f"//{listen}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"not HOST:PORT: {listen!r}")
    return parts.hostname, parts.port


@dataclass(slots=True)
class _Connection:
    sock: socket.socket
    session: DeviceSession
    peer: str
    out: bytearray = field(default_factory=bytearray)
    writing: bool = False


class ListenerLink(LinkThread):
    """The listener thread of one device that receives connections."""

    def __init__(
        self,
        *,
        identity: DeviceIdentity,
        listen: str,
        session_factory: Callable[[], DeviceSession],
        deliver: Callable[[DeviceReport], None],
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        backoff: Backoff = BIND_BACKOFF,
        linger_s: float = LINGER_S,
        report_interval_s: float = 1.0,
    ) -> None:
        super().__init__(identity=identity, deliver=deliver, report_interval_s=report_interval_s)
        self._host, self._port = listen_address(listen)
        self._session_factory = session_factory
        self._max_connections = max_connections
        self._backoff = backoff
        self._linger_s = linger_s
        self._connections: dict[int, _Connection] = {}
        self._selector: selectors.BaseSelector
        """The selector of the current listening socket (set by `_serve`)."""
        self._retired: dict[str, int] = {}
        """Counters of the sessions of closed connections (the device's totals never go backwards)."""
        self._own: dict[str, int] = {
            "connections_accepted": 0,
            "connections_refused": 0,
            "connections_open": 0,
            "bind_failures": 0,
            "unread_ack_closes": 0,
        }
        self._events: list[DriverEvent] = []
        self._up = False
        self._down_at_s: float | None = None
        self.bound_port: int | None = None
        """The port actually bound (the config's, or the one the OS chose for port 0)."""

    @classmethod
    def for_device(
        cls, *, identity: DeviceIdentity, device: DeviceConfig, deliver: Callable[[DeviceReport], None]
    ) -> ListenerLink:
        """Build the listener of a configured `listen` device (its options already passed the driver)."""
        assert device.listen is not None
        driver = get_driver(device.driver)
        options = dict(device.options)
        raw_limit = options.get("max_connections", DEFAULT_MAX_CONNECTIONS)
        limit = (
            raw_limit
            if isinstance(raw_limit, int) and not isinstance(raw_limit, bool)
            else DEFAULT_MAX_CONNECTIONS
        )
        return cls(
            identity=identity,
            listen=device.listen,
            session_factory=lambda: driver.create_session(options),
            deliver=deliver,
            max_connections=limit,
        )

    # ---- thread --------------------------------------------------------------------------------------
    def _run(self) -> None:
        next_delay_s = self._backoff.delays_s()
        while not self._stop.is_set():
            self.last_progress_s = time.monotonic()
            server = self._bind()
            if server is None:
                self._report(force=True)
                self._stop.wait(next_delay_s())
                continue
            next_delay_s = self._backoff.delays_s()
            LOGGER.info(
                "listening on %s:%d",
                self._host,
                self.bound_port,
                extra={"bed": self.identity.bed, "device": self.identity.device},
            )
            try:
                self._serve(server)
            except Exception:
                # A bug must not kill the listener for good: log it, count it, listen anew.
                LOGGER.exception(
                    "listener failure on %s",
                    self.identity.port,
                    extra={"bed": self.identity.bed, "device": self.identity.device},
                )
                self._own["driver_failures"] = self._own.get("driver_failures", 0) + 1
                self._note_error("listener failure (see log)")
            finally:
                for conn in list(self._connections.values()):
                    self._close(conn, reason=None)
                server.close()
            if self._up and not self._stop.is_set():
                self._set_down(self._last_error or "listener closed")
                self._report(force=True)
            if not self._stop.is_set():
                self._stop.wait(next_delay_s())

    def _bind(self) -> socket.socket | None:
        """Open the listening socket, or note why it could not be opened and return None."""
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self._host, self._port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            server = socket.socket(family, kind, proto)
        except OSError as exc:
            self._bind_failed(exc)
            return None
        try:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(address)
            server.listen(ACCEPT_BACKLOG)
            server.setblocking(False)
        except OSError as exc:
            server.close()
            self._bind_failed(exc)
            return None
        self.bound_port = int(server.getsockname()[1])
        if self._last_error is not None and self._last_error.startswith(self.identity.port):
            self._last_error = None
        return server

    def _bind_failed(self, exc: OSError) -> None:
        self._own["bind_failures"] += 1
        self._note_error(f"{self.identity.port}: cannot listen: {exc.strerror or exc}")

    def _serve(self, server: socket.socket) -> None:
        with selectors.DefaultSelector() as selector:
            self._selector = selector
            selector.register(server, selectors.EVENT_READ, data=None)
            selector.register(self._wake_read_fd, selectors.EVENT_READ, data=_WAKE)
            while not self._stop.is_set():
                now_s = time.monotonic()
                self.last_progress_s = now_s
                timeout_s = self._wait_s(deadline_s=self._next_deadline_s(), now_s=now_s)
                for key, mask in selector.select(timeout_s):
                    if key.data is _WAKE:
                        continue
                    if key.data is None:
                        self._accept(server)
                    else:
                        conn = key.data
                        if mask & selectors.EVENT_READ:
                            self._read(conn)
                        if mask & selectors.EVENT_WRITE and conn.sock.fileno() in self._connections:
                            self._flush(conn)
                self._run_timers(time.monotonic())
                self._report()

    def _next_deadline_s(self) -> float:
        deadlines = [c.session.next_deadline_s() for c in self._connections.values()]
        if self._down_at_s is not None:
            deadlines.append(self._down_at_s)
        return min(deadlines, default=math.inf)

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                sock, peer_address = server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: the connection stays in the backlog; say why, try again later.
                self._note_error(f"{self.identity.port}: cannot accept: {exc.strerror or exc}")
                return
            peer = f"{peer_address[0]}:{peer_address[1]}"
            if len(self._connections) >= self._max_connections:
                self._own["connections_refused"] += 1
                LOGGER.warning(
                    "refused connection from %s: %d senders already connected (max_connections)",
                    peer,
                    len(self._connections),
                    extra={"bed": self.identity.bed, "device": self.identity.device},
                )
                sock.close()
                continue
            sock.setblocking(False)
            session = self._session_factory()
            session.reset(now_s=time.monotonic())
            conn = _Connection(sock=sock, session=session, peer=peer)
            self._connections[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, data=conn)
            self._own["connections_accepted"] += 1
            self._own["connections_open"] = len(self._connections)
            LOGGER.info(
                "sender %s connected", peer, extra={"bed": self.identity.bed, "device": self.identity.device}
            )
            self._down_at_s = None
            if not self._up:
                self._up = True
                self._events.append(LinkUp())

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(READ_CHUNK_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close(conn, reason=f"read failed: {exc.strerror or exc}")
            return
        if not data:
            self._close(conn, reason=None)
            return
        now_s = time.monotonic()
        self.raw.add(direction="rx", data=data, now_s=now_s)
        conn.session.receive(data, now_s=now_s)
        self._collect(conn)
        while outgoing := conn.session.data_to_send():
            conn.out += outgoing
        self._flush(conn)

    def _flush(self, conn: _Connection) -> None:
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._close(conn, reason=f"write failed: {exc.strerror or exc}")
                return
            if sent:
                self.raw.add(direction="tx", data=bytes(conn.out[:sent]), now_s=time.monotonic())
            del conn.out[:sent]
        if len(conn.out) > MAX_PENDING_OUT_BYTES:
            self._own["unread_ack_closes"] += 1
            self._close(conn, reason="sender does not read its acknowledgements")
            return
        want_write = bool(conn.out)
        if want_write != conn.writing:
            conn.writing = want_write
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            self._selector.modify(conn.sock, events, data=conn)

    def _run_timers(self, now_s: float) -> None:
        for conn in list(self._connections.values()):
            session = conn.session
            if now_s >= session.next_deadline_s():
                session.poll(now_s=now_s)
                self._collect(conn)
                if not session.link_up:
                    self._close(conn, reason="idle connection closed")
        if self._down_at_s is not None and now_s >= self._down_at_s and not self._connections:
            self._down_at_s = None
            self._set_down(f"no sender connected for {self._linger_s:g} s")

    def _collect(self, conn: _Connection) -> None:
        for event in conn.session.events():
            if isinstance(event, LinkUp | LinkDown):
                continue  # the device's link state is the listener's, not one connection's
            self._events.append(event)

    def _close(self, conn: _Connection, *, reason: str | None) -> None:
        fileno = conn.sock.fileno()
        self._connections.pop(fileno, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)
        conn.sock.close()
        self._collect(conn)
        for name, value in conn.session.counters.snapshot().items():
            self._retired[name] = self._retired.get(name, 0) + value
        self._own["connections_open"] = len(self._connections)
        LOGGER.info(
            "sender %s disconnected%s",
            conn.peer,
            f": {reason}" if reason else "",
            extra={"bed": self.identity.bed, "device": self.identity.device},
        )
        if not self._connections and self._up:
            self._down_at_s = time.monotonic() + self._linger_s

    def _set_down(self, reason: str) -> None:
        self._up = False
        self._events.append(LinkDown(reason=reason))

    # ---- reports -------------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Return the device's counters: every session's (open and closed) summed, and the listener's."""
        total = dict(self._retired)
        for conn in self._connections.values():
            for name, value in conn.session.counters.snapshot().items():
                total[name] = total.get(name, 0) + value
        total.update(self._own)
        return total

    def _report(self, *, force: bool = False) -> None:
        events, self._events = tuple(self._events), []
        counters = self.counters()
        self._frames_counted(counters.get("frames_in", 0))
        self._deliver_report(events=events, counters=counters, force=force)
