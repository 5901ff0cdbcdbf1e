"""`icu-edge diag ports`: the ports a test makes (pty links, a by-id link) are listed with their holders."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pty_rig import PtyRig, run_cli

from drivers.base import SerialSettings
from drivers.transport import open_transport
from tools.diag.ports import Roots, UsbIdentity, usb_identity


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[PtyRig]:
    rig = PtyRig(tmp_path)
    try:
        yield rig
    finally:
        rig.close()


def _ports(*argv: str) -> list[dict[str, object]]:
    done = run_cli("diag", "ports", "--json", *argv)
    assert done.returncode == 0, done.stderr
    listed: list[dict[str, object]] = json.loads(done.stdout)
    return listed


def _entry(listed: list[dict[str, object]], device: str) -> dict[str, object]:
    found = [port for port in listed if port["device"] == device]
    assert len(found) == 1, listed
    return found[0]


def test_ports_lists_a_pty_link_and_who_has_it_open(rig: PtyRig) -> None:
    served = rig.served_pty(spew=False)
    device = os.path.realpath(served.link)
    entry = _entry(_ports("--also", str(served.link)), device)
    assert entry["path"] == str(served.link)
    assert entry["held"] == "yes"
    holders = entry["holders"]
    assert isinstance(holders, list)
    assert [h["locked"] for h in holders if h["pid"] == os.getpid()] == [False], holders


def test_ports_shows_which_process_holds_the_lock(rig: PtyRig) -> None:
    served = rig.served_pty(spew=False)
    reader = open_transport(str(served.link), line=SerialSettings(baud=19200))
    try:
        entry = _entry(_ports("--also", str(rig.workdir / "*.pty")), os.path.realpath(served.link))
        text = run_cli("diag", "ports", "--also", str(served.link)).stdout
    finally:
        reader.close()
    holders = entry["holders"]
    assert isinstance(holders, list)
    assert [h["locked"] for h in holders if h["pid"] == os.getpid()] == [True], holders
    assert f"pid {os.getpid()} (" in text
    assert "[locked]" in text


def test_ports_names_a_port_by_its_by_id_link(rig: PtyRig, tmp_path: Path) -> None:
    served = rig.served_pty(spew=False)
    device = os.path.realpath(served.link)
    by_id = tmp_path / "dev" / "serial" / "by-id"
    by_id.mkdir(parents=True)
    name = by_id / "usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0"
    name.symlink_to(device)
    entry = _entry(_ports("--dev-root", str(tmp_path / "dev")), device)
    assert entry["by_id"] == [str(name)]
    assert entry["path"] == device
    text = run_cli("diag", "ports", "--dev-root", str(tmp_path / "dev")).stdout
    assert f"by-id:  {name}" in text


def test_usb_identity_reads_the_usb_device_above_the_tty(tmp_path: Path) -> None:
    """The sysfs shape of an FTDI adapter (no USB serial adapter exists on a test machine)."""
    usb = tmp_path / "sys/devices/pci0000:00/0000:00:14.0/usb1/1-2"
    interface = usb / "1-2:1.0"
    (interface / "ttyUSB0/tty/ttyUSB0").mkdir(parents=True)
    (tmp_path / "sys/bus/usb-serial/drivers/ftdi_sio").mkdir(parents=True)
    (interface / "ttyUSB0/driver").symlink_to(tmp_path / "sys/bus/usb-serial/drivers/ftdi_sio")
    for name, value in {
        "idVendor": "0403",
        "idProduct": "6001",
        "manufacturer": "FTDI",
        "product": "FT232R USB UART",
        "serial": "A10K1234",
    }.items():
        (usb / name).write_text(value + "\n")
    (tmp_path / "sys/class/tty/ttyUSB0").mkdir(parents=True)
    (tmp_path / "sys/class/tty/ttyUSB0/device").symlink_to(interface / "ttyUSB0")
    driver, identity = usb_identity("ttyUSB0", Roots(sys=tmp_path / "sys"))
    assert driver == "ftdi_sio"
    assert identity == UsbIdentity(
        vendor_id="0403", product_id="6001", manufacturer="FTDI", product="FT232R USB UART", serial="A10K1234"
    )
    assert usb_identity("ttyS0", Roots(sys=tmp_path / "sys")) == (None, None)


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["ports"], ["(default: /dev)", "by-id"]),
        (["probe"], ["(default: 10)", "--force"]),
        (["sniff"], ["recording", "--seconds"]),
    ],
)
def test_diag_help_says_what_each_check_does_and_its_defaults(
    argv: list[str], shown: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tools.cli import main

    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as exited:
        main(["diag", *argv, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert description, out
    assert not description.startswith(("options:", "positional arguments:")), out
    for text in shown:
        assert text in out, out
