"""The detail renderer: everything the view knows about a bed, as rich tables (one bed or the ward).

`render(state)` is the whole ward at full length (what the fuzz target and the old tests print);
`render_detail(state, key)` is one bed's page in the interactive view, scrolled there to fit.
"""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from edge.model import AlarmBody, AlarmState, ApplianceState, ForecastBody, News2Body
from tools.watch import fmt
from tools.watch.state import BedKey, BedView, WardState


def render(state: WardState) -> RenderableType:
    """Return the whole ward view as one rich renderable."""
    parts: list[RenderableType] = [render_header(state)]
    for key in sorted(state.beds):
        parts.append(render_bed(state, key, state.beds[key]))
    if state.violation_log or state.gap_log:
        parts.append(_render_problems(state))
    return Group(*parts)


def render_header(state: WardState, *, only: str | None = None) -> RenderableType:
    """Return the appliance table (only the appliance `only` when given) and the contract summary."""
    table = Table(title="icu-edge ward view", title_justify="left", expand=True)
    for column in ("appliance", "state", "session", "version", "beds", "central station", "since"):
        table.add_column(column)
    for (site, ward, appliance_id), view in sorted(state.appliances.items()):
        if only is not None and appliance_id != only:
            continue
        status = view.status
        online = status.state == ApplianceState.ONLINE
        label = "online" if online else f"OFFLINE ({status.reason or 'no reason'})"
        table.add_row(
            f"{site}/{ward}/{appliance_id}",
            Text(label, style="green" if online else "bold red"),
            str(status.session),
            status.version,
            ", ".join(status.beds) or "-",
            Text(
                status.central_station or "-",
                style=fmt.CENTRAL_STATION_STYLE.get(status.central_station or "", ""),
            ),
            fmt.clock_time(status.ts),
        )
    if not state.appliances:
        table.add_row("(no appliance seen yet)", "", "", "", "", "", "")
    style = "red" if state.violations or state.lost or state.reordered or state.internal_errors else "dim"
    return Group(table, Text(fmt.summary(state), style=style))


def render_bed(state: WardState, key: BedKey, bed: BedView) -> RenderableType:
    """Return one bed's panel: twin, settings, alarms, NEWS2, device alarms, forecast, devices, events."""
    title, appliance_state = fmt.bed_title(state, key, bed)
    offline = appliance_state == "offline"
    parts: list[RenderableType] = []
    twin = bed.twin
    if twin is None:
        parts.append(Text("no twin snapshot yet", style="dim"))
    else:
        extra_s = state.twin_extra_age_s(bed)
        values = Table(title="twin", title_justify="left", expand=True)
        for column in ("key", "value", "unit", "age s", "device", ""):
            values.add_column(column, justify="right" if column in ("value", "age s") else "left")
        for value_key, value in sorted(twin.values.items()):
            flags = []
            style = ""
            if value.stale:
                flags.append("stale")
                style = "dim"
            if not value.valid:
                flags.append("invalid")
                style = "red"
            values.add_row(
                value_key,
                fmt.number(value.value),
                fmt.display_unit(value.unit),
                f"{value.age_s + extra_s:.1f}",
                value.device,
                " ".join(flags),
                style=style or None,
            )
        parts.append(values)
        if twin.settings:
            settings = Table(title="ventilator settings", title_justify="left", expand=True)
            for column in ("key", "value", "unit", "label", "device"):
                settings.add_column(column)
            for setting_key, setting in sorted(twin.settings.items()):
                settings.add_row(
                    setting_key,
                    fmt.number(setting.value),
                    fmt.display_unit(setting.unit),
                    setting.label,
                    setting.device,
                )
            parts.append(settings)
        parts.append(_render_alarms(state, twin.alarms))
        parts.append(_render_news2(twin.news2))
        alarms = Table(
            title="device alarms (as the devices report them now)", title_justify="left", expand=True
        )
        for column in ("priority", "device", "code", "text", "onset"):
            alarms.add_column(column)
        for alarm in twin.device_alarms:
            style = fmt.PRIORITY_STYLE.get(str(alarm.priority), "")
            alarms.add_row(
                Text(str(alarm.priority).upper(), style=style),
                alarm.device,
                alarm.code,
                Text(alarm.text, style=style),
                fmt.clock_time(alarm.onset),
            )
        if not twin.device_alarms:
            alarms.add_row("-", "", "", Text("none active", style="dim"), "")
        parts.append(alarms)
    forecast = bed.forecast()
    if forecast is not None:
        parts.append(_render_forecast(forecast, bed.forecast_source()))
    devices = bed.devices()
    if devices:
        table = Table(title="devices", title_justify="left", expand=True)
        for column in ("device", "connected", "model", "protocol", "port", "last frame", "counters", "error"):
            table.add_column(column)
        for device_id, device in devices.items():
            table.add_row(
                device_id,
                Text("yes", style="green") if device.connected else Text("NO", style="bold red"),
                device.model or "-",
                device.protocol + (f" {device.protocol_version}" if device.protocol_version else ""),
                device.port,
                fmt.clock_time(device.last_frame_at),
                fmt.counters(device),
                Text(device.last_error or "", style="red"),
            )
        parts.append(table)
    parts.append(
        Text(
            f"vitals: {bed.vitals_batches} batches, {bed.vitals_observations} observations, "
            f"{bed.vitals_coalesced} coalesced",
            style="dim",
        )
    )
    if bed.events:
        events = Table(title="events", title_justify="left", expand=True)
        for column in ("at", "kind", "device", "detail"):
            events.add_column(column)
        for event in bed.events:
            event_alarm = event.alarm
            if event_alarm is None:
                detail = Text(event.detail)
            else:
                detail = Text(
                    str(event_alarm.priority).upper(),
                    style=fmt.PRIORITY_STYLE.get(str(event_alarm.priority), ""),
                )
                detail.append(f" {event_alarm.text} ({fmt.alarm_state(event_alarm)})")
            if event.history:
                detail.append(" (replayed)")
            events.add_row(
                fmt.clock_time(event.at),
                str(event.kind),
                event.device or (event_alarm.device if event_alarm is not None else None) or "-",
                detail,
                style="dim" if event.history else None,
            )
        parts.append(events)
    border = "red" if offline else ("green" if appliance_state == "online" else "yellow")
    subtitle = f"appliance {appliance_state.upper() if offline else appliance_state}"
    return Panel(Group(*parts), title=title, subtitle=subtitle, border_style=border)


def _render_alarms(state: WardState, alarms: list[AlarmBody]) -> RenderableType:
    table = Table(title="alarms", title_justify="left", expand=True)
    for column in ("priority", "state", "kind", "text", "since", "condition", "ack"):
        table.add_column(column)
    for alarm in alarms:
        style = fmt.PRIORITY_STYLE.get(str(alarm.priority), "")
        table.add_row(
            Text(fmt.alarm_priority(alarm), style=style),
            Text(fmt.alarm_state(alarm), style="bold" if alarm.state == AlarmState.LATCHED else ""),
            str(alarm.kind),
            Text(alarm.text, style=style),
            fmt.alarm_age(state, alarm),
            Text("present") if alarm.condition_present else Text(fmt.CONDITION_GONE, style="bold yellow"),
            fmt.acknowledged_by(alarm),
        )
    if not alarms:
        table.add_row("-", "", "", Text("none", style="dim"), "", "", "")
    return table


def _render_news2(news2: News2Body | None) -> RenderableType:
    if news2 is None:
        return Text("NEWS2: not computed", style="dim")
    head, completeness = fmt.news2_parts(news2)
    line = Text(head, style=fmt.NEWS2_RISK_STYLE.get(news2.risk, ""))
    line.append(completeness, style="" if news2.complete else "yellow")
    return line


def _render_forecast(forecast: ForecastBody, source: str) -> RenderableType:
    horizons = fmt.forecast_horizons(forecast)
    table = Table(title=f"forecast ({source})", title_justify="left", expand=True)
    for column in ("key", "unit", "now"):
        table.add_column(column, justify="right" if column == "now" else "left")
    for horizon_min in horizons:
        table.add_column(f"{horizon_min}m", justify="right")
    for key, signal in sorted(forecast.signals.items()):
        table.add_row(
            f"{key} {fmt.forecast_source(forecast, key)}".rstrip(),
            fmt.display_unit(signal.unit),
            fmt.number(signal.last_value),
            *(fmt.interval(forecast, key, horizon_min) for horizon_min in horizons),
        )
    if not forecast.signals:
        table.add_row(Text("no signal forecast", style="dim"), "", "", *("" for _ in horizons))
    lines: list[Text] = []
    for key, event in sorted(forecast.events.items()):
        line = Text(f"P({key}):")
        for index, probability in enumerate(event.horizons):
            line.append(f"{'  ' if index else ' '}{probability.horizon_min}m ")
            line.append(
                fmt.percent(probability.probability), style=fmt.probability_style(probability.probability)
            )
        lines.append(line)
    for key, reason in sorted(forecast.unavailable.items()):
        lines.append(Text(f"{key}: {reason}", style="dim"))
    lines.append(Text(fmt.model_line(forecast), style="dim"))
    return Group(table, *lines)


def render_detail(state: WardState, key: BedKey) -> RenderableType:
    """Return one bed's detail page: its appliance, its panel with its trends, and the ward's problems."""
    bed = state.beds.get(key)
    if bed is None:
        return Text(f"bed {key[2]}: nothing received yet", style="dim")
    parts: list[RenderableType] = [render_header(state, only=bed.appliance), render_bed(state, key, bed)]
    if bed.trends:
        trends = Table(title="trends since the view started", title_justify="left", expand=True)
        for column in ("key", "last", "unit", "min", "max", "trend"):
            trends.add_column(column, justify="right" if column in ("last", "min", "max") else "left")
        units = {} if bed.twin is None else {k: v.unit for k, v in bed.twin.values.items()}
        for value_key, values in sorted(bed.trends.items()):
            unit = units.get(value_key, "")
            trends.add_row(
                value_key,
                fmt.display_value(values[-1], unit),
                fmt.display_unit(unit),
                fmt.display_value(min(values), unit),
                fmt.display_value(max(values), unit),
                fmt.sparkline(values, width=40),
            )
        parts.append(trends)
    if state.violation_log or state.gap_log:
        parts.append(_render_problems(state))
    return Group(*parts)


def _render_problems(state: WardState) -> RenderableType:
    lines = [Text(f"contract violation: {line}", style="red") for line in state.violation_log]
    lines += [Text(f"seq: {line}", style="yellow") for line in state.gap_log]
    return Panel(Text("\n").join(lines), title="problems", border_style="red")
