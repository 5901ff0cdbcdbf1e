"""`icu-edge provision` for real: simulators on ptys, a TLS Mosquitto, `--root` a temporary directory.

Provision probes the simulated ventilator and monitor, checks the broker (TLS handshake and a round
trip on the appliance's diag topic), writes the config and installs the unit under the root; the
config it leaves must pass `icu-edge config check` and run a daemon that publishes the bed's vitals.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import CertificateAuthority, ListenerSecurity, MosquittoBroker, Subscriber, require_mosquitto
from ward import REPO_ROOT, Ward, WardLayout, bed_topic

pytestmark = pytest.mark.integration

CONFIG = Path("/etc/icu-edge/config.toml")


def _provision(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "provision", *argv],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto with a TLS listener (its own CA, server certificate for 127.0.0.1)."""
    require_mosquitto()
    instance = MosquittoBroker(directory=tmp_path / "broker", tls=True)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def ward(tmp_path: Path, tls_broker: MosquittoBroker) -> Iterator[Ward]:
    """A MEDIBUS ventilator and an IntelliVue monitor simulated on ptys (the daemon started by a test)."""
    (tmp_path / "ward").mkdir()
    ward = Ward(workdir=tmp_path / "ward", broker=tls_broker, layout=WardLayout(monitor="intellivue"))
    ward.start_simulator("bed-01")
    try:
        yield ward
    finally:
        ward.close()


def _answers(
    tmp_path: Path, ward: Ward, *, ca: Path, port: int, site_ward: str = "icu-3", extra: str = ""
) -> Path:
    path = tmp_path / f"answers-{site_ward}.toml"
    path.write_text(
        f"""
[appliance]
id = "edge-0001"
site = "hosp-a"
ward = "{site_ward}"

[broker]
host = "127.0.0.1"
port = {port}
ca = "{ca}"

[paths]
outbox = "{tmp_path / "state" / "outbox.db"}"
engines_cache = "{tmp_path / "state" / "engines"}"

[[bed]]
id = "bed-01"

[[bed.device]]
id = "vent-1"
port = "{ward.links["bed-01"]}"
probe = true

[[bed.device]]
id = "mon-1"
port = "{ward.monitor_links["bed-01"]}"
probe = true
{extra}
""",
        encoding="utf-8",
    )
    return path


def _tree(root: Path) -> dict[str, tuple[bytes | str, int, int]]:
    """Every file and link under root with its content (or link target), mode and mtime."""
    found: dict[str, tuple[bytes | str, int, int]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        content: bytes | str = (
            os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
        )
        found[str(path.relative_to(root))] = (content, info.st_mode, info.st_mtime_ns)
    return found


def test_provision_writes_a_config_the_daemon_runs_and_a_second_run_changes_nothing(
    tmp_path: Path, tls_broker: MosquittoBroker, ward: Ward
) -> None:
    assert tls_broker.tls_files is not None
    root = tmp_path / "root"
    answers = _answers(tmp_path, ward, ca=tls_broker.tls_files.ca, port=tls_broker.port)

    first = _provision("--answers", str(answers), "--root", str(root))

    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    assert "bed-01/vent-1 on " in out, out
    assert "probed: medibus SimVent" in out, out
    assert "probed: intellivue icu-edge SimMonitor" in out, out
    assert "round trip on icu/v1/hosp-a/icu-3/appliance/edge-0001/diag/ping" in out, out
    assert "provision: done:" in out, out
    config = root / "etc/icu-edge/config.toml"
    check = subprocess.run(
        [sys.executable, "-m", "tools.cli", "config", "check", str(config)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    info = config.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    if os.geteuid() == 0:
        groups = (root / "etc/group").read_text().splitlines()
        (icu_edge_gid,) = [int(line.split(":")[2]) for line in groups if line.startswith("icu-edge:")]
        assert (info.st_uid, info.st_gid) == (0, icu_edge_gid)
        assert stat.S_IMODE((root / "etc/icu-edge").stat().st_mode) == 0o750
    assert (root / "etc/systemd/system/icu-edge.service").read_bytes() == (
        REPO_ROOT / "systemd/icu-edge.service"
    ).read_bytes()
    assert (root / "usr/lib/sysusers.d/icu-edge.conf").is_file()
    assert (root / "usr/lib/tmpfiles.d/icu-edge.conf").is_file()
    assert (root / "etc/systemd/system/multi-user.target.wants/icu-edge.service").is_symlink()
    assert not (root / "etc/systemd/system/icu-edge.service.d/gpu.conf").exists()  # no GPU here

    subscriber = Subscriber(
        host=tls_broker.host,
        port=tls_broker.port,
        topic_filter=f"{bed_topic('bed-01')}/vitals",
        client_id="test-central",
        tls_ca=tls_broker.tls_files.ca,
    )
    daemon = ward.spawn("daemon", ["edge.cli", "run", "--config", str(config)])
    ward.daemon = daemon
    try:
        vitals = subscriber.wait_for(lambda got: len(got) >= 2, timeout_s=60)
        assert all(b'"bed":"bed-01"' in m.payload.replace(b" ", b"") for m in vitals), vitals[0].payload
        # While the daemon holds the ports, a probe must not share them (nor provision go on).
        busy = _provision("--answers", str(answers), "--root", str(root))
        assert busy.returncode == 69, busy.stdout + busy.stderr
        (line,) = busy.stderr.splitlines()
        assert "port busy" in line, line
        assert "systemctl stop icu-edge" in line, line
    finally:
        subscriber.close()
        daemon.terminate()
        daemon.wait(timeout=30)

    before = _tree(root)
    second = _provision("--answers", str(answers), "--root", str(root))

    assert second.returncode == 0, second.stdout + second.stderr
    assert "provision: nothing changed: the box already matches these answers" in second.stdout, second.stdout
    assert _tree(root) == before


def test_dry_run_shows_the_config_diff_and_changes_nothing(
    tmp_path: Path, tls_broker: MosquittoBroker, ward: Ward
) -> None:
    assert tls_broker.tls_files is not None
    root = tmp_path / "root"
    root.mkdir()
    answers = _answers(tmp_path, ward, ca=tls_broker.tls_files.ca, port=tls_broker.port)

    fresh = _provision("--answers", str(answers), "--root", str(root), "--dry-run")

    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert '+ward = "icu-3"' in fresh.stdout, fresh.stdout
    assert "would: new" in fresh.stdout, fresh.stdout
    if os.geteuid() == 0:  # the service group the sysusers step would create owns the config
        assert "/etc/icu-edge/config.toml (0640 root:icu-edge)" in fresh.stdout, fresh.stdout
        assert " warning " not in fresh.stdout, fresh.stdout
    assert "nothing was changed" in fresh.stdout, fresh.stdout
    assert list(root.iterdir()) == []

    assert _provision("--answers", str(answers), "--root", str(root)).returncode == 0
    before = _tree(root)
    moved = _answers(tmp_path, ward, ca=tls_broker.tls_files.ca, port=tls_broker.port, site_ward="icu-4")
    changed = _provision("--answers", str(moved), "--root", str(root), "--dry-run")

    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert '-ward = "icu-3"' in changed.stdout, changed.stdout
    assert '+ward = "icu-4"' in changed.stdout, changed.stdout
    assert "dry run: 1 change(s) would be made; nothing was changed" in changed.stdout, changed.stdout
    assert _tree(root) == before


def test_a_broker_certificate_of_another_ca_is_refused_with_one_line_and_no_config(
    tmp_path: Path, tls_broker: MosquittoBroker, ward: Ward
) -> None:
    stranger = CertificateAuthority.create(tmp_path / "stranger-ca", common_name="another CA")
    root = tmp_path / "root"
    answers = _answers(tmp_path, ward, ca=stranger.ca_path, port=tls_broker.port)

    result = _provision("--answers", str(answers), "--root", str(root))

    assert result.returncode == 78, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"provision: broker 127.0.0.1:{tls_broker.port}: TLS certificate verification failed"
    ), line
    assert not (root / "etc/icu-edge/config.toml").exists()


def test_an_unreachable_broker_is_a_missing_resource(tmp_path: Path, ward: Ward) -> None:
    root = tmp_path / "root"
    ca = CertificateAuthority.create(tmp_path / "ca").ca_path
    answers = _answers(tmp_path, ward, ca=ca, port=1)  # nothing listens on port 1

    result = _provision("--answers", str(answers), "--root", str(root))

    assert result.returncode == 69, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line == "provision: broker 127.0.0.1:1 unreachable: Connection refused", line
    assert not root.exists() or not any(root.rglob("config.toml"))


def test_a_missing_port_and_a_misspelt_key_stop_before_anything_is_written(tmp_path: Path) -> None:
    root = tmp_path / "root"
    answers = tmp_path / "answers.toml"
    base = """
[appliance]
id = "edge-0001"
site = "hosp-a"
ward = "icu-3"

[broker]
host = "127.0.0.1"
insecure = true

[[bed]]
id = "bed-01"

[[bed.device]]
id = "vent-1"
port = "usb-FTDI_nowhere-if00-port0"
driver = "medibus"
"""
    answers.write_text(base, encoding="utf-8")
    missing = _provision("--answers", str(answers), "--root", str(root))
    assert missing.returncode == 69, missing.stdout + missing.stderr
    (line,) = missing.stderr.splitlines()
    assert "/dev/serial/by-id/usb-FTDI_nowhere-if00-port0 does not exist" in line, line

    answers.write_text(base.replace('driver = "medibus"', 'drivr = "medibus"'), encoding="utf-8")
    misspelt = _provision("--answers", str(answers), "--root", str(root))
    assert misspelt.returncode == 78, misspelt.stdout + misspelt.stderr
    assert "bed[0].device[0].drivr: unknown key (did you mean 'driver'?)" in misspelt.stderr, misspelt.stderr

    answers.write_text(base.replace('host = "127.0.0.1"', 'hots = "127.0.0.1"'), encoding="utf-8")
    broker_typo = _provision("--answers", str(answers), "--root", str(root))
    assert broker_typo.returncode == 78, broker_typo.stdout + broker_typo.stderr
    assert "broker.hots: unknown key (did you mean 'host'?)" in broker_typo.stderr, broker_typo.stderr
    assert not root.exists()


def test_interactive_answers_from_stdin(tmp_path: Path, tls_broker: MosquittoBroker, ward: Ward) -> None:
    assert tls_broker.tls_files is not None
    root = tmp_path / "root"
    saved = tmp_path / "saved-answers.toml"
    lines = [
        "",  # appliance id: the default edge-0001
        "hosp-a",
        "icu-3",
        "127.0.0.1",
        str(tls_broker.port),
        str(tls_broker.tls_files.ca),
        "",  # no client certificate
        "",  # no username
        "",  # topic prefix: icu/v1
        str(ward.links["bed-01"]),  # a port to probe (a pty has no by-id name)
        "",  # its bed: bed-01
        "vent-1",
        "",  # no more ports
        "",  # config: /etc/icu-edge/config.toml
        str(tmp_path / "state" / "outbox.db"),
        "",  # executable: the default
    ]

    result = _provision("--root", str(root), "--save-answers", str(saved), stdin="\n".join(lines) + "\n")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "medibus" in result.stdout, result.stdout
    config = (root / "etc/icu-edge/config.toml").read_text()
    assert f'port = "{ward.links["bed-01"]}"' in config, config
    assert 'driver = "medibus"' in config, config
    again = _provision("--answers", str(saved), "--root", str(root))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing changed" in again.stdout, again.stdout


SAMPLE_ACL = REPO_ROOT / "systemd" / "mosquitto-acl.sample"


@pytest.fixture
def ward_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """The ward broker of systemd/README.md: client certificates, CN as identity, the shipped sample ACL."""
    require_mosquitto()
    instance = MosquittoBroker(
        directory=tmp_path / "ward-broker",
        security=ListenerSecurity(acl_file=SAMPLE_ACL, use_username_as_clientid=True),
    )
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def _mtls_answers(tmp_path: Path, broker: MosquittoBroker, *, identity: str) -> Path:
    assert broker.ca is not None
    files = broker.ca.client_files(identity)
    path = tmp_path / f"answers-{identity}.toml"
    path.write_text(
        f"""
[appliance]
id = "edge-0001"
site = "hosp-a"
ward = "icu-3"

[broker]
host = "127.0.0.1"
port = {broker.port}
ca = "{broker.ca.ca_path}"
cert = "{files.cert}"
key = "{files.key}"

[paths]
outbox = "{tmp_path / "state" / "outbox.db"}"

[engines]
enabled = false

[[bed]]
id = "bed-01"
""",
        encoding="utf-8",
    )
    return path


def test_the_shipped_acl_lets_the_appliance_ping_its_own_diag_topic(
    tmp_path: Path, ward_broker: MosquittoBroker
) -> None:
    answers = _mtls_answers(tmp_path, ward_broker, identity="edge-0001")

    result = _provision("--answers", str(answers), "--root", str(tmp_path / "root"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "round trip on icu/v1/hosp-a/icu-3/appliance/edge-0001/diag/ping" in result.stdout, result.stdout


def test_a_client_certificate_of_another_ca_is_refused_with_one_line(
    tmp_path: Path, ward_broker: MosquittoBroker
) -> None:
    root = tmp_path / "root"
    answers = _mtls_answers(tmp_path, ward_broker, identity="edge-0001")
    stranger = CertificateAuthority.create(tmp_path / "stranger-ca").client_files("edge-0001")
    text = answers.read_text()
    assert ward_broker.ca is not None
    own = ward_broker.ca.client_files("edge-0001")
    answers.write_text(
        text.replace(str(own.cert), str(stranger.cert)).replace(str(own.key), str(stranger.key))
    )

    result = _provision("--answers", str(answers), "--root", str(root))

    assert result.returncode == 78, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"provision: broker 127.0.0.1:{ward_broker.port}"), line
    assert "closed the connection before accepting the MQTT connection (client certificate" in line, line
    assert not (root / "etc/icu-edge/config.toml").exists()


def test_a_certificate_of_another_appliance_is_refused_by_the_acl_with_one_line(
    tmp_path: Path, ward_broker: MosquittoBroker
) -> None:
    root = tmp_path / "root"
    answers = _mtls_answers(tmp_path, ward_broker, identity="edge-9999")

    result = _provision("--answers", str(answers), "--root", str(root))

    assert result.returncode == 78, result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert "refused a publish on icu/v1/hosp-a/icu-3/appliance/edge-0001/diag/ping" in line, line
    assert not (root / "etc/icu-edge/config.toml").exists()


def test_without_systemd_tools_it_installs_the_files_and_says_how_to_enable(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    root = tmp_path / "root"
    answers = tmp_path / "answers.toml"
    answers.write_text(
        f"""
[appliance]
id = "edge-0001"
site = "hosp-a"
ward = "icu-3"

[broker]
host = "127.0.0.1"
port = {broker.port}
insecure = true

[paths]
outbox = "{tmp_path / "outbox.db"}"
executable = "/usr/local/bin/icu-edge"

[[bed]]
id = "bed-01"
""",
        encoding="utf-8",
    )
    bare = {**os.environ, "PATH": str(tmp_path / "empty-bin"), "PYTHONPATH": str(REPO_ROOT)}

    result = subprocess.run(
        [sys.executable, "-m", "tools.cli", "provision", "--answers", str(answers), "--root", str(root)],
        cwd=REPO_ROOT,
        env=bare,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no systemctl here: could not enable; on the box run `systemctl enable icu-edge.service`" in (
        result.stdout
    ), result.stdout
    assert (root / "etc/icu-edge/config.toml").is_file()
    unit = (root / "etc/systemd/system/icu-edge.service").read_text().splitlines()
    assert "ExecStart=/usr/local/bin/icu-edge run --config /etc/icu-edge/config.toml" in unit
