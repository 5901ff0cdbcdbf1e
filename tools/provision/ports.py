"""Serial ports: the stable names under /dev/serial/by-id, and what a probe finds on a port.

A config names a USB adapter by its by-id link, never by /dev/ttyUSBn (handed out in plug order, so
after a replug it may be another bed's device). The probe itself lives with the drivers
(`drivers.probe`): it opens the port exclusively, so a port the running daemon holds is reported busy,
never shared.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from drivers.registry import driver_names, get_driver

BY_ID = Path("/dev/serial/by-id")


def serial_ports(*, by_id: Path = BY_ID) -> list[tuple[str, str]]:
    """Return (by-id path, device node it points at) for every serial port the kernel names by id."""
    try:
        names = sorted(os.listdir(by_id))
    except OSError:
        return []
    return [(str(by_id / name), os.path.realpath(by_id / name)) for name in names]


def resolve_port(port: str, *, by_id: Path = BY_ID) -> str:
    """Return the port as the config names it: a bare by-id name becomes its /dev/serial/by-id path."""
    if "/" in port or "://" in port:
        return port
    return str(by_id / port)


def port_missing(port: str) -> str | None:
    """Say why a device path is not there (None when it is, or when the port is not a path)."""
    if not port.startswith("/"):
        return None
    if os.path.exists(port):
        return None
    if os.path.islink(port):
        return f"{port} points at {os.readlink(port)}, which does not exist (unplugged?)"
    return f"{port} does not exist (unplugged? the serial ports here: {_known_ports()})"


def _known_ports() -> str:
    return ", ".join(path for path, _ in serial_ports()) or f"none under {BY_ID}"


def _driver_of(protocol: str) -> str | None:
    """Map what the probe names (a driver name, or a driver's protocol name) to a driver name."""
    if protocol in driver_names():
        return protocol
    for name in driver_names():
        if get_driver(name).protocol.lower() == protocol.lower():
            return name
    return None


def _option_value(text: str) -> bool | int | float | str:
    """Type a probed driver option as a config value (the probe reports them as text)."""
    if text in {"true", "false"}:
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def probe_device(port: str, *, deadline_s: float) -> tuple[dict[str, object], str]:
    """Probe port; return (driver, baud, parity and options as config fields; empty when none), a line.

    The line names the protocol and the device, or says exactly what the probe saw instead.
    """
    try:
        probe = importlib.import_module("drivers.probe")
    except ImportError:
        return {}, "no probe in this install (drivers.probe is missing): name the driver"
    result = probe.probe_port(port, deadline_s=deadline_s)
    driver = _driver_of(result.protocol) if result.protocol else None
    if driver is None and result.saw.startswith(probe.BUSY_PREFIX):
        return {}, f"{result.saw} (is the daemon running? stop it first: systemctl stop icu-edge)"
    if driver is None:
        return {}, f"nothing identified in {result.elapsed_s:.1f} s: {result.saw}"
    fields: dict[str, object] = {"driver": driver}
    if result.baud is not None:
        fields["baud"] = result.baud
    if result.parity is not None:
        fields["parity"] = result.parity
    if result.options:
        fields["options"] = {name: _option_value(value) for name, value in result.options.items()}
    model = result.device or "(model not reported)"
    line = f"{driver} {model}, found in {result.elapsed_s:.1f} s ({result.saw})"
    return fields, line
