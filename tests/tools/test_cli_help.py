"""Every `icu-edge ... --help` says what the command does and shows the defaults a field engineer needs."""

from __future__ import annotations

import pytest

from edge import appliance_version
from edge.config import DEFAULT_CONFIG_PATH
from engines.catalog import SHIPPED_MODELS_DIR
from tools.cli import main

_MODELS_DIR = f"(default: {SHIPPED_MODELS_DIR})"

HELP_CASES: list[tuple[list[str], list[str]]] = [
    ([], []),
    (["run"], [f"(default: {DEFAULT_CONFIG_PATH})", "(default: INFO)"]),
    (["config"], []),
    (["config", "check"], []),
    (["schema"], []),
    (["demo"], ["(default: deteriorating)"]),
    (["watch"], ["(default mqtt://127.0.0.1:1883)", "(default icu/v1)"]),
    (["sim"], ["medibus", "intellivue", "datex", "hl7", "replay"]),
    (["sim", "medibus"], ["(default: deteriorating)", "(default: 1)", "(default: 5)"]),
    (["sim", "intellivue"], ["(default: steady)", "(default: 1)"]),
    (["sim", "datex"], ["(default: steady)", "(default: 1)"]),
    (["sim", "hl7"], ["(default: steady)", "(default: mindray)", "(default: bed-01)", "(default: 1)"]),
    (["sim", "replay"], ["(default: 1.0)"]),
    (["record"], ["(default: 19200)", "(default: E, MEDIBUS)"]),
    (["engines"], []),
    (["engines", "list"], [_MODELS_DIR]),
    (["engines", "build"], [_MODELS_DIR, "(default: auto)"]),
    (["engines", "verify"], [_MODELS_DIR, "(default: auto)"]),
    (["engines", "bench"], [_MODELS_DIR, "(default: auto)", "(default: 1,8,32,64)", "(default: 200)"]),
    (["engines", "manifest"], []),
    (["engines", "eval"], []),
    (["provision"], ["(default: ask)", "(default: /)", "(default: 10.0)"]),
    (["report"], ["(default: 2h)", "(default: now)", f"(default: {DEFAULT_CONFIG_PATH})"]),
]


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run `icu-edge ARGV --help` in-process; it must exit 0 (returned or raised) and print on stdout."""
    try:
        status = main([*argv, "--help"])
    except SystemExit as exc:
        status = exc.code  # type: ignore[assignment]
    out = capsys.readouterr().out
    assert status == 0, out
    return out


@pytest.mark.parametrize(
    ("argv", "shown"), HELP_CASES, ids=[" ".join(a) or "icu-edge" for a, _ in HELP_CASES]
)
def test_help_describes_the_command_and_its_defaults(
    argv: list[str], shown: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside a path or a default
    out = _help(argv, capsys)
    blocks = [block.strip() for block in out.split("\n\n")]
    assert blocks[0].startswith("usage:"), out
    description = blocks[1] if len(blocks) > 1 else ""
    assert description, f"no description after the usage line:\n{out}"
    assert not description.startswith(("options:", "positional arguments:")), f"no description:\n{out}"
    for text in shown:
        assert text in out, f"{text!r} not in the help of {' '.join(argv)}:\n{out}"


def test_version_prints_the_appliance_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"icu-edge {appliance_version()}"
