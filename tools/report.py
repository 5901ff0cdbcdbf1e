"""`icu-edge report BED --since ...`: a bed's vitals, forecasts and alarms over time, for reviewing an event.

Reads the appliance's history file (`[history]`, edge/history.py) read-only, so it works while the
daemon runs, and draws with matplotlib (the `report` extra, imported only here, headless: Agg) one panel
per vital group with the forecasts made in the range (median and 10-90 % band, from the time each was
made) and the alarms as spans coloured by priority, plus an alarm lane naming each alarm. Writes a PNG,
or a self-contained HTML page (the PNG inline, and tables of the alarms and the values).

Exit codes: 0 written, 2 usage (a bad time, an unknown bed: the known ones are listed), 69
(EX_UNAVAILABLE) no history file, nothing recorded in the range, or matplotlib not installed, 78
(EX_CONFIG) the config cannot be read.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import re
import statistics
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from drivers.plausibility import TABLE
from edge.config import DEFAULT_CONFIG_PATH, ConfigError, parse_config
from edge.history_file import AlarmSpan, ForecastHeadline, HistoryReader, HistoryUnavailable
from edge.model import source_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

EX_OK = 0
EX_USAGE = 2
EX_UNAVAILABLE = 69
EX_CONFIG = 78

PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Heart / pulse rate", ("hr", "pr")),
    ("SpO2", ("spo2",)),
    ("Arterial pressure", ("map", "abp_sys", "abp_dia", "abp_mean", "nbp_sys", "nbp_dia", "nbp_mean")),
    ("Respiratory rate", ("rr",)),
    ("EtCO2", ("etco2",)),
    ("Temperature", ("temp", "temp_2", "temp_blood")),
)
"""The vital groups, one panel each (drawn when the range has a value or a forecast of the group)."""
PRIORITY_COLOURS = {"high": "#d62728", "medium": "#e6b800", "low": "#17becf"}
"""IEC 60601-1-8 alarm colours: high red, medium yellow, low cyan."""
_UNITS = {"mm[Hg]": "mmHg", "Cel": "°C", "{breaths}/min": "/min", "{beats}/min": "/min"}
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d)")
_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


class UsageError(Exception):
    """A bad argument: exit 2 with this message."""


def parse_when(text: str, *, now: datetime) -> datetime:
    """Return the time `text` names: an age before now (`90s`, `30m`, `2h`, `1d`) or ISO 8601, naive = UTC."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative is not None:
        return now - timedelta(seconds=float(relative.group(1)) * _SECONDS[relative.group(2)])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{text!r} is no time: give an age (90s, 30m, 2h, 1d) or ISO 8601 (2026-12-01T04:30, UTC "
            "unless it carries an offset)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _unit(key: str) -> str:
    row = TABLE.get(key)
    if row is None:
        return ""
    return _UNITS.get(row.unit, row.unit)


@dataclass(slots=True, kw_only=True)
class BedRecord:
    """What the history holds of one bed in a range."""

    bed: str
    since: datetime
    until: datetime
    samples: list[tuple[float, dict[str, float]]]
    forecasts: list[ForecastHeadline]
    alarms: list[AlarmSpan]
    recorded_until: datetime
    """The bed's last sample, or `until`: an alarm not ended is drawn up to here (later is unknown)."""
    panels: list[str] = field(default_factory=list)

    def series(self, key: str) -> tuple[list[datetime], list[float]]:
        """The samples of one key: times and values."""
        times, values = [], []
        for at_s, sample in self.samples:
            if key in sample:
                times.append(datetime.fromtimestamp(at_s, tz=UTC))
                values.append(sample[key])
        return times, values

    def recorded_keys(self) -> list[str]:
        """Every key with a sample in the range, sorted."""
        return sorted({key for _, sample in self.samples for key in sample})

    def summary(self, *, out: Path) -> dict[str, Any]:
        """What was plotted, for `--json` (and the tests)."""
        return {
            "bed": self.bed,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "out": str(out),
            "panels": self.panels,
            "samples": len(self.samples),
            "points": {key: len(self.series(key)[0]) for key in self.recorded_keys()},
            "forecasts": len(self.forecasts),
            "forecast_points": {
                key: sum(len(f.signals.get(key, [])) for f in self.forecasts)
                for key in sorted({k for f in self.forecasts for k in f.signals})
            },
            "forecasts_from": {
                key: dict(sorted(Counter(f.sources[key] for f in self.forecasts if key in f.sources).items()))
                for key in sorted({k for f in self.forecasts for k in f.sources})
            },
            "alarms": [
                {
                    "id": span.alarm_id,
                    "priority": span.priority,
                    "kind": span.kind,
                    "key": span.key,
                    "text": span.text,
                    "onset": _iso(datetime.fromtimestamp(span.onset_s, tz=UTC)),
                    "end": None
                    if span.ended_s is None
                    else _iso(datetime.fromtimestamp(span.ended_s, tz=UTC)),
                    "state": span.last_state,
                }
                for span in self.alarms
            ],
        }


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def read_record(reader: HistoryReader, *, bed: str, since: datetime, until: datetime) -> BedRecord:
    """Read one bed's history in [since, until]."""
    since_s, until_s = since.timestamp(), until.timestamp()
    _, last_s = reader.beds().get(bed, (until_s, until_s))
    return BedRecord(
        bed=bed,
        since=since,
        until=until,
        recorded_until=min(until, datetime.fromtimestamp(last_s, tz=UTC)),
        samples=reader.samples(bed=bed, since_s=since_s, until_s=until_s),
        forecasts=reader.forecasts(bed=bed, since_s=since_s, until_s=until_s),
        alarms=reader.alarms(bed=bed, since_s=since_s, until_s=until_s),
    )


def draw(record: BedRecord) -> Figure:
    """Draw the bed's panels and alarm lane on a new figure (headless); note the panels in the record."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure

    forecast_keys = {key for headline in record.forecasts for key in headline.signals}
    panels = [
        (title, [k for k in keys if record.series(k)[0] or k in forecast_keys])
        for title, keys in PANELS
        if any(record.series(k)[0] or k in forecast_keys for k in keys)
    ]
    record.panels = [title for title, _ in panels] + ["Alarms"]
    lane_rows = max(1, len(record.alarms))
    heights = [2.2] * len(panels) + [0.5 + 0.35 * lane_rows]
    figure = Figure(figsize=(12, sum(heights) + 1.0), dpi=100, layout="constrained")
    axes = figure.subplots(len(heights), 1, sharex=True, squeeze=False, height_ratios=heights)[:, 0]
    figure.suptitle(f"Bed {record.bed}: {_iso(record.since)} to {_iso(record.until)} (UTC)")
    left, right = _time_axis(record)
    for axis, (title, keys) in zip(axes, panels, strict=False):
        for key in keys:
            times, values = record.series(key)
            (line,) = axis.plot(times, values, linewidth=1.2, label=f"{key} ({_unit(key)})")
            _draw_forecasts(axis, record.forecasts, key=key, colour=line.get_color())
        units = sorted({_unit(k) for k in keys})
        axis.set_title(title, loc="left", fontsize=10)
        axis.set_ylabel(", ".join(units))
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", fontsize=8, ncols=4)
        for span in record.alarms:
            axis.axvspan(
                *_span_times(span, record), color=PRIORITY_COLOURS.get(span.priority, "grey"), alpha=0.12
            )
    lane = axes[-1]
    lane.set_title("Alarms", loc="left", fontsize=10)
    lane.set_yticks([])
    lane.set_ylim(-0.5, lane_rows - 0.5)
    if not record.alarms:
        lane.text(0.5, 0.5, "no alarm in this range", transform=lane.transAxes, ha="center", va="center")
    for row, span in enumerate(record.alarms):
        start, end = _span_times(span, record)
        colour = PRIORITY_COLOURS.get(span.priority, "grey")
        lane.barh(row, (end - start).total_seconds() / 86400, left=start, height=0.6, color=colour)
        lane.text(
            max(start, record.since),
            row,
            f" {span.alarm_id}: {span.text} ({span.priority}{'' if span.ended_s else ', not ended'})",
            va="center",
            fontsize=8,
        )
    lane.set_xlim(left, right)
    lane.xaxis.set_major_formatter(
        mdates.DateFormatter(  # type: ignore[no-untyped-call]
            "%H:%M:%S" if right - left < timedelta(minutes=10) else "%H:%M", tz=UTC
        )
    )
    lane.set_xlabel("time (UTC)")
    return figure


def _time_axis(record: BedRecord) -> tuple[datetime, datetime]:
    """From the first thing recorded in the range to its end, plus some of the last forecasts' horizon.

    The forecasts made at the end reach up to 15 min past it: the axis shows at most a quarter of the
    range beyond the end, so a short range is not squeezed to the left by the horizon.
    """
    firsts = [at_s for at_s, _ in record.samples[:1]]
    firsts += [f.at_s for f in record.forecasts[:1]] + [a.onset_s for a in record.alarms]
    left = max(record.since, datetime.fromtimestamp(min(firsts), tz=UTC)) if firsts else record.since
    horizon = record.until
    for headline in record.forecasts:
        for rows in headline.signals.values():
            end = datetime.fromtimestamp(headline.at_s, tz=UTC) + timedelta(minutes=max(h for h, *_ in rows))
            horizon = max(horizon, end)
    return left, min(horizon, record.until + (record.until - left) / 4)


def _draw_forecasts(axis: Any, forecasts: list[ForecastHeadline], *, key: str, colour: str) -> None:
    """Each forecast from the time it was made: the median (dashed) and the 10-90 % band; one made from
    another key's readings (hr from the pulse rate) dotted, and labelled so."""
    labelled: set[str] = set()
    alpha = max(0.02, min(0.15, 0.4 / max(1, len(forecasts))))  # many bands: each fainter
    for headline in forecasts:
        rows = headline.signals.get(key)
        if not rows:
            continue
        source = headline.sources.get(key, key)
        name = key if source == key else f"{key} (from {source_name(source)})"
        made = datetime.fromtimestamp(headline.at_s, tz=UTC)
        last = headline.last_values[key]
        times = [made] + [made + timedelta(minutes=h) for h, *_ in rows]
        low = [last] + [p10 for _, p10, _, _ in rows]
        median = [last] + [p50 for _, _, p50, _ in rows]
        high = [last] + [p90 for _, _, _, p90 in rows]
        first = name not in labelled
        axis.fill_between(
            times, low, high, color=colour, alpha=alpha, label=f"{name} forecast 10-90 %" if first else None
        )
        axis.plot(
            times,
            median,
            color=colour,
            linestyle="--" if source == key else ":",
            linewidth=0.8,
            label=f"{name} forecast median" if first else None,
        )
        labelled.add(name)


def _span_times(span: AlarmSpan, record: BedRecord) -> tuple[datetime, datetime]:
    start = datetime.fromtimestamp(span.onset_s, tz=UTC)
    end = record.recorded_until if span.ended_s is None else datetime.fromtimestamp(span.ended_s, tz=UTC)
    return start, max(end, start + timedelta(seconds=1))


def png_bytes(figure: Figure) -> bytes:
    """Render the figure as PNG."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def html_page(record: BedRecord, *, png: bytes) -> str:
    """A self-contained page: the plot inline, then the alarms and the values as tables."""
    e = html.escape
    alarm_rows = (
        "".join(
            "<tr>"
            + "".join(
                f"<td>{e(str(cell))}</td>"
                for cell in (
                    span.alarm_id,
                    span.priority,
                    span.kind,
                    span.key or "-",
                    _iso(datetime.fromtimestamp(span.onset_s, tz=UTC)),
                    "-" if span.ended_s is None else _iso(datetime.fromtimestamp(span.ended_s, tz=UTC)),
                    span.last_state,
                    span.text,
                )
            )
            + "</tr>"
            for span in record.alarms
        )
        or '<tr><td colspan="8">no alarm in this range</td></tr>'
    )
    value_rows = ""
    for key in record.recorded_keys():
        _, values = record.series(key)
        cells = (
            key,
            _unit(key),
            len(values),
            f"{min(values):g}",
            f"{statistics.median(values):g}",
            f"{max(values):g}",
            f"{values[-1]:g}",
        )
        value_rows += "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>"
    models = sorted({f.model for f in record.forecasts})
    title = f"icu-edge report: bed {record.bed}, {_iso(record.since)} to {_iso(record.until)}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #999;padding:2px 6px;text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>{e(title)}</h1>
<p>{len(record.samples)} samples, {len(record.forecasts)} forecasts ({e(", ".join(models) or "none")}),
{len(record.alarms)} alarms. Times in UTC. Review data from the appliance's local history.</p>
<img alt="vitals, forecasts and alarms of bed {e(record.bed)}"
 src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Alarms</h2>
<table id="alarms"><tr><th>alarm</th><th>priority</th><th>kind</th><th>signal</th><th>onset</th><th>end</th>
<th>last state</th><th>text</th></tr>{alarm_rows}</table>
<h2>Values</h2>
<table id="values"><tr><th>key</th><th>unit</th><th>samples</th><th>min</th><th>median</th><th>max</th>
<th>last</th></tr>{value_rows}</table>
</body></html>
"""


def _history_path(args: argparse.Namespace) -> Path:
    """The history file: --history, else the config's `[history] path` (default next to the outbox)."""
    if args.history is not None:
        return Path(args.history)
    path = Path(args.config)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"]) from exc
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError([f"not a TOML config: {exc}"]) from exc
    return parse_config(document).history_path


def build_parser() -> argparse.ArgumentParser:
    """The `icu-edge report` parser."""
    parser = argparse.ArgumentParser(
        prog="icu-edge report",
        description="Plot a bed's vitals, forecasts (median, 10-90 % band) and alarms over a time range "
        "from the appliance's local history, as PNG or self-contained HTML, for reviewing an event. "
        "Reads the history read-only: works while the daemon runs.",
    )
    parser.add_argument("bed", metavar="BED", help="bed id (an unknown one lists the beds with history)")
    parser.add_argument(
        "--since",
        default="2h",
        help="start: an age (90s, 30m, 2h, 1d) or ISO 8601, UTC unless it has an offset (default: 2h)",
    )
    parser.add_argument("--until", default="now", help="end: 'now', an age or ISO 8601 (default: now)")
    parser.add_argument(
        "--config",
        default=str(DEFAULT_CONFIG_PATH),
        help=f"the daemon's config: it names the history file (default: {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--history",
        default=None,
        help="the history file itself, instead of the config's (default: [history] path, else "
        "history.db next to the outbox)",
    )
    parser.add_argument(
        "--out", default=None, help="FILE.png or FILE.html (default: report-BED-UNTIL.png in this directory)"
    )
    parser.add_argument("--json", action="store_true", help="print what was plotted as JSON on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `icu-edge report`; return the exit status."""
    args = build_parser().parse_args(argv)
    now = datetime.now(UTC)
    try:
        since = parse_when(args.since, now=now)
        until = now if args.until == "now" else parse_when(args.until, now=now)
        if since >= until:
            raise UsageError(f"--since ({_iso(since)}) must be before --until ({_iso(until)})")
        out = Path(args.out) if args.out else Path(f"report-{args.bed}-{until:%Y%m%dT%H%M%SZ}.png")
        if out.suffix.lower() not in (".png", ".html"):
            raise UsageError(f"--out {out}: give a .png or .html file")
    except UsageError as exc:
        print(f"icu-edge report: {exc}", file=sys.stderr)
        return EX_USAGE
    try:
        history_path = _history_path(args)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"{args.config}: {line}", file=sys.stderr)
        return EX_CONFIG
    try:
        reader = HistoryReader(history_path)
    except HistoryUnavailable as exc:
        print(f"icu-edge report: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    try:
        beds = reader.beds()
        if args.bed not in beds:
            known = ", ".join(
                f"{bed} ({_iso(_at(first))} to {_iso(_at(last))})" for bed, (first, last) in beds.items()
            )
            print(
                f"icu-edge report: no history of bed {args.bed!r}; beds with history: {known or 'none yet'}",
                file=sys.stderr,
            )
            return EX_USAGE
        record = read_record(reader, bed=args.bed, since=since, until=until)
    finally:
        reader.close()
    if not (record.samples or record.forecasts or record.alarms):
        first, last = beds[args.bed]
        print(
            f"icu-edge report: nothing recorded for bed {args.bed} from {_iso(since)} to {_iso(until)}; its "
            f"history covers {_iso(_at(first))} to {_iso(_at(last))}",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    try:
        figure = draw(record)
    except ImportError:
        print(
            "icu-edge report needs matplotlib: install the report extra (pip install 'icu-edge[report]')",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    png = png_bytes(figure)
    content = html_page(record, png=png).encode() if out.suffix.lower() == ".html" else png
    try:
        out.write_bytes(content)
    except OSError as exc:
        print(f"icu-edge report: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    summary = record.summary(out=out)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"wrote {out}: {', '.join(record.panels)}; {len(record.samples)} samples, "
            f"{len(record.forecasts)} forecasts, {len(record.alarms)} alarms"
        )
    return EX_OK


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


if __name__ == "__main__":
    sys.exit(main())
