"""Soak meter (not a test): sample a running daemon and the broker's traffic, print the figures.

Every `--sample-s` seconds: the daemon's resident memory, thread count and open file descriptors (from
/proc), its CPU share since the last sample, the outbox's row count (SQLite opened read-only, so the
daemon's WAL is not disturbed), the machine's load average, and the rate of messages a central-station
subscriber received. The subscriber also checks `seq` per topic and counts gaps (lost messages).
`summarize` turns the samples into the flatness figures the soak test asserts: first third against
last third after the warm-up.

    python -m tools.bench.soak --pid PID --outbox PATH --broker-port PORT --minutes 10

Threads: the paho network thread only counts into `TrafficCounter` (under its lock); the sampling loop
runs on the caller's thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

LOGGER = logging.getLogger(__name__)

_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One look at the daemon and the traffic."""

    elapsed_s: float
    rss_kib: int
    threads: int
    open_fds: int
    cpu_percent: float
    """Daemon CPU time since the previous sample / wall time (100 = one core)."""
    outbox_rows: int
    messages_per_s: float
    seq_gaps: int
    load_1min: float


class TrafficCounter:
    """A subscriber that only counts: messages, and gaps in `seq` per topic within one session."""

    def __init__(self, *, host: str, port: int, topic_filter: str) -> None:
        self._lock = threading.Lock()
        self._messages = 0
        self._gaps = 0
        self._last: dict[str, tuple[int, int]] = {}
        self._filter = topic_filter
        self._client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id="soak-meter", protocol=MQTTv5
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect_async(host, port, keepalive=30)
        self._client.loop_start()

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        if not reason.is_failure:
            client.subscribe(self._filter, qos=1)

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        if message.retain or not message.payload:
            with self._lock:
                self._messages += 1
            return
        try:
            body = json.loads(message.payload)
            session, seq = int(body["session"]), int(body["seq"])
        except (ValueError, KeyError, TypeError):
            LOGGER.warning("soak meter: unreadable payload on %s", message.topic)
            return
        with self._lock:
            self._messages += 1
            previous = self._last.get(message.topic)
            if previous is not None and previous[0] == session and seq <= previous[1]:
                return  # a QoS 1 redelivery
            if previous is not None and previous[0] == session and seq > previous[1] + 1:
                self._gaps += 1
            self._last[message.topic] = (session, seq)

    def totals(self) -> tuple[int, int]:
        """Return (messages received, seq gaps seen) so far."""
        with self._lock:
            return self._messages, self._gaps

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()


def process_figures(pid: int) -> tuple[int, int, int, float]:
    """Return (VmRSS KiB, threads, open fds, CPU seconds) of a process from /proc."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kib = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"])
    open_fds = len(os.listdir(f"/proc/{pid}/fd"))
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    after_name = stat.rsplit(")", 1)[1].split()
    cpu_s = (int(after_name[11]) + int(after_name[12])) / _CLOCK_TICKS_PER_S
    return rss_kib, threads, open_fds, cpu_s


def outbox_rows(path: Path) -> int:
    """Return the outbox's row count, read-only (-1 when it cannot be read right now)."""
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            count: int = connection.execute("SELECT count(*) FROM messages").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error as exc:
        LOGGER.warning("soak meter: outbox unreadable: %s", exc)
        return -1
    return count


def sample_for(
    *,
    pid: int,
    outbox: Path,
    traffic: TrafficCounter,
    seconds: float,
    sample_s: float = 10.0,
    on_sample: Callable[[Sample], None] = lambda _: None,
    alive: Callable[[], bool] = lambda: True,
) -> list[Sample]:
    """Sample every sample_s for seconds (or until alive() is false) and return the samples."""
    samples: list[Sample] = []
    start = time.monotonic()
    _, _, _, last_cpu_s = process_figures(pid)
    last_messages, _ = traffic.totals()
    last_at = start
    while time.monotonic() - start < seconds and alive():
        time.sleep(min(sample_s, max(0.0, seconds - (time.monotonic() - start))))
        if not alive():
            break
        now = time.monotonic()
        rss_kib, threads, fds, cpu_s = process_figures(pid)
        messages, gaps = traffic.totals()
        interval_s = max(now - last_at, 1e-6)
        sample = Sample(
            elapsed_s=round(now - start, 1),
            rss_kib=rss_kib,
            threads=threads,
            open_fds=fds,
            cpu_percent=round(100.0 * (cpu_s - last_cpu_s) / interval_s, 1),
            outbox_rows=outbox_rows(outbox),
            messages_per_s=round((messages - last_messages) / interval_s, 1),
            seq_gaps=gaps,
            load_1min=os.getloadavg()[0],
        )
        last_cpu_s, last_messages, last_at = cpu_s, messages, now
        samples.append(sample)
        on_sample(sample)
    return samples


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarize(samples: Sequence[Sample], *, warm_up_s: float) -> dict[str, float]:
    """Return the soak figures: first third against last third of the samples after the warm-up."""
    steady = [s for s in samples if s.elapsed_s > warm_up_s]
    if len(steady) < 3:
        raise ValueError(f"need at least 3 samples after the {warm_up_s} s warm-up, got {len(steady)}")
    third = max(1, len(steady) // 3)
    first, last = steady[:third], steady[-third:]
    return {
        "samples": len(steady),
        "rss_first_mib": round(_median([s.rss_kib for s in first]) / 1024, 1),
        "rss_last_mib": round(_median([s.rss_kib for s in last]) / 1024, 1),
        "rss_max_mib": round(max(s.rss_kib for s in samples) / 1024, 1),
        "rss_growth": round(_median([s.rss_kib for s in last]) / _median([s.rss_kib for s in first]) - 1, 4),
        "threads_first": first[0].threads,
        "threads_last": last[-1].threads,
        "fds_first": first[0].open_fds,
        "fds_last": last[-1].open_fds,
        "outbox_first_median": _median([s.outbox_rows for s in first]),
        "outbox_last_median": _median([s.outbox_rows for s in last]),
        "outbox_max": max(s.outbox_rows for s in steady),
        "rate_first_per_s": _median([s.messages_per_s for s in first]),
        "rate_last_per_s": _median([s.messages_per_s for s in last]),
        "cpu_median_percent": _median([s.cpu_percent for s in steady]),
        "cpu_max_percent": max(s.cpu_percent for s in steady),
        "load_median": round(_median([s.load_1min for s in steady]), 2),
        "seq_gaps": samples[-1].seq_gaps,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Sample a running daemon: `--pid PID --outbox PATH --broker-port PORT [--minutes N]`."""
    parser = argparse.ArgumentParser(prog="python -m tools.bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, required=True, help="the daemon's process id")
    parser.add_argument("--outbox", type=Path, required=True, help="the daemon's outbox database")
    parser.add_argument("--broker-host", default="127.0.0.1")
    parser.add_argument("--broker-port", type=int, default=1883)
    parser.add_argument("--topic", default="icu/v1/#", help="what the counting subscriber subscribes to")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warm-up-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    if not Path(f"/proc/{args.pid}").exists():
        parser.error(f"no process {args.pid}")
    traffic = TrafficCounter(host=args.broker_host, port=args.broker_port, topic_filter=args.topic)
    try:
        samples = sample_for(
            pid=args.pid,
            outbox=args.outbox,
            traffic=traffic,
            seconds=args.minutes * 60,
            sample_s=args.sample_s,
            on_sample=lambda s: print(json.dumps(asdict(s)), flush=True),
            alive=lambda: Path(f"/proc/{args.pid}").exists(),
        )
    finally:
        traffic.close()
    print(json.dumps(summarize(samples, warm_up_s=args.warm_up_s)))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
