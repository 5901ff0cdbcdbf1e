"""Fault: a noisy serial line whose frames pass the checksum but carry impossible values (issue 6, 4).

Real parts only: the MEDIBUS simulator on a pty plays the `noise` scenario (checksum-valid frames with
FiO2 9421 %, VT 9352 mL, RR 6618/min, and frames that name VT three times) to the daemon process,
which publishes to a real Mosquitto. A central station must never receive an impossible value as
valid, neither in the vitals nor in the retained twin, and the device status must show the count.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker, Subscriber, wait_for
from ward import ROOT, Ward, WardLayout, bed_topic

from drivers.medibus.simulator import NOISE_VALUES
from drivers.plausibility import check
from edge.model import DeviceStatusMessage, TwinMessage, VitalsMessage

pytestmark = [pytest.mark.integration]

NOISE = set(NOISE_VALUES.values())


@pytest.fixture
def ward(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Ward]:
    instance = Ward(workdir=tmp_path, broker=broker, layout=WardLayout(beds=1, scenario="noise"))
    try:
        yield instance
    finally:
        instance.close()


def _payloads(station: Subscriber, suffix: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in list(station.messages) if m.topic.endswith(suffix) and m.payload]


def _assert_valid_means_plausible(key: str, reading: dict[str, Any], where: str) -> None:
    if reading["valid"]:
        assert reading["value"] is not None, where
        assert check(key=key, value=reading["value"], unit=reading["unit"]) is None, f"{where}: {reading}"
        assert reading["value"] not in NOISE, f"{where}: {reading}"
    else:
        assert reading["value"] is None, f"{where}: an invalid reading must not carry a value: {reading}"


def test_noisy_line_never_publishes_an_impossible_value_as_valid(
    ward: Ward, subscribe: Callable[..., Subscriber]
) -> None:
    bed = ward.beds[0]
    station = subscribe(f"{ROOT}/#")
    ward.start_simulators()
    ward.start_daemon()
    device_topic = f"{bed_topic(bed)}/device/vent-1"

    def noise_arrived() -> bool:
        noisy = {
            observation["key"]
            for vitals in _payloads(station, "/vitals")
            for observation in vitals["observations"]
            if NOISE & {observation["value"], observation.get("rejected_value")}
        }
        return noisy >= {"fio2", "vt", "rr"}

    assert wait_for(noise_arrived, timeout_s=30, interval_s=0.5), ward.log("daemon")
    vitals = _payloads(station, "/vitals")
    for message in vitals:
        keys = [o["key"] for o in message["observations"]]
        assert len(keys) == len(set(keys)), f"a batch with two readings of one key: {keys}"
        for observation in message["observations"]:
            _assert_valid_means_plausible(observation["key"], observation, f"vitals seq {message['seq']}")
        VitalsMessage.model_validate(message)

    def counted() -> bool:
        return any(
            s["status"]["counters"].get("implausible_values", 0) >= 3
            and s["status"]["counters"].get("duplicate_codes", 0) >= 1
            and s["status"]["last_rejected"] is not None
            for s in _payloads(station, device_topic)
        )

    assert wait_for(counted, timeout_s=30, interval_s=0.5), _payloads(station, device_topic)[-1:]
    twins = _payloads(station, "/twin")
    assert twins
    for message in twins:
        for key, value in message["values"].items():
            _assert_valid_means_plausible(key, value, f"twin seq {message['seq']}")
        TwinMessage.model_validate(message)
    status = DeviceStatusMessage.model_validate(_payloads(station, device_topic)[-1]).status
    assert status.last_rejected is not None
    assert status.last_rejected.value in NOISE
    assert (status.last_rejected.minimum, status.last_rejected.maximum) != (None, None)

    assert ward.stop_daemon() == 0
    # The retained twin a central station gets on (re)subscribing holds no impossible value as valid.
    late = subscribe(f"{bed_topic(bed)}/twin")
    assert wait_for(lambda: bool(late.messages), timeout_s=10)
    retained = json.loads(late.messages[-1].payload)
    assert retained["values"]
    for key, value in retained["values"].items():
        _assert_valid_means_plausible(key, value, "retained twin")
