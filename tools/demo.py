"""`icu-edge demo`: a live bed on this machine within a minute, with nothing but loopback.

Starts a private Mosquitto on a free port, a whole bed of simulated devices on pseudo-terminals (a
MEDIBUS ventilator and a Philips IntelliVue monitor, both following the same deteriorating patient),
the daemon (`icu-edge run`) against a generated config, and the ward view in the foreground,
subscribed like a central station. Ctrl-C (or `--seconds`) stops all of it, daemon first so it can
flush and publish its offline status; so do SIGTERM and SIGHUP (a `kill`, a closed terminal), which
then exit with 128 + the signal's number, as a shell reports a process a signal ended.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from tools.local_broker import BrokerUnavailable, LocalMosquitto

EX_UNAVAILABLE = 69

DEMO_CONFIG = """\
[appliance]
id = "edge-demo"
site = "demo-hospital"
ward = "icu-1"

[mqtt]
host = "127.0.0.1"
port = {port}
keepalive = 5
insecure = true

[store]
path = "{outbox}"

[[bed]]
id = "bed-07"

[[bed.device]]
id = "vent-1"
driver = "medibus"
port = "{pty}"
baud = 19200
"""

DEMO_MONITOR = """
[[bed.device]]
id = "mon-1"
driver = "intellivue"
port = "{pty}"
"""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals that stop the demo like Ctrl-C does (their default action would orphan every child)."""


class _Stopped(Exception):
    """A stop signal arrived; raised in the main thread by the handler, like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: FrameType | None) -> None:
    raise _Stopped(signum)


def _spawn(argv: list[str], *, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen[bytes] | None, *, timeout_s: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_for_link(path: Path, *, simulator: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if simulator.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C or --seconds; return the exit status."""
    parser = argparse.ArgumentParser(prog="icu-edge demo", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="stop by itself after this long")
    parser.add_argument("--plain", action="store_true", help="print text snapshots instead of a live screen")
    parser.add_argument(
        "--scenario",
        default="deteriorating",
        choices=["deteriorating", "steady", "desaturation"],
        help="simulated patient (default: %(default)s)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep config, outbox and logs here")
    args = parser.parse_args(argv)

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="icu-edge-demo-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    pty_link = workdir / "vent-1"
    monitor_link = workdir / "mon-1"
    config_path = workdir / "config.toml"
    python = sys.executable
    broker: LocalMosquitto | None = None
    simulator: subprocess.Popen[bytes] | None = None
    monitor: subprocess.Popen[bytes] | None = None
    daemon: subprocess.Popen[bytes] | None = None
    previous_handlers = {signum: signal.signal(signum, _raise_stopped) for signum in STOP_SIGNALS}
    try:
        broker = LocalMosquitto(directory=workdir)
        broker.start()
        print(f"broker     {broker.url} (log {broker.log_path})", flush=True)
        simulator = _spawn(
            [python, "-m", "drivers.medibus.simulator", "--pty", str(pty_link), "--scenario", args.scenario],
            log_path=workdir / "simulator.log",
        )
        if not _wait_for_link(pty_link, simulator=simulator, timeout_s=10.0):
            print(f"the ventilator simulator did not start; see {workdir / 'simulator.log'}", file=sys.stderr)
            return EX_UNAVAILABLE
        print(f"ventilator MEDIBUS simulator on {pty_link} -> {os.path.realpath(pty_link)}", flush=True)
        monitor = _spawn(
            [
                python,
                "-m",
                "drivers.intellivue.simulator",
                "--pty",
                str(monitor_link),
                "--scenario",
                args.scenario,
            ],
            log_path=workdir / "monitor.log",
        )
        if not _wait_for_link(monitor_link, simulator=monitor, timeout_s=10.0):
            print(f"the monitor simulator did not start; see {workdir / 'monitor.log'}", file=sys.stderr)
            return EX_UNAVAILABLE
        print(
            f"monitor    IntelliVue simulator on {monitor_link} -> {os.path.realpath(monitor_link)}",
            flush=True,
        )
        config_path.write_text(
            DEMO_CONFIG.format(port=broker.port, outbox=workdir / "outbox.db", pty=pty_link)
            + DEMO_MONITOR.format(pty=monitor_link),
            encoding="utf-8",
        )
        daemon = _spawn(
            [python, "-m", "edge.cli", "run", "--config", str(config_path)], log_path=workdir / "daemon.log"
        )
        print(f"daemon     icu-edge run --config {config_path} (log {workdir / 'daemon.log'})", flush=True)
        from tools.watch import main as watch_main

        watch_args = ["--broker", broker.url]
        if args.seconds is not None:
            watch_args += ["--seconds", str(args.seconds)]
        if args.plain:
            watch_args.append("--plain")
        try:
            status = watch_main(watch_args)
        except KeyboardInterrupt:
            status = 0
        if daemon.poll() is not None:
            print(
                f"the daemon exited with {daemon.returncode}; see {workdir / 'daemon.log'}", file=sys.stderr
            )
            return daemon.returncode or 1
        return status
    except BrokerUnavailable as exc:
        print(f"icu-edge demo: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except KeyboardInterrupt:
        return 0
    except _Stopped as stop:
        print(f"icu-edge demo: stopped by {stop}", file=sys.stderr, flush=True)
        return 128 + stop.signum
    finally:
        for signum in STOP_SIGNALS:  # a second signal must not cut the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        _stop(daemon, timeout_s=15.0)
        _stop(monitor, timeout_s=5.0)
        _stop(simulator, timeout_s=5.0)
        if broker is not None:
            broker.stop()
        print(f"stopped; config, outbox and logs are in {workdir}", flush=True)
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
