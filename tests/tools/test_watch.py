"""The ward view's state and rendering, fed real contract payloads without a broker."""

from __future__ import annotations

import io
import json
import socket
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from drivers.base import AlarmPriority
from edge.contract import Topics, encode_message
from edge.model import (
    Acknowledgement,
    AlarmBody,
    AlarmKind,
    AlarmState,
    ApplianceState,
    ApplianceStatusBody,
    Body,
    DeviceAlarm,
    DeviceState,
    DeviceStatusBody,
    EventBody,
    EventForecast,
    EventKind,
    EventProbability,
    ForecastBody,
    ForecastModelRef,
    HorizonForecast,
    News2Body,
    Observation,
    SignalForecast,
    TwinBody,
    TwinValue,
    VentilatorSetting,
    VitalsBody,
)
from tools.watch import WardState, main, parse_broker_url, render, render_plain

T0 = datetime(2026, 11, 25, 20, 23, 32, tzinfo=UTC)
TOPICS = Topics(prefix="icu/v1", site="st-mary", ward="icu-3", appliance="edge-01")


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def make_state(clock: FakeClock | None = None) -> WardState:
    return WardState(clock=clock or FakeClock(), wall_clock=lambda: T0)


def encode(body: Body, *, bed: str | None, seq: int, session: int = 1) -> bytes:
    return encode_message(body, appliance="edge-01", bed=bed, session=session, seq=seq, ts=T0)


def status_body(
    state: ApplianceState = ApplianceState.ONLINE, reason: str | None = None
) -> ApplianceStatusBody:
    return ApplianceStatusBody(state=state, version="0.1.0", beds=["bed-1"], reason=reason)


def twin_value(value: float | None, unit: str, *, valid: bool = True, stale: bool = False) -> TwinValue:
    return TwinValue(
        value=value,
        unit=unit,
        mdc=None,
        label="label",
        device="vent-1",
        valid=valid,
        device_time=None,
        received_at=T0,
        age_s=1.5,
        stale=stale,
    )


def vent_state(*, connected: bool = True) -> DeviceState:
    return DeviceState(
        device="vent-1",
        kind="ventilator",
        driver="medibus",
        protocol="medibus",
        port="/dev/ttyUSB0",
        connected=connected,
        model="Evita V500",
        counters={"frames": 120, "checksum_errors": 2},
    )


def twin_body() -> TwinBody:
    return TwinBody(
        values={
            "ppeak": twin_value(28.0, "mbar"),
            "vt": twin_value(450.0, "mL", stale=True),
            "fio2": twin_value(None, "%", valid=False),
            "rr": twin_value(16.5, "/min"),
        },
        settings={
            "peep": VentilatorSetting(
                key="peep",
                value=8.0,
                unit="mbar",
                label="PEEP",
                device="vent-1",
                device_code="0x52",
                received_at=T0,
            )
        },
        devices={"vent-1": vent_state()},
        device_alarms=[
            DeviceAlarm(
                device="vent-1",
                code="0x12",
                priority=AlarmPriority.HIGH,
                text="Airway pressure high",
                onset=T0,
            ),
            DeviceAlarm(
                device="vent-1", code="0x30", priority=AlarmPriority.LOW, text="Filter check", onset=T0
            ),
        ],
    )


def vitals_body() -> VitalsBody:
    observation = Observation(
        key="ppeak",
        value=29.0,
        unit="mbar",
        label="Peak pressure",
        device="vent-1",
        device_code="0x7D",
        valid=True,
        device_time=None,
        received_at=T0,
    )
    return VitalsBody(device="vent-1", observations=[observation, observation], coalesced=1)


def test_plain_render_shows_status_twin_settings_alarms_devices_and_events() -> None:
    clock = FakeClock()
    state = make_state(clock)
    state.apply(TOPICS.appliance_status(), encode(status_body(), bed=None, seq=0), retained=True)
    state.apply(TOPICS.twin("bed-1"), encode(twin_body(), bed="bed-1", seq=0), retained=True)
    state.apply(TOPICS.vitals("bed-1"), encode(vitals_body(), bed="bed-1", seq=0), retained=False)
    event = EventBody(kind=EventKind.DEVICE_CONNECTED, device="vent-1", detail="Evita V500 answered", at=T0)
    state.apply(TOPICS.events("bed-1"), encode(event, bed="bed-1", seq=0), retained=False)
    clock.now_s += 2.0

    text = render_plain(state)

    assert "appliance st-mary/icu-3/edge-01: online session 1 version 0.1.0 beds bed-1" in text
    assert "bed bed-1 (st-mary/icu-3) on edge-01: appliance online" in text
    ppeak = next(line for line in text.splitlines() if line.strip().startswith("ppeak"))
    assert "28" in ppeak
    assert "mbar" in ppeak
    assert "age 3.5 s" in ppeak  # 1.5 s at snapshot time + 2 s since it arrived
    assert "16.5" in text
    assert "STALE" in next(line for line in text.splitlines() if line.strip().startswith("vt "))
    fio2 = next(line for line in text.splitlines() if line.strip().startswith("fio2"))
    assert "--" in fio2
    assert "INVALID" in fio2
    assert "setting peep" in text
    assert "alarm HIGH vent-1 0x12: Airway pressure high" in text
    assert "alarm LOW vent-1 0x30: Filter check" in text
    assert "device vent-1: connected yes model Evita V500 protocol medibus" in text
    assert "checksum_errors=2 frames=120" in text
    assert "vitals: 1 batches, 2 observations, 1 coalesced" in text
    assert "device_connected vent-1: Evita V500 answered" in text
    assert "contract violations 0 | lost 0 | reordered 0" in text


def test_offline_will_is_shown() -> None:
    state = make_state()
    state.apply(TOPICS.appliance_status(), encode(status_body(), bed=None, seq=0), retained=True)
    state.apply(TOPICS.twin("bed-1"), encode(twin_body(), bed="bed-1", seq=0), retained=True)
    will = status_body(ApplianceState.OFFLINE, reason="lost")
    state.apply(TOPICS.appliance_status(), encode(will, bed=None, seq=1), retained=True)

    text = render_plain(state)

    assert "appliance st-mary/icu-3/edge-01: OFFLINE (lost)" in text
    assert "appliance OFFLINE" in text


def test_device_topic_newer_than_twin_wins() -> None:
    state = make_state()
    state.apply(TOPICS.twin("bed-1"), encode(twin_body(), bed="bed-1", seq=0), retained=True)
    later = encode_message(
        DeviceStatusBody(status=vent_state(connected=False)),
        appliance="edge-01",
        bed="bed-1",
        session=1,
        seq=0,
        ts=T0 + timedelta(seconds=1),
    )
    state.apply(TOPICS.device("bed-1", "vent-1"), later, retained=True)

    assert "device vent-1: connected NO" in render_plain(state)


def test_seq_gap_counts_lost_and_reordered() -> None:
    state = make_state()
    topic = TOPICS.vitals("bed-1")
    for seq in (0, 1, 4, 5):  # 2 and 3 never came
        state.apply(topic, encode(vitals_body(), bed="bed-1", seq=seq), retained=False)
    assert state.lost == 2
    assert state.reordered == 0

    state.apply(topic, encode(vitals_body(), bed="bed-1", seq=3), retained=False)  # late
    assert state.reordered == 1
    text = render_plain(state)
    assert "lost 2 | reordered 1" in text
    assert "2 lost (seq 1 -> 4)" in text


def test_new_session_restarts_seq_and_retained_replay_is_not_loss() -> None:
    state = make_state()
    topic = TOPICS.twin("bed-1")
    state.apply(topic, encode(twin_body(), bed="bed-1", seq=41), retained=True)  # first seen: baseline
    state.apply(topic, encode(twin_body(), bed="bed-1", seq=42), retained=False)
    state.apply(topic, encode(twin_body(), bed="bed-1", seq=42), retained=True)  # resubscribe replay
    state.apply(topic, encode(twin_body(), bed="bed-1", seq=0, session=2), retained=False)  # restart
    state.apply(topic, encode(twin_body(), bed="bed-1", seq=1, session=2), retained=False)

    assert (state.lost, state.reordered, state.violations) == (0, 0, 0)
    assert state.beds[("st-mary", "icu-3", "bed-1")].twin is not None


def test_topics_are_per_bed_for_seq() -> None:
    state = make_state()
    state.apply(TOPICS.vitals("bed-1"), encode(vitals_body(), bed="bed-1", seq=0), retained=False)
    state.apply(TOPICS.vitals("bed-2"), encode(vitals_body(), bed="bed-2", seq=7), retained=False)
    state.apply(TOPICS.vitals("bed-1"), encode(vitals_body(), bed="bed-1", seq=1), retained=False)
    assert state.lost == 0


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{not json", "schema violation"),
        (b"\xff\xfe", "schema violation"),
        (b"[]", "schema violation"),
    ],
)
def test_invalid_payload_is_counted_not_raised(payload: bytes, expected: str) -> None:
    state = make_state()
    state.apply(TOPICS.twin("bed-1"), payload, retained=True)
    assert state.violations == 1
    assert expected in render_plain(state)


def test_schema_violation_is_counted_and_shown() -> None:
    state = make_state()
    document = json.loads(encode(twin_body(), bed="bed-1", seq=0))
    del document["values"]["ppeak"]["unit"]
    state.apply(TOPICS.twin("bed-1"), json.dumps(document).encode(), retained=True)
    document = json.loads(encode(status_body(), bed=None, seq=0))
    document["extra"] = 1
    state.apply(TOPICS.appliance_status(), json.dumps(document).encode(), retained=True)

    assert state.violations == 2
    text = render_plain(state)
    assert "contract violations 2" in text
    assert "values.ppeak.unit: Field required" in text
    assert "extra: Extra inputs are not permitted" in text


def test_envelope_that_contradicts_the_topic_is_a_violation() -> None:
    state = make_state()
    state.apply(TOPICS.twin("bed-2"), encode(twin_body(), bed="bed-1", seq=0), retained=True)
    state.apply(TOPICS.vitals("bed-1"), encode(twin_body(), bed="bed-1", seq=0), retained=False)
    state.apply(
        TOPICS.device("bed-1", "monitor-1"),
        encode(DeviceStatusBody(status=vent_state()), bed="bed-1", seq=0),
        retained=True,
    )
    assert state.violations == 3
    assert ("st-mary", "icu-3", "bed-2") not in state.beds


def test_other_topics_and_filters_are_ignored_and_empty_retained_clears() -> None:
    state = WardState(site="st-mary", ward="icu-3")
    state.apply("icu/v1/st-mary/icu-3/bed/bed-1/unknown", b"{}", retained=True)
    state.apply("icu/v1/elsewhere/icu-3/bed/bed-1/twin", b"garbage", retained=True)
    state.apply("other/prefix/x", b"garbage", retained=False)
    assert state.violations == 0
    assert state.ignored == 3

    state.apply(TOPICS.twin("bed-1"), encode(twin_body(), bed="bed-1", seq=0), retained=True)
    state.apply(TOPICS.twin("bed-1"), b"", retained=True)
    assert state.beds[("st-mary", "icu-3", "bed-1")].twin is None
    assert state.violations == 0


def test_rich_render_has_values_and_colours() -> None:
    state = make_state()
    state.apply(TOPICS.appliance_status(), encode(status_body(), bed=None, seq=0), retained=True)
    state.apply(TOPICS.twin("bed-1"), encode(twin_body(), bed="bed-1", seq=0), retained=True)
    state.apply(TOPICS.twin("bed-1"), b"{}", retained=False)
    console = Console(
        file=io.StringIO(), record=True, width=160, color_system="standard", force_terminal=True
    )
    console.print(render(state))
    text = console.export_text(clear=False)
    assert "Airway pressure high" in text
    assert "Evita V500" in text
    assert "online" in text
    assert "contract violation" in text
    styled = console.export_text(styles=True)
    assert "\x1b[1;31mHIGH" in styled  # high priority alarm in red
    assert "\x1b[36mLOW" in styled  # low priority alarm in cyan
    assert "\x1b[2mvt" in styled  # stale value dim
    assert "\x1b[31mfio2" in styled  # invalid value red


def forecast_body(*, model_id: str = "nlinear-q", spo2_p50: float = 97.1) -> ForecastBody:
    return ForecastBody(
        model=ForecastModelRef(
            id=model_id, version="1.0.0", kind="learned", backend="onnxruntime", precision="fp32"
        ),
        made_at=datetime(2026, 11, 25, 12, 1, 3, 250000, tzinfo=UTC),
        horizons_min=[1, 5, 10, 15],
        signals={
            "spo2": SignalForecast(
                unit="%",
                source="spo2",
                last_value=97.0,
                last_age_s=2.0,
                valid_minutes=30,
                horizons=[
                    HorizonForecast(horizon_min=h, p10=95.0, p50=spo2_p50, p90=98.9) for h in (1, 5, 10, 15)
                ],
            )
        },
        events={
            "spo2_below_90": EventForecast(
                description="SpO2 below 90 %",
                horizons=[
                    EventProbability(horizon_min=h, probability=p)
                    for h, p in ((1, 0.02), (5, 0.04), (10, 0.07), (15, 0.09))
                ],
            ),
            "map_below_65": EventForecast(
                description="MAP below 65 mmHg",
                horizons=[
                    EventProbability(horizon_min=h, probability=p)
                    for h, p in ((1, 0.1), (5, 0.25), (10, 0.55), (15, 0.7))
                ],
            ),
        },
        unavailable={"map": "no valid map in the last 30 min"},
    )


def test_forecast_is_rendered_plain() -> None:
    state = make_state()
    state.apply(TOPICS.forecast("bed-1"), encode(forecast_body(), bed="bed-1", seq=0), retained=True)

    text = render_plain(state)

    assert (state.violations, state.lost) == (0, 0)
    assert "forecast (session 1 seq 0), model nlinear-q@1.0.0 (learned) on onnxruntime fp32" in text
    assert "made 12:01:03Z" in text
    spo2 = next(line for line in text.splitlines() if line.strip().startswith("spo2 "))
    assert "%" in spo2
    assert "now       97" in spo2
    assert "1m 97.1 [95.0\u201398.9]" in spo2
    assert "15m 97.1 [95.0\u201398.9]" in spo2
    assert "P(spo2_below_90): 1m 2%  5m 4%  10m 7%  15m 9%" in text
    assert "P(map_below_65): 1m 10%  5m 25%  10m 55%  15m 70%" in text
    assert "unavailable map: no valid map in the last 30 min" in text


def test_forecast_topic_wins_over_twin_and_twin_is_the_fallback() -> None:
    state = make_state()
    twin = twin_body().model_copy(update={"forecast": forecast_body(model_id="baseline-q", spo2_p50=96.0)})
    state.apply(TOPICS.twin("bed-1"), encode(twin, bed="bed-1", seq=0), retained=True)
    text = render_plain(state)
    assert "forecast (from the twin), model baseline-q@1.0.0" in text
    assert "96.0 [95.0" in text

    state.apply(TOPICS.forecast("bed-1"), encode(forecast_body(), bed="bed-1", seq=0), retained=True)
    text = render_plain(state)
    assert "model nlinear-q@1.0.0" in text
    assert "baseline-q" not in text

    state.apply(TOPICS.forecast("bed-1"), b"", retained=True)  # retained forecast cleared
    assert state.beds[("st-mary", "icu-3", "bed-1")].forecast_message is None
    assert "forecast (from the twin), model baseline-q@1.0.0" in render_plain(state)
    assert state.violations == 0


def test_forecast_schema_violation_and_envelope_mismatch_are_counted() -> None:
    state = make_state()
    document = json.loads(encode(forecast_body(), bed="bed-1", seq=0))
    document["events"]["spo2_below_90"]["horizons"][0]["probability"] = 1.5
    state.apply(TOPICS.forecast("bed-1"), json.dumps(document).encode(), retained=True)
    state.apply(TOPICS.forecast("bed-1"), encode(twin_body(), bed="bed-1", seq=0), retained=True)
    state.apply(TOPICS.forecast("bed-2"), encode(forecast_body(), bed="bed-1", seq=0), retained=True)

    assert state.violations == 3
    text = render_plain(state)
    assert "events.spo2_below_90.horizons.0.probability" in text
    assert "forecast (" not in text
    assert ("st-mary", "icu-3", "bed-2") not in state.beds


def test_forecast_seq_gap_counts_lost() -> None:
    state = make_state()
    topic = TOPICS.forecast("bed-1")
    for seq in (0, 1, 5):  # 2, 3 and 4 never came
        state.apply(topic, encode(forecast_body(), bed="bed-1", seq=seq), retained=False)
    state.apply(topic, encode(forecast_body(), bed="bed-1", seq=5), retained=True)  # replay: not news

    assert (state.lost, state.reordered) == (3, 0)
    assert f"{topic} session 1: 3 lost (seq 1 -> 5)" in render_plain(state)


def test_rich_render_shows_forecast_with_probability_colours() -> None:
    state = make_state()
    state.apply(TOPICS.forecast("bed-1"), encode(forecast_body(), bed="bed-1", seq=0), retained=True)
    console = Console(
        file=io.StringIO(), record=True, width=160, color_system="standard", force_terminal=True
    )
    console.print(render(state))
    text = console.export_text(clear=False)
    assert "forecast (session 1 seq 0)" in text
    assert "97.1 [95.0\u201398.9]" in text
    assert "P(spo2_below_90): 1m 2%  5m 4%  10m 7%  15m 9%" in text
    assert "map: no valid map in the last 30 min" in text
    assert "model nlinear-q@1.0.0 (learned) on onnxruntime fp32, made 12:01:03Z" in text
    styled = console.export_text(styles=True)
    assert "\x1b[31m55%" in styled  # >= 50 % red
    assert "\x1b[33m25%" in styled  # >= 20 % yellow
    assert "\x1b[2mmap: no valid map" in styled  # unavailable dimmed


def test_broker_url_parsing() -> None:
    assert parse_broker_url("mqtt://127.0.0.1:1884").port == 1884
    assert parse_broker_url("mqtt://broker").port == 1883
    assert parse_broker_url("mqtts://broker").tls
    with pytest.raises(ValueError, match="mqtt://"):
        parse_broker_url("http://broker")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--bogus"]) == 2
    assert main(["--broker", "tcp://x:1"]) == 2
    assert main(["--seconds", "0"]) == 2
    capsys.readouterr()


def test_unreachable_broker_exits_69(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["--broker", f"mqtt://127.0.0.1:{port}", "--connect-timeout", "0.5", "--once"]) == 69
    error = capsys.readouterr().err
    assert "cannot reach broker" in error
    assert len(error.strip().splitlines()) == 1


@pytest.mark.parametrize("number", ["1e999", "-1e999", "Infinity", "NaN"])
def test_non_finite_numbers_in_a_twin_render_instead_of_crashing_the_view(number: str) -> None:
    """Regression (fuzz, tools/fuzz watch): a setting or value of 1e999 raised OverflowError in render."""
    state = make_state()
    document = json.loads(encode(twin_body(), bed="bed-1", seq=0))
    document["settings"]["peep"]["value"] = "PLACEHOLDER"
    document["values"]["ppeak"]["value"] = "PLACEHOLDER"
    payload = json.dumps(document).replace('"PLACEHOLDER"', number).encode()
    state.apply(TOPICS.twin("bed-1"), payload, retained=True)
    text = render_plain(state)
    assert "ppeak" in text
    assert "peep" in text
    Console(file=io.StringIO(), width=160).print(render(state))


def alarm_body(
    *,
    priority: AlarmPriority = AlarmPriority.HIGH,
    state: AlarmState = AlarmState.ACTIVE,
    present: bool = True,
    text: str = "SpO2 84 % below 88 %",
    kind: AlarmKind = AlarmKind.PHYSIOLOGICAL,
    acknowledged: Acknowledgement | None = None,
    audio_paused_until: datetime | None = None,
    onset: datetime = T0 - timedelta(seconds=95),
) -> AlarmBody:
    return AlarmBody(
        id=f"bed-1-{text[:4]}",
        kind=kind,
        condition="spo2_low",
        key="spo2",
        text=text,
        priority=priority,
        configured_priority=priority,
        state=state,
        condition_present=present,
        latching=True,
        onset=onset,
        determined_at=onset + timedelta(seconds=10),
        value=84.0,
        unit="%",
        limit=88.0,
        direction="low",
        condition_delay_s=10.0,
        cause="spo2 84 from vent-1",
        acknowledged=acknowledged,
        audio_paused_until=audio_paused_until,
        updated_at=T0,
    )


ACK = Acknowledgement(at=T0, command_id="cmd-7", user="nurse.kim", role="nurse")


def alarm_twin() -> TwinBody:
    alarms = [
        alarm_body(),
        alarm_body(
            priority=AlarmPriority.MEDIUM,
            state=AlarmState.ACKNOWLEDGED,
            text="MAP 62 mmHg below 65 mmHg",
            acknowledged=ACK,
        ),
        alarm_body(
            priority=AlarmPriority.MEDIUM,
            state=AlarmState.AUDIO_PAUSED,
            text="Respiratory rate 31 /min above 30 /min",
            audio_paused_until=T0 + timedelta(minutes=2),
        ),
        alarm_body(
            priority=AlarmPriority.LOW,
            state=AlarmState.LATCHED,
            present=False,
            kind=AlarmKind.TECHNICAL,
            text="vent-1 lost",
            onset=T0 - timedelta(hours=1, minutes=2),
        ),
    ]
    news2 = News2Body(
        total=6,
        complete=False,
        missing=["temp", "consciousness"],
        subscores={"rr": 3, "spo2": 3},
        spo2_scale=2,
        on_oxygen=True,
        consciousness=None,
        single_parameter_3=True,
        risk="medium",
        advisory="urgent",
        computed_at=T0,
    )
    return twin_body().model_copy(update={"alarms": alarms, "news2": news2})


def test_plain_render_shows_the_appliance_alarms_with_state_age_and_acknowledgement() -> None:
    state = make_state()
    state.apply(TOPICS.twin("bed-1"), encode(alarm_twin(), bed="bed-1", seq=0), retained=True)

    lines = render_plain(state).splitlines()

    def line_with(text: str) -> str:
        return next(line for line in lines if text in line)

    assert state.violations == 0
    assert line_with("SpO2 84 %").strip() == (
        "alarm HIGH active physiological: SpO2 84 % below 88 % (since 1m35s)"
    )
    assert "alarm MEDIUM acknowledged physiological: MAP 62" in line_with("MAP 62")
    assert line_with("MAP 62").endswith("ack by nurse.kim")
    assert "alarm MEDIUM audio paused until 20:25:32Z physiological" in line_with("Respiratory rate")
    latched = line_with("vent-1 lost")
    assert "alarm LOW latched technical: vent-1 lost (since 1h02m) CONDITION GONE" in latched
    assert "device alarm HIGH vent-1 0x12: Airway pressure high" in line_with("0x12")


def test_plain_render_says_when_there_is_no_appliance_alarm() -> None:
    state = make_state()
    state.apply(TOPICS.twin("bed-1"), encode(twin_body(), bed="bed-1", seq=0), retained=True)
    text = render_plain(state)
    assert "  alarms: none" in text
    assert "NEWS2: not computed" in text


def test_plain_render_shows_news2_with_what_is_missing() -> None:
    state = make_state()
    state.apply(TOPICS.twin("bed-1"), encode(alarm_twin(), bed="bed-1", seq=0), retained=True)
    text = render_plain(state)
    assert (
        "NEWS2 6 risk medium, advisory urgent, red score, SpO2 scale 2,"
        " incomplete: missing temp, consciousness" in text
    )
    complete = alarm_twin().news2
    assert complete is not None
    twin = alarm_twin().model_copy(
        update={"news2": complete.model_copy(update={"complete": True, "missing": [], "advisory": None})}
    )
    state.apply(TOPICS.twin("bed-1"), encode(twin, bed="bed-1", seq=1), retained=False)
    text = render_plain(state)
    assert "NEWS2 6 risk medium, advisory none, red score, SpO2 scale 2, complete" in text


def alarm_event(*, history: bool = False, seq_kind: EventKind = EventKind.ALARM_STATE_CHANGED) -> EventBody:
    alarm = alarm_body(
        priority=AlarmPriority.MEDIUM, state=AlarmState.ACKNOWLEDGED, text="MAP low", acknowledged=ACK
    )
    return EventBody(kind=seq_kind, detail="acknowledged by nurse.kim", alarm=alarm, at=T0, history=history)


def test_alarm_events_show_kind_priority_text_and_state_and_history_is_marked() -> None:
    state = make_state()
    events = [
        alarm_event(seq_kind=EventKind.ALARM_RAISED, history=True),
        alarm_event(),
        EventBody(
            kind=EventKind.DEVICE_DISCONNECTED, device="vent-1", detail="no answer", at=T0, history=True
        ),
    ]
    for seq, event in enumerate(events):
        state.apply(TOPICS.events("bed-1"), encode(event, bed="bed-1", seq=seq), retained=False)

    lines = [line for line in render_plain(state).splitlines() if line.strip().startswith("event ")]

    assert lines == [
        "  event 20:23:32.000Z alarm_raised MEDIUM MAP low (acknowledged) (replayed)",
        "  event 20:23:32.000Z alarm_state_changed MEDIUM MAP low (acknowledged)",
        "  event 20:23:32.000Z device_disconnected vent-1: no answer (replayed)",
    ]


def test_central_station_state_from_the_birth_is_shown() -> None:
    state = make_state()
    birth = status_body().model_copy(update={"central_station": "offline"})
    state.apply(TOPICS.appliance_status(), encode(birth, bed=None, seq=0), retained=True)
    assert "beds bed-1 central station offline" in render_plain(state)
    console = Console(
        file=io.StringIO(), record=True, width=160, color_system="standard", force_terminal=True
    )
    console.print(render(state))
    assert "central station" in console.export_text(clear=False)
    assert "\x1b[1;31moffline" in console.export_text(styles=True)

    state.apply(TOPICS.appliance_status(), encode(status_body(), bed=None, seq=1), retained=True)
    assert "central station" not in render_plain(state)


def test_rich_render_shows_alarms_news2_and_replayed_events() -> None:
    state = make_state()
    state.apply(TOPICS.twin("bed-1"), encode(alarm_twin(), bed="bed-1", seq=0), retained=True)
    state.apply(TOPICS.events("bed-1"), encode(alarm_event(history=True), bed="bed-1", seq=0), retained=False)
    console = Console(
        file=io.StringIO(), record=True, width=200, color_system="standard", force_terminal=True
    )
    console.print(render(state))
    text = console.export_text(clear=False)
    assert "device alarms (as the devices report them now)" in text
    assert "Airway pressure high" in text

    def row(cell: str) -> list[str]:
        line = next(line for line in text.splitlines() if f"\u2502 {cell} " in line)
        return [part.strip() for part in line.split("\u2502")[2:-2]]

    assert row("HIGH") == ["HIGH", "active", "physiological", "SpO2 84 % below 88 %", "1m35s", "present", ""]
    assert row("MAP 62 mmHg below 65 mmHg")[-1] == "ack by nurse.kim"
    assert row("audio paused until 20:25:32Z")[3] == "Respiratory rate 31 /min above 30 /min"
    assert row("LOW")[1:] == ["latched", "technical", "vent-1 lost", "1h02m", "CONDITION GONE", ""]
    assert "NEWS2 6 risk medium, advisory urgent" in text
    assert "incomplete: missing temp, consciousness" in text
    assert "alarm_state_changed" in text
    assert "MEDIUM MAP low (acknowledged) (replayed)" in text
    styled = console.export_text(styles=True)
    assert "\x1b[1;31mHIGH" in styled  # the appliance's high priority alarm in red
    assert "\x1b[2m20:23:32.000Z" in styled  # a replayed event is dim
    assert "\x1b[1;33mCONDITION GONE" in styled


@pytest.mark.parametrize(
    ("field", "shown"),
    [
        ("onset", "Respiratory rate 31 /min above 30 /min (since 17758677h23m)"),
        ("audio_paused_until", "audio paused until 0001-01-01T00:00:00+01:00"),
        ("ts", "at 0001-01-01T00:00:00+01:00"),
        ("at", "event 0001-01-01T00:00:00+01:00 alarm_state_changed"),
    ],
)
def test_timestamps_at_the_edge_of_the_calendar_do_not_crash_the_view(field: str, shown: str) -> None:
    """0001-01-01T00:00:00+01:00 is a valid aware timestamp whose UTC instant is before year 1."""
    state = make_state()
    twin = json.loads(encode(alarm_twin(), bed="bed-1", seq=0))
    event = json.loads(encode(alarm_event(), bed="bed-1", seq=0))
    if field == "at":
        event["at"] = "0001-01-01T00:00:00+01:00"
    elif field == "ts":
        twin["ts"] = "0001-01-01T00:00:00+01:00"
    else:
        twin["alarms"][2][field] = "0001-01-01T00:00:00+01:00"
        event["alarm"][field] = "0001-01-01T00:00:00+01:00"
    state.apply(TOPICS.twin("bed-1"), json.dumps(twin).encode(), retained=True)
    state.apply(TOPICS.events("bed-1"), json.dumps(event).encode(), retained=False)
    assert state.violations == 0
    assert shown in render_plain(state)
    Console(file=io.StringIO(), width=160).print(render(state))


def test_escalated_priority_and_acknowledgement_without_a_user_are_shown() -> None:
    state = make_state()
    escalated = alarm_body(
        priority=AlarmPriority.HIGH,
        state=AlarmState.ACKNOWLEDGED,
        acknowledged=Acknowledgement(at=T0, command_id="cmd-9"),
    ).model_copy(update={"configured_priority": AlarmPriority.MEDIUM})
    twin = twin_body().model_copy(update={"alarms": [escalated]})
    state.apply(TOPICS.twin("bed-1"), encode(twin, bed="bed-1", seq=0), retained=True)

    line = next(line for line in render_plain(state).splitlines() if "SpO2 84 %" in line)

    assert line.strip().startswith("alarm HIGH (was medium) acknowledged physiological")
    assert line.endswith("ack by command cmd-9")
