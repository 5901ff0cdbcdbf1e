"""The daemon's diagnostics socket and `icu-edge diag bundle`, against a real daemon, simulator and broker.

The ward runs with mutual TLS and the sample ACL, and its config names every kind of secret: an MQTT
password file, a client key, and a token-like client id. The bundle must carry the device counters,
the ventilator's raw bytes and the redacted config, and none of those secrets.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker, wait_for
from fault.test_mtls_acl import password_file_in, tls_toml, ward_broker_at
from ward import APPLIANCE, REPO_ROOT, Ward, WardLayout

from edge.diagnostics import (
    DiagnosticsServer,
    RawRing,
    read_snapshot,
    ring_chunks,
    ring_document,
    socket_path,
)
from tools.diag.bundle import redact, scrub

TOKEN = "icu-edge-Tk3f9QzX7mP2vL8wR4nY"
"""A token-like client id: the redaction must catch it by its shape."""


def test_ring_keeps_the_newest_bytes_within_its_byte_and_age_bounds() -> None:
    ring = RawRing(max_bytes=10, max_age_s=5.0)
    ring.add(direction="tx", data=b"abcdef", now_s=0.0)
    ring.add(direction="rx", data=b"ghijkl", now_s=1.0)
    assert [data for _, _, data in ring.chunks(now_s=1.0)] == [b"ghijkl"]
    ring.add(direction="rx", data=b"0123456789ABC", now_s=2.0)
    assert ring.chunks(now_s=2.0) == [(2.0, "rx", b"3456789ABC")]
    assert ring.chunks(now_s=7.5) == []
    assert (ring.total_rx_bytes, ring.total_tx_bytes) == (16, 6)


@pytest.fixture
def ward_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    instance = ward_broker_at(tmp_path / "ward-broker")
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def _diag(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "diag", *argv],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _extract(path: Path) -> dict[str, str]:
    with tarfile.open(path) as tar:
        return {
            member.name.split("/", 1)[1]: tar.extractfile(member).read().decode()  # type: ignore[union-attr]
            for member in tar.getmembers()
        }


def _raw(snapshot: dict[str, Any], key: str, direction: str) -> bytes:
    return b"".join(data for _, d, data in ring_chunks(snapshot["raw"][key]) if d == direction)


@pytest.mark.integration
def test_socket_and_bundle_of_a_running_daemon_carry_raw_bytes_and_counters_and_no_secret(
    tmp_path: Path, ward_broker: MosquittoBroker
) -> None:
    assert ward_broker.ca is not None
    identity = ward_broker.ca.client_files(APPLIANCE)
    assert ward_broker.tls_files is not None
    password_file, password = password_file_in(tmp_path)
    mqtt_toml = f'client_id = "{TOKEN}"\n' + tls_toml(
        ca=ward_broker.tls_files.ca, identity=identity, password_file=password_file
    )
    ward = Ward(
        workdir=tmp_path, broker=ward_broker, layout=WardLayout(beds=1, insecure=False, mqtt_toml=mqtt_toml)
    )
    secrets = [password, TOKEN]
    secrets += [line for line in identity.key.read_text().splitlines() if line and "-----" not in line]
    sock = socket_path(ward.outbox)
    try:
        ward.start_simulators()
        ward.start_daemon()
        snapshots: list[dict[str, Any]] = []

        def frames_seen() -> bool:
            try:
                snapshots.append(read_snapshot(sock, timeout_s=5.0))
            except (OSError, ValueError):
                return False
            device = snapshots[-1]["devices"]["bed-01/vent-1"]
            frames = device["connected"] and device["counters"].get("frames_in", 0) > 5
            return bool(frames and snapshots[-1]["publisher"]["connected"])

        assert wait_for(frames_seen, timeout_s=30), ward.log("daemon")
        assert sock.stat().st_mode & 0o777 == 0o600
        snapshot = snapshots[-1]
        assert snapshot["outbox"]["rows"] >= 0
        assert "disk_bytes" in snapshot["outbox"]
        # the host's ICC request (ESC 'Q') went out and the simulator's echo (SOH 'Q') came back
        assert b"\x1bQ" in _raw(snapshot, "bed-01/vent-1", "tx")
        assert b"\x01Q" in _raw(snapshot, "bed-01/vent-1", "rx")

        # the daemon holds the appliance's identity on a broker that makes it the client id: no takeover
        checked = _diag("mqtt", "--config", str(ward.config))
        assert checked.returncode == 69, checked.stdout + checked.stderr
        assert "--even-if-daemon-runs" in checked.stderr
        assert "the daemon's view: connected True" in checked.stdout

        archive = tmp_path / "bundle.tar.gz"
        result = _diag("bundle", "--config", str(ward.config), "--output", str(archive))
        assert result.returncode == 0, result.stderr
        assert str(archive) in result.stdout
        assert archive.stat().st_mode & 0o777 == 0o600
        members = _extract(archive)
        assert {"MANIFEST.txt", "config.redacted.json", "versions.json", "daemon-snapshot.json"} <= set(
            members
        )
        bundled = json.loads(members["daemon-snapshot.json"])
        assert bundled["devices"]["bed-01/vent-1"]["counters"]["frames_in"] > 0
        assert b"\x01Q" in _raw(bundled, "bed-01/vent-1", "rx")
        config = json.loads(members["config.redacted.json"])["config"]
        assert config["mqtt"]["client_id"] == "<redacted>"
        assert config["mqtt"]["password_file"] == str(password_file)
        assert config["mqtt"]["tls"]["key"] == str(identity.key)
        assert json.loads(members["versions.json"])["paho-mqtt"]

        assert ward.stop_daemon() == 0
        assert not sock.exists()
        down = tmp_path / "bundle-down.tar.gz"
        result = _diag("bundle", "--config", str(ward.config), "--output", str(down))
        assert result.returncode == 0, result.stderr
        members_down = _extract(down)
        assert "NOT COLLECTED: daemon snapshot" in members_down["MANIFEST.txt"]
        outbox = json.loads(members_down["outbox.json"])
        assert "error" not in outbox, outbox
        assert outbox["rows"] >= 0
        assert outbox["oldest_age_s"] is None or outbox["oldest_age_s"] >= 0

        with tarfile.open(archive) as tar:
            everything = {name: text for name, text in members.items()} | {
                f"down/{name}": text for name, text in members_down.items()
            }
            assert all(member.mode == 0o600 for member in tar.getmembers())
        for name, text in everything.items():
            for secret in secrets:
                assert secret not in text, f"{name} holds a secret"
    finally:
        ward.close()


async def test_stalled_clients_never_hold_the_loop_and_are_dropped(tmp_path: Path) -> None:
    """Two clients that never read a 4 MiB answer, a third refused; the loop ticks on; then all is served."""
    rings = {f"bed-{i:02d}/vent-1": RawRing() for i in range(64)}
    for ring in rings.values():
        for _ in range(64):
            ring.add(direction="rx", data=os.urandom(1024), now_s=time.monotonic())
    server = DiagnosticsServer(
        path=tmp_path / "diag.sock",
        snapshot=lambda: {"schema": "test"},
        rings=rings,
        outbox_path=None,
        max_clients=2,
        write_timeout_s=1.0,
    )
    assert await server.start()
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    stalled = [await asyncio.open_unix_connection(str(server.path)) for _ in range(2)]
    await asyncio.sleep(0.3)  # both are being served (answers stuck in their socket buffers)
    third_reader, third_writer = await asyncio.open_unix_connection(str(server.path))
    assert await asyncio.wait_for(third_reader.read(), timeout=5) == b""  # refused: closed, no answer
    third_writer.close()
    before = ticks
    await asyncio.sleep(0.5)
    assert ticks > before + 10, "the loop stopped while clients stalled"
    assert await asyncio.to_thread(wait_for, lambda: server.refused == 1 and server.served == 0, timeout_s=5)
    # past write_timeout_s the stalled clients are dropped and the next one gets the whole snapshot
    await asyncio.sleep(1.5)
    document = await asyncio.to_thread(read_snapshot, server.path)
    assert len(document["raw"]) == 64
    assert len(ring_chunks(document["raw"]["bed-00/vent-1"])) == 64
    for _, writer in stalled:
        writer.close()
    ticker.cancel()
    await server.close()
    assert not server.path.exists()


def test_ring_document_round_trips_chunks_in_order() -> None:
    ring = RawRing()
    ring.add(direction="tx", data=b"\x1bQ", now_s=10.0)
    ring.add(direction="rx", data=b"\x01Q\r", now_s=10.5)
    document = json.loads(json.dumps(ring_document(ring, now_mono_s=11.0, epoch_offset_s=1000.0)))
    assert ring_chunks(document) == [(1010.0, "tx", b"\x1bQ"), (1010.5, "rx", b"\x01Q\r")]


def test_redaction_keeps_paths_names_and_numbers_and_replaces_secret_like_values() -> None:
    found: list[str] = []
    document = {
        "mqtt": {
            "host": "broker.ward-3.hospital.example",
            "client_id": "icu-edge-edge-0001",
            "password_file": "/etc/icu-edge/mqtt-password",
            "tls": {"key": "/etc/icu-edge/client.key"},
            "api_token": "short",
        },
        "bed": [{"id": "bed-01", "options": {"secret": 1234, "session": "Zq8VbN3xT1mKp7LwR2cY9s"}}],
        "engines": {"model": "nlinear-q@1.0.0", "digest": "ab" * 32},
    }
    redacted = redact(document, found=found)
    assert redacted["mqtt"] == {**document["mqtt"], "api_token": "<redacted>"}
    assert redacted["bed"][0]["options"] == {"secret": "<redacted>", "session": "<redacted>"}
    assert redacted["engines"] == {"model": "nlinear-q@1.0.0", "digest": "<redacted>"}
    assert sorted(found) == sorted(["short", "1234", "Zq8VbN3xT1mKp7LwR2cY9s", "ab" * 32])
    assert scrub("log: password short sent", found) == "log: password <redacted> sent"
