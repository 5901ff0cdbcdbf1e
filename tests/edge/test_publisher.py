"""The publisher against a real Mosquitto: birth, payloads, outage, restart, Will, stop, disk cap, TLS."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker, Received, Subscriber

from edge.config import MqttConfig, StoreConfig, TlsConfig
from edge.contract import Topics
from edge.model import (
    ApplianceStatusMessage,
    DeviceState,
    DeviceStatusBody,
    DeviceStatusMessage,
    EventBody,
    EventKind,
    EventMessage,
    Observation,
    TwinBody,
    TwinMessage,
    VitalsBody,
    VitalsMessage,
)
from edge.outbox import DeliveryPriority, OutboxError
from edge.publisher import IN_FLIGHT_WINDOW, STATUS_IN_FLIGHT, Publisher

TOPICS = Topics(prefix="icu/v1", site="site1", ward="icu3", appliance="edge7")
BED = "bed1"
APPLIANCE = "edge7"
STATUS = TOPICS.appliance_status()
VITALS = TOPICS.vitals(BED)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
REPO_ROOT = Path(__file__).resolve().parents[2]

SubscribeFactory = Callable[..., Subscriber]


def vitals(index: int, *, observations: int = 1) -> VitalsBody:
    return VitalsBody(
        device="vent1",
        observations=[
            Observation(
                key="hr",
                value=float(index),
                unit="/min",
                mdc="MDC_ECG_HEART_RATE",
                label="heart rate",
                device="vent1",
                device_code=f"0x{n:04x}",
                valid=True,
                device_time=None,
                received_at=NOW,
            )
            for n in range(observations)
        ],
    )


def make_publisher(broker: MosquittoBroker, store_path: Path, **store: Any) -> Publisher:
    tls = None
    if broker.tls_files is not None:
        tls = TlsConfig(ca=broker.tls_files.ca)
    return Publisher(
        mqtt=MqttConfig(
            host=broker.host,
            port=broker.port,
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
            tls=tls,
            insecure=tls is None,
        ),
        store=StoreConfig(path=store_path, **store),
        topics=TOPICS,
        appliance_id=APPLIANCE,
        beds=[BED],
        version="0.1.0-test",
    )


async def until(predicate: Callable[[], bool], *, timeout_s: float) -> None:
    """Wait on the event loop (not blocking it) until predicate() holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.02)


async def received(
    subscriber: Subscriber, predicate: Callable[[list[Received]], bool], *, timeout_s: float
) -> list[Received]:
    await until(lambda: predicate(subscriber.messages), timeout_s=timeout_s)
    return subscriber.messages


def on(messages: list[Received], topic: str) -> list[Received]:
    return [m for m in messages if m.topic == topic]


def seqs(messages: list[Received], topic: str) -> list[tuple[int, int]]:
    """Return (session, seq) of each message on a topic, in arrival order."""
    return [(json.loads(m.payload)["session"], json.loads(m.payload)["seq"]) for m in on(messages, topic)]


@pytest.fixture
async def publisher(broker: MosquittoBroker, tmp_path: Path) -> AsyncIterator[Publisher]:
    pub = make_publisher(broker, tmp_path / "outbox.db")
    await pub.start()
    yield pub
    await pub.stop(flush_timeout_s=1.0)


async def test_progress_counts_from_start_not_from_the_clock_epoch(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    """The watchdog reads `last_progress_s` right after `start()`: 0.0 would read as a beat long ago."""
    pub = make_publisher(broker, tmp_path / "outbox.db")
    before_s = time.monotonic()
    await pub.start()
    try:
        assert pub.stats().last_progress_s >= before_s
    finally:
        await pub.stop(flush_timeout_s=1.0)


async def test_birth_payloads_and_seq(publisher: Publisher, subscribe: SubscribeFactory) -> None:
    # `start()` returns while connecting: wait until the broker holds the birth (live or retained)
    # before the station under test subscribes, so it must get the birth as a retained message.
    early = subscribe(STATUS)
    await received(early, lambda m: len(on(m, STATUS)) >= 1, timeout_s=5)
    sub = subscribe(f"{TOPICS.root}/#")
    await asyncio.to_thread(sub.wait_subscribed)
    birth = on(await received(sub, lambda m: len(on(m, STATUS)) >= 1, timeout_s=5), STATUS)
    assert len(birth) == 1
    assert birth[0].retain  # the birth was there before the subscriber came
    status = ApplianceStatusMessage.model_validate_json(birth[0].payload)
    assert status.state == "online"
    assert status.beds == [BED]
    assert status.version == "0.1.0-test"
    assert status.session == publisher.session >= 1
    assert status.seq == 0
    assert status.bed is None

    for i in range(20):
        publisher.submit(topic=VITALS, bed=BED, body=vitals(i), priority=DeliveryPriority.OBSERVATION)
    device = DeviceState(
        device="vent1",
        kind="ventilator",
        driver="medibus",
        protocol="medibus",
        port="loop://",
        connected=True,
    )
    publisher.submit(
        topic=TOPICS.device(BED, "vent1"),
        bed=BED,
        body=DeviceStatusBody(status=device),
        retain=True,
        priority=DeliveryPriority.STATE,
    )
    publisher.submit(
        topic=TOPICS.twin(BED),
        bed=BED,
        body=TwinBody(values={}, settings={}, devices={"vent1": device}, device_alarms=[]),
        retain=True,
        priority=DeliveryPriority.STATE,
    )
    for _ in range(2):
        publisher.submit(
            topic=TOPICS.events(BED),
            bed=BED,
            body=EventBody(kind=EventKind.DEVICE_CONNECTED, device="vent1", detail="up", at=NOW),
            priority=DeliveryPriority.STATE,
        )
    messages = await received(sub, lambda m: len(on(m, TOPICS.events(BED))) == 2, timeout_s=5)

    vitals_messages = [VitalsMessage.model_validate_json(m.payload) for m in on(messages, VITALS)]
    assert [m.seq for m in vitals_messages] == list(range(20))
    assert [m.observations[0].value for m in vitals_messages] == [float(i) for i in range(20)]
    assert {(m.session, m.appliance, m.bed, m.schema_id) for m in vitals_messages} == {
        (publisher.session, APPLIANCE, BED, "icu-edge/vitals/3")
    }
    assert (
        DeviceStatusMessage.model_validate_json(on(messages, TOPICS.device(BED, "vent1"))[0].payload).seq == 0
    )
    assert TwinMessage.model_validate_json(on(messages, TOPICS.twin(BED))[0].payload).seq == 0
    assert [EventMessage.model_validate_json(m.payload).seq for m in on(messages, TOPICS.events(BED))] == [
        0,
        1,
    ]
    raw = json.loads(on(messages, VITALS)[0].payload)
    assert raw["ts"].endswith("Z")
    assert len(raw["ts"]) == len("2026-01-01T00:00:00.000Z")

    await until(lambda: publisher.stats().pending == 0, timeout_s=5)
    stats = publisher.stats()
    assert stats.connected
    assert stats.submitted == 24
    assert stats.acked == 24
    assert stats.in_flight == 0
    assert stats.dropped == {}
    assert stats.fatal_error is None


async def test_qos0_bypasses_the_outbox_and_counts_drops_when_offline(
    broker: MosquittoBroker, tmp_path: Path, subscribe: SubscribeFactory
) -> None:
    sub = subscribe(VITALS)
    await asyncio.to_thread(sub.wait_subscribed)
    pub = make_publisher(broker, tmp_path / "outbox.db")
    await pub.start()
    try:
        await until(lambda: pub.connected, timeout_s=5)
        pub.submit(topic=VITALS, bed=BED, body=vitals(1), qos=0, priority=DeliveryPriority.OBSERVATION)
        await received(sub, lambda m: len(m) == 1, timeout_s=5)
        assert pub.stats().pending == 0
        await asyncio.to_thread(broker.stop)
        await until(lambda: not pub.connected, timeout_s=5)
        pub.submit(topic=VITALS, bed=BED, body=vitals(2), qos=0, priority=DeliveryPriority.OBSERVATION)
        await until(lambda: pub.stats().dropped.get(DeliveryPriority.OBSERVATION) == 1, timeout_s=5)
        assert pub.stats().pending == 0
    finally:
        await pub.stop(flush_timeout_s=0.5)


async def test_graceful_stop_publishes_offline_shutdown(
    broker: MosquittoBroker, tmp_path: Path, subscribe: SubscribeFactory
) -> None:
    pub = make_publisher(broker, tmp_path / "outbox.db")
    await pub.start()
    await until(lambda: pub.connected, timeout_s=5)
    for i in range(50):
        pub.submit(topic=VITALS, bed=BED, body=vitals(i), priority=DeliveryPriority.OBSERVATION)
    await pub.stop(flush_timeout_s=5.0)
    assert pub.stats().pending == 0
    late = subscribe(f"{TOPICS.root}/#")
    messages = await received(late, lambda m: len(on(m, STATUS)) == 1, timeout_s=5)
    (status,) = on(messages, STATUS)
    assert status.retain
    body = ApplianceStatusMessage.model_validate_json(status.payload)
    assert (body.state, body.reason, body.session) == ("offline", "shutdown", pub.session)
    # birth 0, the unused Will 1, offline 2
    assert body.seq == 2


async def test_broker_outage_of_10_s_loses_nothing(
    broker: MosquittoBroker, tmp_path: Path, subscribe: SubscribeFactory
) -> None:
    sub = subscribe(f"{TOPICS.root}/#", persistent=True)
    await asyncio.to_thread(sub.wait_subscribed)
    pub = make_publisher(broker, tmp_path / "outbox.db")
    await pub.start()
    count = 0

    async def produce(*, duration_s: float) -> None:
        nonlocal count
        end = asyncio.get_running_loop().time() + duration_s
        while asyncio.get_running_loop().time() < end:
            pub.submit(topic=VITALS, bed=BED, body=vitals(count), priority=DeliveryPriority.OBSERVATION)
            count += 1
            await asyncio.sleep(0.01)

    try:
        await until(lambda: pub.connected, timeout_s=5)
        await produce(duration_s=1.0)
        await asyncio.to_thread(broker.stop)
        progress_before = pub.stats().last_progress_s
        await produce(duration_s=10.0)  # the outage: the producer keeps going
        assert not pub.connected
        stats = pub.stats()
        assert stats.pending > 0
        assert stats.last_progress_s > progress_before  # the worker loops while the broker is away
        await asyncio.to_thread(broker.start)
        await produce(duration_s=1.0)
        total = count
        messages = await received(
            sub, lambda m: {s for _, s in seqs(m, VITALS)} >= set(range(total)), timeout_s=30
        )
    finally:
        await pub.stop(flush_timeout_s=2.0)
    arrived = [seq for _, seq in seqs(messages, VITALS)]
    assert set(arrived) == set(range(total))
    first_seen = list(dict.fromkeys(arrived))
    assert first_seen == sorted(first_seen), "a message overtook an earlier one"
    assert {session for session, _ in seqs(messages, VITALS)} == {pub.session}
    births = [ApplianceStatusMessage.model_validate_json(m.payload) for m in on(messages, STATUS)]
    online = [b for b in births if b.state == "online"]
    # one birth per connection (Will seqs 1 and 3 reserved); the subscriber's re-subscription after
    # the restart may add a retained copy of a birth, so compare the set
    assert {b.seq for b in online} == {0, 2}
    duplicates = len(arrived) - total
    assert duplicates <= IN_FLIGHT_WINDOW + STATUS_IN_FLIGHT


async def test_daemon_restart_replays_old_session_first(
    broker: MosquittoBroker, tmp_path: Path, subscribe: SubscribeFactory
) -> None:
    sub = subscribe(VITALS, persistent=True)
    await asyncio.to_thread(sub.wait_subscribed)
    await asyncio.to_thread(broker.stop)
    store = tmp_path / "outbox.db"

    first = make_publisher(broker, store)
    await first.start()
    for i in range(30):
        first.submit(topic=VITALS, bed=BED, body=vitals(i), priority=DeliveryPriority.OBSERVATION)
    await until(lambda: first.stats().pending == 30, timeout_s=5)
    await first.stop(flush_timeout_s=0.5)
    assert first.stats().pending == 30

    second = make_publisher(broker, store)
    await second.start()
    try:
        assert second.session == first.session + 1
        for i in range(10):
            second.submit(topic=VITALS, bed=BED, body=vitals(100 + i), priority=DeliveryPriority.OBSERVATION)
        await asyncio.to_thread(broker.start)
        messages = await received(sub, lambda m: len(m) >= 40, timeout_s=15)
        await until(lambda: second.stats().pending == 0, timeout_s=5)
    finally:
        await second.stop(flush_timeout_s=2.0)
    assert seqs(messages, VITALS) == [(first.session, i) for i in range(30)] + [
        (second.session, i) for i in range(10)
    ]


WILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from edge.config import MqttConfig, StoreConfig
    from edge.contract import Topics
    from edge.publisher import Publisher

    async def main() -> None:
        port, store = int(sys.argv[1]), Path(sys.argv[2])
        pub = Publisher(
            mqtt=MqttConfig(
                host="127.0.0.1", port=port, reconnect_min_s=0.1, reconnect_max_s=0.5, insecure=True
            ),
            store=StoreConfig(path=store),
            topics=Topics(prefix="icu/v1", site="site1", ward="icu3", appliance="edge7"),
            appliance_id="edge7", beds=["bed1"], version="0.1.0-test",
        )
        await pub.start()
        while not pub.connected:
            await asyncio.sleep(0.02)
        print("connected", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_will_reports_offline_lost_after_sigkill(
    broker: MosquittoBroker, tmp_path: Path, subscribe: SubscribeFactory
) -> None:
    sub = subscribe(STATUS)
    await asyncio.to_thread(sub.wait_subscribed)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WILL_SCRIPT,
        str(broker.port),
        str(tmp_path / "outbox.db"),
        stdout=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), timeout=20)
        assert line.strip() == b"connected"
        await received(sub, lambda m: len(m) == 1, timeout_s=5)
        child.send_signal(signal.SIGKILL)
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    messages = await received(sub, lambda m: len(m) == 2, timeout_s=10)
    birth, will = (ApplianceStatusMessage.model_validate_json(m.payload) for m in messages)
    assert (birth.state, will.state, will.reason) == ("online", "offline", "lost")
    assert will.session == birth.session
    assert will.seq == birth.seq + 1
    late = subscribe(STATUS)
    (retained,) = await received(late, lambda m: len(m) == 1, timeout_s=5)
    assert retained.retain
    assert json.loads(retained.payload)["reason"] == "lost"


async def test_disk_cap_drops_observations_and_reports_it(
    broker: MosquittoBroker, tmp_path: Path, subscribe: SubscribeFactory
) -> None:
    sub = subscribe(f"{TOPICS.root}/bed/#", persistent=True)
    await asyncio.to_thread(sub.wait_subscribed)
    await asyncio.to_thread(broker.stop)
    pub = make_publisher(broker, tmp_path / "outbox.db", max_bytes=1024 * 1024)
    await pub.start()
    try:
        alarm_like = TOPICS.events(BED)
        pub.submit(
            topic=alarm_like,
            bed=BED,
            body=EventBody(kind=EventKind.ALARM_RAISED, device="vent1", detail="apnea", at=NOW),
            priority=DeliveryPriority.ALARM,
        )
        for i in range(200):  # about 2 MB of observations
            pub.submit(
                topic=VITALS, bed=BED, body=vitals(i, observations=40), priority=DeliveryPriority.OBSERVATION
            )
        await until(lambda: pub.stats().dropped.get(DeliveryPriority.OBSERVATION, 0) > 0, timeout_s=10)
        await asyncio.to_thread(broker.start)
        messages = await received(
            sub,
            lambda m: any(json.loads(x.payload)["kind"] == "outbox_dropped" for x in on(m, alarm_like)),
            timeout_s=15,
        )
    finally:
        await pub.stop(flush_timeout_s=5.0)
    events = [EventMessage.model_validate_json(m.payload) for m in on(messages, alarm_like)]
    assert events[0].kind == EventKind.ALARM_RAISED  # the alarm-priority row survived
    dropped_event = next(e for e in events if e.kind == EventKind.OUTBOX_DROPPED)
    assert "observation=" in dropped_event.detail
    assert VITALS in dropped_event.detail
    assert [e.seq for e in events] == list(range(len(events)))
    vitals_seqs = [s for _, s in seqs(messages, VITALS)]
    assert vitals_seqs == sorted(vitals_seqs)
    assert vitals_seqs[-1] == 199  # the newest observations were kept, the oldest dropped
    assert vitals_seqs[0] > 0


async def test_corrupt_outbox_fails_start_clearly(broker: MosquittoBroker, tmp_path: Path) -> None:
    store = tmp_path / "outbox.db"
    store.write_bytes(b"garbage" * 1000)
    pub = make_publisher(broker, store)
    with pytest.raises(OutboxError, match="not a database"):
        await pub.start()
    await pub.stop(flush_timeout_s=0.1)


async def test_tls_connection(tls_broker: MosquittoBroker, tmp_path: Path) -> None:
    assert tls_broker.tls_files is not None
    sub = Subscriber(
        host=tls_broker.host,
        port=tls_broker.port,
        topic_filter=f"{TOPICS.root}/#",
        tls_ca=tls_broker.tls_files.ca,
    )
    try:
        await asyncio.to_thread(sub.wait_subscribed)
        pub = make_publisher(tls_broker, tmp_path / "outbox.db")
        await pub.start()
        try:
            pub.submit(topic=VITALS, bed=BED, body=vitals(0), priority=DeliveryPriority.OBSERVATION)
            messages = await received(sub, lambda m: len(on(m, VITALS)) == 1, timeout_s=10)
        finally:
            await pub.stop(flush_timeout_s=1.0)
        assert ApplianceStatusMessage.model_validate_json(on(messages, STATUS)[0].payload).state == "online"
        assert VitalsMessage.model_validate_json(on(messages, VITALS)[0].payload).seq == 0
    finally:
        sub.close()


async def test_every_drop_report_reaches_the_broker(
    broker: MosquittoBroker, tmp_path: Path, subscribe: SubscribeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Many cap passes during an outage: no drop report is itself dropped, and the log is not flooded."""
    events = TOPICS.events(BED)
    sub = subscribe(events, persistent=True)
    await asyncio.to_thread(sub.wait_subscribed)
    await asyncio.to_thread(broker.stop)
    pub = make_publisher(broker, tmp_path / "outbox.db", max_bytes=1024 * 1024)
    await pub.start()
    try:
        with caplog.at_level(logging.WARNING):
            for wave in range(40):  # ~4 MB of twin-sized state rows in 40 waves: many cap passes
                for i in range(10):
                    pub.submit(
                        topic=TOPICS.twin(BED),
                        bed=BED,
                        body=vitals(wave * 10 + i, observations=40),
                        retain=True,
                        priority=DeliveryPriority.STATE,
                    )
                await asyncio.sleep(0.05)
            await until(lambda: pub.stats().dropped.get(DeliveryPriority.STATE, 0) > 0, timeout_s=10)
            await asyncio.sleep(0.5)  # the reports submitted from the worker's drops reach the outbox
        await asyncio.to_thread(broker.start)
        await received(sub, lambda m: len(m) >= 1, timeout_s=15)
        await until(lambda: pub.stats().pending == 0, timeout_s=15)
        await asyncio.sleep(0.5)
    finally:
        await pub.stop(flush_timeout_s=5.0)
    # every report that reached the broker, not only those that had arrived at the first one
    reports = [EventMessage.model_validate_json(m.payload) for m in sub.messages]
    assert {r.kind for r in reports} == {EventKind.OUTBOX_DROPPED}
    assert [r.seq for r in reports] == list(range(len(reports))), "a drop report was itself dropped"
    drop_lines = [r for r in caplog.records if r.levelno >= logging.WARNING and "dropped" in r.getMessage()]
    assert 1 <= len(drop_lines) <= 3, [r.getMessage() for r in drop_lines]
