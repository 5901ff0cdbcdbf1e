"""A whole bed: ventilator and monitor, one daemon, waves on; the twin merges both devices by source.

Two beds, each with a MEDIBUS ventilator and an IntelliVue monitor on their own ptys, all of them
real processes, against a real Mosquitto. The ventilator and the monitor both report SpO2 and pulse:
the twin shows the monitor's (haemodynamics), the ventilator's etCO2 (respiration), `map` derived from
the monitor's arterial mean, and waves from both devices (the monitor's arrays, the ventilator's
MEDIBUS.X curves) arrive as equal one-second windows on their topics. The forecast's heart rate is
the monitor's `hr`, not the ventilator's pulse rate (which a bed with only a ventilator would use).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from broker import MosquittoBroker, Subscriber, wait_for
from ward import ROOT, Ward, WardLayout, bed_topic

from edge.model import ForecastMessage, TwinMessage, WaveMessage

pytestmark = pytest.mark.integration

LAYOUT = WardLayout(
    beds=2,
    ventilator_options="waves = true",
    monitor="intellivue",
    monitor_options_toml="waves = true",
    extra_toml="[waves]\nenabled = true\nwindow_s = 1.0",
    engines_toml='[engines]\nenabled = true\nbackend = "onnxruntime"',
)


@pytest.fixture
def ward(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Ward]:
    instance = Ward(workdir=tmp_path, broker=broker, layout=LAYOUT)
    try:
        yield instance
    finally:
        instance.close()


def _latest_twin(station: Subscriber, bed: str) -> dict[str, Any] | None:
    twins = [m for m in station.on_topic(f"{bed_topic(bed)}/twin") if m.payload]
    return json.loads(twins[-1].payload) if twins else None


def _latest_forecast(station: Subscriber, bed: str) -> ForecastMessage | None:
    forecasts = [m for m in station.on_topic(f"{bed_topic(bed)}/forecast") if m.payload]
    return ForecastMessage.model_validate_json(forecasts[-1].payload) if forecasts else None


def _whole(twin: dict[str, Any] | None) -> bool:
    return twin is not None and {"hr", "spo2", "abp_mean", "map", "etco2", "vt"} <= set(twin["values"])


def test_a_bed_with_ventilator_and_monitor_shows_one_source_per_key_and_both_waves(
    ward: Ward, subscribe: Callable[..., Subscriber]
) -> None:
    station = subscribe(f"{ROOT}/#")
    ward.start_simulators()
    ward.start_daemon()
    assert wait_for(lambda: all(_whole(_latest_twin(station, bed)) for bed in ward.beds), timeout_s=40), (
        ward.log("daemon")
    )
    for bed in ward.beds:
        twin = TwinMessage.model_validate(_latest_twin(station, bed))
        values = twin.values
        assert {key: values[key].device for key in ("hr", "spo2", "abp_mean", "map")} == dict.fromkeys(
            ("hr", "spo2", "abp_mean", "map"), "mon-1"
        )
        assert (values["etco2"].device, values["vt"].device) == ("vent-1", "vent-1")
        assert values["map"].value == values["abp_mean"].value
        assert {twin.devices["vent-1"].kind, twin.devices["mon-1"].kind} == {"ventilator", "monitor"}
        # the ventilator's own SpO2 reached the vitals stream, it just is not the twin's source
        vent_spo2 = [
            o
            for m in station.on_topic(f"{bed_topic(bed)}/vitals")
            for o in json.loads(m.payload)["observations"]
            if o["key"] == "spo2" and o["device"] == "vent-1"
        ]
        assert vent_spo2
        vent_pr = [
            m
            for m in station.on_topic(f"{bed_topic(bed)}/vitals")
            if any(
                o["key"] == "pr" and o["device"] == "vent-1" for o in json.loads(m.payload)["observations"]
            )
        ]
        assert vent_pr, "the ventilator sends a pulse rate too"
        assert wait_for(
            lambda b=bed: (f := _latest_forecast(station, b)) is not None and "hr" in f.signals, timeout_s=20
        ), ward.log("daemon")
        forecast = _latest_forecast(station, bed)
        assert forecast is not None
        assert forecast.signals["hr"].source == "hr", "the monitor's heart rate, not the ventilator's pulse"
    for bed in ward.beds:
        for signal, device in (("ecg", "mon-1"), ("pleth", "mon-1"), ("paw", "vent-1"), ("flow", "vent-1")):
            topic = f"{bed_topic(bed)}/wave/{signal}"
            assert wait_for(lambda t=topic: len(station.on_topic(t)) >= 3, timeout_s=20), ward.log("daemon")
            windows = [WaveMessage.model_validate_json(m.payload) for m in station.on_topic(topic)]
            assert {w.device for w in windows} == {device}
            assert {w.bed for w in windows} == {bed}
            # windows tile the stream: each starts where the one before ended unless it says gap_before;
            # a stalled stream is sent short rather than held back, so windows are at most one second
            for before, after in pairwise(windows):
                if not after.gap_before:
                    end = before.start + timedelta(seconds=len(before.samples) * before.sample_period_s)
                    assert abs((after.start - end).total_seconds()) < 0.002
            lengths_s = [round(len(w.samples) * w.sample_period_s, 3) for w in windows]
            assert max(lengths_s) == 1.0
            assert lengths_s.count(1.0) >= 2
    assert ward.stop_daemon() == 0
