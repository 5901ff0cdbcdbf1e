"""Benchmark (not a test): a ward on one box: N beds, one daemon, a real broker, a central station.

Each bed is a MEDIBUS ventilator and an IntelliVue monitor, numerics at 1 Hz, waves on (the monitor's
ECG, pleth, ABP, CO2 and resp arrays, the ventilator's Paw, flow and volume curves), published in 1 s
windows; engines on (the default model, onnxruntime) and the outbox at `synchronous = "full"`, as
shipped. `--no-waves`, `--no-monitors`, `--no-engines` and `--synchronous normal` take parts away. All
devices are the real simulator cores on real ptys, served by one simulator-host process (one select
loop for every pty, so the bench does not need 2 x beds processes); the daemon (`icu-edge run`) is
pinned to CPU 0, the simulator host, Mosquitto and the subscribers to the others.

Latency is frame-to-subscriber: the subscriber's wall clock at arrival minus the observation's
`received_at`, stamped by the daemon's reader thread right after the frame was decoded (one clock, no
offset). The daemon's CPU share comes from /proc/PID/stat (user + system) over the measured window,
its RSS from /proc/PID/status at the end. A second subscriber on `icu/v1/#` counts every message and
payload byte the daemon published, per topic family. The first `--warm-up-s` are discarded.

    python -m tools.bench.ward --beds 1 8 16 32 64 --seconds 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from drivers.intellivue.simulator import MonitorSimulator
from drivers.medibus.simulator import SCENARIOS, VentilatorSimulator
from drivers.scenario import Patient, SteadyPatient
from tools.local_broker import LocalMosquitto
from tools.mqtt_collector import Received, Subscriber, wait_for

READ_CHUNK_BYTES = 4096


class _SimulatorCore(Protocol):
    def receive(self, data: bytes, *, now_s: float) -> None: ...
    def poll(self, *, now_s: float) -> None: ...
    def data_to_send(self) -> bytes: ...


def serve_ptys(
    directory: Path,
    *,
    beds: int,
    stop: threading.Event,
    monitor_patient: Callable[[int], Patient] = lambda _bed: SteadyPatient(),
    start_s: float | None = None,
    monitors: bool = True,
) -> None:
    """Serve `beds` ventilators and monitors on ptys linked as vent-NN / mon-NN until stop is set.

    `monitor_patient(i)` is bed i's monitor scenario; `start_s` (time.monotonic(), one clock for every
    process of the machine) is scenario time zero, so a caller can tell when the scenario did what.
    """
    start_s = time.monotonic() if start_s is None else start_s
    cores: dict[int, _SimulatorCore] = {}
    pending: dict[int, bytes] = {}
    slaves: list[int] = []
    for i in range(beds):
        devices: tuple[tuple[str, _SimulatorCore], ...] = (
            (f"vent-{i:02d}", VentilatorSimulator(scenario=SCENARIOS["steady"](), start_s=start_s)),
            (f"mon-{i:02d}", MonitorSimulator(patient=monitor_patient(i), start_s=start_s)),
        )[: 2 if monitors else 1]
        for name, core in devices:
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            link = directory / name
            link.unlink(missing_ok=True)
            link.symlink_to(os.ttyname(slave))
            cores[master] = core
            pending[master] = b""
            slaves.append(slave)
    try:
        while not stop.is_set():
            readable, _, _ = select.select(list(cores), [], [], 0.02)
            now_s = time.monotonic()
            for fd in readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    cores[fd].receive(os.read(fd, READ_CHUNK_BYTES), now_s=now_s)
            for fd, served in cores.items():
                served.poll(now_s=now_s)
                out = pending[fd] + served.data_to_send()
                if out:
                    try:
                        written = os.write(fd, out)
                    except (BlockingIOError, OSError):
                        written = 0
                    pending[fd] = out[written:]
    finally:
        for fd in [*cores, *slaves]:
            os.close(fd)


@dataclass(frozen=True, slots=True, kw_only=True)
class WardSetup:
    """What each bed has and how the daemon runs."""

    waves: bool = True
    monitors: bool = True
    engines: bool = True
    synchronous: str = "full"


def daemon_config(*, port: int, workdir: Path, beds: int, setup: WardSetup, bed_extra: str = "") -> str:
    """The daemon's config for `beds` whole beds served from `workdir`; `bed_extra` goes into every bed."""
    waves = setup.waves
    text = f"""
[appliance]
id = "edge-bench"
site = "bench"
ward = "icu-1"

[mqtt]
host = "127.0.0.1"
port = {port}
keepalive = 5
insecure = true

[store]
path = "{workdir / "outbox.db"}"
synchronous = "{setup.synchronous}"

[engines]
enabled = {"true" if setup.engines else "false"}

[waves]
enabled = {"true" if waves else "false"}
window_s = 1.0
"""
    for i in range(beds):
        text += f"""
[[bed]]
id = "bed-{i:02d}"
{bed_extra}
[[bed.device]]
id = "vent-1"
driver = "medibus"
port = "{workdir / f"vent-{i:02d}"}"
options = {{ waves = {"true" if waves else "false"}, poll_interval_s = 1.0 }}
"""
        if setup.monitors:
            text += f"""
[[bed.device]]
id = "mon-1"
driver = "intellivue"
port = "{workdir / f"mon-{i:02d}"}"
options = {{ waves = {"true" if waves else "false"}, link = "serial" }}
"""
    return text


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """A process's resident set size now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    return values[min(len(values) - 1, max(0, round(fraction * (len(values) - 1))))]


def parse_time(text: str) -> float:
    """An ISO 8601 timestamp of a payload as time.time() seconds."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def vitals_latencies_ms(messages: Sequence[Received], *, from_wall_s: float, to_wall_s: float) -> list[float]:
    """Frame-to-subscriber latencies of the vitals messages that arrived in the window, sorted."""
    latencies = []
    for message in messages:
        if message.received_wall_s < from_wall_s or message.received_wall_s > to_wall_s:
            continue
        body = json.loads(message.payload)
        received_at_s = parse_time(body["observations"][0]["received_at"])
        latencies.append((message.received_wall_s - received_at_s) * 1000.0)
    return sorted(latencies)


@dataclass(slots=True, kw_only=True)
class Ward:
    """A running bench ward: the broker, the subscribers, and the daemon pinned to CPU 0."""

    workdir: Path
    host: subprocess.Popen[bytes]
    daemon: subprocess.Popen[bytes]
    subscribers: dict[str, Subscriber]
    log_tail: str = field(default="")
    """The end of the daemon's log, read once the daemon stopped."""


@contextlib.contextmanager
def running_ward(
    *,
    beds: int,
    setup: WardSetup,
    host_argv: Sequence[str],
    topic_filters: dict[str, str],
    bed_extra: str = "",
) -> Iterator[Ward]:
    """Start Mosquitto, the simulator host (`host_argv` + the pty directory), subscribers and the daemon.

    This process and its children move off CPU 0, the daemon is pinned to it; everything is stopped on
    exit, and the daemon's log tail is kept in `Ward.log_tail`.
    """
    with tempfile.TemporaryDirectory(prefix="icu-edge-capacity-") as name:
        workdir = Path(name)
        other_cpus = sorted(os.sched_getaffinity(0) - {0}) or [0]
        os.sched_setaffinity(0, other_cpus)
        broker = LocalMosquitto(directory=workdir / "broker")
        broker.start()
        host = subprocess.Popen([*host_argv, str(workdir)])
        (workdir / "config.toml").write_text(
            daemon_config(port=broker.port, workdir=workdir, beds=beds, setup=setup, bed_extra=bed_extra)
        )
        subscribers = {
            label: Subscriber(
                host=broker.host, port=broker.port, topic_filter=topic_filter, client_id=f"bench-{label}"
            )
            for label, topic_filter in topic_filters.items()
        }
        daemon: subprocess.Popen[bytes] | None = None
        ward: Ward | None = None
        try:
            for subscriber in subscribers.values():
                subscriber.wait_subscribed()
            last_link = workdir / f"{'mon' if setup.monitors else 'vent'}-{beds - 1:02d}"
            if not wait_for(last_link.exists, timeout_s=30):
                raise RuntimeError("the simulator host did not open its ptys")
            daemon = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    "0",
                    sys.executable,
                    "-m",
                    "edge.cli",
                    "run",
                    "--config",
                    str(workdir / "config.toml"),
                ],
                stdout=(workdir / "daemon.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            ward = Ward(workdir=workdir, host=host, daemon=daemon, subscribers=subscribers)
            yield ward
        finally:
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=60)
                if ward is not None:
                    ward.log_tail = (workdir / "daemon.log").read_text(errors="replace")[-2000:]
            host.send_signal(signal.SIGTERM)
            host.wait(timeout=30)
            for subscriber in subscribers.values():
                subscriber.close()
            broker.stop()
            os.sched_setaffinity(0, set(other_cpus) | {0})


_FAMILIES = ("vitals", "twin", "forecast", "wave", "device", "alarm", "events", "status")


def topic_family(topic: str) -> str:
    """The contract's topic family of a topic (`.../bed/07/wave/ecg` -> `wave`)."""
    levels = topic.split("/")
    for family in _FAMILIES:
        if family in levels:
            return family
    return "other"


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    beds: int
    latencies_ms: list[float]
    messages_per_s: dict[str, float]
    """Per topic family, and `all`."""
    kbytes_per_s: float
    cpu_percent: float
    rss_mib: float
    wave_gaps: int


def measure(*, beds: int, seconds: float, warm_up_s: float, setup: WardSetup) -> Result:
    """Run `beds` beds for warm-up + seconds and return what the subscribers and /proc saw."""
    monitors = [] if setup.monitors else ["--no-monitors"]
    host_argv = [sys.executable, "-m", "tools.bench.ward", "--beds", str(beds), *monitors, "--serve-ptys"]
    with running_ward(
        beds=beds,
        setup=setup,
        host_argv=host_argv,
        topic_filters={"vitals": "icu/v1/+/+/bed/+/vitals", "all": "icu/v1/#"},
    ) as ward:
        vitals, everything = ward.subscribers["vitals"], ward.subscribers["all"]
        time.sleep(warm_up_s)
        measured_from = time.time()
        cpu_before = cpu_s(ward.daemon.pid)
        time.sleep(seconds)
        cpu_used_s = cpu_s(ward.daemon.pid) - cpu_before
        rss = rss_mib(ward.daemon.pid)
    if not vitals.messages:
        raise RuntimeError(f"no vitals arrived; the daemon's log ends:\n{ward.log_tail}")
    window = [m for m in everything.messages if measured_from <= m.received_wall_s <= measured_from + seconds]
    counts = {family: 0 for family in (*_FAMILIES, "other")}
    for message in window:
        counts[topic_family(message.topic)] += 1
    rates = {family: count / seconds for family, count in counts.items()}
    rates["all"] = len(window) / seconds
    latencies = vitals_latencies_ms(
        vitals.messages, from_wall_s=measured_from, to_wall_s=measured_from + seconds
    )
    gaps = sum(json.loads(m.payload)["gap_before"] for m in window if topic_family(m.topic) == "wave")
    return Result(
        beds=beds,
        latencies_ms=latencies,
        messages_per_s=rates,
        kbytes_per_s=sum(len(m.payload) for m in window) / seconds / 1000,
        cpu_percent=100.0 * cpu_used_s / seconds,
        rss_mib=rss,
        wave_gaps=gaps,
    )


def main(argv: list[str] | None = None) -> int:
    """Measure each bed count and print a Markdown table for BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warm-up-s", type=float, default=10.0)
    parser.add_argument("--no-waves", action="store_true", help="numerics only (waves off)")
    parser.add_argument("--no-monitors", action="store_true", help="ventilators only")
    parser.add_argument("--no-engines", action="store_true", help="forecasting engines off")
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full", help="outbox fsync mode")
    parser.add_argument("--serve-ptys", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_ptys is not None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        serve_ptys(args.serve_ptys, beds=args.beds[0], stop=stop, monitors=not args.no_monitors)
        return 0
    setup = WardSetup(
        waves=not args.no_waves,
        monitors=not args.no_monitors,
        engines=not args.no_engines,
        synchronous=args.synchronous,
    )
    print(f"ward: Python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} CPUs")
    print(
        f"{args.seconds:.0f} s measured per bed count after {args.warm_up_s:.0f} s warm-up; daemon on CPU 0; "
        f"{setup}\n"
    )
    print(
        "| beds | msg/s | kB/s | vitals/s | twin/s | forecast/s | wave/s | wave gaps | p50 ms | p99 ms "
        "| max ms | daemon CPU % | RSS MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for beds in args.beds:
        result = measure(beds=beds, seconds=args.seconds, warm_up_s=args.warm_up_s, setup=setup)
        values, rates = result.latencies_ms, result.messages_per_s
        print(
            f"| {beds} | {rates['all']:.0f} | {result.kbytes_per_s:.0f} | {rates['vitals']:.0f} | "
            f"{rates['twin']:.1f} | {rates['forecast']:.1f} | {rates['wave']:.0f} | {result.wave_gaps} | "
            f"{statistics.median(values):.1f} | {percentile(values, 0.99):.1f} | {values[-1]:.1f} | "
            f"{result.cpu_percent:.0f} | {result.rss_mib:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
