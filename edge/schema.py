"""JSON Schemas of the config and every payload, and the AsyncAPI 3 document of the MQTT contract.

Generated from the pydantic models, never written by hand, so a central-station team can generate
its client from `icu-edge schema --asyncapi` and trust it matches what the appliance sends.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from edge.alarms.commands import COMMANDS
from edge.config import AppConfig
from edge.model import (
    CONTRACT_VERSION,
    AlarmMessage,
    ApplianceStatusMessage,
    CommandResultMessage,
    DeviceStatusMessage,
    Envelope,
    EventMessage,
    ForecastMessage,
    TwinMessage,
    VitalsMessage,
    WaveMessage,
)

_CHANNELS: list[tuple[str, str, type[Envelope], bool, str]] = [
    (
        "applianceStatus",
        "{prefix}/{site}/{ward}/appliance/{appliance}/status",
        ApplianceStatusMessage,
        True,
        "Birth (online) on every connection; the MQTT Will and a clean shutdown set offline.",
    ),
    ("twin", "{prefix}/{site}/{ward}/bed/{bed}/twin", TwinMessage, True, "Full twin snapshot, coalesced."),
    ("vitals", "{prefix}/{site}/{ward}/bed/{bed}/vitals", VitalsMessage, False, "Observation batches."),
    ("events", "{prefix}/{site}/{ward}/bed/{bed}/events", EventMessage, False, "Lifecycle events, in order."),
    (
        "forecast",
        "{prefix}/{site}/{ward}/bed/{bed}/forecast",
        ForecastMessage,
        True,
        "Forecasts per signal and horizon with 10-90 % intervals, event probabilities, the model.",
    ),
    (
        "deviceStatus",
        "{prefix}/{site}/{ward}/bed/{bed}/device/{device}",
        DeviceStatusMessage,
        True,
        "Device link status and counters.",
    ),
    (
        "alarm",
        "{prefix}/{site}/{ward}/bed/{bed}/alarm/{alarm}",
        AlarmMessage,
        True,
        "One alarm's state, retained while it has not ended; an empty retained message clears it after.",
    ),
    (
        "commandResult",
        "{prefix}/{site}/{ward}/bed/{bed}/cmd-result",
        CommandResultMessage,
        False,
        "The appliance's answer to each command, matched by command_id.",
    ),
    (
        "wave",
        "{prefix}/{site}/{ward}/bed/{bed}/wave/{signal}",
        WaveMessage,
        False,
        "Fixed windows of one waveform signal (QoS 0, never stored; only when [waves] enabled).",
    ),
]


def json_schemas() -> dict[str, Any]:
    """Return the JSON Schemas of the config file and of every payload, keyed by name."""
    return {
        "config": AppConfig.model_json_schema(),
        "payloads": {
            message.SCHEMA: message.model_json_schema(by_alias=True) for _, _, message, _, _ in _CHANNELS
        },
        "commands": {name: model.model_json_schema() for name, model in COMMANDS.items()},
    }


def _add_schema(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    schemas[model.__name__] = model.model_json_schema(
        by_alias=True, ref_template="#/components/schemas/{model}"
    )
    for definition_name, definition in schemas[model.__name__].pop("$defs", {}).items():
        schemas[definition_name] = definition


def asyncapi_document(*, version: str) -> dict[str, Any]:
    """Return the AsyncAPI 3.0 document of MQTT contract v1."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for name, address, message, retained, description in _CHANNELS:
        schema_name = message.__name__
        _add_schema(schemas, message)
        messages[schema_name] = {
            "name": schema_name,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{schema_name}"},
        }
        parameters = {
            part.strip("{}"): {"description": f"the {part.strip('{}')} id"}
            for part in address.split("/")
            if part.startswith("{")
        }
        channels[name] = {
            "address": address,
            "description": description,
            "parameters": parameters,
            "messages": {schema_name: {"$ref": f"#/components/messages/{schema_name}"}},
            "bindings": {"mqtt": {"bindingVersion": "0.2.0"}},
        }
        operations[f"receive_{name}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"{'retained, ' if retained else ''}QoS 1",
            "bindings": {"mqtt": {"qos": 1, "retain": retained, "bindingVersion": "0.2.0"}},
        }
    for command, model in COMMANDS.items():
        name = f"command{command.capitalize()}"
        _add_schema(schemas, model)
        messages[model.__name__] = {
            "name": model.__name__,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
        }
        channels[name] = {
            "address": f"{{prefix}}/{{site}}/{{ward}}/bed/{{bed}}/cmd/{command}",
            "description": f"Inbound `{command}` request from the central station (answered on cmd-result).",
            "parameters": {"bed": {"description": "the bed id"}},
            "messages": {model.__name__: {"$ref": f"#/components/messages/{model.__name__}"}},
            "bindings": {"mqtt": {"bindingVersion": "0.2.0"}},
        }
        operations[f"send_{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": "QoS 1, not retained (a retained command is rejected)",
            "bindings": {"mqtt": {"qos": 1, "retain": False, "bindingVersion": "0.2.0"}},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "icu-edge MQTT contract",
            "version": f"{CONTRACT_VERSION}.0.0",
            "description": (
                f"Published by icu-edge {version}. Every payload carries schema, appliance, bed, session, "
                "seq (consecutive per topic within a session) and ts (RFC 3339 UTC, ms). prefix defaults "
                "to icu/v1."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
