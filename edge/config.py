"""The appliance configuration (TOML), validated by pydantic; defaults live here and nowhere else.

Extra keys are an error: a typo in an installer's config must not be silently ignored next to a
ventilated patient. Every problem becomes one line naming the field path, what is wrong and what is
allowed (`config_errors`).

`check_config` is the one validation path: `icu-edge config check` and `icu-edge run` both call it, so
what the check accepts the daemon runs, and what the daemon would refuse or crash on the check refuses
with the same lines. Two stages: the schema (pydantic: types, ranges, driver options as the driver
judges them, unique ids and ports), then the files the config names (present, readable by this user,
TLS material that loads, secrets not readable by others). Errors stop the daemon (exit 78); warnings
are printed and logged and change nothing.
"""

from __future__ import annotations

import contextlib
import difflib
import grp
import ipaddress
import os
import pwd
import re
import ssl
import stat
import tomllib
import typing
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from drivers.plausibility import TABLE
from drivers.registry import driver_names, get_driver
from drivers.transport import PORT_FORMS, port_identity, port_problem
from drivers.vocabulary import WAVES
from edge.alarms.profile import (
    DEFAULT_LIMITS,
    DELAY_CAP_S,
    AdvisoryConfig,
    LimitOverride,
    PredictiveConfig,
    effective_limits,
    merge_limit,
)

CONFIG_VERSION: Literal[1] = 1
DEFAULT_CONFIG_PATH = Path("/etc/icu-edge/config.toml")

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Ids become MQTT topic levels: no `/`, `+`, `#`, spaces or empty strings."""
Identifier = Annotated[str, Field(pattern=_ID_PATTERN)]


def _absolute(path: Path) -> Path:
    if not path.is_absolute():
        raise ValueError("must be an absolute path (under systemd the daemon's working directory is /)")
    return path


AbsolutePath = Annotated[Path, AfterValidator(_absolute)]
"""A file or directory the config names; a relative one would be found from wherever the check ran."""

TOPIC_PREFIX_RULE = "1-8 levels of letters, digits, '_', '.', '-' joined by single '/' (e.g. icu/v1)"
_TOPIC_LEVEL = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _topic_prefix(value: str) -> str:
    """Refuse a prefix that makes the contract's topics wrong or ambiguous for a central station.

    Empty levels (`/icu`, `icu//v1`, `icu/`) shift the level a subscriber reads the bed from; `+` and `#`
    are wildcards no publisher may use; a leading `$` is the broker's own namespace ($SYS).
    """
    levels = value.split("/")
    if not 1 <= len(levels) <= 8 or not all(_TOPIC_LEVEL.fullmatch(level) for level in levels):
        raise ValueError("not a topic prefix")
    return value


_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")


def _host(value: str) -> str:
    """A host name or IP literal: a URL, a port or a space would only fail later, at every reconnect."""
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise ValueError("must be a host name or IP address, without scheme, port or path") from None
    elif not _HOST_NAME.fullmatch(value):
        raise ValueError("must be a host name or IP address, without scheme, port or path")
    return value


def _problem(loc: tuple[str | int, ...], value: object, message: str) -> InitErrorDetails:
    """One located problem for a validator that finds several at once."""
    return InitErrorDetails(
        type=PydanticCustomError("config_problem", "{message}", {"message": message}), loc=loc, input=value
    )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApplianceConfig(_Section):
    """Who this appliance is and where it stands."""

    id: Identifier
    site: Identifier
    ward: Identifier


class TlsConfig(_Section):
    """TLS to the broker; paths to PEM files readable by the service user only."""

    ca: AbsolutePath
    cert: AbsolutePath | None = None
    key: AbsolutePath | None = None
    insecure_skip_hostname_check: bool = False

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together (client certificate authentication)")
        return self


class MqttConfig(_Section):
    """The ward broker connection."""

    host: Annotated[str, AfterValidator(_host)]
    port: int = Field(default=1883, ge=1, le=65535)
    keepalive: int = Field(default=30, ge=2, le=3600, description="seconds")
    client_id: str | None = Field(default=None, description="default: icu-edge-{appliance id}")
    topic_prefix: Annotated[str, AfterValidator(_topic_prefix)] = Field(
        default="icu/v1", description=TOPIC_PREFIX_RULE
    )
    username: str | None = Field(default=None, min_length=1, max_length=256)
    password_file: AbsolutePath | None = Field(
        default=None, description="file holding the password; never inline"
    )
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
CONNECTIONS = ("port", "address", "listen")
"""How a device's data may reach the appliance (a driver says which of them it speaks)."""


def address_problem(url: str) -> str | None:
    """Return why url is no `udp://HOST:PORT` address of a networked device (None when it is)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "udp":
        return "must be udp://HOST:PORT (a monitor's LAN data export address)"
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or not 1 <= port <= 65535:
        return "udp:// needs a host and a port 1-65535 (udp://HOST:PORT)"
    if parts.path not in {"", "/"} or parts.query or parts.fragment or parts.username:
        return "udp:// takes only host:port (no path, options or user)"
    return None


def listen_problem(value: str) -> str | None:
    """Return why value is no `HOST:PORT` to listen on (None when it is); IPv6 as `[::1]:2575`."""
    parts = urllib.parse.urlsplit(f"//{value}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or not 1 <= port <= 65535 or parts.path or parts.username:
        return "must be HOST:PORT with a port 1-65535 (127.0.0.1:2575, [::1]:2575, 0.0.0.0:2575)"
    return None


def endpoint_identity(endpoint: str) -> str | None:
    """Return the name every spelling of one endpoint shares (None: nobody else can reach it)."""
    if endpoint.startswith(("udp://", "listen://")):
        scheme, _, rest = endpoint.partition("://")
        parts = urllib.parse.urlsplit(f"//{rest}")
        host = (parts.hostname or "").lower().rstrip(".")
        with contextlib.suppress(ValueError):
            host = ipaddress.ip_address(host).compressed
        return f"{scheme}://{host}:{parts.port}"
    return port_identity(endpoint)


class DeviceConfig(_Section):
    """One bedside device and where its data comes from: a port, a network address or a listener."""

    id: Identifier
    driver: str
    port: str | None = Field(default=None, min_length=1, description=PORT_FORMS)
    address: str | None = Field(
        default=None, description="udp://HOST:PORT of a networked device (IntelliVue LAN: port 24105)"
    )
    listen: str | None = Field(
        default=None, description="HOST:PORT to accept connections on (HL7 over MLLP: 127.0.0.1:2575)"
    )
    baud: int | None = Field(default=None, gt=0, le=4_000_000, description="default: the driver's")
    parity: Literal["N", "E", "O"] | None = Field(default=None, description="default: the driver's")
    options: dict[str, DriverOption] = Field(default_factory=dict, description="driver options")

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        if value not in driver_names():
            near = difflib.get_close_matches(value, driver_names(), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"unknown driver {value!r}{hint}; allowed: {', '.join(driver_names())}")
        return value

    @field_validator("port")
    @classmethod
    def _port_form(cls, value: str | None) -> str | None:
        problem = None if value is None else port_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("address")
    @classmethod
    def _address_form(cls, value: str | None) -> str | None:
        problem = None if value is None else address_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("listen")
    @classmethod
    def _listen_form(cls, value: str | None) -> str | None:
        problem = None if value is None else listen_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_connection_the_driver_speaks(self) -> DeviceConfig:
        """A device has exactly one of port, address and listen, and its driver must speak it."""
        given = [name for name in CONNECTIONS if getattr(self, name) is not None]
        allowed = sorted(get_driver(self.driver).connections)
        if len(given) != 1:
            takes = " or ".join(allowed)
            raise ValueError(
                f"give exactly one of {', '.join(CONNECTIONS)} (driver {self.driver} takes {takes})"
            )
        if given[0] not in allowed:
            raise ValueError(f"driver {self.driver} takes {' or '.join(allowed)}, not {given[0]}")
        return self

    @property
    def endpoint(self) -> str:
        """Return where the data comes from, as the device status shows it: a port, udp://, listen://."""
        if self.address is not None:
            return self.address
        if self.listen is not None:
            return f"listen://{self.listen}"
        assert self.port is not None  # _one_connection_the_driver_speaks
        return self.port

    @model_validator(mode="after")
    def _options_as_the_driver_judges_them(self) -> DeviceConfig:
        """The driver decides (names, types, ranges, finite numbers), so run never meets a bad option."""
        problems = get_driver(self.driver).check_options(self.options)
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    _problem(("options", name), self.options.get(name), text)
                    for name, text in problems.items()
                ],
            )
        return self


class BedConfig(_Section):
    """One bed and the devices at it."""

    id: Identifier
    stale_after_s: float = Field(default=10.0, gt=0, le=3600, description="a value older than this is stale")
    sources: dict[str, str] = Field(
        default_factory=dict,
        description="key -> id of the device of this bed whose value the twin shows when two report it "
        "(default: the monitor for haemodynamics, the ventilator for respiration)",
    )
    device: list[DeviceConfig] = Field(default_factory=list)
    alarm_limits: dict[str, LimitOverride] = Field(
        default_factory=dict,
        description="this bed's limit overrides per key (over the ward's [alarms.limits])",
    )
    news2_spo2_scale: Literal[1, 2] = Field(
        default=1, description="NEWS2 SpO2 scale: 2 only for a target SpO2 of 88-92 % set by a clinician"
    )

    @model_validator(mode="after")
    def _sources_name_keys_and_devices_of_this_bed(self) -> BedConfig:
        devices = [d.id for d in self.device]
        problems = []
        for key, device in self.sources.items():
            if key not in TABLE:
                near = difflib.get_close_matches(key, TABLE, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                problems.append(_problem(("sources", key), key, f"unknown key {key!r}{hint}"))
            elif device not in devices:
                problems.append(
                    _problem(
                        ("sources", key),
                        device,
                        f"bed {self.id} has no device {device!r} (its devices: {', '.join(devices) or '-'})",
                    )
                )
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self


class WavesConfig(_Section):
    """Waveforms on `R/bed/{bed}/wave/{signal}` (a device sends them when its `waves` option is on)."""

    enabled: bool = Field(default=False, description="publish waveforms (QoS 0, never stored in the outbox)")
    window_s: float = Field(default=1.0, ge=0.2, le=10, description="each message carries this many seconds")
    signals: list[str] = Field(
        default_factory=list, description=f"signals to publish (empty: all): {', '.join(WAVES)}"
    )

    @field_validator("signals")
    @classmethod
    def _known_signals(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in WAVES]
        if unknown:
            raise ValueError(f"unknown signal(s) {', '.join(unknown)}; allowed: {', '.join(WAVES)}")
        return value


class AlarmsConfig(_Section):
    """`[alarms]`: the appliance's own alarm system."""

    state_path: AbsolutePath | None = Field(
        default=None,
        description="active alarms, command results, audit and limits set by command (SQLite); "
        "default: alarms.db next to the outbox",
    )
    limits: dict[str, LimitOverride] = Field(default_factory=dict, description="ward-wide overrides per key")
    device_lost_delay_s: float = Field(
        default=2.0, ge=0, le=DELAY_CAP_S, description="a device disconnected this long is a technical alarm"
    )
    connect_grace_s: float = Field(
        default=15.0, ge=0, le=300, description="after start, how long a device may take to connect first"
    )
    no_data_s: float = Field(
        default=10.0,
        ge=1,
        le=300,
        description="a connected device that sends nothing this long: technical alarm",
    )
    invalid_value_delay_s: float = Field(
        default=10.0, ge=0, le=DELAY_CAP_S, description="a limited key without a valid value this long"
    )
    pause_default_s: float = Field(default=120.0, ge=10, le=900, description="audio pause when none is asked")
    pause_max_s: float = Field(default=300.0, ge=10, le=900, description="longest audio pause accepted")
    broker_unreachable_s: float = Field(default=30.0, ge=1, le=3600)
    clock_jump_s: float = Field(default=2.0, ge=0.5, le=3600, description="a wall-clock step this large")
    central_station_topic: str | None = Field(
        default=None,
        description='the central station\'s retained state topic ({"online": bool} or online/offline)',
    )
    predictive: PredictiveConfig = PredictiveConfig()
    news2_advisory: AdvisoryConfig = AdvisoryConfig()

    @field_validator("limits")
    @classmethod
    def _limits_usable(cls, value: dict[str, LimitOverride]) -> dict[str, LimitOverride]:
        for key, override in value.items():
            merge_limit(key=key, base=DEFAULT_LIMITS.get(key), override=override, origin="config")
        return value

    @model_validator(mode="after")
    def _pause_default_within_max(self) -> AlarmsConfig:
        if self.pause_default_s > self.pause_max_s:
            raise ValueError(
                f"pause_default_s ({self.pause_default_s:g}) exceeds pause_max_s ({self.pause_max_s:g})"
            )
        return self


class StoreConfig(_Section):
    """The durable outbox."""

    path: AbsolutePath = Path("/var/lib/icu-edge/outbox.db")
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=1024 * 1024, description="disk cap of the outbox")
    synchronous: Literal["full", "normal"] = Field(
        default="full", description="SQLite synchronous: full fsyncs every commit (survives power loss)"
    )


class HistoryConfig(_Section):
    """`[history]`: a bounded local history of each bed for `icu-edge report` (review data only)."""

    enabled: bool = Field(default=True, description="keep the history (never slows or stops the vitals)")
    path: AbsolutePath | None = Field(
        default=None, description="the history file (SQLite); default: history.db next to the outbox"
    )
    retention_h: float = Field(default=24.0, gt=0, le=24 * 90, description="rows older than this are pruned")
    max_mb: int = Field(
        default=256, ge=1, le=1_000_000, description="size cap of the file: the oldest rows go first"
    )
    sample_s: float = Field(
        default=5.0, ge=0.25, le=3600, description="one row per bed this often: the twin's valid values"
    )
    forecast_s: float = Field(
        default=60.0, ge=1, le=3600, description="at most one forecast headline per bed this often"
    )


class EnginesConfig(_Section):
    """Forecasting engines: which backend and model, and how often every bed is forecast."""

    enabled: bool = True
    backend: Literal["auto", "tensorrt", "onnxruntime"] = "auto"
    tick_s: float = Field(
        default=1.0,
        ge=0.1,
        le=60,
        description="forecast every bed this often; at least 0.1 s: the devices deliver about one value per "
        "second, and a tick shorter than one inference would keep the event loop busy with nothing new",
    )
    model: str | None = Field(default=None, description="model id or id@version; default: the default model")
    models_dir: AbsolutePath | None = Field(
        default=None, description="installed models (<id>/<version>/) searched besides the shipped ones"
    )
    cache_dir: AbsolutePath = Field(
        default=Path("/var/lib/icu-edge/engines"), description="TensorRT plan cache"
    )
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

    @model_validator(mode="after")
    def _min_not_above_max(self) -> PublishConfig:
        if self.twin_min_interval_s > self.twin_max_interval_s:
            raise ValueError(
                f"twin_min_interval_s ({self.twin_min_interval_s:g}) must not exceed "
                f"twin_max_interval_s ({self.twin_max_interval_s:g})"
            )
        return self


class AppConfig(_Section):
    """The whole configuration file."""

    config_version: Literal[1] = CONFIG_VERSION
    appliance: ApplianceConfig
    mqtt: MqttConfig
    store: StoreConfig = StoreConfig()
    engines: EnginesConfig = EnginesConfig()
    publish: PublishConfig = PublishConfig()
    waves: WavesConfig = WavesConfig()
    alarms: AlarmsConfig = AlarmsConfig()
    history: HistoryConfig = HistoryConfig()
    bed: list[BedConfig] = Field(min_length=1)

    @property
    def alarm_state_path(self) -> Path:
        """Where the alarm store lives: `[alarms] state_path`, else alarms.db next to the outbox."""
        return self.alarms.state_path or self.store.path.with_name("alarms.db")

    @property
    def history_path(self) -> Path:
        """Where the history lives: `[history] path`, else history.db next to the outbox."""
        return self.history.path or self.store.path.with_name("history.db")

    @model_validator(mode="after")
    def _one_bed_per_id_one_device_per_port(self) -> AppConfig:
        """Refuse what would let a device's data reach another bed's twin (or another device's topic).

        Ports compare by `port_identity`: symlinks resolved where they exist (`/dev/serial/by-id/...`
        and `/dev/ttyUSB0` are one port), `socket://` hosts normalised. Device ids are topic levels under
        their bed (`R/bed/{bed}/device/{device}`), so they must be unique within a bed, not across beds.
        """
        problems: list[InitErrorDetails] = []
        for i, bed in enumerate(self.bed):
            try:
                effective_limits(ward=self.alarms.limits, bed=bed.alarm_limits)
            except ValueError as exc:
                problems.append(_problem(("bed", i, "alarm_limits"), bed.alarm_limits, str(exc)))
        bed_at: dict[str, int] = {}
        port_user: dict[str, tuple[str, DeviceConfig]] = {}
        for i, bed in enumerate(self.bed):
            if bed.id in bed_at:
                problems.append(
                    _problem(
                        ("bed", i, "id"),
                        bed.id,
                        f"bed[{bed_at[bed.id]}] and bed[{i}] both have id {bed.id!r}; bed ids must be unique",
                    )
                )
            bed_at.setdefault(bed.id, i)
            device_at: dict[str, int] = {}
            for k, device in enumerate(bed.device):
                if device.id in device_at:
                    problems.append(
                        _problem(
                            ("bed", i, "device", k, "id"),
                            device.id,
                            f"bed[{i}].device[{device_at[device.id]}] and bed[{i}].device[{k}] both have id "
                            f"{device.id!r}; device ids must be unique within a bed",
                        )
                    )
                device_at.setdefault(device.id, k)
                identity = endpoint_identity(device.endpoint)
                if identity is None:
                    continue
                if identity in port_user:
                    first_bed, first = port_user[identity]
                    if first.endpoint != device.endpoint:
                        where = f"{identity} ({first.endpoint} and {device.endpoint})"
                    elif identity == device.endpoint:
                        where = device.endpoint
                    else:
                        where = f"{device.endpoint} (= {identity})"
                    field = next(name for name in CONNECTIONS if getattr(device, name) is not None)
                    problems.append(
                        _problem(
                            ("bed", i, "device", k, field),
                            getattr(device, field),
                            f"bed {first_bed} device {first.id} and bed {bed.id} device {device.id} both use "
                            f"{where}; a port carries one device to one bed",
                        )
                    )
                port_user.setdefault(identity, (bed.id, device))
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
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
    "string_pattern_mismatch": "letters, digits, '_', '.', '-' (no '/', '+', '#', spaces)",
}
_FIELD_HINTS: dict[str, str] = {"topic_prefix": TOPIC_PREFIX_RULE}


def _section_at(root: type[BaseModel], loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    """Return the section of `root` a location points into (for listing its keys), None if unknown."""
    section: type[BaseModel] = root
    named_entry = False
    for item in loc:
        if isinstance(item, int) or named_entry:  # a list index, or the name of a table's entry
            named_entry = False
            continue
        field = section.model_fields.get(item)
        if field is None:
            return None
        nested = [t for t in _flatten(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)]
        if not nested:
            return None
        section = nested[0]
        named_entry = _is_table_of_sections(field.annotation)
    return section


def _is_table_of_sections(annotation: object) -> bool:
    """A `dict[str, Section]` field (`[alarms.limits.hr]`): the location's next item is an entry's name."""
    if typing.get_origin(annotation) is dict:
        return True
    return any(_is_table_of_sections(arg) for arg in typing.get_args(annotation))


def _flatten(annotation: object) -> list[object]:
    args = typing.get_args(annotation)
    return [annotation] if not args else [t for arg in args for t in _flatten(arg)]


def _unknown_key(root: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[str, str]:
    """Return the message (with a did-you-mean) and the allowed keys of an unknown key's section."""
    section = _section_at(root, loc[:-1])
    if section is None:
        return "unknown key; remove it", ""
    keys = sorted(section.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), keys, n=1)
    return "unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""), ", ".join(keys)


def config_errors(exc: ValidationError, *, root: type[BaseModel] = AppConfig) -> list[str]:
    """Turn a validation error into one line per problem: path, what is wrong, what is allowed.

    `root` is the model that was validated (the config, or another TOML document such as provision's
    answers): an unknown key's did-you-mean and allowed keys come from its sections.
    """
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        message = re.sub(r"^Value error, ", "", error["msg"])
        field = str(error["loc"][-1]) if error["loc"] else ""
        hint = _ALLOWED_HINTS.get(error["type"]) or _FIELD_HINTS.get(field)
        if error["type"] == "string_pattern_mismatch":
            message = "invalid characters or length"
        elif error["type"] == "missing":
            message = "required, but missing"
        elif error["type"] == "extra_forbidden":
            message, hint = _unknown_key(root, error["loc"])
        # A message that already quotes the value (a validator's own) does not get it again after
        # its "allowed:" list.
        quiet = (
            error["type"] in {"missing", "config_problem", "extra_forbidden"}
            or isinstance(error["input"], dict | list)
            or repr(error["input"]) in message
        )
        got = "" if quiet else f" (got {error['input']!r})"
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


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigCheck:
    """The verdict on a config file: a config the daemon can run, or the problems that stop it."""

    config: AppConfig | None
    """None exactly when there are errors."""
    errors: tuple[str, ...]
    """One line per problem that stops the daemon: field path, what is wrong, what is allowed."""
    warnings: tuple[str, ...]
    """One line per problem the daemon runs with (a secret readable by others, a missing models_dir)."""


def check_config(path: Path) -> ConfigCheck:
    """Read and validate a config file and every file it names; never raises for a config problem."""
    try:
        document = _read_document(path)
        config = parse_config(document)
    except ConfigError as exc:
        return ConfigCheck(config=None, errors=tuple(exc.lines), warnings=())
    errors, warnings = _file_problems(config)
    return ConfigCheck(config=None if errors else config, errors=tuple(errors), warnings=tuple(warnings))


def load_config(path: Path) -> AppConfig:
    """Return the config `check_config` accepts; raise ConfigError with its error lines otherwise."""
    checked = check_config(path)
    if checked.config is None:
        raise ConfigError(list(checked.errors))
    return checked.config


def _read_document(path: Path) -> dict[str, Any]:
    """Read and parse the file; its error lines leave out `path`, which the commands print first."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text: {exc.reason} at byte {exc.start}"]) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax: {exc}"]) from exc


def read_secret(path: Path) -> str:
    """Read a secret file (password) stripped of its trailing newline; never log the result."""
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError([f"mqtt.password_file: cannot read {path}: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"mqtt.password_file: {path} is not UTF-8 text"]) from exc


# --- the files a config names ---------------------------------------------------------------------


def _file_problems(config: AppConfig) -> tuple[list[str], list[str]]:
    """Check every file the config names as the daemon will use it; return (errors, warnings)."""
    errors: list[str] = []
    warnings: list[str] = []
    mqtt = config.mqtt
    if mqtt.password_file is not None:
        _check_password_file(mqtt.password_file, errors=errors, warnings=warnings)
    if mqtt.tls is not None:
        _check_tls(mqtt.tls, errors=errors, warnings=warnings)
    models_dir = config.engines.models_dir
    if config.engines.enabled and models_dir is not None:
        problem = _directory_problem(models_dir)
        if problem is not None:
            # Forecasting is optional: the daemon runs without these models (vitals matter more).
            warnings.append(f"engines.models_dir: {problem}; forecasting will use only the shipped models")
    for i, bed in enumerate(config.bed):
        if not bed.device:
            warnings.append(f"bed[{i}]: bed {bed.id} has no device; its twin will stay empty")
        for k, device in enumerate(bed.device):
            if device.port is not None and _PLUG_ORDER_NAME.fullmatch(device.port):
                warnings.append(
                    f"bed[{i}].device[{k}].port: {device.port} is numbered in plug order, so after a replug "
                    f"or reboot it may be another bed's device; use its /dev/serial/by-id/... name"
                )
            if device.options.get("waves") is True and not config.waves.enabled:
                warnings.append(
                    f"bed[{i}].device[{k}].options.waves: the device is asked for waves, but [waves] "
                    f"enabled is false, so they are decoded and dropped; enable [waves] or drop the option"
                )
    return errors, warnings


_PLUG_ORDER_NAME = re.compile(r"/dev/tty(USB|ACM)[0-9]+")
"""Kernel names of USB serial adapters: handed out in the order the adapters appear."""


def _readable_file(field: str, path: Path, *, errors: list[str]) -> bytes | None:
    """Return the file's content, or note why this user cannot read it and return None."""
    try:
        info = path.stat()
    except OSError as exc:
        errors.append(f"{field}: {path}: {exc.strerror or exc}")
        return None
    if not stat.S_ISREG(info.st_mode):
        errors.append(f"{field}: {path} is not a regular file")
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        errors.append(f"{field}: {path}: cannot read as user {_user_name()}: {exc.strerror or exc}")
        return None


def _check_password_file(path: Path, *, errors: list[str], warnings: list[str]) -> None:
    content = _readable_file("mqtt.password_file", path, errors=errors)
    if content is None:
        return
    try:
        password = content.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        errors.append(f"mqtt.password_file: {path} is not UTF-8 text")
        return
    if not password:
        errors.append(f"mqtt.password_file: {path} is empty; allowed: the password, on one line")
    warnings.extend(_exposure_warnings("mqtt.password_file", path))


def _refuse_passphrase() -> str:
    raise ValueError("encrypted")


def _check_tls(tls: TlsConfig, *, errors: list[str], warnings: list[str]) -> None:
    """Load the TLS material the way the publisher will (paho's tls_set), so run never fails on it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if _readable_file("mqtt.tls.ca", tls.ca, errors=errors) is not None:
        try:
            context.load_verify_locations(cafile=str(tls.ca))
        except ssl.SSLError as exc:
            errors.append(f"mqtt.tls.ca: {tls.ca} holds no usable PEM certificate ({exc.reason or exc})")
        warnings.extend(_exposure_warnings("mqtt.tls.ca", tls.ca, secret=False))
    if tls.cert is None or tls.key is None:
        return
    cert_ok = _readable_file("mqtt.tls.cert", tls.cert, errors=errors) is not None
    key_ok = _readable_file("mqtt.tls.key", tls.key, errors=errors) is not None
    if key_ok:
        warnings.extend(_exposure_warnings("mqtt.tls.key", tls.key))
    if not (cert_ok and key_ok):
        return
    try:
        context.load_cert_chain(str(tls.cert), str(tls.key), password=_refuse_passphrase)
    except ValueError:
        errors.append(
            f"mqtt.tls.key: {tls.key} is encrypted; allowed: an unencrypted key protected by its file mode "
            "(the daemon has nobody to type a passphrase)"
        )
    except ssl.SSLError as exc:
        errors.append(f"mqtt.tls.cert: {tls.cert} and {tls.key} do not load as a pair ({exc.reason or exc})")


def _exposure_warnings(field: str, path: Path, *, secret: bool = True) -> list[str]:
    """Warn when someone besides the service can read a secret, or replace a trust file.

    Group access is fine when the group is the service's own (the shipped layout is `0640
    root:icu-edge`, see systemd/icu-edge.tmpfiles.conf); any other group, and everybody else, is not.
    """
    try:
        info = path.stat()
    except OSError:
        return []
    mode = stat.S_IMODE(info.st_mode)
    foreign_group = info.st_gid != os.getegid()
    group_bits = mode & 0o070 if foreign_group else 0
    read_mask, write_mask = 0o044, 0o022
    who = "others" if mode & 0o007 else f"group {_group_name(info.st_gid)}"
    fix = f"fix: chmod 600 {path} (or chmod 640 and chgrp {_group_name(os.getegid())} when root owns it)"
    exposed = (mode & 0o007) | group_bits
    if secret and exposed & read_mask:
        return [f"{field}: {path} is readable by {who} (mode {mode:04o}); {fix}"]
    if exposed & write_mask:
        return [f"{field}: {path} is writable by {who} (mode {mode:04o}); {fix}"]
    return []


def _directory_problem(path: Path) -> str | None:
    if not path.is_dir():
        return f"{path} is not a directory" if path.exists() else f"{path} does not exist"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"{path} is not readable by user {_user_name()}"
    return None


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
