"""Benchmark (not a test): how long a limit crossing takes to reach a subscriber as an alarm, under load.

The ward of `tools.bench.ward` (one simulator host serving every bed's MEDIBUS ventilator and
IntelliVue monitor on ptys, waves on, engines off, the daemon pinned to CPU 0), with one change: every
monitor's patient has a heart rate that jumps 70 -> 150/min for `--toggle-s`, then back for as long,
beds de-phased so the crossings spread evenly. Each bed sets `hr` high = 120, delay 0, hysteresis 2, so
every jump is an `hr_high` alarm (raised) and every return ends it.

Latency is frame-to-subscriber: the subscriber's wall clock at arrival of the `alarm_raised` event on
`R/bed/{bed}/events` minus the alarm's `onset`, the `received_at` of the first reading beyond the limit
(stamped by the daemon's reader thread right after the frame was decoded; one clock, no offset). The
first `--warm-up-s` are discarded; the window then runs until `--alarms` raised alarms arrived. Nothing
lost: every raised alarm of the window must end (its `alarm_ended` event), and each bed must have
raised as many alarms as its scenario made crossings in the window (+-1 at the window's edges).

    python -m tools.bench.alarm_latency --beds 64 --alarms 1000
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from drivers.scenario import SteadyPatient
from tools.bench.ward import (
    Ward,
    WardSetup,
    cpu_s,
    parse_time,
    percentile,
    rss_mib,
    running_ward,
    serve_ptys,
    vitals_latencies_ms,
)
from tools.local_broker import BrokerUnavailable
from tools.mqtt_collector import Received

EX_SOFTWARE = 70
EX_UNAVAILABLE = 69
HR_NORMAL = 70.0
HR_HIGH = 150.0
CONDITION = "hr_high"
READING_LAG_MAX_S = 1.0
"""A high reading sent just before the rate fell may be stamped (decoded) this much later."""
BED_LIMITS = """
[bed.alarm_limits.hr]
high = 120
delay_s = 0
hysteresis = 2
"""
"""Every bed: a heart rate above 120/min is an alarm at once; it ends at 118/min or below."""


class TogglingPatient(SteadyPatient):
    """Steady, except a heart rate (and pulse) of 70/min that jumps to 150/min every other `toggle_s`."""

    name = "toggling-hr"

    def __init__(self, *, toggle_s: float, phase_s: float) -> None:
        self.toggle_s = toggle_s
        self.phase_s = phase_s

    def high(self, t_s: float) -> bool:
        """Whether the heart rate is high at scenario time t_s."""
        return (t_s + self.phase_s) % (2 * self.toggle_s) >= self.toggle_s

    def rise_index(self, t_s: float) -> int:
        """The number of the last jump to the high rate at or before t_s (jump k is at `rise_s(k)`)."""
        return math.floor((t_s - self.rise_s(0)) / (2 * self.toggle_s))

    def rise_s(self, index: int) -> float:
        """Scenario time of jump number `index` to the high rate."""
        return self.toggle_s - self.phase_s + index * 2 * self.toggle_s

    def rises_between(self, from_s: float, to_s: float) -> int:
        """How many jumps to the high rate fall in [from_s, to_s) of scenario time."""
        first_s, cycle_s = self.rise_s(0), 2 * self.toggle_s
        return math.ceil((to_s - first_s) / cycle_s) - math.ceil((from_s - first_s) / cycle_s)

    def vitals_at(self, t_s: float) -> dict[str, float | None]:
        """Return the steady values with the toggling heart rate."""
        hr = HR_HIGH if self.high(t_s) else HR_NORMAL
        values = super().vitals_at(t_s)
        values.update({"hr": hr, "pr": hr})
        return values


def bed_patient(bed: int, *, beds: int, toggle_s: float) -> TogglingPatient:
    """Bed `bed`'s patient, de-phased by its share of one cycle."""
    return TogglingPatient(toggle_s=toggle_s, phase_s=bed * 2 * toggle_s / beds)


class BenchFailed(RuntimeError):
    """The bench could not measure (the daemon or the simulator host died, alarms stopped coming)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Raised:
    """One `hr_high` alarm raised in the window."""

    bed: str
    alarm_id: str
    latency_ms: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    latencies_ms: list[float]
    vitals_latencies_ms: list[float]
    window_s: float
    cpu_percent: float
    rss_mib: float
    not_ended: list[str]
    count_mismatches: dict[str, tuple[int, int]]
    """bed: (alarms raised, scenario crossings) where they differ by more than one"""
    count_diffs: Counter[int]
    """how many beds raised (crossings + d) alarms, per d"""
    crossing_problems: list[str]
    """crossings of the window without exactly one alarm, alarms whose onset is in no high phase"""
    duplicates: int
    other_alarms: Counter[str]
    wave_gaps: int


def _check_alive(ward: Ward) -> None:
    for name, process in (("daemon", ward.daemon), ("simulator host", ward.host)):
        code = process.poll()
        if code is not None:
            tail = (ward.workdir / "daemon.log").read_text(errors="replace")[-2000:]
            raise BenchFailed(f"the {name} exited with status {code}; the daemon's log ends:\n{tail}")


def _sleep_watching(ward: Ward, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _check_alive(ward)
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def _alarm_events(messages: list[Received]) -> list[tuple[Received, dict[str, object]]]:
    found = []
    for message in messages:
        body = json.loads(message.payload)
        if isinstance(body.get("alarm"), dict):
            found.append((message, body))
    return found


def measure(*, beds: int, alarms: int, warm_up_s: float, toggle_s: float) -> Result:
    """Run the toggling ward until `alarms` raised alarms arrived after the warm-up; see the module doc."""
    epoch_mono_s = time.monotonic()
    wall_minus_mono_s = time.time() - epoch_mono_s
    host_argv = [
        sys.executable,
        "-m",
        "tools.bench.alarm_latency",
        "--beds",
        str(beds),
        "--toggle-s",
        str(toggle_s),
        "--epoch-mono-s",
        repr(epoch_mono_s),
        "--serve-ptys",
    ]
    rate_per_s = beds / (2 * toggle_s)
    collect_timeout_s = 30.0 + 3 * alarms / rate_per_s
    with running_ward(
        beds=beds,
        setup=WardSetup(engines=False, synchronous="normal"),
        host_argv=host_argv,
        topic_filters={
            "vitals": "icu/v1/+/+/bed/+/vitals",
            "waves": "icu/v1/+/+/bed/+/wave/+",
            "events": "icu/v1/+/+/bed/+/events",
        },
        bed_extra=BED_LIMITS,
    ) as ward:
        events = ward.subscribers["events"]
        _sleep_watching(ward, warm_up_s)
        from_wall_s = time.time()
        from_mono_s = time.monotonic()
        cpu_before = cpu_s(ward.daemon.pid)
        deadline = time.monotonic() + collect_timeout_s
        raised_ids: set[str] = set()
        seen = 0
        while len(raised_ids) < alarms:
            _check_alive(ward)
            if time.monotonic() > deadline:
                raise BenchFailed(
                    f"only {len(raised_ids)} of {alarms} alarms arrived within {collect_timeout_s:.0f} s"
                )
            time.sleep(0.05)
            messages = events.messages
            for message, body in _alarm_events(messages[seen:]):
                alarm = body["alarm"]
                assert isinstance(alarm, dict)
                if (
                    body["kind"] == "alarm_raised"
                    and alarm["condition"] == CONDITION
                    and message.received_wall_s >= from_wall_s
                ):
                    raised_ids.add(str(alarm["id"]))
            seen = len(messages)
        to_wall_s = time.time()
        to_mono_s = time.monotonic()
        cpu_used_s = cpu_s(ward.daemon.pid) - cpu_before
        rss = rss_mib(ward.daemon.pid)
        # let the last alarms of the window end (one toggle) before judging what was lost
        _sleep_watching(ward, toggle_s + 5.0)
        event_messages = events.messages
        vitals_messages = ward.subscribers["vitals"].messages
        wave_messages = ward.subscribers["waves"].messages
    return _judge(
        event_messages=event_messages,
        vitals_messages=vitals_messages,
        wave_messages=wave_messages,
        window=(from_wall_s, to_wall_s),
        scenario_window_s=(from_mono_s - epoch_mono_s, to_mono_s - epoch_mono_s),
        scenario_zero_wall_s=epoch_mono_s + wall_minus_mono_s,
        beds=beds,
        toggle_s=toggle_s,
        cpu_used_s=cpu_used_s,
        rss=rss,
    )


def _judge(
    *,
    event_messages: list[Received],
    vitals_messages: list[Received],
    wave_messages: list[Received],
    window: tuple[float, float],
    scenario_window_s: tuple[float, float],
    scenario_zero_wall_s: float,
    beds: int,
    toggle_s: float,
    cpu_used_s: float,
    rss: float,
) -> Result:
    from_wall_s, to_wall_s = window
    raised: dict[str, Raised] = {}
    ended: set[str] = set()
    duplicates = 0
    other: Counter[str] = Counter()
    onsets: dict[str, tuple[str, float]] = {}
    """every hr_high alarm of the run (window or not): id -> (bed, onset in scenario time)"""
    for message, body in _alarm_events(event_messages):
        alarm = body["alarm"]
        assert isinstance(alarm, dict)
        alarm_id, kind = str(alarm["id"]), body["kind"]
        if alarm["condition"] != CONDITION:
            if kind == "alarm_raised":
                other[str(alarm["condition"])] += 1
            continue
        if kind == "alarm_ended":
            ended.add(alarm_id)
        if kind == "alarm_raised" and not body.get("history"):
            onset_s = parse_time(str(alarm["onset"])) - scenario_zero_wall_s
            onsets[alarm_id] = (str(body["bed"]), onset_s)
        in_window = from_wall_s <= message.received_wall_s <= to_wall_s
        if kind != "alarm_raised" or not in_window or body.get("history"):
            continue
        if alarm_id in raised:
            duplicates += 1
            continue
        raised[alarm_id] = Raised(
            bed=str(body["bed"]),
            alarm_id=alarm_id,
            latency_ms=(message.received_wall_s - parse_time(str(alarm["onset"]))) * 1000.0,
        )
    per_bed = Counter(r.bed for r in raised.values())
    mismatches = {}
    diffs: Counter[int] = Counter()
    for i in range(beds):
        bed = f"bed-{i:02d}"
        crossings = bed_patient(i, beds=beds, toggle_s=toggle_s).rises_between(*scenario_window_s)
        diffs[per_bed[bed] - crossings] += 1
        if abs(per_bed[bed] - crossings) > 1:
            mismatches[bed] = (per_bed[bed], crossings)
    window_s = to_wall_s - from_wall_s
    return Result(
        crossing_problems=_match_crossings(onsets, beds=beds, toggle_s=toggle_s, window_s=scenario_window_s),
        latencies_ms=sorted(r.latency_ms for r in raised.values()),
        vitals_latencies_ms=vitals_latencies_ms(
            vitals_messages, from_wall_s=from_wall_s, to_wall_s=to_wall_s
        ),
        window_s=window_s,
        cpu_percent=100.0 * cpu_used_s / window_s,
        rss_mib=rss,
        not_ended=sorted(alarm_id for alarm_id in raised if alarm_id not in ended),
        count_mismatches=mismatches,
        count_diffs=diffs,
        duplicates=duplicates,
        other_alarms=other,
        wave_gaps=sum(
            json.loads(m.payload)["gap_before"]
            for m in wave_messages
            if from_wall_s <= m.received_wall_s <= to_wall_s
        ),
    )


def _match_crossings(
    onsets: dict[str, tuple[str, float]], *, beds: int, toggle_s: float, window_s: tuple[float, float]
) -> list[str]:
    """Exactly one alarm per crossing of the window, each onset within the high phase it belongs to.

    Every alarm of the run counts (the run goes on past the window until the last crossings' alarms
    could have arrived), so this holds without the window edges' +-1.
    """
    problems = []
    by_rise: Counter[tuple[int, int]] = Counter()
    for alarm_id, (bed, onset_s) in onsets.items():
        i = int(bed.removeprefix("bed-"))
        patient = bed_patient(i, beds=beds, toggle_s=toggle_s)
        index = patient.rise_index(onset_s)
        if onset_s - patient.rise_s(index) >= toggle_s + READING_LAG_MAX_S:
            problems.append(f"{bed}: alarm {alarm_id} has its onset at {onset_s:.2f} s, in no high phase")
        by_rise[i, index] += 1
    for i in range(beds):
        patient = bed_patient(i, beds=beds, toggle_s=toggle_s)
        first, last = patient.rise_index(window_s[0]) + 1, patient.rise_index(window_s[1])
        for index in range(first, last + 1):
            if by_rise[i, index] != 1:
                problems.append(
                    f"bed-{i:02d}: the crossing at {patient.rise_s(index):.2f} s raised "
                    f"{by_rise[i, index]} alarms"
                )
    return problems


def main(argv: list[str] | None = None) -> int:
    """Measure, print the figures and a one-line JSON summary; exit 1 when an alarm was lost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, default=64)
    parser.add_argument("--alarms", type=int, default=1000, help="raised alarms to measure")
    parser.add_argument("--warm-up-s", type=float, default=15.0)
    parser.add_argument("--toggle-s", type=float, default=2.0, help="seconds high, then as many normal")
    parser.add_argument("--serve-ptys", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--epoch-mono-s", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.beds < 1 or args.alarms < 1 or args.toggle_s < 1.5:
        parser.error("--beds and --alarms must be positive, --toggle-s at least 1.5 (numerics come at 1 Hz)")
    if args.serve_ptys is not None:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        serve_ptys(
            args.serve_ptys,
            beds=args.beds,
            stop=stop,
            monitor_patient=lambda i: bed_patient(i, beds=args.beds, toggle_s=args.toggle_s),
            start_s=args.epoch_mono_s,
        )
        return 0
    load_1min = os.getloadavg()[0]
    print(f"alarm latency: Python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} CPUs")
    print(
        f"{args.beds} beds, waves on, engines off, daemon on CPU 0; HR 70 <-> 150 every {args.toggle_s:g} s, "
        f"hr high 120, delay 0; {args.warm_up_s:g} s warm-up; load average (1 min) {load_1min:.2f}",
        flush=True,
    )
    try:
        result = measure(beds=args.beds, alarms=args.alarms, warm_up_s=args.warm_up_s, toggle_s=args.toggle_s)
    except BrokerUnavailable as exc:
        print(f"alarm latency: needs Mosquitto: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except BenchFailed as exc:
        print(f"alarm latency: {exc}", file=sys.stderr)
        return EX_SOFTWARE
    values, vitals = result.latencies_ms, result.vitals_latencies_ms
    if not values or not vitals:
        print("alarm latency: no alarm or no vitals in the window", file=sys.stderr)
        return EX_SOFTWARE
    summary = {
        "bench": "alarm_latency",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "beds": args.beds,
        "alarms": len(values),
        "window_s": round(result.window_s, 1),
        "p50_ms": round(statistics.median(values), 1),
        "p90_ms": round(percentile(values, 0.90), 1),
        "p99_ms": round(percentile(values, 0.99), 1),
        "max_ms": round(values[-1], 1),
        "vitals_p99_ms": round(percentile(vitals, 0.99), 1),
        "vitals_count": len(vitals),
        "daemon_cpu_percent": round(result.cpu_percent, 1),
        "daemon_rss_mib": round(result.rss_mib),
        "not_ended": len(result.not_ended),
        "count_mismatches": len(result.count_mismatches),
        "crossing_problems": len(result.crossing_problems),
        "beds_by_count_diff": {str(d): n for d, n in sorted(result.count_diffs.items())},
        "duplicates": result.duplicates,
        "wave_gaps": result.wave_gaps,
        "other_alarms": dict(result.other_alarms),
        "load_1min_before": round(load_1min, 2),
    }
    print(
        f"\n{len(values)} alarms in {result.window_s:.1f} s: p50 {summary['p50_ms']} ms, "
        f"p90 {summary['p90_ms']} ms, p99 {summary['p99_ms']} ms, max {summary['max_ms']} ms"
    )
    print(f"vitals under the same load: p99 {summary['vitals_p99_ms']} ms over {len(vitals)} messages")
    print(f"daemon: {result.cpu_percent:.0f} % of one core, RSS {result.rss_mib:.0f} MiB")
    print(f"wave gaps: {result.wave_gaps}; other alarms raised: {dict(result.other_alarms) or 'none'}")
    lost = bool(result.not_ended or result.count_mismatches or result.crossing_problems)
    for alarm_id in result.not_ended:
        print(f"LOST: alarm {alarm_id} raised but its alarm_ended never arrived")
    for problem in result.crossing_problems:
        print(f"CROSSING: {problem}")
    for bed, (count, crossings) in sorted(result.count_mismatches.items()):
        print(f"MISMATCH: {bed} raised {count} alarms for {crossings} crossings of its scenario")
    print(
        "beds by (raised - scenario crossings): "
        + ", ".join(f"{d:+d}: {n}" for d, n in sorted(result.count_diffs.items()))
    )
    print(f"no alarm lost: {'no' if lost else 'yes'}; duplicates (QoS 1 redeliveries): {result.duplicates}")
    print(json.dumps(summary), flush=True)
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
