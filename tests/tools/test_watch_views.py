"""The ward view's pure parts: units, sparklines, keys, navigation, tiles that fit, the change log."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from test_watch import (
    T0,
    TOPICS,
    alarm_body,
    alarm_twin,
    encode,
    forecast_body,
    make_state,
    twin_body,
    twin_value,
)

from edge.model import (
    AlarmKind,
    DeviceStatusBody,
    EventBody,
    EventKind,
    ForecastBody,
    HorizonForecast,
    SignalForecast,
    TwinBody,
)
from tools.watch import render_plain
from tools.watch.detail import render_detail
from tools.watch.fmt import display_unit, display_value, sparkline
from tools.watch.keys import parse_keys
from tools.watch.plain import ChangeLog
from tools.watch.screen import Navigation
from tools.watch.state import WardState
from tools.watch.tiles import render_ward


@pytest.mark.parametrize(
    ("ucum", "shown"),
    [
        ("mm[Hg]", "mmHg"),
        ("Cel", "\u00b0C"),
        ("/min", "/min"),
        ("%", "%"),
        ("kPa", "kPa"),
        ("cm[H2O]", "cmH2O"),
    ],
)
def test_ucum_codes_are_shown_as_people_read_them(ucum: str, shown: str) -> None:
    assert display_unit(ucum) == shown


def test_display_resolution_follows_the_unit() -> None:
    assert display_value(37.26, "Cel") == "37.3"
    assert display_value(5.46, "kPa") == "5.5"
    assert display_value(84.4, "mm[Hg]") == "84"
    assert display_value(None, "%") == "--"


def test_sparkline_scales_between_min_and_max_and_keeps_the_last_values() -> None:
    assert sparkline([1.0, 2.0, 3.0], width=8) == "\u2581\u2585\u2588"
    assert sparkline([5.0] * 20, width=4) == "\u2584" * 4
    assert sparkline([], width=4) == ""


def test_keys_are_parsed_from_terminal_bytes() -> None:
    assert parse_keys(b"\x1b[A\x1b[B\t\x1b[Z\r2q\x1b") == [
        "up",
        "down",
        "tab",
        "shift-tab",
        "enter",
        "2",
        "q",
        "esc",
    ]
    assert parse_keys(b"\x1b[6~\x1b[5~\x1b[1;5C") == ["pagedown", "pageup"]  # ctrl-right: not a view key


def test_navigation_picks_opens_scrolls_and_goes_back() -> None:
    beds = [("s", "w", "bed-1"), ("s", "w", "bed-2"), ("s", "w", "bed-3")]
    navigation = Navigation()

    def press(*keys: str) -> None:
        for key in keys:
            navigation.press(key, beds=beds, columns=2, page_lines=20)

    press("down")
    assert navigation.selected == beds[2]
    press("1", "enter")
    assert (navigation.detail, navigation.selected) == (True, beds[0])
    press("pagedown", "down")
    assert navigation.scroll == 20
    press("shift-tab")
    assert (navigation.selected, navigation.scroll) == (beds[2], 0)
    press("esc")
    assert not navigation.detail
    press("q")
    assert navigation.quit
    opened = Navigation(wanted_bed="bed-2")
    opened.follow(beds)
    assert (opened.detail, opened.selected) == (True, beds[1])


def many_alarms_state() -> WardState:
    state = make_state()
    alarms = [alarm_body(text=f"alarm number {n}") for n in range(15)]
    alarms.append(alarm_body(kind=AlarmKind.TECHNICAL, text="vent-1 lost"))
    twin: TwinBody = alarm_twin().model_copy(update={"alarms": alarms})
    state.apply(TOPICS.twin("bed-1"), encode(twin, bed="bed-1", seq=0), retained=True)
    state.apply(TOPICS.forecast("bed-1"), encode(forecast_body(), bed="bed-1", seq=0), retained=True)
    return state


def screen(state: WardState, *, width: int, height: int) -> tuple[str, str]:
    console = Console(
        file=io.StringIO(),
        record=True,
        width=width,
        height=height,
        color_system="standard",
        force_terminal=True,
    )
    console.print(render_ward(state, width=width, height=height, selected=None, keys_line="keys"))
    return console.export_text(clear=False), console.export_text(styles=True)


def test_a_tile_with_more_alarms_than_rows_fits_80x24_and_says_how_many_more() -> None:
    text, styled = screen(many_alarms_state(), width=80, height=24)
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= 24
    assert max(len(line) for line in lines) <= 80
    assert lines[0].startswith("icu-edge ward")
    assert lines[-1] == "keys"
    assert "more alarms (Enter: detail)" in text
    assert "vent-1 Evita V500" in text  # devices stay on the tile
    assert "\x1b[1;7;31mHIGH" in styled  # a high priority alarm in red


def test_priority_colours_high_red_medium_yellow_low_cyan() -> None:
    state = make_state()
    state.apply(TOPICS.twin("bed-1"), encode(alarm_twin(), bed="bed-1", seq=0), retained=True)
    _, styled = screen(state, width=80, height=24)
    assert "\x1b[1;7;31mHIGH" in styled
    assert "\x1b[7;33mMEDIUM" in styled
    assert "\x1b[36mLOW" in styled  # the technical one, apart, in its own colour
    assert "\x1b[35mTECH" in styled


def test_change_log_prints_nothing_for_the_same_snapshot_and_one_line_per_change() -> None:
    state = make_state()
    log = ChangeLog()
    state.apply(TOPICS.twin("bed-1"), encode(alarm_twin(), bed="bed-1", seq=0), retained=True)
    first = log.changes(state)
    assert any(line.endswith("bed-1  twin (session 1 seq 0) from edge-01") for line in first)
    assert any("bed-1  ppeak 28 mbar" in line for line in first)

    state.apply(TOPICS.twin("bed-1"), encode(alarm_twin(), bed="bed-1", seq=1), retained=False)
    assert log.changes(state) == []

    values = dict(alarm_twin().values)
    values["ppeak"] = twin_value(28.2, "mbar")  # below the display resolution: not a change
    values["rr"] = twin_value(18.0, "/min")
    twin = alarm_twin().model_copy(update={"values": values, "alarms": alarm_twin().alarms[1:]})
    state.apply(TOPICS.twin("bed-1"), encode(twin, bed="bed-1", seq=2), retained=False)
    changes = [line.split(" ", 1)[1] for line in log.changes(state)]
    assert changes == ["bed-1  rr 16 /min -> 18 /min", "bed-1  ALARM ended SpO2 84 % below 88 %"]


def test_change_log_reports_devices_forecast_headlines_and_seq_gaps() -> None:
    state = make_state()
    log = ChangeLog()
    state.apply(TOPICS.twin("bed-1"), encode(twin_body(), bed="bed-1", seq=0), retained=True)
    state.apply(TOPICS.forecast("bed-1"), encode(forecast_body(), bed="bed-1", seq=0), retained=True)
    first = log.changes(state)
    assert any("device vent-1 connected (Evita V500, medibus)" in line for line in first)
    assert any("forecast spo2 97 \u2192 97 [95\u201399] % in 15m" in line for line in first), first
    assert any("forecast P(map_below_65) 70% in 15m (high)" in line for line in first)

    state.apply(TOPICS.forecast("bed-1"), encode(forecast_body(), bed="bed-1", seq=3), retained=False)
    down = twin_body().devices["vent-1"].model_copy(update={"connected": False, "last_error": "no answer"})
    state.apply(
        TOPICS.device("bed-1", "vent-1"),
        encode(DeviceStatusBody(status=down), bed="bed-1", seq=0),
        retained=False,
    )
    changes = [line.split(" ", 1)[1] for line in log.changes(state)]
    assert changes == [
        f"seq gap: {TOPICS.forecast('bed-1')} session 1: 2 lost (seq 0 -> 3)",
        "bed-1  device vent-1 DISCONNECTED (no answer)",
    ]


def test_spare_rows_of_a_tile_show_the_recent_events_newest_first() -> None:
    state = make_state()
    state.apply(TOPICS.twin("bed-1"), encode(twin_body(), bed="bed-1", seq=0), retained=True)
    for seq, detail in enumerate(("Evita V500 answered", "VC-CMV")):
        event = EventBody(kind=EventKind.DEVICE_CONNECTED, device="vent-1", detail=detail, at=T0)
        state.apply(TOPICS.events("bed-1"), encode(event, bed="bed-1", seq=seq), retained=False)
    text, _ = screen(state, width=80, height=24)
    lines = text.split("\n")
    first = next(i for i, line in enumerate(lines) if "recent events" in line)
    assert "device_connected vent-1: VC-CMV" in lines[first + 1]
    assert "device_connected vent-1: Evita V500 answered" in lines[first + 2]


def test_a_device_alarm_the_appliance_manages_is_shown_once_with_its_state() -> None:
    """Regression: the daemon carries a device's alarm as an alarm of kind device too; both were shown."""
    state = make_state()
    managed = alarm_body(kind=AlarmKind.DEVICE, text="vent-1: Airway pressure high").model_copy(
        update={"condition": "device:vent-1:0x12", "key": None, "device": "vent-1"}
    )
    twin = twin_body().model_copy(update={"alarms": [managed]})
    state.apply(TOPICS.twin("bed-1"), encode(twin, bed="bed-1", seq=0), retained=True)
    text, _ = screen(state, width=80, height=24)
    assert text.count("Airway pressure high") == 1, text
    assert "Filter check" in text  # a device alarm the appliance does not carry is still shown
    lines = ChangeLog().changes(state)
    assert sum("Airway pressure high" in line for line in lines) == 1, lines


def _pulse_rate_forecast(source: str) -> ForecastBody:
    """The test forecast plus an hr forecast made from `source` (a ventilator's pulse rate: `pr`)."""
    body = forecast_body()
    hr = SignalForecast(
        unit="/min",
        source=source,
        last_value=106.0,
        last_age_s=1.0,
        valid_minutes=30,
        horizons=[HorizonForecast(horizon_min=h, p10=100.0, p50=108.0, p90=116.0) for h in (1, 5, 10, 15)],
    )
    return body.model_copy(update={"signals": {**body.signals, "hr": hr}})


@pytest.mark.parametrize("source", ["pr", "hr"])
def test_an_hr_forecast_from_the_pulse_rate_says_so_in_every_view(source: str) -> None:
    state = make_state()
    values = {**twin_body().values, "pr": twin_value(106.0, "/min")}
    state.apply(
        TOPICS.twin("bed-1"),
        encode(twin_body().model_copy(update={"values": values}), bed="bed-1", seq=0),
        retained=True,
    )
    state.apply(
        TOPICS.forecast("bed-1"), encode(_pulse_rate_forecast(source), bed="bed-1", seq=0), retained=True
    )
    note = "(from pulse rate)"
    snapshot = next(line for line in render_plain(state).splitlines() if line.strip().startswith("hr "))
    headline = next(line for line in ChangeLog().changes(state) if "forecast hr" in line)
    tiles, _ = screen(state, width=80, height=24)
    tile = next(line for line in tiles.splitlines() if "HR " in line)
    detail = io.StringIO()
    Console(file=detail, width=160).print(render_detail(state, ("st-mary", "icu-3", "bed-1")))
    shown = [snapshot, headline, tile, next(line for line in detail.getvalue().splitlines() if " hr" in line)]
    assert state.violations == 0
    if source == "pr":
        assert all(note in line for line in shown), shown
        assert "forecast hr (from pulse rate) 106 \u2192 108 [100\u2013116] /min in 15m" in headline
    else:
        assert not any("(from" in line for line in shown), shown
