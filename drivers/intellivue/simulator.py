"""An IntelliVue monitor simulator: the device side of Data Export, sans-I/O, plus pty and UDP runners.

`MonitorSimulator` answers an AARQ with an AARE and its MDS Create Event, then answers every request
the real client capture (tests/data/intellivue) contains: extended and single polls of numerics,
real-time waves, alarms, the MDS and the patient; GET and SET of the RTSA priority list; the MDS
create result. A reply larger than `mtu_bytes` goes out as a chain of linked results (RORLS first,
middle, last) closed by an empty RORS. It answers a Release Request with a Release Response, drops
the association on an abort or after `link_timeout_s` of client silence, ignores data before an
association, and answers unknown operations with an ROER. Values come from `drivers.scenario`; with
`demo=True` every value carries DEMO_DATA (0400), as a monitor in demo mode sends.
The model it reports (`icu-edge SimMonitor`) is made up; nothing here is a capture of a real monitor.

Threads: none in the core; each runner owns its simulator on the calling thread.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import select
import socket
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from drivers.base import AlarmPriority, LinkCounters
from drivers.intellivue import messages as m
from drivers.intellivue.framing import FrameDecoder, encode_frame
from drivers.intellivue.physio import NOM_PART_SCADA, VITAL_UNITS, State, Unit
from drivers.pty_link import remove_symlink, replace_symlink, stop_on_signals, write_available
from drivers.scenario import PATIENTS, Patient, add_patient_arguments, check_speed
from drivers.vocabulary import TERMS

LOGGER = logging.getLogger(__name__)

DEVICE_LINK_TIMEOUT_S = 20.0
DEFAULT_MTU_BYTES = 1400
SELECT_TIMEOUT_S = 0.02
_READ_CHUNK_BYTES = 65536
MAX_WAVE_BACKLOG_S = 2.0
TICKS_PER_S = 8000
MANUFACTURER = "icu-edge"
MODEL = "SimMonitor"

SIM_NUMERICS: tuple[tuple[tuple[str, int], ...], ...] = (
    (("hr", 0x4182),),
    (("pr", 0x4822),),
    (("spo2", 0x4BB8),),
    (("nbp_sys", 0x4A05), ("nbp_dia", 0x4A06), ("nbp_mean", 0x4A07)),
    (("abp_sys", 0x4A15), ("abp_dia", 0x4A16), ("abp_mean", 0x4A17)),
    (("cvp", 0x4A47),),
    (("temp", 0x4B48),),
    (("rr", 0x500A),),
    (("etco2", 0x50B0),),
    (("imco2", 0x50BA),),
)
"""One numeric object per entry; entries of several values go out as compound (094B) observations."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimWave:
    """A real-time wave the simulator sends: how it is sampled and scaled."""

    signal: str
    physio_id: int
    period_ticks: int
    lower: float
    upper: float
    significant_bits: int
    flag_bits: int = 0
    """Bits set above the significant ones (the client must mask them off)."""

    @property
    def label(self) -> int:
        """Return the wave's TextId label."""
        return (NOM_PART_SCADA << 16) | self.physio_id


SIM_WAVES: tuple[SimWave, ...] = (
    SimWave(
        signal="ecg",
        physio_id=0x0102,
        period_ticks=16,
        lower=-4.0,
        upper=4.0,
        significant_bits=14,
        flag_bits=0x8000,
    ),
    SimWave(signal="pleth", physio_id=0x4BB4, period_ticks=64, lower=0.0, upper=1.0, significant_bits=12),
    SimWave(signal="abp", physio_id=0x4A14, period_ticks=64, lower=-40.0, upper=360.0, significant_bits=12),
    SimWave(signal="co2", physio_id=0x50AC, period_ticks=128, lower=0.0, upper=100.0, significant_bits=12),
)
_WAVE_HANDLE_BASE = 0x100
_ALARM_PRIORITY = {AlarmPriority.HIGH: 0x0400, AlarmPriority.MEDIUM: 0x0200, AlarmPriority.LOW: 0x0100}


def _physio_of(key: str) -> int:
    for entry in SIM_NUMERICS:
        for name, physio in entry:
            if name == key:
                return physio
    return 0


class MonitorSimulator:
    """The monitor side of an IntelliVue link, sans-I/O: feed it client bytes and the time."""

    def __init__(
        self,
        *,
        patient: Patient,
        start_s: float = 0.0,
        speed: float = 1.0,
        demo: bool = False,
        lan: bool = False,
        mtu_bytes: int = DEFAULT_MTU_BYTES,
        link_timeout_s: float = DEVICE_LINK_TIMEOUT_S,
        refuse_associations: int = 0,
    ) -> None:
        self.patient = patient
        self.start_s = start_s
        self.speed = speed
        self.demo = demo
        self.lan = lan
        self.mtu_bytes = mtu_bytes
        self.link_timeout_s = link_timeout_s
        self.refuse_associations = refuse_associations
        self.counters = LinkCounters()
        self.associated = False
        self.create_confirmed = 0
        self.mute = False
        """While true the monitor reads but never answers (a cable that lost its receive pair)."""
        self.requests: dict[str, int] = {}
        """Requests answered, by kind (`aarq`, `poll:0006`, `get`, `set`, `event_result`, `release`...)."""
        self.rtsa_priority: tuple[int, ...] = tuple(w.label for w in SIM_WAVES)
        self._decoder = FrameDecoder(counters=self.counters)
        self._out: list[bytes] = []
        self._last_rx_s = start_s
        self._invoke = 0
        self._wave_next_index: dict[int, int] = {}

    def scenario_time_s(self, now_s: float) -> float:
        """Return the scenario time for a monotonic time."""
        return (now_s - self.start_s) * self.speed

    def receive(self, data: bytes, *, now_s: float) -> None:
        """Feed client bytes (on the LAN: exactly one datagram)."""
        self.counters.bytes_in += len(data)
        if self.lan:
            messages = [bytes(data)] if data and data[:1] != b"\xc0" else []
            self.counters.frames_in += len(messages)
        else:
            messages = self._decoder.feed(data)
        for message in messages:
            self._last_rx_s = now_s
            try:
                self._handle(message, now_s=now_s)
            except m.MessageError as exc:
                self.counters.extra["malformed_messages"] = (
                    self.counters.extra.get("malformed_messages", 0) + 1
                )
                LOGGER.debug("simulator: malformed message dropped: %s", exc)

    def poll(self, *, now_s: float) -> None:
        """Run the monitor's timer: the association ends after `link_timeout_s` of client silence."""
        if self.associated and now_s - self._last_rx_s > self.link_timeout_s:
            LOGGER.info("simulator: client silent for %.1f s, association ended", now_s - self._last_rx_s)
            self.counters.timeouts += 1
            self.associated = False

    def data_to_send(self) -> bytes:
        """Return (and forget) output: all frames on serial, one datagram per call on the LAN."""
        if not self._out:
            return b""
        if self.lan:
            return self._out.pop(0)
        out = b"".join(self._out)
        self._out.clear()
        return out

    # ---- output -----------------------------------------------------------------------------------

    def _send(self, message: bytes) -> None:
        if self.mute:
            return
        raw = message if self.lan else encode_frame(message)
        self._out.append(raw)
        self.counters.bytes_out += len(raw)
        self.counters.frames_out += 1

    def _count(self, kind: str) -> None:
        self.requests[kind] = self.requests.get(kind, 0) + 1

    def _rel_time(self, now_s: float) -> int:
        return round(self.scenario_time_s(now_s) * TICKS_PER_S) & 0xFFFFFFFF

    # ---- input ------------------------------------------------------------------------------------

    def _handle(self, message: bytes, *, now_s: float) -> None:
        spdu = m.spdu_of(message)
        if spdu is m.Spdu.CN:
            m.check_association(message)
            self._count("aarq")
            if self.refuse_associations > 0:
                self.refuse_associations -= 1
                self._send(m.REFUSE)
                return
            self.associated = True
            self.counters.handshakes += 1
            self._send(m.build_aare(m.PollProfile(max_mtu_rx=self.mtu_bytes, max_mtu_tx=self.mtu_bytes)))
            self._send(self._mds_create_event(now_s=now_s))
        elif spdu is m.Spdu.FN:
            self._count("release")
            self._send(m.RELEASE_RESPONSE)
            self.associated = False
        elif spdu is m.Spdu.AB:
            self._count("abort")
            self.associated = False
        elif spdu is m.Spdu.DATA and self.associated:
            self._handle_data(m.decode_data(message), now_s=now_s)
        else:
            self.counters.unknown_commands += 1
            LOGGER.debug("simulator: ignoring %s message (associated=%s)", spdu, self.associated)

    def _handle_data(self, apdu: m.DataApdu, *, now_s: float) -> None:
        if apdu.ro_type is m.RoType.RORS and apdu.command == m.Command.CONFIRMED_EVENT_REPORT:
            self._count("event_result")
            self.create_confirmed += 1
            return
        if apdu.ro_type is not m.RoType.ROIV:
            self.counters.unknown_commands += 1
            return
        if apdu.command == m.Command.CONFIRMED_ACTION:
            self._answer_action(apdu, now_s=now_s)
        elif apdu.command == m.Command.GET:
            ids = m.decode_get_argument(apdu.payload)
            self._count("get")
            attributes = []
            if not ids or m.Attr.POLL_RTSA_PRIO_LIST in ids:
                attributes.append((m.Attr.POLL_RTSA_PRIO_LIST, m.encode_text_id_list(self.rtsa_priority)))
            result = m.encode_object_attributes(attributes)
            self._send(m.encode_rors(invoke_id=apdu.invoke_id, command=m.Command.GET, result=result))
        elif apdu.command in (m.Command.SET, m.Command.CONFIRMED_SET):
            changes = m.decode_set_argument(apdu.payload)
            self._count("set")
            for attribute_id, value in changes:
                if attribute_id == m.Attr.POLL_RTSA_PRIO_LIST and len(value) >= 4:
                    count = int.from_bytes(value[:2], "big")
                    listed = value[4 : 4 + 4 * count]
                    self.rtsa_priority = tuple(
                        int.from_bytes(listed[i : i + 4], "big") for i in range(0, len(listed), 4)
                    )
            if apdu.command == m.Command.CONFIRMED_SET:
                result = m.encode_object_attributes(changes)
                self._send(
                    m.encode_rors(invoke_id=apdu.invoke_id, command=m.Command.CONFIRMED_SET, result=result)
                )
        else:
            self.counters.unknown_commands += 1
            self._send(m.encode_roer(invoke_id=apdu.invoke_id, error=m.RoError.INVALID_ARGUMENT))

    def _answer_action(self, apdu: m.DataApdu, *, now_s: float) -> None:
        action, _argument = m.decode_action_argument(apdu.payload)
        if action not in (m.NOM_ACT_POLL_MDIB_DATA, m.NOM_ACT_POLL_MDIB_DATA_EXT):
            self._send(m.encode_roer(invoke_id=apdu.invoke_id, error=m.RoError.NO_SUCH_ACTION))
            return
        request = m.decode_poll_request(apdu.payload)
        self._count(f"poll:{request.object_class:04x}")
        t_s = self.scenario_time_s(now_s)
        if request.object_class == m.ObjectClass.NUMERIC:
            observations = self._numerics(t_s)
        elif request.object_class == m.ObjectClass.SAMPLE_ARRAY_RT:
            observations = self._waves(t_s)
        elif request.object_class == m.ObjectClass.ALARM_MONITOR:
            observations = self._alarms(t_s)
        elif request.object_class in (m.ObjectClass.MDS, m.ObjectClass.PATIENT):
            observations = []
        else:
            self._send(m.encode_roer(invoke_id=apdu.invoke_id, error=m.RoError.NO_SUCH_OBJECT_CLASS))
            return
        reply = m.PollReply(
            extended=request.extended,
            poll_number=request.poll_number,
            object_class=request.object_class,
            rel_time=self._rel_time(now_s),
        )
        self._send_chain(apdu.invoke_id, reply, observations)

    def _send_chain(self, invoke_id: int, reply: m.PollReply, observations: list[m.Observation]) -> None:
        """Send the reply in one RORS, or as RORLS first..last + an empty RORS when it passes the MTU."""
        budget = self.mtu_bytes - 64
        groups: list[list[m.Observation]] = [[]]
        size = 0
        for observation in observations:
            length = 6 + sum(4 + len(v) for _, v in observation.attributes)
            if groups[-1] and size + length > budget:
                groups.append([])
                size = 0
            groups[-1].append(observation)
            size += length
        action = m.Command.CONFIRMED_ACTION
        if len(groups) == 1:
            result = m.encode_poll_result(_with(reply, groups[0]))
            self._send(m.encode_rors(invoke_id=invoke_id, command=action, result=result))
            return
        for index, group in enumerate(groups):
            state = m.LinkedState.NOT_FIRST_NOT_LAST
            if index == 0:
                state = m.LinkedState.FIRST
            elif index == len(groups) - 1:
                state = m.LinkedState.LAST
            result = m.encode_poll_result(_with(reply, group))
            self._send(
                m.encode_rorls(
                    state=state, count=index + 1, invoke_id=invoke_id, command=action, result=result
                )
            )
        self._send(m.encode_rors(invoke_id=invoke_id, command=action, result=m.encode_poll_result(reply)))

    # ---- content ----------------------------------------------------------------------------------

    def _mds_create_event(self, *, now_s: float) -> bytes:
        info = m.encode_mds_create_info(
            [
                (m.Attr.ID_MODEL, m.encode_system_model(manufacturer=MANUFACTURER, model=MODEL)),
                (m.Attr.TIME_REL, m.encode_u32(self._rel_time(now_s))),
            ]
        )
        report = m.EventReport(
            object_class=m.ObjectClass.MDS,
            event_time=self._rel_time(now_s),
            event_type=m.NOM_NOTI_MDS_CREAT,
            info=info,
        )
        self._invoke = (self._invoke + 1) & 0xFFFF
        return m.encode_roiv(
            invoke_id=self._invoke,
            command=m.Command.CONFIRMED_EVENT_REPORT,
            argument=m.encode_event_report(report),
        )

    def _state(self) -> int:
        return State.DEMO_DATA if self.demo else 0

    def _nu(self, key: str, physio: int, value: float | None) -> m.NuObsValue:
        unit = TERMS[key].unit
        code = VITAL_UNITS.get(unit, Unit.DIMLESS)
        if key in ("rr",):
            code = Unit.RESP_PER_MIN
        raw = m.FloatSpecial.NAN if value is None else m.encode_float(value, decimals=1)
        return m.NuObsValue(physio_id=physio, state=self._state(), unit_code=code, raw_value=int(raw))

    def _numerics(self, t_s: float) -> list[m.Observation]:
        vitals = self.patient.vitals_at(t_s)
        observations = []
        for handle, entry in enumerate(SIM_NUMERICS, start=1):
            if not all(key in vitals for key, _ in entry):
                continue
            values = [self._nu(key, physio, vitals[key]) for key, physio in entry]
            label = m.encode_u32((NOM_PART_SCADA << 16) | entry[0][1])
            if len(values) == 1:
                attribute = (m.Attr.NU_VAL_OBS, m.encode_nu_obs(values[0]))
            else:
                attribute = (m.Attr.NU_CMPD_VAL_OBS, m.encode_nu_compound(values))
            observations.append(
                m.Observation(handle=handle, attributes=((m.Attr.ID_LABEL, label), attribute))
            )
        return observations

    def _waves(self, t_s: float) -> list[m.Observation]:
        observations = []
        for offset, wave in enumerate(SIM_WAVES):
            if wave.label not in self.rtsa_priority:
                continue
            period_s = wave.period_ticks / TICKS_PER_S
            newest = math.floor(t_s / period_s)
            first = self._wave_next_index.get(wave.physio_id, newest - round(0.25 / period_s))
            first = max(first, newest - round(MAX_WAVE_BACKLOG_S / period_s))
            count = newest - first
            if count <= 0:
                continue
            self._wave_next_index[wave.physio_id] = newest
            samples = self.patient.wave(wave.signal, t0_s=first * period_s, count=count, period_s=period_s)
            top = (1 << wave.significant_bits) - 1
            raw = np.clip(np.round((samples - wave.lower) / (wave.upper - wave.lower) * top), 0, top).astype(
                np.int64
            )
            raw = (raw | wave.flag_bits).astype(">u2")
            spec = m.SaSpec(array_size=count, sample_size=16, significant_bits=wave.significant_bits, flags=0)
            scale = m.ScaleSpec(
                lower_absolute=m.encode_float(wave.lower),
                upper_absolute=m.encode_float(wave.upper),
                lower_scaled=0,
                upper_scaled=top,
            )
            value = m.SaObsValue(physio_id=wave.physio_id, state=self._state(), samples=raw.tobytes())
            observations.append(
                m.Observation(
                    handle=_WAVE_HANDLE_BASE + offset,
                    attributes=(
                        (m.Attr.ID_LABEL, m.encode_u32(wave.label)),
                        (m.Attr.SA_SPECN, m.encode_sa_spec(spec)),
                        (m.Attr.SCALE_SPECN_I16, m.encode_scale_spec(scale)),
                        (m.Attr.TIME_PD_SAMP, m.encode_u32(wave.period_ticks)),
                        (m.Attr.SA_VAL_OBS, m.encode_sa_obs(value)),
                    ),
                )
            )
        return observations

    def _alarms(self, t_s: float) -> list[m.Observation]:
        alarms = [
            m.DevAlarm(
                source=_physio_of(alarm.key),
                code=_physio_of(alarm.key) ^ 0x1000,
                alert_type=_ALARM_PRIORITY[alarm.priority],
                state=0,
                text=alarm.text,
            )
            for alarm in self.patient.alarms_at(t_s)
        ]
        return [
            m.Observation(
                handle=1,
                attributes=(
                    (m.Attr.AL_MON_P_AL_LIST, m.encode_alarm_list(alarms)),
                    (m.Attr.AL_MON_T_AL_LIST, m.encode_alarm_list([])),
                ),
            )
        ]


def _with(reply: m.PollReply, observations: list[m.Observation]) -> m.PollReply:
    return m.PollReply(
        extended=reply.extended,
        poll_number=reply.poll_number,
        object_class=reply.object_class,
        rel_time=reply.rel_time,
        abs_time=reply.abs_time,
        sequence_no=reply.sequence_no,
        observations=tuple(observations),
    )


# ---- runners --------------------------------------------------------------------------------------


def run_on_pty(*, link_path: str, stop: threading.Event, duration_s: float | None, **kwargs: object) -> None:
    """Serve a simulated monitor on a new pty whose slave is reachable through the symlink link_path."""
    master_fd, slave_fd = os.openpty()
    try:
        tty.setraw(slave_fd)
        os.set_blocking(master_fd, False)
        slave_path = os.ttyname(slave_fd)
        replace_symlink(link_path=link_path, target=slave_path)
        LOGGER.info("IntelliVue simulator serving on %s -> %s", link_path, slave_path)
        start_s = time.monotonic()
        simulator = MonitorSimulator(start_s=start_s, lan=False, **kwargs)  # type: ignore[arg-type]
        end_s = math.inf if duration_s is None else start_s + duration_s
        try:
            while not stop.is_set():
                readable, _, _ = select.select([master_fd], [], [], SELECT_TIMEOUT_S)
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
        finally:
            remove_symlink(link_path=link_path, target=slave_path)
    finally:
        os.close(master_fd)
        os.close(slave_fd)


def run_on_udp(
    *, host: str, port: int, stop: threading.Event, duration_s: float | None, **kwargs: object
) -> None:
    """Serve a simulated monitor on UDP host:port; answers go to the address of the last request."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, port))
        sock.settimeout(SELECT_TIMEOUT_S)
        LOGGER.info("IntelliVue simulator serving on udp://%s:%d", host, port)
        start_s = time.monotonic()
        simulator = MonitorSimulator(start_s=start_s, lan=True, **kwargs)  # type: ignore[arg-type]
        end_s = math.inf if duration_s is None else start_s + duration_s
        peer: tuple[str, int] | None = None
        while not stop.is_set():
            try:
                data, address = sock.recvfrom(_READ_CHUNK_BYTES)
            except TimeoutError:
                data = b""
            except OSError as exc:
                LOGGER.debug("simulator: receive failed: %s", exc)
                data = b""
            now_s = time.monotonic()
            if now_s >= end_s:
                return
            if data:
                peer = (address[0], address[1])
                simulator.receive(data, now_s=now_s)
            simulator.poll(now_s=now_s)
            while out := simulator.data_to_send():
                if peer is not None:
                    try:
                        sock.sendto(out, peer)
                    except OSError as exc:
                        LOGGER.debug("simulator: send to %s failed: %s", peer, exc)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is no HOST:PORT")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `sim intellivue --pty LINK | --udp HOST:PORT [--scenario NAME] [--demo] [--waves...]`."""
    parser = argparse.ArgumentParser(prog="icu-edge sim intellivue", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", metavar="LINK", help="symlink to create for the pty slave (MIB/RS232)")
    where.add_argument(
        "--udp", metavar="HOST:PORT", help="listen for the client's datagrams (LAN, port 24105)"
    )
    add_patient_arguments(parser, choices=PATIENTS, default="steady")
    parser.add_argument("--demo", action="store_true", help="demo mode: every value carries DEMO_DATA (0400)")
    parser.add_argument(
        "--mtu",
        type=int,
        default=DEFAULT_MTU_BYTES,
        help="largest reply before a RORLS chain, bytes (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    check_speed(parser, args.speed)
    if not 256 <= args.mtu <= 65000:
        parser.error("--mtu must be from 256 to 65000 bytes")
    options: dict[str, object] = {
        "patient": PATIENTS[args.scenario](),
        "speed": args.speed,
        "demo": args.demo,
        "mtu_bytes": args.mtu,
    }
    stop = threading.Event()
    restore_signals = stop_on_signals(stop, who="simulator")
    try:
        if args.pty:
            run_on_pty(link_path=args.pty, stop=stop, duration_s=args.seconds, **options)
        else:
            try:
                host, port = _host_port(args.udp)
            except ValueError as exc:
                parser.error(str(exc))
            run_on_udp(host=host, port=port, stop=stop, duration_s=args.seconds, **options)
    finally:
        restore_signals()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
