"""The publisher's TLS client against a real Mosquitto with bad certificates: each failure is explained.

Wrong CA, host-name mismatch and an expired server certificate must each be logged with the
verification reason once (not once per retry), and `stats().last_error` must say it. The client
speaks TLS 1.2 or newer only, and every insecure setting is logged loudly at start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, require_mosquitto
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.config import MqttConfig, StoreConfig, TlsConfig
from edge.contract import Topics
from edge.publisher import Publisher
from tools.local_broker import LocalMosquitto, TlsFiles

pytestmark = [pytest.mark.integration]

TOPICS = Topics(prefix="icu/v1", site="site1", ward="icu3", appliance="edge7")
NOW = dt.datetime.now(tz=dt.UTC)
ATTEMPTS = 4


class Authority:
    """A throw-away CA that signs server certificates with chosen names and validity."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=30))
            .not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def write_ca(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def server_files(
        self,
        directory: Path,
        *,
        dns_names: tuple[str, ...] = ("localhost",),
        ip_addresses: tuple[str, ...] = ("127.0.0.1",),
        not_before: dt.datetime = NOW - dt.timedelta(days=1),
        not_after: dt.datetime = NOW + dt.timedelta(days=1),
    ) -> TlsFiles:
        """Write this CA, a server certificate signed by it, and the server key into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        files = TlsFiles(
            ca=self.write_ca(directory / "ca.pem"),
            cert=directory / "server.pem",
            key=directory / "server.key",
        )
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        files.key.chmod(0o600)
        return files


BrokerFactory = Callable[..., LocalMosquitto]


@pytest.fixture
def tls_broker_with(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Return a factory of running TLS Mosquittos with the given files (and extra listener lines)."""
    require_mosquitto()
    started: list[LocalMosquitto] = []

    def make(files: TlsFiles, *, extra_lines: tuple[str, ...] = ()) -> LocalMosquitto:
        instance = LocalMosquitto(directory=tmp_path / f"broker{len(started)}", tls_files=files)
        if extra_lines:
            with instance.conf_path.open("a", encoding="utf-8") as conf:
                conf.write("\n".join(extra_lines) + "\n")
        instance.start()
        started.append(instance)
        return instance

    yield make
    for instance in started:
        instance.stop()


def make_publisher(*, host: str, port: int, store: Path, tls: TlsConfig | None) -> Publisher:
    return Publisher(
        mqtt=MqttConfig(
            host=host, port=port, reconnect_min_s=0.05, reconnect_max_s=0.1, tls=tls, insecure=tls is None
        ),
        store=StoreConfig(path=store),
        topics=TOPICS,
        appliance_id="edge7",
        beds=["bed1"],
        version="0.1.0-test",
    )


async def until(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)


async def refused_reason(
    *, port: int, host: str, tls: TlsConfig, store: Path, caplog: pytest.LogCaptureFixture
) -> tuple[str, list[str]]:
    """Let the publisher fail `ATTEMPTS` times; return its last_error and the WARNING+ lines it logged."""
    caplog.set_level(logging.DEBUG, logger="edge.publisher")
    pub = make_publisher(host=host, port=port, store=store, tls=tls)
    await pub.start()
    try:
        await until(
            lambda: sum("cannot connect" in r.getMessage() for r in caplog.records) >= ATTEMPTS,
            timeout_s=30,
            what=f"{ATTEMPTS} attempts",
        )
        await until(lambda: pub.stats().last_error is not None, timeout_s=5, what="last_error set")
        assert not pub.connected
        last_error = pub.stats().last_error
    finally:
        await pub.stop(flush_timeout_s=0.1)
    assert last_error is not None
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "edge.publisher" and r.levelno >= logging.WARNING and "INSECURE" not in r.getMessage()
    ]
    return last_error, lines


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong CA", "self-signed certificate in certificate chain"),
        ("host name", "Hostname mismatch, certificate is not valid for 'localhost'"),
        ("expired", "certificate has expired"),
    ],
)
async def test_a_certificate_failure_is_logged_once_with_its_reason(
    case: str, reason: str, tls_broker_with: BrokerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    authority = Authority("ward CA")
    server = tmp_path / "server"
    client_ca = tmp_path / "client-ca.pem"
    if case == "wrong CA":
        files = authority.server_files(server)
        Authority("some other CA").write_ca(client_ca)
    elif case == "host name":
        files = authority.server_files(server, dns_names=("broker.invalid",), ip_addresses=())
        authority.write_ca(client_ca)
    else:
        files = authority.server_files(
            server, not_before=NOW - dt.timedelta(days=10), not_after=NOW - dt.timedelta(days=1)
        )
        authority.write_ca(client_ca)
    broker = tls_broker_with(files)
    last_error, lines = await refused_reason(
        port=broker.port,
        host="localhost",
        tls=TlsConfig(ca=client_ca),
        store=tmp_path / "outbox.db",
        caplog=caplog,
    )
    assert reason in last_error
    assert last_error.startswith("cannot reach the broker: TLS certificate verification failed")
    assert len([line for line in lines if reason in line]) == 1, lines
    assert lines == [line for line in lines if reason in line], f"another warning was logged: {lines}"


class Tls11Server:
    """A TLS server that speaks TLS 1.1 at most (Mosquitto 2 sets only a minimum); it only shakes hands."""

    def __init__(self, files: TlsFiles) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.minimum_version = ssl.TLSVersion.TLSv1
        self._context.maximum_version = ssl.TLSVersion.TLSv1_1
        self._context.set_ciphers("DEFAULT:@SECLEVEL=0")
        self._context.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.handshakes: list[str] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(2)
            try:
                with self._context.wrap_socket(conn, server_side=True) as tls:
                    self.handshakes.append(str(tls.version()))
            except OSError:
                conn.close()

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_a_server_that_offers_only_tls_1_1_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = Authority("ward CA").server_files(tmp_path / "server")
    server = Tls11Server(files)
    try:
        # the control: a client that allows TLS 1.1 does shake hands with this server
        legacy = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        legacy.minimum_version = ssl.TLSVersion.TLSv1
        legacy.set_ciphers("DEFAULT:@SECLEVEL=0")
        legacy.load_verify_locations(cafile=str(files.ca))
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            legacy.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == "TLSv1.1"
        last_error, lines = await refused_reason(
            port=server.port,
            host="127.0.0.1",
            tls=TlsConfig(ca=files.ca),
            store=tmp_path / "outbox.db",
            caplog=caplog,
        )
    finally:
        server.close()
    assert server.handshakes == ["TLSv1.1"]  # the control only: the publisher never got that far
    assert last_error.startswith("cannot reach the broker: TLS handshake failed"), last_error
    assert "VERSION" in last_error.upper()
    assert len(lines) == 1, lines


async def test_skipping_the_host_name_check_connects_and_says_so_loudly(
    tls_broker_with: BrokerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.publisher")
    authority = Authority("ward CA")
    files = authority.server_files(tmp_path / "server", dns_names=("broker.invalid",), ip_addresses=())
    broker = tls_broker_with(files)
    pub = make_publisher(
        host="localhost",
        port=broker.port,
        store=tmp_path / "outbox.db",
        tls=TlsConfig(ca=files.ca, insecure_skip_hostname_check=True),
    )
    await pub.start()
    try:
        await until(lambda: pub.connected, timeout_s=10, what="connected")
    finally:
        await pub.stop(flush_timeout_s=0.5)
    loud = [r for r in caplog.records if r.levelno == logging.WARNING and "INSECURE" in r.getMessage()]
    assert len(loud) == 1
    assert "insecure_skip_hostname_check" in loud[0].getMessage()


async def test_plaintext_says_so_loudly_at_start(
    broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.publisher")
    pub = make_publisher(host=broker.host, port=broker.port, store=tmp_path / "outbox.db", tls=None)
    await pub.start()
    try:
        await until(lambda: pub.connected, timeout_s=10, what="connected")
    finally:
        await pub.stop(flush_timeout_s=0.5)
    loud = [r for r in caplog.records if r.levelno == logging.WARNING and "INSECURE" in r.getMessage()]
    assert len(loud) == 1
    assert "plaintext" in loud[0].getMessage()
    assert "insecure = true" in loud[0].getMessage()
