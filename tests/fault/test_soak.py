"""The soak: N beds (64 by default) of real simulators + the daemon + Mosquitto for minutes; flat or not.

Flag-gated: it runs only when `ICU_EDGE_SOAK_MINUTES` is set (CI leaves it unset, so CI skips it);
`ICU_EDGE_SOAK_BEDS` changes the bed count. Every 10 s `tools.bench.soak` samples the daemon's RSS,
threads, open fds and CPU, the outbox row count and the subscriber's message rate, and prints them;
after a warm-up, the last third must look like the first third.

    ICU_EDGE_SOAK_MINUTES=10 nice -n 10 .venv/bin/pytest -s tests/fault/test_soak.py
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from broker import MosquittoBroker, Subscriber, wait_for
from ward import ROOT, Ward, WardLayout

from edge.model import DeviceStatusMessage
from tools.bench.soak import Sample, TrafficCounter, sample_for, summarize

SOAK_MINUTES = float(os.environ.get("ICU_EDGE_SOAK_MINUTES", "0") or 0)
SOAK_BEDS = int(os.environ.get("ICU_EDGE_SOAK_BEDS", "64"))
WARM_UP_S = 60.0
RSS_GROWTH_LIMIT = 0.10
"""Last-third median RSS at most 10 % above the first-third median."""
OUTBOX_GROWTH_LIMIT_ROWS = 200
RATE_TOLERANCE = 0.2


def _flat_verdict(figures: dict[str, float]) -> list[str]:
    """Return what is not flat (empty: flat)."""
    problems = []
    if figures["rss_growth"] > RSS_GROWTH_LIMIT:
        problems.append(f"RSS grew {figures['rss_growth']:.1%} (limit {RSS_GROWTH_LIMIT:.0%})")
    if figures["outbox_last_median"] > figures["outbox_first_median"] + OUTBOX_GROWTH_LIMIT_ROWS:
        problems.append(
            f"outbox grew from {figures['outbox_first_median']} to {figures['outbox_last_median']} rows"
        )
    if abs(figures["threads_last"] - figures["threads_first"]) > 2:
        problems.append(f"threads {figures['threads_first']} -> {figures['threads_last']}")
    if figures["fds_last"] - figures["fds_first"] > 4:
        problems.append(f"open fds {figures['fds_first']} -> {figures['fds_last']}")
    first, last = figures["rate_first_per_s"], figures["rate_last_per_s"]
    if not first > 0 or abs(last - first) > RATE_TOLERANCE * first:
        problems.append(f"message rate {first}/s -> {last}/s")
    if figures["seq_gaps"]:
        problems.append(f"{figures['seq_gaps']} seq gaps (lost messages)")
    return problems


def _samples(rss_mib: list[float], *, outbox: list[int] | None = None) -> list[Sample]:
    rows = outbox or [0] * len(rss_mib)
    return [
        Sample(
            elapsed_s=10.0 * (i + 1),
            rss_kib=int(mib * 1024),
            threads=70,
            open_fds=80,
            cpu_percent=50.0,
            outbox_rows=rows[i],
            messages_per_s=300.0,
            seq_gaps=0,
            load_1min=1.0,
        )
        for i, mib in enumerate(rss_mib)
    ]


def test_the_verdict_passes_a_flat_run_and_catches_a_leak_and_a_backlog() -> None:
    """The soak's own yardstick (runs everywhere, unlike the soak)."""
    flat = summarize(_samples([40.0] * 6 + [60.0, 60.5, 61.0, 60.2, 60.8, 60.4]), warm_up_s=60)
    assert _flat_verdict(flat) == []
    assert flat["rss_max_mib"] == 61.0
    leak = summarize(_samples([40.0] * 6 + [60.0, 62.0, 64.0, 66.0, 68.0, 70.0]), warm_up_s=60)
    assert any("RSS grew" in p for p in _flat_verdict(leak))
    backlog = summarize(_samples([60.0] * 12, outbox=[0] * 6 + [100, 300, 500, 700, 900, 1100]), warm_up_s=60)
    assert any("outbox grew" in p for p in _flat_verdict(backlog))
    with pytest.raises(ValueError, match="at least 3 samples"):
        summarize(_samples([60.0] * 7), warm_up_s=60)


@pytest.fixture
def ward(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Ward]:
    instance = Ward(workdir=tmp_path, broker=broker, layout=WardLayout(beds=SOAK_BEDS, scenario="steady"))
    try:
        yield instance
    finally:
        instance.close()


@pytest.mark.integration
@pytest.mark.skipif(
    not SOAK_MINUTES, reason="the soak runs only with ICU_EDGE_SOAK_MINUTES=N (CI leaves it off)"
)
@pytest.mark.timeout(int(SOAK_MINUTES * 60) + 600)
def test_soak_keeps_memory_queues_and_delivery_flat(
    ward: Ward, broker: MosquittoBroker, subscribe: Callable[..., Subscriber]
) -> None:
    traffic = TrafficCounter(host=broker.host, port=broker.port, topic_filter=f"{ROOT}/#")
    try:
        ward.start_simulators()
        daemon = ward.start_daemon()
        status_seen = wait_for(lambda: traffic.totals()[0] > SOAK_BEDS * 10, timeout_s=120)
        assert status_seen, ward.log("daemon")[-4000:]
        samples = sample_for(
            pid=daemon.pid,
            outbox=ward.outbox,
            traffic=traffic,
            seconds=SOAK_MINUTES * 60,
            on_sample=lambda s: print(json.dumps(asdict(s)), flush=True),
            alive=lambda: daemon.poll() is None,
        )
        assert daemon.poll() is None, ward.log("daemon")[-4000:]
        figures = summarize(samples, warm_up_s=WARM_UP_S)
        print(json.dumps({"beds": SOAK_BEDS, "minutes": SOAK_MINUTES, **figures}), flush=True)
        assert _flat_verdict(figures) == [], figures
        statuses = subscribe(f"{ROOT}/bed/+/device/+")
        assert wait_for(lambda: len(statuses.messages) >= SOAK_BEDS, timeout_s=30)
        connected = {
            m.topic
            for m in statuses.messages
            if DeviceStatusMessage.model_validate_json(m.payload).status.connected
        }
        assert len(connected) == SOAK_BEDS, f"{len(connected)}/{SOAK_BEDS} devices connected at the end"
        assert "Traceback" not in ward.log("daemon")
        assert ward.stop_daemon() == 0
    finally:
        traffic.close()
