"""Config validation: the issue's example is accepted as is; every problem is one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from broker import make_tls_files
from cryptography.hazmat.primitives import serialization

from edge.cli import main
from edge.config import (
    ConfigCheck,
    ConfigError,
    address_problem,
    check_config,
    endpoint_identity,
    listen_problem,
    load_config,
    parse_config,
)
from tools.local_broker import TlsFiles

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
    assert "(did you mean 'keepalive_s'?)" in keepalive


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
        (
            lambda d: d["bed"][0]["device"][0].update(address="udp://10.0.0.5:24105"),
            "give exactly one of port, address, listen (driver medibus takes port)",
        ),
        (
            lambda d: (
                d["bed"][0]["device"][0].pop("port"),
                d["bed"][0]["device"][0].update(listen="0.0.0.0:2575"),
            ),
            "driver medibus takes port, not listen",
        ),
        (lambda d: d["bed"][0].update(sources={"spo2": "mon-9"}), "bed bed-07 has no device 'mon-9'"),
        (
            lambda d: d["bed"][0].update(sources={"sp02": "vent-1"}),
            "unknown key 'sp02' (did you mean 'spo2'?)",
        ),
        (lambda d: d.update(waves={"signals": ["ecg", "eeg"]}), "unknown signal(s) eeg; allowed: ecg, pleth"),
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
    "unknown-mqtt-key": ({"mqtt": 'hots = "x"'}, "mqtt.hots: unknown key (did you mean 'host'?)"),
    "unknown-top-level-table": ({"sections": f"{NO_ENGINES}\n[foo]\nx = 1"}, "foo: unknown key; allowed: "),
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


# --- Files the config names: present, readable, loadable, not exposed ------------------------------


def _check(tmp_path: Path, **parts: str) -> ConfigCheck:
    path = tmp_path / "config.toml"
    path.write_text(_config_text(tmp_path, **parts), encoding="utf-8")
    return check_config(path)


def _password(tmp_path: Path, content: bytes, *, mode: int = 0o600) -> str:
    secret = tmp_path / "mqtt.password"
    secret.write_bytes(content)
    secret.chmod(mode)
    return f'username = "edge-0001"\npassword_file = "{secret}"'


def test_a_good_config_with_a_private_password_file_is_clean(tmp_path: Path) -> None:
    checked = _check(tmp_path, mqtt=_password(tmp_path, b"s3cret\n"))
    assert checked.config is not None
    assert (checked.errors, checked.warnings) == ((), ())


def test_a_password_file_readable_by_others_is_a_warning_naming_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checked = _check(tmp_path, mqtt=_password(tmp_path, b"s3cret\n", mode=0o644))
    assert checked.config is not None
    (warning,) = checked.warnings
    secret = tmp_path / "mqtt.password"
    assert warning.startswith(f"mqtt.password_file: {secret} is readable by others (mode 0644); ")
    assert f"chmod 600 {secret}" in warning
    config = tmp_path / "config.toml"
    assert main(["config", "check", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"{config}: warning: {warning}" in out
    assert "ok (1 bed(s), 1 device(s), 1 warning(s))" in out


def test_group_access_through_the_service_group_is_no_warning(tmp_path: Path) -> None:
    """The shipped layout: 0640 root:icu-edge, read by the daemon through its own group."""
    _password(tmp_path, b"s3cret\n", mode=0o640)
    os.chown(tmp_path / "mqtt.password", -1, os.getegid())
    assert _check(tmp_path, mqtt=_password(tmp_path, b"s3cret\n", mode=0o640)).warnings == ()


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "is empty"), (b"\n", "is empty"), (b"\xff\xfe", "is not UTF-8 text")],
)
def test_an_unusable_password_file_is_an_error(tmp_path: Path, content: bytes, expected: str) -> None:
    checked = _check(tmp_path, mqtt=_password(tmp_path, content))
    assert checked.config is None
    (error,) = checked.errors
    assert error.startswith("mqtt.password_file: ")
    assert expected in error


def test_a_directory_where_a_file_belongs_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").mkdir()
    checked = _check(tmp_path, security=f'[mqtt.tls]\nca = "{tmp_path / "ca.pem"}"')
    assert checked.errors == (f"mqtt.tls.ca: {tmp_path / 'ca.pem'} is not a regular file",)


@pytest.mark.parametrize("field", ["password_file", "store.path"])
def test_relative_paths_are_refused(tmp_path: Path, field: str) -> None:
    """Under systemd the working directory is /: a relative path would name another file than checked."""
    document = _example()
    if field == "password_file":
        document["mqtt"].update(username="edge-0001", password_file="mqtt.password")  # type: ignore[attr-defined]
    else:
        document["store"]["path"] = "outbox.db"  # type: ignore[index]
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    (line,) = caught.value.lines
    assert "must be an absolute path" in line


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    """A throw-away CA and a certificate with its key, used here as the appliance's client identity."""
    directory = tmp_path / "tls"
    directory.mkdir()
    return make_tls_files(directory)


def _tls_section(ca: Path, cert: Path | None = None, key: Path | None = None) -> str:
    lines = ["[mqtt.tls]", f'ca = "{ca}"']
    if cert is not None and key is not None:
        lines += [f'cert = "{cert}"', f'key = "{key}"']
    return "\n".join(lines)


def test_tls_files_that_load_are_accepted(tmp_path: Path, tls: TlsFiles) -> None:
    checked = _check(tmp_path, security=_tls_section(tls.ca, tls.cert, tls.key))
    assert (checked.errors, checked.warnings) == ((), ())


def test_a_tls_key_readable_by_others_is_a_warning(tmp_path: Path, tls: TlsFiles) -> None:
    tls.key.chmod(0o644)
    checked = _check(tmp_path, security=_tls_section(tls.ca, tls.cert, tls.key))
    assert checked.config is not None
    (warning,) = checked.warnings
    assert warning.startswith(f"mqtt.tls.key: {tls.key} is readable by others (mode 0644); fix: chmod 600")


def test_a_ca_file_writable_by_others_is_a_warning(tmp_path: Path, tls: TlsFiles) -> None:
    """Whoever can replace the CA decides which broker the appliance trusts."""
    tls.ca.chmod(0o666)
    (warning,) = _check(tmp_path, security=_tls_section(tls.ca)).warnings
    assert warning.startswith(f"mqtt.tls.ca: {tls.ca} is writable by others")


def test_tls_material_that_does_not_load_is_an_error(tmp_path: Path, tls: TlsFiles) -> None:
    not_a_ca = _check(tmp_path, security=_tls_section(tls.key))
    assert not_a_ca.errors[0].startswith(f"mqtt.tls.ca: {tls.key} holds no usable PEM certificate")
    mismatched = _check(tmp_path, security=_tls_section(tls.ca, tls.ca, tls.key))
    assert mismatched.errors[0].startswith("mqtt.tls.cert: ")
    assert "do not load as a pair" in mismatched.errors[0]


def test_an_encrypted_tls_key_is_an_error_not_a_passphrase_prompt(tmp_path: Path, tls: TlsFiles) -> None:
    key = serialization.load_pem_private_key(tls.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    encrypted.chmod(0o600)
    checked = _check(tmp_path, security=_tls_section(tls.ca, tls.cert, encrypted))
    (error,) = checked.errors
    assert error.startswith(f"mqtt.tls.key: {encrypted} is encrypted")


def test_a_missing_models_dir_is_a_warning_forecasting_is_optional(tmp_path: Path) -> None:
    """The daemon runs without forecasts rather than without vitals: no exit 78 for the engines."""
    checked = _check(tmp_path, sections=f'[engines]\nmodels_dir = "{tmp_path / "models"}"')
    assert checked.config is not None
    (warning,) = checked.warnings
    assert warning.startswith(f"engines.models_dir: {tmp_path / 'models'} does not exist")


def test_tick_of_a_tenth_of_a_second_is_the_shortest_allowed(tmp_path: Path) -> None:
    assert _check(tmp_path, sections=f"{NO_ENGINES}\ntick_s = 0.1").config is not None
    (error,) = _check(tmp_path, sections=f"{NO_ENGINES}\ntick_s = 0.09").errors
    assert error.startswith("engines.tick_s: ")


@pytest.mark.parametrize("prefix", ["icu/v1", "a", "hosp_a/icu-3/v.1"])
def test_good_topic_prefixes(prefix: str) -> None:
    document = _example()
    document["mqtt"]["topic_prefix"] = prefix  # type: ignore[index]
    assert parse_config(document).mqtt.topic_prefix == prefix


@pytest.mark.parametrize("prefix", ["", "/icu", "icu/", "icu//v1", "icu/+/v1", "icu/#", "$SYS/icu", "icu v1"])
def test_bad_topic_prefixes(prefix: str) -> None:
    document = _example()
    document["mqtt"]["topic_prefix"] = prefix  # type: ignore[index]
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    (line,) = caught.value.lines
    assert line.startswith("mqtt.topic_prefix: not a topic prefix")
    assert "allowed: 1-8 levels" in line


def test_every_bad_driver_option_is_its_own_line() -> None:
    document = _example()
    document["bed"][0]["device"][0]["options"] = {  # type: ignore[index]
        "poll_interval_s": float("inf"),
        "keepalive_s": 3,
        "buffer_cap_bytes": 1.5,
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    assert [line.split(":")[0] for line in caught.value.lines] == [
        "bed[0].device[0].options.poll_interval_s",
        "bed[0].device[0].options.keepalive_s",
        "bed[0].device[0].options.buffer_cap_bytes",
    ]


def test_unknown_key_suggests_the_near_one() -> None:
    document = _example()
    document["publish"] = {"twin_max_interval": 5}
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    (line,) = caught.value.lines
    assert line.startswith("publish.twin_max_interval: unknown key (did you mean 'twin_max_interval_s'?)")


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        ("ttyUSB0", "must be a device path"),
        ("COM3", "must be a device path"),
        ("socket://bridge", "needs a host and a port"),
        ("socket://bridge:70000", "needs a host and a port"),
        ("socket://bridge:4001?logging=debug", "takes only host:port"),
        ("rfc2217://bridge:4001", "must be a device path"),
        ("loop://x", "loop:// takes nothing"),
    ],
)
def test_port_forms_run_cannot_open_are_refused(port: str, expected: str) -> None:
    """pyserial would refuse these at every retry, forever; the check refuses them once."""
    document = _example()
    document["bed"][0]["device"][0]["port"] = port  # type: ignore[index]
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    (line,) = caught.value.lines
    assert line.startswith("bed[0].device[0].port: ")
    assert expected in line


# --- No two devices on one port; no two beds with one id ------------------------------------------


def _two_bed_document(port_1: str, port_2: str) -> dict[str, object]:
    return tomllib.loads(_config_text(Path("/tmp"), beds=_two_beds(port_1, port_2)))


def test_a_port_shared_by_two_beds_is_refused_naming_both() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_two_bed_document("/dev/ttyUSB0", "/dev/ttyUSB0"))
    assert caught.value.lines == [
        "bed[1].device[0].port: bed b1 device vent-1 and bed b2 device vent-2 both use /dev/ttyUSB0; "
        "a port carries one device to one bed"
    ]


def test_a_symlink_alias_of_a_port_is_the_same_port(tmp_path: Path) -> None:
    """/dev/serial/by-id/... and /dev/ttyUSB0 are one port: compared after resolving the link."""
    device = tmp_path / "ttyUSB0"
    device.write_bytes(b"")
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    alias = by_id / "usb-FTDI_FT232R-if00-port0"
    alias.symlink_to(device)
    with pytest.raises(ConfigError) as caught:
        parse_config(_two_bed_document(str(alias), str(device)))
    (line,) = caught.value.lines
    assert line == (
        f"bed[1].device[0].port: bed b1 device vent-1 and bed b2 device vent-2 both use {device} "
        f"({alias} and {device}); a port carries one device to one bed"
    )


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("socket://bridge:4001", "socket://BRIDGE.:4001"),
        ("socket://127.0.0.1:4001", "socket://127.1:4001/"),
        ("socket://[::1]:4001", "socket://[0:0::1]:4001"),
    ],
)
def test_socket_addresses_compare_normalised(one: str, other: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(_two_bed_document(one, other))
    (line,) = caught.value.lines
    assert "bed b1 device vent-1 and bed b2 device vent-2 both use tcp://" in line


def test_different_ports_and_private_loops_are_fine() -> None:
    assert parse_config(_two_bed_document("/dev/ttyUSB0", "/dev/ttyUSB1")).bed[1].id == "b2"
    assert parse_config(_two_bed_document("socket://bridge:4001", "socket://bridge:4002")).bed[1].id == "b2"
    assert parse_config(_two_bed_document("loop://", "loop://")).bed[1].id == "b2"


def test_duplicate_device_ids_in_a_bed_name_both_positions() -> None:
    document = _example()
    bed = document["bed"][0]  # type: ignore[index]
    bed["device"].append(dict(bed["device"][0], port="/dev/ttyUSB9"))
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    assert caught.value.lines == [
        "bed[0].device[1].id: bed[0].device[0] and bed[0].device[1] both have id 'vent-1'; "
        "device ids must be unique within a bed"
    ]


def test_the_same_device_id_at_two_beds_is_fine() -> None:
    """Device ids are topic levels under their bed (R/bed/{bed}/device/{device})."""
    document = _two_bed_document("/dev/ttyUSB0", "/dev/ttyUSB1")
    document["bed"][1]["device"][0]["id"] = "vent-1"  # type: ignore[index]
    assert parse_config(document).bed[1].device[0].id == "vent-1"


def test_run_logs_the_warnings_with_the_errors(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        _config_text(
            tmp_path,
            mqtt=_password(tmp_path, b"s3cret\n", mode=0o644),
            security=_tls_section(tmp_path / "absent-ca.pem"),
        ),
        encoding="utf-8",
    )
    run = _cli("run", "--config", str(config), timeout_s=RUN_GIVE_UP_S)
    assert run is not None
    assert run.returncode == 78
    assert f"{config}: warning: mqtt.password_file: " in run.stderr
    assert f"{config}: mqtt.tls.ca: " in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize("host", ["", "mqtt://broker", "broker:1883", "bad:1883", "broker name", "broker/x"])
def test_a_broker_host_that_is_no_host_is_refused(host: str) -> None:
    document = _example()
    document["mqtt"]["host"] = host  # type: ignore[index]
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    (line,) = caught.value.lines
    assert line.startswith("mqtt.host: must be a host name or IP address")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "broker", "mqtt.ward-3.hosp.example"])
def test_broker_hosts(host: str) -> None:
    document = _example()
    document["mqtt"]["host"] = host  # type: ignore[index]
    assert parse_config(document).mqtt.host == host


def test_a_plug_order_port_name_is_a_warning(tmp_path: Path) -> None:
    """/dev/ttyUSB0 is whichever adapter the kernel saw first: after a replug, maybe another bed's."""
    checked = _check(tmp_path, beds=_two_beds("/dev/ttyUSB0", "/dev/serial/by-id/usb-FTDI-if00-port0"))
    assert checked.config is not None
    (warning,) = checked.warnings
    assert warning.startswith("bed[0].device[0].port: /dev/ttyUSB0 is numbered in plug order")
    assert "/dev/serial/by-id/" in warning


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("udp://10.0.0.5:24105", None),
        ("udp://[::1]:24105", None),
        ("tcp://10.0.0.5:24105", "must be udp://HOST:PORT"),
        ("udp://10.0.0.5", "udp:// needs a host and a port"),
        ("udp://10.0.0.5:70000", "udp:// needs a host and a port"),
        ("udp://10.0.0.5:24105/x", "udp:// takes only host:port"),
    ],
)
def test_a_network_address_is_udp_host_port(address: str, problem: str | None) -> None:
    found = address_problem(address)
    assert (found is None) if problem is None else (found is not None and found.startswith(problem))


@pytest.mark.parametrize("value", ["127.0.0.1:2575", "[::1]:2575", "0.0.0.0:2575", "monitor-gw:2575"])
def test_a_listen_endpoint_is_host_port(value: str) -> None:
    assert listen_problem(value) is None


@pytest.mark.parametrize("value", ["2575", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:2575/x", "user@h:1"])
def test_a_bad_listen_endpoint_says_the_form(value: str) -> None:
    assert listen_problem(value) == (
        "must be HOST:PORT with a port 1-65535 (127.0.0.1:2575, [::1]:2575, 0.0.0.0:2575)"
    )


def test_every_spelling_of_one_endpoint_has_one_identity() -> None:
    assert endpoint_identity("udp://10.0.0.05:24105") != endpoint_identity("udp://10.0.0.6:24105")
    assert endpoint_identity("udp://MONITOR.:24105") == endpoint_identity("udp://monitor:24105")
    assert endpoint_identity("listen://[0:0::1]:2575") == endpoint_identity("listen://[::1]:2575")
    assert endpoint_identity("listen://127.0.0.1:2575") != endpoint_identity("udp://127.0.0.1:2575")


def _bed(device_lines: str, *, bed_key: str = 'id = "b1"') -> str:
    return f'\n[[bed]]\n{bed_key}\n\n[[bed.device]]\nid = "vent-1"\n{device_lines}\n'


ONE_LINE_CASES: dict[str, tuple[dict[str, str], str]] = {
    "unknown-mqtt-key": ({"mqtt": 'hots = "x"'}, "mqtt.hots: unknown key (did you mean 'host'?); allowed: "),
    "unknown-bed-key": (
        {"beds": _bed('driver = "medibus"\nport = "{tmp}/vent-1"', bed_key='idd = "b1"')},
        "bed[0].idd: unknown key (did you mean 'id'?); allowed: ",
    ),
    "unknown-driver-option": (
        {"device": "options = { poll_intervl_s = 1 }"},
        "bed[0].device[0].options.poll_intervl_s: unknown medibus option 'poll_intervl_s' (did you mean",
    ),
    "unknown-top-level-table": (
        {"sections": f"{NO_ENGINES}\n[publishh]\ntwin_min_interval_s = 1"},
        "publishh: unknown key (did you mean 'publish'?); allowed: ",
    ),
    "unknown-driver": (
        {"beds": _bed('driver = "medibuss"\nport = "{tmp}/vent-1"')},
        "bed[0].device[0].driver: unknown driver 'medibuss' (did you mean 'medibus'?); allowed: datex, hl7,",
    ),
    "unknown-alarm-limit-key": (
        {"sections": f"{NO_ENGINES}\n[alarms.limits.hr]\nhihg = 150"},
        "alarms.limits.hr.hihg: unknown key (did you mean 'high'?); allowed: delay_reason, delay_s, ",
    ),
    "unknown-bed-alarm-limit-key": (
        {"device": "[bed.alarm_limits.spo2]\nloww = 85"},
        "bed[0].alarm_limits.spo2.loww: unknown key (did you mean 'low'?); allowed: delay_reason, ",
    ),
    "toml-syntax": ({"sections": f"{NO_ENGINES}\ntick_s = "}, "TOML syntax: Invalid value (at line "),
}


@pytest.mark.parametrize("case", sorted(ONE_LINE_CASES))
def test_each_config_error_is_one_line_naming_the_file_once(case: str, tmp_path: Path) -> None:
    """Both commands print each problem once, as `PATH: KEY.PATH: message`, PATH not repeated."""
    parts, expected = ONE_LINE_CASES[case]
    tmp = str(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(
        _config_text(tmp_path, **{k: v.replace("{tmp}", tmp) for k, v in parts.items()}), encoding="utf-8"
    )
    check = _cli("config", "check", str(config), timeout_s=60)
    run = _cli("run", "--config", str(config), timeout_s=RUN_GIVE_UP_S)
    assert check is not None
    assert run is not None
    assert (check.returncode, run.returncode) == (78, 78), check.stdout + run.stderr
    check_lines = check.stdout.splitlines()
    assert run.stderr.splitlines() == check_lines, "check and run must print the same lines"
    assert len(set(check_lines)) == len(check_lines), f"a line printed twice: {check_lines}"
    for line in check_lines:
        assert line.startswith(f"{config}: "), line
        assert line.count(tmp) == 1, line
    assert [line for line in check_lines if expected in line] != [], check_lines
    assert "(got " not in "".join(line for line in check_lines if expected in line)


def test_an_unreadable_config_is_one_line_naming_the_file_once(tmp_path: Path) -> None:
    absent = tmp_path / "absent.toml"
    check = _cli("config", "check", str(absent), timeout_s=60)
    run = _cli("run", "--config", str(absent), timeout_s=RUN_GIVE_UP_S)
    assert check is not None
    assert run is not None
    expected = [f"{absent}: cannot read: No such file or directory"]
    assert (check.stdout.splitlines(), run.stderr.splitlines()) == (expected, expected)
    assert (check.returncode, run.returncode) == (78, 78)
