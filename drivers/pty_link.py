"""What every device simulator does with its pseudo-terminal: the link a config names, and writing.

A simulator opens a pty pair and points a symlink (the "port" in a test or demo config) at the
slave; a newer simulator may take the link over, so a stopping one removes it only while it still
points at its own slave.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType

LOGGER = logging.getLogger(__name__)


def replace_symlink(*, link_path: str, target: str) -> None:
    """Point link_path at target, replacing an existing link atomically."""
    temporary = f"{link_path}.{os.getpid()}.{threading.get_ident()}.tmp"
    os.symlink(target, temporary)
    os.replace(temporary, link_path)


def remove_symlink(*, link_path: str, target: str) -> None:
    """Remove link_path if it still points at target (a newer simulator may own it now)."""
    try:
        if os.readlink(link_path) == target:
            os.unlink(link_path)
    except OSError as exc:
        LOGGER.debug("simulator link %s not removed: %s", link_path, exc)


def write_available(fd: int, data: bytes) -> None:
    """Write what the pty takes; drop the rest when nobody reads (a device would not wait either)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError:
            LOGGER.debug("simulator: pty full or closed, dropped %d bytes", len(view))
            return
        view = view[written:]


def stop_on_signals(stop: threading.Event, *, who: str) -> Callable[[], None]:
    """Set `stop` on SIGTERM or SIGINT (a simulator's or recorder's clean end); return the undo.

    The caller restores the previous handlers with the returned function (in its `finally`).
    """

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        LOGGER.info("%s: signal %d, stopping", who, signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore
