"""Text helpers the ward view's renderers share: numbers, times, alarms, forecasts, units, trends."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

from edge.model import AlarmBody, AlarmState, DeviceState, ForecastBody, News2Body, source_name
from tools.watch.state import BedKey, BedView, WardState

PRIORITY_STYLE: Final[dict[str, str]] = {"high": "bold red", "medium": "yellow", "low": "cyan"}
"""IEC 60601-1-8 priority colours: high red, medium yellow, low cyan."""
TECHNICAL_STYLE: Final = "magenta"
"""Technical alarms (a device lost, a line broken) are set apart from the patient's."""
CENTRAL_STATION_STYLE: Final[dict[str, str]] = {"online": "green", "offline": "bold red"}
NEWS2_RISK_STYLE: Final[dict[str, str]] = {"high": "bold red", "medium": "red", "low_medium": "yellow"}
CONDITION_GONE: Final = "CONDITION GONE"
"""Shown for an alarm whose condition has ended while its signal is still held (latched)."""
EVENT_RED_AT: Final = 0.5
"""An event probability at or above this is shown red."""
EVENT_YELLOW_AT: Final = 0.2
"""An event probability at or above this (and below red) is shown yellow."""

DISPLAY_UNITS: Final[dict[str, str]] = {
    "mm[Hg]": "mmHg",
    "cm[H2O]": "cmH2O",
    "Cel": "\u00b0C",
    "[degF]": "\u00b0F",
    "/min": "/min",
    "{beats}/min": "/min",
    "{breaths}/min": "/min",
    "%": "%",
    "kPa": "kPa",
    "mbar": "mbar",
    "mL": "mL",
    "L": "L",
    "L/min": "L/min",
    "L/bar": "L/bar",
    "mbar/(L/s)": "mbar/(L/s)",
    "s": "s",
    "1": "",
}
"""UCUM codes as published -> the unit a nurse reads; anything else loses its brackets."""

UNIT_DECIMALS: Final[dict[str, int]] = {"Cel": 1, "[degF]": 1, "kPa": 1, "L/min": 1, "L": 2, "s": 1}
"""Display resolution by unit; other units show whole numbers (values under 10: one decimal)."""

SPARK_BLOCKS: Final = "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588"


def display_unit(ucum: str) -> str:
    """Return the unit as people read it (`mm[Hg]` -> `mmHg`, `Cel` -> `°C`)."""
    known = DISPLAY_UNITS.get(ucum)
    if known is not None:
        return known
    return ucum.replace("[", "").replace("]", "")


def display_value(value: float | None, ucum: str) -> str:
    """Return a value at its display resolution (the change log compares these strings)."""
    if value is None:
        return "--"
    if not math.isfinite(value):
        return str(value)
    decimals = UNIT_DECIMALS.get(ucum)
    if decimals is None:
        decimals = 0 if abs(value) >= 10 else 1
    text = f"{value:.{decimals}f}"
    if "." in text and ucum not in UNIT_DECIMALS:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def sparkline(values: Iterable[float], *, width: int) -> str:
    """Return the last `width` values as block characters scaled between their own min and max."""
    recent = list(values)[-width:] if width > 0 else []
    if not recent:
        return ""
    low, high = min(recent), max(recent)
    span = high - low
    if span <= 0:
        return SPARK_BLOCKS[3] * len(recent)
    top = len(SPARK_BLOCKS) - 1
    return "".join(SPARK_BLOCKS[round((value - low) / span * top)] for value in recent)


def number(value: float | str | None) -> str:
    """Return a value as the view shows it (`--` for none)."""
    if value is None:
        return "--"
    if isinstance(value, str):
        return value
    if not math.isfinite(value):
        return str(value)  # JSON cannot carry these, but pydantic accepts 1e999, Infinity and NaN
    if value == int(value) and abs(value) < 1e9:
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def clock_time(moment: datetime | None) -> str:
    """Return a moment as `HH:MM:SS.mmmZ` (ISO text when it lies outside the calendar)."""
    if moment is None:
        return "--"
    try:
        return moment.astimezone(UTC).strftime("%H:%M:%S.%f")[:-3] + "Z"
    except OverflowError:  # a valid aware timestamp whose UTC instant lies outside years 1..9999
        return moment.isoformat()


def clock_seconds(moment: datetime) -> str:
    """Return a moment as `HH:MM:SSZ`."""
    try:
        return moment.astimezone(UTC).strftime("%H:%M:%SZ")
    except OverflowError:
        return moment.isoformat()


def age(age_s: float) -> str:
    """Return an age as `45 s`, `3m05s` or `2h03m` (negative: the moment lies in the future)."""
    sign = "-" if age_s < 0 else ""
    seconds = int(abs(age_s))
    if seconds < 60:
        return f"{sign}{seconds} s"
    if seconds < 3600:
        return f"{sign}{seconds // 60}m{seconds % 60:02d}s"
    return f"{sign}{seconds // 3600}h{seconds // 60 % 60:02d}m"


def alarm_age(state: WardState, alarm: AlarmBody) -> str:
    """Return how long ago an alarm began."""
    return age((state.now_wall() - alarm.onset).total_seconds())


def alarm_priority(alarm: AlarmBody) -> str:
    """Return the priority in capitals, saying so when escalation raised it."""
    escalated = alarm.priority != alarm.configured_priority
    return str(alarm.priority).upper() + (f" (was {alarm.configured_priority})" if escalated else "")


def alarm_state(alarm: AlarmBody) -> str:
    """Return an alarm's state as text (with the end of an audio pause)."""
    if alarm.state == AlarmState.AUDIO_PAUSED:
        until = alarm.audio_paused_until
        return "audio paused" + ("" if until is None else f" until {clock_seconds(until)}")
    return str(alarm.state)


def acknowledged_by(alarm: AlarmBody) -> str:
    """Return who acknowledged an alarm, or an empty string."""
    ack = alarm.acknowledged
    if ack is None:
        return ""
    return f"ack by {ack.user or ack.role or f'command {ack.command_id}'}"


def alarm_event_text(alarm: AlarmBody) -> str:
    """Return an alarm event's priority, text and state."""
    return f"{str(alarm.priority).upper()} {alarm.text} ({alarm_state(alarm)})"


def news2_parts(news2: News2Body) -> tuple[str, str]:
    """Return the NEWS2 line as (score and advice, completeness)."""
    red = ", red score" if news2.single_parameter_3 else ""
    head = (
        f"NEWS2 {news2.total} risk {news2.risk}, advisory {news2.advisory or 'none'}{red},"
        f" SpO2 scale {news2.spo2_scale}, "
    )
    if news2.complete:
        return head, "complete"
    return head, f"incomplete: missing {', '.join(news2.missing) or '?'}"


def model_line(forecast: ForecastBody) -> str:
    """Return which model made a forecast, where it ran, and when."""
    model = forecast.model
    return (
        f"model {model.id}@{model.version} ({model.kind}) on {model.backend} {model.precision},"
        f" made {clock_seconds(forecast.made_at)}"
    )


def forecast_horizons(forecast: ForecastBody) -> list[int]:
    """Return the horizons to show: the forecast's own list, plus any a signal carries beyond it."""
    horizons = list(dict.fromkeys(forecast.horizons_min))
    extra = {h.horizon_min for signal in forecast.signals.values() for h in signal.horizons}
    return horizons + sorted(extra - set(horizons))


def forecast_source(forecast: ForecastBody, key: str) -> str:
    """Return `(from pulse rate)` when a signal's forecast was made from another key's readings, else ''."""
    source = forecast.signals[key].source
    return "" if source == key else f"(from {source_name(source)})"


def interval(forecast: ForecastBody, key: str, horizon_min: int) -> str:
    """Return a signal's forecast at one horizon as `p50 [p10-p90]`."""
    for horizon in forecast.signals[key].horizons:
        if horizon.horizon_min == horizon_min:
            return f"{horizon.p50:.1f} [{horizon.p10:.1f}\u2013{horizon.p90:.1f}]"
    return "--"


def percent(probability: float) -> str:
    """Return a probability as a whole percentage."""
    return f"{probability * 100:.0f}%"


def probability_style(probability: float) -> str:
    """Return the colour of an event probability."""
    if probability >= EVENT_RED_AT:
        return "red"
    if probability >= EVENT_YELLOW_AT:
        return "yellow"
    return ""


def counters(state: DeviceState) -> str:
    """Return a device's counters as `name=count` words."""
    return " ".join(f"{name}={count}" for name, count in sorted(state.counters.items())) or "-"


def summary(state: WardState) -> str:
    """Return the one-line summary of the broker connection and the contract checks."""
    return (
        f"broker {state.connection} | messages {state.messages} | contract violations {state.violations}"
        f" | lost {state.lost} | reordered {state.reordered}"
        + (f" | viewer errors {state.internal_errors}" if state.internal_errors else "")
    )


def bed_title(state: WardState, key: BedKey, bed: BedView) -> tuple[str, str]:
    """Return a bed's title and the state of its appliance."""
    site, ward, bed_id = key
    appliance_state = state.appliance_state(site, ward, bed.appliance)
    return f"bed {bed_id} ({site}/{ward}) on {bed.appliance or '?'}", appliance_state
