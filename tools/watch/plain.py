"""The change log (`--plain`): one timestamped line per change, nothing when nothing changed.

A change is: an appliance going online or offline; a bed's twin starting (or a new daemon session);
a value or setting whose shown text changes (its display resolution, its unit, valid/stale); an alarm
raised, changed (priority, state, condition, acknowledgement) or ended; a device alarm raised or
ended; a device connecting or disconnecting; a forecast headline (the p50 at the longest horizon at
display resolution, or an event probability crossing 20 % or 50 %); a seq gap; a contract violation.
`ChangeLog.changes` compares the state with what it reported last; it is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge.model import AlarmBody, ForecastBody
from tools.watch import fmt
from tools.watch.state import ApplianceKey, BedKey, WardState
from tools.watch.tiles import device_alarm_condition


@dataclass(slots=True)
class _BedSeen:
    twin_session: int | None = None
    values: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    alarms: dict[str, tuple[str, str]] = field(default_factory=dict)
    """alarm id -> (what identifies its current form, its text)"""
    device_alarms: dict[tuple[str, str], str] = field(default_factory=dict)
    devices: dict[str, bool] = field(default_factory=dict)
    forecast: dict[str, str] = field(default_factory=dict)


def _value_text(value: float | None, unit: str, *, valid: bool, stale: bool) -> str:
    text = f"{fmt.display_value(value, unit)} {fmt.display_unit(unit)}".rstrip()
    if not valid:
        text += " INVALID"
    elif stale:
        text += " STALE"
    return text


def _band(probability: float) -> str:
    if probability >= fmt.EVENT_RED_AT:
        return "high"
    if probability >= fmt.EVENT_YELLOW_AT:
        return "raised"
    return "low"


def _alarm_form(alarm: AlarmBody) -> str:
    ack = fmt.acknowledged_by(alarm)
    return (
        f"{fmt.alarm_priority(alarm)} {fmt.alarm_state(alarm)}"
        + ("" if alarm.condition_present else f" {fmt.CONDITION_GONE}")
        + (f" {ack}" if ack else "")
    )


def _forecast_headlines(forecast: ForecastBody | None) -> dict[str, tuple[str, str]]:
    """Return key -> (what must change for a line, the line's text)."""
    if forecast is None:
        return {}
    horizons = fmt.forecast_horizons(forecast)
    if not horizons:
        return {}
    horizon_min = max(horizons)
    headlines: dict[str, tuple[str, str]] = {}
    for key, signal in sorted(forecast.signals.items()):
        for horizon in signal.horizons:
            if horizon.horizon_min == horizon_min:
                unit = signal.unit
                p50 = fmt.display_value(horizon.p50, unit)
                source = fmt.forecast_source(forecast, key)
                headlines[key] = (
                    f"{p50} {signal.source}",
                    f"forecast {key} {source} {fmt.display_value(signal.last_value, unit)} \u2192 {p50}"
                    f" [{fmt.display_value(horizon.p10, unit)}\u2013{fmt.display_value(horizon.p90, unit)}]"
                    f" {fmt.display_unit(unit)} in {horizon_min}m".replace("  ", " "),
                )
    for key, event in sorted(forecast.events.items()):
        chance = next((p for p in event.horizons if p.horizon_min == horizon_min), None)
        if chance is not None:
            band = _band(chance.probability)
            headlines[f"P({key})"] = (
                band,
                f"forecast P({key}) {fmt.percent(chance.probability)} in {horizon_min}m ({band})",
            )
    return headlines


class ChangeLog:
    """What `--plain` has reported so far; `changes` returns the lines for what differs now."""

    def __init__(self, *, bed: str | None = None) -> None:
        """Report every bed, or only bed `bed` (appliance, gap and violation lines always)."""
        self._bed = bed
        self._appliances: dict[ApplianceKey, str] = {}
        self._beds: dict[BedKey, _BedSeen] = {}
        self._gaps_noted = 0
        self._violations = 0

    def changes(self, state: WardState) -> list[str]:
        """Return one line per change since the last call, each starting with the time (UTC)."""
        stamp = state.now_wall().strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        lines = [f"{stamp} {line}" for line in self._ward_changes(state)]
        for key in sorted(state.beds):
            if self._bed is not None and key[2] != self._bed:
                continue
            seen = self._beds.setdefault(key, _BedSeen())
            lines += [f"{stamp} {key[2]}  {line}" for line in self._bed_changes(state, key, seen)]
        return lines

    def _ward_changes(self, state: WardState) -> list[str]:
        lines = []
        for key, view in sorted(state.appliances.items()):
            status = view.status
            shown = "online" if str(status.state) == "online" else f"OFFLINE ({status.reason or 'no reason'})"
            now = f"{shown} session {status.session} version {status.version}"
            if self._appliances.get(key) != now:
                self._appliances[key] = now
                lines.append(f"appliance {'/'.join(key)} {now} beds {','.join(status.beds) or '-'}")
        for key in set(self._appliances) - set(state.appliances):
            del self._appliances[key]
            lines.append(f"appliance {'/'.join(key)} status cleared")
        new_gaps = min(state.gaps_noted - self._gaps_noted, len(state.gap_log))
        self._gaps_noted = state.gaps_noted
        if new_gaps > 0:
            lines += [f"seq gap: {line}" for line in list(state.gap_log)[-new_gaps:]]
        new_violations = min(state.violations - self._violations, len(state.violation_log))
        self._violations = state.violations
        if new_violations > 0:
            lines += [f"contract violation: {line}" for line in list(state.violation_log)[-new_violations:]]
        return lines

    def _bed_changes(self, state: WardState, key: BedKey, seen: _BedSeen) -> list[str]:
        bed = state.beds[key]
        lines: list[str] = []
        twin = bed.twin
        if twin is not None:
            if twin.session != seen.twin_session:
                lines.append(f"twin (session {twin.session} seq {twin.seq}) from {twin.appliance}")
                seen.twin_session = twin.session
            values = {
                value_key: _value_text(value.value, value.unit, valid=value.valid, stale=value.stale)
                for value_key, value in twin.values.items()
            }
            lines += _diff("", seen.values, values)
            settings = {
                setting_key: f"{fmt.number(setting.value)} {fmt.display_unit(setting.unit)}".rstrip()
                for setting_key, setting in twin.settings.items()
            }
            lines += _diff("setting ", seen.settings, settings)
            lines += self._alarm_changes(state, seen, twin.alarms)
            managed = {alarm.condition for alarm in twin.alarms}
            device_alarms = {
                (alarm.device, alarm.code): f"{str(alarm.priority).upper()} {alarm.device}: {alarm.text}"
                for alarm in twin.device_alarms
                if device_alarm_condition(alarm) not in managed  # its ALARM lines say it, with its state
            }
            for alarm_key, text in sorted(device_alarms.items()):
                if seen.device_alarms.get(alarm_key) != text:
                    lines.append(f"device alarm raised {text}")
            for alarm_key in sorted(set(seen.device_alarms) - set(device_alarms)):
                lines.append(f"device alarm ended {seen.device_alarms[alarm_key]}")
            seen.device_alarms = device_alarms
        for device_id, device in bed.devices().items():
            if seen.devices.get(device_id) != device.connected:
                if device.connected:
                    lines.append(f"device {device_id} connected ({device.model or '-'}, {device.protocol})")
                else:
                    lines.append(f"device {device_id} DISCONNECTED ({device.last_error or 'no error given'})")
                seen.devices[device_id] = device.connected
        headlines = _forecast_headlines(bed.forecast())
        for forecast_key, (marker, text) in headlines.items():
            if seen.forecast.get(forecast_key) != marker:
                lines.append(text)
        seen.forecast = {forecast_key: marker for forecast_key, (marker, _) in headlines.items()}
        return lines

    def _alarm_changes(self, state: WardState, seen: _BedSeen, alarms: list[AlarmBody]) -> list[str]:
        lines = []
        current = {alarm.id: (_alarm_form(alarm), alarm.text) for alarm in alarms}
        for alarm in alarms:
            form = current[alarm.id][0]
            known = seen.alarms.get(alarm.id)
            if known is None:
                lines.append(
                    f"ALARM raised {form} {alarm.kind}: {alarm.text} (since {fmt.alarm_age(state, alarm)})"
                )
            elif known[0] != form:
                lines.append(f"ALARM changed {form} {alarm.kind}: {alarm.text}")
        for alarm_id in sorted(set(seen.alarms) - set(current)):
            lines.append(f"ALARM ended {seen.alarms[alarm_id][1]}")
        seen.alarms = current
        return lines


def _diff(label: str, before: dict[str, str], now: dict[str, str]) -> list[str]:
    lines = []
    for key, text in sorted(now.items()):
        old = before.get(key)
        if old is None:
            lines.append(f"{label}{key} {text}")
        elif old != text:
            lines.append(f"{label}{key} {old} -> {text}")
    for key in sorted(set(before) - set(now)):
        lines.append(f"{label}{key} gone (was {before[key]})")
    before.clear()
    before.update(now)
    return lines
