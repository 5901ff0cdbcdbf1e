"""`icu-edge schema`: JSON Schemas and the AsyncAPI document come from the models and are complete."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.cli import main
from edge.contract import encode_message
from edge.model import Observation, VitalsBody, utc_now


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["schema", *argv]) == 0
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return document


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_json_schemas_cover_config_and_every_payload(capsys: pytest.CaptureFixture[str]) -> None:
    document = _run(capsys)
    assert set(document["payloads"]) == {
        "icu-edge/status/2",
        "icu-edge/twin/5",
        "icu-edge/vitals/3",
        "icu-edge/event/2",
        "icu-edge/device/3",
        "icu-edge/forecast/2",
        "icu-edge/wave/1",
        "icu-edge/alarm/1",
        "icu-edge/cmd-result/1",
    }
    assert set(document["commands"]) == {"ack", "pause", "limits", "rebirth", "news2"}
    for schema in document["payloads"].values():
        assert {"schema", "appliance", "bed", "session", "seq", "ts"} <= set(schema["properties"])
        assert schema["additionalProperties"] is False
    config = document["config"]
    assert {"appliance", "mqtt", "bed"} <= set(config["required"])
    assert config["additionalProperties"] is False


def test_asyncapi_document_is_self_contained(capsys: pytest.CaptureFixture[str]) -> None:
    document = _run(capsys, "--asyncapi")
    assert document["asyncapi"] == "3.0.0"
    assert set(document["channels"]) == {
        "applianceStatus",
        "twin",
        "vitals",
        "events",
        "deviceStatus",
        "forecast",
        "wave",
        "alarm",
        "commandResult",
        "commandAck",
        "commandPause",
        "commandLimits",
        "commandRebirth",
        "commandNews2",
    }
    assert document["operations"]["send_commandAck"]["action"] == "send"
    assert document["channels"]["twin"]["address"] == "{prefix}/{site}/{ward}/bed/{bed}/twin"
    assert document["operations"]["receive_twin"]["bindings"]["mqtt"]["retain"] is True
    for ref in _refs(document):
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert isinstance(target, dict), ref


def test_a_non_finite_number_is_never_encoded_as_json() -> None:
    """NaN and Infinity are not JSON: encoding refuses them instead of breaking a central station's parser."""
    now = utc_now()

    def vitals(value: float) -> VitalsBody:
        observation = Observation(
            key="hr",
            value=value,
            unit="/min",
            label="HR",
            device="mon-1",
            device_code="x",
            valid=True,
            device_time=None,
            received_at=now,
        )
        return VitalsBody(device="mon-1", observations=[observation])

    json.loads(encode_message(vitals(80.0), appliance="a", bed="b", session=1, seq=0, ts=now))
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="JSON compliant"):
            encode_message(vitals(value), appliance="a", bed="b", session=1, seq=0, ts=now)
