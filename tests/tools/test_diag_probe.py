"""`icu-edge diag probe PORT` against real simulators and test-served ptys, as a real process.

Acceptance (issue 10): the probe names each simulator's protocol (and the model the simulator
reports) within 10 s; a silent port and a port spewing random bytes get a one-line account of what
was seen, within the deadline; a port the daemon holds is refused with nothing sent. And the probe
sends only handshakes: a recorder between the simulator and the probe shows every byte it wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pty_rig import PtyRig, run_cli

from drivers.base import SerialSettings
from drivers.datex.codec import DatexDecoder
from drivers.datex.records import parse_phdb_request
from drivers.intellivue import messages as ivm
from drivers.intellivue.framing import FrameDecoder
from drivers.medibus.codec import Command, MedibusDecoder
from drivers.medibus.codes import CommandCode
from drivers.probe import BUSY_PREFIX, probe_port
from drivers.recording import read_recording
from drivers.transport import open_transport

pytestmark = pytest.mark.integration

DEADLINE_S = 10.0
SLACK_S = 2.0
"""Process start and the last close on top of the probe's own deadline."""


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[PtyRig]:
    rig = PtyRig(tmp_path)
    try:
        yield rig
    finally:
        rig.close()


def _probe(port: Path, *extra: str) -> tuple[int, dict[str, object]]:
    done = run_cli("diag", "probe", str(port), "--json", *extra)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("driver", "device", "baud", "parity", "options"),
    [
        ("medibus", "SimVent XL 01.00", 19200, "E", {}),
        ("intellivue", "icu-edge SimMonitor", 115200, "N", {"link": "serial"}),
        ("datex", None, 19200, "E", {}),
    ],
)
def test_probe_names_each_simulators_protocol_and_model(
    rig: PtyRig, driver: str, device: str | None, baud: int, parity: str, options: dict[str, str]
) -> None:
    link = rig.simulator(driver)
    status, result = _probe(link)
    assert status == 0, result
    assert result["protocol"] == driver, result
    assert result["device"] == device
    assert (result["baud"], result["parity"], result["options"]) == (baud, parity, options)
    assert isinstance(result["elapsed_s"], float)
    assert result["elapsed_s"] < DEADLINE_S
    # the simulator is still there for the daemon (or a second probe) afterwards
    status, again = _probe(link)
    assert (status, again["protocol"]) == (0, driver), again


def test_probe_of_a_silent_port_says_nothing_answered_at_any_setting(rig: PtyRig) -> None:
    served = rig.served_pty(spew=False)
    status, result = _probe(served.link)
    assert status == 1
    assert result["protocol"] is None
    assert str(result["saw"]).startswith("nothing at any setting"), result
    assert float(result["elapsed_s"]) <= DEADLINE_S + SLACK_S  # type: ignore[arg-type]
    assert served.received, "the probe sent no handshake at all"


def test_probe_of_random_bytes_says_what_it_saw_within_the_deadline(rig: PtyRig) -> None:
    served = rig.served_pty(spew=True)
    status, result = _probe(served.link, "--deadline", "4")
    saw = str(result["saw"])
    assert status == 1, result
    assert result["protocol"] is None
    assert "bytes, head " in saw, saw
    assert "no MEDIBUS, IntelliVue or DRI framing" in saw, saw
    assert float(result["elapsed_s"]) <= 4 + SLACK_S  # type: ignore[arg-type]


def test_probe_refuses_a_port_the_daemon_holds_and_sends_nothing(rig: PtyRig) -> None:
    served = rig.served_pty(spew=False)
    daemon_side = open_transport(str(served.link), line=SerialSettings(baud=19200))  # locks it, as the daemon
    try:
        done = run_cli("diag", "probe", str(served.link))
        in_process = probe_port(str(served.link), deadline_s=2)
    finally:
        daemon_side.close()
    assert done.returncode == 69, done.stdout + done.stderr
    assert f"{BUSY_PREFIX}: held by pid {os.getpid()}" in done.stdout, done.stdout
    assert "nothing sent" in done.stdout
    assert in_process.protocol is None
    assert in_process.saw.startswith(BUSY_PREFIX), in_process
    assert served.received == b""


def test_probe_of_a_missing_port_says_it_cannot_open_it(tmp_path: Path) -> None:
    result = probe_port(str(tmp_path / "no-such-port"), deadline_s=2)
    assert result.protocol is None
    assert result.saw.startswith("cannot open:"), result
    assert "No such file" in result.saw


def _host_bytes(rig: PtyRig, driver: str) -> bytes:
    """Probe a simulator through a recorder and return every byte the probe wrote."""
    device = rig.simulator(driver)
    host_link, recording = rig.recorder(device=device)
    status, result = _probe(host_link)
    assert (status, result["protocol"]) == (0, driver), result
    assert rig.stop("recorder") == 0, rig.log("recorder")
    with recording.open(encoding="ascii") as source:
        taken = read_recording(source)
    return b"".join(chunk.data for chunk in taken.chunks if chunk.direction == "host")


def test_the_medibus_probe_sends_the_handshake_and_no_poll(rig: PtyRig) -> None:
    frames = MedibusDecoder().feed(_host_bytes(rig, "medibus"))
    commands = [CommandCode.lookup(f.code) for f in frames if isinstance(f, Command)]
    assert commands == [CommandCode.ICC, CommandCode.DEVICE_ID], commands


def test_the_intellivue_probe_associates_answers_the_create_event_and_releases(rig: PtyRig) -> None:
    messages = FrameDecoder().feed(_host_bytes(rig, "intellivue"))
    kinds = [ivm.spdu_of(message) for message in messages]
    assert kinds == [ivm.Spdu.CN, ivm.Spdu.DATA, ivm.Spdu.FN], kinds
    answer = ivm.decode_data(messages[1])
    assert answer.ro_type is ivm.RoType.RORS  # the MDS create result, not a poll (ROIV)


def test_the_datex_probe_requests_values_and_stops_them_again(rig: PtyRig) -> None:
    records = DatexDecoder().feed(_host_bytes(rig, "datex"))
    requests = [parse_phdb_request(record) for record in records]
    assert [r.interval_s if r else None for r in requests][-1] == 0, requests
    assert all(r is not None for r in requests)
