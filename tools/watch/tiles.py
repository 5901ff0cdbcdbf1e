"""The compact renderer: one tile per bed, tiles side by side, the whole thing cut to the terminal.

A tile holds what a nurse needs at a glance: the main vitals with human units and a trend sparkline,
each with its forecast at the longest horizon (`p50 [p10-p90]`) and the event probability that goes
with it (`P(<90)`), the active alarms in IEC priority colours (technical ones apart), the devices'
connectivity and the bed's seq gaps. One tile fits 80x24 with room for ten alarm lines; when a tile
is shorter, the least needed lines go first and the alarms say how many more there are.
Pure: a function of the state, the selection and the size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from edge.model import AlarmBody, AlarmKind, DeviceAlarm, EventMessage, ForecastBody, TwinBody
from tools.watch import fmt
from tools.watch.state import TREND_PERIOD_S, BedKey, BedView, WardState

TILE_MIN_WIDTH: Final = 78
"""A tile is never narrower: two side by side need 156 columns."""
TILE_MIN_HEIGHT: Final = 14
"""A tile is never shorter (vitals, three alarm lines, devices); fewer tiles per page instead."""
TILE_MAX_HEIGHT: Final = 22
"""A tile never grows beyond one bed's 80x24 screen (less the header and key lines)."""


@dataclass(frozen=True, slots=True)
class Vital:
    """A row of the tile: its label and the twin keys that can fill it, first present wins."""

    label: str
    keys: tuple[str, ...]


VITALS: Final = (
    Vital("HR", ("hr", "pr")),
    Vital("SpO2", ("spo2",)),
    Vital("MAP", ("map", "abp_mean", "nbp_mean")),
    Vital("RR", ("rr",)),
    Vital("EtCO2", ("etco2", "etco2_kpa")),
    Vital("Temp", ("temp", "temp_2", "temp_blood")),
)
"""The main vitals, in the order a tile shows them."""

VENTILATOR: Final = (("Ppeak", "ppeak"), ("PEEP", "peep"), ("Vt", "vt"), ("MV", "mv"), ("FiO2", "fio2"))
"""The ventilator's line under the vitals."""

EVENT_KEY: Final = re.compile(r"^(?P<signal>[a-z0-9_]+?)_(?P<side>below|above)_(?P<limit>\d+(?:\.\d+)?)$")
"""`spo2_below_90` -> signal spo2, `<90`."""

PRIORITY_ORDER: Final = {"high": 0, "medium": 1, "low": 2}
SPARK_WIDTH: Final = 14


def tile_columns(*, width: int, beds: int) -> int:
    """Return how many tiles go side by side on a terminal `width` wide."""
    return max(1, min(beds, width // TILE_MIN_WIDTH))


def tiles_per_page(*, width: int, height: int, beds: int) -> tuple[int, int]:
    """Return (columns, rows) of tiles that fit `width` x `height` (height without header and key lines)."""
    columns = tile_columns(width=width, beds=beds)
    rows = max(1, height // TILE_MIN_HEIGHT)
    needed = -(-max(beds, 1) // columns)
    return columns, max(1, min(rows, needed))


def render_ward(
    state: WardState, *, width: int, height: int, selected: BedKey | None, keys_line: str
) -> RenderableType:
    """Return the ward as tiles: a header line, the page of tiles holding `selected`, a key line."""
    beds = sorted(state.beds)
    body_height = max(1, height - 2)
    columns, rows = tiles_per_page(width=width, height=body_height, beds=len(beds))
    per_page = columns * rows
    index = beds.index(selected) if selected in beds else 0
    first = index // per_page * per_page
    shown = beds[first : first + per_page]
    header = _header(state, first=first, shown=len(shown), total=len(beds), width=width)
    if not beds:
        waiting = Text("waiting for a bed's twin ... (no bed seen yet)", style="dim")
        return Group(header, Panel(waiting, height=body_height, width=width), Text(keys_line, style="dim"))
    tile_width = width // columns
    tile_height = min(TILE_MAX_HEIGHT, body_height // rows)
    grid = Table.grid(padding=0)
    for _ in range(columns):
        grid.add_column(width=tile_width, no_wrap=True)
    for row in range(rows):
        cells = [
            render_tile(
                state, key, state.beds[key], width=tile_width, height=tile_height, selected=key == selected
            )
            for key in shown[row * columns : (row + 1) * columns]
        ]
        if cells:
            grid.add_row(*cells)
    return Group(header, grid, Text(keys_line, style="dim", no_wrap=True, overflow="ellipsis"))


def _header(state: WardState, *, first: int, shown: int, total: int, width: int) -> Text:
    online = sum(1 for view in state.appliances.values() if str(view.status.state) == "online")
    text = Text("icu-edge ward", style="bold")
    text.append(f" \u00b7 {state.connection} \u00b7 appliances {online}/{len(state.appliances)} online")
    if total:
        text.append(f" \u00b7 beds {first + 1}\u2013{first + shown}/{total}")
    problems = state.violations + state.lost + state.reordered + state.internal_errors
    if problems:
        text.append(
            f" \u00b7 violations {state.violations} lost {state.lost} reordered {state.reordered}",
            style="red",
        )
    else:
        text.append(" \u00b7 contract ok", style="dim")
    text.truncate(width, overflow="ellipsis")
    return text


def render_tile(
    state: WardState, key: BedKey, bed: BedView, *, width: int, height: int, selected: bool
) -> RenderableType:
    """Return one bed's tile, exactly `width` x `height`."""
    inner_width = max(10, width - 4)
    inner_height = max(1, height - 2)
    twin = bed.twin
    forecast = bed.forecast()
    found = [_vital_line(bed, twin, forecast, vital, width=inner_width) for vital in VITALS]
    vitals = [line for line in found if line is not None]
    if not vitals:
        vitals = [Text("no twin snapshot yet" if twin is None else "no main vital in the twin", style="dim")]
    optional: list[tuple[int, int, Text]] = []  # (position, drop rank: higher goes first, line)
    optional.append((0, 3, _columns_line(forecast, width=inner_width)))
    ventilator = _ventilator_line(twin)
    if ventilator is not None:
        optional.append((2, 4, ventilator))
    other_events = _other_events_line(forecast)
    if other_events is not None:
        optional.append((3, 5, other_events))
    status = _status_line(state, bed)
    optional.append((6, 2, status))
    alarm_lines = _alarm_lines(state, twin)
    devices = _devices_line(bed)
    fixed = len(vitals) + 1  # the devices line stays
    room = inner_height - fixed
    kept = sorted(optional, key=lambda item: item[1])
    alarm_need = min(len(alarm_lines), 3) if alarm_lines else 1
    while kept and room - len(kept) < alarm_need:
        kept.pop()  # the highest drop rank
    room -= len(kept)
    if room <= 0:
        alarms_shown: list[Text] = []
    elif len(alarm_lines) <= room:
        alarms_shown = alarm_lines or [Text("no active alarm", style="dim")]
    else:
        more = Text(f"+{len(alarm_lines) - room + 1} more alarms (Enter: detail)", style="bold")
        alarms_shown = [*alarm_lines[: room - 1], more]
    by_position = {position: line for position, _, line in kept}
    lines: list[Text] = []
    if 0 in by_position:
        lines.append(by_position[0])
    lines.extend(vitals)
    for position in (2, 3):
        if position in by_position:
            lines.append(by_position[position])
    lines.extend(alarms_shown)
    lines.append(devices)
    if 6 in by_position:
        lines.append(by_position[6])
    spare = inner_height - len(lines)
    if spare >= 2 and bed.events:
        lines.append(Text("recent events", style="dim"))
        lines.extend(_event_line(event) for event in list(reversed(bed.events))[: spare - 1])
    for line in lines:
        line.no_wrap = True
        line.overflow = "ellipsis"
        line.truncate(inner_width, overflow="ellipsis")
    title, subtitle, border = _title(state, key, bed, twin)
    return Panel(
        Group(*lines[:inner_height]),
        title=title,
        title_align="left",
        subtitle=subtitle,
        subtitle_align="right",
        border_style=border + (" bold" if selected else ""),
        box=box.DOUBLE if selected else box.ROUNDED,
        width=width,
        height=height,
    )


def _title(state: WardState, key: BedKey, bed: BedView, twin: TwinBody | None) -> tuple[Text, Text, str]:
    site, ward, bed_id = key
    appliance_state = state.appliance_state(site, ward, bed.appliance)
    title = Text(f" {bed_id} ", style="bold reverse" if appliance_state == "online" else "bold")
    title.append(f" {site}/{ward} ")
    news2 = None if twin is None else twin.news2
    if news2 is not None:
        title.append(
            f" NEWS2 {news2.total}{'' if news2.complete else '*'} {news2.risk} ",
            style=fmt.NEWS2_RISK_STYLE.get(news2.risk, ""),
        )
    shown = appliance_state.upper() if appliance_state == "offline" else appliance_state
    subtitle = Text(
        f" {bed.appliance or '?'} {shown} ", style="bold red" if appliance_state == "offline" else ""
    )
    priorities = {str(alarm.priority) for alarm in (twin.alarms if twin is not None else [])}
    if appliance_state == "offline" or "high" in priorities:
        border = "red"
    elif "medium" in priorities:
        border = "yellow"
    elif appliance_state == "online":
        border = "green"
    else:
        border = "yellow"
    return title, subtitle, border


def _horizon(forecast: ForecastBody | None) -> int | None:
    if forecast is None:
        return None
    horizons = fmt.forecast_horizons(forecast)
    return max(horizons) if horizons else None


def _columns_line(forecast: ForecastBody | None, *, width: int) -> Text:
    horizon = _horizon(forecast)
    spark = _spark_width(width)
    span = fmt.age(spark * TREND_PERIOD_S)
    text = Text(f"{'':<5} {'now':>6} {'':<5} {f'trend {span}':<{spark}} ", style="dim")
    if forecast is None:
        text.append("forecast: none yet", style="dim")
    else:
        model = forecast.model
        text.append(f"forecast {horizon}m {model.id} {fmt.clock_seconds(forecast.made_at)}", style="dim")
    return text


def _spark_width(width: int) -> int:
    return max(4, min(SPARK_WIDTH, width - 62))


def _vital_line(
    bed: BedView, twin: TwinBody | None, forecast: ForecastBody | None, vital: Vital, *, width: int
) -> Text | None:
    if twin is None:
        return None
    key = next((candidate for candidate in vital.keys if candidate in twin.values), None)
    if key is None:
        return None
    value = twin.values[key]
    style = "red" if not value.valid else ("dim" if value.stale else "bold")
    line = Text(f"{vital.label:<5} ")
    line.append(f"{fmt.display_value(value.value, value.unit):>6}", style=style)
    line.append(f" {fmt.display_unit(value.unit):<5} ")
    spark = _spark_width(width)
    line.append(f"{fmt.sparkline(bed.trends.get(key, ()), width=spark):<{spark}} ", style="cyan")
    flag = "INVALID " if not value.valid else ("STALE " if value.stale else "")
    if flag:
        line.append(flag, style=style)
    if forecast is not None:
        signal_key = next((candidate for candidate in vital.keys if candidate in forecast.signals), None)
        horizon = _horizon(forecast)
        if signal_key is not None and horizon is not None:
            line.append(_forecast_text(forecast, signal_key, horizon))
            source = fmt.forecast_source(forecast, signal_key)
            if source:
                line.append(f" {source}", style="dim")
            for event_key, event in sorted(forecast.events.items()):
                match = EVENT_KEY.match(event_key)
                if match is None or match["signal"] != signal_key:
                    continue
                chance = next((p for p in event.horizons if p.horizon_min == horizon), None)
                if chance is None and event.horizons:
                    chance = max(event.horizons, key=lambda p: p.horizon_min)
                if chance is not None:
                    side = "<" if match["side"] == "below" else ">"
                    line.append(f"  P({side}{match['limit']}) ")
                    line.append(
                        fmt.percent(chance.probability),
                        style=fmt.probability_style(chance.probability) or "bold",
                    )
        elif signal_key is None and any(candidate in forecast.unavailable for candidate in vital.keys):
            line.append("no forecast", style="dim")
    return line


def _forecast_text(forecast: ForecastBody, key: str, horizon_min: int) -> str:
    signal = forecast.signals[key]
    for horizon in signal.horizons:
        if horizon.horizon_min == horizon_min:
            unit = signal.unit
            return (
                f"\u2192 {fmt.display_value(horizon.p50, unit)}"
                f" [{fmt.display_value(horizon.p10, unit)}\u2013{fmt.display_value(horizon.p90, unit)}]"
            )
    return ""


def _other_events_line(forecast: ForecastBody | None) -> Text | None:
    """Return the event probabilities no vital row shows (their signal is not a main vital)."""
    if forecast is None:
        return None
    shown = {key for vital in VITALS for key in vital.keys}
    line = Text("")
    horizon = _horizon(forecast)
    for event_key, event in sorted(forecast.events.items()):
        match = EVENT_KEY.match(event_key)
        if match is not None and match["signal"] in shown and match["signal"] in forecast.signals:
            continue
        chance = next((p for p in event.horizons if p.horizon_min == horizon), None)
        if chance is None:
            continue
        line.append(f"P({event_key}) {horizon}m ")
        line.append(fmt.percent(chance.probability), style=fmt.probability_style(chance.probability))
        line.append("  ")
    return line if line.plain else None


def _ventilator_line(twin: TwinBody | None) -> Text | None:
    if twin is None:
        return None
    parts = []
    for label, key in VENTILATOR:
        value = twin.values.get(key)
        if value is not None:
            parts.append(
                f"{label} {fmt.display_value(value.value, value.unit)} {fmt.display_unit(value.unit)}"
            )
    if not parts:
        return None
    return Text("vent  " + "  ".join(parts), style="")


def _alarm_sort_key(alarm: AlarmBody) -> tuple[int, int, str]:
    return (PRIORITY_ORDER.get(str(alarm.priority), 3), 0 if alarm.condition_present else 1, str(alarm.onset))


def _alarm_lines(state: WardState, twin: TwinBody | None) -> list[Text]:
    """Return the alarm lines: the patient's (by priority), the devices' own, then technical ones."""
    if twin is None:
        return []
    patient = sorted((a for a in twin.alarms if a.kind != AlarmKind.TECHNICAL), key=_alarm_sort_key)
    technical = sorted((a for a in twin.alarms if a.kind == AlarmKind.TECHNICAL), key=_alarm_sort_key)
    lines = [_alarm_line(state, alarm, technical=False) for alarm in patient]
    managed = {alarm.condition for alarm in twin.alarms}
    lines += [
        _device_alarm_line(alarm)
        for alarm in sorted(twin.device_alarms, key=_device_alarm_key)
        if device_alarm_condition(alarm) not in managed  # the appliance's own copy, with its state, is shown
    ]
    lines += [_alarm_line(state, alarm, technical=True) for alarm in technical]
    return lines


def _alarm_line(state: WardState, alarm: AlarmBody, *, technical: bool) -> Text:
    style = fmt.PRIORITY_STYLE.get(str(alarm.priority), "")
    line = Text()
    if technical:
        line.append("TECH ", style=fmt.TECHNICAL_STYLE)
    line.append(f"{str(alarm.priority).upper():<6}", style=style if technical else f"{style} reverse")
    line.append(" ")
    line.append(alarm.text, style=fmt.TECHNICAL_STYLE if technical else style)
    extra = [fmt.alarm_age(state, alarm)]
    if str(alarm.state) != "active":
        extra.append(fmt.alarm_state(alarm))
    if not alarm.condition_present:
        extra.append(fmt.CONDITION_GONE)
    ack = fmt.acknowledged_by(alarm)
    if ack:
        extra.append(ack)
    line.append("  " + " \u00b7 ".join(extra), style="dim")
    return line


def device_alarm_condition(alarm: DeviceAlarm) -> str:
    """Return the condition under which the appliance's alarm system carries a device's own alarm."""
    return f"device:{alarm.device}:{alarm.code}"


def _device_alarm_key(alarm: DeviceAlarm) -> tuple[int, str, str]:
    return (PRIORITY_ORDER.get(str(alarm.priority), 3), alarm.device, alarm.code)


def _device_alarm_line(alarm: DeviceAlarm) -> Text:
    style = fmt.PRIORITY_STYLE.get(str(alarm.priority), "")
    line = Text()
    line.append(f"{str(alarm.priority).upper():<6}", style=style)
    line.append(f" {alarm.device}: ")
    line.append(alarm.text, style=style)
    line.append(f"  (device) since {fmt.clock_seconds(alarm.onset)}", style="dim")
    return line


def _devices_line(bed: BedView) -> Text:
    devices = bed.devices()
    if not devices:
        return Text("devices: none reported yet", style="dim")
    line = Text("")
    for device_id, device in devices.items():
        if device.connected:
            line.append("\u25cf ", style="green")
            line.append(f"{device_id} {device.model or device.protocol}  ")
        else:
            line.append("\u2717 ", style="bold red")
            line.append(f"{device_id} DISCONNECTED", style="bold red")
            line.append(f" {device.last_error or ''}  ", style="red")
    return line


def _event_line(event: EventMessage) -> Text:
    line = Text(f"{fmt.clock_seconds(event.at)} ", style="dim")
    if event.alarm is None:
        line.append(f"{event.kind} {event.device or '-'}: {event.detail}")
    else:
        line.append(f"{event.kind} ")
        line.append(
            fmt.alarm_event_text(event.alarm), style=fmt.PRIORITY_STYLE.get(str(event.alarm.priority), "")
        )
    if event.history:
        line.append(" (replayed)", style="dim")
    return line


def _status_line(state: WardState, bed: BedView) -> Text:
    line = Text("")
    if bed.twin is not None:
        line.append(f"twin {fmt.age(state.twin_extra_age_s(bed))} old  ", style="dim")
    if bed.lost or bed.reordered:
        line.append(f"seq gaps: {bed.lost} lost, {bed.reordered} reordered", style="bold yellow")
    else:
        line.append("seq: no gap", style="dim")
    return line
