"""Two beds, two ventilators, one daemon: each bed's twin fills from its own device only."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from broker import MosquittoBroker, Subscriber, wait_for
from ward import ROOT, Ward, WardLayout, bed_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def ward(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Ward]:
    instance = Ward(workdir=tmp_path, broker=broker, layout=WardLayout(beds=2))
    try:
        yield instance
    finally:
        instance.close()


def test_each_bed_twin_fills_from_its_own_ventilator(
    ward: Ward, subscribe: Callable[..., Subscriber]
) -> None:
    station = subscribe(f"{ROOT}/#")
    ward.start_simulators()
    ward.start_daemon()

    def twins_with_values() -> set[str]:
        beds = set()
        for message in station.messages:
            if message.topic.endswith("/twin") and message.payload:
                body = json.loads(message.payload)
                if body["values"]:
                    beds.add(body["bed"])
        return beds

    assert wait_for(lambda: twins_with_values() == set(ward.beds), timeout_s=30), ward.log("daemon")
    for bed in ward.beds:
        ports = {
            device["port"]
            for m in station.on_topic(f"{bed_topic(bed)}/device/vent-1")
            for device in [json.loads(m.payload)["status"]]
        }
        assert ports == {str(ward.links[bed])}
    assert ward.stop_daemon() == 0
