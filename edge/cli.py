"""`icu-edge`: the one entry point (daemon, demo, config check, schema, simulators, tools).

Exit codes: 0 success, 2 usage, 78 (EX_CONFIG) bad configuration, 69 (EX_UNAVAILABLE) a required
resource missing. systemd's `RestartPreventExitStatus=78` keeps a bad config from restart-looping.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from pathlib import Path

from edge.config import DEFAULT_CONFIG_PATH, ConfigError, check_config

LOGGER = logging.getLogger(__name__)

EX_CONFIG = 78
EX_USAGE = 2


def _cmd_run(args: argparse.Namespace) -> int:
    """Check the config as `config check` does, then run; a config problem is exit 78, no traceback.

    Errors go to stderr as `PATH: line` (the same lines `config check` prints), or to the journal when
    stderr is the journal; warnings are logged and the daemon runs.
    """
    from edge.logs import configure_logging, stderr_is_journal

    configure_logging(level=args.log_level)
    checked = check_config(args.config)
    for line in checked.warnings:
        LOGGER.warning("%s: warning: %s", args.config, line)
    if checked.config is None:
        _report_config_errors(args.config, checked.errors, journal=stderr_is_journal())
        return EX_CONFIG
    from edge.daemon import Daemon

    try:
        return asyncio.run(Daemon(checked.config).run())
    except ConfigError as exc:
        # A file the check found usable went away before the daemon read it (a secret replaced
        # during a restart): still a config problem, still exit 78 and one line each.
        _report_config_errors(args.config, exc.lines, journal=stderr_is_journal())
        return EX_CONFIG


def _report_config_errors(path: Path, lines: tuple[str, ...] | list[str], *, journal: bool) -> None:
    for line in lines:
        if journal:
            LOGGER.error("%s: %s", path, line)
        else:
            print(f"{path}: {line}", file=sys.stderr)


def _cmd_config_check(args: argparse.Namespace) -> int:
    """Print one line per problem (errors, then warnings); exit 78 when any error would stop `run`."""
    checked = check_config(args.path)
    for line in checked.errors:
        print(f"{args.path}: {line}")
    for line in checked.warnings:
        print(f"{args.path}: warning: {line}")
    if checked.config is None:
        return EX_CONFIG
    config = checked.config
    devices = sum(len(bed.device) for bed in config.bed)
    warned = f", {len(checked.warnings)} warning(s)" if checked.warnings else ""
    print(f"{args.path}: ok ({len(config.bed)} bed(s), {devices} device(s){warned})")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from edge import appliance_version
    from edge.schema import asyncapi_document, json_schemas

    document = asyncapi_document(version=appliance_version()) if args.asyncapi else json_schemas()
    print(json.dumps(document, indent=2, sort_keys=False))
    return 0


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


def _watch(argv: list[str]) -> int:
    from tools.watch import main as watch_main

    return watch_main(argv)


def _demo(argv: list[str]) -> int:
    from tools.demo import main as demo_main

    return demo_main(argv)


def _record(argv: list[str]) -> int:
    from drivers.record import main as record_main

    return record_main(argv)


def _engines(argv: list[str]) -> int:
    from engines.cli import main as engines_main

    return engines_main(argv)


_PASS_THROUGH = {"sim": _sim, "watch": _watch, "demo": _demo, "engines": _engines, "record": _record}
"""Commands with their own argument parsers: everything after the command name goes to them."""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every subcommand."""
    from edge import appliance_version

    parser = argparse.ArgumentParser(prog="icu-edge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {appliance_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the daemon (what systemd starts)",
        description="Run the daemon (what systemd starts): read the bedside devices, keep each bed's "
        "twin, forecast, raise alarms and publish over MQTT. A bad config exits 78 with one line per "
        "problem (as `config check` prints them).",
    )
    run.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="TOML config file (default: %(default)s)"
    )
    run.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="lowest level logged (default: %(default)s)",
    )
    run.set_defaults(func=_cmd_run)

    config = commands.add_parser(
        "config", help="configuration tools", description="Configuration tools (`config check PATH`)."
    )
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser(
        "check",
        help="validate a config: one line per problem, exit 78",
        description="Validate a config as `run` would, without starting anything: one line per problem "
        "(errors, then warnings); exit 0 when `run` would start, 78 when it would not.",
    )
    check.add_argument("path", type=Path, help=f"the TOML config file (the daemon's: {DEFAULT_CONFIG_PATH})")
    check.set_defaults(func=_cmd_config_check)

    schema = commands.add_parser(
        "schema",
        help="print the JSON Schemas of config and payloads",
        description="Print the JSON Schemas of the config and of every MQTT payload as one JSON "
        "document on stdout (--asyncapi: the AsyncAPI 3 document of the MQTT contract).",
    )
    schema.add_argument("--asyncapi", action="store_true", help="print the AsyncAPI 3 document instead")
    schema.set_defaults(func=_cmd_schema)

    for name, text in [
        ("demo", "loopback broker + simulated ventilator and monitor + daemon + view (see: demo --help)"),
        ("watch", "terminal ward view subscribing like a central station (see: watch --help)"),
        ("sim", "a device simulator: sim medibus|intellivue|datex|hl7|replay (see: sim NAME --help)"),
        ("engines", "forecasting engines: build, list, verify, bench, eval (see: engines --help)"),
        ("record", "record a device's serial line both ways through a pty (see: record --help)"),
    ]:
        commands.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    arguments = sys.argv[1:] if argv is None else argv
    try:
        if arguments and arguments[0] in _PASS_THROUGH:
            return _PASS_THROUGH[arguments[0]](arguments[1:])
        args = build_parser().parse_args(arguments)
        status: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (`icu-edge schema | head`): no traceback, and none at interpreter exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
