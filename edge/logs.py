"""Logging set-up: structured journal fields under systemd, readable lines on a terminal.

Log calls about one device pass `extra={"bed": ..., "device": ...}` (or use `device_logger`); alarm
lines add `alarm_id`. Under systemd these become the journal fields BED=, DEVICE= and ALARM_ID=, so
`journalctl -u icu-edge BED=bed-07` works; on a terminal they are appended as `[bed=bed-07 device=vent-1]`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import MutableMapping
from typing import Any

LOGGER = logging.getLogger(__name__)

STRUCTURED_FIELDS = ("bed", "device", "alarm_id")
"""Record attributes that become journal fields (upper-cased) and terminal suffixes."""

SYSLOG_IDENTIFIER = "icu-edge"

_HANDLER_NAME = "icu-edge"

PAHO_LOGGER = "edge.publisher.paho"
"""The logger paho-mqtt writes its own records to (`Client.enable_logger`)."""


def configure_logging(*, level: str = "INFO", force_journal: bool | None = None) -> None:
    """Install the root handler: journal when stderr goes to journald, else text on stderr.

    `force_journal` overrides the detection (None: detect). Calling it again replaces the handler it
    installed before and leaves other handlers alone. paho's own records show from WARNING up, and
    all of them at DEBUG.
    """
    numeric_level = logging.getLevelNamesMapping().get(level.upper())
    if numeric_level is None:
        raise ValueError(f"unknown log level {level!r}")
    use_journal = stderr_is_journal() if force_journal is None else force_journal
    handler = _journal_handler() if use_journal else _terminal_handler()
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for previous in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(previous)
        previous.close()
    # The handler checks the level again: a logger filter that demotes a record after the logger let
    # it through (the publisher's, for paho's 'Client is not connected') must not print it.
    handler.setLevel(numeric_level)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    # paho logs only DEBUG (every packet) and ERROR (socket failures, exceptions in our callbacks):
    # below DEBUG its ERRORs (and any WARNING) stay, its chatter does not.
    paho_level = numeric_level if numeric_level <= logging.DEBUG else max(numeric_level, logging.WARNING)
    logging.getLogger(PAHO_LOGGER).setLevel(paho_level)
    LOGGER.debug("logging to %s at %s", "the journal" if use_journal else "stderr", level.upper())


def stderr_is_journal(*, fd: int = 2) -> bool:
    """Tell whether `fd` is the journal stream systemd connected, per `$JOURNAL_STREAM` (dev:inode).

    Comparing device and inode, not just checking the variable, keeps a child whose stderr was
    redirected (a pipe, a file) from sending its logs to the journal by inheritance.
    """
    dev_text, _, inode_text = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        expected = (int(dev_text), int(inode_text))
        stat = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (stat.st_dev, stat.st_ino) == expected


def device_logger(logger: logging.Logger, *, bed: str, device: str) -> logging.LoggerAdapter[logging.Logger]:
    """Return an adapter that tags every record of `logger` with its bed and device."""
    return _FieldsAdapter(logger, {"bed": bed, "device": device})


class _FieldsAdapter(logging.LoggerAdapter[logging.Logger]):
    """Merge the adapter's fields with a call's own `extra` (Python 3.11 would drop the call's)."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class _UpperCaseFields(logging.Filter):
    """Copy the structured attributes to upper-case names: journald drops lower-case field names.

    JournalHandler sends every record attribute as a field under its own name, so `bed` must also
    exist as `BED` to survive.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name in STRUCTURED_FIELDS:
            if hasattr(record, name):
                setattr(record, name.upper(), getattr(record, name))
        return True


class _TerminalFormatter(logging.Formatter):
    """UTC timestamps with milliseconds, and the structured fields appended to the message line."""

    def __init__(self) -> None:
        super().__init__(
            fmt="%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
        self.converter = time.gmtime

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = " ".join(
            f"{name}={getattr(record, name)}" for name in STRUCTURED_FIELDS if hasattr(record, name)
        )
        return f"{line} [{fields}]" if fields else line


def _terminal_handler() -> logging.Handler:
    handler = logging.StreamHandler()
    handler.setFormatter(_TerminalFormatter())
    return handler


def _journal_handler() -> logging.Handler:
    # Imported here: systemd-python exists only on Linux, and only journal mode needs it.
    from systemd.journal import JournalHandler

    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
    handler.addFilter(_UpperCaseFields())
    return handler
