"""Benchmark (not a test): frame-in to MQTT-received latency of the whole spine on loopback.

Runs the real processes: a private Mosquitto, the MEDIBUS simulator on a pty, `icu-edge run`, and a
subscriber standing in for the central station. For every vitals message the latency is the
subscriber's wall clock at arrival minus the observation's `received_at`, which the daemon's reader
thread stamps right after the frame was decoded; both clocks are this machine's, so no clock offset
enters. The first seconds (handshake, connection) are discarded. The outbox is measured with SQLite
`synchronous=full` (an fsync per commit, the default) and `normal`.

    python -m tools.bench.spine_latency --seconds 60
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge.model import VitalsMessage
from tools.demo import DEMO_CONFIG
from tools.local_broker import LocalMosquitto
from tools.mqtt_collector import Subscriber, wait_for

WARM_UP_S = 3.0


def _percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def measure(*, seconds: float, poll_interval_s: float, synchronous: str) -> list[float]:
    """Run the spine for `seconds` and return the latencies in milliseconds."""
    with tempfile.TemporaryDirectory(prefix="icu-edge-bench-") as name:
        workdir = Path(name)
        link = workdir / "vent-1"
        broker = LocalMosquitto(directory=workdir / "broker")
        broker.start()
        config = DEMO_CONFIG.format(port=broker.port, outbox=workdir / "outbox.db", pty=link)
        config = config.replace("[store]\n", f'[store]\nsynchronous = "{synchronous}"\n')
        config += f"options = {{ poll_interval_s = {poll_interval_s} }}\n"
        (workdir / "config.toml").write_text(config, encoding="utf-8")
        processes: list[subprocess.Popen[bytes]] = []
        subscriber = Subscriber(host=broker.host, port=broker.port, topic_filter="icu/v1/+/+/bed/+/vitals")
        try:
            subscriber.wait_subscribed()
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "drivers.medibus.simulator",
                        "--pty",
                        str(link),
                        "--scenario",
                        "steady",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            if not wait_for(link.exists, timeout_s=10):
                raise RuntimeError("the simulator did not create its pty")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "edge.cli", "run", "--config", str(workdir / "config.toml")],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            time.sleep(seconds + WARM_UP_S)
        finally:
            for process in reversed(processes):
                process.terminate()
                process.wait(timeout=30)
            subscriber.close()
            broker.stop()
    latencies: list[tuple[float, float]] = []
    for message in subscriber.messages:
        vitals = VitalsMessage.model_validate_json(message.payload)
        received_at_s = vitals.observations[0].received_at.timestamp()
        latencies.append((received_at_s, (message.received_wall_s - received_at_s) * 1000.0))
    if not latencies:
        raise RuntimeError("no vitals arrived")
    start_s = latencies[0][0] + WARM_UP_S
    return [latency for at_s, latency in latencies if at_s >= start_s]


def main(argv: list[str] | None = None) -> int:
    """Measure and print a Markdown table for BENCHMARKS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured time per configuration")
    parser.add_argument("--poll-interval-s", type=float, default=0.2, help="MEDIBUS CP1 poll period")
    parser.add_argument("--json", action="store_true", help="print the raw latencies as JSON too")
    args = parser.parse_args(argv)
    print(f"spine latency: Python {platform.python_version()}, {platform.platform()}, {platform.machine()}")
    print(f"{args.seconds:.0f} s per configuration, MEDIBUS poll every {args.poll_interval_s} s\n")
    print("| outbox synchronous | samples | p50 ms | p90 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|---:|")
    raw: dict[str, list[float]] = {}
    for synchronous in ("full", "normal"):
        values = sorted(
            measure(seconds=args.seconds, poll_interval_s=args.poll_interval_s, synchronous=synchronous)
        )
        raw[synchronous] = values
        print(
            f"| {synchronous} | {len(values)} | {statistics.median(values):.1f} | "
            f"{_percentile(values, 0.90):.1f} | {_percentile(values, 0.99):.1f} | {values[-1]:.1f} |"
        )
    if args.json:
        print(json.dumps(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
