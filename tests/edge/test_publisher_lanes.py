"""Publisher lanes against a real Mosquitto: vitals and alarms go before bulk state, every topic keeps
its order and its seqs, and a worker step commits its inserts and deletes in one transaction."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker, Received, Subscriber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_publisher import NOW, make_publisher, until, vitals

from edge.config import MqttConfig, StoreConfig
from edge.contract import Topics
from edge.model import EventBody, EventKind
from edge.outbox import FAST_STEPS_MAX, DeliveryPriority
from edge.publisher import Publisher

SubscribeFactory = Callable[..., Subscriber]
BURST = 200


def _tokens(messages: list[Received], topic: str) -> list[str]:
    """What arrived on a topic, in order: `seq N` for a message, `clear` for a zero-length one."""
    return [
        f"seq {json.loads(m.payload)['seq']}" if m.payload else "clear" for m in messages if m.topic == topic
    ]


async def test_vitals_submitted_after_a_burst_of_bulk_state_arrive_before_most_of_it(
    broker: MosquittoBroker, tmp_path: Path, subscribe: SubscribeFactory
) -> None:
    """200 twins and forecasts of 8 beds, then one vitals batch: the subscriber sees the vitals early.

    Red before lanes: the vitals row got the highest outbox id and arrived last (index 200).
    """
    topics = Topics(prefix="icu/v1", site="site1", ward="icu3", appliance="edge7")
    station = subscribe(f"{topics.root}/bed/#")
    await asyncio.to_thread(station.wait_subscribed)
    pub = make_publisher(broker, tmp_path / "outbox.db")
    await pub.start()
    try:
        await until(lambda: pub.connected, timeout_s=10)
        bodies = [vitals(i, observations=20) for i in range(BURST)]  # built first: the burst is quick
        for i, body in enumerate(bodies):
            bed = f"bed{i % 8}"
            topic = topics.twin(bed) if i % 2 else topics.forecast(bed)
            pub.submit(topic=topic, bed=bed, body=body, retain=True, priority=DeliveryPriority.STATE)
        pub.submit(
            topic=topics.vitals("bed1"), bed="bed1", body=vitals(0), priority=DeliveryPriority.OBSERVATION
        )
        messages = await asyncio.to_thread(station.wait_for, lambda m: len(m) >= BURST + 1, timeout_s=30)
        await until(lambda: pub.stats().pending == 0, timeout_s=10)
    finally:
        await pub.stop(flush_timeout_s=2.0)
    arrival = [m.topic for m in messages]
    position = arrival.index(topics.vitals("bed1"))
    print(f"\nthe vitals batch submitted after {BURST} bulk messages arrived after {position} of them")
    assert position < BURST // 2, f"the vitals batch arrived after {position} of {BURST} bulk messages"
    for topic in set(arrival):
        seqs = [json.loads(m.payload)["seq"] for m in messages if m.topic == topic]
        assert seqs == list(range(len(seqs))), topic
    assert pub.stats().dropped == {}


_KINDS = ("vitals", "events", "alarm", "twin", "forecast", "device", "clear-alarm", "clear-twin")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    script=st.lists(
        st.tuples(st.sampled_from(_KINDS), st.sampled_from(("b1", "b2")), st.booleans()),
        min_size=1,
        max_size=120,
    ),
    example=st.integers(0, 2**31),
)
def test_every_topic_keeps_its_order_and_seqs_under_lanes(
    broker: MosquittoBroker,
    tmp_path: Path,
    subscribe: SubscribeFactory,
    script: list[tuple[str, str, bool]],
    example: int,
) -> None:
    """Any interleaving of fast and bulk topics, clears and mixed priorities: per topic, what arrives is
    exactly what was submitted, in order (lanes reorder only across topics)."""
    topics = Topics(prefix="icu/v1", site="site1", ward=f"w{example}", appliance="edge7")
    station = subscribe(f"{topics.root}/bed/#")
    station.wait_subscribed()
    expected: dict[str, list[str]] = {}

    def submit_all(pub: Publisher) -> None:
        for kind, bed, urgent in script:
            priority = DeliveryPriority.ALARM if urgent else DeliveryPriority.STATE
            if kind.startswith("clear-"):
                topic = topics.alarm(bed, "a1") if kind == "clear-alarm" else topics.twin(bed)
                pub.submit_clear(topic=topic, bed=bed)
                expected.setdefault(topic, []).append("clear")
                continue
            topic = {
                "vitals": topics.vitals(bed),
                "events": topics.events(bed),
                "alarm": topics.alarm(bed, "a1"),
                "twin": topics.twin(bed),
                "forecast": topics.forecast(bed),
                "device": topics.device(bed, "vent1"),
            }[kind]
            body = EventBody(kind=EventKind.DEVICE_TEXT_MESSAGES, detail=kind, at=NOW)
            pub.submit(
                topic=topic, bed=bed, body=body, retain=kind not in ("vitals", "events"), priority=priority
            )
            expected.setdefault(topic, []).append(f"seq {sum(t != 'clear' for t in expected.get(topic, []))}")

    async def scenario() -> list[Received]:
        pub = Publisher(
            mqtt=MqttConfig(host=broker.host, port=broker.port, reconnect_min_s=0.1, insecure=True),
            store=StoreConfig(path=tmp_path / f"outbox-{example}.db"),
            topics=topics,
            appliance_id="edge7",
            beds=["b1", "b2"],
            version="test",
        )
        await pub.start()
        try:
            await until(lambda: pub.connected, timeout_s=10)
            submit_all(pub)
            total = sum(len(tokens) for tokens in expected.values())
            return await asyncio.to_thread(station.wait_for, lambda m: len(m) >= total, timeout_s=30)
        finally:
            await pub.stop(flush_timeout_s=2.0)

    try:
        messages = asyncio.run(scenario())
        assert {topic: _tokens(messages, topic) for topic in expected} == expected
    finally:
        station.close()


async def test_a_step_commits_its_inserts_and_deletes_in_one_transaction(
    broker: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A steady stream while connected: steps store new rows and delete acked ones in ONE transaction,
    and the size PRAGMAs of the disk cap are not read per step.

    Red before: every step committed its inserts and its deletes apart (no transaction held both),
    and read page_count and freelist_count on every store.
    """
    store = tmp_path / "outbox.db"
    statements: list[str] = []
    connect = sqlite3.connect

    def trace(statement: str) -> None:
        statements.append(statement)
        if statement.startswith("BEGIN"):
            # A slow disk: while the worker commits, the next submissions and the acks of the rows it
            # handed last both queue up, so the next step has rows to store and rows to delete.
            time.sleep(0.005)

    def traced(path: object, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = connect(path, *args, **kwargs)  # type: ignore[arg-type]
        if Path(str(path)) == store:
            db.set_trace_callback(trace)  # the worker's thread, its connection
        return db

    monkeypatch.setattr(sqlite3, "connect", traced)
    pub = make_publisher(broker, store)
    await pub.start()
    try:
        await until(lambda: pub.connected, timeout_s=10)
        start = len(statements)
        for i in range(300):
            pub.submit(
                topic="icu/v1/site1/icu3/bed/bed1/vitals",
                bed="bed1",
                body=vitals(i),
                priority=DeliveryPriority.OBSERVATION,
            )
            await asyncio.sleep(0.001)
        await until(lambda: pub.stats().pending == 0 and pub.stats().acked == 300, timeout_s=30)
        stream = statements[start:]
    finally:
        await pub.stop(flush_timeout_s=2.0)
    transactions: list[set[str]] = []
    for statement in stream:
        if statement.startswith("BEGIN"):
            transactions.append(set())
        elif transactions and statement.split(" ", 1)[0] in ("INSERT", "DELETE"):
            transactions[-1].add(statement.split(" ", 1)[0])
    mixed = sum(kinds == {"INSERT", "DELETE"} for kinds in transactions)
    commits = sum(statement == "COMMIT" for statement in stream)
    size_reads = sum("page_count" in statement or "freelist_count" in statement for statement in stream)
    assert mixed > 0, f"no step stored and deleted in one transaction: {transactions}"
    # one careful pass (two size PRAGMAs, more when it sheds) per FAST_STEPS_MAX steps at most
    assert size_reads <= 2 * (commits // FAST_STEPS_MAX + 1), (size_reads, commits)


@pytest.fixture(autouse=True)
def _quiet_paho(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="edge.publisher.paho")
