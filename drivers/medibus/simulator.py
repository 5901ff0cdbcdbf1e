"""A MEDIBUS ventilator simulator: the device side of the protocol, sans-I/O, plus a pty runner.

`VentilatorSimulator` answers ICC, identification, measured-data, settings, alarm and text-message
requests from a `Scenario`, sends its own NOP / identification request to the host now and then (so
the host's echo logic is exercised) and, like a real device, goes silent once the host has been quiet
for longer than the link time-out, until the host sends ICC again. As a MEDIBUS.X device it answers
the realtime-configuration request with `SIM_CURVES`, takes the host's curve configuration and its
raw enable sequence, and then streams one realtime cycle every curve interval, with the patient's
curves (`Patient.wave`) and inspiration / expiration marks taken from the flow's sign, interleaved
inside its slow-data frames. The identification and the curve ranges are made up (`SimVent XL`);
nothing here is a capture of a real device.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from drivers.base import LinkCounters
from drivers.medibus.codec import Command, Frame, MedibusDecoder, Response
from drivers.medibus.codes import MEASURED_CP1, CommandCode, MeasuredCodeCP1, SettingCode
from drivers.medibus.device import (
    ALARM_TEXT_LEN,
    MEASURED_RECORD_LEN,
    SETTING_RECORD_LEN,
    DeviceIdentification,
    format_value,
)
from drivers.medibus.realtime import (
    MAX_STREAMS,
    SYNC_BYTE,
    SYNC_COMMAND,
    SYNC_MASK,
    BreathMark,
    CurveCode,
    CurveConfig,
    SyncCommand,
    encode_cycle,
    parse_configure_args,
    realtime_part,
)
from drivers.medibus.sim_faults import FaultyLine, LineFaults
from drivers.pty_link import remove_symlink, replace_symlink, stop_on_signals, write_available
from drivers.scenario import (
    PATIENTS,
    DeterioratingPatient,
    Patient,
    SteadyPatient,
    add_patient_arguments,
    check_speed,
)

LOGGER = logging.getLogger(__name__)

SIM_IDENTIFICATION = DeviceIdentification(
    device_id="SIM0", name="SimVent XL", revision="01.00", medibus_version="06.00"
)
DEVICE_LINK_TIMEOUT_S = 3.0
SELECT_TIMEOUT_S = 0.05
_READ_CHUNK_BYTES = 4096
_VALUE_WIDTH = MEASURED_RECORD_LEN - 2
_SETTING_WIDTH = SETTING_RECORD_LEN - 2

SIM_CURVE_INTERVAL_US = 20_000
SIM_CURVES: tuple[CurveConfig, ...] = (
    CurveConfig(
        code=CurveCode.PAW, interval_us=SIM_CURVE_INTERVAL_US, min_value=-20, max_value=100, max_bin=0xFFF
    ),
    CurveConfig(
        code=CurveCode.FLOW, interval_us=SIM_CURVE_INTERVAL_US, min_value=-200, max_value=200, max_bin=0xFFF
    ),
    CurveConfig(
        code=CurveCode.VOLUME, interval_us=SIM_CURVE_INTERVAL_US, min_value=0, max_value=2000, max_bin=0xFFF
    ),
    CurveConfig(
        code=CurveCode.CO2_MMHG, interval_us=SIM_CURVE_INTERVAL_US, min_value=0, max_value=100, max_bin=0xFFF
    ),
)
"""The curves the simulated device offers (50 Hz each); CO2 is offered but not one the host asks for."""
SIM_CURVE_SIGNALS: dict[str, str] = {
    CurveCode.PAW: "paw",
    CurveCode.FLOW: "flow",
    CurveCode.VOLUME: "volume",
    CurveCode.CO2_MMHG: "co2",
}
MAX_REALTIME_BACKLOG_S = 2.0
"""After a stall (a suspended process) the device sends at most this much of the curves it missed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimAlarm:
    """One alarm the simulated device reports (priority is the MEDIBUS number, higher = more urgent)."""

    priority: int
    code: str
    text: str


class Scenario:
    """What the simulated ventilator shows as a function of scenario time; the base scenario shows nothing.

    The patient behind it is a `drivers.scenario.Patient` (the one engine every simulator draws from);
    this class only adds what belongs to the ventilator: its code table, settings, alarm limits and
    texts. The base scenario has the empty patient.
    """

    name = "empty"

    def __init__(self, *, patient: Patient | None = None) -> None:
        self.patient = patient if patient is not None else Patient()

    def values_at(self, t_s: float) -> dict[MeasuredCodeCP1, float | None]:
        """Return measured values at t_s (None: the device shows the parameter without a value)."""
        return {}

    def measured_data_at(self, t_s: float) -> bytes:
        """Return the measured-data response payload at t_s (a scenario may send what no device would)."""
        return measured_payload(self.values_at(t_s))

    def settings_at(self, t_s: float) -> dict[SettingCode, float]:
        """Return the ventilator settings at t_s."""
        return {}

    def alarms_at(self, t_s: float) -> list[SimAlarm]:
        """Return the alarms active at t_s."""
        return []

    def texts_at(self, t_s: float) -> list[tuple[str, str]]:
        """Return the text messages (2-hex code, text) shown at t_s."""
        return []

    def wave(self, signal: str, *, t0_s: float, count: int, period_s: float) -> npt.NDArray[np.float64]:
        """Return `count` samples of a realtime curve (a `drivers.vocabulary.WAVES` name) from t0_s."""
        return self.patient.wave(signal, t0_s=t0_s, count=count, period_s=period_s)


REPORTED_CODES: tuple[MeasuredCodeCP1, ...] = (
    MeasuredCodeCP1.PIP,
    MeasuredCodeCP1.PEEP,
    MeasuredCodeCP1.PMEAN,
    MeasuredCodeCP1.PPLAT,
    MeasuredCodeCP1.RR,
    MeasuredCodeCP1.VT,
    MeasuredCodeCP1.MV,
    MeasuredCodeCP1.FIO2,
    MeasuredCodeCP1.ETCO2_MMHG,
    MeasuredCodeCP1.SPO2,
    MeasuredCodeCP1.PULSE_RATE,
)
"""The codes whose values come from the patient (through `MEASURED_CP1`'s key per code), in the order the
simulated ventilator sends them. No HR: the ventilator's SpO2 module gives the pulse rate."""

VENTILATOR_EXTRAS: dict[MeasuredCodeCP1, float | None] = {
    MeasuredCodeCP1.CDYN: 45.0,
    MeasuredCodeCP1.RESISTANCE: 9.0,
    MeasuredCodeCP1.P01: None,
}
"""Values only a ventilator has (not in the patient engine): constant compliance and resistance, and a
P0.1 the device shows without a value."""

MMHG_PER_KPA = 7.50062

_STEADY_SETTINGS: dict[SettingCode, float] = {
    SettingCode.FIO2: 40.0,
    SettingCode.VTI_ML: 480.0,
    SettingCode.RR: 14.0,
    SettingCode.PEEP: 5.0,
    SettingCode.PMAX: 40.0,
    SettingCode.PSUPP: 10.0,
    SettingCode.TI: 1.5,
}


def _device_value(code: MeasuredCodeCP1, vitals: dict[str, float | None]) -> float | None:
    """Return the patient's value for code in the device's unit (ours = device * scale)."""
    spec = MEASURED_CP1[code]
    value = vitals.get(spec.key)
    return None if value is None else value / spec.scale


class PatientScenario(Scenario):
    """A patient of the scenario engine on the simulated ventilator.

    The ventilator's own alarms follow its limits: a high-priority "Paw high" while PIP exceeds
    `paw_limit_mbar`, a medium "VT low" while VT is below `vt_low_limit_ml`. Settings stay the steady
    ones (the clinicians have not reacted yet); the mode text is VC-CMV.
    """

    def __init__(
        self, *, patient: Patient, paw_limit_mbar: float = 35.0, vt_low_limit_ml: float = 350.0
    ) -> None:
        super().__init__(patient=patient)
        self.name = patient.name
        self.paw_limit_mbar = paw_limit_mbar
        self.vt_low_limit_ml = vt_low_limit_ml

    def values_at(self, t_s: float) -> dict[MeasuredCodeCP1, float | None]:
        """Return the patient's values under the ventilator's codes, then the ventilator's extras."""
        vitals = self.patient.vitals_at(t_s)
        values = {code: _device_value(code, vitals) for code in REPORTED_CODES}
        etco2 = values[MeasuredCodeCP1.ETCO2_MMHG]
        values[MeasuredCodeCP1.ETCO2_KPA] = None if etco2 is None else round(etco2 / MMHG_PER_KPA, 1)
        values.update(VENTILATOR_EXTRAS)
        return values

    def settings_at(self, t_s: float) -> dict[SettingCode, float]:
        """Return the (unchanged) settings."""
        return dict(_STEADY_SETTINGS)

    def alarms_at(self, t_s: float) -> list[SimAlarm]:
        """Return the ventilator alarms the patient's values trigger against the device's limits."""
        values = self.values_at(t_s)
        alarms: list[SimAlarm] = []
        pip = values[MeasuredCodeCP1.PIP]
        vt = values[MeasuredCodeCP1.VT]
        if pip is not None and pip > self.paw_limit_mbar:
            alarms.append(SimAlarm(priority=8, code="21", text="Paw high"))
        if vt is not None and vt < self.vt_low_limit_ml:
            alarms.append(SimAlarm(priority=4, code="3A", text="VT low"))
        return alarms

    def texts_at(self, t_s: float) -> list[tuple[str, str]]:
        """Return the mode text the ventilator shows."""
        return [("01", "VC-CMV")]


class SteadyScenario(PatientScenario):
    """The steady patient on the ventilator: constant values, no alarms, one text message."""

    def __init__(self) -> None:
        super().__init__(patient=SteadyPatient())


NOISE_VALUES: dict[MeasuredCodeCP1, float | None] = {
    MeasuredCodeCP1.FIO2: 9421.0,
    MeasuredCodeCP1.VT: 9352.0,
    MeasuredCodeCP1.RR: 6618.0,
}
"""The impossible readings of issue 6 that a correct 8-bit checksum let through."""


class NoisyLineScenario(PatientScenario):
    """The steady patient on a noisy line: checksum-valid frames that carry impossible readings.

    Of each three seconds of scenario time, the first answers steady values, the second carries
    `NOISE_VALUES` in place of the steady FiO2, VT and RR, the third names VT three times (the
    duplicated-code frame of issue 6).
    """

    def __init__(self) -> None:
        super().__init__(patient=SteadyPatient())
        self.name = "noise"

    def measured_data_at(self, t_s: float) -> bytes:
        """Return steady, impossible or duplicated-code data, in turn, one per second of scenario time."""
        phase = int(t_s) % 3
        values = self.values_at(t_s)
        if phase == 1:
            values.update(NOISE_VALUES)
        payload = measured_payload(values)
        if phase == 2:
            payload += measured_payload({MeasuredCodeCP1.VT: 9352.0}) * 2
        return payload


def _patient_scenario(patient: type[Patient]) -> Callable[[], Scenario]:
    return lambda: PatientScenario(patient=patient())


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    **{name: _patient_scenario(patient) for name, patient in PATIENTS.items()},
    "noise": NoisyLineScenario,
}
"""What `--scenario` may name: every patient of `drivers.scenario.PATIENTS`, and the noisy line."""


def measured_payload(values: dict[MeasuredCodeCP1, float | None]) -> bytes:
    """Encode measured values as 6-char records (`----` for a value the device has not got)."""
    parts = [
        code.value + ("----" if value is None else format_value(value, width=_VALUE_WIDTH))
        for code, value in values.items()
    ]
    return "".join(parts).encode("latin-1")


def settings_payload(settings: dict[SettingCode, float]) -> bytes:
    """Encode settings as 7-char records."""
    parts = [code.value + format_value(value, width=_SETTING_WIDTH) for code, value in settings.items()]
    return "".join(parts).encode("latin-1")


def alarms_payload(alarms: Sequence[SimAlarm]) -> bytes:
    """Encode alarms as 15-char records: priority char, 2 hex code, 12-char text."""
    parts = [
        chr(ord("0") + a.priority) + a.code + a.text[:ALARM_TEXT_LEN].ljust(ALARM_TEXT_LEN) for a in alarms
    ]
    return "".join(parts).encode("latin-1")


def texts_payload(texts: Sequence[tuple[str, str]]) -> bytes:
    """Encode text messages: 2 hex code, length char, text, ETX."""
    return "".join(f"{code}{chr(ord('0') + len(text))}{text}\x03" for code, text in texts).encode("latin-1")


class VentilatorSimulator:
    """The device side of a MEDIBUS link, sans-I/O: feed it host bytes and the time, send what it returns."""

    def __init__(
        self,
        *,
        scenario: Scenario,
        start_s: float = 0.0,
        speed: float = 1.0,
        identification: DeviceIdentification = SIM_IDENTIFICATION,
        link_timeout_s: float = DEVICE_LINK_TIMEOUT_S,
        device_command_interval_s: float | None = 5.0,
        nest_device_commands: bool = False,
    ) -> None:
        self.scenario = scenario
        self.start_s = start_s
        self.speed = speed
        self.identification = identification
        self.link_timeout_s = link_timeout_s
        self.device_command_interval_s = device_command_interval_s
        self.nest_device_commands = nest_device_commands
        self.counters = LinkCounters()
        self.linked = False
        self.echoes_received = 0
        self._decoder = MedibusDecoder(counters=self.counters)
        self._out = bytearray()
        self._last_rx_s = start_s
        self._next_device_command_s = math.inf
        self._device_commands_sent = 0
        self._nested: Command | None = None
        self._streams: list[tuple[CurveConfig, int]] = []
        self._enabled_mask = 0
        self._host_sync_command: int | None = None
        self._next_cycle_s = math.inf
        self._cycles_sent = 0
        self._last_flow = math.nan
        """The flow of the last cycle sent (NaN before the first): its sign change marks a breath phase."""
        self._cycles: list[bytes] = []

    @property
    def streaming(self) -> bool:
        """True while the host has configured and enabled at least one realtime curve."""
        return self.linked and bool(self._enabled_mask & ((1 << len(self._streams)) - 1))

    def scenario_time_s(self, now_s: float) -> float:
        """Return the scenario time for a monotonic time."""
        return (now_s - self.start_s) * self.speed

    def receive(self, data: bytes, *, now_s: float) -> None:
        """Feed bytes from the host."""
        self.counters.bytes_in += len(data)
        for frame in self._decoder.feed(data):
            self._last_rx_s = now_s
            if isinstance(frame, Response):
                self.echoes_received += 1
            else:
                self._handle_command(frame, now_s=now_s)
        realtime = realtime_part(data)
        if realtime:
            self._receive_sync_commands(realtime, now_s=now_s)

    def poll(self, *, now_s: float) -> None:
        """Run the device's timers: its link time-out and its own commands to the host."""
        if not self.linked:
            return
        if now_s - self._last_rx_s > self.link_timeout_s:
            LOGGER.info("simulator: host silent for %.1f s, link ended", now_s - self._last_rx_s)
            self.counters.timeouts += 1
            self._unlink()
            return
        if self.streaming:
            self._stream(now_s=now_s)
        if now_s >= self._next_device_command_s:
            code = CommandCode.NOP if self._device_commands_sent % 2 == 0 else CommandCode.DEVICE_ID
            self._device_commands_sent += 1
            self._schedule_device_command(now_s=now_s)
            if self.nest_device_commands:
                self._nested = Command(code=code)
            else:
                self._send(Command(code=code))

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes for the host: realtime cycles spread inside the slow data."""
        slow, cycles = bytes(self._out), self._cycles
        self._out.clear()
        self._cycles = []
        if not cycles:
            return slow
        out = bytearray()
        done = 0
        for index, cycle in enumerate(cycles):
            cut = (index + 1) * len(slow) // (len(cycles) + 1)
            out += slow[done:cut] + cycle
            done = cut
        return bytes(out + slow[done:])

    def _unlink(self) -> None:
        """End the link: no more realtime curves until the host configures them again."""
        self.linked = False
        self._streams = []
        self._enabled_mask = 0

    def _receive_sync_commands(self, realtime: bytes, *, now_s: float) -> None:
        """Follow the host's raw sync sequences (`D0`, then command/argument pairs); few bytes, rarely."""
        for byte in realtime:
            if byte & SYNC_MASK == SYNC_BYTE:
                self._host_sync_command = None
            elif byte & SYNC_MASK != SYNC_COMMAND:
                continue
            elif self._host_sync_command is None:
                self._host_sync_command = byte
            else:
                command, self._host_sync_command = self._host_sync_command, None
                self._enable(command, byte & 0x0F, now_s=now_s)

    def _enable(self, command: int, bits: int, *, now_s: float) -> None:
        groups = (SyncCommand.DATASTREAM_1_4, SyncCommand.DATASTREAM_5_8, SyncCommand.DATASTREAM_9_12)
        if command not in groups or not self.linked:
            return
        shift = 4 * groups.index(SyncCommand(command))
        was_streaming = self.streaming
        self._enabled_mask = self._enabled_mask & ~(0x0F << shift) | bits << shift
        if self.streaming and not was_streaming:
            self._next_cycle_s = now_s
            self._last_flow = math.nan

    def _configure_streams(self, args: bytes) -> None:
        """Take the host's curve list (stream order); a new configuration stops the streams."""
        offered = {curve.code: curve for curve in SIM_CURVES}
        wanted = [
            (offered[code], multiplier) for code, multiplier in parse_configure_args(args) if code in offered
        ]
        self._streams = wanted[:MAX_STREAMS]
        self._enabled_mask = 0

    def _stream(self, *, now_s: float) -> None:
        """Queue the realtime cycles due up to now_s."""
        period_s = min(curve.interval_us for curve, _ in self._streams) * 1e-6
        self._next_cycle_s = max(self._next_cycle_s, now_s - MAX_REALTIME_BACKLOG_S)
        if now_s < self._next_cycle_s:
            return
        count = int((now_s - self._next_cycle_s) / period_s) + 1
        t0_s = self.scenario_time_s(self._next_cycle_s)
        period_scenario_s = period_s * self.speed
        flow = self.scenario.wave("flow", t0_s=t0_s, count=count, period_s=period_scenario_s)
        raws: list[list[int] | None] = []
        for index, (curve, _) in enumerate(self._streams):
            if self._enabled_mask >> index & 1:
                wave = self.scenario.wave(
                    SIM_CURVE_SIGNALS[curve.code], t0_s=t0_s, count=count, period_s=period_scenario_s
                )
                raws.append(curve.to_raw(wave).tolist())
            else:
                raws.append(None)
        previous = np.concatenate(([self._last_flow], flow[:-1]))
        marks = np.where(
            (flow > 0) & (previous <= 0),
            int(BreathMark.INSPIRATION_START),
            np.where((flow <= 0) & (previous > 0), int(BreathMark.EXPIRATION_START), 0),
        ).tolist()
        for j in range(count):
            cycle = self._cycles_sent + j
            samples = [
                None if stream is None or cycle % multiplier else stream[j]
                for stream, (_, multiplier) in zip(raws, self._streams, strict=True)
            ]
            commands = bytes((SyncCommand.START_CYCLE, marks[j])) if marks[j] else b""
            raw = encode_cycle(raws=samples, commands=commands)
            self._cycles.append(raw)
            self.counters.bytes_out += len(raw)
        self._cycles_sent += count
        self._last_flow = float(flow[-1])
        self._next_cycle_s += count * period_s

    def _schedule_device_command(self, *, now_s: float) -> None:
        interval = self.device_command_interval_s
        self._next_device_command_s = math.inf if interval is None else now_s + interval

    def _send(self, frame: Frame) -> None:
        raw = frame.to_bytes()
        if self._nested is not None and isinstance(frame, Response):
            middle = len(raw) // 2
            raw = raw[:middle] + self._nested.to_bytes() + raw[middle:]
            self.counters.frames_out += 1
            self._nested = None
        self._out += raw
        self.counters.bytes_out += len(raw)
        self.counters.frames_out += 1

    def _handle_command(self, frame: Command, *, now_s: float) -> None:
        code = CommandCode.lookup(frame.code)
        if code is CommandCode.ICC:
            if not self.linked:
                self.counters.handshakes += 1
                self._schedule_device_command(now_s=now_s)
            self._unlink()
            self.linked = True
        elif not self.linked:
            LOGGER.debug("simulator: ignoring %#04x before ICC", frame.code)
            return
        t_s = self.scenario_time_s(now_s)
        if code is CommandCode.DEVICE_ID:
            data = self.identification.to_payload()
        elif code is CommandCode.MEASURED_CP1:
            data = self.scenario.measured_data_at(t_s)
        elif code is CommandCode.DEVICE_SETTINGS:
            data = settings_payload(self.scenario.settings_at(t_s))
        elif code is CommandCode.ALARMS_CP1:
            data = alarms_payload(self.scenario.alarms_at(t_s))
        elif code is CommandCode.TEXT_MESSAGES:
            data = texts_payload(self.scenario.texts_at(t_s))
        elif code is CommandCode.REALTIME_CONFIG:
            data = b"".join(curve.to_record() for curve in SIM_CURVES)
        elif code is CommandCode.CONFIGURE_REALTIME:
            self._configure_streams(frame.args)
            data = b""
        else:
            data = b""
        if code is None:
            self.counters.unknown_commands += 1
        self._send(Response(code=frame.code, data=data))
        if code is CommandCode.STOP:
            self._unlink()


def run_simulator_on_pty(
    *,
    link_path: str,
    scenario: Scenario,
    stop_event: threading.Event | None = None,
    speed: float = 1.0,
    duration_s: float | None = None,
    faults: LineFaults | None = None,
) -> None:
    """Serve a simulated ventilator on a new pty whose slave is reachable through the symlink link_path.

    Runs until stop_event is set or duration_s has passed; removes the link on the way out. `faults`
    injects line faults (bit flips, a power cut mid-frame) for fault tests.
    """
    stop = stop_event if stop_event is not None else threading.Event()
    master_fd, slave_fd = os.openpty()
    try:
        tty.setraw(slave_fd)
        os.set_blocking(master_fd, False)
        slave_path = os.ttyname(slave_fd)
        replace_symlink(link_path=link_path, target=slave_path)
        LOGGER.info("simulator %s serving on %s -> %s", scenario.name, link_path, slave_path)
        try:
            _serve(
                master_fd=master_fd,
                scenario=scenario,
                stop=stop,
                speed=speed,
                duration_s=duration_s,
                faults=faults or LineFaults(),
            )
        finally:
            remove_symlink(link_path=link_path, target=slave_path)
    finally:
        os.close(master_fd)
        os.close(slave_fd)


def _serve(
    *,
    master_fd: int,
    scenario: Scenario,
    stop: threading.Event,
    speed: float,
    duration_s: float | None,
    faults: LineFaults,
) -> None:
    """Shuttle bytes between the pty master and the simulator until told to stop."""
    start_s = time.monotonic()
    end_s = math.inf if duration_s is None else start_s + duration_s
    simulator = VentilatorSimulator(scenario=scenario, start_s=start_s, speed=speed)
    line = FaultyLine(faults=faults, start_s=start_s)
    while not stop.is_set():
        readable, _, _ = select.select([master_fd], [], [], SELECT_TIMEOUT_S)
        now_s = time.monotonic()
        if now_s >= end_s:
            return
        if line.power_returned(now_s=now_s):
            simulator = VentilatorSimulator(scenario=scenario, start_s=start_s, speed=speed)
        if readable:
            try:
                data = os.read(master_fd, _READ_CHUNK_BYTES)
            except BlockingIOError:
                data = b""
            if not line.powered(now_s=now_s):
                continue
            simulator.receive(line.from_host(data), now_s=now_s)
        if not line.powered(now_s=now_s):
            continue
        simulator.poll(now_s=now_s)
        out = simulator.data_to_send()
        if out:
            write_available(master_fd, line.to_host(out, now_s=now_s))


def main(argv: Sequence[str] | None = None) -> int:
    """Run `sim medibus --pty LINK [--scenario NAME] [--seconds N] [--speed X]` (names: `SCENARIOS`)."""
    parser = argparse.ArgumentParser(prog="icu-edge sim medibus", description=__doc__.splitlines()[0])
    parser.add_argument("--pty", required=True, metavar="LINK", help="symlink to create for the pty slave")
    add_patient_arguments(parser, choices=SCENARIOS, default=DeterioratingPatient.name)
    _add_fault_arguments(parser)
    args = parser.parse_args(argv)
    check_speed(parser, args.speed)
    try:
        faults = LineFaults(
            bit_flip_rate=args.bit_flip_rate,
            seed=args.seed,
            power_off_after_s=args.power_off_after,
            power_off_s=args.power_off_for,
        )
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()
    restore_signals = stop_on_signals(stop, who="simulator")
    try:
        run_simulator_on_pty(
            link_path=args.pty,
            scenario=SCENARIOS[args.scenario](),
            stop_event=stop,
            speed=args.speed,
            duration_s=args.seconds,
            faults=faults,
        )
    finally:
        restore_signals()
    return 0


def _add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the line-fault options (see drivers.medibus.sim_faults)."""
    faults = parser.add_argument_group("line faults (for fault tests)")
    faults.add_argument(
        "--bit-flip-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="per byte, chance of one flipped bit (default: %(default)g)",
    )
    faults.add_argument(
        "--seed", type=int, default=0, help="seed of the bit-flip generator (default: %(default)s)"
    )
    faults.add_argument(
        "--power-off-after",
        type=float,
        default=None,
        metavar="S",
        help="cut the power mid-frame after S s (default: never)",
    )
    faults.add_argument(
        "--power-off-for",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds the power stays off (default: %(default)g)",
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
