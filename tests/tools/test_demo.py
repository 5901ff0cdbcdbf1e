"""`icu-edge demo` as a real process: SIGTERM and SIGHUP stop everything it started, as Ctrl-C does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LIVE_S = 60.0
"""Bound for the demo to show a live bed (broker, two simulators, daemon, first twin)."""
GONE_S = 30.0
"""Bound for everything to be gone after the signal (the daemon alone may take 15 s to flush)."""
CHILDREN = ("mosquitto", "drivers.medibus.simulator", "drivers.intellivue.simulator", "edge.cli run")


def _stat(pid: int) -> tuple[str, int, str] | None:
    """(state, parent pid, start time) of a process, None when it no longer exists."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), fields[19]


def _children(parent: int) -> dict[int, tuple[str, str]]:
    """Processes whose parent is `parent`: pid -> (command line, start time)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[1] != parent:
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(entry.name)] = (command, stat[2])
    return found


def _alive(pid: int, start_time: str) -> bool:
    """The same process (not a reused pid) still runs; a zombie nobody reaped has stopped."""
    stat = _stat(pid)
    return stat is not None and stat[2] == start_time and stat[0] != "Z"


class Demo:
    """The demo process, its output file, and the children it started (recorded while it ran)."""

    def __init__(self, process: subprocess.Popen[str], output: Path) -> None:
        self.process = process
        self.output = output
        self.children: dict[int, tuple[str, str]] = {}

    def text(self) -> str:
        return self.output.read_text(encoding="utf-8")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    output = tmp_path / "demo.out"
    with output.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "demo", "--plain", "--workdir", str(tmp_path / "work")],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
        )
    instance = Demo(process, output)
    try:
        yield instance
    finally:
        instance.children.update(_children(process.pid))
        if process.poll() is None:
            process.kill()
            process.wait()
        for pid, (_, start) in instance.children.items():  # whatever the demo left running
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)


EXPECTED_STATUS = {signal.SIGINT: 0, signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGHUP: 128 + signal.SIGHUP}
"""Ctrl-C is the documented way to stop the demo (0); a kill or a hang-up says which signal it was."""


@pytest.mark.parametrize("signum", list(EXPECTED_STATUS), ids=[s.name for s in EXPECTED_STATUS])
def test_a_signal_stops_everything_the_demo_started(demo: Demo, signum: signal.Signals) -> None:
    deadline = time.monotonic() + LIVE_S
    while "  twin (session 1" not in demo.text():
        assert demo.process.poll() is None, demo.text()
        assert time.monotonic() < deadline, f"no live bed within {LIVE_S} s\n{demo.text()}"
        time.sleep(0.2)
    demo.children.update(_children(demo.process.pid))
    for name in CHILDREN:
        assert any(name in command for command, _ in demo.children.values()), (name, demo.children)

    demo.process.send_signal(signum)
    gone_by = time.monotonic() + GONE_S
    left = dict(demo.children)
    while left and time.monotonic() < gone_by:
        time.sleep(0.2)
        left = {pid: (command, start) for pid, (command, start) in left.items() if _alive(pid, start)}
    assert left == {}, f"still running {GONE_S} s after {signum.name}: {left}"
    status = demo.process.wait(timeout=GONE_S)
    text = demo.text()
    assert status == EXPECTED_STATUS[signum], f"exit status {status}\n{text[-2000:]}"
    assert (f"icu-edge demo: stopped by {signum.name}" in text) == (signum != signal.SIGINT), text[-2000:]
    daemon_log = (demo.output.parent / "work" / "daemon.log").read_text(encoding="utf-8")
    assert "stopping: closing device links and flushing the outbox" in daemon_log, daemon_log[-2000:]
