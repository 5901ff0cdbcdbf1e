"""Test harness: a ward of N beds as real processes (device simulators on ptys, `icu-edge run`).

Each bed has one ventilator simulator on its own pseudo-terminal, and with `WardLayout.monitor` a
monitor simulator of that driver on another (device `mon-1`); the daemon runs as a separate
process on a generated config against a real Mosquitto. Fault tests start, kill and restart the parts
and read what a central station would receive. Every process writes its log under the work directory;
`close()` kills whatever still runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from broker import wait_for

from tools.local_broker import LocalMosquitto

REPO_ROOT = Path(__file__).resolve().parent.parent
APPLIANCE = "edge-0001"
ROOT = "icu/v1/hosp-a/icu-3"
STATUS_TOPIC = f"{ROOT}/appliance/{APPLIANCE}/status"


def bed_topic(bed: str) -> str:
    """Return `R/bed/{bed}`."""
    return f"{ROOT}/bed/{bed}"


@dataclass(frozen=True, slots=True, kw_only=True)
class WardLayout:
    """What the generated config says: beds, and the TOML fragments a test adds."""

    beds: int = 1
    keepalive_s: int = 5
    store_toml: str = 'synchronous = "normal"'
    engines_toml: str = "[engines]\nenabled = false"
    mqtt_toml: str = ""
    insecure: bool = True
    """write `insecure = true` (plaintext); a test that puts `[mqtt.tls]` in mqtt_toml sets False"""
    extra_toml: str = ""
    stale_after_s: float = 10.0
    scenario: str = "steady"
    ventilator_options: str = ""
    """The ventilator's driver options as inline-table content (`waves = true, poll_interval_s = 0.5`)."""
    monitor: str | None = None
    """Driver of a monitor at every bed (`intellivue`, `datex`), simulated on a pty; None: none."""
    monitor_options_toml: str = ""
    """TOML lines under the monitor's `[bed.device.options]`."""
    alarms_toml: str = ""
    """TOML lines under `[alarms]`."""
    bed_toml: tuple[tuple[str, str], ...] = ()
    """(bed id, TOML lines) added to that bed's table, e.g. its `[bed.alarm_limits.spo2]`."""


class Ward:
    """The simulators and the daemon as processes, restartable and killable by the test."""

    def __init__(self, *, workdir: Path, broker: LocalMosquitto, layout: WardLayout = WardLayout()) -> None:
        self.workdir = workdir
        self.broker = broker
        self.layout = layout
        self.beds = [f"bed-{i + 1:02d}" for i in range(layout.beds)]
        self.links = {bed: workdir / f"vent-{bed}" for bed in self.beds}
        self.monitor_links = {bed: workdir / f"mon-{bed}" for bed in self.beds}
        self.monitors: dict[str, subprocess.Popen[bytes]] = {}
        self.outbox = workdir / "outbox.db"
        self.config = workdir / "config.toml"
        self.simulators: dict[str, subprocess.Popen[bytes]] = {}
        self.daemon: subprocess.Popen[bytes] | None = None
        self.write_config()

    def config_text(self) -> str:
        """Return the TOML the daemon runs on."""
        layout = self.layout
        beds = "".join(
            f"""
[[bed]]
id = "{bed}"
stale_after_s = {layout.stale_after_s}
{dict(layout.bed_toml).get(bed, "")}

[[bed.device]]
id = "vent-1"
driver = "medibus"
port = "{self.links[bed]}"
baud = 19200
options = {{ {layout.ventilator_options} }}
{self._monitor_toml(bed)}"""
            for bed in self.beds
        )
        return f"""
[appliance]
id = "{APPLIANCE}"
site = "hosp-a"
ward = "icu-3"

[mqtt]
host = "127.0.0.1"
port = {self.broker.port}
keepalive = {layout.keepalive_s}
reconnect_min_s = 0.1
reconnect_max_s = 0.5
{"insecure = true" if layout.insecure else ""}
{layout.mqtt_toml}

[store]
path = "{self.outbox}"
{layout.store_toml}

{layout.engines_toml}

[alarms]
{layout.alarms_toml}

{layout.extra_toml}
{beds}"""

    def _monitor_toml(self, bed: str) -> str:
        layout = self.layout
        if layout.monitor is None:
            return ""
        return f"""
[[bed.device]]
id = "mon-1"
driver = "{layout.monitor}"
port = "{self.monitor_links[bed]}"

[bed.device.options]
{layout.monitor_options_toml}
"""

    def write_config(self) -> None:
        """(Re)write the config file from the layout."""
        self.config.write_text(self.config_text(), encoding="utf-8")

    def spawn(
        self, name: str, argv: list[str], *, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `python -m argv...` from the repository root, its output appended to `name`.log."""
        log = (self.workdir / f"{name}.log").open("ab")
        with log:
            return subprocess.Popen(
                [sys.executable, "-m", *argv],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
            )

    def start_simulator(self, bed: str, *, scenario: str | None = None) -> None:
        """Start one bed's ventilator (and monitor, when the layout has one) and wait for the pty links."""
        scenario = scenario or self.layout.scenario
        self.simulators[bed] = self._start_on_pty(f"simulator-{bed}", "medibus", self.links[bed], scenario)
        if self.layout.monitor is not None:
            self.monitors[bed] = self._start_on_pty(
                f"monitor-{bed}", self.layout.monitor, self.monitor_links[bed], scenario
            )

    def _start_on_pty(self, name: str, driver: str, link: Path, scenario: str) -> subprocess.Popen[bytes]:
        process = self.spawn(name, ["tools.cli", "sim", driver, "--pty", str(link), "--scenario", scenario])
        if not wait_for(lambda: link.exists() and os.path.exists(os.path.realpath(link)), timeout_s=15):
            raise AssertionError(f"{name} did not create its pty link: {self.log(name)}")
        return process

    def start_simulators(self) -> None:
        """Start every bed's ventilator."""
        for bed in self.beds:
            self.start_simulator(bed)

    def kill_simulator(self, bed: str) -> None:
        """Pull the cable: SIGKILL the bed's simulator so its pty vanishes at once.

        The port link is removed too: a killed simulator leaves it pointing at /dev/pts/N, and the
        kernel hands N to the next pty anyone opens, so the daemon could reach a stranger's device.
        """
        process = self.simulators.pop(bed)
        process.kill()
        process.wait()
        self.links[bed].unlink(missing_ok=True)

    def start_daemon(self, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start `icu-edge run` on the generated config."""
        self.daemon = self.spawn("daemon", ["edge.cli", "run", "--config", str(self.config)], env=env)
        return self.daemon

    def kill_daemon(self) -> None:
        """SIGKILL the daemon: no goodbye, only the broker's Will."""
        assert self.daemon is not None
        self.daemon.kill()
        self.daemon.wait()

    def stop_daemon(self, *, timeout_s: float = 30.0) -> int:
        """SIGTERM the daemon and return its exit status."""
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGTERM)
        return self.daemon.wait(timeout=timeout_s)

    def log(self, name: str) -> str:
        """Return a process's log (for failure messages)."""
        path = self.workdir / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else "(no log)"

    def close(self) -> None:
        """Stop whatever still runs."""
        processes = [
            *self.simulators.values(),
            *self.monitors.values(),
            *([self.daemon] if self.daemon is not None else []),
        ]
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.simulators.clear()
        self.monitors.clear()


class NotifySocket:
    """systemd's side of sd_notify for a Type=notify service: a datagram socket keeping every line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self.lines: list[str] = []

    def _receive(self, *, timeout_s: float) -> None:
        self._socket.settimeout(timeout_s)
        with contextlib.suppress(TimeoutError, BlockingIOError):
            while True:
                self.lines.extend(self._socket.recv(4096).decode().splitlines())
                self._socket.settimeout(0)

    def drain(self) -> None:
        """Forget what an earlier process said."""
        self._receive(timeout_s=0)
        self.lines.clear()

    def wait(self, predicate: Callable[[list[str]], bool], *, timeout_s: float) -> bool:
        """Wait until predicate holds for the lines received so far; False after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._receive(timeout_s=min(0.05, max(0.0, deadline - time.monotonic())))
            if predicate(self.lines):
                return True
            if time.monotonic() >= deadline:
                return False

    def wait_ready(self, *, timeout_s: float) -> float | None:
        """Return the monotonic time READY=1 arrived, or None after timeout_s."""
        return time.monotonic() if self.wait(lambda lines: "READY=1" in lines, timeout_s=timeout_s) else None

    def close(self) -> None:
        """Close the socket."""
        self._socket.close()
