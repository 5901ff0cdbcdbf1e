"""Alarm profiles: the default limit table, the `[alarms]` config, and how overrides merge.

A limit setting is resolved per bed and key from four layers, each overriding only the fields it
names: the default table below (adult ICU), the ward's `[alarms.limits.KEY]`, the bed's
`[bed.alarm_limits.KEY]`, and a `cmd/limits` from the central station at run time (validated here
too, audited, and kept across restarts). The README's 'Alarms' section prints `DEFAULT_LIMITS`.

Delays are capped: a condition delay above `DELAY_CAP_S` is accepted from the config file only with a
`delay_reason` (the responsible organisation's decision, IEC 60601-2-49 208.6.6.1.101), and never from
a remote command.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.base import AlarmPriority
from drivers.plausibility import TABLE
from edge.model import AlarmLimit
from engines.spec import EVENT_ALARM_THRESHOLD

DELAY_CAP_S = 15.0
"""Longest condition delay without a written reason (Mindray/Philips-class monitors cap theirs here)."""
DELAY_MAX_S = 60.0
"""Longest condition delay at all."""

DEFAULT_LIMITS: Mapping[str, AlarmLimit] = {
    limit_key: limit
    for limit_key, limit in (
        (
            "hr",
            AlarmLimit(
                low=50, high=120, priority=AlarmPriority.MEDIUM, condition_delay_s=6,
                end_hysteresis=2, latching=False, origin="default",
            ),
        ),
        (
            "spo2",
            AlarmLimit(
                low=90, high=None, priority=AlarmPriority.MEDIUM, condition_delay_s=10,
                end_hysteresis=1, latching=False, origin="default",
            ),
        ),
        (
            "map",
            AlarmLimit(
                low=65, high=110, priority=AlarmPriority.MEDIUM, condition_delay_s=6,
                end_hysteresis=2, latching=False, origin="default",
            ),
        ),
        (
            "rr",
            AlarmLimit(
                low=8, high=30, priority=AlarmPriority.MEDIUM, condition_delay_s=10,
                end_hysteresis=1, latching=False, origin="default",
            ),
        ),
        (
            "etco2",
            AlarmLimit(
                low=25, high=50, priority=AlarmPriority.LOW, condition_delay_s=10,
                end_hysteresis=1, latching=False, origin="default",
            ),
        ),
        (
            "temp",
            AlarmLimit(
                low=35.0, high=39.0, priority=AlarmPriority.LOW, condition_delay_s=10,
                end_hysteresis=0.2, latching=False, origin="default",
            ),
        ),
    )
}  # fmt: skip
"""Adult ICU defaults (see README, 'Alarms'): starting points the responsible organisation adapts."""

LimitOrigin = Literal["default", "config", "command"]


class LimitOverride(BaseModel):
    """Some fields of one key's limit setting; the fields left out keep the layer below."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float | None = Field(default=None, description="alarm below this (null: no low limit)")
    high: float | None = Field(default=None, description="alarm above this (null: no high limit)")
    priority: AlarmPriority | None = None
    low_priority: AlarmPriority | None = Field(default=None, description="priority of the low side, if other")
    delay_s: float | None = Field(default=None, ge=0, le=DELAY_MAX_S, description="condition delay")
    delay_reason: str | None = Field(
        default=None,
        min_length=3,
        max_length=200,
        description=f"required for a delay above {DELAY_CAP_S:g} s",
    )
    hysteresis: float | None = Field(
        default=None,
        ge=0,
        description="the value must come back this far inside the limit to end the condition",
    )
    latching: bool | None = Field(default=None, description="default: latching when the priority is high")
    escalate_after_s: float | None = Field(
        default=None, ge=10, le=3600, description="unacknowledged this long: priority up one level"
    )

    @model_validator(mode="after")
    def _delay_capped(self) -> LimitOverride:
        if self.delay_s is not None and self.delay_s > DELAY_CAP_S and self.delay_reason is None:
            raise ValueError(
                f"delay_s {self.delay_s:g} s is above {DELAY_CAP_S:g} s: "
                "add delay_reason (who decided and why)"
            )
        return self


def merge_limit(
    *, key: str, base: AlarmLimit | None, override: LimitOverride, origin: LimitOrigin
) -> AlarmLimit:
    """Apply an override to the layer below; raise ValueError when the result is not a usable limit."""
    given = override.model_fields_set
    fields: dict[str, Any] = (
        base.model_dump()
        if base is not None
        else {
            "low": None, "high": None, "priority": AlarmPriority.MEDIUM, "low_priority": None,
            "condition_delay_s": 0.0, "end_hysteresis": 0.0, "latching": None, "escalate_after_s": None,
        }
    )  # fmt: skip
    for name, target in (
        ("low", "low"),
        ("high", "high"),
        ("priority", "priority"),
        ("low_priority", "low_priority"),
        ("delay_s", "condition_delay_s"),
        ("hysteresis", "end_hysteresis"),
        ("latching", "latching"),
        ("escalate_after_s", "escalate_after_s"),
    ):
        if name in given:
            fields[target] = getattr(override, name)
    if "priority" in given and "latching" not in given and (base is None or base.origin == "default"):
        fields["latching"] = None
    if fields["latching"] is None:
        fields["latching"] = fields["priority"] == AlarmPriority.HIGH
    fields["origin"] = origin
    limit = AlarmLimit.model_validate(fields)
    problem = limit_problem(key=key, limit=limit)
    if problem is not None:
        raise ValueError(problem)
    return limit


def limit_problem(*, key: str, limit: AlarmLimit) -> str | None:
    """Say what is wrong with a limit setting for `key`, or None when it can be used."""
    row = TABLE.get(key)
    if row is None:
        return f"no alarm limits for {key!r}: not a key the appliance measures"
    if limit.low is None and limit.high is None:
        return f"{key}: give a low or a high limit (an alarm is never switched off, only its limits moved)"
    for side, value in (("low", limit.low), ("high", limit.high)):
        if value is not None and (not math.isfinite(value) or not row.minimum <= value <= row.maximum):
            return (
                f"{key}: {side} limit {value:g} {row.unit} is outside what can be measured "
                f"({row.minimum:g}..{row.maximum:g})"
            )
    if limit.low is not None and limit.high is not None and limit.low >= limit.high:
        return f"{key}: low limit {limit.low:g} must be below high limit {limit.high:g}"
    if limit.condition_delay_s > DELAY_MAX_S:
        return f"{key}: delay {limit.condition_delay_s:g} s is above the maximum {DELAY_MAX_S:g} s"
    return None


class AdvisoryConfig(BaseModel):
    """When the NEWS2 aggregate becomes an advisory event (RCP Chart 4 thresholds by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    emergency_at: int = Field(default=7, ge=1, le=20)
    urgent_at: int = Field(default=5, ge=1, le=20)
    single_parameter: bool = Field(default=True, description="any single parameter scoring 3")


class PredictiveConfig(BaseModel):
    """Predictive alarms from the forecasts' event probabilities."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = True
    threshold: float = Field(
        default=EVENT_ALARM_THRESHOLD, ge=0.5, le=0.99, description="raise at this probability or above"
    )
    hysteresis: float = Field(default=0.1, ge=0, le=0.4, description="end below threshold minus this")
    horizon_max_min: int = Field(default=15, ge=1, le=60, description="only horizons up to this count")
    priority: AlarmPriority = Field(default=AlarmPriority.LOW)
    allow_high: bool = Field(default=False, description="allow priority (or escalation to) high")

    @model_validator(mode="after")
    def _not_high_unless_allowed(self) -> PredictiveConfig:
        if self.priority == AlarmPriority.HIGH and not self.allow_high:
            raise ValueError("a predictive alarm is never high priority unless allow_high = true says so")
        return self


def effective_limits(
    *, ward: Mapping[str, LimitOverride], bed: Mapping[str, LimitOverride]
) -> dict[str, AlarmLimit]:
    """Resolve a bed's limit settings from the defaults, the ward's and the bed's overrides."""
    limits = dict(DEFAULT_LIMITS)
    for layer in (ward, bed):
        for key, override in layer.items():
            limits[key] = merge_limit(key=key, base=limits.get(key), override=override, origin="config")
    return limits
