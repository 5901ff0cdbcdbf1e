"""The appliance configuration (TOML), validated by pydantic; defaults live here and nowhere else.

Extra keys are an error: a typo in an installer's config must not be silently ignored next to a
ventilated patient. Every problem becomes one line naming the field path, what is wrong and what is
allowed (`config_errors`).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from drivers.registry import driver_names, get_driver

CONFIG_VERSION: Literal[1] = 1
DEFAULT_CONFIG_PATH = Path("/etc/icu-edge/config.toml")

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Ids become MQTT topic levels: no `/`, `+`, `#`, spaces or empty strings."""
Identifier = Annotated[str, Field(pattern=_ID_PATTERN)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApplianceConfig(_Section):
    """Who this appliance is and where it stands."""

    id: Identifier
    site: Identifier
    ward: Identifier


class TlsConfig(_Section):
    """TLS to the broker; paths to PEM files readable by the service user only."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None
    insecure_skip_hostname_check: bool = False

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together (client certificate authentication)")
        return self


class MqttConfig(_Section):
    """The ward broker connection."""

    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    keepalive: int = Field(default=30, ge=2, le=3600, description="seconds")
    client_id: str | None = Field(default=None, description="default: icu-edge-{appliance id}")
    topic_prefix: str = Field(default="icu/v1", pattern=r"^[^#+\s]+[^/#+\s]$")
    username: str | None = None
    password_file: Path | None = Field(default=None, description="file holding the password; never inline")
    tls: TlsConfig | None = None
    insecure: bool = Field(
        default=False,
        description="allow plaintext MQTT (no [mqtt.tls]): patient data and credentials cross the network "
        "unencrypted; loudly logged at every start",
    )
    reconnect_min_s: float = Field(default=0.5, gt=0, le=60)
    reconnect_max_s: float = Field(default=10.0, gt=0, le=600)

    @model_validator(mode="after")
    def _password_needs_user(self) -> MqttConfig:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        if self.tls is None and not self.insecure:
            raise ValueError(
                "no [mqtt.tls] section: plaintext MQTT needs `insecure = true` "
                "(patient data would cross the network unencrypted)"
            )
        if self.tls is not None and self.insecure:
            raise ValueError("insecure = true contradicts [mqtt.tls]: remove one of them")
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not exceed reconnect_max_s")
        return self


DriverOption = bool | int | float | str


class DeviceConfig(_Section):
    """One bedside device and the port it is cabled to."""

    id: Identifier
    driver: str
    port: str = Field(
        min_length=1,
        description="device path (/dev/serial/by-id/...), socket://host:port, or loop://",
    )
    baud: int | None = Field(default=None, gt=0, le=4_000_000, description="default: the driver's")
    parity: Literal["N", "E", "O"] | None = Field(default=None, description="default: the driver's")
    options: dict[str, DriverOption] = Field(default_factory=dict, description="driver options")

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if value not in driver_names():
            raise ValueError(f"unknown driver {value!r}; allowed: {', '.join(driver_names())}")
        return value

    @model_validator(mode="after")
    def _known_options(self) -> DeviceConfig:
        allowed = get_driver(self.driver).option_names
        unknown = sorted(set(self.options) - allowed)
        if unknown:
            raise ValueError(
                f"unknown {self.driver} option(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(sorted(allowed)) or 'none'}"
            )
        return self


class BedConfig(_Section):
    """One bed and the devices at it."""

    id: Identifier
    stale_after_s: float = Field(default=10.0, gt=0, le=3600, description="a value older than this is stale")
    device: list[DeviceConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_devices(self) -> BedConfig:
        ids = [d.id for d in self.device]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"device ids must be unique within a bed; repeated: {', '.join(duplicates)}")
        return self


class StoreConfig(_Section):
    """The durable outbox."""

    path: Path = Path("/var/lib/icu-edge/outbox.db")
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024, description="disk cap of the outbox")
    synchronous: Literal["full", "normal"] = Field(
        default="full", description="SQLite synchronous: full fsyncs every commit (survives power loss)"
    )


class EnginesConfig(_Section):
    """Forecasting engines (see DESIGN.md, Engines)."""

    enabled: bool = True
    backend: Literal["auto", "tensorrt", "onnxruntime"] = "auto"
    tick_s: float = Field(default=1.0, gt=0, le=60, description="forecast every bed this often")
    model: str | None = Field(default=None, description="model id or id@version; default: the default model")
    models_dir: Path | None = Field(
        default=None, description="installed models (<id>/<version>/) searched besides the shipped ones"
    )
    cache_dir: Path = Field(default=Path("/var/lib/icu-edge/engines"), description="TensorRT plan cache")
    reload_check_s: float = Field(
        default=30.0, ge=1, le=3600, description="look for a new model version this often (also on SIGHUP)"
    )
    load_timeout_s: float = Field(
        default=600.0,
        ge=1,
        le=7200,
        description="a TensorRT build or load taking longer is abandoned; the model runs on onnxruntime",
    )


class PublishConfig(_Section):
    """How often and how the twin is published."""

    twin_min_interval_s: float = Field(default=0.25, ge=0.05, le=60, description="twin coalescing period")
    twin_max_interval_s: float = Field(
        default=5.0, ge=0.25, le=600, description="republish the twin at least this often (ages, staleness)"
    )
    device_status_interval_s: float = Field(default=5.0, ge=0.5, le=600)
    shutdown_flush_s: float = Field(default=5.0, ge=0, le=60, description="SIGTERM: wait this long for acks")


class AppConfig(_Section):
    """The whole configuration file."""

    config_version: Literal[1] = CONFIG_VERSION
    appliance: ApplianceConfig
    mqtt: MqttConfig
    store: StoreConfig = StoreConfig()
    engines: EnginesConfig = EnginesConfig()
    publish: PublishConfig = PublishConfig()
    bed: list[BedConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_beds(self) -> AppConfig:
        ids = [b.id for b in self.bed]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"bed ids must be unique; repeated: {', '.join(duplicates)}")
        return self


class ConfigError(Exception):
    """The configuration cannot be used; `lines` says why, one problem per line."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _location(error: ErrorDetails) -> str:
    parts: list[str] = []
    for item in error["loc"]:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts) or "(top level)"


_ALLOWED_HINTS: dict[str, str] = {
    "extra_forbidden": "remove it; allowed keys are listed in DESIGN.md 'Configuration'",
    "string_pattern_mismatch": "letters, digits, '_', '.', '-' (no '/', '+', '#', spaces)",
}


def config_errors(exc: ValidationError) -> list[str]:
    """Turn a validation error into one line per problem: path, what is wrong, what is allowed."""
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        message = re.sub(r"^Value error, ", "", error["msg"])
        hint = _ALLOWED_HINTS.get(error["type"])
        if error["type"] == "string_pattern_mismatch":
            message = "invalid characters or length"
        elif error["type"] == "missing":
            message = "required, but missing"
        got = "" if error["type"] in {"missing"} else f" (got {error['input']!r})"
        if isinstance(error["input"], dict | list):
            got = ""
        line = f"{_location(error)}: {message}{got}"
        if hint:
            line += f"; allowed: {hint}"
        lines.append(line)
    return lines


def parse_config(document: dict[str, Any]) -> AppConfig:
    """Validate a parsed TOML document; raise ConfigError with one line per problem."""
    try:
        return AppConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(config_errors(exc)) from exc


def load_config(path: Path) -> AppConfig:
    """Read and validate a TOML config file; raise ConfigError with one line per problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}"]) from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax: {exc}"]) from exc
    return parse_config(document)


def read_secret(path: Path) -> str:
    """Read a secret file (password) stripped of its trailing newline; never log the result."""
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError([f"mqtt.password_file: cannot read {path}: {exc.strerror or exc}"]) from exc
