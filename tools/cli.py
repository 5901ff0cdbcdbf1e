"""`icu-edge`: the one command for every user of the appliance.

The daemon's own commands (`run`, `config check`, `schema`) come from edge/cli.py; the tools around
it (demo, ward view, simulators, engines, recording) are dispatched from here, so the dependency runs
one way: tools import the daemon core, never the reverse.

Exit codes: 0 success, 2 usage, 78 (EX_CONFIG) bad configuration, 69 (EX_UNAVAILABLE) a required
resource missing. systemd's `RestartPreventExitStatus=78` keeps a bad config from restart-looping.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from edge.cli import EX_USAGE, add_daemon_commands, run_parsed

_SIMULATORS = {
    "medibus": ("drivers.medibus.simulator", "--pty LINK"),
    "intellivue": ("drivers.intellivue.simulator", "--pty LINK | --udp HOST:PORT"),
    "datex": ("drivers.datex.simulator", "--pty LINK"),
    "hl7": ("drivers.hl7.simulator", "--to HOST:PORT"),
    "replay": ("drivers.replay", "FILE --pty LINK [--speed X]"),
}
"""Device simulators by driver name: module (with a `main(argv) -> int`) and its usage line."""


_SIM_DESCRIPTION = (
    "Run a device simulator: the device side of a driver's protocol on a pty or socket, "
    "for tests, demos and checking a cable."
)


def _sim(argv: list[str]) -> int:
    """Run `sim NAME ...`; `sim --help` prints the simulators on stdout (exit 0), anything else is usage."""
    if argv and argv[0] in _SIMULATORS:
        module = importlib.import_module(_SIMULATORS[argv[0]][0])
        status: int = module.main(argv[1:])
        return status
    usage = "\n".join(f"  icu-edge sim {name} {line} [options]" for name, (_, line) in _SIMULATORS.items())
    text = f"usage:\n{usage}\n\n{_SIM_DESCRIPTION}\n\n(each takes --help)"
    if argv[:1] in (["-h"], ["--help"]):
        print(text)
        return 0
    print(text, file=sys.stderr)
    return EX_USAGE


def _module_main(module: str) -> Callable[[list[str]], int]:
    """A command whose module has its own parser: `main(argv) -> int`, imported only when run."""

    def run(argv: list[str]) -> int:
        status: int = importlib.import_module(module).main(argv)
        return status

    return run


_PASS_THROUGH: dict[str, Callable[[list[str]], int]] = {
    "sim": _sim,
    "watch": _module_main("tools.watch"),
    "demo": _module_main("tools.demo"),
    "engines": _module_main("engines.cli"),
    "record": _module_main("drivers.record"),
    "diag": _module_main("tools.diag"),
    "provision": _module_main("tools.provision"),
    "report": _module_main("tools.report"),
}
"""Commands with their own argument parsers: everything after the command name goes to them."""

_PASS_THROUGH_HELP = {
    "demo": "loopback broker + simulated ventilator and monitor + daemon + view (see: demo --help)",
    "watch": "terminal ward view subscribing like a central station (see: watch --help)",
    "sim": "a device simulator: sim medibus|intellivue|datex|hl7|replay (see: sim NAME --help)",
    "engines": "forecasting engines: build, list, verify, bench, eval (see: engines --help)",
    "record": "record a device's serial line both ways through a pty (see: record --help)",
    "diag": "field diagnostics: ports, probe, sniff, mqtt, engines, bundle (see: diag --help)",
    "provision": "installer: ports, broker check, config, engines, systemd unit (see: provision --help)",
    "report": "a bed's vitals, forecasts and alarms over time from the local history (see: report --help)",
}
"""The one-line help `icu-edge --help` shows for each pass-through command."""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every subcommand."""
    from edge import appliance_version

    parser = argparse.ArgumentParser(prog="icu-edge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {appliance_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_daemon_commands(commands)
    for name in _PASS_THROUGH:
        commands.add_parser(name, help=_PASS_THROUGH_HELP[name], add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    arguments = sys.argv[1:] if argv is None else argv
    if arguments and arguments[0] in _PASS_THROUGH:
        try:
            return _PASS_THROUGH[arguments[0]](arguments[1:])
        except BrokenPipeError:
            # The reader went away (`icu-edge sim ... | head`): no traceback, and none at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
    return run_parsed(build_parser(), arguments)


if __name__ == "__main__":
    sys.exit(main())
