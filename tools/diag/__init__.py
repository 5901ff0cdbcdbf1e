"""`icu-edge diag`: the field engineer's checks, one subcommand each.

Each subcommand lives in its own module of this package with `HELP` (one line for `diag --help`),
`DESCRIPTION`, `add_arguments(parser)` and `run(args) -> int`; `_COMMANDS` lists them in the order
`diag --help` shows them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

_COMMANDS: tuple[str, ...] = ("ports", "probe", "sniff", "mqtt", "engines", "bundle")
"""Subcommand names; `tools.diag.<name>` is the module."""


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{name}")


def build_parser() -> argparse.ArgumentParser:
    """The parser of `icu-edge diag` and each of its subcommands."""
    parser = argparse.ArgumentParser(
        prog="icu-edge diag",
        description="Field engineer's diagnostics: serial ports, protocol probes, live and recorded "
        "frames, the broker, the engines, and a support bundle. Nothing here changes the appliance.",
    )
    commands = parser.add_subparsers(dest="diag_command", required=True, metavar="CHECK")
    for name in _COMMANDS:
        module = _module(name)
        sub = commands.add_parser(name, help=module.HELP, description=module.DESCRIPTION)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `icu-edge diag CHECK ...` and return the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    status: int = args.run(args)
    return status
