"""The ward view's MQTT side: a paho client whose callbacks only enqueue, and the drain that applies.

Threads: paho's network thread runs the callbacks, which put `Connected`, `Disconnected` and
`Received` events on one queue; the interactive view's key reader (tools/watch/keys.py) puts
`KeyPress` events on the same queue. The main thread alone takes from it, applies to `WardState`,
subscribes after each (re)connection, and renders.
"""

from __future__ import annotations

import logging
import queue
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tools.watch.state import WardState

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Connected:
    """The broker answered a CONNECT."""

    failure: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection to the broker ended (paho reconnects by itself)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Received:
    """One delivered message."""

    topic: str
    payload: bytes
    retained: bool


@dataclass(frozen=True, slots=True)
class KeyPress:
    """A key the user pressed in the interactive view (a name from `tools.watch.keys`)."""

    key: str


Event = Connected | Disconnected | Received | KeyPress


@dataclass(slots=True)
class Drained:
    """What one drain did: whether the state changed, and the keys pressed meanwhile, in order."""

    changed: bool = False
    keys: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerUrl:
    """Where the broker is."""

    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerUrl:
    """Parse `mqtt://host[:port]` or `mqtts://host[:port]`; raise ValueError when it is neither."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"broker URL must be mqtt://host:port or mqtts://host:port, not {url!r}")
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"bad port in broker URL {url!r}") from error
    if not parts.hostname:
        raise ValueError(f"no host in broker URL {url!r}")
    tls = parts.scheme == "mqtts"
    return BrokerUrl(host=parts.hostname, port=port or (8883 if tls else 1883), tls=tls)


def make_client(events: queue.Queue[Event]) -> mqtt.Client:
    """Return a paho client (MQTT v5) whose callbacks only put events on `events`."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"icu-edge-watch-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv5,
    )

    def on_connect(
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        events.put(Connected(failure=reason_code.is_failure, reason=str(reason_code)))

    def on_disconnect(
        _client: mqtt.Client,
        _userdata: object,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        events.put(Disconnected(reason=str(reason_code)))

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        events.put(Received(topic=message.topic, payload=bytes(message.payload), retained=message.retain))

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    return client


def drain(
    client: mqtt.Client, events: queue.Queue[Event], state: WardState, *, wait_s: float, subscription: str
) -> Drained:
    """Apply every queued event, waiting up to `wait_s` for the first; collect the keys pressed."""
    drained = Drained()
    try:
        event = events.get(timeout=max(wait_s, 0.0))
    except queue.Empty:
        return drained
    while True:
        if isinstance(event, KeyPress):
            drained.keys.append(event.key)
        else:
            drained.changed = True
            try:
                _handle(client, event, state, subscription=subscription)
            except Exception:
                LOGGER.exception("ward view failed to apply %r", event)
                state.note_internal_error()
        try:
            event = events.get_nowait()
        except queue.Empty:
            return drained


def _handle(
    client: mqtt.Client, event: Connected | Disconnected | Received, state: WardState, *, subscription: str
) -> None:
    if isinstance(event, Received):
        state.apply(event.topic, event.payload, retained=event.retained)
    elif isinstance(event, Connected):
        if event.failure:
            state.set_connection(f"refused ({event.reason})")
        else:
            state.set_connection("connected")
            client.subscribe(subscription, qos=1)
    else:
        state.set_connection(f"disconnected ({event.reason}), reconnecting")
