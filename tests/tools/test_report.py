"""`icu-edge report`: a bed's history drawn as PNG or HTML, with clear errors.

The first tests write a real history file through `History` (injected wall clock) and run the command
in-process; the integration test runs a real daemon and simulators, then the command as a subprocess
while the daemon still writes (SQLite WAL readers).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from broker import MosquittoBroker, wait_for
from ward import REPO_ROOT, Ward, WardLayout

from drivers.base import AlarmPriority
from edge.config import HistoryConfig
from edge.history import History
from edge.history_file import HistoryReader, HistoryUnavailable
from edge.model import (
    AlarmBody,
    AlarmKind,
    AlarmState,
    ForecastBody,
    ForecastModelRef,
    HorizonForecast,
    SignalForecast,
    TwinValue,
)
from tools.report import UsageError, main, parse_when

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NOW = datetime.now(UTC).replace(microsecond=0)
START = NOW - timedelta(minutes=30)


def _value(value: float) -> TwinValue:
    return TwinValue(
        value=value,
        unit="/min",
        mdc=None,
        label="x",
        device="vent-1",
        valid=True,
        device_time=None,
        received_at=START,
        age_s=0.5,
        stale=False,
    )


def _forecast(made_at: datetime, *, hr_from: str = "hr") -> ForecastBody:
    """SpO2 and MAP forecasts, and an hr one made from `hr_from` (pr: a ventilator's pulse rate)."""
    return ForecastBody(
        model=ForecastModelRef(
            id="baseline", version="1", kind="baseline", backend="onnxruntime", precision="fp32"
        ),
        made_at=made_at,
        horizons_min=[1, 5, 15],
        signals={
            key: SignalForecast(
                unit=unit,
                source=hr_from if key == "hr" else key,
                last_value=last,
                last_age_s=1.0,
                valid_minutes=10,
                horizons=[
                    HorizonForecast(horizon_min=h, p10=last - 2 * h, p50=last - h, p90=last)
                    for h in (1, 5, 15)
                ],
            )
            for key, unit, last in (("spo2", "%", 95.0), ("map", "mm[Hg]", 72.0), ("hr", "/min", 80.0))
        },
        events={},
        unavailable={},
    )


def _alarm(*, onset: datetime, state: AlarmState, ended_at: datetime | None = None) -> AlarmBody:
    return AlarmBody(
        id="bed-01-spo2_low-1",
        kind=AlarmKind.PHYSIOLOGICAL,
        condition="spo2_low",
        key="spo2",
        text="SpO2 <b>low</b>",  # markup in a text is escaped in the HTML
        priority=AlarmPriority.HIGH,
        configured_priority=AlarmPriority.HIGH,
        state=state,
        condition_present=ended_at is None,
        latching=False,
        onset=onset,
        determined_at=onset,
        ended_at=ended_at,
        value=88.0,
        unit="%",
        limit=90.0,
        direction="low",
        condition_delay_s=10.0,
        end_hysteresis=2.0,
        cause="spo2 88 below 90",
        updated_at=onset,
    )


class Wall:
    def __init__(self) -> None:
        self.now_s = START.timestamp()

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture(scope="module")
def history_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 min of two beds at 5 s, a forecast a minute on bed-01 (its hr one from the pulse rate for the
    first 15 min), one SpO2 alarm from minute 20 to 25."""
    path = tmp_path_factory.mktemp("history") / "history.db"
    wall = Wall()
    history = History(config=HistoryConfig(sample_s=5.0), path=path, beds=["bed-01", "bed-02"], wall=wall)
    history.start()
    for i in range(360):
        wall.now_s = START.timestamp() + i * 5
        values = {
            "hr": _value(80 + 10 * math.sin(i / 20)),
            "spo2": _value(97.0 if i < 240 else 88.0),
            "map": _value(75 - i / 30),
            "rr": _value(16.0),
            "vt": _value(450.0),
        }
        history.tick(now_mono_s=i * 5.0, values_of=lambda bed, v=values: v)
        history.tick(now_mono_s=i * 5.0 + 2.5, values_of=lambda bed, v=values: v)
        if i % 12 == 0:
            made_at = datetime.fromtimestamp(wall.now_s, tz=UTC)
            hr_from = "pr" if i < 180 else "hr"  # the monitor joins at minute 15
            history.forecast(bed="bed-01", body=_forecast(made_at, hr_from=hr_from), now_mono_s=i * 5.0)
        onset = START + timedelta(minutes=20)
        if i == 242:
            history.alarm("bed-01", "alarm_raised", _alarm(onset=onset, state=AlarmState.ACTIVE))
        if i == 300:
            end = START + timedelta(minutes=25)
            history.alarm("bed-01", "alarm_ended", _alarm(onset=onset, state=AlarmState.ENDED, ended_at=end))
    history.close()
    assert history.stats().dropped == 0
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_png_with_a_panel_per_vital_group_and_the_alarm(
    history_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bed-01.png"
    status, stdout, stderr = _run(
        ["bed-01", "--since", "1h", "--history", str(history_file), "--out", str(out), "--json"], capsys
    )
    assert status == 0, stderr
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    summary = json.loads(stdout)
    assert summary["panels"] == [
        "Heart / pulse rate",
        "SpO2",
        "Arterial pressure",
        "Respiratory rate",
        "Alarms",
    ]
    assert summary["points"] == {"hr": 360, "map": 360, "rr": 360, "spo2": 360, "vt": 360}
    assert summary["forecasts"] == 30
    assert summary["forecast_points"] == {"hr": 90, "map": 90, "spo2": 90}
    assert summary["forecasts_from"] == {"hr": {"pr": 15}}, "the hr forecasts made from the pulse rate"
    (alarm,) = summary["alarms"]
    assert (alarm["id"], alarm["priority"], alarm["state"]) == ("bed-01-spo2_low-1", "high", "ended")
    assert alarm["onset"] == (START + timedelta(minutes=20)).isoformat().replace("+00:00", "Z")


def test_the_range_selects_what_is_drawn(
    history_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    since = (START + timedelta(minutes=26)).isoformat()
    status, stdout, _ = _run(
        [
            "bed-01",
            "--since",
            since,
            "--history",
            str(history_file),
            "--out",
            str(tmp_path / "x.png"),
            "--json",
        ],
        capsys,
    )
    assert status == 0
    summary = json.loads(stdout)
    assert summary["points"]["hr"] == 4 * 12  # minutes 26-30 at 5 s
    assert summary["alarms"] == []  # it ended at minute 25


def test_html_is_self_contained_with_the_alarm_and_values_tables(
    history_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bed-01.html"
    status, _, stderr = _run(
        ["bed-01", "--since", "1h", "--history", str(history_file), "--out", str(out)], capsys
    )
    assert status == 0, stderr
    page = out.read_text(encoding="utf-8")
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page  # the PNG inline
    assert '<table id="alarms">' in page
    assert "<td>bed-01-spo2_low-1</td><td>high</td>" in page
    assert "SpO2 &lt;b&gt;low&lt;/b&gt;" in page
    assert '<table id="values">' in page
    assert "<td>spo2</td><td>%</td><td>360</td><td>88</td>" in page
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere


def test_an_unknown_bed_lists_the_known_ones(history_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, stderr = _run(["bed-9", "--history", str(history_file)], capsys)
    assert status == 2
    assert "no history of bed 'bed-9'; beds with history: bed-01 (" in stderr
    assert "bed-02 (" in stderr


def test_an_empty_range_says_what_the_history_covers(
    history_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, stderr = _run(
        ["bed-01", "--since", "5h", "--until", "4h", "--history", str(history_file)], capsys
    )
    assert status == 69
    assert "nothing recorded for bed bed-01 from" in stderr
    assert "its history covers" in stderr


def test_no_history_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, stderr = _run(["bed-01", "--history", str(tmp_path / "history.db")], capsys)
    assert status == 69
    assert f"no history file at {tmp_path / 'history.db'}" in stderr


def test_the_history_is_found_through_the_config(
    history_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[appliance]
id = "edge-1"
site = "s"
ward = "w"
[mqtt]
host = "127.0.0.1"
insecure = true
[store]
path = "{tmp_path / "outbox.db"}"
[history]
path = "{history_file}"
[[bed]]
id = "bed-01"
""",
        encoding="utf-8",
    )
    out = tmp_path / "x.png"
    status, _, stderr = _run(["bed-01", "--config", str(config), "--out", str(out)], capsys)
    assert status == 0, stderr
    config.write_text(config.read_text(encoding="utf-8").replace("[history]", "[histroy]"), encoding="utf-8")
    status, _, stderr = _run(["bed-01", "--config", str(config), "--out", str(out)], capsys)
    assert status == 78
    assert stderr.startswith(f"{config}: histroy: unknown key (did you mean 'history'?)"), stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "yesterday"], "'yesterday' is no time"),
        (["--since", "1h", "--until", "2h"], "must be before --until"),
        (["--out", "x.pdf"], "give a .png or .html file"),
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], message: str, history_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, stderr = _run(["bed-01", "--history", str(history_file), *argv], capsys)
    assert status == 2
    assert message in stderr


def test_without_matplotlib_it_names_the_extra(
    history_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the extra sees
    status, _, stderr = _run(
        ["bed-01", "--since", "1h", "--history", str(history_file), "--out", str(tmp_path / "x.png")], capsys
    )
    assert status == 69
    assert "pip install 'icu-edge[report]'" in stderr


def test_times_are_ages_or_iso_8601() -> None:
    now = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    assert parse_when("90s", now=now) == now - timedelta(seconds=90)
    assert parse_when("30m", now=now) == now - timedelta(minutes=30)
    assert parse_when("2h", now=now) == now - timedelta(hours=2)
    assert parse_when("1d", now=now) == now - timedelta(days=1)
    assert parse_when("2026-12-01T04:30", now=now) == datetime(2026, 12, 1, 4, 30, tzinfo=UTC)
    assert parse_when("2026-12-01T05:30+01:00", now=now) == datetime(2026, 12, 1, 4, 30, tzinfo=UTC)
    assert parse_when("2026-12-01T04:30:00Z", now=now) == datetime(2026, 12, 1, 4, 30, tzinfo=UTC)
    with pytest.raises(UsageError):
        parse_when("2 hours", now=now)


@pytest.mark.integration
def test_a_report_of_a_running_daemons_bed(tmp_path: Path, broker: MosquittoBroker) -> None:
    """A real ward (daemon, simulators, forecasts on onnxruntime, an alarm); report while it runs."""
    layout = WardLayout(
        beds=2,
        engines_toml=f'[engines]\nbackend = "onnxruntime"\ncache_dir = "{tmp_path / "engines"}"',
        extra_toml="[history]\nsample_s = 0.5\nforecast_s = 2",
        bed_toml=(("bed-01", "[bed.alarm_limits.spo2]\nlow = 98\ndelay_s = 0"),),  # steady 97 %: an alarm
    )
    ward = Ward(workdir=tmp_path, broker=broker, layout=layout)
    history_path = tmp_path / "history.db"
    try:
        ward.start_simulators()
        ward.start_daemon()

        def recorded() -> bool:
            try:
                reader = HistoryReader(history_path)
            except HistoryUnavailable:
                return False
            try:
                since_s, until_s = 0.0, 2e9
                samples = reader.samples(bed="bed-01", since_s=since_s, until_s=until_s)
                return (
                    len(samples) >= 30
                    and bool(reader.forecasts(bed="bed-01", since_s=since_s, until_s=until_s))
                    and bool(reader.alarms(bed="bed-01", since_s=since_s, until_s=until_s))
                )
            finally:
                reader.close()

        assert wait_for(recorded, timeout_s=90), ward.log("daemon")
        report = [
            sys.executable,
            "-m",
            "tools.cli",
            "report",
            "bed-01",
            "--since",
            "5m",
            "--config",
            str(ward.config),
        ]
        png = tmp_path / "x.png"
        done = subprocess.run(
            [*report, "--out", str(png), "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert png.read_bytes().startswith(PNG_SIGNATURE)
        summary = json.loads(done.stdout)
        assert {"Heart / pulse rate", "SpO2", "Respiratory rate", "EtCO2", "Alarms"} <= set(summary["panels"])
        assert summary["points"]["spo2"] >= 30
        assert summary["forecasts"] >= 1
        assert any(alarm["key"] == "spo2" for alarm in summary["alarms"]), summary["alarms"]
        page = tmp_path / "x.html"
        done = subprocess.run(
            [*report, "--out", str(page)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        html = page.read_text(encoding="utf-8")
        assert '<table id="alarms">' in html
        spo2_alarm = next(alarm for alarm in summary["alarms"] if alarm["key"] == "spo2")
        assert f"<td>{spo2_alarm['id']}</td>" in html
        done = subprocess.run(
            [*report[:4], "bed-07", "--config", str(ward.config)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2
        assert "beds with history: bed-01 (" in done.stderr
        assert "bed-02 (" in done.stderr
        assert ward.stop_daemon() == 0, ward.log("daemon")
        assert "rows written, 0 dropped" in ward.log("daemon")
    finally:
        ward.close()
