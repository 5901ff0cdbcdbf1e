"""`icu-edge diag ports`: every serial port, its stable by-id name, its USB identity, and who holds it.

Sources, all read-only: the device nodes (`/dev/ttyS*`, `ttyUSB*`, `ttyACM*`, `ttyAMA*`, `ttyTHS*`),
the `/dev/serial/by-id` links (the name a config should use: it survives a re-plug), sysfs for the
USB vendor, product and serial number, `/proc/*/fd` for the processes that have a port open, and
`/proc/locks` for the one that holds its lock (the daemon locks every port it reads; that file is
readable by everyone). A process whose fds this user may not read leaves the answer "unknown (no
permission)" rather than a "no" that could be wrong. A `ttyS` node with no UART behind it (sysfs
`type` 0, as most of the 32 legacy ones are) is left out unless `--all`.

Threads: none.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

HELP = "list serial ports: by-id name, USB vendor/product/serial, and which process holds each"
DESCRIPTION = (
    "List every serial port (/dev/ttyS*, ttyUSB*, ttyACM*, ttyAMA*, ttyTHS*), the /dev/serial/by-id "
    "name that survives a re-plug (use it as the device's port in the config), the USB vendor, product "
    "and serial number from sysfs, and whether a process (the daemon or anyone else) holds it open. "
    "Reads only; opens no port."
)

PORT_GLOBS = ("ttyS*", "ttyUSB*", "ttyACM*", "ttyAMA*", "ttyTHS*")
"""Device nodes under the dev root that are serial ports (ttyTHS: Jetson's UARTs)."""
BY_ID = "serial/by-id"
UNKNOWN_NO_PERMISSION = "unknown (no permission)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Holder:
    """A process with the port open."""

    pid: int
    command: str
    locked: bool = False
    """It holds the port's flock, as the daemon (and `icu-edge record`) do on every port they read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UsbIdentity:
    """What the USB device behind a port says about itself (sysfs)."""

    vendor_id: str | None = None
    product_id: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    serial: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PortInfo:
    """One serial port as `diag ports` shows it."""

    path: str
    """The device node (a link given with --also stays as given; `device` is where it points)."""
    device: str
    """The node with symlinks resolved."""
    by_id: tuple[str, ...] = ()
    """Its /dev/serial/by-id names."""
    kernel_driver: str | None = None
    usb: UsbIdentity | None = None
    held: str = "no"
    """`yes`, `no`, or `unknown (no permission)`."""
    holders: tuple[Holder, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True, kw_only=True)
class Roots:
    """Where the tables live: /dev, /sys, /proc (elsewhere in tests)."""

    dev: Path = Path("/dev")
    sys: Path = Path("/sys")
    proc: Path = Path("/proc")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip() or None
    except OSError:
        return None


def _is_uart(name: str, roots: Roots) -> bool:
    """A ttyS node with a UART behind it (sysfs type not 0); other nodes always count."""
    if not name.startswith("ttyS"):
        return True
    kind = _read(roots.sys / "class/tty" / name / "type")
    return kind is None or kind != "0"


def _usb_identity(name: str, roots: Roots) -> tuple[str | None, UsbIdentity | None]:
    """The kernel driver of the tty and, where a USB device is behind it, that device's identity."""
    device = roots.sys / "class/tty" / name / "device"
    driver_link = device / "driver"
    driver = os.path.basename(os.readlink(driver_link)) if driver_link.is_symlink() else None
    try:
        node = device.resolve(strict=True)
    except OSError:
        return driver, None
    for parent in (node, *node.parents):
        if (parent / "idVendor").exists():
            return driver, UsbIdentity(
                vendor_id=_read(parent / "idVendor"),
                product_id=_read(parent / "idProduct"),
                manufacturer=_read(parent / "manufacturer"),
                product=_read(parent / "product"),
                serial=_read(parent / "serial"),
            )
        if parent == roots.sys or parent == parent.parent:
            break
    return driver, None


@dataclass(slots=True, kw_only=True)
class OpenFiles:
    """Which process has which device node open or locked, and how many processes we could not look into."""

    by_device: dict[str, list[Holder]] = field(default_factory=dict)
    locks: dict[tuple[int, int, int], list[int]] = field(default_factory=dict)
    """(filesystem major, minor, inode) of a locked file -> pids holding a FLOCK on it."""
    hidden_processes: int = 0
    proc: Path = Path("/proc")


def scan_locks(proc: Path = Path("/proc")) -> dict[tuple[int, int, int], list[int]]:
    """Read /proc/locks: which pids hold a FLOCK on which file (`MAJ:MIN:INODE`, hex device numbers)."""
    locks: dict[tuple[int, int, int], list[int]] = {}
    try:
        text = (proc / "locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return locks
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[0] == "->":
            continue
        try:
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            pid = int(fields[4])
        except ValueError:
            continue
        locks.setdefault(key, []).append(pid)
    return locks


def scan_open_files(proc: Path = Path("/proc")) -> OpenFiles:
    """Read every /proc/PID/fd link this user may read; count the processes it may not."""
    found = OpenFiles(locks=scan_locks(proc), proc=proc)
    try:
        entries = [entry for entry in os.listdir(proc) if entry.isdigit()]
    except OSError:
        found.hidden_processes = 1
        return found
    for entry in entries:
        fd_dir = proc / entry / "fd"
        try:
            fds = os.listdir(fd_dir)
        except PermissionError:
            found.hidden_processes += 1
            continue
        except OSError:
            continue
        targets = set()
        for fd in fds:
            try:
                targets.add(os.readlink(fd_dir / fd))
            except OSError:
                continue
        if not targets:
            continue
        holder = Holder(pid=int(entry), command=_command(proc / entry))
        for target in targets:
            found.by_device.setdefault(target, []).append(holder)
    return found


def _command(process: Path) -> str:
    """The process's command line, shortened; its name when the command line is empty."""
    raw = b""
    with contextlib.suppress(OSError):
        raw = (process / "cmdline").read_bytes()
    if raw:
        text = " ".join(part for part in raw.decode("utf-8", "replace").split("\0") if part)
        return text if len(text) <= 120 else text[:117] + "..."
    return _read(process / "comm") or "?"


def holders_of(path: str, *, open_files: OpenFiles) -> tuple[str, tuple[Holder, ...]]:
    """Whether a port is held (`yes`/`no`/unknown) and by which processes, this one excluded."""
    device = os.path.realpath(path)
    lockers: set[int] = set()
    try:
        node = os.stat(device)
        lockers = set(open_files.locks.get((os.major(node.st_dev), os.minor(node.st_dev), node.st_ino), []))
    except OSError:
        pass
    holders = [
        Holder(pid=h.pid, command=h.command, locked=h.pid in lockers)
        for h in open_files.by_device.get(device, [])
        if h.pid != os.getpid()
    ]
    known = {h.pid for h in holders}
    for pid in sorted(lockers - known - {os.getpid()}):
        holders.append(Holder(pid=pid, command=_command(open_files.proc / str(pid)), locked=True))
    if holders:
        return "yes", tuple(holders)
    return (UNKNOWN_NO_PERMISSION if open_files.hidden_processes else "no"), ()


def _by_id_names(roots: Roots) -> dict[str, list[str]]:
    """Resolved device node -> its by-id link paths."""
    names: dict[str, list[str]] = {}
    for link in sorted(glob.glob(str(roots.dev / BY_ID / "*"))):
        names.setdefault(os.path.realpath(link), []).append(link)
    return names


def list_ports(
    *,
    roots: Roots = Roots(),
    also: Sequence[str] = (),
    everything: bool = False,
    open_files: OpenFiles | None = None,
) -> list[PortInfo]:
    """Every serial port under roots.dev, plus the paths or globs in `also`, with identity and holders."""
    files = open_files if open_files is not None else scan_open_files(roots.proc)
    by_id = _by_id_names(roots)
    paths: list[str] = []
    for pattern in PORT_GLOBS:
        for node in sorted(glob.glob(str(roots.dev / pattern))):
            if everything or _is_uart(os.path.basename(node), roots):
                paths.append(node)
    for link in by_id.values():
        paths.extend(link)
    paths.extend(_expand(also))
    ports: dict[str, PortInfo] = {}
    for path in paths:
        device = os.path.realpath(path)
        if device in ports or not _is_char_device(device):
            continue
        driver, usb = _usb_identity(os.path.basename(device), roots)
        held, holders = holders_of(device, open_files=files)
        ports[device] = PortInfo(
            path=path if path not in by_id.get(device, []) else device,
            device=device,
            by_id=tuple(by_id.get(device, [])),
            kernel_driver=driver,
            usb=usb,
            held=held,
            holders=holders,
        )
    return list(ports.values())


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _expand(patterns: Iterable[str]) -> list[str]:
    out: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        out.extend(matches)
    return out


def describe_holder(holder: Holder) -> str:
    """`pid 123 (icu-edge run ...) [locked]`."""
    return f"pid {holder.pid} ({holder.command})" + (" [locked]" if holder.locked else "")


def describe(port: PortInfo) -> list[str]:
    """The port as a few indented text lines."""
    head = port.path if port.path == port.device else f"{port.path} -> {port.device}"
    lines = [head]
    for name in port.by_id:
        lines.append(f"    by-id:  {name}")
    if port.usb is not None:
        usb = port.usb
        ids = f"{usb.vendor_id or '?'}:{usb.product_id or '?'}"
        words = " ".join(w for w in (usb.manufacturer, usb.product) if w)
        serial = f" serial {usb.serial}" if usb.serial else ""
        lines.append(f"    usb:    {ids} {words}{serial}".rstrip())
    if port.kernel_driver:
        lines.append(f"    driver: {port.kernel_driver}")
    holders = ", ".join(describe_holder(h) for h in port.holders)
    lines.append(f"    held:   {port.held}{': ' + holders if holders else ''}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `diag ports`."""
    parser.add_argument("--json", action="store_true", help="print one JSON array instead of text")
    parser.add_argument(
        "--all", action="store_true", help="include ttyS nodes with no UART behind them (default: left out)"
    )
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="PATH|GLOB",
        help="also list these paths or globs (a pty link, a port under another name); repeatable",
    )
    parser.add_argument(
        "--dev-root", type=Path, default=Path("/dev"), help="where device nodes are (default: /dev)"
    )
    parser.add_argument("--sys-root", type=Path, default=Path("/sys"), help="where sysfs is (default: /sys)")


def run(args: argparse.Namespace) -> int:
    """List the ports; exit 0 (an empty list too: that is an answer)."""
    roots = Roots(dev=args.dev_root, sys=args.sys_root)
    ports = list_ports(roots=roots, also=args.also, everything=args.all)
    if args.json:
        print(json.dumps([asdict(port) for port in ports], indent=2))
        return 0
    if not ports:
        print(f"no serial ports under {roots.dev}")
        return 0
    for port in ports:
        print("\n".join(describe(port)))
    return 0
