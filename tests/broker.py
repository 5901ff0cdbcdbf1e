"""Test helpers: a real Mosquitto on a free loopback port and a collecting subscriber.

The broker optionally speaks TLS with a throw-away CA, demands client certificates with an ACL
(mutual TLS), and bridges to another broker.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.client import Client, ConnectFlags, DisconnectFlags, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tools.local_broker import Bridge, BridgeTopic, ListenerSecurity, LocalMosquitto, TlsFiles, find_mosquitto
from tools.mqtt_collector import Received, Subscriber, wait_for

__all__ = [
    "MOSQUITTO",
    "Bridge",
    "BridgeTopic",
    "CertAndKey",
    "CertClient",
    "CertificateAuthority",
    "ListenerSecurity",
    "MosquittoBroker",
    "Received",
    "Subscriber",
    "make_tls_files",
    "wait_for",
]

MOSQUITTO = find_mosquitto()


def require_mosquitto() -> None:
    """Skip a broker test where mosquitto is missing, but fail it in CI, which must run every one."""
    if MOSQUITTO is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed, but CI must run the broker tests (tools/bootstrap.sh)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto); CI installs it")


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


@dataclass(frozen=True, slots=True, kw_only=True)
class CertAndKey:
    """A certificate and its key (PEM files), e.g. what `[mqtt.tls] cert/key` name."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateAuthority:
    """A throw-away CA made with `cryptography`, issuing server and client certificates for a test."""

    directory: Path
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca_path: Path

    @classmethod
    def create(cls, directory: Path, *, common_name: str = "icu-edge test CA") -> CertificateAuthority:
        """Make the CA key and self-signed certificate; write the certificate to `directory/ca.pem`."""
        directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(tz=dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        ca_path = directory / "ca.pem"
        ca_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory=directory, name=name, key=key, cert=cert, ca_path=ca_path)

    def _issue(
        self, *, common_name: str, stem: str, server_names: Sequence[str], usage: x509.ObjectIdentifier
    ) -> CertAndKey:
        now = dt.datetime.now(tz=dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(n) for n in server_names]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        files = CertAndKey(cert=self.directory / f"{stem}.pem", key=self.directory / f"{stem}.key")
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(files.key, key)
        return files

    def server_files(self, *, names: Sequence[str] = ("localhost", "127.0.0.1")) -> TlsFiles:
        """Issue the broker's certificate for `names` (DNS names or IP addresses)."""
        issued = self._issue(
            common_name=names[0], stem="server", server_names=names, usage=ExtendedKeyUsageOID.SERVER_AUTH
        )
        return TlsFiles(ca=self.ca_path, cert=issued.cert, key=issued.key)

    def client_files(self, common_name: str) -> CertAndKey:
        """Issue a client certificate whose CN is `common_name` (the broker's username for it)."""
        return self._issue(
            common_name=common_name,
            stem=f"client-{common_name}",
            server_names=(),
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_tls_files(directory: Path) -> TlsFiles:
    """Generate a CA and a server certificate (SAN localhost, 127.0.0.1) with `cryptography`."""
    return CertificateAuthority.create(directory).server_files()


class MosquittoBroker(LocalMosquitto):
    """A LocalMosquitto whose TLS files, when asked for, are a throw-away CA made for the test.

    With `security` the listener also demands client certificates of that CA (`self.ca` issues
    them) and applies its ACL; `server_names` are what the broker's certificate is issued for.
    """

    def __init__(
        self,
        *,
        directory: Path,
        tls: bool = False,
        persistence: bool = False,
        port: int | None = None,
        security: ListenerSecurity | None = None,
        bridges: Sequence[Bridge] = (),
        server_names: Sequence[str] = ("localhost", "127.0.0.1"),
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = CertificateAuthority.create(directory) if tls or security is not None else None
        super().__init__(
            directory=directory,
            port=port,
            persistence=persistence,
            tls_files=self.ca.server_files(names=server_names) if self.ca is not None else None,
            security=security,
            bridges=bridges,
        )


class CertClient:
    """A paho MQTT v5 client with a client certificate, driven step by step by a test.

    Unlike `Subscriber` it reports what the broker answered: whether it accepted the connection,
    the reason code of each PUBACK (0x87 Not authorized for a publish the ACL denies) and of each
    SUBACK, and whether the broker dropped the connection.
    """

    def __init__(
        self,
        *,
        broker: LocalMosquitto,
        identity: CertAndKey | None,
        client_id: str,
        ca: Path | None = None,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._refused: ReasonCode | None = None
        self._disconnects = 0
        self._acks: dict[int, ReasonCode] = {}
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._messages: list[Received] = []
        self._client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTv5
        )
        assert broker.tls_files is not None, "CertClient speaks TLS only"
        self._client.tls_set(
            ca_certs=str(ca or broker.tls_files.ca),
            certfile=str(identity.cert) if identity is not None else None,
            keyfile=str(identity.key) if identity is not None else None,
        )
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._host = broker.host
        self._port = broker.port

    def connect(self, *, timeout_s: float = 5.0) -> bool:
        """Connect and wait for a successful CONNACK; False when refused, dropped or silent."""
        try:
            self._client.connect(self._host, self._port, keepalive=30)
        except (OSError, ssl.SSLError):
            return False
        self._client.loop_start()
        return self._connected.wait(timeout_s)

    @property
    def connected(self) -> bool:
        """Whether the broker accepted the connection and has not dropped it since."""
        with self._lock:
            return self._connected.is_set() and self._disconnects == 0

    @property
    def refused(self) -> ReasonCode | None:
        """The CONNACK's reason code when the broker refused the connection."""
        with self._lock:
            return self._refused

    @property
    def disconnects(self) -> int:
        """How many times the connection ended."""
        with self._lock:
            return self._disconnects

    def publish(self, topic: str, payload: bytes, *, timeout_s: float = 5.0) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self._client.publish(topic, payload, qos=1)
        if not wait_for(lambda: self._ack(info.mid) is not None, timeout_s=timeout_s):
            raise TimeoutError(f"no PUBACK for {topic} within {timeout_s} s")
        reason = self._ack(info.mid)
        assert reason is not None
        return reason

    def publish_qos0(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 0 (the broker answers nothing, allowed or not)."""
        self._client.publish(topic, payload, qos=0).wait_for_publish(timeout=5)

    def subscribe(self, topic_filter: str, *, timeout_s: float = 5.0) -> list[ReasonCode]:
        """Subscribe at QoS 1 and return the SUBACK's reason codes."""
        _, mid = self._client.subscribe(topic_filter, qos=1)
        assert mid is not None
        if not wait_for(lambda: self._suback(mid) is not None, timeout_s=timeout_s):
            raise TimeoutError(f"no SUBACK for {topic_filter} within {timeout_s} s")
        reasons = self._suback(mid)
        assert reasons is not None
        return reasons

    @property
    def messages(self) -> list[Received]:
        """Return a copy of what arrived so far."""
        with self._lock:
            return list(self._messages)

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def drop(self) -> None:
        """Vanish without a DISCONNECT (as a pulled cable would), so the broker sends the Will."""
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:
            sock.close()

    def _ack(self, mid: int) -> ReasonCode | None:
        with self._lock:
            return self._acks.get(mid)

    def _suback(self, mid: int) -> list[ReasonCode] | None:
        with self._lock:
            return self._subacks.get(mid)

    def _on_connect(
        self, client: Client, userdata: Any, flags: ConnectFlags, reason: ReasonCode, props: Properties | None
    ) -> None:
        if reason.is_failure:
            with self._lock:
                self._refused = reason
        else:
            self._connected.set()

    def _on_disconnect(
        self,
        client: Client,
        userdata: Any,
        flags: DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        with self._lock:
            self._disconnects += 1

    def _on_publish(
        self, client: Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties
    ) -> None:
        with self._lock:
            self._acks[mid] = reason

    def _on_subscribe(
        self, client: Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Properties | None
    ) -> None:
        with self._lock:
            self._subacks[mid] = list(reasons)

    def _on_message(self, client: Client, userdata: Any, message: MQTTMessage) -> None:
        with self._lock:
            self._messages.append(
                Received(
                    topic=message.topic,
                    payload=bytes(message.payload),
                    retain=message.retain,
                    received_wall_s=time.time(),
                )
            )
