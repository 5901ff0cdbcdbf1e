"""`python -m engines.train --seed 7 --out DIR [--data DIR] [--holdout NAME] [--calibrate NAME] [--quick]`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "vitals"
"""The repository's copy of the real records (tests/data/vitals/README.md says where they come from)."""


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the training pipeline."""
    parser = argparse.ArgumentParser(prog="python -m engines.train", description=__doc__)
    parser.add_argument(
        "--seed", type=int, default=7, help="seed for torch, numpy and the synthetic patients"
    )
    parser.add_argument("--out", type=Path, default=Path("engines/models"), help="models directory")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of WFDB numerics records")
    parser.add_argument(
        "--holdout",
        action="append",
        default=None,
        help="record name prefix held out for evaluation (repeatable; default s25047)",
    )
    parser.add_argument(
        "--calibrate",
        action="append",
        default=None,
        help="record name prefix kept for calibration, never trained on (repeatable; default none)",
    )
    parser.add_argument("--quick", action="store_true", help="few patients and epochs (tests, smoke runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from engines.train.pipeline import Config, run

    return run(
        Config(
            seed=args.seed,
            out=args.out,
            data=args.data,
            holdout=tuple(args.holdout or ["s25047"]),
            quick=args.quick,
            calibrate=tuple(args.calibrate or ()),
        )
    )


if __name__ == "__main__":
    sys.exit(main())
