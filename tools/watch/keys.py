"""Keys for the interactive view: the terminal in cbreak mode, and bytes turned into key names.

Threads: `KeyReader` runs one daemon thread that waits on the terminal with `select` (so it can stop
within `POLL_S`) and puts a `KeyPress` per key on the view's event queue; it never touches the state.
`parse_keys` is pure. The terminal's settings are restored when the reader stops, also on an error.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import termios
import threading
import tty
from typing import Final

from tools.watch.client import Event, KeyPress

POLL_S: Final = 0.1
"""How often the reader looks whether it should stop."""

ESCAPES: Final[dict[bytes, str]] = {
    b"\x1b[A": "up",
    b"\x1b[B": "down",
    b"\x1b[C": "right",
    b"\x1b[D": "left",
    b"\x1bOA": "up",
    b"\x1bOB": "down",
    b"\x1bOC": "right",
    b"\x1bOD": "left",
    b"\x1b[Z": "shift-tab",
    b"\x1b[5~": "pageup",
    b"\x1b[6~": "pagedown",
    b"\x1b[H": "home",
    b"\x1b[F": "end",
    b"\x1b[1~": "home",
    b"\x1b[4~": "end",
}
"""The escape sequences xterm-like terminals (and tmux) send for the keys the view uses."""

SINGLE: Final[dict[int, str]] = {
    0x09: "tab",
    0x0D: "enter",
    0x0A: "enter",
    0x7F: "backspace",
    0x08: "backspace",
}


def parse_keys(data: bytes) -> list[str]:
    """Return the key names in one read: `up`, `enter`, `esc`, `tab`, `1`, `q`...; unknown bytes dropped."""
    keys: list[str] = []
    index = 0
    while index < len(data):
        byte = data[index]
        if byte == 0x1B:
            for sequence, name in ESCAPES.items():
                if data.startswith(sequence, index):
                    keys.append(name)
                    index += len(sequence)
                    break
            else:
                if data.startswith(b"\x1b[", index):  # an escape sequence the view has no use for
                    end = index + 2
                    while end < len(data) and not 0x40 <= data[end] <= 0x7E:
                        end += 1
                    index = end + 1
                else:
                    keys.append("esc")
                    index += 1
            continue
        if byte in SINGLE:
            keys.append(SINGLE[byte])
        elif 0x20 <= byte < 0x7F:
            keys.append(chr(byte))
        index += 1
    return keys


class KeyReader:
    """Read keys from a terminal in cbreak mode on a daemon thread; a context manager."""

    def __init__(self, *, fd: int, events: queue.Queue[Event]) -> None:
        """Read from terminal `fd` once entered; put a `KeyPress` per key on `events`."""
        self._fd = fd
        self._events = events
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch-keys", daemon=True)
        self._saved: list[int | list[bytes | int]] | None = None

    def __enter__(self) -> KeyReader:
        """Put the terminal in cbreak mode (no echo, keys one at a time, Ctrl-C still a signal)."""
        self._saved = termios.tcgetattr(self._fd)
        tty.setcbreak(self._fd)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        """Stop the thread and restore the terminal."""
        self._stop.set()
        self._thread.join(timeout=2 * POLL_S + 1.0)
        if self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], POLL_S)
                if not ready:
                    continue
                data = os.read(self._fd, 64)
            except OSError:
                return  # the terminal went away: the view goes on without keys
            if not data:
                return
            for key in parse_keys(data):
                self._events.put(KeyPress(key))
