"""Config validation: the issue's example is accepted as is; every problem is one clear line."""

from __future__ import annotations

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
    document["bed"][0]["device"][0]["options"] = {"poll_every": 2}  # type: ignore[index]
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    (line,) = caught.value.lines
    assert line.startswith("bed[0].device[0]: unknown medibus option(s) poll_every; allowed: ")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["bed"].append(dict(d["bed"][0])), "bed ids must be unique; repeated: bed-07"),
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
