"""Talk to systemd: readiness, status, and a watchdog fed only while every component makes progress.

The notifier speaks the sd_notify datagram protocol on a plain AF_UNIX socket instead of calling
libsystemd: it works where libsystemd is absent (the demo, developer laptops), never blocks the event
loop (the socket is non-blocking), and tests can check it against a real socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

LOGGER = logging.getLogger(__name__)

LOOP_COMPONENT = "loop"
"""Gate name under which `run_watchdog` reports that the event loop itself runs."""


class SystemdNotifier:
    """Send sd_notify messages to `$NOTIFY_SOCKET`; a no-op when the daemon is not under systemd.

    The environment is read once, at construction. A failed send never raises: it is logged and
    counted in `failures`, because losing a status line must not take the daemon down (a lost
    WATCHDOG=1 is what the watchdog itself is for).
    """

    def __init__(self) -> None:
        self._address = _notify_address(os.environ.get("NOTIFY_SOCKET"))
        self._socket: socket.socket | None = None
        self._failures = 0
        if self._address is None:
            LOGGER.debug("NOTIFY_SOCKET not set: systemd notifications are disabled")

    @property
    def enabled(self) -> bool:
        """Whether a notification socket is configured."""
        return self._address is not None

    @property
    def failures(self) -> int:
        """How many notifications could not be sent."""
        return self._failures

    def ready(self, *, status: str) -> None:
        """Tell systemd start-up is complete (config, outbox and broker attempt are set up)."""
        self._send(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """Set the free-form status line shown by `systemctl status`."""
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """Feed the systemd watchdog."""
        self._send("WATCHDOG=1")

    def stopping(self, *, status: str) -> None:
        """Tell systemd the daemon is shutting down, so a slow stop is not mistaken for a hang."""
        self._send(f"STOPPING=1\nSTATUS={_one_line(status)}")

    def watchdog_interval_s(self) -> float | None:
        """Return the watchdog interval systemd expects for this process, or None when there is none.

        Same rule as sd_watchdog_enabled(3): `$WATCHDOG_USEC` applies only when `$WATCHDOG_PID` is
        unset or names this process.
        """
        usec_text = os.environ.get("WATCHDOG_USEC")
        if usec_text is None:
            return None
        pid_text = os.environ.get("WATCHDOG_PID")
        if pid_text is not None:
            try:
                pid = int(pid_text)
            except ValueError:
                LOGGER.warning("ignoring watchdog: WATCHDOG_PID=%r is not a process id", pid_text)
                return None
            if pid != os.getpid():
                return None
        try:
            usec = int(usec_text)
        except ValueError:
            LOGGER.warning("ignoring watchdog: WATCHDOG_USEC=%r is not an integer", usec_text)
            return None
        if usec <= 0:
            LOGGER.warning("ignoring watchdog: WATCHDOG_USEC=%r is not positive", usec_text)
            return None
        return usec / 1_000_000

    def close(self) -> None:
        """Close the notification socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            if self._socket is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._socket = sock
            self._socket.sendto(message.encode(), self._address)
        except OSError as error:
            self._failures += 1
            LOGGER.warning(
                "cannot notify systemd (%s, %d failures so far): %s",
                message.split("\n", 1)[0],
                self._failures,
                error,
            )


def _notify_address(value: str | None) -> str | None:
    """Turn `$NOTIFY_SOCKET` into a socket address; `@name` is an abstract socket."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    LOGGER.warning("NOTIFY_SOCKET=%r is not a unix socket path: systemd notifications disabled", value)
    return None


def _one_line(text: str) -> str:
    """Keep a STATUS= value on one line: a newline would start a new (bogus) assignment."""
    return " ".join(text.splitlines())


@dataclass(slots=True)
class _Component:
    max_silence_s: float
    last_beat_s: float | None


class WatchdogGate:
    """Decide whether the daemon deserves a WATCHDOG=1: every registered component beat recently.

    A beat means "my loop still turns" (a supervisor iteration, a publisher pass), not "my device
    sends data": a cable pulled out is a technical alarm, never a reason for systemd to restart the
    daemon. Beats arrive from reader threads and paho's thread, hence the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._components: dict[str, _Component] = {}

    def register(self, name: str, *, max_silence_s: float) -> None:
        """Start watching a component; its first `max_silence_s` start at the next check or beat."""
        if max_silence_s <= 0:
            raise ValueError(f"max_silence_s must be positive, got {max_silence_s}")
        with self._lock:
            if name in self._components:
                raise ValueError(f"watchdog component {name!r} is already registered")
            self._components[name] = _Component(max_silence_s=max_silence_s, last_beat_s=None)

    def unregister(self, name: str) -> None:
        """Stop watching a component (a driver removed at shutdown); unknown names are ignored."""
        with self._lock:
            self._components.pop(name, None)

    def beat(self, name: str, *, now_s: float) -> None:
        """Record progress of a component.

        A beat for an unregistered name is ignored: it is either a thread racing its own
        unregistration, or a misspelled name, and then the registered name goes stale and shows up.
        """
        with self._lock:
            component = self._components.get(name)
            if component is not None:
                # Beats from different threads may arrive out of clock order; never move backwards.
                last_beat_s = component.last_beat_s
                component.last_beat_s = now_s if last_beat_s is None else max(last_beat_s, now_s)

    def healthy(self, *, now_s: float) -> tuple[bool, list[str]]:
        """Return whether every component beat within its max silence, and the stale names, sorted.

        A component not yet seen by a check or a beat gets its grace period from this check on.
        """
        stale: list[str] = []
        with self._lock:
            for name, component in self._components.items():
                if component.last_beat_s is None:
                    component.last_beat_s = now_s
                elif now_s - component.last_beat_s > component.max_silence_s:
                    stale.append(name)
        stale.sort()
        return not stale, stale


async def run_watchdog(
    *,
    notifier: SystemdNotifier,
    gate: WatchdogGate,
    interval_s: float,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Feed the systemd watchdog every `interval_s` while the gate is healthy; run until cancelled.

    Use half the interval systemd asks for (`notifier.watchdog_interval_s() / 2`). The task beats the
    "loop" component itself: that it runs at all proves the event loop is not blocked.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, got {interval_s}")
    gate.register(LOOP_COMPONENT, max_silence_s=2 * interval_s)
    reported_stale: list[str] = []
    try:
        while True:
            now_s = clock()
            gate.beat(LOOP_COMPONENT, now_s=now_s)
            is_healthy, stale = gate.healthy(now_s=now_s)
            if is_healthy:
                notifier.watchdog()
                if reported_stale:
                    LOGGER.info("watchdog resumed: every component makes progress again")
                    notifier.status("watchdog: every component makes progress")
            elif stale != reported_stale:
                LOGGER.warning("withholding the watchdog: no progress from %s", ", ".join(stale))
                notifier.status(f"watchdog withheld: no progress from {', '.join(stale)}")
            reported_stale = stale
            await asyncio.sleep(interval_s)
    finally:
        gate.unregister(LOOP_COMPONENT)
