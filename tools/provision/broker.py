"""Check the broker before a config names it: reachable, its TLS certificate trusted, a round trip.

The round trip publishes one QoS 1 message on the appliance's diag subtopic
`{prefix}/{site}/{ward}/appliance/{id}/diag/ping` and waits for it to come back: a topic no central
station reads as data, allowed by the shipped ACL (`pattern readwrite .../appliance/%u/diag/#`).
The client id is the daemon's plus `-provision`, so on a broker that takes the client id as given a
running daemon is not displaced (a broker with `use_username_as_clientid` still would: run provision
with the service stopped).

Threads: paho's network thread runs the callbacks, which only record what arrived under one lock;
the calling thread waits on events.
"""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.config import AppConfig, MqttConfig, read_secret
from edge.publisher import tls_context

EX_CONFIG = 78
EX_UNAVAILABLE = 69


class BrokerProblem(Exception):
    """The broker check failed: one line saying why, and the exit code it means."""

    def __init__(self, line: str, *, exit_code: int) -> None:
        super().__init__(line)
        self.line = line
        self.exit_code = exit_code


def ping_topic(config: AppConfig) -> str:
    """Return the appliance's diag subtopic the round trip uses (never a contract data topic)."""
    a = config.appliance
    return f"{config.mqtt.topic_prefix}/{a.site}/{a.ward}/appliance/{a.id}/diag/ping"


def check_tls(mqtt: MqttConfig, *, timeout_s: float) -> str:
    """Connect and do the TLS handshake; return what was negotiated, or raise BrokerProblem."""
    where = f"broker {mqtt.host}:{mqtt.port}"
    try:
        raw = socket.create_connection((mqtt.host, mqtt.port), timeout=timeout_s)
    except OSError as exc:
        raise BrokerProblem(f"{where} unreachable: {exc.strerror or exc}", exit_code=EX_UNAVAILABLE) from exc
    if mqtt.tls is None:
        raw.close()
        return "TCP connection made (plaintext: insecure = true)"
    try:
        context = tls_context(mqtt.tls)
        with context.wrap_socket(raw, server_hostname=mqtt.host) as tls:
            peer = tls.getpeercert() or {}
            names = [
                pair[1]
                for rdn in peer.get("subject", ())
                for pair in rdn
                if isinstance(pair, tuple) and pair[0] == "commonName"
            ]
            cipher = tls.cipher()
            return (
                f"{tls.version()} {cipher[0] if cipher else ''}, broker certificate "
                f"CN={names[0] if names else '?'} valid until {peer.get('notAfter', '?')}"
            )
    except ssl.SSLCertVerificationError as exc:
        raise BrokerProblem(
            f"{where}: TLS certificate verification failed: {exc.verify_message} "
            f"(CA {mqtt.tls.ca}, name {mqtt.host})",
            exit_code=EX_CONFIG,
        ) from exc
    except ssl.SSLError as exc:
        raise BrokerProblem(
            f"{where}: TLS handshake failed: {exc.reason or exc}", exit_code=EX_CONFIG
        ) from exc
    except OSError as exc:
        raise BrokerProblem(
            f"{where}: TLS handshake failed: {exc.strerror or exc}", exit_code=EX_UNAVAILABLE
        ) from exc
    finally:
        raw.close()


@dataclass
class _Progress:
    connack: ReasonCode | None = None
    dropped: ReasonCode | None = None
    puback: ReasonCode | None = None
    echo_at_s: float | None = None


class _RoundTrip:
    """One connection that subscribes to the ping topic, publishes a nonce and waits for it."""

    def __init__(self, config: AppConfig, *, nonce: str) -> None:
        mqtt = config.mqtt
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._progress = _Progress()
        self._nonce = nonce.encode()
        self.client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"{mqtt.client_id or f'icu-edge-{config.appliance.id}'}-provision",
            protocol=MQTTv5,
        )
        if mqtt.username is not None:
            password = read_secret(mqtt.password_file) if mqtt.password_file is not None else None
            self.client.username_pw_set(mqtt.username, password)
        if mqtt.tls is not None:
            self.client.tls_set_context(tls_context(mqtt.tls))
            self.client.tls_insecure_set(mqtt.tls.insecure_skip_hostname_check)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message

    def wait(self, done: str, *, timeout_s: float) -> _Progress:
        """Wait until the progress field `done` is set or the connection dropped; return a snapshot."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while getattr(self._progress, done) is None and self._progress.dropped is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return _Progress(**vars(self._progress))

    def _update(self, **fields: Any) -> None:
        with self._changed:
            for name, value in fields.items():
                if getattr(self._progress, name) is None:
                    setattr(self._progress, name, value)
            self._changed.notify_all()

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        self._update(connack=reason)

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        self._update(dropped=reason)

    def _on_publish(
        self, client: Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties
    ) -> None:
        self._update(puback=reason)

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        if self._nonce in message.payload:
            self._update(echo_at_s=time.monotonic())


def round_trip(config: AppConfig, *, timeout_s: float) -> str:
    """Connect as the appliance, publish on its ping topic and see it come back; raise BrokerProblem."""
    mqtt = config.mqtt
    where = f"broker {mqtt.host}:{mqtt.port}"
    topic = ping_topic(config)
    nonce = secrets.token_hex(8)
    trip = _RoundTrip(config, nonce=nonce)
    try:
        trip.client.connect(mqtt.host, mqtt.port, keepalive=max(10, int(timeout_s)))
    except ssl.SSLError as exc:
        raise BrokerProblem(
            f"{where}: TLS handshake failed: {exc.reason or exc}", exit_code=EX_CONFIG
        ) from exc
    except OSError as exc:
        raise BrokerProblem(f"{where} unreachable: {exc.strerror or exc}", exit_code=EX_UNAVAILABLE) from exc
    trip.client.loop_start()
    try:
        state = trip.wait("connack", timeout_s=timeout_s)
        if state.connack is None:
            why = (
                "closed the connection"
                if state.dropped is not None
                else f"did not answer within {timeout_s:g} s"
            )
            raise BrokerProblem(
                f"{where} {why} before accepting the MQTT connection (client certificate or login refused?)",
                exit_code=EX_CONFIG,
            )
        if state.connack.is_failure:
            raise BrokerProblem(f"{where} refused the connection: {state.connack}", exit_code=EX_CONFIG)
        trip.client.subscribe(topic, qos=1)
        payload = json.dumps({"ping": nonce, "by": "icu-edge provision"}).encode()
        sent_at_s = time.monotonic()
        trip.client.publish(topic, payload, qos=1)
        state = trip.wait("puback", timeout_s=timeout_s)
        if state.puback is None:
            raise BrokerProblem(
                f"{where}: no PUBACK on {topic} within {timeout_s:g} s", exit_code=EX_UNAVAILABLE
            )
        if state.puback.is_failure:
            raise BrokerProblem(
                f"{where} refused a publish on {topic}: {state.puback} (its ACL needs "
                f"`pattern readwrite {topic.rsplit('/appliance/', 1)[0]}/appliance/%u/diag/#`)",
                exit_code=EX_CONFIG,
            )
        state = trip.wait("echo_at_s", timeout_s=timeout_s)
        if state.echo_at_s is None:
            raise BrokerProblem(
                f"{where}: the ping on {topic} did not come back within {timeout_s:g} s "
                "(does the ACL let the appliance read its diag topics?)",
                exit_code=EX_CONFIG,
            )
        return f"round trip on {topic} in {(state.echo_at_s - sent_at_s) * 1000:.1f} ms"
    finally:
        trip.client.disconnect()
        trip.client.loop_stop()
