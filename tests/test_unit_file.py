"""The systemd unit keeps the directives the daemon relies on and its hardening figure."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "icu-edge.service"
MAX_EXPOSURE = 2.5


def _directives(path: Path) -> dict[tuple[str, str], list[str]]:
    """Parse a unit file into (section, key) -> values, keeping repeated keys (configparser cannot)."""
    directives: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        directives.setdefault((section, key.strip()), []).append(value.strip())
    return directives


def _one(directives: dict[tuple[str, str], list[str]], key: str) -> str:
    (value,) = directives[("Service", key)]
    return value


def test_unit_declares_what_the_daemon_relies_on() -> None:
    service = _directives(UNIT)
    assert _one(service, "Type") == "notify"
    assert _one(service, "NotifyAccess") == "main"
    assert _one(service, "WatchdogSec") == "10"
    assert _one(service, "Restart") == "on-failure"
    assert "78" in _one(service, "RestartPreventExitStatus").split()
    assert _one(service, "User") == "icu-edge"
    assert "dialout" in _one(service, "SupplementaryGroups").split()
    assert _one(service, "StateDirectory") == "icu-edge"
    assert _one(service, "ExecStart").endswith(" run --config /etc/icu-edge/config.toml")


def test_unit_allows_exactly_the_serial_devices() -> None:
    service = _directives(UNIT)
    assert _one(service, "DevicePolicy") == "closed"
    assert sorted(service[("Service", "DeviceAllow")]) == ["char-ttyACM rw", "char-ttyS rw", "char-ttyUSB rw"]


def test_unit_exposure_is_at_most_the_agreed_figure() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not available: install systemd to check the hardening figure")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for icu-edge\.service: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


GPU_DROP_IN = UNIT.parent / "icu-edge.service.d" / "gpu.conf"
GPU_DEVICES = {
    # desktop and data-centre driver
    "char-nvidia-frontend",
    "char-nvidia-uvm",
    "/dev/nvidiactl",
    "/dev/nvidia0",
    "/dev/nvidia-uvm",
    # Jetson
    "char-nvhost-*",
    "char-nvgpu*",
    "/dev/nvmap",
    "/dev/nvhost-ctrl-gpu",
}


def test_gpu_drop_in_allows_the_jetson_and_desktop_devices_and_what_cuda_needs() -> None:
    drop_in = _directives(GPU_DROP_IN)
    assert set(drop_in) <= {
        ("Service", key) for key in ("DeviceAllow", "MemoryDenyWriteExecute", "ProcSubset")
    }
    allowed = dict(value.split() for value in drop_in[("Service", "DeviceAllow")])
    assert set(allowed) >= GPU_DEVICES, sorted(allowed)
    assert all(access in {"r", "rw"} for access in allowed.values()), allowed
    assert _one(drop_in, "MemoryDenyWriteExecute") == "no"
    assert _one(drop_in, "ProcSubset") == "all"
    # The drop-in adds to the base unit's device list; it never opens the device policy.
    assert ("Service", "DevicePolicy") not in drop_in


def test_unit_with_the_gpu_drop_in_keeps_the_agreed_exposure(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not available: install systemd to check the hardening figure")
    units = tmp_path / "etc/systemd/system"
    (units / "icu-edge.service.d").mkdir(parents=True)
    shutil.copy(UNIT, units / "icu-edge.service")
    shutil.copy(GPU_DROP_IN, units / "icu-edge.service.d" / "gpu.conf")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", f"--root={tmp_path}", "icu-edge.service"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    # The drop-in was read: its relaxations show, and every GPU device is in the unit's device ACL.
    assert re.search(r"✗ MemoryDenyWriteExecute=", result.stdout), result.stdout + result.stderr
    acl = re.search(
        r"DeviceAllow=\s+Service has a device ACL with some special devices: (.*?)\s+\d\.\d", result.stdout
    )
    assert acl is not None, result.stdout
    assert {entry.rsplit(":", 1)[0] for entry in acl.group(1).split()} >= GPU_DEVICES
    match = re.search(r"Overall exposure level for icu-edge\.service: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
