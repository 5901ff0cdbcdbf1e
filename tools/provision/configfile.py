"""The config file written from the answers: TOML text, the same bytes for the same answers.

Only what the answers say is written; every other setting keeps edge/config.py's default, so a later
release's better default reaches the box without editing the file. No timestamp or host detail goes
in: a second run with the same answers must produce the same bytes (that is how it knows it changed
nothing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from tools.provision.answers import Answers

HEADER = (
    "# icu-edge configuration, written by `icu-edge provision` from its answers.\n"
    "# Change the answers and run provision again rather than editing this file by hand;\n"
    "# every setting not named here keeps its default (icu-edge schema shows them all).\n"
)


def config_document(
    answers: Answers, *, devices: Mapping[tuple[str, str], Mapping[str, object]]
) -> dict[str, object]:
    """Return the config as a TOML document; `devices[(bed, device)]` holds each device's resolved fields."""
    broker = answers.broker
    mqtt: dict[str, object] = {"host": broker.host, "port": broker.port, "topic_prefix": broker.topic_prefix}
    if broker.username is not None:
        mqtt["username"] = broker.username
    if broker.password_file is not None:
        mqtt["password_file"] = str(broker.password_file)
    if broker.insecure:
        mqtt["insecure"] = True
    if broker.ca is not None or broker.cert is not None or broker.key is not None:
        tls: dict[str, object] = {"ca": str(broker.ca) if broker.ca is not None else ""}
        if broker.cert is not None:
            tls["cert"] = str(broker.cert)
        if broker.key is not None:
            tls["key"] = str(broker.key)
        if broker.insecure_skip_hostname_check:
            tls["insecure_skip_hostname_check"] = True
        mqtt["tls"] = tls
    return {
        "config_version": 1,
        "appliance": answers.appliance.model_dump(),
        "mqtt": mqtt,
        "store": {"path": str(answers.paths.outbox)},
        "engines": {
            "enabled": answers.engines.enabled,
            "backend": answers.engines.backend,
            "cache_dir": str(answers.paths.engines_cache),
        },
        "bed": [
            {"id": bed.id, "device": [dict(devices[(bed.id, device.id)]) for device in bed.device]}
            for bed in answers.bed
        ],
    }


def render(document: Mapping[str, object], *, header: str = HEADER) -> str:
    """Render a document of tables, arrays of tables and scalars as TOML (what tomllib reads back)."""
    lines = [header.rstrip("\n")]
    _table(lines, document, prefix=())
    return "\n".join(lines) + "\n"


def _table(lines: list[str], table: Mapping[str, object], *, prefix: tuple[str, ...]) -> None:
    nested: list[tuple[str, object]] = []
    for key, value in table.items():
        if _is_table(key, value, prefix=prefix):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested:
        path = (*prefix, key)
        name = ".".join(_key(part) for part in path)
        if isinstance(value, Mapping):
            lines.extend(["", f"[{name}]"])
            _table(lines, value, prefix=path)
            continue
        assert isinstance(value, Sequence)
        for item in value:
            assert isinstance(item, Mapping)
            lines.extend(["", f"[[{name}]]"])
            _table(lines, item, prefix=path)


def _is_table(key: str, value: object, *, prefix: tuple[str, ...]) -> bool:
    """A table or an array of tables gets its own header; anything else is a `key = value` line."""
    if isinstance(value, Mapping):
        return not _inline(key, prefix)
    if not isinstance(value, Sequence) or isinstance(value, str):
        return False
    return bool(value) and isinstance(value[0], Mapping)


def _inline(key: str, prefix: tuple[str, ...]) -> bool:
    """Driver options stay an inline table on their device's line (short, and read as one unit)."""
    return key == "options" and prefix[-1:] == ("device",)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() and key.isascii() else json.dumps(key)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        # A JSON string is a TOML basic string: the same escapes (\\, \", \n, \uXXXX).
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, Mapping):
        return (
            "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
        )
    if isinstance(value, Sequence):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
