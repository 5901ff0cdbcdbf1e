"""Topic names and payload encoding of the MQTT contract v1 (DESIGN.md, 'MQTT contract v1')."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from edge.model import Body, format_rfc3339_ms


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
    """Stamp the envelope on a body and return the JSON bytes a subscriber receives."""
    envelope = {
        "schema": body.SCHEMA,
        "appliance": appliance,
        "bed": bed,
        "session": session,
        "seq": seq,
        "ts": format_rfc3339_ms(ts),
    }
    return encode_document(envelope | body.model_dump(mode="json"))


def encode_document(document: dict[str, Any]) -> bytes:
    """Return the JSON bytes of a payload document, compact, UTF-8.

    allow_nan=False: NaN and Infinity are not JSON; a body carrying one is refused here (the publisher
    counts and logs it) rather than breaking every central station's parser.
    """
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
