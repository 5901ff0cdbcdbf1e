"""The installer's answers: read from a TOML answers file or asked one by one on a terminal.

The answers say what only the installer knows (who the appliance is, where the broker is, which
device sits at which bed); everything else keeps the defaults of edge/config.py. Names and ids are
judged once, by the config check of the config written from them, so an answer and the config it
becomes are refused with the same line.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from drivers.registry import driver_names
from edge.config import DEFAULT_CONFIG_PATH, DriverOption, config_errors

DEFAULT_EXECUTABLE = Path("/opt/icu-edge/venv/bin/icu-edge")
"""Where the shipped unit's `ExecStart=` finds the entry point (systemd/README.md)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApplianceAnswers(_Strict):
    """`[appliance]`: who this box is (the client certificate's CN is its id)."""

    id: str
    site: str
    ward: str


class BrokerAnswers(_Strict):
    """`[broker]`: the ward broker and the files that prove who the appliance is."""

    host: str
    port: int = 8883
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure_skip_hostname_check: bool = False
    username: str | None = None
    password_file: Path | None = None
    topic_prefix: str = "icu/v1"
    insecure: bool = Field(default=False, description="plaintext MQTT, no [mqtt.tls] (test benches only)")


class DeviceAnswers(_Strict):
    """`[[bed.device]]`: one device, where it is, and its driver or `probe = true`."""

    id: str
    port: str | None = Field(default=None, description="a path, or a name under /dev/serial/by-id")
    address: str | None = None
    listen: str | None = None
    driver: str | None = None
    probe: bool = Field(default=False, description="take the driver, baud and parity the probe finds")
    baud: int | None = None
    parity: Literal["N", "E", "O"] | None = None
    options: dict[str, DriverOption] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _driver_or_probe(self) -> DeviceAnswers:
        if (self.driver is None) == (not self.probe):
            raise ValueError(
                f"give driver ({', '.join(driver_names())}) or probe = true, not both or neither"
            )
        if self.probe and self.port is None:
            raise ValueError("probe = true needs the serial port to probe (port = ...)")
        return self


class BedAnswers(_Strict):
    """`[[bed]]`: a bed and the devices at it."""

    id: str
    device: list[DeviceAnswers] = Field(default_factory=list)


class PathsAnswers(_Strict):
    """`[paths]`: where things go on the box (inside `--root` when given)."""

    config: Path = DEFAULT_CONFIG_PATH
    outbox: Path = Path("/var/lib/icu-edge/outbox.db")
    engines_cache: Path = Path("/var/lib/icu-edge/engines")
    executable: Path = Field(default=DEFAULT_EXECUTABLE, description="the icu-edge the unit starts")


class EnginesAnswers(_Strict):
    """`[engines]`: whether to forecast, and on which backend."""

    enabled: bool = True
    backend: Literal["auto", "tensorrt", "onnxruntime"] = "auto"


class Answers(_Strict):
    """The whole answers file."""

    appliance: ApplianceAnswers
    broker: BrokerAnswers
    paths: PathsAnswers = PathsAnswers()
    engines: EnginesAnswers = EnginesAnswers()
    bed: list[BedAnswers] = Field(min_length=1)


class AnswersError(Exception):
    """The answers cannot be used; `lines` says why, one problem per line."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def parse_answers(document: dict[str, object]) -> Answers:
    """Validate a parsed answers document; raise AnswersError with one line per problem."""
    try:
        return Answers.model_validate(document)
    except ValidationError as exc:
        raise AnswersError(config_errors(exc, root=Answers)) from exc


def read_answers(path: Path) -> Answers:
    """Read and validate an answers file; AnswersError with one line per problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise AnswersError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise AnswersError([f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}"]) from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AnswersError([f"{path}: TOML syntax: {exc}"]) from exc
    try:
        return parse_answers(document)
    except AnswersError as exc:
        raise AnswersError([f"{path}: {line}" for line in exc.lines]) from exc


Ask = Callable[[str, str | None], str]
"""Ask one question (prompt, default shown and taken on an empty answer) and return the answer."""


def terminal_ask(prompt: str, default: str | None) -> str:
    """Ask on the terminal with input(); an empty answer takes the default; end of input is an error."""
    shown = f" [{default}]" if default else ""
    try:
        answer = input(f"{prompt}{shown}: ").strip()
    except EOFError:
        raise AnswersError([f"no answer to {prompt!r}: input ended"]) from None
    return answer or (default or "")


Probe = Callable[[str], tuple[dict[str, object], str]]
"""Probe a port: (the device fields it found: driver, baud, parity, options; empty when none), one line
saying what was found or seen."""


def ask_answers(*, ask: Ask, serial_ports: list[str], probe: Probe) -> dict[str, object]:
    """Ask the answers-file questions one by one; return the document an answers file would hold.

    Every serial port under /dev/serial/by-id is probed and offered; more ports (a pty, a path) can be
    named by hand. A port whose driver the probe cannot name asks for the driver.
    """
    appliance = {
        "id": ask("appliance id (the CN of its client certificate)", "edge-0001"),
        "site": ask("site", None),
        "ward": ask("ward", None),
    }
    broker: dict[str, object] = {"host": ask("broker host", "localhost")}
    broker["port"] = _integer(ask("broker port", "8883"), "broker port")
    ca = ask("broker CA certificate file (empty: plaintext MQTT, test benches only)", "")
    if ca:
        broker["ca"] = ca
        cert = ask("client certificate file (empty: none)", "")
        if cert:
            broker["cert"] = cert
            broker["key"] = ask("client key file", None)
    else:
        broker["insecure"] = True
    username = ask("MQTT username (empty: none)", "")
    if username:
        broker["username"] = username
        password_file = ask("MQTT password file (empty: none)", "")
        if password_file:
            broker["password_file"] = password_file
    broker["topic_prefix"] = ask("topic prefix", "icu/v1")
    beds: dict[str, list[dict[str, object]]] = {}
    candidates = list(serial_ports)
    print(f"serial ports under /dev/serial/by-id: {', '.join(candidates) or 'none'} (each is probed)")
    while True:
        port = candidates.pop(0) if candidates else ask("another serial port to probe (empty: done)", "")
        if not port:
            break
        fields, found = probe(port)
        print(f"  {port}: {found}")
        if not fields:
            driver = ask(f"  driver for {port} ({', '.join(driver_names())}; empty: skip the port)", "")
            if not driver:
                continue
            fields = {"driver": driver}
        bed = ask(f"  bed of {port} (empty: skip the port)", f"bed-{len(beds) + 1:02d}")
        if not bed:
            continue
        devices = beds.setdefault(bed, [])
        device_id = ask("  device id", f"dev-{len(devices) + 1}")
        devices.append({"id": device_id, "port": port, **fields})
    paths = {
        "config": ask("config file", str(PathsAnswers().config)),
        "outbox": ask("outbox file", str(PathsAnswers().outbox)),
        "executable": ask("icu-edge executable the unit starts", str(PathsAnswers().executable)),
    }
    return {
        "appliance": appliance,
        "broker": broker,
        "paths": paths,
        "bed": [{"id": bed, "device": devices} for bed, devices in beds.items()],
    }


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise AnswersError([f"{what}: {text!r} is not a whole number"]) from None
