"""`icu-edge diag probe PORT`: which protocol and device answer on a serial port (`drivers.probe`).

A port another process has locked (the daemon reading its bed, `icu-edge record`) is refused before
anything is sent: probing it would put our handshake bytes between the daemon and its device.
`--force` probes anyway. Other processes that merely have the port open (a terminal program, the
device side of a pty) are named in a note, and the probe goes ahead.

Exit status: 0 a device answered, 1 nothing answered (the output says what was seen), 69 the port
is held by another process or cannot be opened.

Threads: none.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from drivers.probe import BUSY_PREFIX, CANNOT_OPEN_PREFIX, ProbeResult, probe_port
from tools.diag.ports import describe_holder, holders_of, scan_open_files

HELP = "try each serial driver's handshake on PORT and name the protocol and device (10 s at most)"
DESCRIPTION = (
    "Open PORT at each serial driver's line settings in turn (MEDIBUS 19200 8E1, IntelliVue 115200 8N1, "
    "S/5 DRI 19200 8E1, MEDIBUS 9600 8E1), send only that protocol's handshake and name the protocol and "
    "the device that answers; when nothing does, say what came back (byte count, hex head, framing "
    "guess). Sends a goodbye where the protocol has one and closes the port. A port another process "
    "holds (the daemon) is refused unless --force."
)

EX_NOTHING = 1
EX_UNAVAILABLE = 69


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `diag probe`."""
    parser.add_argument("port", metavar="PORT", help="the serial port (/dev/serial/by-id/..., /dev/ttyUSB0)")
    parser.add_argument(
        "--deadline",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up after this long (default: 10)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="probe even a port another process holds (its data and ours mix on the line; default: refuse)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def format_result(result: ProbeResult) -> str:
    """The result as a few text lines."""
    if result.protocol is None:
        return f"{result.port}: nothing identified in {result.elapsed_s:.1f} s\n  saw: {result.saw}"
    lines = [f"{result.port}: {result.protocol}" + (f" ({result.device})" if result.device else "")]
    lines.append(f"  line:    {result.baud} 8{result.parity}1")
    if result.options:
        lines.append("  options: " + ", ".join(f"{k} = {v!r}" for k, v in result.options.items()))
    lines.append(f"  saw:     {result.saw}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Probe the port; exit 0 identified, 1 nothing identified, 69 busy or not openable."""
    if args.deadline <= 0:
        print("diag probe: --deadline must be a positive number of seconds")
        return 2
    _, holders = holders_of(args.port, open_files=scan_open_files())
    lockers = [h for h in holders if h.locked]
    if lockers and not args.force:
        who = ", ".join(describe_holder(h) for h in lockers)
        print(f"{args.port}: {BUSY_PREFIX}: held by {who}; nothing sent (probing would disturb it)")
        print("(--force probes anyway: its data and ours then mix on the line)")
        return EX_UNAVAILABLE
    others = [h for h in holders if not h.locked]
    if others and not args.json:
        print(f"note: {args.port} is also open in " + ", ".join(describe_holder(h) for h in others))
    result = probe_port(args.port, deadline_s=args.deadline, force=args.force)
    print(json.dumps(asdict(result)) if args.json else format_result(result))
    if result.protocol is not None:
        return 0
    if result.saw.startswith((BUSY_PREFIX, CANNOT_OPEN_PREFIX)):
        return EX_UNAVAILABLE
    return EX_NOTHING
