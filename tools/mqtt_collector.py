"""A paho subscriber that collects messages, for tests, benchmarks and field checks.

It subscribes like a central station would and keeps everything it receives, so a caller can wait
for a condition on what arrived (`wait_for`) instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


def wait_for(predicate: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.02) -> bool:
    """Poll `predicate` until it is true or `timeout_s` passed; return its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    """One message a `Subscriber` got."""

    topic: str
    payload: bytes
    retain: bool
    received_wall_s: float
    """time.time() when the message arrived (to compare with the appliance's received_at)"""
    qos: int = 1
    """QoS of the delivery (the lower of the publisher's and the subscription's)."""


class Subscriber:
    """A paho client that collects every message under `topic_filter` into a thread-safe list.

    It reconnects by itself (paho's loop) and re-subscribes on every connect, so it follows a broker
    restart; `connects` counts successful connections.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        topic_filter: str,
        client_id: str = "test-subscriber",
        persistent: bool = False,
        tls_ca: Path | None = None,
    ) -> None:
        self._filter = topic_filter
        self._lock = threading.Lock()
        self._messages: list[Received] = []
        self._connects = 0
        self._subscribed = 0
        self._client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTv5
        )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]
        if tls_ca is not None:
            self._client.tls_set(ca_certs=str(tls_ca))
        properties = None
        if persistent:
            # the broker keeps the subscription and queues messages while this client is away
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 3600
        self._client.connect_async(
            host, port, keepalive=30, clean_start=not persistent, properties=properties
        )
        self._client.loop_start()

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        if not reason.is_failure:
            client.subscribe(self._filter, qos=1)
            with self._lock:
                self._connects += 1

    def _on_subscribe(
        self, client: Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Properties | None
    ) -> None:
        with self._lock:
            self._subscribed += 1

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        with self._lock:
            self._messages.append(
                Received(
                    topic=message.topic,
                    payload=bytes(message.payload),
                    retain=message.retain,
                    received_wall_s=time.time(),
                    qos=message.qos,
                )
            )

    @property
    def messages(self) -> list[Received]:
        """Return a copy of what arrived so far."""
        with self._lock:
            return list(self._messages)

    @property
    def subscribed(self) -> int:
        """How many SUBACKs arrived."""
        with self._lock:
            return self._subscribed

    def on_topic(self, topic: str) -> list[Received]:
        """Return the messages received on one topic, in arrival order."""
        return [m for m in self.messages if m.topic == topic]

    def wait_subscribed(self, *, count: int = 1, timeout_s: float = 5.0) -> None:
        """Wait until `count` subscriptions were acknowledged."""
        if not wait_for(lambda: self.subscribed >= count, timeout_s=timeout_s):
            raise TimeoutError(f"subscription {self._filter!r} not acknowledged within {timeout_s} s")

    def wait_for(self, predicate: Callable[[list[Received]], bool], *, timeout_s: float) -> list[Received]:
        """Wait until `predicate(messages)` holds; return the messages or raise TimeoutError."""
        if wait_for(lambda: predicate(self.messages), timeout_s=timeout_s):
            return self.messages
        raise TimeoutError(f"condition not met within {timeout_s} s; got {len(self.messages)} messages")

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()
