"""An alarm raised while the broker is down: never lost, never a new alarm signal from the replay.

The central station is a subscriber with a persistent session. The broker stops (cleanly, keeping the
station's session); the bed's ventilator simulator is killed, so a `device_disconnected` alarm is
raised during the outage; the broker comes back. The station must get: the `alarm_raised` event,
marked `history: true` (it waited in the outbox); the new birth, listing the alarm; and, after the
replay, a fresh (`history: false`) state of the alarm on its retained topic.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Received, Subscriber, wait_for
from ward import ROOT, STATUS_TOPIC, Ward, WardLayout, bed_topic

from edge.model import AlarmMessage, EventMessage
from tools.local_broker import LocalMosquitto

pytestmark = [pytest.mark.integration]


@pytest.fixture
def ward(tmp_path: Path, persistent_broker: LocalMosquitto) -> Iterator[Ward]:
    instance = Ward(workdir=tmp_path, broker=persistent_broker, layout=WardLayout(beds=1))
    try:
        yield instance
    finally:
        instance.close()


def _raised(message: Received) -> bool:
    return (
        message.topic.endswith("/events")
        and b"alarm_raised" in message.payload
        and b"device_disconnected:vent-1" in message.payload
    )


@pytest.mark.timeout(120)
def test_an_alarm_raised_during_a_broker_outage_arrives_as_history_and_then_as_the_present(
    ward: Ward, persistent_broker: LocalMosquitto
) -> None:
    persistent_broker.start()
    station = Subscriber(
        host=persistent_broker.host,
        port=persistent_broker.port,
        topic_filter=f"{ROOT}/#",
        client_id="station",
        persistent=True,
    )
    try:
        station.wait_subscribed(timeout_s=10)
        bed = ward.beds[0]
        ward.start_simulators()
        ward.start_daemon()
        assert wait_for(
            lambda: any(m.topic == f"{bed_topic(bed)}/vitals" for m in station.messages), timeout_s=30
        ), ward.log("daemon")
        persistent_broker.stop()
        ward.kill_simulator(bed)
        assert wait_for(lambda: "no link to vent-1" in ward.log("daemon"), timeout_s=15), ward.log("daemon")
        before = len(station.messages)
        persistent_broker.start()
        assert wait_for(lambda: any(_raised(m) for m in station.messages[before:]), timeout_s=30), ward.log(
            "daemon"
        )
        after = station.messages[before:]
        at = next(i for i, m in enumerate(after) if _raised(m))
        event = EventMessage.model_validate_json(after[at].payload)
        assert event.history, "the event waited in the outbox: it is the record, not a new alarm signal"
        assert event.alarm is not None
        alarm_id = event.alarm.id
        alarm_topic = f"{bed_topic(bed)}/alarm/{alarm_id}"

        births = [
            json.loads(m.payload) for m in after if m.topic == STATUS_TOPIC and b'"online"' in m.payload
        ]
        assert births, "a birth on reconnection"
        assert alarm_id in {a["id"] for a in births[-1]["alarms"][bed]}, births[-1]

        assert wait_for(
            lambda: any(
                m.topic == alarm_topic
                and m.payload
                and not AlarmMessage.model_validate_json(m.payload).history
                for m in station.messages[before:]
            ),
            timeout_s=15,
        ), [m.payload for m in station.messages[before:] if m.topic == alarm_topic]
        states = [
            (i, AlarmMessage.model_validate_json(m.payload))
            for i, m in enumerate(station.messages[before:])
            if m.topic == alarm_topic and m.payload
        ]
        fresh = [i for i, state in states if not state.history]
        replayed = [i for i, state in states if state.history]
        assert replayed, "the state stored during the outage came as history"
        assert min(fresh) > max(replayed), "the fresh state follows the replay"
        assert ward.stop_daemon() == 0
    finally:
        station.close()
