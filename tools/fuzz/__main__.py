"""`python -m tools.fuzz TARGET|all [--runs N] [--seed S] [--crash-dir DIR] [--engine mutate|atheris]`.

Prints per target: inputs, duration, inputs/s, corpus size and distinct crashes; exits 1 when a target
crashed, 2 on a usage error, 0 otherwise. One `RESULT` line per target (date, target, inputs, duration,
crashes) is what the fuzz record quotes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from tools.fuzz.engine import CampaignResult, fuzz
from tools.fuzz.targets import TARGETS, Target

DEFAULT_CRASH_DIR = Path("fuzz-crashes")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=[*TARGETS, "all"], help="what to fuzz")
    parser.add_argument("--runs", type=_positive, default=100_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the run is deterministic)")
    parser.add_argument("--crash-dir", type=Path, default=DEFAULT_CRASH_DIR, help="where crashes are saved")
    parser.add_argument("--engine", choices=("mutate", "atheris"), default="mutate")
    return parser


def _print_progress(result: CampaignResult) -> None:
    print(
        f"  {result.target}: {result.runs} inputs, {result.inputs_per_s:.0f}/s,"
        f" corpus {result.corpus_size}, crashes {len(result.crashes)}",
        flush=True,
    )


def _run_atheris(target: Target, *, runs: int, crash_dir: Path) -> int:
    """Hand the target to atheris (never returns: libFuzzer exits the process)."""
    try:
        import atheris
    except ImportError:
        print("atheris is not installed (pip install 'icu-edge[fuzz]')", file=sys.stderr)
        return 2
    crash_dir.mkdir(parents=True, exist_ok=True)
    corpus = crash_dir / f"corpus-{target.name}"
    corpus.mkdir(exist_ok=True)
    for index, seed_input in enumerate(target.seeds()):
        (corpus / f"seed-{index}").write_bytes(seed_input)
    atheris.instrument_all()
    atheris.Setup(
        [sys.argv[0], f"-runs={runs}", f"-artifact_prefix={crash_dir}/{target.name}-", str(corpus)],
        target.run,
    )
    atheris.Fuzz()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the campaign(s) and print the figures."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # targets log what they reject; the fuzzer counts
    names = list(TARGETS) if args.target == "all" else [args.target]
    if args.engine == "atheris":
        if len(names) != 1:
            print("--engine atheris takes one target", file=sys.stderr)
            return 2
        return _run_atheris(TARGETS[names[0]], runs=args.runs, crash_dir=args.crash_dir)
    crashed = False
    for name in names:
        started = datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{name}: {TARGETS[name].description}; {args.runs} inputs, seed {args.seed}", flush=True)
        result = fuzz(
            TARGETS[name], runs=args.runs, seed=args.seed, crash_dir=args.crash_dir, progress=_print_progress
        )
        crashed = crashed or bool(result.crashes)
        print(
            f"RESULT date={started} target={name} inputs={result.runs} duration_s={result.duration_s:.1f}"
            f" inputs_per_s={result.inputs_per_s:.0f} corpus={result.corpus_size}"
            f" crashes={len(result.crashes)} seed={args.seed}",
            flush=True,
        )
        for signature, path in result.crashes.items():
            print(f"  crash {signature}: {path}", flush=True)
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
