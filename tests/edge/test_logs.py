"""Logging set-up: journal detection from real file descriptors, terminal lines, journal fields."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.logs import configure_logging, device_logger, stderr_is_journal

TERMINAL_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (?P<rest>.*)$")


@pytest.fixture
def restore_root_logger() -> Iterator[logging.Logger]:
    """Put the root logger's handlers and level back after the test configured it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    logging.getLogger("edge.publisher.paho").setLevel(logging.NOTSET)


def _installed_handler(root: logging.Logger) -> logging.Handler:
    (handler,) = [h for h in root.handlers if h.get_name() == "icu-edge"]
    return handler


def _stream_journal_env(monkeypatch: pytest.MonkeyPatch, path: Path) -> int:
    """Open a real file, and say (as systemd would) that it is the journal stream."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    stat = os.fstat(fd)
    monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
    return fd


def test_journal_stream_is_recognised_by_device_and_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal_fd = _stream_journal_env(monkeypatch, tmp_path / "journal")
    other_fd = os.open(tmp_path / "redirected", os.O_WRONLY | os.O_CREAT)
    try:
        assert stderr_is_journal(fd=journal_fd)
        assert not stderr_is_journal(fd=other_fd)
    finally:
        os.close(journal_fd)
        os.close(other_fd)


@pytest.mark.parametrize("value", [None, "", "garbage", "12:", ":34", "1:2:3"])
def test_missing_or_malformed_journal_stream_means_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    else:
        monkeypatch.setenv("JOURNAL_STREAM", value)
    fd = os.open(tmp_path / "stderr", os.O_WRONLY | os.O_CREAT)
    try:
        assert not stderr_is_journal(fd=fd)
    finally:
        os.close(fd)


def test_closed_descriptor_is_not_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fd = _stream_journal_env(monkeypatch, tmp_path / "journal")
    os.close(fd)
    assert not stderr_is_journal(fd=fd)


def test_configure_logging_detects_the_journal_on_stderr(
    monkeypatch: pytest.MonkeyPatch, restore_root_logger: logging.Logger
) -> None:
    stat = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
    configure_logging()
    assert type(_installed_handler(restore_root_logger)).__name__ == "JournalHandler"

    monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino + 1}")
    configure_logging()
    assert type(_installed_handler(restore_root_logger)) is logging.StreamHandler


def test_terminal_lines_carry_time_level_logger_and_fields(
    capsys: pytest.CaptureFixture[str], restore_root_logger: logging.Logger
) -> None:
    configure_logging(level="debug", force_journal=False)
    logger = logging.getLogger("drivers.medibus")
    logger.info("connected at %d baud", 19200, extra={"bed": "bed-07", "device": "vent-1"})
    device_logger(logger, bed="bed-07", device="vent-1").debug("frame resync")
    logger.warning("outbox at %d%%", 91)

    lines = capsys.readouterr().err.splitlines()
    rests = [match.group("rest") for line in lines if (match := TERMINAL_LINE.match(line))]
    assert len(rests) == len(lines)
    rests = [rest for rest in rests if "drivers.medibus" in rest]
    assert rests == [
        "INFO drivers.medibus: connected at 19200 baud [bed=bed-07 device=vent-1]",
        "DEBUG drivers.medibus: frame resync [bed=bed-07 device=vent-1]",
        "WARNING drivers.medibus: outbox at 91%",
    ]


def test_configure_logging_replaces_only_its_own_handler(restore_root_logger: logging.Logger) -> None:
    configure_logging(force_journal=False)
    configure_logging(force_journal=False)
    assert len([h for h in restore_root_logger.handlers if h.get_name() == "icu-edge"]) == 1


def test_unknown_level_is_refused(restore_root_logger: logging.Logger) -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging(level="chatty", force_journal=False)


def test_device_logger_keeps_a_calls_own_extra(
    capsys: pytest.CaptureFixture[str], restore_root_logger: logging.Logger
) -> None:
    configure_logging(force_journal=False)
    device_logger(logging.getLogger("edge.twin"), bed="bed-07", device="vent-1").warning(
        "late frame", extra={"device": "vent-2"}
    )
    assert capsys.readouterr().err.rstrip().endswith("late frame [bed=bed-07 device=vent-2]")


def test_journal_fields_include_bed_device_and_identifier(restore_root_logger: logging.Logger) -> None:
    """Capture what the JournalHandler would send to journald.

    No journald runs in the test environment, so the handler's sender is replaced by a function that
    records its arguments; everything up to that call (field mapping, filter) is the real code.
    """
    sent: list[tuple[str, dict[str, Any]]] = []

    def capture(MESSAGE: str, **fields: Any) -> None:  # journal.send's own parameter name
        sent.append((MESSAGE, fields))

    configure_logging(force_journal=True)
    handler = _installed_handler(restore_root_logger)
    handler.send = capture  # type: ignore[attr-defined]
    device_logger(logging.getLogger("drivers.medibus"), bed="bed-07", device="vent-1").error(
        "no answer for %.1f s", 4.0
    )

    ((message, fields),) = sent
    assert message == "no answer for 4.0 s"
    assert fields["BED"] == "bed-07"
    assert fields["DEVICE"] == "vent-1"
    assert fields["SYSLOG_IDENTIFIER"] == "icu-edge"
    assert fields["PRIORITY"] == "3"
    assert fields["LOGGER"] == "drivers.medibus"


class _DemoteToDebug(logging.Filter):
    """What the publisher does to paho's 'Client is not connected' ERROR: a logger filter demotes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def test_paho_chatter_stays_out_of_the_default_output_and_its_errors_stay_in(
    capsys: pytest.CaptureFixture[str], restore_root_logger: logging.Logger
) -> None:
    paho = logging.getLogger("edge.publisher.paho")
    demote = _DemoteToDebug()
    configure_logging(force_journal=False)
    paho.debug("Sending PUBLISH (d0, q1, r0, m1)")
    paho.info("a paho notice")
    paho.error("failed to receive on socket: reset")
    paho.addFilter(demote)
    try:
        paho.error("Client is not connected")
        logging.getLogger("edge.publisher").info("our own line")
        default_lines = capsys.readouterr().err.splitlines()
        configure_logging(level="DEBUG", force_journal=False)
        paho.error("Client is not connected")
        debug_lines = capsys.readouterr().err.splitlines()
    finally:
        paho.removeFilter(demote)
    assert [line.split(" ", 1)[1] for line in default_lines] == [
        "ERROR edge.publisher.paho: failed to receive on socket: reset",
        "INFO edge.publisher: our own line",
    ]
    assert [line.split(" ", 1)[1] for line in debug_lines if "paho" in line] == [
        "DEBUG edge.publisher.paho: Client is not connected"
    ]


REPO_ROOT = Path(__file__).resolve().parents[2]
NOT_CONNECTED = "Client is not connected"


def _closed_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _daemon_output(tmp_path: Path, *, log_level: str | None, until: str, timeout_s: float) -> str:
    """Run `icu-edge run` against a broker that is down until `until` shows (or the time-out); its output."""
    config = tmp_path / f"config-{log_level}.toml"
    config.write_text(
        f"""
[appliance]
id = "edge-0001"
site = "hosp-a"
ward = "icu-3"

[mqtt]
host = "127.0.0.1"
port = {_closed_loopback_port()}
insecure = true

[store]
path = "{tmp_path / f"outbox-{log_level}.db"}"

[engines]
enabled = false

[[bed]]
id = "b1"

[[bed.device]]
id = "vent-1"
driver = "medibus"
port = "{tmp_path / "vent-1"}"
""",
        encoding="utf-8",
    )
    output = tmp_path / f"daemon-{log_level}.log"
    level = [] if log_level is None else ["--log-level", log_level]
    with output.open("wb") as sink:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "run", "--config", str(config), *level],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while until not in output.read_text(encoding="utf-8") and time.monotonic() < deadline:
            assert daemon.poll() is None, output.read_text(encoding="utf-8")
            time.sleep(0.1)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    return output.read_text(encoding="utf-8")


def test_a_daemon_whose_broker_is_down_prints_no_paho_chatter_at_the_default_level(tmp_path: Path) -> None:
    debug = _daemon_output(tmp_path, log_level="DEBUG", until=NOT_CONNECTED, timeout_s=30)
    assert NOT_CONNECTED in debug, f"paho never said it at DEBUG either: the test proves nothing\n{debug}"
    seen_after_s = 3 * 2.0  # paho says it every second or two while the broker is down: three times that
    default = _daemon_output(tmp_path, log_level=None, until="never printed", timeout_s=seen_after_s)
    assert "cannot connect to the broker" in default, default
    assert NOT_CONNECTED not in default, default
    assert " DEBUG " not in default, default
