"""`icu-edge diag engines`: the forecasting engines as this box would run them.

Shows the config's engine settings and, when the daemon answers on its diagnostics socket, what it
runs now (model, backend and why); then `icu-edge engines list` (models, the default, TensorRT
usability and why, the plan cache keys) and `icu-edge engines bench` with few repeats (the latency of
one tick per batch size, and the backend the `auto` choice lands on with its reason). It reuses those
commands; nothing is measured twice or differently.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.config import DEFAULT_CONFIG_PATH, EnginesConfig, check_config
from edge.diagnostics import read_snapshot, socket_path
from engines import cli as engines_cli

HELP = "forecasting engines: backend and why, models and default, plan cache keys, latency per batch"
DESCRIPTION = (
    "Show the engine settings of the daemon's config and what the running daemon runs (if it answers), "
    "then the installed models, the default, TensorRT usability and the cached plan keys "
    "(`engines list`), and the latency of one tick per batch size (`engines bench` with --repeats "
    "repeats). Exit status: that of the first engines command that fails, else 0."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `diag engines`."""
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="the daemon's config (default: %(default)s)"
    )
    parser.add_argument(
        "--beds", default="1,8,64", help="batch sizes (bed counts) to time (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed repeats per batch size (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    """Run `diag engines`; return the exit status."""
    engines = EnginesConfig()
    checked = check_config(args.config)
    if checked.config is None:
        print(f"config {args.config}: not usable ({'; '.join(checked.errors)}); showing the defaults")
    else:
        engines = checked.config.engines
        print(f"config {args.config}:")
        try:
            snapshot = read_snapshot(socket_path(checked.config.store.path), timeout_s=5.0)
            running = snapshot.get("engines")
            print(f"  the daemon runs: {running['status'] if running else 'forecasting disabled'}")
        except (OSError, ValueError) as exc:
            print(f"  the daemon does not answer ({exc})")
    print(
        f"  [engines] enabled = {engines.enabled}, backend = {engines.backend}, "
        f"model = {engines.model or '(the default model)'}, cache_dir = {engines.cache_dir}, "
        f"models_dir = {engines.models_dir or '(shipped models only)'}"
    )
    common = ["--cache-dir", str(engines.cache_dir)]
    print("\n$ icu-edge engines list")
    status = engines_cli.main(["list", *common])
    if status != 0:
        return status
    if engines.models_dir is not None:
        print(f"\n$ icu-edge engines list --models-dir {engines.models_dir}")
        status = engines_cli.main(["list", *common, "--models-dir", str(engines.models_dir)])
        if status != 0:
            return status
    model = ["--model", engines.model] if engines.model else []
    bench = ["bench", *common, *model, "--backend", engines.backend, "--beds", args.beds]
    bench += ["--repeats", str(args.repeats)]
    print(f"\n$ icu-edge engines {' '.join(bench)}")
    return engines_cli.main(bench)
