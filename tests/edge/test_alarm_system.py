"""The alarm system's own conditions and command handling, with a real alarm store on disk.

The publisher here is a real one that was never started: what it is handed is refused and counted
(it is not what these tests look at); the alarm store, the manager and the commands are the real ones.
"""

from __future__ import annotations

import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.alarms.store import AlarmStore
from edge.alarms.system import AlarmSystem
from edge.config import AppConfig
from edge.contract import Topics
from edge.model import TwinValue, utc_now
from edge.outbox import DeliveryPriority
from edge.publisher import InboundMessage, Publisher, PublisherStats

CENTRAL = "icu/v1/hosp-a/icu-3/central/state"


def _config(tmp_path: Path) -> AppConfig:
    return AppConfig.model_validate(
        tomllib.loads(
            f"""
[appliance]
id = "edge-0001"
site = "hosp-a"
ward = "icu-3"
[mqtt]
host = "127.0.0.1"
insecure = true
[store]
path = "{tmp_path / "outbox.db"}"
[alarms]
broker_unreachable_s = 1
central_station_topic = "{CENTRAL}"
[[bed]]
id = "bed-01"
[bed.alarm_limits.spo2]
delay_s = 1
[[bed]]
id = "bed-02"
"""
        )
    )


class _Ward:
    def __init__(self, tmp_path: Path) -> None:
        self.config = _config(tmp_path)
        self.topics = Topics(prefix="icu/v1", site="hosp-a", ward="icu-3", appliance="edge-0001")
        self.store_path = self.config.alarm_state_path
        self.store = AlarmStore(self.store_path)
        self.republished: list[str] = []
        self.values: dict[str, dict[str, TwinValue]] = {}
        """What the twin would hand the alarm system at a tick."""
        self.system = self._system()

    def _system(self) -> AlarmSystem:
        publisher = Publisher(
            mqtt=self.config.mqtt,
            store=self.config.store,
            topics=self.topics,
            appliance_id="edge-0001",
            beds=["bed-01", "bed-02"],
            version="test",
            on_inbound=lambda message: None,
            central_station_topic=CENTRAL,
        )
        return AlarmSystem(
            config=self.config,
            store=self.store,
            publisher=publisher,
            topics=self.topics,
            republish_bed=self.republished.append,
            mark_twin_dirty=lambda bed: None,
        )

    def restart(self) -> None:
        self.store.close()
        self.store = AlarmStore(self.store_path)
        self.system = self._system()

    def command(self, bed: str, name: str, payload: bytes, *, retained: bool = False) -> None:
        self.system.inbound(
            InboundMessage(
                topic=f"icu/v1/hosp-a/icu-3/bed/{bed}/cmd/{name}",
                payload=payload,
                retained=retained,
                received_mono_s=time.monotonic(),
            )
        )

    def tick(self, *, stats: PublisherStats) -> None:
        self.system.tick(stats=stats, values_of=lambda bed, keys: dict(self.values.get(bed, {})))

    def conditions(self, bed: str) -> list[str]:
        return [a.condition for a in self.system.manager.active(bed)]


@pytest.fixture
def ward(tmp_path: Path) -> Iterator[_Ward]:
    instance = _Ward(tmp_path)
    yield instance
    instance.store.close()


def _stats(*, connected: bool, dropped: int = 0) -> PublisherStats:
    return PublisherStats(
        connected=connected,
        session=1,
        pending=0,
        in_flight=0,
        submitted=0,
        acked=0,
        dropped={DeliveryPriority.OBSERVATION: dropped},
        spilled=0,
        outbox_disk_bytes=0,
        outbox_cap_bytes=0,
        errors=0,
        last_error="connection refused",
        last_progress_s=0.0,
        fatal_error=None,
    )


def test_an_unreachable_broker_becomes_an_alarm_on_every_bed_after_its_delay(ward: _Ward) -> None:
    ward.tick(stats=_stats(connected=False))
    assert ward.conditions("bed-01") == []
    time.sleep(1.1)
    ward.tick(stats=_stats(connected=False))
    assert ward.conditions("bed-01") == ward.conditions("bed-02") == ["broker_unreachable"]
    ward.tick(stats=_stats(connected=True))
    assert ward.conditions("bed-01") == []


def test_dropped_messages_are_an_alarm(ward: _Ward) -> None:
    ward.tick(stats=_stats(connected=True, dropped=0))
    ward.tick(stats=_stats(connected=True, dropped=3))
    [alarm] = ward.system.manager.active("bed-02")
    assert alarm.condition == "outbox_dropping"
    assert "3 message(s) dropped" in alarm.cause


def test_alarm_state_that_cannot_be_saved_is_an_alarm_and_is_written_later(ward: _Ward) -> None:
    ward.store.set_max_pages(1)  # SQLite keeps the pages it has: writes fail once they need a new one
    for n in range(2000):
        ward.command(
            "bed-01", "ack", f'{{"command_id":"a-{n}","alarm_id":"none","reason":"{"x" * 200}"}}'.encode()
        )
        if not ward.store.healthy:
            break
    ward.command("bed-01", "limits", b'{"command_id":"l-1","key":"spo2","low":88}')
    ward.tick(stats=_stats(connected=True))
    assert "alarm_state_not_saved" in ward.conditions("bed-01")
    ward.store.set_max_pages(1_000_000)
    time.sleep(1.1)  # the store retries at most once a second
    ward.tick(stats=_stats(connected=True))
    assert "alarm_state_not_saved" not in ward.conditions("bed-01")
    ward.restart()
    assert ward.system.manager.limits("bed-01")["spo2"].low == 88


def test_the_central_station_going_offline_is_an_alarm_and_in_the_status(ward: _Ward) -> None:
    central = InboundMessage(topic=CENTRAL, payload=b'{"online": false}', retained=True, received_mono_s=0.0)
    ward.system.inbound(central)
    assert ward.conditions("bed-01") == ["central_station_offline"]
    assert "central station offline" in ward.system.status()
    ward.system.inbound(
        InboundMessage(topic=CENTRAL, payload=b'{"online": true}', retained=True, received_mono_s=0.0)
    )
    assert ward.conditions("bed-01") == []


def test_commands_are_audited_idempotent_across_a_restart_and_retained_ones_refused(ward: _Ward) -> None:
    ward.command(
        "bed-01", "limits", b'{"command_id":"l-1","key":"hr","high":130,"user":"dr-2"}', retained=True
    )
    assert ward.store.command_result(bed="bed-01", command_id="l-1") is None
    assert ward.system.manager.limits("bed-01")["hr"].high == 120
    ward.command("bed-01", "limits", b'{"command_id":"l-1","key":"hr","high":130,"user":"dr-2"}')
    assert ward.system.manager.limits("bed-01")["hr"].high == 130
    assert ward.system.manager.limits("bed-02")["hr"].high == 120
    first = ward.store.command_result(bed="bed-01", command_id="l-1")
    assert first is not None
    assert first.status == "accepted"
    ward.restart()
    assert ward.system.manager.limits("bed-01")["hr"].high == 130
    ward.command("bed-01", "limits", b'{"command_id":"l-1","key":"hr","high":140,"user":"dr-2"}')
    assert ward.system.manager.limits("bed-01")["hr"].high == 130  # answered again, not applied again
    rows = ward.store.audit_rows(bed="bed-01")
    assert [(r.action, r.actor, r.result.split(":")[0]) for r in rows] == [
        ("cmd/limits", "dr-2", "accepted"),
        ("cmd/limits", None, "rejected"),
    ]


def test_an_unknown_bed_and_a_pause_longer_than_allowed_are_refused(ward: _Ward) -> None:
    ward.command("bed-99", "rebirth", b'{"command_id":"r-1"}')
    assert ward.store.audit_rows(bed="-")[0].result.startswith("rejected: no bed 'bed-99'")
    ward.command("bed-01", "pause", b'{"command_id":"p-1","duration_s":301}')
    result = ward.store.command_result(bed="bed-01", command_id="p-1")
    assert result is not None
    assert "longer than the 300 s allowed" in result.reason
    ward.command("bed-02", "rebirth", b'{"command_id":"r-2"}')
    assert ward.republished == ["bed-02"]


def test_news2_inputs_by_command_reach_the_score(ward: _Ward) -> None:
    ward.command("bed-01", "news2", b'{"command_id":"n-1","consciousness":"voice","spo2_scale":2}')
    body = ward.system.news2(bed="bed-01", values={})
    assert (body.consciousness, body.spo2_scale, body.subscores["consciousness"]) == ("voice", 2, 3)
    assert body.advisory == "single_parameter"
    assert ward.system.manager.active("bed-01") == []


def _spo2(value: float, *, stale: bool) -> TwinValue:
    return TwinValue(
        value=value,
        unit="%",
        mdc=None,
        label="SpO2",
        device="mon-1",
        valid=True,
        device_time=None,
        received_at=utc_now(),
        age_s=0.0,
        stale=stale,
    )


def test_a_reading_gone_stale_stops_a_pending_delay_at_the_tick(ward: _Ward) -> None:
    ward.system.observe(bed="bed-01", values={"spo2": _spo2(85, stale=False)})
    ward.values["bed-01"] = {"spo2": _spo2(85, stale=True)}  # the monitor fell silent
    time.sleep(1.2)
    ward.tick(stats=_stats(connected=True))
    assert ward.conditions("bed-01") == []


def test_a_reading_still_fresh_completes_its_delay_at_the_tick_without_a_new_one(ward: _Ward) -> None:
    ward.system.observe(bed="bed-01", values={"spo2": _spo2(85, stale=False)})
    ward.values["bed-01"] = {"spo2": _spo2(85, stale=False)}  # a cuff-like reading, fresh for long
    time.sleep(1.2)
    ward.tick(stats=_stats(connected=True))
    assert ward.conditions("bed-01") == ["spo2_low"]
