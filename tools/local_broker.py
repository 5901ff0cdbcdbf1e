"""A private Mosquitto on a free loopback port, for the demo, the test suite and the benchmarks.

Never touches the system's broker: its own config, port, log and persistence in a directory of the
caller's. Restartable on the same port, so a broker outage can be staged.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class BrokerUnavailable(RuntimeError):
    """Mosquitto is not installed or would not start."""


def find_mosquitto() -> str | None:
    """Return the path of the mosquitto binary, or None when it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """PEM files of a CA and the broker's server certificate and key."""

    ca: Path
    cert: Path
    key: Path


class LocalMosquitto:
    """Start, stop and restart (on the same port) a loopback-only Mosquitto."""

    def __init__(
        self,
        *,
        directory: Path,
        port: int | None = None,
        persistence: bool = False,
        tls_files: TlsFiles | None = None,
        autosave_interval_s: int | None = None,
    ) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise BrokerUnavailable("mosquitto is not installed (apt-get install mosquitto)")
        self._binary = binary
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.host = "127.0.0.1"
        self.port = port if port is not None else free_loopback_port()
        self.log_path = directory / "mosquitto.log"
        self.conf_path = directory / "mosquitto.conf"
        self.tls_files = tls_files
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true" if persistence else "persistence false",
            f"persistence_location {directory}/",
            # without it the in-memory state is written only on a clean stop, so a SIGKILL loses it
            *([f"autosave_interval {autosave_interval_s}"] if autosave_interval_s is not None else []),
            f"log_dest file {self.log_path}",
            "log_type all",
            "max_inflight_messages 0",
            "max_queued_messages 100000",
            # as root, mosquitto would switch to the `mosquitto` user, which cannot read our files
            *(["user root"] if os.geteuid() == 0 else []),
        ]
        if tls_files is not None:
            lines += [f"cafile {tls_files.ca}", f"certfile {tls_files.cert}", f"keyfile {tls_files.key}"]
        self.conf_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return `mqtt://host:port` (or `mqtts://` with TLS)."""
        scheme = "mqtts" if self.tls_files else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (to pause it with SIGSTOP, say), else None."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self, *, timeout_s: float = 10.0) -> None:
        """Start the broker and wait until it accepts connections; raise with the log tail if not."""
        if self.running:
            raise RuntimeError("broker already running")
        self._process = subprocess.Popen(
            [self._binary, "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise BrokerUnavailable(f"mosquitto exited with {code}:\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerUnavailable(
                        f"mosquitto did not listen on {self.port} within {timeout_s} s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.02)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM the broker and wait for it (SIGKILL after timeout_s)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL the broker (a crash: no clean save of its persistence file) and wait for it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def log_tail(self, *, lines: int = 30) -> str:
        """Return the end of the broker's log (for error messages)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
