"""Broker faults under a 16-bed ward: Mosquitto SIGKILLed and restarted, or down when the daemon starts.

The central station is a subscriber with a persistent session (clean_start False, session expiry) on
`R/#`. The broker runs with persistence and saves it every second (`autosave_interval 1`): a SIGKILLed
Mosquitto restarts from its last save, so the station's session (its subscription and queue) survives.
After de-duplication by (topic, session, seq), every topic must carry seqs 0, 1, 2, ... per session, in
arrival order, and the outbox must be empty once the daemon stopped: every QoS 1 message arrived.
The one gap allowed is the broker's own loss at a kill (`delivery_check.gaps_across`): a message
Mosquitto acknowledged after its last save and had not yet written to the station. It is counted and
printed, and allowed only while the daemon reports no drop of its own.

The ward polls each bed at the MEDIBUS default cadence (`poll_interval_s = 1.0`, one cycle a second).
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Subscriber, wait_for
from delivery_check import check_delivery, gaps_across, outbox_keys
from ward import ROOT, STATUS_TOPIC, NotifySocket, Ward, WardLayout

from tools.local_broker import LocalMosquitto

pytestmark = [pytest.mark.integration]

BEDS = 16
BROKER_KILLS = 5
UP_S = 3.0
"""How long the broker serves between kills."""
DOWN_S = 1.5
"""How long it stays dead: the daemon keeps polling and buffers in its outbox meanwhile."""


@pytest.fixture
def ward(tmp_path: Path, persistent_broker: LocalMosquitto) -> Iterator[Ward]:
    instance = Ward(workdir=tmp_path, broker=persistent_broker, layout=WardLayout(beds=BEDS))
    try:
        yield instance
    finally:
        instance.close()


def _station(broker: LocalMosquitto) -> Subscriber:
    station = Subscriber(
        host=broker.host, port=broker.port, topic_filter=f"{ROOT}/#", client_id="station", persistent=True
    )
    station.wait_subscribed(timeout_s=10)
    return station


def _outbox_rows(ward: Ward) -> int:
    if not ward.outbox.exists():
        return 0
    db = sqlite3.connect(ward.outbox, timeout=10)
    try:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def _vitals_count(station: Subscriber) -> int:
    return sum(1 for m in station.messages if m.topic.endswith("/vitals"))


def _drain_and_check(ward: Ward, station: Subscriber, kills: list[tuple[float, float]] | None = None) -> None:
    """Stop the daemon (it flushes), then check the outbox is empty and the station's record is whole.

    `kills`: (killed, restarted) wall times of broker SIGKILLs, across which a gap is the broker's loss.
    """
    committed = outbox_keys(ward.outbox)
    assert ward.stop_daemon() == 0, ward.log("daemon")
    assert _outbox_rows(ward) == 0, "every QoS 1 message was acknowledged before a clean stop"
    assert wait_for(lambda: committed <= check_delivery(station.messages).keys, timeout_s=10)
    report = check_delivery(station.messages)
    assert not report.out_of_order, "\n".join(report.out_of_order)
    lost_by_broker, unexplained = gaps_across(report, kills or [])
    assert not unexplained, "\n".join([f"missing {key}" for key in unexplained[:40]] + report.gaps)
    if lost_by_broker:
        daemon_drops = re.findall(
            r".*(?:dropped it|: dropped \d+ messages|rejected outbox row).*", ward.log("daemon")
        )
        assert not daemon_drops, (
            "a gap at a broker kill is the broker's only while the daemon dropped nothing:\n"
            + ("\n".join(daemon_drops))
        )
        assert not any(
            m.topic.endswith("/events") and b"outbox_dropped" in m.payload for m in station.messages
        )
        print(
            f"{len(lost_by_broker)} messages the broker acknowledged and lost in its kills: {lost_by_broker}"
        )
    for bed in ward.beds:
        assert any(topic.endswith(f"/bed/{bed}/vitals") for topic, _, _ in report.keys), (
            f"no vitals from {bed}:\n"
            + "\n".join(line for line in ward.log("daemon").splitlines() if bed in line)
            + ward.log(f"simulator-{bed}")
        )
    print(
        f"{len(report.keys)} distinct messages, {report.duplicates} duplicates, sessions {report.sessions()}"
    )


@pytest.mark.timeout(240)
def test_broker_sigkilled_and_restarted_5_times_under_16_beds(
    ward: Ward, persistent_broker: LocalMosquitto
) -> None:
    persistent_broker.start()
    station = _station(persistent_broker)
    try:
        ward.start_simulators()
        ward.start_daemon()
        assert station.wait_for(lambda ms: any(m.topic == STATUS_TOPIC for m in ms), timeout_s=20)
        kills: list[tuple[float, float]] = []
        for kill in range(BROKER_KILLS):
            seen = _vitals_count(station)
            assert wait_for(lambda seen=seen: _vitals_count(station) >= seen + BEDS, timeout_s=20), (
                f"kill {kill}: vitals stopped flowing\n{ward.log('daemon')[-3000:]}"
            )
            time.sleep(UP_S)  # let the broker serve a while: the kill lands in the middle of traffic
            killed_s = time.time()
            persistent_broker.kill()
            buffered = _outbox_rows(ward)
            assert wait_for(lambda buffered=buffered: _outbox_rows(ward) > buffered, timeout_s=10), (
                "the daemon keeps committing to its outbox while the broker is dead"
            )
            time.sleep(DOWN_S)
            persistent_broker.start()
            kills.append((killed_s, time.time()))
            assert ward.daemon is not None
            assert ward.daemon.poll() is None, ward.log("daemon")
        seen = _vitals_count(station)
        assert wait_for(lambda: _vitals_count(station) >= seen + 2 * BEDS, timeout_s=20)
        assert wait_for(lambda: _outbox_rows(ward) < BEDS, timeout_s=20), "the backlog drains"
        _drain_and_check(ward, station, kills)
        assert check_delivery(station.messages).sessions() == {1}, "the daemon never restarted"
    finally:
        station.close()


def test_broker_unreachable_at_daemon_start_everything_buffered_arrives(
    ward: Ward, persistent_broker: LocalMosquitto, tmp_path: Path
) -> None:
    persistent_broker.start()
    station = _station(persistent_broker)  # the station's session exists before the outage
    systemd = NotifySocket(tmp_path / "notify.sock")
    try:
        persistent_broker.stop()  # a clean stop saves the station's session
        ward.start_simulators()
        ward.start_daemon(env={"NOTIFY_SOCKET": str(systemd.path)})
        assert systemd.wait_ready(timeout_s=20) is not None, (
            f"READY=1 while the broker is down\n{ward.log('daemon')}"
        )
        assert wait_for(lambda: _outbox_rows(ward) >= 3 * BEDS, timeout_s=30), (
            f"the daemon buffers while the broker is down\n{ward.log('daemon')[-3000:]}"
        )
        buffered = outbox_keys(ward.outbox)
        persistent_broker.start()
        assert wait_for(lambda: buffered <= check_delivery(station.messages).keys, timeout_s=30), (
            f"{len(buffered - check_delivery(station.messages).keys)} buffered messages missing"
        )
        report = check_delivery(station.messages)
        first_seqs = {(topic, seq) for topic, _, seq in report.keys if seq == 0}
        assert {f"{ROOT}/bed/{bed}/vitals" for bed in ward.beds} <= {t for t, _ in first_seqs}, (
            "the first vitals of every bed, buffered before the broker came up, arrived"
        )
        _drain_and_check(ward, station)
    finally:
        systemd.close()
        station.close()
