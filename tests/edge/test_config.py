"""Config validation: the issue's example is accepted as is; every problem is one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edge.cli import main
from edge.config import ConfigError, load_config, parse_config

DATA = Path(__file__).parent.parent / "data" / "config"
EXAMPLE = DATA / "issue-example.toml"


def _example() -> dict[str, object]:
    return tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))


def test_issue_example_is_accepted_as_is() -> None:
    config = load_config(EXAMPLE)
    assert config.appliance.id == "edge-0001"
    assert config.mqtt.topic_prefix == "icu/v1"
    assert config.mqtt.keepalive == 5
    device = config.bed[0].device[0]
    assert (device.driver, device.baud, device.parity) == ("medibus", 19200, None)
    assert str(config.store.path) == "/var/lib/icu-edge/outbox.db"


def test_several_problems_give_one_line_each() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(DATA / "bad-several.toml")
    lines = caught.value.lines
    joined = "\n".join(lines)
    assert len(lines) == 5, joined
    assert any(line.startswith("appliance.id: invalid characters") and "allowed:" in line for line in lines)
    assert any(line.startswith("appliance.colour: ") and "allowed:" in line for line in lines)
    assert any(line.startswith("mqtt.port: ") and "65535" in line and "70000" in line for line in lines)
    assert any(line.startswith("bed[0].device[0].driver: unknown driver 'medibuss'") for line in lines)
    assert any(line.startswith("bed[0].device[1].baud: ") and "-5" in line for line in lines)


def test_unknown_driver_option_names_allowed_ones() -> None:
    document = _example()
    document["bed"][0]["device"][0]["options"] = {"poll_every": 2, "keepalive": 1}  # type: ignore[index]
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    every, keepalive = caught.value.lines
    assert every.startswith("bed[0].device[0].options.poll_every: unknown medibus option 'poll_every'; ")
    assert "allowed: buffer_cap_bytes, icc_retry_s, keepalive_s, link_timeout_s, poll_interval_s" in every
    assert "(did you mean keepalive_s?)" in keepalive


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["bed"].append(dict(d["bed"][0], device=[])),
            "bed[1].id: bed[0] and bed[1] both have id 'bed-07'; bed ids must be unique",
        ),
        (lambda d: d["mqtt"].update(password_file="/run/secret"), "password_file needs username"),
        (lambda d: d["mqtt"].update(tls={"ca": "/ca.pem", "cert": "/c.pem"}), "cert and key must be given"),
        (lambda d: d.pop("bed"), "bed: required, but missing"),
        (lambda d: d.update(config_version=2), "config_version: "),
    ],
)
def test_semantic_errors(mutate: object, expected: str) -> None:
    document = _example()
    mutate(document)  # type: ignore[operator]
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    assert any(expected in line for line in caught.value.lines), caught.value.lines


def test_toml_syntax_error_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[appliance\nid = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (line,) = caught.value.lines
    assert "TOML syntax" in line
    assert "line 1" in line


def test_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml")
    (line,) = caught.value.lines
    assert "cannot read" in line


def test_config_check_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(EXAMPLE)]) == 0
    assert "ok (1 bed(s), 1 device(s))" in capsys.readouterr().out
    assert main(["config", "check", str(DATA / "bad-several.toml")]) == 78
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 5
    assert all(line.startswith(str(DATA / "bad-several.toml")) for line in out)


def test_run_with_bad_config_never_starts(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status = main(["run", "--config", str(DATA / "bad-several.toml")])
    assert status == 78
    assert "bed[0].device[0].driver" in capsys.readouterr().err


def test_plaintext_mqtt_needs_insecure_said_on_purpose() -> None:
    document = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    del document["mqtt"]["insecure"]
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    assert any(line.startswith("mqtt: ") and "insecure = true" in line for line in caught.value.lines)
    document["mqtt"]["insecure"] = True
    document["mqtt"]["tls"] = {"ca": "/etc/icu-edge/ca.pem"}
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    assert any("contradicts" in line for line in caught.value.lines)


# --- One validation path: `config check` and `run` agree, and neither shows a traceback ---------------

REPO_ROOT = Path(__file__).resolve().parents[2]
NO_ENGINES = "[engines]\nenabled = false"
RUN_GIVE_UP_S = 20.0
"""A `run` still going after this long accepted a config that `config check` must refuse."""


def _config_text(
    tmp_path: Path,
    *,
    mqtt: str = "",
    security: str = "insecure = true",
    sections: str = NO_ENGINES,
    device: str = "",
    beds: str | None = None,
) -> str:
    """A config that `run` starts on (broker unreachable, port absent: both retried), plus the test's part."""
    default_beds = f"""
[[bed]]
id = "b1"

[[bed.device]]
id = "vent-1"
driver = "medibus"
port = "{tmp_path / "vent-1"}"
{device}
"""
    return f"""
[appliance]
id = "edge-0001"
site = "hosp-a"
ward = "icu-3"

[mqtt]
host = "127.0.0.1"
port = 9
{mqtt}
{security}

[store]
path = "{tmp_path / "outbox.db"}"
synchronous = "normal"

{sections}
{default_beds if beds is None else beds}
"""


def _two_beds(port_1: str, port_2: str) -> str:
    return f"""
[[bed]]
id = "b1"

[[bed.device]]
id = "vent-1"
driver = "medibus"
port = "{port_1}"

[[bed]]
id = "b2"

[[bed.device]]
id = "vent-2"
driver = "medibus"
port = "{port_2}"
"""


AGREEMENT_CASES: dict[str, tuple[dict[str, str], str]] = {
    "option-not-a-number": (
        {"device": 'options = { poll_interval_s = "fast" }'},
        "options.poll_interval_s: ",
    ),
    "option-zero": ({"device": "options = { poll_interval_s = 0 }"}, "options.poll_interval_s: "),
    "option-nan": ({"device": "options = { poll_interval_s = nan }"}, "options.poll_interval_s: "),
    "password-file-missing": (
        {"mqtt": 'username = "edge-0001"\npassword_file = "{tmp}/absent.password"'},
        "mqtt.password_file: ",
    ),
    "tls-ca-missing": ({"security": '[mqtt.tls]\nca = "{tmp}/absent-ca.pem"'}, "mqtt.tls.ca: "),
    "topic-prefix-leading-slash": ({"mqtt": 'topic_prefix = "/icu"'}, "mqtt.topic_prefix: "),
    "topic-prefix-empty-level": ({"mqtt": 'topic_prefix = "icu//v1"'}, "mqtt.topic_prefix: "),
    "topic-prefix-dollar": ({"mqtt": 'topic_prefix = "$SYS/icu"'}, "mqtt.topic_prefix: "),
    "twin-min-above-max": (
        {"sections": f"{NO_ENGINES}\n[publish]\ntwin_min_interval_s = 10\ntwin_max_interval_s = 1"},
        "publish: twin_min_interval_s",
    ),
    "tick-too-short": ({"sections": f"{NO_ENGINES}\ntick_s = 0.0001"}, "engines.tick_s: "),
    "port-shared-by-two-beds": (
        {"beds": _two_beds("{tmp}/vent-1", "{tmp}/vent-1")},
        "bed b1 device vent-1 and bed b2 device vent-2 both use {tmp}/vent-1",
    ),
}


def _cli(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str] | None:
    """Run `python -m edge.cli ARGS` as a real process; None when it was still running at the time-out."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "edge.cli", *args],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize("case", sorted(AGREEMENT_CASES))
def test_check_and_run_refuse_the_same_config_with_the_same_lines(case: str, tmp_path: Path) -> None:
    parts, expected = AGREEMENT_CASES[case]
    tmp = str(tmp_path)
    config = tmp_path / "config.toml"
    text = _config_text(tmp_path, **{k: v.replace("{tmp}", tmp) for k, v in parts.items()})
    config.write_text(text, encoding="utf-8")
    prefix = f"{config}: "
    expected = expected.replace("{tmp}", tmp)

    check = _cli("config", "check", str(config), timeout_s=60)
    assert check is not None
    assert check.returncode == 78, check.stdout + check.stderr
    check_lines = [line for line in check.stdout.splitlines() if line.startswith(prefix)]
    assert any(expected in line for line in check_lines), check.stdout

    run = _cli("run", "--config", str(config), timeout_s=RUN_GIVE_UP_S)
    assert run is not None, f"run accepted the config that check refused, and kept running: {text}"
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 78, run.stderr
    run_lines = [line for line in run.stderr.splitlines() if line.startswith(prefix)]
    assert run_lines == check_lines, "check and run must print the same problems"
