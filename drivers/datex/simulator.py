"""A GE S/5 monitor simulator: the monitor side of the DRI computer interface, sans-I/O, plus a pty runner.

`MonitorSimulator` does what the monitor does on the interface: nothing until a request arrives; a
displayed-value request with a positive `tx_interval` starts a record every that many seconds (0 stops
it, -1 sends one); a wave request starts (or stops) continuous wave records, refused when its sample
rates add up to more than the 600 samples/s budget. Values come from the shared scenario engine
(`drivers.scenario`); a value the patient has not got goes out as the DATA_INVALID code, as a monitor
without that module would send it. Nothing here is a capture of a real monitor.

Threads: `run_simulator_on_pty` serves one pty from the calling thread; `stop_event` may be set from
any other thread.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import select
import threading
import time
import tty
from collections.abc import Sequence

from drivers.base import LinkCounters
from drivers.datex.codec import MAX_RECORD_BYTES, DatexDecoder, Record
from drivers.datex.codes import (
    TX_INTERVAL_SINGLE,
    TX_INTERVAL_STOP_S,
    WAVE_BUDGET_SAMPLES_PER_S,
    WAVE_INFO,
    DriLevel,
    NoData,
    PhdbSubrecordType,
    WaveRequestType,
    WaveSubrecordType,
)
from drivers.datex.records import (
    basic_subrecord,
    displayed_record,
    parse_phdb_request,
    parse_wave_request,
    wave_record,
    wave_subrecord,
)
from drivers.pty_link import remove_symlink, replace_symlink, stop_on_signals, write_available
from drivers.scenario import PATIENTS, Patient, add_patient_arguments, check_speed

LOGGER = logging.getLogger(__name__)

AMBIENT_MMHG = 760.0
DRI_LEVEL = DriLevel.L2005
"""The interface level the simulated monitor writes in its record headers."""
WAVE_PERIOD_S = 0.25
"""How often a wave record goes out while waves run (each record stays far below 1490 bytes)."""
SELECT_TIMEOUT_S = 0.02
_READ_CHUNK_BYTES = 4096
_MBAR_TO_CMH2O = 1.0 / 0.980665

_VITAL_FIELDS: dict[str, tuple[str, float]] = {
    "hr": ("ecg.hr", 1.0),
    "abp_sys": ("p1.sys", 100.0),
    "abp_dia": ("p1.dia", 100.0),
    "abp_mean": ("p1.mean", 100.0),
    "cvp": ("p2.mean", 100.0),
    "nbp_sys": ("nibp.sys", 100.0),
    "nbp_dia": ("nibp.dia", 100.0),
    "nbp_mean": ("nibp.mean", 100.0),
    "temp": ("t1.temp", 100.0),
    "temp_2": ("t2.temp", 100.0),
    "spo2": ("spo2.spo2", 100.0),
    "pr": ("spo2.pr", 1.0),
    "rr": ("co2.rr", 1.0),
    "etco2": ("co2.et", 100.0 * 100.0 / AMBIENT_MMHG),
    "imco2": ("co2.fi", 100.0 * 100.0 / AMBIENT_MMHG),
    "fio2": ("o2.fi", 100.0),
    "eto2": ("o2.et", 100.0),
    "ppeak": ("flow_vol.ppeak", 100.0 * _MBAR_TO_CMH2O),
    "peep": ("flow_vol.peep", 100.0 * _MBAR_TO_CMH2O),
    "pplat": ("flow_vol.pplat", 100.0 * _MBAR_TO_CMH2O),
    "vt": ("flow_vol.tv_exp", 10.0),
    "mve": ("flow_vol.mv_exp", 100.0),
}
"""Scenario key -> (basic-class field, counts per vocabulary unit)."""

_WAVE_SIGNAL_KEYS: dict[str, str] = {"ecg": "ecg", "abp": "abp", "cvp": "cvp", "pleth": "pleth", "co2": "co2"}


def vitals_to_raw(vitals: dict[str, float | None]) -> dict[str, int]:
    """Map scenario values onto raw basic-class fields (absent or None values stay DATA_INVALID)."""
    raw: dict[str, int] = {"co2.amb_press": round(AMBIENT_MMHG * 10.0)}
    for key, (field, counts) in _VITAL_FIELDS.items():
        value = vitals.get(key)
        if value is not None and math.isfinite(value):
            raw[field] = max(-32000, min(32767, round(value * counts)))
    if "ecg.hr" in raw:
        raw["p1.hr"] = raw["ecg.hr"]
    return raw


class MonitorSimulator:
    """The monitor side of a DRI link, sans-I/O: feed it client bytes and the time, send what it returns."""

    def __init__(
        self, *, patient: Patient, start_s: float = 0.0, epoch_s: float = 0.0, speed: float = 1.0
    ) -> None:
        self.patient = patient
        self.start_s = start_s
        self.epoch_s = epoch_s
        """Unix time at start_s (the monitor's clock in record headers); 0 sends time 0."""
        self.speed = speed
        self.counters = LinkCounters()
        self.refused_wave_requests = 0
        self._decoder = DatexDecoder(counters=self.counters)
        self._out = bytearray()
        self._interval_s = 0
        self._next_displayed_s = math.inf
        self._waves: tuple[WaveSubrecordType, ...] = ()
        self._waves_since_s = 0.0
        self._waves_sent: dict[WaveSubrecordType, int] = {}
        self._next_wave_s = math.inf

    @property
    def sending_displayed(self) -> bool:
        """True while periodic displayed-value records run."""
        return self._interval_s > 0

    @property
    def sending_waves(self) -> tuple[WaveSubrecordType, ...]:
        """Return the waves being sent."""
        return self._waves

    def scenario_time_s(self, now_s: float) -> float:
        """Return the scenario time for a monotonic time."""
        return (now_s - self.start_s) * self.speed

    def receive(self, data: bytes, *, now_s: float) -> None:
        """Feed bytes from the client."""
        self.counters.bytes_in += len(data)
        for record in self._decoder.feed(data):
            self._handle(record, now_s=now_s)

    def poll(self, *, now_s: float) -> None:
        """Send what is due: a displayed-value record, a wave record."""
        if now_s >= self._next_displayed_s:
            self._send_displayed(now_s=now_s)
            self._next_displayed_s = max(self._next_displayed_s + self._interval_s, now_s)
        if self._waves and now_s >= self._next_wave_s:
            self._send_waves(now_s=now_s)
            self._next_wave_s = now_s + WAVE_PERIOD_S

    def next_deadline_s(self) -> float:
        """Return when `poll` has something to do next."""
        return min(self._next_displayed_s, self._next_wave_s if self._waves else math.inf)

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes for the client."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def _r_time(self, now_s: float) -> int:
        return int(self.epoch_s + (now_s - self.start_s)) if self.epoch_s > 0 else 0

    def _send(self, record: Record) -> None:
        raw = record.to_frame()
        self._out += raw
        self.counters.bytes_out += len(raw)
        self.counters.frames_out += 1

    def _handle(self, record: Record, *, now_s: float) -> None:
        phdb = parse_phdb_request(record)
        if phdb is not None:
            if phdb.record_type != PhdbSubrecordType.DISPLAYED:
                self.counters.unknown_commands += 1
            elif phdb.interval_s == TX_INTERVAL_STOP_S:
                self._interval_s, self._next_displayed_s = 0, math.inf
            elif phdb.interval_s == TX_INTERVAL_SINGLE:
                self._send_displayed(now_s=now_s)
            elif phdb.interval_s > 0:
                self._interval_s = phdb.interval_s
                self._next_displayed_s = now_s
                self.poll(now_s=now_s)
            else:
                self.counters.unknown_commands += 1
            return
        waves = parse_wave_request(record)
        if waves is None:
            self.counters.unknown_commands += 1
        elif waves.request == WaveRequestType.STOP:
            self._waves = ()
        elif waves.request == WaveRequestType.START_CONTINUOUS:
            self._start_waves(waves.waves, now_s=now_s)
        else:
            self.counters.unknown_commands += 1

    def _start_waves(self, ids: tuple[int, ...], *, now_s: float) -> None:
        known = tuple(WaveSubrecordType(i) for i in ids if i in WAVE_INFO)
        if sum(WAVE_INFO[w].rate_hz for w in known) > WAVE_BUDGET_SAMPLES_PER_S or not known:
            self.refused_wave_requests += 1
            LOGGER.info("simulator: wave request %s refused (unknown or over the sample budget)", ids)
            return
        self._waves = known
        self._waves_since_s = now_s
        self._waves_sent = dict.fromkeys(known, 0)
        self._next_wave_s = now_s + WAVE_PERIOD_S

    def _send_displayed(self, *, now_s: float) -> None:
        raw = vitals_to_raw(self.patient.vitals_at(self.scenario_time_s(now_s)))
        r_time = self._r_time(now_s)
        subrecord = basic_subrecord(raw=raw, time_s=r_time, dri_level=DRI_LEVEL)
        self._send(displayed_record(subrecords=[subrecord], r_time=r_time, dri_level=DRI_LEVEL))

    def _send_waves(self, *, now_s: float) -> None:
        pairs: list[tuple[int, bytes]] = []
        for wave in self._waves:
            info = WAVE_INFO[wave]
            sent = self._waves_sent[wave]
            due = int((now_s - self._waves_since_s) * info.rate_hz) - sent
            count = max(0, min(due, (MAX_RECORD_BYTES - 40) // (2 * len(self._waves)) - 3))
            if count == 0:
                continue
            t0_s = self.scenario_time_s(self._waves_since_s + sent / info.rate_hz)
            samples = self._wave_counts(
                info.signal, t0_s=t0_s, count=count, period_s=self.speed / info.rate_hz
            )
            self._waves_sent[wave] = sent + count
            pairs.append((wave, wave_subrecord(samples)))
        if pairs:
            self._send(wave_record(waves=pairs, r_time=self._r_time(now_s), dri_level=DRI_LEVEL))

    def _wave_counts(self, signal: str, *, t0_s: float, count: int, period_s: float) -> list[int]:
        """Return raw counts of a wave (CO2 in 0.01 % of the ambient pressure); DATA_INVALID if none."""
        key = _WAVE_SIGNAL_KEYS.get(signal)
        if key is None:
            return [int(NoData.DATA_INVALID)] * count
        values = self.patient.wave(key, t0_s=t0_s, count=count, period_s=period_s)
        scale = 0.01 / 100.0 * AMBIENT_MMHG if signal == "co2" else 0.01
        return [max(-32000, min(32767, round(float(v) / scale))) for v in values]


def run_simulator_on_pty(
    *,
    link_path: str,
    patient: Patient,
    stop_event: threading.Event | None = None,
    speed: float = 1.0,
    duration_s: float | None = None,
) -> None:
    """Serve a simulated S/5 monitor on a new pty whose slave is reachable through the symlink link_path.

    Runs until stop_event is set or duration_s has passed; removes the link on the way out.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    master_fd, slave_fd = os.openpty()
    try:
        tty.setraw(slave_fd)
        os.set_blocking(master_fd, False)
        slave_path = os.ttyname(slave_fd)
        replace_symlink(link_path=link_path, target=slave_path)
        LOGGER.info("S/5 simulator %s serving on %s -> %s", patient.name, link_path, slave_path)
        try:
            _serve(master_fd=master_fd, patient=patient, stop=stop, speed=speed, duration_s=duration_s)
        finally:
            remove_symlink(link_path=link_path, target=slave_path)
    finally:
        os.close(master_fd)
        os.close(slave_fd)


def _serve(
    *, master_fd: int, patient: Patient, stop: threading.Event, speed: float, duration_s: float | None
) -> None:
    """Shuttle bytes between the pty master and the simulator until told to stop."""
    start_s = time.monotonic()
    end_s = math.inf if duration_s is None else start_s + duration_s
    simulator = MonitorSimulator(patient=patient, start_s=start_s, epoch_s=time.time(), speed=speed)
    while not stop.is_set():
        wait_s = min(SELECT_TIMEOUT_S, max(0.0, simulator.next_deadline_s() - time.monotonic()))
        readable, _, _ = select.select([master_fd], [], [], wait_s)
        now_s = time.monotonic()
        if now_s >= end_s:
            return
        if readable:
            try:
                data = os.read(master_fd, _READ_CHUNK_BYTES)
            except (BlockingIOError, OSError):
                data = b""
            simulator.receive(data, now_s=now_s)
        simulator.poll(now_s=now_s)
        out = simulator.data_to_send()
        if out:
            write_available(master_fd, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `sim datex --pty LINK [--scenario NAME] [--seconds N] [--speed X]`."""
    parser = argparse.ArgumentParser(prog="icu-edge sim datex", description=__doc__.splitlines()[0])
    parser.add_argument("--pty", required=True, metavar="LINK", help="symlink to create for the pty slave")
    add_patient_arguments(parser, choices=PATIENTS, default="steady")
    args = parser.parse_args(argv)
    check_speed(parser, args.speed)
    if args.seconds is not None and not args.seconds > 0:
        parser.error("--seconds must be positive")
    stop = threading.Event()
    restore_signals = stop_on_signals(stop, who="S/5 simulator")
    try:
        run_simulator_on_pty(
            link_path=args.pty,
            patient=PATIENTS[args.scenario](),
            stop_event=stop,
            speed=args.speed,
            duration_s=args.seconds,
        )
    finally:
        restore_signals()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
