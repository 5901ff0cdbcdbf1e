"""`icu-edge diag bundle`: one archive for support, with everything but secrets.

Members (all text; MANIFEST.txt lists what is in and what could not be collected, and why):
- `config.redacted.json`: the config file as parsed, every secret-like value replaced by `<redacted>`
  (keys named like password/token/secret/credential, and token-like strings); file paths are kept,
  the files they name (password, private key) are never read into the archive; plus `config check`'s
  verdict;
- `versions.json`: appliance, Python, paho-mqtt, pydantic, numpy, pyserial, onnxruntime, tensorrt,
  OS and kernel;
- `daemon-snapshot.json`: the running daemon's diagnostics snapshot (device and publisher counters,
  outbox, alarm store and engine state, each device's recent raw bytes), or a note that it did not
  answer; then `outbox.json` is the outbox read read-only from its SQLite file;
- `journal.txt`: `journalctl -u icu-edge -n 2000 --no-pager`, or a note why not;
- `ports.txt`: `icu-edge diag ports`, when that check is installed.

Last line of defence: every member is scrubbed of the secret values themselves (the password from
`password_file`, the private key's PEM lines, redacted tokens) before it is written, so a secret that
reached a log line does not reach the archive either. The archive is created 0600; it holds patient
values (the raw device bytes): handle it as patient data.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edge import appliance_version
from edge.config import DEFAULT_CONFIG_PATH, AppConfig, check_config
from edge.diagnostics import outbox_state, read_snapshot, socket_path

HELP = "support archive: redacted config, versions, counters, raw frames, journal, outbox; no secret"
DESCRIPTION = (
    "Write one tar.gz (mode 0600, its path printed) for support: the config with every secret "
    "redacted (file paths kept, secret files never read into it), versions, the running daemon's "
    "snapshot (device and publisher counters, outbox, each device's recent raw bytes) or the outbox "
    "read from disk when the daemon is down, the recent journal, `diag ports`, and a MANIFEST of what "
    "is in it and what could not be collected. It holds patient values (raw device bytes): handle it "
    "as patient data. Exit 0 when written, 69 when the archive cannot be written."
)

EX_OK = 0
EX_UNAVAILABLE = 69
REDACTED = "<redacted>"
JOURNAL_LINES = 2000
JOURNAL_TIMEOUT_S = 30.0
_SECRET_KEY = re.compile(r"pass(word|wd|phrase)?$|token|secret|credential|api[_-]?key|auth", re.IGNORECASE)
"""Config keys whose values are secrets (not `password_file`: a path, kept)."""
_TOKEN_LIKE = re.compile(r"^[A-Za-z0-9+/=_\-.~]{20,}$")
_VERSIONS = ("paho-mqtt", "pydantic", "numpy", "pyserial", "onnxruntime", "tensorrt", "cryptography")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `diag bundle`."""
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG_PATH, help="the daemon's config (default: %(default)s)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="archive path (default: ./icu-edge-bundle-<appliance>-<UTC time>.tar.gz)",
    )
    parser.add_argument(
        "--journal-unit",
        default="icu-edge",
        help="systemd unit whose journal is included (default: %(default)s)",
    )


def _token_like(value: str) -> bool:
    """A string that looks like a credential: long, no spaces, not a path; mixed case and digits, or hex."""
    if not _TOKEN_LIKE.match(value) or value.startswith(("/", ".")):
        return False
    if len(value) >= 32 and all(c in "0123456789abcdefABCDEF" for c in value):
        return True
    return (
        any(c.isdigit() for c in value)
        and any(c.isupper() for c in value)
        and any(c.islower() for c in value)
    )


def redact(value: Any, *, key: str = "", found: list[str]) -> Any:
    """A copy of a parsed config with secret-like values replaced; the replaced strings go to `found`."""
    if isinstance(value, dict):
        return {k: redact(v, key=str(k), found=found) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key=key, found=found) for v in value]
    secret_key = bool(_SECRET_KEY.search(key)) and not key.endswith(("_file", "_path"))
    if isinstance(value, str) and (secret_key or _token_like(value)):
        found.append(value)
        return REDACTED
    if secret_key and value is not None and not isinstance(value, bool):
        found.append(str(value))
        return REDACTED
    return value


def _secret_file_values(config: AppConfig | None) -> list[str]:
    """The secrets the config's files hold (to scrub from every member; never written themselves)."""
    if config is None:
        return []
    values: list[str] = []
    mqtt = config.mqtt
    if mqtt.password_file is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            values.append(mqtt.password_file.read_text(encoding="utf-8").strip())
    if mqtt.tls is not None and mqtt.tls.key is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = mqtt.tls.key.read_text(encoding="utf-8")
            values += [
                line.strip() for line in text.splitlines() if len(line.strip()) >= 16 and "-----" not in line
            ]
    return [v for v in values if len(v) >= 4]


class _Archive:
    """The members collected so far and the MANIFEST's lines."""

    def __init__(self) -> None:
        self.members: dict[str, str] = {}
        self.notes: list[str] = []

    def add(self, name: str, text: str, *, what: str) -> None:
        self.members[name] = text
        self.notes.append(f"{name}: {what}")

    def missing(self, what: str, why: str) -> None:
        self.notes.append(f"NOT COLLECTED: {what}: {why}")


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"icu-edge": appliance_version(), "python": sys.version.split()[0]}
    for name in _VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    os_release: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            os_release[key] = value.strip('"')
    versions["os"] = os_release.get("PRETTY_NAME") or platform.platform()
    versions["kernel"] = platform.release()
    versions["machine"] = platform.machine()
    return versions


def _collect_config(archive: _Archive, path: Path, found: list[str]) -> AppConfig | None:
    checked = check_config(path)
    try:
        document: Any = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        archive.missing(f"config {path}", f"cannot be read as TOML ({type(exc).__name__}); not copied")
        document = None
    verdict = {"path": str(path), "errors": list(checked.errors), "warnings": list(checked.warnings)}
    redacted = None if document is None else redact(document, found=found)
    archive.add(
        "config.redacted.json",
        json.dumps({"check": verdict, "config": redacted}, indent=2, default=str),
        what=f"{path} as parsed, secrets replaced by {REDACTED}, and `config check`'s verdict",
    )
    return checked.config


def _collect_daemon(archive: _Archive, config: AppConfig | None) -> None:
    if config is None:
        archive.missing("daemon snapshot and outbox", "the config is not usable, so their paths are unknown")
        return
    path = socket_path(config.store.path)
    try:
        snapshot = read_snapshot(path)
    except (OSError, ValueError) as exc:
        hint = (
            " (the socket is the icu-edge user's: run as root or icu-edge)"
            if isinstance(exc, PermissionError)
            else ""
        )
        archive.missing("daemon snapshot", f"the daemon did not answer on {path}: {exc}{hint}")
        state = outbox_state(config.store.path)
        archive.add("outbox.json", json.dumps(state, indent=2), what="the outbox read read-only from disk")
        return
    archive.add(
        "daemon-snapshot.json",
        json.dumps(snapshot, indent=2),
        what=f"the daemon's snapshot from {path}: devices, publisher, outbox, alarm store, engines, "
        "raw bytes per device (`raw`, base64)",
    )


def _collect_journal(archive: _Archive, unit: str) -> None:
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        archive.missing("journal", "journalctl is not installed here")
        return
    try:
        result = subprocess.run(
            [journalctl, "-u", unit, "-n", str(JOURNAL_LINES), "--no-pager"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=JOURNAL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        archive.missing("journal", f"journalctl failed: {exc}")
        return
    if result.returncode != 0 or not result.stdout.strip():
        archive.missing("journal", f"journalctl exit {result.returncode}: {result.stderr.strip()[:300]}")
        return
    archive.add("journal.txt", result.stdout, what=f"journalctl -u {unit} -n {JOURNAL_LINES} --no-pager")


def _collect_ports(archive: _Archive) -> None:
    try:
        module = importlib.import_module("tools.diag.ports")
    except ImportError:
        archive.missing("serial ports", "`diag ports` is not installed in this version")
        return
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            status = module.run(parser.parse_args([]))
    except Exception as exc:  # noqa: BLE001 - a failing optional check must not lose the bundle
        archive.missing("serial ports", f"`diag ports` failed: {type(exc).__name__}: {exc}")
        return
    archive.add("ports.txt", out.getvalue(), what=f"`icu-edge diag ports` (exit {status})")


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value replaced by `<redacted>`."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


def _write(path: Path, members: dict[str, str], *, mtime_s: float) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as file, tarfile.open(fileobj=file, mode="w:gz") as tar:
        root = path.name.removesuffix(".tar.gz")
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size = len(data)
            info.mode = 0o600
            info.mtime = int(mtime_s)
            tar.addfile(info, io.BytesIO(data))


def run(args: argparse.Namespace) -> int:
    """Run `diag bundle`; return the exit status."""
    now = datetime.now(UTC)
    archive = _Archive()
    found: list[str] = []
    config = _collect_config(archive, args.config, found)
    archive.add("versions.json", json.dumps(_versions(), indent=2), what="software versions, OS, kernel")
    _collect_daemon(archive, config)
    _collect_journal(archive, args.journal_unit)
    _collect_ports(archive)
    secrets = [*found, *_secret_file_values(config)]
    appliance = config.appliance.id if config is not None else "unknown"
    output: Path = args.output or Path(f"icu-edge-bundle-{appliance}-{now:%Y%m%dT%H%M%SZ}.tar.gz")
    manifest = [
        f"icu-edge support bundle, {now.isoformat(timespec='seconds')}, appliance {appliance}",
        "It holds patient values (the raw device bytes): handle it as patient data.",
        f"Secrets: {len(set(secrets))} secret value(s) known from the config were replaced by {REDACTED} "
        "in every file; secret files (password, private key) are never copied.",
        "",
        *archive.notes,
    ]
    members = {"MANIFEST.txt": "\n".join(manifest) + "\n", **archive.members}
    members = {name: scrub(text, secrets) for name, text in members.items()}
    try:
        _write(output, members, mtime_s=time.time())
    except OSError as exc:
        print(f"diag bundle: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    for line in archive.notes:
        print(f"  {line}")
    print(output.resolve())
    return EX_OK
