"""Byte transports behind one `open_transport(url)`: a device path, `socket://host:port`, `loop://`, `udp://`.

pyserial's `serial_for_url` already understands all three, so the same driver runs on a cable, a TCP
serial bridge or a pseudo-terminal. A reader thread waits in `wait_readable` (a `select` on the port's
descriptor and the thread's wake-up descriptor, until the session's next deadline) and then reads what
is waiting: it wakes for data, a deadline or a stop, never on a polling period. Only a port with no
descriptor (`loop://`) falls back to reads that block for at most `read_timeout_s`. Never on the event
loop.

A port carries one device's data to one bed, so it is opened by one reader at a time, two ways:
- in this process, `open_transport` claims the port's identity (`port_identity`: the device path with
  symlinks resolved, or `tcp://host:port`) until the transport is closed; a second open is refused;
- across processes, a device path is `flock`ed (pyserial `exclusive=True`), which a symlink alias
  (`/dev/serial/by-id/...`) cannot dodge because the lock is on the device node, and which the kernel
  drops when the holder dies.
A refused open raises `PortBusy` ("port busy: ..."); the device link shows it and retries.

`udp://host:port` (a networked monitor, IntelliVue LAN) is a connected UDP socket, not a byte stream:
`read` returns one datagram and `write` sends one, so a datagram session hands over one message per
`data_to_send` call. Its claim is `udp://host:port` (host lower-cased, IP literal canonical).

Not TIOCEXCL: on a pseudo-terminal the exclusive flag outlives its opener while the other side stays
open, so a daemon killed by the watchdog would find its own port EBUSY after the restart (seen on
Linux 2026-11-30) and its bed would stay without values. A port someone else put in exclusive mode is
reported as busy.

Threads: the claim table is shared by every reader thread and guarded by one lock; a transport itself
belongs to the one reader thread that opened it.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import ipaddress
import logging
import os
import re
import select
import socket
import stat
import termios
import threading
import urllib.parse
from typing import Any, Protocol

import serial

from drivers.base import SerialSettings

LOGGER = logging.getLogger(__name__)

PORT_FORMS = "a device path (/dev/serial/by-id/...), socket://host:port, or loop://"
"""What a device's `port` may be, in the words of an error message."""


_PORT_ERRORS = (serial.SerialException, OSError, termios.error)
"""What pyserial lets escape from a port: termios.error is no OSError, and a tty that vanishes while
pyserial configures it (a pty whose other side just closed) raises it from `open()`."""


class TransportError(Exception):
    """The transport could not be opened, or failed while open (cable out, peer gone)."""


class PortBusy(TransportError):
    """Another reader (in this process or another) holds the port."""


def port_problem(url: str) -> str | None:
    """Return why url names no port we can open (None when it does), in one line."""
    if url.startswith("/"):
        return "must not contain a NUL character" if "\0" in url else None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "loop":
        return None if url == "loop://" else "loop:// takes nothing after it"
    if parts.scheme != "socket":
        return f"must be {PORT_FORMS}"
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or not 1 <= port <= 65535:
        return "socket:// needs a host and a port 1-65535 (socket://host:port)"
    if parts.path not in {"", "/"} or parts.query or parts.fragment or parts.username:
        return "socket:// takes only host:port (no path, options or user)"
    return None


def port_identity(url: str) -> str | None:
    """Return the name every spelling of the same port shares; None for a port nobody else can reach.

    A device path resolves its symlinks (`/dev/serial/by-id/...` -> `/dev/ttyUSB0`) where they exist;
    `socket://` becomes `tcp://host:port` with the host lower-cased and an IP literal in canonical form
    (no name lookup: a DNS answer must not decide whether a config is valid). `loop://` is a private
    loop per open, shared by nobody.
    """
    if url.startswith("/"):
        return os.path.realpath(url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "loop":
        return None
    host = (parts.hostname or "").rstrip(".")
    address = _ip_literal(host)
    if address is None:
        canonical = host
    else:
        canonical = f"[{address.compressed}]" if address.version == 6 else address.compressed
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"tcp://{canonical}:{port}"


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Return the address a numeric host names, read as the resolver reads it (`127.000.0.1`, `127.1`)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not re.fullmatch(r"[0-9a-fx.]+", host) or not any(c.isdigit() for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


_BUSY_ERRNOS = frozenset({errno.EAGAIN, errno.EBUSY})
"""flock held by another process (pyserial `exclusive=True`); a tty another program made exclusive."""

_claims: set[str] = set()
_claims_lock = threading.Lock()


def _claim(identity: str | None, *, url: str) -> None:
    if identity is None:
        return
    with _claims_lock:
        if identity in _claims:
            alias = "" if identity == url else f" ({identity})"
            raise PortBusy(f"{url}: port busy: another device link of this appliance has {url}{alias} open")
        _claims.add(identity)


def _release(identity: str | None) -> None:
    if identity is not None:
        with _claims_lock:
            _claims.discard(identity)


class Transport(Protocol):
    """The few operations a device link needs from a byte stream."""

    url: str

    def wait_readable(self, *, timeout_s: float, wake_fd: int) -> bool:
        """Wait until a read would not block, `wake_fd` is readable, or timeout_s passed.

        Return True when `read` should be called now (data, or a loss that `read` will raise).
        """

    def read(self, *, max_bytes: int) -> bytes:
        """Return what arrived (possibly nothing after the read time-out); raise TransportError on loss."""

    def write(self, data: bytes) -> None:
        """Write all of data; raise TransportError on loss."""

    def close(self) -> None:
        """Release the port; safe to call twice."""


def _descriptor(port: Any) -> int | None:
    """The descriptor to select on: a device path's or a socket://'s; None for loop://."""
    try:
        fd = port.fileno()
    except (AttributeError, io.UnsupportedOperation, OSError, serial.SerialException):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _wait_readable(fd: int, *, wake_fd: int, timeout_s: float, url: str) -> bool:
    try:
        ready, _, _ = select.select([fd, wake_fd], [], [], max(0.0, timeout_s))
    except (OSError, ValueError) as exc:
        raise TransportError(f"{url}: wait failed: {exc}") from exc
    return fd in ready


class SerialTransport:
    """A pyserial port (device path, pty, socket:// or loop:// URL)."""

    def __init__(self, *, url: str, port: Any, identity: str | None = None) -> None:
        self.url = url
        self._port = port
        self._identity = identity
        self._fd = _descriptor(port)

    def wait_readable(self, *, timeout_s: float, wake_fd: int) -> bool:
        """Select on the port and `wake_fd`; a port without a descriptor (loop://) reads at once."""
        if self._fd is None:
            return True
        return _wait_readable(self._fd, wake_fd=wake_fd, timeout_s=timeout_s, url=self.url)

    def read(self, *, max_bytes: int) -> bytes:
        """Read what is waiting (at most max_bytes); with nothing waiting, wait the port's time-out."""
        try:
            waiting = self._port.in_waiting
            data: bytes = self._port.read(min(max(waiting, 1), max_bytes))
        except _PORT_ERRORS as exc:
            raise TransportError(f"{self.url}: read failed: {exc}") from exc
        return data

    def write(self, data: bytes) -> None:
        """Write data and wait until it left the buffer."""
        try:
            self._port.write(data)
            self._port.flush()
        except _PORT_ERRORS as exc:
            raise TransportError(f"{self.url}: write failed: {exc}") from exc

    def close(self) -> None:
        """Close the port and release its claim; errors on close are logged, not raised."""
        try:
            self._port.close()
        except _PORT_ERRORS as exc:
            LOGGER.warning("closing %s failed: %s", self.url, exc)
        finally:
            _release(self._identity)
            self._identity = None


class UdpTransport:
    """A connected UDP socket: one datagram per read, one per write (line settings do not apply)."""

    MAX_DATAGRAM_BYTES = 65535

    def __init__(self, *, url: str, sock: socket.socket, identity: str | None) -> None:
        self.url = url
        self._socket = sock
        self._identity = identity

    def wait_readable(self, *, timeout_s: float, wake_fd: int) -> bool:
        """Select on the socket and `wake_fd`."""
        return _wait_readable(self._socket.fileno(), wake_fd=wake_fd, timeout_s=timeout_s, url=self.url)

    def read(self, *, max_bytes: int) -> bytes:
        """Return the next datagram (b"" after the read time-out); a datagram is never split."""
        try:
            return self._socket.recv(max(max_bytes, self.MAX_DATAGRAM_BYTES))
        except TimeoutError:
            return b""
        except OSError as exc:
            raise TransportError(f"{self.url}: read failed: {exc}") from exc

    def write(self, data: bytes) -> None:
        """Send data as one datagram."""
        try:
            self._socket.send(data)
        except OSError as exc:
            raise TransportError(f"{self.url}: write failed: {exc}") from exc

    def close(self) -> None:
        """Close the socket and release its claim."""
        try:
            self._socket.close()
        finally:
            _release(self._identity)
            self._identity = None


def udp_identity(url: str) -> str:
    """Return the claim name of a udp:// address: `udp://host:port`, host canonical."""
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower().rstrip(".")
    address = _ip_literal(host)
    if address is not None:
        host = f"[{address.compressed}]" if address.version == 6 else address.compressed
    return f"udp://{host}:{parts.port}"


def _open_udp(url: str, *, read_timeout_s: float) -> socket.socket:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise TransportError(f"{url}: cannot open: udp:// needs a host and a port (udp://HOST:PORT)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise TransportError(f"{url}: cannot open: {exc}") from exc
    try:
        sock.settimeout(read_timeout_s)
        sock.connect(address)
    except OSError as exc:
        sock.close()
        raise TransportError(f"{url}: cannot open: {exc}") from exc
    return sock


def open_transport(url: str, *, line: SerialSettings, read_timeout_s: float = 0.1) -> Transport:
    """Open the port named by url with the driver's line settings, for this reader alone.

    Raise PortBusy when another reader holds it, TransportError when it cannot be opened.
    """
    if url.startswith("udp://"):
        udp = udp_identity(url)
        _claim(udp, url=url)
        try:
            sock = _open_udp(url, read_timeout_s=read_timeout_s)
        except BaseException:
            _release(udp)
            raise
        return UdpTransport(url=url, sock=sock, identity=udp)
    identity = port_identity(url)
    _claim(identity, url=url)
    try:
        port = open_serial_port(url, line=line, read_timeout_s=read_timeout_s)
    except BaseException:
        _release(identity)
        raise
    return SerialTransport(url=url, port=port, identity=identity)


_PTY_MAJORS = range(136, 144)
"""UNIX98 pseudo-terminal slaves (Documentation/admin-guide/devices.txt)."""


def is_pty(path: str) -> bool:
    """Return whether path names a pseudo-terminal (the simulators' stand-in for a serial cable)."""
    try:
        mode = os.stat(path)
    except OSError:
        return False
    return stat.S_ISCHR(mode.st_mode) and os.major(mode.st_rdev) in _PTY_MAJORS


def _line_for(url: str, line: SerialSettings) -> SerialSettings:
    """Return the line settings to ask of url: parity and RTS/CTS off on a pty.

    A pty has no parity: Linux clears PARENB and forces CS8, and once it holds 8N1 a request that
    only adds parity is refused with EINVAL (tcsetattr fails when none of its changes apply), so a
    second open of the same pty, by a reconnecting link or a restarted daemon, would never succeed.
    """
    if url.startswith("/") and (line.parity != "N" or line.rtscts) and is_pty(url):
        return dataclasses.replace(line, parity="N", bytesize=8, rtscts=False)
    return line


def open_serial_port(url: str, *, line: SerialSettings, read_timeout_s: float, exclusive: bool = True) -> Any:
    """Open url with pyserial (a pty's line settings adjusted); a device path `flock`ed unless not
    `exclusive` (`diag probe --force`: a port another program holds). No claim: see `open_transport`."""
    line = _line_for(url, line)
    try:
        port = serial.serial_for_url(
            url,
            baudrate=line.baud,
            bytesize=line.bytesize,
            parity=line.parity,
            stopbits=line.stopbits,
            timeout=read_timeout_s,
            write_timeout=2.0,
            xonxoff=False,
            rtscts=line.rtscts,
            exclusive=True if exclusive and url.startswith("/") else None,
        )
    except (*_PORT_ERRORS, ValueError) as exc:
        if getattr(exc, "errno", None) in _BUSY_ERRNOS:
            raise PortBusy(f"{url}: port busy: another process holds {url}: {exc}") from exc
        raise TransportError(f"{url}: cannot open: {exc}") from exc
    return port
