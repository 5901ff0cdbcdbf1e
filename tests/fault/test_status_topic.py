"""Fault tests of the appliance status topic: stalled links, stale Wills, stop while holding off.

The publisher talks to a real Mosquitto through `StallProxy`; a subscriber connected straight to the
broker records every status message. Whatever the order in which the broker sees old and new
connections, the retained status and the status messages ordered by seq must end on the truth.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, Received, Subscriber
from paho.mqtt.client import Client, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from stall_proxy import StallProxy

from edge.config import MqttConfig, StoreConfig
from edge.contract import Topics
from edge.publisher import Publisher

pytestmark = [pytest.mark.integration]

TOPICS = Topics(prefix="icu/v1", site="site1", ward="icu3", appliance="edge7")
STATUS = TOPICS.appliance_status()
KEEPALIVE_S = 2
HOLD_S = 1.5 * KEEPALIVE_S

SubscribeFactory = Callable[..., Subscriber]


async def until(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Wait on the event loop (not blocking it) until predicate() holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)


def statuses(messages: list[Received], session: int, *, live: bool = True) -> list[dict[str, object]]:
    """Return the status messages of one session (only the live ones, not retained copies, by default)."""
    bodies = [json.loads(m.payload) for m in messages if m.topic == STATUS and not (live and m.retain)]
    return [b for b in bodies if b["session"] == session]


def by_seq(bodies: list[dict[str, object]]) -> list[tuple[int, str]]:
    """Return (seq, state) pairs ordered by seq, as a subscriber that orders by seq sees them."""
    return sorted((int(str(b["seq"])), str(b["state"])) for b in bodies)


def last_by_seq(bodies: list[dict[str, object]]) -> tuple[int, str]:
    """Return the (seq, state) a subscriber ordering by seq ends on ((-1, "") before any)."""
    return max(by_seq(bodies), default=(-1, ""))


@pytest.fixture
def proxy(broker: MosquittoBroker) -> Iterator[StallProxy]:
    instance = StallProxy(upstream_host=broker.host, upstream_port=broker.port)
    yield instance
    instance.close()


def make_publisher(port: int, store: Path) -> Publisher:
    return Publisher(
        mqtt=MqttConfig(
            host="127.0.0.1",
            port=port,
            keepalive=KEEPALIVE_S,
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
            insecure=True,
        ),
        store=StoreConfig(path=store),
        topics=TOPICS,
        appliance_id="edge7",
        beds=["bed1"],
        version="0.1.0-test",
    )


@pytest.fixture
async def publisher(proxy: StallProxy, tmp_path: Path) -> AsyncIterator[Publisher]:
    pub = make_publisher(proxy.port, tmp_path / "outbox.db")
    await pub.start()
    yield pub
    await pub.stop(flush_timeout_s=0.5)


async def retained_status(subscribe: SubscribeFactory) -> dict[str, object]:
    late = subscribe(STATUS)
    messages = await asyncio.to_thread(late.wait_for, lambda m: len(m) >= 1, timeout_s=5)
    assert messages[0].retain
    body: dict[str, object] = json.loads(messages[0].payload)
    return body


async def settle(publisher: Publisher, sub: Subscriber, *, quiet_s: float) -> None:
    """Wait until connected and no status message arrived for `quiet_s` (stale ones flushed)."""
    await until(lambda: publisher.connected, timeout_s=30, what="reconnected after the stall")
    while True:
        count = len(sub.messages)
        await asyncio.sleep(quiet_s)
        if len(sub.messages) == count and publisher.connected:
            return


async def test_stalled_link_ends_online_without_duplicate_wills_and_waits_out_the_old_connection(
    publisher: Publisher, proxy: StallProxy, subscribe: SubscribeFactory
) -> None:
    sub = subscribe(STATUS)
    await asyncio.to_thread(sub.wait_subscribed)
    await until(lambda: publisher.connected, timeout_s=10, what="first connection")
    for _ in range(3):
        accepted = len(proxy.accept_times)
        proxy.stall()
        # paho gives up on the stalled connection and tries twice more through the stalled link;
        # the abandoned attempt's CONNECT is held and reaches the broker after the live one's
        await until(
            lambda: len(proxy.accept_times) >= accepted + 2,  # noqa: B023 - awaited in this iteration
            timeout_s=40,
            what="two attempts in the stall",
        )
        attempts = proxy.accept_times[accepted:]
        # an attempt through the stalled link was given up after a keepalive without CONNACK; the
        # next one waited until the broker must have dropped it (1.5 x keepalive after it)
        assert attempts[1] - attempts[0] >= KEEPALIVE_S + HOLD_S
        proxy.resume(newest_first=True)
        await settle(publisher, sub, quiet_s=2 * HOLD_S)

    bodies = statuses(sub.messages, publisher.session)
    ordered = by_seq(bodies)
    assert ordered[-1][1] == "online", ordered
    wills = Counter(int(str(b["seq"])) for b in bodies if b["state"] == "offline")
    assert all(count == 1 for count in wills.values()), f"a Will seq was published twice: {wills}"
    births = [int(str(b["seq"])) for b in bodies if b["state"] == "online"]
    assert not set(births) & set(wills), "a birth and a Will share a seq"
    retained = await retained_status(subscribe)
    # a birth whose PUBACK was lost with its connection is re-sent by paho after the next birth: the
    # retained copy may be that older birth, but it is a birth of this session
    assert (retained["state"], retained["session"]) == ("online", publisher.session)
    assert retained["seq"] in births


async def test_a_stale_offline_after_the_birth_is_healed_by_a_new_birth(
    broker: MosquittoBroker, proxy: StallProxy, publisher: Publisher, subscribe: SubscribeFactory
) -> None:
    sub = subscribe(STATUS)
    await asyncio.to_thread(sub.wait_subscribed)
    await until(lambda: publisher.connected, timeout_s=10, what="first connection")
    proxy.reset()  # a second connection, so that an older connection's Will exists
    received = await asyncio.to_thread(
        sub.wait_for,
        lambda m: last_by_seq(statuses(m, publisher.session, live=False)) >= (2, "online"),
        timeout_s=10,
    )
    birth = [b for b in statuses(received, publisher.session, live=False) if b["state"] == "online"][-1]
    # what a broker does when it publishes the Will of an older connection of this session late
    stale = dict(birth, state="offline", reason="lost", seq=int(str(birth["seq"])) - 1)
    injector = Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id="stale-will", protocol=MQTTv5
    )
    injector.connect(broker.host, broker.port)
    injector.loop_start()
    try:
        injector.publish(STATUS, json.dumps(stale).encode(), qos=1, retain=True).wait_for_publish(timeout=5)
    finally:
        injector.disconnect()
        injector.loop_stop()
    await asyncio.to_thread(
        sub.wait_for,
        lambda m: last_by_seq(statuses(m, publisher.session))[0] > int(str(birth["seq"])),
        timeout_s=10,
    )
    await until(lambda: publisher.connected, timeout_s=10, what="reconnected")
    retained = await retained_status(subscribe)
    assert retained["state"] == "online"
    assert int(str(retained["seq"])) > int(str(birth["seq"]))
    assert by_seq(statuses(sub.messages, publisher.session))[-1][1] == "online"


async def test_stop_while_holding_off_after_a_stall_is_not_delayed(
    proxy: StallProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.publisher")
    pub = make_publisher(proxy.port, tmp_path / "outbox.db")
    await pub.start()
    try:
        await until(lambda: pub.connected, timeout_s=10, what="first connection")
        proxy.stall()
        await until(lambda: not pub.connected, timeout_s=10, what="the stall noticed")
    finally:
        started = asyncio.get_running_loop().time()
        await pub.stop(flush_timeout_s=0.5)
        took_s = asyncio.get_running_loop().time() - started
    assert any("waiting" in r.getMessage() and "old connection" in r.getMessage() for r in caplog.records)
    assert took_s < HOLD_S
