"""HL7 over MLLP end to end, real processes: a sender (the `hl7` package's own `mllp_send`, or our
simulator) -> `icu-edge run` listening on a loopback port -> real Mosquitto -> the retained twin."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import hl7
import pytest
from broker import MosquittoBroker, Received, Subscriber, wait_for

from drivers.hl7.mllp import Block, MllpFramer

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT = "icu/v1/hosp-a/icu-3"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mllp_send_command() -> list[str]:
    script = Path(sys.executable).parent / "mllp_send"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hl7.client"]


class Appliance:
    """`icu-edge run` with one bed whose monitor is an HL7 listener."""

    def __init__(
        self,
        *,
        workdir: Path,
        broker: MosquittoBroker,
        bed: str,
        options_toml: str = "",
        second_bed: str = "",
    ) -> None:
        self.workdir = workdir
        self.bed = bed
        self.port = _free_port()
        self.second_port = _free_port()
        second = (
            f"""
[[bed]]
id = "{second_bed}"

[[bed.device]]
id = "monitor"
driver = "hl7"
listen = "127.0.0.1:{self.second_port}"
"""
            if second_bed
            else ""
        )
        self.config = workdir / "config.toml"
        self.config.write_text(
            f"""
[appliance]
id = "edge-0001"
site = "hosp-a"
ward = "icu-3"

[mqtt]
host = "127.0.0.1"
port = {broker.port}
keepalive = 5
insecure = true
reconnect_min_s = 0.1
reconnect_max_s = 0.5

[store]
path = "{workdir / "outbox.db"}"
synchronous = "normal"

[engines]
enabled = false

[[bed]]
id = "{bed}"
stale_after_s = 30

[[bed.device]]
id = "monitor"
driver = "hl7"
listen = "127.0.0.1:{self.port}"

[bed.device.options]
{options_toml}
{second}""",
            encoding="utf-8",
        )
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        with log:
            process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )
        self.processes.append(process)
        return process

    def start(self, *, wait_port: int | None = None) -> None:
        self.spawn("daemon", [sys.executable, "-m", "edge.cli", "run", "--config", str(self.config)])
        port = self.port if wait_port is None else wait_port

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return False
            return True

        assert wait_for(listening, timeout_s=20), self.log("daemon")

    def mllp_send(self, message: str, *, port: int | None = None) -> hl7.Message:
        """Send one message with the hl7 package's own `mllp_send` and return the ACK it printed."""
        path = self.workdir / "message.hl7"
        path.write_text(message.replace("\r", "\n"), encoding="utf-8")
        port = self.port if port is None else port
        result = subprocess.run(
            [*_mllp_send_command(), "-p", str(port), "--loose", "--file", str(path), "127.0.0.1"],
            capture_output=True,
            timeout=30,
            check=True,
        )
        blocks = [b for b in MllpFramer().feed(result.stdout) if isinstance(b, Block)]
        assert len(blocks) == 1, result
        return hl7.parse(blocks[0].payload.decode())

    def mllp_send_when_listening(self, message: str, *, timeout_s: float = 20.0) -> hl7.Message:
        """Wait until the listener accepts, then send (mllp_send itself does not retry)."""

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        assert wait_for(listening, timeout_s=timeout_s), self.log("daemon")
        return self.mllp_send(message)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else "(no log)"

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def make_appliance(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Callable[..., Appliance]]:
    created: list[Appliance] = []

    def make(**kwargs: object) -> Appliance:
        appliance = Appliance(workdir=tmp_path, broker=broker, **kwargs)  # type: ignore[arg-type]
        created.append(appliance)
        return appliance

    yield make
    for appliance in created:
        appliance.close()


def _twins(messages: list[Received], bed: str) -> list[dict[str, object]]:
    return [json.loads(m.payload) for m in messages if m.topic == f"{ROOT}/bed/{bed}/twin" and m.payload]


def _value(twin: dict[str, object], key: str) -> dict[str, object] | None:
    values = twin.get("values")
    found = values.get(key) if isinstance(values, dict) else None
    return found if isinstance(found, dict) else None


def _mindray(control_id: str, *, bed: str, hr: int) -> str:
    return (
        f"MSH|^~\\&|Mindray|Gateway|||||ORU^R01|{control_id}|P|2.3.1|\r"
        f"PV1||I|^^ICU&{bed}&2130706433&4601&0|\r"
        "OBR||||Mindray Monitor|||20261130120000|\r"
        f"OBX||NM|101^HR|2101|{hr}||||||F\r"
        "OBX||NM|160^SpO2|2103|96||||||F\r"
    )


def test_mllp_send_reaches_the_twin_and_gets_aa(
    make_appliance: Callable[..., Appliance], subscribe: Callable[..., Subscriber]
) -> None:
    appliance = make_appliance(bed="bed-01")
    appliance.start()
    station = subscribe(f"{ROOT}/#")
    ack = appliance.mllp_send(_mindray("MS-1", bed="bed-01", hr=64))
    assert [str(ack.segment("MSA")(i)) for i in (1, 2)] == ["AA", "MS-1"]
    station.wait_for(
        lambda ms: any((_value(t, "hr") or {}).get("value") == 64.0 for t in _twins(ms, "bed-01")),
        timeout_s=15,
    )
    late = subscribe(f"{ROOT}/bed/bed-01/twin")
    retained = late.wait_for(lambda ms: any(m.retain for m in ms), timeout_s=10)
    twin = json.loads(next(m for m in retained if m.retain).payload)
    hr = _value(twin, "hr")
    assert hr is not None
    assert hr["value"] == 64.0
    assert hr["device"] == "monitor"
    assert hr["unit"] == "/min"
    assert (_value(twin, "spo2") or {}).get("value") == 96.0


def test_a_message_for_another_bed_never_reaches_the_twin_and_is_refused(
    make_appliance: Callable[..., Appliance], subscribe: Callable[..., Subscriber]
) -> None:
    appliance = make_appliance(bed="bed-01", options_toml='expect_bed = "bed-01"\nexpect_unit = "ICU"')
    appliance.start()
    station = subscribe(f"{ROOT}/#")
    wrong = appliance.mllp_send(_mindray("WRONG-1", bed="bed-02", hr=151))
    assert [str(wrong.segment("MSA")(i)) for i in (1, 2)] == ["AR", "WRONG-1"]
    assert "not for this bed" in wrong.unescape(str(wrong.segment("MSA")(3)))
    right = appliance.mllp_send(_mindray("RIGHT-1", bed="bed-01", hr=62))
    assert str(right.segment("MSA")(1)) == "AA"
    station.wait_for(
        lambda ms: any((_value(t, "hr") or {}).get("value") == 62.0 for t in _twins(ms, "bed-01")),
        timeout_s=15,
    )
    messages = station.wait_for(
        lambda ms: any(
            m.topic == f"{ROOT}/bed/bed-01/device/monitor"
            and json.loads(m.payload).get("status", {}).get("counters", {}).get("wrong_bed_messages") == 1
            for m in ms
            if m.payload
        ),
        timeout_s=15,
    )
    every_hr = [(_value(t, "hr") or {}).get("value") for t in _twins(messages, "bed-01")]
    assert 62.0 in every_hr
    assert 151.0 not in every_hr


def test_a_port_in_use_is_shown_on_its_device_and_stops_no_other_bed(
    make_appliance: Callable[..., Appliance], subscribe: Callable[..., Subscriber]
) -> None:
    appliance = make_appliance(bed="bed-01", second_bed="bed-02")
    holder = socket.socket()
    holder.bind(("127.0.0.1", appliance.port))
    holder.listen(1)
    try:
        station = subscribe(f"{ROOT}/#")
        appliance.start(wait_port=appliance.second_port)
        ack = appliance.mllp_send(_mindray("OTHER-1", bed="bed-02", hr=70), port=appliance.second_port)
        assert str(ack.segment("MSA")(1)) == "AA"
        station.wait_for(
            lambda ms: any((_value(t, "hr") or {}).get("value") == 70.0 for t in _twins(ms, "bed-02")),
            timeout_s=15,
        )

        def blocked_status(ms: list[Received]) -> bool:
            return any(
                m.topic == f"{ROOT}/bed/bed-01/device/monitor"
                and "cannot listen" in (json.loads(m.payload).get("status", {}).get("last_error") or "")
                for m in ms
                if m.payload
            )

        station.wait_for(blocked_status, timeout_s=15)
    finally:
        holder.close()
    # Once the port is free, the listener binds on its own (retried with backoff).
    ack = appliance.mllp_send_when_listening(_mindray("LATE-1", bed="bed-01", hr=66))
    assert str(ack.segment("MSA")(1)) == "AA"


@pytest.mark.parametrize("style", ["mindray", "pcd01"])
def test_simulator_process_fills_the_twin(
    make_appliance: Callable[..., Appliance], subscribe: Callable[..., Subscriber], style: str
) -> None:
    appliance = make_appliance(bed="bed-03")
    appliance.start()
    station = subscribe(f"{ROOT}/bed/bed-03/twin")
    appliance.spawn(
        "simulator",
        [
            sys.executable,
            "-m",
            "tools.cli",
            "sim",
            "hl7",
            "--to",
            f"127.0.0.1:{appliance.port}",
            "--style",
            style,
            "--bed",
            "bed-03",
            "--interval-s",
            "0.5",
        ],
    )
    keys = {"hr", "spo2", "nbp_sys", "abp_mean", "temp"}
    messages = station.wait_for(
        lambda ms: any(keys <= set(t.get("values", {})) for t in _twins(ms, "bed-03")),  # type: ignore[arg-type]
        timeout_s=20,
    )
    twin = next(t for t in reversed(_twins(messages, "bed-03")) if keys <= set(t.get("values", {})))  # type: ignore[arg-type]
    hr = _value(twin, "hr")
    assert hr is not None
    assert hr["value"] == 78.0  # the steady scenario
    assert hr["device"] == "monitor"
    time.sleep(0.1)
    assert "Traceback" not in appliance.log("daemon")
