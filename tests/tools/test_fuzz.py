"""The fuzz harness works: every target survives a short run, crashes are found and saved, runs replay.

The 10^6-input campaigns run outside CI (`python -m tools.fuzz all --runs 1000000`); CI runs a few
thousand inputs per target so a broken harness or a target that no longer runs is caught at once.
Every input in `tools/fuzz/regressions/<target>/` (crashes found by a campaign) is replayed here.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest

from tools.fuzz.__main__ import main
from tools.fuzz.engine import Mutator, crash_signature, fuzz
from tools.fuzz.targets import TARGETS, FuzzInvariantError, Target, timed_chunks_bytes

REGRESSIONS = Path(__file__).resolve().parents[2] / "tools" / "fuzz" / "regressions"
QUICK_RUNS = 2000


@pytest.fixture(autouse=True)
def _quiet_targets(caplog: pytest.LogCaptureFixture) -> None:
    """Targets log what they reject (a warning per overflow); the harness only counts."""
    caplog.set_level(logging.CRITICAL)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_survives_a_short_run(name: str, tmp_path: Path) -> None:
    result = fuzz(TARGETS[name], runs=QUICK_RUNS, seed=1, crash_dir=tmp_path)
    assert result.runs == QUICK_RUNS
    crashes = {key: path.with_suffix(".txt").read_text() for key, path in result.crashes.items()}
    assert not crashes, crashes
    assert result.corpus_size > len(TARGETS[name].seeds()), "some mutated inputs reached new behaviour"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_every_target_has_seeds_that_run_clean(name: str) -> None:
    seeds = TARGETS[name].seeds()
    assert seeds
    for seed in seeds:
        TARGETS[name].run(seed)


def _regression_inputs() -> list[Path]:
    if not REGRESSIONS.is_dir():
        return []
    return sorted(path for path in REGRESSIONS.glob("*/*") if path.suffix != ".txt")


@pytest.mark.parametrize("path", _regression_inputs(), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_saved_crash_inputs_no_longer_crash(path: Path) -> None:
    TARGETS[path.parent.name].run(path.read_bytes())


def _planted(data: bytes) -> object:
    if b"\x1b\x1b" in data:
        raise KeyError("planted")
    return len(data) % 3


def test_a_crash_is_found_saved_with_its_traceback_and_counted_once(tmp_path: Path) -> None:
    target = Target(
        name="planted", run=_planted, seeds=lambda: [b"abc"], description="test", tokens=(b"\x1b",)
    )
    result = fuzz(target, runs=20_000, seed=3, crash_dir=tmp_path)
    assert list(result.crashes) == [f"KeyError@{Path(__file__).name}:{_planted.__code__.co_firstlineno + 2}"]
    saved = result.crashes[next(iter(result.crashes))]
    assert b"\x1b\x1b" in saved.read_bytes()
    assert "KeyError: 'planted'" in saved.with_suffix(".txt").read_text()
    assert len(list(tmp_path.iterdir())) == 2, "one input and one traceback, however often it crashed"


def test_a_run_is_deterministic_for_its_seed(tmp_path: Path) -> None:
    first = fuzz(TARGETS["codec"], runs=500, seed=7, crash_dir=tmp_path)
    again = fuzz(TARGETS["codec"], runs=500, seed=7, crash_dir=tmp_path)
    assert first.corpus_size == again.corpus_size


def test_mutations_respect_the_length_limit() -> None:
    mutator = Mutator(rng=random.Random(0), tokens=(b"x" * 50,), max_len=64)
    data = b"y" * 60
    for _ in range(2000):
        data = mutator.mutate(data, other=b"z" * 200)
        assert len(data) <= 64


def test_invariant_breaks_are_crashes() -> None:
    error = FuzzInvariantError("broken")
    assert crash_signature(error) == "FuzzInvariantError@?"


def test_timed_chunks_split_long_chunks() -> None:
    encoded = timed_chunks_bytes([(0.1, b"a" * 300)])
    assert encoded[:2] == bytes((2, 255))
    assert encoded[257:259] == bytes((0, 45))


def test_cli_prints_a_result_line_per_target(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["device", "--runs", "300", "--crash-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RESULT date=" in out
    assert "target=device inputs=300" in out
    assert "crashes=0" in out


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["nonsense"])
    assert excinfo.value.code == 2
    with pytest.raises(SystemExit) as excinfo:
        main(["codec", "--runs", "0"])
    assert excinfo.value.code == 2
