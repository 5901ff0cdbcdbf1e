"""The publisher's side of the alarm contract, against a real Mosquitto: inbound commands and the central
station's state, clearing a retained alarm, history marking of replayed rows, the birth with the active
alarms, and the new-connection callback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker, Received
from paho.mqtt.client import Client, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from test_publisher import APPLIANCE, BED, STATUS, TOPICS, SubscribeFactory, on, received, until

from drivers.base import AlarmPriority
from edge.config import MqttConfig, StoreConfig
from edge.model import (
    AlarmBody,
    AlarmKind,
    AlarmMessage,
    AlarmState,
    AlarmSummary,
    ApplianceStatusMessage,
    EventBody,
    EventKind,
    EventMessage,
)
from edge.outbox import DeliveryPriority
from edge.publisher import INBOUND_MAX_BYTES, INBOUND_MAX_PENDING, InboundMessage, Publisher

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
EVENTS = TOPICS.events(BED)
ALARM_ID = "a-spo2-1"
ALARM = TOPICS.alarm(BED, ALARM_ID)
CENTRAL = f"{TOPICS.root}/central/cs1/state"


def make_publisher(broker: MosquittoBroker, store_path: Path, **callbacks: Any) -> Publisher:
    return Publisher(
        mqtt=MqttConfig(
            host=broker.host, port=broker.port, reconnect_min_s=0.1, reconnect_max_s=0.5, insecure=True
        ),
        store=StoreConfig(path=store_path),
        topics=TOPICS,
        appliance_id=APPLIANCE,
        beds=[BED, "bed2"],
        version="0.1.0-test",
        **callbacks,
    )


def publish(broker: MosquittoBroker, messages: list[tuple[str, bytes, bool]]) -> None:
    """Publish (topic, payload, retain) at QoS 1 from another client, in order, and wait for every PUBACK."""
    client = Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id="test-station", protocol=MQTTv5
    )
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        for topic, payload, retain in messages:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


def alarm_body(state: AlarmState, *, minute: int) -> AlarmBody:
    at = NOW + timedelta(minutes=minute)
    return AlarmBody(
        id=ALARM_ID,
        kind=AlarmKind.PHYSIOLOGICAL,
        condition="spo2_low",
        key="spo2",
        text="SpO2 low",
        priority=AlarmPriority.HIGH,
        configured_priority=AlarmPriority.HIGH,
        state=state,
        condition_present=state == AlarmState.ACTIVE,
        latching=False,
        onset=NOW,
        determined_at=NOW,
        ended_at=at if state == AlarmState.ENDED else None,
        condition_delay_s=10.0,
        cause="spo2 85 below the low limit 90",
        updated_at=at,
    )


def alarm_event(detail: str) -> EventBody:
    return EventBody(
        kind=EventKind.ALARM_RAISED, detail=detail, alarm=alarm_body(AlarmState.ACTIVE, minute=0), at=NOW
    )


def births(messages: list[Received]) -> list[ApplianceStatusMessage]:
    statuses = [ApplianceStatusMessage.model_validate_json(m.payload) for m in on(messages, STATUS)]
    return [s for s in statuses if s.state == "online"]


def as_contract_writes_it(payload: bytes) -> bytes:
    return json.dumps(json.loads(payload), separators=(",", ":"), ensure_ascii=False).encode()


# ---- inbound ------------------------------------------------------------------------------------


async def test_commands_of_every_bed_reach_on_inbound_and_nothing_else(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    cmd = TOPICS.root + "/bed/{}/cmd/{}"
    # retained before the publisher subscribes: the broker hands it over on subscribing
    await asyncio.to_thread(publish, broker, [(cmd.format("bed2", "silence"), b'{"r":1}', True)])
    inbound: list[InboundMessage] = []
    pub = make_publisher(broker, tmp_path / "outbox.db", on_inbound=inbound.append)
    await pub.start()
    try:
        await until(lambda: len(inbound) == 1, timeout_s=10)
        await asyncio.to_thread(
            publish,
            broker,
            [
                (cmd.format(BED, "ack"), b'{"n":1}', False),
                (cmd.format(BED, "ack") + "/extra", b'{"n":2}', False),
                (f"{TOPICS.root}/bed/{BED}/cmdx/ack", b'{"n":3}', False),
                (cmd.format("bed2", "limits"), b'{"n":4}', False),
            ],
        )
        await until(lambda: len(inbound) == 3, timeout_s=10)
        await asyncio.sleep(0.5)  # anything that should not arrive has had time to
    finally:
        await pub.stop(flush_timeout_s=1.0)
    assert [(m.topic, m.payload, m.retained) for m in inbound] == [
        (cmd.format("bed2", "silence"), b'{"r":1}', True),
        (cmd.format(BED, "ack"), b'{"n":1}', False),
        (cmd.format("bed2", "limits"), b'{"n":4}', False),
    ]
    assert all(m.received_mono_s <= time.monotonic() for m in inbound)
    assert pub.stats().inbound_received == 3
    assert pub.stats().inbound_dropped == 0


async def test_oversize_inbound_is_dropped_and_counted(broker: MosquittoBroker, tmp_path: Path) -> None:
    cmd = TOPICS.root + f"/bed/{BED}/cmd/ack"
    await asyncio.to_thread(publish, broker, [(cmd, b"first", True)])
    inbound: list[InboundMessage] = []
    pub = make_publisher(broker, tmp_path / "outbox.db", on_inbound=inbound.append)
    await pub.start()
    try:
        await until(lambda: len(inbound) == 1, timeout_s=10)
        await asyncio.to_thread(
            publish,
            broker,
            [(cmd, b"x" * (INBOUND_MAX_BYTES + 1), False), (cmd, b"y" * INBOUND_MAX_BYTES, False)],
        )
        await until(lambda: len(inbound) == 2, timeout_s=10)
    finally:
        await pub.stop(flush_timeout_s=1.0)
    assert [len(m.payload) for m in inbound] == [5, INBOUND_MAX_BYTES]
    assert pub.stats().inbound_received == 3
    assert pub.stats().inbound_dropped == 1


async def test_inbound_beyond_the_pending_bound_is_dropped_while_the_loop_is_busy(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    cmd = TOPICS.root + f"/bed/{BED}/cmd/ack"
    await asyncio.to_thread(publish, broker, [(cmd, b"ready", True)])
    inbound: list[InboundMessage] = []
    pub = make_publisher(broker, tmp_path / "outbox.db", on_inbound=inbound.append)
    await pub.start()
    extra = 50
    try:
        await until(lambda: len(inbound) == 1, timeout_s=10)
        sender = asyncio.create_task(
            asyncio.to_thread(
                publish, broker, [(cmd, str(i).encode(), False) for i in range(INBOUND_MAX_PENDING + extra)]
            )
        )
        await asyncio.sleep(0)  # let the task start the thread
        # block the loop (on purpose) until paho has offered every message: none can be taken meanwhile
        deadline = time.monotonic() + 30
        while pub.stats().inbound_received < 1 + INBOUND_MAX_PENDING + extra and time.monotonic() < deadline:
            time.sleep(0.02)  # noqa: ASYNC251 - the test needs the loop busy
        await sender
        await until(lambda: len(inbound) == 1 + INBOUND_MAX_PENDING, timeout_s=10)
        assert pub.stats().inbound_dropped == extra
        # the bound counts what the loop has not taken yet: with the backlog taken, messages pass again
        await asyncio.to_thread(publish, broker, [(cmd, b"after", False)])
        await until(lambda: len(inbound) == 2 + INBOUND_MAX_PENDING, timeout_s=10)
    finally:
        await pub.stop(flush_timeout_s=1.0)
    assert [m.payload for m in inbound[1:-1]] == [str(i).encode() for i in range(INBOUND_MAX_PENDING)]
    assert inbound[-1].payload == b"after"


async def test_central_station_state_arrives_retained_at_connect(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    await asyncio.to_thread(publish, broker, [(CENTRAL, b'{"state":"online"}', True)])
    inbound: list[InboundMessage] = []
    pub = make_publisher(
        broker, tmp_path / "outbox.db", on_inbound=inbound.append, central_station_topic=CENTRAL
    )
    await pub.start()
    try:
        await until(lambda: len(inbound) == 1, timeout_s=10)
        await asyncio.to_thread(publish, broker, [(CENTRAL, b'{"state":"offline"}', True)])
        await until(lambda: len(inbound) == 2, timeout_s=10)
    finally:
        await pub.stop(flush_timeout_s=1.0)
    assert [(m.topic, m.payload, m.retained) for m in inbound] == [
        (CENTRAL, b'{"state":"online"}', True),
        (CENTRAL, b'{"state":"offline"}', False),
    ]


# ---- clearing a retained alarm ------------------------------------------------------------------


async def test_submit_clear_deletes_the_retained_alarm_after_its_states(
    broker: MosquittoBroker, tmp_path: Path, subscribe: SubscribeFactory
) -> None:
    sub = subscribe(ALARM, persistent=True)
    await asyncio.to_thread(sub.wait_subscribed)
    await asyncio.to_thread(broker.stop)  # through the outbox: stored in order, sent in order
    pub = make_publisher(broker, tmp_path / "outbox.db")
    await pub.start()
    try:
        for minute, state in enumerate([AlarmState.ACTIVE, AlarmState.ACKNOWLEDGED, AlarmState.ENDED]):
            body = alarm_body(state, minute=minute)
            pub.submit(topic=ALARM, bed=BED, body=body, retain=True, priority=DeliveryPriority.ALARM)
        pub.submit_clear(topic=ALARM, bed=BED)
        twin_like = TOPICS.forecast(BED)
        pub.submit(
            topic=twin_like, bed=BED, body=alarm_event("marker"), retain=True, priority=DeliveryPriority.STATE
        )
        await until(lambda: pub.stats().pending == 5, timeout_s=5)
        await asyncio.to_thread(broker.start)
        messages = await received(sub, lambda m: len(m) == 4, timeout_s=15)
        await until(lambda: pub.stats().pending == 0, timeout_s=10)
    finally:
        await pub.stop(flush_timeout_s=1.0)
    states = [AlarmMessage.model_validate_json(m.payload).state for m in messages[:3]]
    assert states == [AlarmState.ACTIVE, AlarmState.ACKNOWLEDGED, AlarmState.ENDED]
    assert messages[3].payload == b""
    # a station that subscribes now gets the retained marker but nothing on the alarm's topic
    fresh = subscribe(f"{TOPICS.root}/bed/{BED}/#")
    retained = await received(fresh, lambda m: any(x.topic == twin_like for x in m), timeout_s=10)
    assert on(retained, ALARM) == []


# ---- history ------------------------------------------------------------------------------------


async def test_alarm_rows_waiting_at_connect_are_history_fresh_ones_are_not(
    broker: MosquittoBroker, tmp_path: Path, subscribe: SubscribeFactory
) -> None:
    sub = subscribe(f"{TOPICS.root}/bed/{BED}/#", persistent=True)
    await asyncio.to_thread(sub.wait_subscribed)
    await asyncio.to_thread(broker.stop)
    link_ups: list[float] = []

    def republish() -> None:
        """What the daemon does on a new connection: the present, fresh (lands after the replayed rows)."""
        link_ups.append(time.monotonic())
        pub.submit(
            topic=EVENTS, bed=BED, body=alarm_event("fresh after connect"), priority=DeliveryPriority.ALARM
        )

    pub = make_publisher(broker, tmp_path / "outbox.db", on_link_up=republish)
    await pub.start()
    try:
        pub.submit(topic=EVENTS, bed=BED, body=alarm_event("while offline"), priority=DeliveryPriority.ALARM)
        pub.submit(
            topic=ALARM,
            bed=BED,
            body=alarm_body(AlarmState.ACTIVE, minute=0),
            retain=True,
            priority=DeliveryPriority.ALARM,
        )
        device_event = EventBody(kind=EventKind.DEVICE_CONNECTED, device="vent1", detail="state", at=NOW)
        pub.submit(topic=EVENTS, bed=BED, body=device_event, priority=DeliveryPriority.STATE)
        pub.submit_clear(topic=TOPICS.alarm(BED, "old"), bed=BED)
        await until(lambda: pub.stats().pending == 4, timeout_s=5)
        await asyncio.to_thread(broker.start)
        await received(sub, lambda m: len(on(m, EVENTS)) == 3, timeout_s=15)
        pub.submit(
            topic=EVENTS, bed=BED, body=alarm_event("while connected"), priority=DeliveryPriority.ALARM
        )
        messages = await received(sub, lambda m: len(on(m, EVENTS)) == 4, timeout_s=10)
    finally:
        await pub.stop(flush_timeout_s=1.0)
    events = [EventMessage.model_validate_json(m.payload) for m in on(messages, EVENTS)]
    assert [(e.detail, e.history) for e in events] == [
        ("while offline", True),
        ("state", False),  # below alarm priority: sent as stored
        ("fresh after connect", False),
        ("while connected", False),
    ]
    assert [e.seq for e in events] == [0, 1, 2, 3]
    alarm = on(messages, ALARM)
    assert len(alarm) == 1
    assert AlarmMessage.model_validate_json(alarm[0].payload).history is True
    assert [m.payload for m in on(messages, TOPICS.alarm(BED, "old"))] == [b""]
    for message in [*on(messages, EVENTS), *alarm]:  # rewritten as edge/contract writes JSON
        assert message.payload == as_contract_writes_it(message.payload)
    assert len(link_ups) == 1


async def test_rows_of_a_previous_session_are_history(
    broker: MosquittoBroker, tmp_path: Path, subscribe: SubscribeFactory
) -> None:
    sub = subscribe(EVENTS, persistent=True)
    await asyncio.to_thread(sub.wait_subscribed)
    await asyncio.to_thread(broker.stop)
    store = tmp_path / "outbox.db"
    first = make_publisher(broker, store)
    await first.start()
    first.submit(topic=EVENTS, bed=BED, body=alarm_event("first session"), priority=DeliveryPriority.ALARM)
    await until(lambda: first.stats().pending == 1, timeout_s=5)
    await first.stop(flush_timeout_s=0.2)

    second = make_publisher(broker, store)
    await second.start()
    try:
        await asyncio.to_thread(broker.start)
        await until(lambda: second.connected, timeout_s=10)
        second.submit(
            topic=EVENTS, bed=BED, body=alarm_event("second session"), priority=DeliveryPriority.ALARM
        )
        messages = await received(sub, lambda m: len(m) == 2, timeout_s=15)
    finally:
        await second.stop(flush_timeout_s=1.0)
    events = [EventMessage.model_validate_json(m.payload) for m in messages]
    assert [(e.session, e.detail, e.history) for e in events] == [
        (first.session, "first session", True),
        (second.session, "second session", False),
    ]


# ---- birth and connections ----------------------------------------------------------------------


def summary(alarm_id: str) -> AlarmSummary:
    return AlarmSummary(
        id=alarm_id,
        kind=AlarmKind.PHYSIOLOGICAL,
        condition="spo2_low",
        key="spo2",
        priority=AlarmPriority.HIGH,
        state=AlarmState.ACTIVE,
        text="SpO2 low",
        onset=NOW,
    )


async def test_birth_carries_the_alarms_set_last_and_link_up_is_called_per_connection(
    broker: MosquittoBroker, tmp_path: Path, subscribe: SubscribeFactory
) -> None:
    sub = subscribe(STATUS)
    await asyncio.to_thread(sub.wait_subscribed)
    link_ups: list[float] = []
    pub = make_publisher(broker, tmp_path / "outbox.db", on_link_up=lambda: link_ups.append(time.monotonic()))
    pub.set_birth_state(alarms={BED: [summary("a1")]}, central_station="online")
    await pub.start()
    try:
        first = await received(sub, lambda m: len(births(m)) == 1, timeout_s=10)
        await until(lambda: len(link_ups) == 1, timeout_s=5)
        pub.set_birth_state(
            alarms={BED: [summary("a1"), summary("a2")], "bed2": []}, central_station="offline"
        )
        await asyncio.to_thread(broker.restart)
        second = await received(sub, lambda m: len({b.seq for b in births(m)}) == 2, timeout_s=20)
        await until(lambda: len(link_ups) == 2, timeout_s=5)
    finally:
        await pub.stop(flush_timeout_s=1.0)
    messages = await received(sub, lambda m: any(b"offline" in x.payload for x in m), timeout_s=10)
    birth = births(first)[0]
    assert {bed: [a.id for a in alarms] for bed, alarms in birth.alarms.items()} == {BED: ["a1"]}
    assert birth.central_station == "online"
    latest = max(births(second), key=lambda b: b.seq)
    assert {bed: [a.id for a in alarms] for bed, alarms in latest.alarms.items()} == {
        BED: ["a1", "a2"],
        "bed2": [],
    }
    assert latest.central_station == "offline"
    assert len(link_ups) == 2
    # the offline message and the Wills (the broker restores and publishes them after its restart) carry
    # no alarms
    statuses = [ApplianceStatusMessage.model_validate_json(m.payload) for m in messages]
    offline = [s for s in statuses if s.state == "offline"]
    assert "shutdown" in {s.reason for s in offline}
    assert all(s.alarms == {} and s.central_station is None for s in offline)


@contextlib.contextmanager
def small_disk(directory: Path, *, size: str) -> Iterator[Path]:
    """Mount a tmpfs of `size` on `directory` (skip when not permitted); always unmount."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.strip()}); this test needs a small real disk"
        )
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True, check=False)


def fill(path: Path) -> None:
    """Write `path` until the filesystem is full (ENOSPC)."""
    with path.open("ab", buffering=0) as hog:
        for chunk in (64 * 1024, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    hog.write(b"\1" * chunk)


@pytest.mark.integration
async def test_spilled_alarm_rows_waiting_at_connect_are_history(
    broker: MosquittoBroker, tmp_path: Path, subscribe: SubscribeFactory
) -> None:
    """A disk filled by another writer: alarm rows held in memory when the broker returns are history too."""
    sub = subscribe(EVENTS, persistent=True)
    await asyncio.to_thread(sub.wait_subscribed)
    await asyncio.to_thread(broker.stop)
    with small_disk(tmp_path / "disk", size="1m") as disk:
        pub = make_publisher(broker, disk / "outbox.db")
        await pub.start()
        try:
            pub.submit(topic=EVENTS, bed=BED, body=alarm_event("stored"), priority=DeliveryPriority.ALARM)
            await until(lambda: pub.stats().pending == 1, timeout_s=5)
            await asyncio.to_thread(fill, disk / "hog")
            pub.submit(topic=EVENTS, bed=BED, body=alarm_event("spilled"), priority=DeliveryPriority.ALARM)
            await until(lambda: pub.stats().spilled == 1, timeout_s=10)
            await asyncio.to_thread(broker.start)
            await until(lambda: pub.connected, timeout_s=10)
            pub.submit(topic=EVENTS, bed=BED, body=alarm_event("live"), priority=DeliveryPriority.ALARM)
            messages = await received(sub, lambda m: len(m) == 3, timeout_s=15)
        finally:
            await pub.stop(flush_timeout_s=1.0)
    events = [EventMessage.model_validate_json(m.payload) for m in messages]
    assert [(e.detail, e.history) for e in events] == [("stored", True), ("spilled", True), ("live", False)]
