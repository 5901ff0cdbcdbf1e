"""HL7 sender simulator: a monitor or gateway that sends ORU^R01 over MLLP to the appliance's listener.

`icu-edge sim hl7 --to HOST:PORT [--scenario NAME] [--style mindray|pcd01] [--bed BED] [--interval-s S]
[--seconds S]`: connects, sends the scenario's values (`drivers.scenario`) every interval, waits for each
ACK (AA expected; AE/AR are logged with their reason), and reconnects after any loss. Mindray style
writes 2.3.1 numeric ids with empty units; PCD-01 style writes MDC codes, MDC units and OBX-14 in UTC.

Threads: one; `run_sender` blocks until the duration ends or `stop_event` is set.
"""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import hl7

from drivers.hl7.codes import MDC_NAMES, MDC_NUMBERS, MINDRAY_CODES
from drivers.hl7.mllp import Block, MllpFramer, wrap
from drivers.pty_link import stop_on_signals
from drivers.scenario import PATIENTS, Patient, add_patient_arguments
from drivers.vocabulary import TERMS

LOGGER = logging.getLogger(__name__)

STYLES = ("mindray", "pcd01")
ACK_TIMEOUT_S = 5.0
RECONNECT_S = 0.5
_MINDRAY_MODULE = {"hr": "2101", "rr": "2102", "spo2": "2103", "pr": "2103", "temp": "2104", "temp_2": "2104"}
_MDC_UNITS = {
    "/min": "264864^MDC_DIM_BEAT_PER_MIN^MDC",
    "%": "262688^MDC_DIM_PERCENT^MDC",
    "mm[Hg]": "266016^MDC_DIM_MMHG^MDC",
    "Cel": "268192^MDC_DIM_DEGC^MDC",
}
_MDC_RESP_UNIT = "264928^MDC_DIM_RESP_PER_MIN^MDC"


def _mindray_ids() -> dict[str, str]:
    return {entry.key: code for code, entry in MINDRAY_CODES.items()}


def _mdc_ids() -> dict[str, str]:
    """Return key -> `number^MDC_NAME^MDC` for the keys whose vocabulary MDC id has a known number."""
    numbers = {name: number for number, name in MDC_NUMBERS.items()}
    out: dict[str, str] = {}
    for key, term in TERMS.items():
        if term.mdc and term.mdc in numbers and MDC_NAMES[term.mdc].key == key:
            out[key] = f"{numbers[term.mdc]}^{term.mdc}^MDC"
    return out


MINDRAY_IDS = _mindray_ids()
MDC_IDS = _mdc_ids()


def _number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


@dataclass(frozen=True, slots=True, kw_only=True)
class OruBuilder:
    """Builds ORU^R01 messages of one style for one bed."""

    style: str
    bed: str
    unit: str = "ICU"

    def message(self, values: dict[str, float | None], *, control_id: str, now: datetime) -> str:
        """Return one ORU^R01 (segments joined by CR) with the given values in vocabulary units."""
        stamp = now.astimezone(UTC).strftime("%Y%m%d%H%M%S")
        if self.style == "mindray":
            head = [
                f"MSH|^~\\&|Mindray|Gateway|||{stamp}||ORU^R01|{control_id}|P|2.3.1|",
                f"PV1||I|^^{self.unit}&{self.bed}&2130706433&4601&0|",
                f"OBR||||Mindray Monitor|||{stamp}|",
            ]
            rows = [
                f"OBX||NM|{MINDRAY_IDS[key]}^{key.upper()}|{_MINDRAY_MODULE.get(key, '2100')}|"
                f"{'' if value is None else _number(value)}||||||F"
                for key, value in values.items()
                if key in MINDRAY_IDS
            ]
        else:
            zoned = f"{stamp}+0000"
            head = [
                f"MSH|^~\\&|icu-edge-sim^0123456789ABCDEF^EUI-64||||{zoned}||ORU^R01^ORU_R01|{control_id}|P|2.6|||NE|AL",
                f"PV1||I|{self.unit}^^{self.bed}|",
                f"OBR|1|{control_id}^SIM|{control_id}^SIM|182777000^monitoring of patient^SCT|||{zoned}",
                "OBX|1||69965^MDC_DEV_MON_PHYSIO_MULTI_PARAM_MDS^MDC|1.0.0.0|||||||X",
            ]
            rows = []
            for key, value in values.items():
                if key not in MDC_IDS:
                    continue
                unit = _MDC_RESP_UNIT if key == "rr" else _MDC_UNITS[TERMS[key].unit]
                n = len(rows) + 2
                rows.append(
                    f"OBX|{n}|NM|{MDC_IDS[key]}|1.1.1.{n}|{'' if value is None else _number(value)}|{unit}"
                    f"|||||R|||{zoned}"
                )
        return "\r".join([*head, *rows]) + "\r"


def _address(to: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(f"//{to}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ValueError(f"--to must be HOST:PORT, got {to!r}")
    return parts.hostname, port


def _await_ack(sock: socket.socket, framer: MllpFramer, *, timeout_s: float) -> hl7.Message:
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no ACK")
        sock.settimeout(remaining)
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("listener closed the connection")
        for block in framer.feed(data):
            if isinstance(block, Block):
                return hl7.parse(block.payload.decode("utf-8", errors="replace"))


@dataclass(slots=True)
class SenderStats:
    """What the sender did (returned by `run_sender`)."""

    sent: int = 0
    acked: int = 0
    refused: int = 0
    reconnects: int = 0


def run_sender(
    *,
    host: str,
    port: int,
    patient: Patient,
    builder: OruBuilder,
    interval_s: float,
    stop_event: threading.Event,
    duration_s: float | None = None,
) -> SenderStats:
    """Send one message per interval until stopped; reconnect after any loss."""
    stats = SenderStats()
    start_s = time.monotonic()
    sock: socket.socket | None = None
    framer = MllpFramer()
    sequence = 0
    last_problem = ""
    try:
        while not stop_event.is_set():
            now_s = time.monotonic()
            if duration_s is not None and now_s - start_s >= duration_s:
                break
            try:
                if sock is None:
                    sock = socket.create_connection((host, port), timeout=ACK_TIMEOUT_S)
                    framer = MllpFramer()
                    LOGGER.info("connected to %s:%d", host, port)
                sequence += 1
                message = builder.message(
                    patient.vitals_at(now_s - start_s), control_id=f"SIM{sequence}", now=datetime.now(UTC)
                )
                sock.sendall(wrap(message.encode("utf-8")))
                stats.sent += 1
                ack = _await_ack(sock, framer, timeout_s=ACK_TIMEOUT_S)
                code = str(ack.segment("MSA")(1))
                if code == "AA":
                    stats.acked += 1
                else:
                    stats.refused += 1
                    LOGGER.warning("message SIM%d answered %s: %s", sequence, code, ack.segment("MSA")(3))
                last_problem = ""
            except (OSError, TimeoutError, KeyError, IndexError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if problem != last_problem:
                    LOGGER.warning("link to %s:%d lost (%s); reconnecting", host, port, problem)
                last_problem = problem
                if sock is not None:
                    sock.close()
                    sock = None
                stats.reconnects += 1
                stop_event.wait(RECONNECT_S)
                continue
            stop_event.wait(max(0.0, interval_s - (time.monotonic() - now_s)))
    finally:
        if sock is not None:
            sock.close()
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """Run `sim hl7 --to HOST:PORT [--scenario NAME] [--style S] [--bed BED] [--interval-s S] ...`."""
    parser = argparse.ArgumentParser(prog="icu-edge sim hl7", description=__doc__.splitlines()[0])
    parser.add_argument("--to", required=True, metavar="HOST:PORT", help="the appliance's HL7 listener")
    add_patient_arguments(parser, choices=PATIENTS, default="steady", speed=False)
    parser.add_argument(
        "--style",
        choices=STYLES,
        default="mindray",
        help="mindray: 2.3.1 numeric ids; pcd01: MDC codes and units (default: %(default)s)",
    )
    parser.add_argument("--bed", default="bed-01", help="bed label written into PV1-3 (default: %(default)s)")
    parser.add_argument(
        "--unit", default="ICU", help="unit (point of care) written into PV1-3 (default: %(default)s)"
    )
    parser.add_argument(
        "--interval-s", type=float, default=1.0, help="seconds between messages (default: %(default)g)"
    )
    args = parser.parse_args(argv)
    try:
        host, port = _address(args.to)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.interval_s > 0:
        parser.error("--interval-s must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    restore_signals = stop_on_signals(stop, who="simulator")
    try:
        stats = run_sender(
            host=host,
            port=port,
            patient=PATIENTS[args.scenario](),
            builder=OruBuilder(style=args.style, bed=args.bed, unit=args.unit),
            interval_s=args.interval_s,
            stop_event=stop,
            duration_s=args.seconds,
        )
    finally:
        restore_signals()
    LOGGER.info(
        "sent %d, acknowledged %d, refused %d, reconnects %d",
        stats.sent,
        stats.acked,
        stats.refused,
        stats.reconnects,
    )
    return 0
