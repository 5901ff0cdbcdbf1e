"""The wave lane against a real Mosquitto: QoS 0, never stored, never ahead of what matters more."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from broker import MosquittoBroker
from test_publisher import (
    BED,
    TOPICS,
    VITALS,
    SubscribeFactory,
    make_publisher,
    on,
    received,
    until,
    vitals,
)

from edge.model import WaveBody, WaveMessage
from edge.outbox import DeliveryPriority
from edge.publisher import WAVE_BURST, WAVE_QUEUE_MAX, Publisher

ECG = TOPICS.wave(BED, "ecg")
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
async def publisher(broker: MosquittoBroker, tmp_path: Path) -> AsyncIterator[Publisher]:
    pub = make_publisher(broker, tmp_path / "outbox.db")
    await pub.start()
    yield pub
    await pub.stop(flush_timeout_s=1.0)


def ecg_window(index: int) -> WaveBody:
    return WaveBody(
        device="mon-1",
        signal="ecg",
        unit="mV",
        label="ECG",
        mdc="MDC_ECG_ELEC_POTL_II",
        sample_period_s=1 / 500,
        start=T0,
        samples=[float(index)] * 500,
        gap_before=False,
    )


async def test_waves_arrive_as_qos0_in_order_and_leave_the_outbox_empty(
    publisher: Publisher, subscribe: SubscribeFactory
) -> None:
    sub = subscribe(f"{TOPICS.root}/bed/+/wave/#")
    await asyncio.to_thread(sub.wait_subscribed)
    await until(lambda: publisher.stats().connected, timeout_s=10)
    for i in range(20):
        publisher.submit_wave(topic=ECG, bed=BED, body=ecg_window(i))
    messages = on(await received(sub, lambda m: len(on(m, ECG)) >= 20, timeout_s=10), ECG)
    decoded = [WaveMessage.model_validate_json(m.payload) for m in messages]
    assert [d.samples[0] for d in decoded] == [float(i) for i in range(20)]
    assert [d.seq for d in decoded] == list(range(20))
    assert {m.qos for m in messages} == {0}
    assert not any(m.retain for m in messages)
    assert publisher.stats().waves_sent == 20
    assert publisher.stats().pending == 0, "a wave is never stored in the outbox"


async def test_a_wave_burst_never_goes_ahead_of_observations(
    publisher: Publisher, subscribe: SubscribeFactory
) -> None:
    sub = subscribe(f"{TOPICS.root}/#")
    await asyncio.to_thread(sub.wait_subscribed)
    await until(lambda: publisher.stats().connected, timeout_s=10)
    # Bodies built first, and the submissions made under a long GIL switch interval: the 50 observations
    # reach the worker's queue together, as a burst from the loop does. With the default 5 ms interval a
    # loaded machine could pause this thread between two submissions and let the worker (rightly, with
    # nothing waiting) send a second wave burst; that would test the scheduler, not the lane.
    observations = [vitals(i) for i in range(50)]
    switch_interval_s = sys.getswitchinterval()
    sys.setswitchinterval(1.0)
    try:
        for i in range(WAVE_QUEUE_MAX):
            publisher.submit_wave(topic=ECG, bed=BED, body=ecg_window(i))
        for body in observations:
            publisher.submit(topic=VITALS, bed=BED, body=body, priority=DeliveryPriority.OBSERVATION)
    finally:
        sys.setswitchinterval(switch_interval_s)
    messages = await received(sub, lambda m: len(on(m, VITALS)) >= 50 and len(on(m, ECG)) >= 1, timeout_s=15)
    order = [m.topic for m in messages if m.topic in (VITALS, ECG)]
    # 256 waves were queued before the 50 observations: the worker may be inside one wave burst when
    # they arrive, but yields to them at once, so at most one burst of waves goes out before the last
    # observation.
    last_vital = len(order) - 1 - order[::-1].index(VITALS)
    assert order[:last_vital].count(ECG) <= WAVE_BURST
    await until(
        lambda: publisher.stats().waves_sent + publisher.stats().waves_dropped >= WAVE_QUEUE_MAX, timeout_s=15
    )
    assert [json.loads(m.payload)["seq"] for m in on(sub.messages, VITALS)] == list(range(50))


async def test_waves_while_the_broker_is_away_are_dropped_and_counted(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    publisher = make_publisher(broker, tmp_path / "outbox.db")
    await publisher.start()
    try:
        await until(lambda: publisher.stats().connected, timeout_s=10)
        broker.stop()
        await until(lambda: not publisher.stats().connected, timeout_s=10)
        for i in range(WAVE_QUEUE_MAX + 10):
            publisher.submit_wave(topic=ECG, bed=BED, body=ecg_window(i))
        await until(lambda: publisher.stats().waves_dropped == WAVE_QUEUE_MAX + 10, timeout_s=10)
        assert publisher.stats().waves_sent == 0
        assert publisher.stats().pending == 0
    finally:
        await publisher.stop(flush_timeout_s=0.5)


async def test_packets_leave_at_once_without_waiting_for_the_brokers_ack(publisher: Publisher) -> None:
    """TCP_NODELAY: with Nagle on, an observation written after a wave waited for the delayed ACK."""
    await until(lambda: publisher.stats().connected, timeout_s=10)
    client = publisher._client
    assert client is not None
    sock = client.socket()
    assert sock is not None
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
