"""Test rig for the serial field tools: simulators and recorders as real processes on real ptys, and
ptys the test itself serves (silent, or spewing random bytes).

Every process writes its log under the work directory; `close()` stops whatever still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import tty
from pathlib import Path
from typing import Any

from broker import wait_for

REPO_ROOT = Path(__file__).resolve().parent.parent


class PtyRig:
    """Processes and ptys of one test; stopped and closed by `close()`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._served: list[_ServedPty] = []

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start `python -m argv...` from the repository root, output to `name`.log."""
        with (self.workdir / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", *argv],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        """The log of a process, for an assertion message."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else "(no log)"

    def simulator(self, driver: str, *, link: Path | None = None) -> Path:
        """Start `icu-edge sim DRIVER --pty LINK` and return LINK once the pty is there."""
        link = link or self.workdir / f"{driver}.pty"
        self.spawn(f"sim-{driver}", ["tools.cli", "sim", driver, "--pty", str(link), "--scenario", "steady"])
        assert wait_for(lambda: _linked(link), timeout_s=20), self.log(f"sim-{driver}")
        return link

    def recorder(self, *, device: Path, name: str = "recorder") -> tuple[Path, Path]:
        """Start `icu-edge record` between device and a new pty; return (host-side link, recording)."""
        link = self.workdir / f"{name}.pty"
        out = self.workdir / f"{name}.rec"
        self.spawn(
            name, ["tools.cli", "record", "--device", str(device), "--pty", str(link), "--out", str(out)]
        )
        assert wait_for(lambda: _linked(link), timeout_s=20), self.log(name)
        return link, out

    def stop(self, name: str) -> int:
        """SIGTERM a process and return its exit status."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=30)

    def served_pty(self, *, spew: bool) -> _ServedPty:
        """A pty whose other end this test holds: silent, or writing random bytes without pause."""
        served = _ServedPty(self.workdir / f"served-{len(self._served)}.pty", spew=spew)
        self._served.append(served)
        return served

    def close(self) -> None:
        """Stop every process and served pty."""
        for name in list(self.processes):
            process = self.processes.pop(name)
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
        for served in self._served:
            served.close()


def _linked(link: Path) -> bool:
    return link.is_symlink() and os.path.exists(os.path.realpath(link))


class _ServedPty:
    """A pty the test serves from a thread: it keeps what the probe sends; it may spew random bytes."""

    def __init__(self, link: Path, *, spew: bool) -> None:
        self.link = link
        self.received = bytearray()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        os.symlink(os.ttyname(self._slave), link)
        self._spew = spew
        self._stop = threading.Event()
        self._random = random.Random(20261201)
        self._thread = threading.Thread(target=self._serve, name=f"pty {link.name}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            readable, writable, _ = select.select(
                [self._master], [self._master] if self._spew else [], [], 0.02
            )
            if readable:
                with contextlib.suppress(OSError):
                    self.received += os.read(self._master, 4096)
            if writable:
                with contextlib.suppress(OSError):
                    os.write(self._master, self._random.randbytes(64))
            if self._spew:
                self._stop.wait(0.005)

    def close(self) -> None:
        """Stop serving, close both ends, remove the link."""
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self._master)
        os.close(self._slave)
        self.link.unlink(missing_ok=True)


def run_cli(*argv: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `icu-edge ARGV...` as a process from the repository root and return what it printed."""
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    """Parse one JSON object per line."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
