"""The daemon's own commands: `run`, `config check`, `schema`.

The `icu-edge` command (tools/cli.py) puts every tool around these; this module reaches no tool, so
the daemon core never imports the tools built on it. `python -m edge.cli` runs these three alone.

Exit codes: 0 success, 2 usage, 78 (EX_CONFIG) bad configuration, 69 (EX_UNAVAILABLE) a required
resource missing. systemd's `RestartPreventExitStatus=78` keeps a bad config from restart-looping.
"""

from __future__ import annotations

import argparse
import asyncio
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
        return asyncio.run(Daemon(checked.config, config_path=args.config).run())
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


def add_daemon_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `run`, `config check` and `schema` to a parser's subcommands."""
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


def run_parsed(parser: argparse.ArgumentParser, arguments: list[str]) -> int:
    """Parse and run one command; a reader that went away (`... | head`) is exit 1, no traceback."""
    try:
        args = parser.parse_args(arguments)
        status: int = args.func(args)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status


def main(argv: list[str] | None = None) -> int:
    """Run one of the daemon's commands and return the exit status."""
    from edge import appliance_version

    parser = argparse.ArgumentParser(prog="icu-edge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {appliance_version()}")
    add_daemon_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return run_parsed(parser, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
