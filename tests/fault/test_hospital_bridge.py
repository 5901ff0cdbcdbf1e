"""The hospital tier: a ward Mosquitto bridged to a hospital Mosquitto (docs/hospital-tier.md).

The daemon publishes to the ward broker as always; the ward broker's bridge (QoS 1, persistent
session on both sides, TLS to the hospital) forwards `icu/v1/...` remapped under `hospital/`. A
persistent-session consumer on the hospital broker must end with every QoS 1 message the ward broker
got, in order per topic and without a seq gap, although one side of the bridge restarts mid-stream.
Duplicates are allowed (at-least-once): they are removed by (topic, session, seq) before the check.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker import (
    Bridge,
    BridgeTopic,
    MosquittoBroker,
    Received,
    Subscriber,
    require_mosquitto,
    wait_for,
)
from ward import ROOT, STATUS_TOPIC, Ward, WardLayout, bed_topic

pytestmark = [pytest.mark.integration]

LOCAL_PREFIX = "icu/v1/"
REMOTE_PREFIX = "hospital/icu/v1/"
BRIDGE = "bridge-icu-3"
BEDS = 3


@dataclass(frozen=True, slots=True)
class Brokers:
    ward: MosquittoBroker
    hospital: MosquittoBroker


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Brokers]:
    require_mosquitto()
    hospital = MosquittoBroker(directory=tmp_path / "hospital-broker", tls=True, persistence=True)
    assert hospital.tls_files is not None
    bridge = Bridge(
        name=BRIDGE,
        host=hospital.host,
        port=hospital.port,
        topics=(
            BridgeTopic(
                pattern="#", direction="out", qos=1, local_prefix=LOCAL_PREFIX, remote_prefix=REMOTE_PREFIX
            ),
        ),
        cafile=hospital.tls_files.ca,
    )
    ward = MosquittoBroker(directory=tmp_path / "ward-broker", persistence=True, bridges=[bridge])
    hospital.start()
    ward.start()
    try:
        yield Brokers(ward=ward, hospital=hospital)
    finally:
        ward.stop()
        hospital.stop()


def bridge_connections(hospital: MosquittoBroker) -> int:
    return hospital.log_tail(lines=1_000_000).count(f"as {BRIDGE} ")


def local_topic(remote: str) -> str:
    assert remote.startswith(REMOTE_PREFIX), remote
    return LOCAL_PREFIX + remote.removeprefix(REMOTE_PREFIX)


def live_sequence(messages: list[Received], *, remap: bool) -> dict[str, list[tuple[int, int]]]:
    """(session, seq) per topic in arrival order, first copies only; retained replays left out."""
    seen: set[tuple[str, int, int]] = set()
    order: dict[str, list[tuple[int, int]]] = {}
    for message in messages:
        topic = local_topic(message.topic) if remap else message.topic
        if message.retain or not message.payload or topic == STATUS_TOPIC:
            continue
        body = json.loads(message.payload)
        key = (topic, body["session"], body["seq"])
        if key not in seen:
            seen.add(key)
            order.setdefault(topic, []).append((body["session"], body["seq"]))
    return order


def vitals_count(messages: list[Received], *, remap: bool) -> int:
    return sum(len(v) for t, v in live_sequence(messages, remap=remap).items() if t.endswith("/vitals"))


@pytest.mark.parametrize("restarted", ["hospital broker", "ward broker"])
def test_bridge_restart_mid_stream_loses_nothing(restarted: str, tmp_path: Path, brokers: Brokers) -> None:
    hospital, ward_broker = brokers.hospital, brokers.ward
    assert hospital.tls_files is not None
    assert wait_for(lambda: bridge_connections(hospital) >= 1, timeout_s=15), hospital.log_tail()
    consumer = Subscriber(
        host=hospital.host,
        port=hospital.port,
        topic_filter=f"{REMOTE_PREFIX}#",
        client_id="hospital-consumer",
        persistent=True,
        tls_ca=hospital.tls_files.ca,
    )
    reference = Subscriber(
        host=ward_broker.host,
        port=ward_broker.port,
        topic_filter=f"{ROOT}/#",
        client_id="ward-reference",
        persistent=True,
    )
    (tmp_path / "ward").mkdir()
    ward = Ward(workdir=tmp_path / "ward", broker=ward_broker, layout=WardLayout(beds=BEDS))
    try:
        consumer.wait_subscribed()
        reference.wait_subscribed()
        ward.start_simulators()
        ward.start_daemon()
        assert wait_for(lambda: vitals_count(consumer.messages, remap=True) >= 5 * BEDS, timeout_s=30), (
            ward.log("daemon")
        )
        before = vitals_count(reference.messages, remap=False)
        if restarted == "hospital broker":
            hospital.stop()
            time.sleep(2.0)  # the stream goes on into the ward broker, queued for the bridge
            hospital.start()
        else:
            ward_broker.stop()
            time.sleep(2.0)  # the daemon buffers in its outbox
            ward_broker.start()
        assert wait_for(lambda: bridge_connections(hospital) >= 2, timeout_s=20), hospital.log_tail()
        assert wait_for(
            lambda: vitals_count(reference.messages, remap=False) >= before + 5 * BEDS, timeout_s=30
        ), ward.log("daemon")
        assert ward.stop_daemon() == 0
        sent = live_sequence(reference.messages, remap=False)
        # what reached the ward broker is the daemon's stream: from seq 0, no gap, in order
        assert {t.rsplit("/", 2)[0] for t in sent} >= {bed_topic(bed) for bed in ward.beds}
        for topic, keys in sent.items():
            assert [seq for _, seq in keys] == list(range(len(keys))), topic
        wait_for(lambda: live_sequence(consumer.messages, remap=True) == sent, timeout_s=30)
    finally:
        ward.close()
        consumer.close()
        reference.close()
    received = live_sequence(consumer.messages, remap=True)
    missing = {t: sorted(set(keys) - set(received.get(t, []))) for t, keys in sent.items()}
    assert not any(missing.values()), f"lost across the bridge: {missing}"
    assert received == sent, "reordered across the bridge"
    total = sum(len(keys) for keys in sent.values())
    assert total > 15 * BEDS
