"""Alarms through the real path: simulator -> daemon -> Mosquitto -> a central station's subscriber.

Two beds live through the `desaturation` scenario (SpO2 97 % falls to 84 % from 20 s to 30 s, holds
30 s, recovers over 10 s) on their ventilators. bed-01 keeps the default SpO2 limit (90 %, 10 s,
medium, not latching); bed-02 is configured high priority, so its alarm latches. On the way the
station sends a malformed command, an acknowledgement (twice: idempotent), a short pause, and the
daemon is restarted while both alarms are active.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker, Subscriber, wait_for
from paho.mqtt import publish
from ward import ROOT, Ward, WardLayout, bed_topic

from edge.model import AlarmMessage, AlarmState, CommandResultMessage, EventMessage, TwinMessage

pytestmark = pytest.mark.integration

DESATURATION = WardLayout(
    beds=2,
    scenario="desaturation",
    alarms_toml="pause_max_s = 60",
    bed_toml=(("bed-02", '[bed.alarm_limits.spo2]\npriority = "high"'),),
)


@pytest.fixture
def make_ward(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Callable[[WardLayout], Ward]]:
    wards: list[Ward] = []

    def make(layout: WardLayout) -> Ward:
        ward = Ward(workdir=tmp_path, broker=broker, layout=layout)
        wards.append(ward)
        return ward

    yield make
    for ward in wards:
        ward.close()


def _command(broker: MosquittoBroker, bed: str, name: str, document: dict[str, Any] | bytes) -> None:
    payload = document if isinstance(document, bytes) else json.dumps(document).encode()
    publish.single(
        f"{bed_topic(bed)}/cmd/{name}", payload, qos=1, hostname=broker.host, port=broker.port, client_id=""
    )


def _events(station: Subscriber, bed: str) -> list[EventMessage]:
    return [EventMessage.model_validate_json(m.payload) for m in station.on_topic(f"{bed_topic(bed)}/events")]


def _alarm_events(station: Subscriber, bed: str, condition: str) -> list[EventMessage]:
    return [e for e in _events(station, bed) if e.alarm is not None and e.alarm.condition == condition]


def _results(station: Subscriber, bed: str) -> list[CommandResultMessage]:
    return [
        CommandResultMessage.model_validate_json(m.payload) for m in station.on_topic(f"{bed_topic(bed)}/cmd-result")
    ]


def _result(station: Subscriber, bed: str, command_id: str | None, *, count: int = 1) -> list[CommandResultMessage]:
    assert wait_for(
        lambda: len([r for r in _results(station, bed) if r.command_id == command_id]) >= count, timeout_s=10
    ), f"no cmd-result for {command_id}: {[r.model_dump() for r in _results(station, bed)]}"
    return [r for r in _results(station, bed) if r.command_id == command_id]


def _latest_twin(station: Subscriber, bed: str) -> TwinMessage | None:
    twins = [m for m in station.on_topic(f"{bed_topic(bed)}/twin") if m.payload]
    return TwinMessage.model_validate_json(twins[-1].payload) if twins else None


def _spo2_readings(station: Subscriber, bed: str) -> list[tuple[datetime, float]]:
    readings = []
    for message in station.on_topic(f"{bed_topic(bed)}/vitals"):
        for observation in json.loads(message.payload)["observations"]:
            if observation["key"] == "spo2" and observation["valid"]:
                readings.append((datetime.fromisoformat(observation["received_at"]), observation["value"]))
    return readings


def test_a_desaturation_alarm_lives_through_commands_a_restart_and_recovery(
    make_ward: Callable[[WardLayout], Ward], broker: MosquittoBroker, subscribe: Callable[..., Subscriber]
) -> None:
    ward = make_ward(DESATURATION)
    station = subscribe(f"{ROOT}/#")
    ward.start_simulators()
    ward.start_daemon()

    # raised after its 10 s delay, not before: onset is the first reading below 90 %
    for bed in ward.beds:
        assert wait_for(lambda b=bed: _alarm_events(station, b, "spo2_low"), timeout_s=60), ward.log("daemon")
    raised = {bed: _alarm_events(station, bed, "spo2_low")[0] for bed in ward.beds}
    for bed, event in raised.items():
        alarm = event.alarm
        assert alarm is not None
        assert (event.kind, alarm.state, alarm.kind, alarm.key) == ("alarm_raised", "active", "physiological", "spo2")
        below = [at for at, value in _spo2_readings(station, bed) if value < 90]
        assert below and below[0] == alarm.onset
        assert alarm.determined_at - alarm.onset >= timedelta(seconds=10)
        assert alarm.determined_at - alarm.onset < timedelta(seconds=12)
        assert alarm.value is not None and alarm.value < 90 and alarm.limit == 90
    assert raised["bed-01"].alarm is not None and raised["bed-01"].alarm.priority == "medium"
    assert raised["bed-02"].alarm is not None and raised["bed-02"].alarm.priority == "high"
    bed1_id = raised["bed-01"].alarm.id
    bed2_id = raised["bed-02"].alarm.id

    # malformed commands are answered with the reason
    _command(broker, "bed-01", "ack", {"command_id": "bad-1"})
    [bad] = _result(station, "bed-01", "bad-1")
    assert bad.status == "rejected" and "alarm_id" in bad.reason
    _command(broker, "bed-01", "ack", b"{not json")
    assert "invalid" in _result(station, "bed-01", None)[0].reason
    _command(broker, "bed-01", "off", {"command_id": "off-1"})
    assert "never" in _result(station, "bed-01", "off-1")[0].reason

    # an ack is answered, changes the state, and a repeat is the same answer, not a second ack
    ack = {"command_id": "ack-1", "alarm_id": bed1_id, "user": "nurse-7", "role": "rn"}
    _command(broker, "bed-01", "ack", ack)
    [accepted] = _result(station, "bed-01", "ack-1")
    assert accepted.status == "accepted" and accepted.alarm is not None
    assert accepted.alarm.state == AlarmState.ACKNOWLEDGED
    assert accepted.alarm.acknowledged is not None and accepted.alarm.acknowledged.user == "nurse-7"
    _command(broker, "bed-01", "ack", ack)
    repeat = _result(station, "bed-01", "ack-1", count=2)[1]
    assert repeat.duplicate and repeat.status == "accepted"
    assert [e.alarm.state for e in _alarm_events(station, "bed-01", "spo2_low") if e.alarm] == ["active", "acknowledged"]

    # a pause ends by itself
    _command(broker, "bed-02", "pause", {"command_id": "pause-1", "duration_s": 3})
    assert _result(station, "bed-02", "pause-1")[0].status == "accepted"
    assert wait_for(
        lambda: [e.detail for e in _alarm_events(station, "bed-02", "spo2_low")][-1:] == ["audio pause over"],
        timeout_s=8,
    ), [e.detail for e in _alarm_events(station, "bed-02", "spo2_low")]
    states = [e.alarm.state for e in _alarm_events(station, "bed-02", "spo2_low") if e.alarm]
    assert states == ["active", "audio_paused", "active"]

    # a restart in the middle: same ids, same states, nothing raised again
    assert ward.stop_daemon() == 0
    restarted_at = len(station.messages)
    ward.start_daemon()
    assert wait_for(
        lambda: (t := _latest_twin(station, "bed-02")) is not None and t.session == 2 and t.alarms, timeout_s=20
    ), ward.log("daemon")
    twins = {bed: _latest_twin(station, bed) for bed in ward.beds}
    assert [(a.id, a.state) for a in twins["bed-01"].alarms if a.condition == "spo2_low"] == [  # type: ignore[union-attr]
        (bed1_id, AlarmState.ACKNOWLEDGED)
    ]
    assert [(a.id, a.state) for a in twins["bed-02"].alarms if a.condition == "spo2_low"] == [  # type: ignore[union-attr]
        (bed2_id, AlarmState.ACTIVE)
    ]
    births = [
        json.loads(m.payload)
        for m in station.messages[restarted_at:]
        if m.topic.endswith("/status") and b'"online"' in m.payload
    ]
    assert births and any(a["id"] == bed2_id for a in births[-1]["alarms"]["bed-02"])

    # recovery: the acknowledged alarm ends and its retained topic is cleared; the high one latches
    assert wait_for(
        lambda: any(e.kind == "alarm_ended" for e in _alarm_events(station, "bed-01", "spo2_low")), timeout_s=60
    ), ward.log("daemon")
    assert wait_for(
        lambda: any(
            e.alarm is not None and e.alarm.state == "latched" for e in _alarm_events(station, "bed-02", "spo2_low")
        ),
        timeout_s=20,
    ), ward.log("daemon")
    raised_again = [e for bed in ward.beds for e in _alarm_events(station, bed, "spo2_low") if e.kind == "alarm_raised"]
    assert len(raised_again) == 2
    late = subscribe(f"{ROOT}/bed/+/alarm/#")
    time.sleep(1.0)
    retained = {m.topic: AlarmMessage.model_validate_json(m.payload) for m in late.messages if m.payload}
    assert f"{bed_topic('bed-01')}/alarm/{bed1_id}" not in retained
    assert retained[f"{bed_topic('bed-02')}/alarm/{bed2_id}"].state == AlarmState.LATCHED
    _command(broker, "bed-02", "ack", {"command_id": "ack-2", "alarm_id": bed2_id, "user": "nurse-7"})
    assert _result(station, "bed-02", "ack-2")[0].alarm.state == AlarmState.ENDED  # type: ignore[union-attr]
    assert ward.stop_daemon() == 0


def test_a_killed_simulator_raises_a_technical_alarm_within_five_seconds(
    make_ward: Callable[[WardLayout], Ward], subscribe: Callable[..., Subscriber]
) -> None:
    ward = make_ward(WardLayout(beds=1))
    station = subscribe(f"{ROOT}/#")
    ward.start_simulators()
    ward.start_daemon()
    bed = ward.beds[0]
    assert wait_for(
        lambda: (t := _latest_twin(station, bed)) is not None and t.devices["vent-1"].connected and "hr" in t.values,
        timeout_s=30,
    ), ward.log("daemon")
    killed_s = time.time()
    ward.kill_simulator(bed)
    assert wait_for(lambda: _alarm_events(station, bed, "device_disconnected:vent-1"), timeout_s=10), ward.log("daemon")
    [message] = [
        m
        for m in station.on_topic(f"{bed_topic(bed)}/events")
        if b"device_disconnected:vent-1" in m.payload and b"alarm_raised" in m.payload
    ]
    assert message.received_wall_s - killed_s < 5.0
    alarm = _alarm_events(station, bed, "device_disconnected:vent-1")[0].alarm
    assert alarm is not None and (alarm.kind, alarm.device, alarm.priority) == ("technical", "vent-1", "medium")
    ward.start_simulator(bed)
    assert wait_for(
        lambda: any(e.kind == "alarm_ended" for e in _alarm_events(station, bed, "device_disconnected:vent-1")),
        timeout_s=30,
    ), ward.log("daemon")
    assert ward.stop_daemon() == 0
