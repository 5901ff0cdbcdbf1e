"""NEWS2 (Royal College of Physicians, 2017) from a bed's twin values: decision support, not an alarm.

Pure and sans-I/O: the twin's values, the clinician's choices (SpO2 scale, consciousness) and the
time come in, a `News2Body` goes out. No state, no clock, no threads: the caller owns all of it.

Which readings count: a twin value counts only when it is valid, not stale and has a value (and that
value is a finite number). Systolic pressure is the arterial line's (`abp_sys`) when usable, else the
cuff's (`nbp_sys`); pulse is `hr` when usable, else `pr`. Air or oxygen comes from the measured FiO2
(`fio2`): above 21 % is oxygen; without a usable FiO2 the appliance does not know, so it does not
guess air.

Readings between the chart's steps: RCP Chart 1 is charted in whole numbers for respiration rate,
SpO2, systolic pressure and pulse, and to 0.1 °C for temperature, while monitors send finer numbers
(RR 20.5, SpO2 95.5, 36.55 °C). Each reading is first rounded half-up to the chart's resolution (from
its shortest decimal form, so 36.05 means 36.05, not the binary 36.04999...), then banded: RR 20.5
counts as 21 (scores 2), 36.05 °C as 36.1 (scores 0), 35.04 °C as 35.0 (scores 3). FiO2 is not
rounded: 21.5 % is oxygen.

An incomplete score still reports what it has. A missing parameter can only add points, never
remove them, so a partial total understates the patient's risk; `complete` and `missing` say so, and
the risk and advisory are those of the partial total (a floor, never a clearance).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from edge.model import News2Body, TwinValue

PARAMETERS = ("rr", "spo2", "air_or_oxygen", "sbp", "hr", "consciousness", "temp")
"""The seven NEWS2 parameters, in chart order (the order of `missing`)."""

MAX_TOTAL = 20
"""The highest aggregate RCP 2017 allows."""

_Bands = Sequence[tuple[int | None, int]]
"""(highest value of the band, inclusive, or None for no upper end; score), lowest band first."""

_RR: _Bands = ((8, 3), (11, 1), (20, 0), (24, 2), (None, 3))
_SPO2_SCALE_1: _Bands = ((91, 3), (93, 2), (95, 1), (None, 0))
_SPO2_SCALE_2_BELOW_93: _Bands = ((83, 3), (85, 2), (87, 1), (92, 0))
_SPO2_SCALE_2_ON_OXYGEN: _Bands = ((94, 1), (96, 2), (None, 3))
_SBP: _Bands = ((90, 3), (100, 2), (110, 1), (219, 0), (None, 3))
_PULSE: _Bands = ((40, 3), (50, 1), (90, 0), (110, 1), (130, 2), (None, 3))
_TEMP_DECI: _Bands = ((350, 3), (360, 1), (380, 0), (390, 1), (None, 2))
"""Temperature in tenths of a degree Celsius (350 = 35.0 °C)."""

_SCALE_2_OXYGEN_FROM = 93
_AIR_FIO2_PCT = 21.0
_OXYGEN_SCORE = 2
_RED = 3
_RISK_MEDIUM_AT = 5
_RISK_HIGH_AT = 7


class Consciousness(enum.StrEnum):
    """ACVPU, as a clinician records it (RCP 2017: new confusion counts as C)."""

    ALERT = "alert"
    NEW_CONFUSION = "new_confusion"
    VOICE = "voice"
    PAIN = "pain"
    UNRESPONSIVE = "unresponsive"


@dataclass(frozen=True)
class News2Advisory:
    """When the aggregate becomes an advisory: RCP 2017 urgent at 5, emergency at 7, red single 3."""

    emergency_at: int = 7
    urgent_at: int = 5
    single_parameter: bool = True

    def __post_init__(self) -> None:
        """Reject thresholds the 0-20 aggregate cannot order or reach."""
        if not 1 <= self.urgent_at <= self.emergency_at <= MAX_TOTAL:
            raise ValueError(
                f"NEWS2 thresholds need 1 <= urgent_at <= emergency_at <= {MAX_TOTAL}, "
                f"got urgent_at={self.urgent_at}, emergency_at={self.emergency_at}"
            )


def news2(
    values: Mapping[str, TwinValue],
    *,
    spo2_scale: int,
    consciousness: Consciousness | None,
    advisory: News2Advisory,
    now: datetime,
) -> News2Body:
    """Score NEWS2 from the usable twin values; list what could not be scored.

    On SpO2 scale 2 a saturation of 93 % or more scores by air or oxygen (0 on air, 1-3 on oxygen).
    When FiO2 is unknown that band cannot be told, so SpO2 is listed in `missing` rather than scored
    as if on air (which would hide up to 3 points); below 93 % scale 2 scores without it.
    """
    if spo2_scale not in (1, 2):
        raise ValueError(f"spo2_scale must be 1 or 2, got {spo2_scale!r}")
    fio2 = _usable(values, "fio2")
    on_oxygen = None if fio2 is None else fio2 > _AIR_FIO2_PCT
    subscores: dict[str, int] = {}

    rr = _usable(values, "rr")
    if rr is not None:
        subscores["rr"] = _band(_RR, _round_half_up(rr, places=0))
    spo2 = _usable(values, "spo2")
    if spo2 is not None:
        spo2_score = _spo2_score(_round_half_up(spo2, places=0), scale=spo2_scale, on_oxygen=on_oxygen)
        if spo2_score is not None:
            subscores["spo2"] = spo2_score
    if on_oxygen is not None:
        subscores["air_or_oxygen"] = _OXYGEN_SCORE if on_oxygen else 0
    sbp = _first_usable(values, "abp_sys", "nbp_sys")
    if sbp is not None:
        subscores["sbp"] = _band(_SBP, _round_half_up(sbp, places=0))
    pulse = _first_usable(values, "hr", "pr")
    if pulse is not None:
        subscores["hr"] = _band(_PULSE, _round_half_up(pulse, places=0))
    if consciousness is not None:
        subscores["consciousness"] = 0 if consciousness is Consciousness.ALERT else _RED
    temp = _usable(values, "temp")
    if temp is not None:
        subscores["temp"] = _band(_TEMP_DECI, _round_half_up(temp, places=1))

    ordered = {name: subscores[name] for name in PARAMETERS if name in subscores}
    total = sum(ordered.values())
    red = _RED in ordered.values()
    return News2Body(
        total=total,
        complete=len(ordered) == len(PARAMETERS),
        missing=[name for name in PARAMETERS if name not in ordered],
        subscores=ordered,
        spo2_scale=spo2_scale,
        on_oxygen=on_oxygen,
        consciousness=None if consciousness is None else consciousness.value,
        single_parameter_3=red,
        risk=_risk(total=total, red=red),
        advisory=_advisory(advisory, total=total, red=red),
        computed_at=now,
    )


def _usable(values: Mapping[str, TwinValue], key: str) -> float | None:
    """The value of `key` when it is valid, fresh and a finite number, else None."""
    twin_value = values.get(key)
    if twin_value is None or not twin_value.valid or twin_value.stale or twin_value.value is None:
        return None
    return twin_value.value if math.isfinite(twin_value.value) else None


def _first_usable(values: Mapping[str, TwinValue], *keys: str) -> float | None:
    """The first usable value among `keys`, in order of preference."""
    for key in keys:
        value = _usable(values, key)
        if value is not None:
            return value
    return None


def _round_half_up(value: float, *, places: int) -> int:
    """Round to `places` decimals, half away from zero, as the integer count of 10**-places steps."""
    return int(Decimal(repr(value)).scaleb(places).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _band(bands: _Bands, value: int) -> int:
    """The score of the band that holds `value`."""
    for highest, score in bands:
        if highest is None or value <= highest:
            return score
    raise ValueError(f"{value} is above every band")


def _spo2_score(spo2: int, *, scale: int, on_oxygen: bool | None) -> int | None:
    """SpO2's sub-score; None when scale 2 needs air-or-oxygen that is unknown."""
    if scale == 1:
        return _band(_SPO2_SCALE_1, spo2)
    if spo2 < _SCALE_2_OXYGEN_FROM:
        return _band(_SPO2_SCALE_2_BELOW_93, spo2)
    if on_oxygen is None:
        return None
    return _band(_SPO2_SCALE_2_ON_OXYGEN, spo2) if on_oxygen else 0


def _risk(*, total: int, red: bool) -> str:
    """RCP Chart 4's clinical risk (fixed by RCP, unlike the configurable advisory)."""
    if total >= _RISK_HIGH_AT:
        return "high"
    if total >= _RISK_MEDIUM_AT:
        return "medium"
    return "low_medium" if red else "low"


def _advisory(advisory: News2Advisory, *, total: int, red: bool) -> str | None:
    """The highest advisory the aggregate reached under the configured thresholds."""
    if total >= advisory.emergency_at:
        return "emergency"
    if total >= advisory.urgent_at:
        return "urgent"
    return "single_parameter" if advisory.single_parameter and red else None
