"""The plain snapshot: the whole ward as text, no colour (`--once`, and a log of the full state)."""

from __future__ import annotations

from edge.model import AlarmBody, ApplianceState, ForecastBody
from tools.watch import fmt
from tools.watch.state import BedKey, BedView, WardState


def render_plain(state: WardState) -> str:
    """Return the whole ward view as plain text (no colour), one snapshot."""
    lines = [f"== icu-edge ward view: {fmt.summary(state)}"]
    if not state.appliances:
        lines.append("appliance: none seen yet")
    for (site, ward, appliance_id), view in sorted(state.appliances.items()):
        status = view.status
        state_text = "online" if status.state == ApplianceState.ONLINE else "OFFLINE"
        reason = f" ({status.reason})" if status.reason else ""
        central = f" central station {status.central_station}" if status.central_station else ""
        lines.append(
            f"appliance {site}/{ward}/{appliance_id}: {state_text}{reason} session {status.session}"
            f" version {status.version} beds {','.join(status.beds) or '-'}{central}"
        )
    for key in sorted(state.beds):
        lines.extend(_plain_bed(state, key, state.beds[key]))
    for line in state.violation_log:
        lines.append(f"contract violation: {line}")
    for line in state.gap_log:
        lines.append(f"seq: {line}")
    return "\n".join(lines) + "\n"


def _plain_bed(state: WardState, key: BedKey, bed: BedView) -> list[str]:
    title, appliance_state = fmt.bed_title(state, key, bed)
    shown_state = appliance_state.upper() if appliance_state == "offline" else appliance_state
    lines = [f"-- {title}: appliance {shown_state}"]
    twin = bed.twin
    if twin is None:
        lines.append("  twin: none yet")
    else:
        extra_s = state.twin_extra_age_s(bed)
        lines.append(f"  twin (session {twin.session} seq {twin.seq} at {fmt.clock_time(twin.ts)}):")
        for value_key, value in sorted(twin.values.items()):
            flags = ("  STALE" if value.stale else "") + ("  INVALID" if not value.valid else "")
            lines.append(
                f"    {value_key:<8} {fmt.number(value.value):>8} {fmt.display_unit(value.unit):<10}"
                f" age {value.age_s + extra_s:.1f} s  [{value.device}]{flags}"
            )
        for setting_key, setting in sorted(twin.settings.items()):
            unit = fmt.display_unit(setting.unit)
            lines.append(
                f"  setting {setting_key:<8} {fmt.number(setting.value):>8} {unit:<10} [{setting.device}]"
            )
        lines.extend(_plain_alarms(state, twin.alarms))
        if twin.news2 is None:
            lines.append("  NEWS2: not computed")
        else:
            lines.append("  " + "".join(fmt.news2_parts(twin.news2)))
        if not twin.device_alarms:
            lines.append("  device alarms: none active")
        for device_alarm in twin.device_alarms:
            lines.append(
                f"  device alarm {str(device_alarm.priority).upper()} {device_alarm.device}"
                f" {device_alarm.code}: {device_alarm.text} (since {fmt.clock_time(device_alarm.onset)})"
            )
    for device_id, device in bed.devices().items():
        version = f" {device.protocol_version}" if device.protocol_version else ""
        error = f" error: {device.last_error}" if device.last_error else ""
        lines.append(
            f"  device {device_id}: connected {'yes' if device.connected else 'NO'}"
            f" model {device.model or '-'} protocol {device.protocol}{version} port {device.port}"
            f" last frame {fmt.clock_time(device.last_frame_at)} counters {fmt.counters(device)}{error}"
        )
    lines.append(
        f"  vitals: {bed.vitals_batches} batches, {bed.vitals_observations} observations,"
        f" {bed.vitals_coalesced} coalesced"
    )
    forecast = bed.forecast()
    if forecast is not None:
        lines.extend(_plain_forecast(forecast, bed.forecast_source()))
    for event in bed.events:
        if event.alarm is None:
            what = f"{event.device or '-'}: {event.detail}"
        else:
            what = fmt.alarm_event_text(event.alarm)
        replayed = " (replayed)" if event.history else ""
        lines.append(f"  event {fmt.clock_time(event.at)} {event.kind} {what}{replayed}")
    return lines


def _plain_alarms(state: WardState, alarms: list[AlarmBody]) -> list[str]:
    if not alarms:
        return ["  alarms: none"]
    lines = []
    for alarm in alarms:
        gone = "" if alarm.condition_present else f" {fmt.CONDITION_GONE}"
        ack = fmt.acknowledged_by(alarm)
        lines.append(
            f"  alarm {fmt.alarm_priority(alarm)} {fmt.alarm_state(alarm)} {alarm.kind}: {alarm.text}"
            f" (since {fmt.alarm_age(state, alarm)}){gone}{' ' + ack if ack else ''}"
        )
    return lines


def _plain_forecast(forecast: ForecastBody, source: str) -> list[str]:
    horizons = fmt.forecast_horizons(forecast)
    lines = [f"  forecast ({source}), {fmt.model_line(forecast)}:"]
    for key, signal in sorted(forecast.signals.items()):
        intervals = "  ".join(f"{h}m {fmt.interval(forecast, key, h)}" for h in horizons)
        unit = fmt.display_unit(signal.unit)
        source = fmt.forecast_source(forecast, key)
        lines.append(
            f"    {key:<8} {unit:<10} now {fmt.number(signal.last_value):>8}  {intervals}"
            + (f"  {source}" if source else "")
        )
    if not forecast.signals:
        lines.append("    no signal forecast")
    for key, event in sorted(forecast.events.items()):
        chances = "  ".join(f"{p.horizon_min}m {fmt.percent(p.probability)}" for p in event.horizons)
        lines.append(f"    P({key}): {chances}")
    for key, reason in sorted(forecast.unavailable.items()):
        lines.append(f"    unavailable {key}: {reason}")
    return lines
