"""MEDIBUS device layer: turn response payloads into typed readings, skipping what cannot be read.

Every parser takes a `LinkCounters` and counts, under `extra`, the records it had to skip
(`unknown_codes`, `malformed_records`), so a device speaking a dialect we do not know never crashes
the session. A measured-data frame that names one code twice is rejected whole (`duplicate_codes`):
a device reports each parameter once per answer, so a repeat is line noise that the 8-bit checksum
let through, and no record of that frame can be trusted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from drivers.base import DeviceAlarmReading, LinkCounters, Measurement, Setting
from drivers.medibus.codec import ControlByte
from drivers.medibus.codes import (
    DEVICE_SETTINGS,
    MEASURED_CP1,
    MeasuredCodeCP1,
    SettingCode,
    alarm_priority,
)

LOGGER = logging.getLogger(__name__)

MEASURED_RECORD_LEN = 6
SETTING_RECORD_LEN = 7
ALARM_RECORD_LEN = 15
ALARM_TEXT_LEN = 12
EXTRA_UNKNOWN_CODES = "unknown_codes"
EXTRA_MALFORMED = "malformed_records"
EXTRA_DUPLICATE_CODES = "duplicate_codes"
_ENCODING = "latin-1"
_NUMBER_CHARS = frozenset("0123456789.+-")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceIdentification:
    """The answer to a device-identification request (`R`)."""

    device_id: str
    name: str
    revision: str
    medibus_version: str

    def to_payload(self) -> bytes:
        """Return the identification as response data (`0161'name'01.00:06.00`)."""
        text = f"{self.device_id}'{self.name}'{self.revision}:{self.medibus_version}"
        return text.encode(_ENCODING)


def _bump(counters: LinkCounters, name: str) -> None:
    counters.extra[name] = counters.extra.get(name, 0) + 1


def _number(text: str) -> float | None:
    """Return the numeric value of a fixed-width field, None when blank, dashed or not a number."""
    stripped = text.strip()
    if not stripped or any(c not in _NUMBER_CHARS for c in stripped):
        return None
    try:
        return float(stripped)
    except ValueError:
        return None


def _records(data: bytes, *, size: int, counters: LinkCounters) -> list[str]:
    """Split data into fixed-size records, counting a trailing partial record as malformed."""
    text = data.decode(_ENCODING)
    whole = len(text) - len(text) % size
    if whole != len(text):
        _bump(counters, EXTRA_MALFORMED)
    return [text[i : i + size] for i in range(0, whole, size)]


def parse_measurements(data: bytes, *, counters: LinkCounters) -> tuple[Measurement, ...]:
    """Decode a codepage-1 measured-data payload (6-char records: 2 hex code + 4-char value).

    Return no measurement at all when a code appears twice (counted as `duplicate_codes`).
    """
    records = _records(data, size=MEASURED_RECORD_LEN, counters=counters)
    codes = [record[:2].upper() for record in records]
    if len(set(codes)) != len(codes):
        _bump(counters, EXTRA_DUPLICATE_CODES)
        LOGGER.debug("measured-data frame with a repeated code rejected: %r", data)
        return ()
    out: list[Measurement] = []
    for record in records:
        code = record[:2].upper()
        try:
            spec = MEASURED_CP1[MeasuredCodeCP1(code)]
        except ValueError:
            _bump(counters, EXTRA_UNKNOWN_CODES)
            continue
        value = _number(record[2:])
        out.append(
            Measurement(
                key=spec.key,
                value=None if value is None else value * spec.scale,
                unit=spec.unit,
                device_code=code,
                label=spec.label,
                mdc_code=spec.mdc_code,
                valid=value is not None,
            )
        )
    return tuple(out)


def parse_settings(data: bytes, *, counters: LinkCounters) -> tuple[Setting, ...]:
    """Decode a device-settings payload (7-char records: 2 hex code + 5-char value)."""
    out: list[Setting] = []
    for record in _records(data, size=SETTING_RECORD_LEN, counters=counters):
        code = record[:2].upper()
        try:
            spec = DEVICE_SETTINGS[SettingCode(code)]
        except ValueError:
            _bump(counters, EXTRA_UNKNOWN_CODES)
            continue
        raw = record[2:].strip()
        number = _number(raw)
        value: float | str | None
        if number is not None:
            value = number * spec.scale
        elif raw.strip("-"):
            value = raw
        else:
            value = None
        out.append(Setting(key=spec.key, value=value, unit=spec.unit, device_code=code, label=spec.label))
    return tuple(out)


def parse_alarms(data: bytes, *, counters: LinkCounters) -> tuple[DeviceAlarmReading, ...]:
    """Decode a current-alarms payload (15-char records: priority char, 2 hex code, 12-char text)."""
    out: list[DeviceAlarmReading] = []
    for record in _records(data, size=ALARM_RECORD_LEN, counters=counters):
        level = ord(record[0]) - ord("0")
        code = record[1:3].upper()
        if level < 0 or not _is_hex(code):
            _bump(counters, EXTRA_MALFORMED)
            continue
        out.append(DeviceAlarmReading(code=code, priority=alarm_priority(level), text=record[3:].strip()))
    return tuple(out)


def parse_text_messages(data: bytes, *, counters: LinkCounters) -> tuple[str, ...]:
    """Decode a text-messages payload (2 hex code, length char '0'+n, n chars, ETX per record)."""
    text = data.decode(_ENCODING)
    out: list[str] = []
    pos = 0
    while pos < len(text):
        header = text[pos : pos + 3]
        length = ord(header[2]) - ord("0") if len(header) == 3 else -1
        end = pos + 3 + length
        if length < 0 or not _is_hex(header[:2]) or end >= len(text) or ord(text[end]) != ControlByte.ETX:
            _bump(counters, EXTRA_MALFORMED)
            break
        out.append(text[pos + 3 : end].strip())
        pos = end + 1
    return tuple(out)


def parse_identification(data: bytes) -> DeviceIdentification | None:
    """Decode a device-identification payload; None when it does not follow `IIII'name'rev:ver`."""
    text = data.decode(_ENCODING)
    device_id, quote, rest = text[:4], text[4:5], text[5:]
    name, closing, tail = rest.partition("'")
    revision, colon, version = tail.partition(":")
    if len(device_id) != 4 or quote != "'" or not closing or not colon:
        return None
    return DeviceIdentification(
        device_id=device_id, name=name, revision=revision.strip(), medibus_version=version.strip()
    )


def _is_hex(text: str) -> bool:
    return len(text) == 2 and all(c in "0123456789ABCDEFabcdef" for c in text)


def format_value(value: float, *, width: int) -> str:
    """Right-align value in width chars with as many decimals as fit (the device side of a record)."""
    texts = [f"{value:.{decimals}f}" for decimals in range(4)]
    shortest_exact = [text for text in texts if float(text) == round(value, 3)][:1]
    for text in shortest_exact + texts[::-1]:
        if len(text) <= width:
            return text.rjust(width)
    raise ValueError(f"{value} does not fit in {width} characters")
