"""`icu-edge provision`: set up a box from the installer's answers, the same way every time.

Two phases. First everything is checked and nothing on the box changes: the answers, the serial
ports (present, probed where the answers say `probe = true`), the config written from them (into a
temporary file, through the daemon's own `check_config`), the broker (TLS handshake and a round trip
on the appliance's diag topic). Only then are files installed, each compared with what is there:
service account and config directory (sysusers, tmpfiles), the config (0640 root:icu-edge), the
engines for this box, the unit and, where a GPU is usable, its drop-in; then the unit is enabled.
A step prints one line with its outcome as it ends. A second run with the same answers changes
nothing and says so; `--dry-run` shows the changes (a diff of the config) and makes none.

Exit codes: 0 done, 2 usage, 78 bad answers (or a config check, certificate or broker refusal they
lead to), 69 a required resource missing (a port, the broker, the unit files, root privileges), 70 an
install step failed. An error stops before the config is written: never half a config.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tools.provision.answers import (
    Answers,
    AnswersError,
    ask_answers,
    parse_answers,
    read_answers,
    terminal_ask,
)
from tools.provision.configfile import config_document, render
from tools.provision.install import shipped_systemd_dir
from tools.provision.ports import probe_device, serial_ports
from tools.provision.steps import (
    EX_CONFIG,
    EX_OK,
    EX_SOFTWARE,
    EX_UNAVAILABLE,
    EX_USAGE,
    GPU_DROP_IN_PATH,
    Options,
    Progress,
    Stop,
    check_broker,
    checked_config,
    enable_unit,
    install_config,
    install_engines,
    install_service_account,
    install_units,
    refuse_running_service,
    resolve_devices,
)

__all__ = ["GPU_DROP_IN_PATH", "Options", "main", "provision"]

_EPILOG = """answers file (TOML): [appliance] id, site, ward; [broker] host, port, ca, cert, key, username,
password_file, topic_prefix (insecure = true: plaintext, test benches only); [paths] config, outbox,
engines_cache, executable; [engines] enabled, backend; [[bed]] id with [[bed.device]] id, port (a path or a
/dev/serial/by-id name), driver or probe = true, baud, parity, options.

exit codes: 0 done (or nothing to change), 2 usage, 78 bad answers or a refusal they lead to (config check,
certificate, broker ACL), 69 a required resource missing (port, broker, unit files, root), 70 an install
step failed"""


def provision(answers: Answers, *, options: Options) -> int:
    """Check, then install what the answers describe; return the exit code. Prints a line per step."""
    progress = Progress(dry_run=options.dry_run)
    try:
        shipped = shipped_systemd_dir()
        if shipped is None:
            raise Stop(
                ["the systemd files are not in this install (no systemd/, no share/icu-edge/systemd)"],
                exit_code=EX_UNAVAILABLE,
            )
        if os.geteuid() != 0 and options.root == Path("/") and not options.dry_run:
            raise Stop(
                ["provision installs system files: run it as root, or with --root DIR, or --dry-run"],
                exit_code=EX_UNAVAILABLE,
            )
        refuse_running_service(options.root)
        devices = resolve_devices(answers, options=options, progress=progress)
        text = render(config_document(answers, devices=devices))
        config = checked_config(text, progress=progress)
        check_broker(config, options=options, progress=progress)
        install_service_account(shipped, options=options, progress=progress)
        install_config(text, answers, options=options, progress=progress)
        install_engines(answers, options=options, progress=progress)
        unit_changed = install_units(shipped, answers, options=options, progress=progress)
        enable_unit(unit_changed=unit_changed, options=options, progress=progress)
    except Stop as exc:
        for line in exc.lines:
            print(f"provision: {line}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"provision: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EX_SOFTWARE
    warned = f" ({len(progress.warnings)} warning(s) above)" if progress.warnings else ""
    if options.dry_run:
        print(f"provision: dry run: {progress.changes} change(s) would be made; nothing was changed{warned}")
    elif progress.changes:
        print(f"provision: done: {progress.changes} change(s){warned}")
    else:
        print(f"provision: nothing changed: the box already matches these answers{warned}")
    return EX_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="icu-edge provision",
        description="Set up this box for the ward: probe the serial ports, check the broker and the "
        "certificates, write a validated config (0640 root:icu-edge), build the engines, install and "
        "enable the systemd unit (and its GPU drop-in where a GPU is usable). Asks on the terminal "
        "unless --answers names a file. Idempotent: a second run changes nothing and says so.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--answers", type=Path, metavar="FILE", help="answers file (TOML) (default: ask)")
    parser.add_argument(
        "--save-answers", type=Path, metavar="FILE", help="write the answers given on the terminal to FILE"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="install under this directory, as systemctl --root (default: /)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would change (a diff), change nothing"
    )
    parser.add_argument(
        "--probe-deadline-s",
        type=float,
        default=10.0,
        help="time to identify a port's device (default: %(default)s)",
    )
    parser.add_argument(
        "--broker-timeout-s",
        type=float,
        default=10.0,
        help="time for each broker check (default: %(default)s)",
    )
    return parser


def main(argv: list[str]) -> int:
    """Run `icu-edge provision ...`; return the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    options = Options(
        root=args.root.resolve(),
        dry_run=args.dry_run,
        probe_deadline_s=args.probe_deadline_s,
        broker_timeout_s=args.broker_timeout_s,
    )
    try:
        if args.answers is not None:
            answers = read_answers(args.answers)
        else:
            document = ask_answers(
                ask=terminal_ask,
                serial_ports=[path for path, _ in serial_ports()],
                probe=lambda port: probe_device(port, deadline_s=options.probe_deadline_s),
            )
            if args.save_answers is not None:
                args.save_answers.write_text(
                    render(document, header="# icu-edge provision answers"), encoding="utf-8"
                )
            answers = parse_answers(document)
    except AnswersError as exc:
        for line in exc.lines:
            print(f"provision: {line}", file=sys.stderr)
        return EX_CONFIG
    return provision(answers, options=options)
