"""`icu-edge diag mqtt` against a real Mosquitto (plaintext; mTLS with the sample ACL), `diag engines`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker
from fault.test_mtls_acl import tls_toml, ward_broker_at
from ward import APPLIANCE, REPO_ROOT, ROOT, Ward, WardLayout

pytestmark = [pytest.mark.integration]

ROUND_TRIP = re.compile(
    r"round trip on \S+/appliance/edge-0001/diag/ping \(QoS 1, 5x, TCP_NODELAY\): "
    r"p50 [\d.]+ ms, max [\d.]+ ms"
)


def _diag(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "diag", *argv],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture
def ward_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    instance = ward_broker_at(tmp_path / "ward-broker")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def test_mqtt_plaintext_round_trips_and_subscription_verdicts(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    ward = Ward(workdir=tmp_path, broker=broker)
    result = _diag("mqtt", "--config", str(ward.config), "--count", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "TLS: none (insecure = true)" in out
    assert ROUND_TRIP.search(out), out
    assert f"{ROOT}/bed/bed-01/cmd/+: not refused" in out
    assert "daemon: not reachable" in out


def test_mqtt_with_client_certificate_and_sample_acl(tmp_path: Path, ward_broker: MosquittoBroker) -> None:
    assert ward_broker.ca is not None
    assert ward_broker.tls_files is not None
    identity = ward_broker.ca.client_files(APPLIANCE)
    mqtt_toml = tls_toml(ca=ward_broker.tls_files.ca, identity=identity)
    ward = Ward(workdir=tmp_path, broker=ward_broker, layout=WardLayout(insecure=False, mqtt_toml=mqtt_toml))
    result = _diag("mqtt", "--config", str(ward.config), "--count", "5")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"TLS: TLSv1\.[23], cipher \S+", out), out
    assert "broker certificate: subject CN=" in out
    assert "valid until" in out
    assert "checked against the certificate: yes" in out
    assert ROUND_TRIP.search(out), out
    assert "Mosquitto 2.0 also grants subscriptions its ACL denies" in out


def test_mqtt_says_when_the_acl_refuses_the_diag_topic(tmp_path: Path, ward_broker: MosquittoBroker) -> None:
    """An identity the ACL gives no diag subtree (edited sample): the refusal is named, not a hang."""
    assert ward_broker.ca is not None
    assert ward_broker.tls_files is not None
    acl = ward_broker.directory / "icu-edge.acl"
    acl.write_text("\n".join(x for x in acl.read_text().splitlines() if "/diag/" not in x) + "\n")
    ward_broker.restart()
    identity = ward_broker.ca.client_files(APPLIANCE)
    mqtt_toml = tls_toml(ca=ward_broker.tls_files.ca, identity=identity)
    ward = Ward(workdir=tmp_path, broker=ward_broker, layout=WardLayout(insecure=False, mqtt_toml=mqtt_toml))
    result = _diag("mqtt", "--config", str(ward.config), "--count", "2", "--timeout-s", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refused" in result.stdout, result.stdout
    assert "diag/#" in result.stdout, result.stdout


def test_engines_shows_the_cpu_backend_and_a_latency_row(tmp_path: Path, broker: MosquittoBroker) -> None:
    layout = WardLayout(engines_toml=f'[engines]\ncache_dir = "{tmp_path / "engines"}"')
    ward = Ward(workdir=tmp_path, broker=broker, layout=layout)
    result = _diag("engines", "--config", str(ward.config), "--beds", "1,4", "--repeats", "3")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "backend = auto" in out
    assert "TensorRT: not usable" in out
    assert re.search(r"^\| 4 \| [\d.]+ \|", out, re.MULTILINE), out
    assert "on onnxruntime" in out, out
