"""Topic names and payload encoding of the MQTT contract v1 (DESIGN.md, 'MQTT contract v1')."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, get_args

from pydantic import BaseModel
from pydantic_core import to_json

from edge.model import Body, Timestamp, format_rfc3339_ms


@dataclass(frozen=True, slots=True, kw_only=True)
class Topics:
    """Every topic the appliance publishes or subscribes to, under `R = {prefix}/{site}/{ward}`."""

    prefix: str
    site: str
    ward: str
    appliance: str

    @property
    def root(self) -> str:
        """Return `R`."""
        return f"{self.prefix}/{self.site}/{self.ward}"

    def appliance_status(self) -> str:
        """Return the retained birth/death topic."""
        return f"{self.root}/appliance/{self.appliance}/status"

    def twin(self, bed: str) -> str:
        """Return the retained twin snapshot topic of a bed."""
        return f"{self.root}/bed/{bed}/twin"

    def vitals(self, bed: str) -> str:
        """Return the observation batch topic of a bed."""
        return f"{self.root}/bed/{bed}/vitals"

    def events(self, bed: str) -> str:
        """Return the ordered event topic of a bed."""
        return f"{self.root}/bed/{bed}/events"

    def forecast(self, bed: str) -> str:
        """Return the retained forecast topic of a bed."""
        return f"{self.root}/bed/{bed}/forecast"

    def device(self, bed: str, device: str) -> str:
        """Return the retained device status topic."""
        return f"{self.root}/bed/{bed}/device/{device}"

    def wave(self, bed: str, signal: str) -> str:
        """Return the waveform topic of one signal of a bed."""
        return f"{self.root}/bed/{bed}/wave/{signal}"

    def alarm(self, bed: str, alarm_id: str) -> str:
        """Return the retained topic of one alarm (cleared after it ends)."""
        return f"{self.root}/bed/{bed}/alarm/{alarm_id}"

    def is_bulk_state(self, topic: str) -> bool:
        """Whether `topic` carries bulk retained state (twin, forecast, device status), not vitals or alarms.

        A function of the topic alone, so every message of one topic takes the same publisher lane.
        """
        prefix = f"{self.root}/bed/"
        if not topic.startswith(prefix):
            return False
        parts = topic[len(prefix) :].split("/")
        return (len(parts) == 2 and parts[1] in ("twin", "forecast")) or (
            len(parts) == 3 and parts[1] == "device"
        )

    def command_result(self, bed: str) -> str:
        """Return the topic the appliance answers commands on."""
        return f"{self.root}/bed/{bed}/cmd-result"

    def commands(self) -> str:
        """Return the filter of every bed's inbound commands (`R/bed/{bed}/cmd/{command}`)."""
        return f"{self.root}/bed/+/cmd/+"

    def parse_command(self, topic: str) -> tuple[str, str] | None:
        """Return (bed, command) of an inbound command topic, or None for any other topic."""
        prefix = f"{self.root}/bed/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) != 3 or parts[1] != "cmd" or not parts[0] or not parts[2]:
            return None
        return parts[0], parts[2]


def encode_message(
    body: Body, *, appliance: str, bed: str | None, session: int, seq: int, ts: datetime
) -> bytes:
    """Stamp the envelope on a body and return the JSON bytes a subscriber receives.

    The body is serialized by pydantic's Rust serializer in one call; the envelope goes first and the
    body's fields follow it in the same object.
    """
    envelope = to_json(
        {
            "schema": body.SCHEMA,
            "appliance": appliance,
            "bed": bed,
            "session": session,
            "seq": seq,
            "ts": format_rfc3339_ms(ts),
        }
    )
    fields = body.__pydantic_serializer__.to_json(body)
    if fields != b"{}":
        envelope = envelope[:-1] + b"," + fields[1:]
    return _finish(envelope)


def encode_document(document: dict[str, Any]) -> bytes:
    """Return the JSON bytes of a payload document, compact, UTF-8 (the same encoder as `encode_message`).

    NaN and Infinity are not JSON: a body carrying one is refused here (ValueError; the publisher
    counts and logs it) rather than breaking every central station's parser.
    """
    return _finish(to_json(document, inf_nan_mode="constants"))


_INSTANT_TYPES: set[object] = {Timestamp, datetime}


def _instant_fields() -> frozenset[str]:
    """Return the names of every instant field of every payload (the envelope's `ts` included).

    The encoder rewrites instants by their key, so a name must mean an instant wherever it appears:
    a payload field of another type with the same name is a programming error, refused at import.
    """
    instants = {"ts"}
    others: set[str] = set()
    seen: set[type[BaseModel]] = set()
    pending: list[object] = list(get_args(Body))
    while pending:
        node = pending.pop()
        if isinstance(node, type) and issubclass(node, BaseModel):
            if node in seen:
                continue
            seen.add(node)
            for name, info in node.model_fields.items():
                annotation = info.annotation
                members = set(get_args(annotation)) - {type(None)}
                if annotation in _INSTANT_TYPES or (members and members <= _INSTANT_TYPES):
                    instants.add(name)
                else:
                    others.add(name)
                    pending.append(annotation)
        else:
            pending.extend(get_args(node))
    if clash := instants & others:
        raise RuntimeError(f"payload fields named like instants but of another type: {sorted(clash)}")
    return frozenset(instants)


_NON_FINITE = (b"NaN", b"Infinity")
# pydantic writes an instant in UTC as `"2026-11-25T20:23:32.123456Z"`, or without the fraction when
# the microseconds are 0, and with the offset otherwise (`+01:00`). The patterns run over the
# REVERSED bytes, where each starts with the literal `"Z` (the closing quote first), which the regex
# engine finds fast, and the replacements are literal, so no Python code runs per instant. Each
# pattern also requires the key of an instant field right before the value (`{"at":"...` or
# `,"at":"...`), so a string that merely looks like an instant (a device's text) is never touched.
_KEYS_REVERSED = b"|".join(re.escape(name[::-1].encode()) for name in sorted(_instant_fields()))
_VALUE_START_REVERSED = rb'":"(?:' + _KEYS_REVERSED + rb')"[{,]'
_MICROSECONDS_REVERSED = re.compile(
    rb'"Z\d{3}(?=\d{3}\.\d\d:\d\d:\d\dT\d\d-\d\d-\d{4}' + _VALUE_START_REVERSED + rb")"
)
"""The closing `Z"` and the last three fraction digits (dropped: truncation, as `format_rfc3339_ms`)."""
_WHOLE_SECOND_REVERSED = re.compile(rb'"Z(?=\d\d:\d\d:\d\dT\d\d-\d\d-\d{4}' + _VALUE_START_REVERSED + rb")")
"""The closing `Z"` of an instant without a fraction (`.000` goes in)."""
_OFFSET_REVERSED = re.compile(
    rb'"\d\d:\d\d[+-](?:\d{6}\.)?\d\d:\d\d:\d\dT\d\d-\d\d-\d{4}' + _VALUE_START_REVERSED
)
"""An instant with a UTC offset other than zero (a device clock's zone)."""
_WITH_OFFSET = re.compile(
    rb'([{,]"(?:'
    + b"|".join(re.escape(name.encode()) for name in sorted(_instant_fields()))
    + rb')":)"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{6})?[+-]\d\d:\d\d)"'
)


def _finish(encoded: bytes) -> bytes:
    """Refuse non-finite numbers and write every instant as RFC 3339 UTC with milliseconds.

    The common case is three C-level regex passes over the bytes (see the patterns above). The rare
    cases take a slower exact path: a `NaN`/`Infinity` text (which may sit inside a string: only a
    number token is refused), an instant with a non-zero offset (rewritten in UTC).
    """
    if any(constant in encoded for constant in _NON_FINITE):
        json.loads(encoded, parse_constant=_refuse_constant)
    backwards = _MICROSECONDS_REVERSED.sub(b'"Z', encoded[::-1])
    backwards = _WHOLE_SECOND_REVERSED.sub(b'"Z000.', backwards)
    if _OFFSET_REVERSED.search(backwards) is None:
        return backwards[::-1]
    return _WITH_OFFSET.sub(_as_utc, backwards[::-1])


def _refuse_constant(name: str) -> float:
    raise ValueError(f"Out of range float values are not JSON compliant: {name}")


def _as_utc(match: re.Match[bytes]) -> bytes:
    moment = datetime.fromisoformat(match.group(2).decode("ascii"))
    return match.group(1) + f'"{format_rfc3339_ms(moment)}"'.encode("ascii")
