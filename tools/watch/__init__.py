"""The terminal ward view: subscribe to the MQTT contract v1 like a central station would, and show it.

`icu-edge watch --broker mqtt://host:port` subscribes to `{prefix}/#` and validates every payload
against the contract's pydantic models (violations and seq gaps are counted and shown, never fatal).
On a terminal it shows every bed as a compact tile (vitals with human units and trends, forecasts
with intervals, event probabilities, alarms in priority colours, devices, seq gaps), as many side by
side as the terminal holds, and one bed's full detail on Enter. `--plain` (the default off a
terminal) prints one timestamped line per change; `--once` one whole snapshot.

Modules: `state` (the pure `WardState`), `client` (paho; callbacks only enqueue), `tiles` and
`detail` (rich renderers), `screen` (the interactive loop), `keys` (the terminal's keys), `plain`
(the change log), `snapshot` (the whole state as text), `fmt` (shared text helpers).
Threads: paho's network thread and the key reader only enqueue; the main thread applies and renders.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import time
from typing import Final

import paho.mqtt.client as mqtt

from tools.watch.client import Connected, Event, drain, make_client, parse_broker_url
from tools.watch.detail import render
from tools.watch.plain import ChangeLog
from tools.watch.screen import Navigation, run_live
from tools.watch.snapshot import render_plain
from tools.watch.state import DEFAULT_PREFIX, WardState

__all__ = ["WardState", "build_parser", "main", "parse_broker_url", "render", "render_plain"]

EX_OK: Final = 0
EX_USAGE: Final = 2
EX_UNAVAILABLE: Final = 69

DEFAULT_BROKER: Final = "mqtt://127.0.0.1:1883"
DEFAULT_CONNECT_TIMEOUT_S: Final = 5.0
PLAIN_WAIT_S: Final = 1.0
"""The change log looks at least this often whether the deadline has passed."""


def _subscription(args: argparse.Namespace) -> str:
    prefix = str(args.prefix).strip("/")
    if args.site is None and args.ward is None:
        return f"{prefix}/#"
    return f"{prefix}/{args.site or '+'}/{args.ward or '+'}/#"


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from error
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `icu-edge watch`."""
    parser = argparse.ArgumentParser(
        prog="icu-edge watch",
        description="Terminal ward view: subscribe to the MQTT contract v1 like a central station; "
        "every bed as a compact tile (vitals, trends, forecasts, alarms, devices), side by side as the "
        "terminal allows.",
        epilog="keys: 1-9, arrows or Tab pick a bed; Enter opens its detail (arrows, PgUp/PgDn scroll, "
        "Tab the next bed); Esc or q goes back; q in the ward quits.",
    )
    parser.add_argument("--broker", default=DEFAULT_BROKER, help=f"broker URL (default {DEFAULT_BROKER})")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"topic prefix (default {DEFAULT_PREFIX})")
    parser.add_argument("--site", default=None, help="show only this site")
    parser.add_argument("--ward", default=None, help="show only this ward")
    parser.add_argument(
        "--seconds", type=_positive_seconds, default=None, metavar="N", help="run for N seconds, then exit"
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one plain snapshot after collecting for --seconds (default 2 s), then exit",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="print one timestamped line per change instead of a live screen (default off a TTY)",
    )
    parser.add_argument(
        "--bed",
        default=None,
        metavar="BED",
        help="start in this bed's detail view (with --plain: print only its changes); default: all beds",
    )
    parser.add_argument(
        "--connect-timeout",
        dest="connect_timeout_s",
        type=_positive_seconds,
        default=DEFAULT_CONNECT_TIMEOUT_S,
        metavar="S",
        help="give up when the broker is not reached within S seconds (default %(default)g)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ward view; return 0, 2 (usage) or 69 (broker unreachable)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        broker = parse_broker_url(args.broker)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return exit_.code if isinstance(exit_.code, int) else EX_USAGE
    except ValueError as error:
        print(f"icu-edge watch: {error}", file=sys.stderr)
        return EX_USAGE

    events: queue.Queue[Event] = queue.Queue()
    client = make_client(events)
    client.connect_timeout = args.connect_timeout_s
    if broker.tls:
        client.tls_set()
    state = WardState(prefix=args.prefix, site=args.site, ward=args.ward)
    try:
        client.connect_async(broker.host, broker.port, keepalive=30)
        client.loop_start()
    except (OSError, ValueError) as error:
        print(f"icu-edge watch: cannot reach broker {args.broker}: {error}", file=sys.stderr)
        return EX_UNAVAILABLE
    try:
        if not _await_connection(client, events, state, args, timeout_s=args.connect_timeout_s):
            return EX_UNAVAILABLE
        plain = bool(args.plain or args.once or not sys.stdout.isatty())
        seconds: float | None = args.seconds
        if args.once and seconds is None:
            seconds = 2.0
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            if args.once:
                _run_once(client, events, state, deadline=deadline, subscription=_subscription(args))
            elif plain:
                _run_plain(
                    client, events, state, deadline=deadline, subscription=_subscription(args), bed=args.bed
                )
            else:
                run_live(
                    client,
                    events,
                    state,
                    deadline=deadline,
                    subscription=_subscription(args),
                    navigation=Navigation(wanted_bed=args.bed),
                )
        except KeyboardInterrupt:
            pass
        except BrokenPipeError:  # `icu-edge watch --plain | head`: the reader left, so do we
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EX_OK
    finally:
        client.disconnect()
        client.loop_stop()


def _await_connection(
    client: mqtt.Client,
    events: queue.Queue[Event],
    state: WardState,
    args: argparse.Namespace,
    *,
    timeout_s: float,
) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            print(
                f"icu-edge watch: cannot reach broker {args.broker} within {timeout_s:g} s", file=sys.stderr
            )
            return False
        try:
            event = events.get(timeout=left_s)
        except queue.Empty:
            continue
        if isinstance(event, Connected):
            if event.failure:
                print(f"icu-edge watch: broker {args.broker} refused: {event.reason}", file=sys.stderr)
                return False
            state.set_connection("connected")
            client.subscribe(_subscription(args), qos=1)
            return True


def _run_plain(
    client: mqtt.Client,
    events: queue.Queue[Event],
    state: WardState,
    *,
    deadline: float | None,
    subscription: str,
    bed: str | None,
) -> None:
    """Print one line per change as it comes; nothing while nothing changes."""
    log = ChangeLog(bed=bed)
    while deadline is None or time.monotonic() < deadline:
        wait_s = PLAIN_WAIT_S if deadline is None else min(PLAIN_WAIT_S, deadline - time.monotonic())
        if drain(client, events, state, wait_s=wait_s, subscription=subscription).changed:
            lines = log.changes(state)
            if lines:
                sys.stdout.write("\n".join(lines) + "\n")
                sys.stdout.flush()


def _run_once(
    client: mqtt.Client,
    events: queue.Queue[Event],
    state: WardState,
    *,
    deadline: float | None,
    subscription: str,
) -> None:
    """Collect until the deadline, then print the whole state once."""
    while deadline is None or time.monotonic() < deadline:
        wait_s = PLAIN_WAIT_S if deadline is None else min(PLAIN_WAIT_S, deadline - time.monotonic())
        drain(client, events, state, wait_s=wait_s, subscription=subscription)
    drain(client, events, state, wait_s=0.0, subscription=subscription)
    sys.stdout.write(render_plain(state))
    sys.stdout.flush()
