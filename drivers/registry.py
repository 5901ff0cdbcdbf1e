"""Lazy name registry of drivers: config names a driver, the registry imports it only when used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from drivers.base import DeviceSession, SerialSettings
from drivers.vocabulary import DeviceKind

_DRIVERS: dict[str, str] = {
    "medibus": "drivers.medibus.session:DRIVER",
    "intellivue": "drivers.intellivue.session:DRIVER",
    "datex": "drivers.datex.session:DRIVER",
    "hl7": "drivers.hl7.session:DRIVER",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverInfo:
    """What the core needs to run a driver: its line defaults and a session factory."""

    name: str
    protocol: str
    """Protocol name as reported on the device status topic."""
    default_line: SerialSettings
    create_session: Callable[[Mapping[str, object]], DeviceSession]
    """Build a session from the device's driver options (already passed `check_options`)."""
    check_options: Callable[[Mapping[str, object]], dict[str, str]]
    """Return one problem per bad option (name -> what is wrong and what is allowed): unknown names,
    types, ranges, non-finite numbers. Empty means `create_session` accepts the options. The config
    check calls it, so `config check` and `run` refuse the same options."""
    device_kind: DeviceKind
    """What the driver talks to: the default source precedence of a bed's twin follows it."""
    connections: frozenset[str] = frozenset({"port"})
    """How the device's data may arrive: `port` (serial or socket://), `address` (udp://), `listen`."""
    option_names: frozenset[str] = frozenset()
    """Driver options the config may set under the device (anything else is a config error)."""


def driver_names() -> list[str]:
    """Return the names a config may use in `driver =`."""
    return sorted(_DRIVERS)


def get_driver(name: str) -> DriverInfo:
    """Import and return the driver registered under name; KeyError for an unknown name."""
    target = _DRIVERS[name]
    module_name, _, attribute = target.partition(":")
    info = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(info, DriverInfo):
        raise TypeError(f"{target} is not a DriverInfo")
    return info
