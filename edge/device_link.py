"""One reader thread per device: moves bytes between a transport and a sans-I/O driver session.

Serial reads block, so they live here and never on the event loop. A thread sleeps in `select` on its
port and a wake-up pipe until data arrives or its session's next deadline (poll, keepalive, time-out)
comes, at most `MAX_WAIT_S`: an idle device costs about one wake-up a second, not twenty, and a
frame is read the moment it arrives. `stop()` writes to the pipe, so stopping never waits for a wait.

The thread owns the transport and the session; everything it learns leaves as a `DeviceReport` through
`deliver`, which must only enqueue (the daemon hands it to the loop with `call_soon_threadsafe`). A
lost or unopenable port is retried with capped exponential backoff until `stop()`; the loss itself is
reported as `LinkDown`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from drivers.base import DeviceSession, DriverEvent, LinkDown, ReleasingSession, SerialSettings
from drivers.transport import Transport, TransportError, open_transport
from edge.diagnostics import RawRing
from edge.model import utc_now
from edge.twin import DeviceIdentity

LOGGER = logging.getLogger(__name__)

READ_CHUNK_BYTES = 4096
MAX_WAIT_S = 1.0
"""The longest a reader sleeps with nothing to do: its watchdog beat (the daemon allows 5 s)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceReport:
    """What one device link learned since its last report."""

    identity: DeviceIdentity
    events: tuple[DriverEvent, ...]
    counters: dict[str, int]
    last_frame_at: datetime | None
    last_error: str | None
    received_at: datetime
    received_mono_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Capped exponential backoff between reconnect attempts."""

    initial_s: float = 0.25
    maximum_s: float = 2.0
    factor: float = 2.0

    def delays_s(self) -> Callable[[], float]:
        """Return a function that yields the next delay each time it is called."""
        current = [self.initial_s]

        def next_delay_s() -> float:
            delay = current[0]
            current[0] = min(self.maximum_s, current[0] * self.factor)
            return delay

        return next_delay_s


class LinkThread:
    """What every device link is to the daemon: one named thread, its progress, its reports.

    A subclass implements `_run` (the thread) and calls `_deliver_report` with what it learned;
    reports are throttled to one per `report_interval_s` unless they carry events or are forced.
    """

    def __init__(
        self, *, identity: DeviceIdentity, deliver: Callable[[DeviceReport], None], report_interval_s: float
    ) -> None:
        self.identity = identity
        self._deliver = deliver
        self._report_interval_s = report_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"link-{identity.bed}/{identity.device}", daemon=True
        )
        self._frames_seen = 0
        self._last_frame_at: datetime | None = None
        self._last_error: str | None = None
        self._last_report_mono_s = 0.0
        self.last_progress_s = time.monotonic()
        """Monotonic time of the last loop iteration (the watchdog reads it)."""
        self.raw = RawRing()
        """The recent bytes of both directions (written by this thread; `icu-edge diag bundle` reads it)."""
        self._wake_read_fd, self._wake_write_fd = os.pipe()
        """The thread selects on the read end besides its port; `stop()` writes to the other."""
        os.set_blocking(self._wake_write_fd, False)

    @property
    def name(self) -> str:
        """Return the watchdog component name of this link."""
        return self._thread.name

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, *, timeout_s: float = 2.0) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop.set()
        self._wake()
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            LOGGER.error("device link %s did not stop within %.1f s", self.name, timeout_s)
        else:
            self._stopped()

    def _wake(self) -> None:
        """Interrupt the thread's select (it then sees the stop)."""
        # A byte already waiting (BlockingIOError) or a pipe already closed: the stop is seen either way.
        with contextlib.suppress(OSError):
            os.write(self._wake_write_fd, b"\0")

    def _stopped(self) -> None:
        """Close the wake-up pipe, only once the thread has ended (a closed descriptor may be reused)."""
        for fd in (self._wake_read_fd, self._wake_write_fd):
            if fd >= 0:
                os.close(fd)
        self._wake_read_fd = self._wake_write_fd = -1

    def _wait_s(self, *, deadline_s: float, now_s: float) -> float:
        """How long the thread may sleep: until `deadline_s`, its next report, at most `MAX_WAIT_S`."""
        return max(
            0.0,
            min(deadline_s - now_s, self._last_report_mono_s + self._report_interval_s - now_s, MAX_WAIT_S),
        )

    def is_alive(self) -> bool:
        """Return whether the thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        raise NotImplementedError

    def _frames_counted(self, frames: int) -> None:
        """Note the frame count: a new frame is the time of the last frame, and clears the error."""
        if frames != self._frames_seen:
            self._frames_seen = frames
            self._last_frame_at = utc_now()
            self._last_error = None

    def _note_error(self, message: str, *, exc_info: bool = False) -> None:
        """Remember why the link has no data; log it once per distinct reason, not on every retry."""
        if message != self._last_error:
            LOGGER.warning(
                "%s",
                message,
                exc_info=exc_info,
                extra={"bed": self.identity.bed, "device": self.identity.device},
            )
        self._last_error = message

    def _deliver_report(
        self, *, events: tuple[DriverEvent, ...], counters: dict[str, int], force: bool = False
    ) -> None:
        for event in events:
            if isinstance(event, LinkDown):
                # The session already logged it; keep the reason until frames flow again, so every
                # later status of the dead link still says why (not only the one at the loss).
                self._last_error = event.reason
        now_s = time.monotonic()
        if not events and not force and now_s - self._last_report_mono_s < self._report_interval_s:
            return
        self._last_report_mono_s = now_s
        self._deliver(
            DeviceReport(
                identity=self.identity,
                events=events,
                counters=counters,
                last_frame_at=self._last_frame_at,
                last_error=self._last_error,
                received_at=utc_now(),
                received_mono_s=now_s,
            )
        )


class DeviceLink(LinkThread):
    """The reader thread of one device."""

    def __init__(
        self,
        *,
        identity: DeviceIdentity,
        session: DeviceSession,
        line: SerialSettings,
        deliver: Callable[[DeviceReport], None],
        backoff: Backoff = Backoff(),
        read_timeout_s: float = 0.05,
        report_interval_s: float = 1.0,
        open_port: Callable[..., Transport] = open_transport,
    ) -> None:
        super().__init__(identity=identity, deliver=deliver, report_interval_s=report_interval_s)
        self._session = session
        self._line = line
        self._backoff = backoff
        self._read_timeout_s = read_timeout_s
        self._open_port = open_port

    def _run(self) -> None:
        next_delay_s = self._backoff.delays_s()
        while not self._stop.is_set():
            self.last_progress_s = time.monotonic()
            transport = self._open()
            if transport is None:
                self._report(force=True)
                self._stop.wait(next_delay_s())
                continue
            LOGGER.info(
                "opened %s",
                self.identity.port,
                extra={"bed": self.identity.bed, "device": self.identity.device},
            )
            next_delay_s = self._backoff.delays_s()
            try:
                self._serve(transport)
            except TransportError as exc:
                self._note_error(str(exc))
            except Exception:
                # A driver bug must not kill the link forever: log it with its traceback, count it,
                # and start over with a fresh handshake.
                LOGGER.exception(
                    "driver failure on %s",
                    self.identity.port,
                    extra={"bed": self.identity.bed, "device": self.identity.device},
                )
                self._session.counters.extra["driver_failures"] = (
                    self._session.counters.extra.get("driver_failures", 0) + 1
                )
                self._note_error("driver failure (see log)")
            finally:
                transport.close()
            if not self._stop.is_set():
                self._report(extra_events=(LinkDown(reason=self._last_error or "port closed"),), force=True)
            self._stop.wait(next_delay_s())

    def _open(self) -> Transport | None:
        """Open the port, or note why it could not be opened and return None."""
        try:
            return self._open_port(self.identity.port, line=self._line, read_timeout_s=self._read_timeout_s)
        except TransportError as exc:
            self._note_error(str(exc))
        except Exception as exc:  # noqa: BLE001 - logged with its traceback by _note_error
            # Whatever a port driver raises, the reader thread must live to try again: a dead
            # thread would leave the bed without its device until the daemon restarts.
            self._note_error(f"{self.identity.port}: cannot open: {type(exc).__name__}: {exc}", exc_info=True)
        return None

    def _serve(self, transport: Transport) -> None:
        session = self._session
        session.reset(now_s=time.monotonic())
        self._report(force=True)
        while not self._stop.is_set():
            now_s = time.monotonic()
            self.last_progress_s = now_s
            while outgoing := session.data_to_send():
                transport.write(outgoing)
                self.raw.add(direction="tx", data=outgoing, now_s=now_s)
            wait_s = self._wait_s(deadline_s=session.next_deadline_s(), now_s=now_s)
            readable = transport.wait_readable(timeout_s=wait_s, wake_fd=self._wake_read_fd)
            data = transport.read(max_bytes=READ_CHUNK_BYTES) if readable else b""
            now_s = time.monotonic()
            if data:
                self.raw.add(direction="rx", data=data, now_s=now_s)
                session.receive(data, now_s=now_s)
            if now_s >= session.next_deadline_s():
                session.poll(now_s=now_s)
            self._frames_counted(session.counters.frames_in)
            self._report()
        if isinstance(session, ReleasingSession):
            session.release(now_s=time.monotonic())
            while outgoing := session.data_to_send():
                transport.write(outgoing)

    def _report(self, *, extra_events: tuple[DriverEvent, ...] = (), force: bool = False) -> None:
        self._deliver_report(
            events=tuple(self._session.events()) + extra_events,
            counters=self._session.counters.snapshot(),
            force=force,
        )
