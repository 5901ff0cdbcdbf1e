"""Mutual TLS and ACLs: the ward broker of systemd/README.md, with the sample ACL as it ships.

A real Mosquitto demands a client certificate of the ward CA (TLS 1.2 or later), takes the
certificate's CN as the identity (`use_identity_as_username`, `use_username_as_clientid`) and applies
`systemd/mosquitto-acl.sample`, rendered with this test's topic root and appliance id. The
appliance is the real daemon where its behaviour is under test; a `CertClient` stands in for the
central station, a foreign appliance (`edge-9999`) and, where the daemon has no such behaviour
(subscribing to commands), for the appliance's identity.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import (
    CertAndKey,
    CertClient,
    CertificateAuthority,
    ListenerSecurity,
    MosquittoBroker,
    Received,
    require_mosquitto,
    wait_for,
)
from ward import APPLIANCE, REPO_ROOT, ROOT, STATUS_TOPIC, Ward, WardLayout, bed_topic

pytestmark = [pytest.mark.integration]

SAMPLE_ACL = REPO_ROOT / "systemd" / "mosquitto-acl.sample"
SAMPLE_ROOT = "icu/v1/hosp-a/icu-3"
SAMPLE_APPLIANCE = "edge-0001"
STATION = "central-station"
FOREIGN = "edge-9999"
NOT_AUTHORIZED = 0x87
BED = "bed-01"


def render_sample_acl(directory: Path) -> Path:
    """Write systemd/mosquitto-acl.sample with this suite's topic root and appliance id."""
    text = SAMPLE_ACL.read_text(encoding="utf-8")
    assert SAMPLE_ROOT in text, "the sample's example topic root moved"
    assert f"user {SAMPLE_APPLIANCE}" in text, "the sample's example appliance moved"
    rendered = directory / "icu-edge.acl"
    rendered.write_text(
        text.replace(SAMPLE_ROOT, ROOT).replace(SAMPLE_APPLIANCE, APPLIANCE), encoding="utf-8"
    )
    return rendered


def ward_broker_at(
    directory: Path, *, server_names: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> MosquittoBroker:
    """A ward broker set up as systemd/README.md says, not yet started."""
    require_mosquitto()
    directory.mkdir(parents=True, exist_ok=True)
    return MosquittoBroker(
        directory=directory,
        security=ListenerSecurity(acl_file=render_sample_acl(directory), use_username_as_clientid=True),
        server_names=server_names,
    )


@pytest.fixture
def ward_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    instance = ward_broker_at(tmp_path / "ward-broker")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def ca_of(broker: MosquittoBroker) -> CertificateAuthority:
    assert broker.ca is not None
    return broker.ca


@pytest.fixture
def station(ward_broker: MosquittoBroker) -> Iterator[CertClient]:
    """The central station: its own certificate, subscribed to the whole ward."""
    client = CertClient(
        broker=ward_broker, identity=ca_of(ward_broker).client_files(STATION), client_id="station"
    )
    assert client.connect(), ward_broker.log_tail()
    assert not client.subscribe(f"{ROOT}/#")[0].is_failure
    try:
        yield client
    finally:
        client.close()


def tls_toml(
    *, ca: Path, identity: CertAndKey | None, password_file: Path | None = None, extra: str = ""
) -> str:
    """The `[mqtt]` keys and `[mqtt.tls]` table of an appliance on the ward broker."""
    credentials = f'username = "{APPLIANCE}"\npassword_file = "{password_file}"\n' if password_file else ""
    client = f'cert = "{identity.cert}"\nkey = "{identity.key}"\n' if identity is not None else ""
    return f'{credentials}\n[mqtt.tls]\nca = "{ca}"\n{client}{extra}'


def start_ward(workdir: Path, broker: MosquittoBroker, mqtt_toml: str) -> Ward:
    """One bed and its ventilator, and the daemon at DEBUG level on a TLS config."""
    workdir.mkdir(parents=True, exist_ok=True)
    ward = Ward(
        workdir=workdir, broker=broker, layout=WardLayout(beds=1, insecure=False, mqtt_toml=mqtt_toml)
    )
    ward.start_simulators()
    ward.daemon = ward.spawn(
        "daemon", ["edge.cli", "run", "--config", str(ward.config), "--log-level", "DEBUG"]
    )
    return ward


def statuses(messages: list[Received]) -> list[str]:
    return [json.loads(m.payload)["state"] for m in messages if m.topic == STATUS_TOPIC and m.payload]


def twins_with_values(messages: list[Received]) -> int:
    return sum(1 for m in messages if m.topic == f"{bed_topic(BED)}/twin" and json.loads(m.payload)["values"])


def log_count(broker: MosquittoBroker, text: str) -> int:
    """How often `text` occurs in the broker's log."""
    return broker.log_tail(lines=100_000).count(text)


def password_file_in(directory: Path) -> tuple[Path, str]:
    """Write a fresh MQTT password to a file only its owner can read."""
    password = f"pw-{secrets.token_urlsafe(24)}"
    path = directory / "mqtt-password"
    path.write_text(password + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path, password


def assert_no_secret(logs: str, *, password: str, key: Path | None) -> None:
    """Neither the password nor any line of the client key's PEM appears in `logs`."""
    assert password not in logs
    if key is not None:
        for key_line in key.read_text(encoding="ascii").splitlines():
            assert key_line not in logs, f"a line of the client key reached a log: {key_line[:12]}..."


def departures(broker: MosquittoBroker, identity: str) -> int:
    """How many connections of `identity` the broker saw end (cleanly or not)."""
    name = re.escape(identity)
    pattern = rf"Client {name} (disconnected|closed its connection)|Socket error on client {name},"
    return len(re.findall(pattern, broker.log_tail(lines=100_000)))


def test_appliance_with_its_certificate_publishes_and_no_secret_reaches_a_log_line(
    tmp_path: Path, ward_broker: MosquittoBroker, station: CertClient
) -> None:
    password_file, password = password_file_in(tmp_path)
    identity = ca_of(ward_broker).client_files(APPLIANCE)
    assert ward_broker.tls_files is not None
    ward = start_ward(
        tmp_path / "ward",
        ward_broker,
        tls_toml(ca=ward_broker.tls_files.ca, identity=identity, password_file=password_file),
    )
    try:
        assert wait_for(lambda: twins_with_values(station.messages) >= 3, timeout_s=30), ward.log("daemon")
        assert statuses(station.messages) == ["online"]
        assert ward.stop_daemon() == 0
    finally:
        ward.close()
    daemon_log = ward.log("daemon")
    broker_log = ward_broker.log_tail(lines=100_000)
    # the broker knows the appliance by its certificate, not by the username it sent
    assert f"u'{APPLIANCE}'" in broker_log
    # every topic the daemon published on is one the sample ACL grants it (a denied one is a PUBACK 0x87)
    assert "broker rejected" not in daemon_log
    assert "Denied PUBLISH" not in broker_log
    # the appliance reads its own status topic back (a stale Will after the birth is corrected)
    assert "refused our subscription" not in daemon_log
    assert " DEBUG " in daemon_log, (
        "the daemon did not log at DEBUG level: the check below would prove little"
    )
    every_line = "\n".join([daemon_log, broker_log, ward.log(f"simulator-{BED}")])
    assert_no_secret(every_line, password=password, key=identity.key)


@pytest.mark.parametrize(
    ("case", "broker_says"),
    [
        ("no certificate", "peer did not return a certificate"),
        ("certificate of another CA", "certificate verify failed"),
    ],
)
def test_appliance_without_a_certificate_of_the_ward_ca_is_refused(
    case: str, broker_says: str, tmp_path: Path, ward_broker: MosquittoBroker, station: CertClient
) -> None:
    assert ward_broker.tls_files is not None
    identity = (
        None
        if case == "no certificate"
        else CertificateAuthority.create(tmp_path / "other-ca").client_files(APPLIANCE)
    )
    password_file, password = password_file_in(tmp_path)
    ward = start_ward(
        tmp_path / "ward",
        ward_broker,
        tls_toml(ca=ward_broker.tls_files.ca, identity=identity, password_file=password_file),
    )
    try:
        # the daemon retries every 0.1-0.5 s: three refusals in a row, and never a session
        assert wait_for(lambda: log_count(ward_broker, broker_says) >= 3, timeout_s=30), (
            ward_broker.log_tail()
        )
        assert ward.daemon is not None
        assert ward.daemon.poll() is None, "a refusing broker must not stop the daemon"
        assert f"u'{APPLIANCE}'" not in ward_broker.log_tail(lines=100_000)
        assert station.messages == []
    finally:
        ward.close()
    # nor does a refused connection, explained at DEBUG level, put a secret in the log
    assert_no_secret(ward.log("daemon"), password=password, key=identity.key if identity else None)


def test_broker_certificate_for_another_name_is_refused_by_the_appliance(tmp_path: Path) -> None:
    """The server name is verified: a broker certificate valid for another host is not accepted."""
    ward_broker = ward_broker_at(tmp_path / "ward-broker", server_names=("ward-broker.invalid",))
    ward_broker.start()
    assert ward_broker.tls_files is not None
    identity = ca_of(ward_broker).client_files(APPLIANCE)
    ward = start_ward(
        tmp_path / "ward", ward_broker, tls_toml(ca=ward_broker.tls_files.ca, identity=identity)
    )
    try:
        assert wait_for(lambda: log_count(ward_broker, "New connection from") >= 3, timeout_s=30), (
            ward_broker.log_tail()
        )
        assert ward.daemon is not None
        assert ward.daemon.poll() is None
        assert "New client connected" not in ward_broker.log_tail(lines=100_000)
        ward.kill_daemon()
        # the control: the same files with the name check switched off connect at once
        ward.layout = WardLayout(
            beds=1,
            insecure=False,
            mqtt_toml=tls_toml(
                ca=ward_broker.tls_files.ca, identity=identity, extra="insecure_skip_hostname_check = true\n"
            ),
        )
        ward.write_config()
        ward.start_daemon()
        assert wait_for(lambda: f"u'{APPLIANCE}'" in ward_broker.log_tail(lines=100_000), timeout_s=30), (
            ward.log("daemon")
        )
    finally:
        ward.close()
        ward_broker.stop()


def test_plaintext_without_insecure_is_a_config_error(tmp_path: Path, broker: MosquittoBroker) -> None:
    ward = Ward(workdir=tmp_path, broker=broker, layout=WardLayout(beds=1, insecure=False))
    try:
        daemon = ward.start_daemon()
        assert daemon.wait(timeout=30) == 78
        assert "insecure" in ward.log("daemon")
    finally:
        ward.close()


def test_plaintext_with_insecure_is_loudly_logged(tmp_path: Path, broker: MosquittoBroker) -> None:
    ward = Ward(workdir=tmp_path, broker=broker, layout=WardLayout(beds=1))
    try:
        ward.start_simulators()
        ward.start_daemon()
        loud = re.compile(
            r"^.*\b(WARNING|ERROR|CRITICAL)\b.*(plaintext|unencrypted).*$", re.MULTILINE | re.IGNORECASE
        )
        assert wait_for(lambda: loud.search(ward.log("daemon")) is not None, timeout_s=10), ward.log("daemon")
        assert ward.stop_daemon() == 0
    finally:
        ward.close()


def test_foreign_appliance_can_neither_command_nor_impersonate_the_appliance(
    tmp_path: Path, ward_broker: MosquittoBroker, station: CertClient
) -> None:
    assert ward_broker.tls_files is not None
    ca = ca_of(ward_broker)
    ward = start_ward(
        tmp_path / "ward",
        ward_broker,
        tls_toml(ca=ward_broker.tls_files.ca, identity=ca.client_files(APPLIANCE)),
    )
    foreign_identity = ca.client_files(FOREIGN)
    try:
        assert wait_for(lambda: twins_with_values(station.messages) >= 1, timeout_s=30), ward.log("daemon")
        # it even asks for the appliance's client id, to take over its session
        foreign = CertClient(broker=ward_broker, identity=foreign_identity, client_id=f"icu-edge-{APPLIANCE}")
        assert foreign.connect()
        forged = b'{"forged": true}'
        targets = [
            f"{bed_topic(BED)}/cmd/ack",
            f"{bed_topic(BED)}/twin",
            f"{bed_topic(BED)}/vitals",
            STATUS_TOPIC,
        ]
        for topic in targets:
            assert foreign.publish(topic, forged).value == NOT_AUTHORIZED, topic
            foreign.publish_qos0(topic, forged)
        # its own status topic is allowed: once this arrives, the publishes before it were handled
        own_status = f"{ROOT}/appliance/{FOREIGN}/status"
        assert foreign.publish(own_status, b"sentinel").value == 0
        assert wait_for(lambda: any(m.topic == own_status for m in station.messages), timeout_s=10)
        foreign.close()
        # a Will on the appliance's status topic would announce the appliance offline when it vanishes
        willer = CertClient(
            broker=ward_broker,
            identity=foreign_identity,
            client_id="willer",
            will=(STATUS_TOPIC, forged),
        )
        assert willer.connect()
        gone_before = departures(ward_broker, FOREIGN)
        willer.drop()
        # the broker routes the Will as it notices the departure, before it logs it
        assert wait_for(lambda: departures(ward_broker, FOREIGN) > gone_before, timeout_s=10), (
            ward_broker.log_tail()
        )
        twins_before = twins_with_values(station.messages)
        assert wait_for(lambda: twins_with_values(station.messages) > twins_before + 2, timeout_s=15)
        assert ward.daemon is not None
        assert ward.daemon.poll() is None
        # read before the daemon is killed: its own Will would follow
        seen = station.messages
    finally:
        ward.close()
    assert all(m.payload != forged for m in seen)
    assert statuses(seen) == ["online"], "the appliance was displaced or announced offline"
    assert "already connected, closing old connection" not in ward_broker.log_tail(lines=100_000)


def test_only_the_central_station_may_command_and_the_appliance_reads_its_commands(
    ward_broker: MosquittoBroker, station: CertClient
) -> None:
    appliance = CertClient(
        broker=ward_broker, identity=ca_of(ward_broker).client_files(APPLIANCE), client_id="a"
    )
    try:
        assert appliance.connect()
        command = f"{bed_topic(BED)}/cmd/ack"
        assert not appliance.subscribe(f"{bed_topic(BED)}/cmd/+")[0].is_failure
        assert appliance.publish(command, b'{"from": "appliance"}').value == NOT_AUTHORIZED
        assert station.publish(command, b'{"from": "station"}').value == 0
        assert wait_for(lambda: len(appliance.messages) >= 1, timeout_s=10)
        # the station reads everything the appliance may publish
        assert appliance.publish(f"{bed_topic(BED)}/twin", b'{"from": "appliance"}').value == 0
        assert wait_for(lambda: any(m.topic.endswith("/twin") for m in station.messages), timeout_s=10)
    finally:
        appliance.close()
    assert [m.payload for m in appliance.messages] == [b'{"from": "station"}']
    assert [(m.topic, m.payload) for m in station.messages] == [
        (command, b'{"from": "station"}'),
        (f"{bed_topic(BED)}/twin", b'{"from": "appliance"}'),
    ]


def test_the_appliance_reads_its_own_status_back(ward_broker: MosquittoBroker) -> None:
    """The publisher corrects a stale Will it sees on its own status topic: the ACL must deliver it.

    Mosquitto grants a SUBSCRIBE and filters on delivery, so only a received message proves the grant.
    """
    appliance = CertClient(
        broker=ward_broker, identity=ca_of(ward_broker).client_files(APPLIANCE), client_id="a"
    )
    try:
        assert appliance.connect()
        assert not appliance.subscribe(STATUS_TOPIC)[0].is_failure
        assert appliance.publish(STATUS_TOPIC, b'{"state": "online"}').value == 0
        assert wait_for(lambda: len(appliance.messages) >= 1, timeout_s=10), "own status not delivered"
    finally:
        appliance.close()
    assert [m.payload for m in appliance.messages] == [b'{"state": "online"}']
