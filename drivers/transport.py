"""Byte transports behind one `open_transport(url)`: a device path, `socket://host:port` or `loop://`.

pyserial's `serial_for_url` already understands all three, so the same driver runs on a cable, a TCP
serial bridge or a pseudo-terminal. Reads block for at most `read_timeout_s` and are meant to run on a
reader thread, never on the event loop.
"""

from __future__ import annotations

import logging
import termios
from typing import Any, Protocol

import serial

from drivers.base import SerialSettings

LOGGER = logging.getLogger(__name__)


_PORT_ERRORS = (serial.SerialException, OSError, termios.error)
"""What pyserial lets escape from a port: termios.error is no OSError, and a tty that vanishes while
pyserial configures it (a pty whose other side just closed) raises it from `open()`."""


class TransportError(Exception):
    """The transport could not be opened, or failed while open (cable out, peer gone)."""


class Transport(Protocol):
    """The few operations a device link needs from a byte stream."""

    url: str

    def read(self, *, max_bytes: int) -> bytes:
        """Return what arrived (possibly nothing after the read time-out); raise TransportError on loss."""

    def write(self, data: bytes) -> None:
        """Write all of data; raise TransportError on loss."""

    def close(self) -> None:
        """Release the port; safe to call twice."""


class SerialTransport:
    """A pyserial port (device path, pty, socket:// or loop:// URL)."""

    def __init__(self, *, url: str, port: Any) -> None:
        self.url = url
        self._port = port

    def read(self, *, max_bytes: int) -> bytes:
        """Read up to max_bytes, waiting at most the port's time-out for the first byte."""
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
        """Close the port; errors on close are logged, not raised."""
        try:
            self._port.close()
        except _PORT_ERRORS as exc:
            LOGGER.warning("closing %s failed: %s", self.url, exc)


def open_transport(url: str, *, line: SerialSettings, read_timeout_s: float = 0.1) -> Transport:
    """Open the port named by url with the driver's line settings."""
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
            rtscts=False,
            exclusive=True if url.startswith("/") else None,
        )
    except (*_PORT_ERRORS, ValueError) as exc:
        raise TransportError(f"{url}: cannot open: {exc}") from exc
    return SerialTransport(url=url, port=port)
