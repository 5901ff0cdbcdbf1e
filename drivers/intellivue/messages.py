"""IntelliVue Data Export messages, sans-I/O: session SPDUs, remote operations, polls, attributes.

Everything is big-endian. A data message is `E1 00 00 02` (session + presentation context) followed by
an ROapdus {u16 ro_type, u16 length} and an ROIV / RORS / ROER / RORLS body. Encoders and decoders
exist for both ends: the appliance (client) and the monitor simulator use the same code.

The association SPDUs (AARQ, AARE, release, abort) carry an ACSE/presentation wrapping the protocol
treats as fixed bytes around the MDSE user information; `build_aarq` reproduces Philips' DevIfTest
AARQ byte for byte (tests/data/intellivue). The AARE the simulator sends follows the same wrapping;
no real monitor reply was available to check it against.

Every decoder raises `ValueError` (`MessageError`) on malformed input and never reads past its slice.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# ---- session layer ------------------------------------------------------------------------------


class Spdu(enum.IntEnum):
    """First byte of a message: the session SPDU identifier."""

    CN = 0x0D
    """Connect: Association Request (AARQ)."""
    AC = 0x0E
    """Accept: Association Result (AARE)."""
    RF = 0x0C
    """Refuse."""
    FN = 0x09
    """Finish: Release Request."""
    DN = 0x0A
    """Disconnect: Release Response."""
    AB = 0x19
    """Abort."""
    DATA = 0xE1
    """Data export message: `E1 00 00 02`."""


DATA_HEADER = bytes((0xE1, 0x00, 0x00, 0x02))

_AARQ_SESSION = bytes.fromhex("05 08 13 01 00 16 01 02 80 00 14 02 00 02")
_AARQ_PRESENTATION = bytes.fromhex(
    "31 80 A0 80 80 01 01 00 00 A2 80 A0 03 00 00 01 A4 80 30 80 02 01 01 06 04 52 01 00 01 30 80"
    " 06 02 51 01 00 00 00 00 30 80 02 01 02 06 0C 2A 86 48 CE 14 02 01 00 00 00 01 01 30 80 06 0C"
    " 2A 86 48 CE 14 02 01 00 00 00 02 01 00 00 00 00 00 00 61 80 30 80 02 01 01 A0 80 60 80 A1 80"
    " 06 0C 2A 86 48 CE 14 02 01 00 00 00 03 01 00 00 BE 80 28 80 06 0C 2A 86 48 CE 14 02 01 00 00"
    " 00 01 01 02 01 02 81"
)
_AARE_PRESENTATION = bytes.fromhex(
    "31 80 A0 80 80 01 01 00 00 A2 80 A0 03 00 00 01 A5 80 30 80 80 01 00 81 02 51 01 00 00 30 80"
    " 80 01 00 81 0C 2A 86 48 CE 14 02 01 00 00 00 02 00 00 00 00 61 80 30 80 02 01 01 A0 80 61 80"
    " A1 80 06 0C 2A 86 48 CE 14 02 01 00 00 00 03 A2 03 02 01 00 A3 05 A1 03 02 01 00 BE 80 28 80"
    " 02 01 02 81"
)
_PRESENTATION_TRAILER = bytes(16)
"""End-of-contents octets closing the indefinite-length constructs around the user information."""

RELEASE_REQUEST = bytes.fromhex(
    "09 18 C1 16 61 80 30 80 02 01 01 A0 80 62 80 80 01 00 00 00 00 00 00 00 00 00"
)
RELEASE_RESPONSE = bytes.fromhex(
    "0A 18 C1 16 61 80 30 80 02 01 01 A0 80 63 80 80 01 00 00 00 00 00 00 00 00 00"
)
ABORT = bytes.fromhex(
    "19 2E 11 01 03 C1 29 A0 80 A0 80 30 80 02 01 01 06 02 51 01 00 00 00 00 61 80 30 80 02 01 01"
    " A0 80 64 80 80 01 00 00 00 00 00 00 00 00 00"
)
REFUSE = bytes.fromhex("0C 03 32 01 00")
"""Refuse SPDU with a reason parameter (0 = no reason given)."""


class MessageError(ValueError):
    """A message that does not decode."""


def _li(length: int) -> bytes:
    """Return a session length indicator: one byte below 255, else FF + u16."""
    return bytes((length,)) if length < 255 else b"\xff" + struct.pack(">H", length)


def _ber_length(length: int) -> bytes:
    """Return the BER definite length of the user information (short or 81/82 long form)."""
    if length < 0x80:
        return bytes((length,))
    if length < 0x100:
        return b"\x81" + bytes((length,))
    return b"\x82" + struct.pack(">H", length)


def _wrap_association(spdu: int, presentation: bytes, user_info: bytes) -> bytes:
    user_data = presentation + _ber_length(len(user_info)) + user_info + _PRESENTATION_TRAILER
    body = _AARQ_SESSION + b"\xc1" + _li(len(user_data)) + user_data
    return bytes((spdu,)) + _li(len(body)) + body


@dataclass(frozen=True, slots=True, kw_only=True)
class PollProfile:
    """The poll profile a side offers in its association user information (times in 1/8 ms)."""

    min_poll_period: int = 0x000FDE80
    max_mtu_rx: int = 1000
    max_mtu_tx: int = 1000
    max_bw_tx: int = 0xFFFFFFFF
    options: int = 0x60000000
    ext_options: int = 0x88000000
    """`88000000`: 1-s numerics and real-time sample arrays in extended polls."""


MDDL_VERSION_1 = 0x80000000
NOMENCLATURE_VERSION = 0x40000000
SYSTEM_TYPE_CLIENT = 0x80000000
SYSTEM_TYPE_SERVER = 0x00800000
STARTUP_COLD = 0x20000000
NOM_POLL_PROFILE_SUPPORT = 0x0001
NOM_ATTR_POLL_PROFILE_EXT = 0xF001
_USER_INFO_HEAD = struct.Struct(">IIIII")
_PROFILE = struct.Struct(">IIIIII")


def user_info(*, profile: PollProfile, system_type: int) -> bytes:
    """Return MDSEUserInfoStd: versions, system type, cold start, no options, one poll profile."""
    ext = struct.pack(">HH", NOM_ATTR_POLL_PROFILE_EXT, 8) + struct.pack(">IHH", profile.ext_options, 0, 0)
    body = (
        _PROFILE.pack(
            0x80000000,
            profile.min_poll_period,
            profile.max_mtu_rx,
            profile.max_mtu_tx,
            profile.max_bw_tx,
            profile.options,
        )
        + struct.pack(">HH", 1, len(ext))
        + ext
    )
    profiles = struct.pack(">HH", NOM_POLL_PROFILE_SUPPORT, len(body)) + body
    return (
        _USER_INFO_HEAD.pack(MDDL_VERSION_1, NOMENCLATURE_VERSION, 0, system_type, STARTUP_COLD)
        + struct.pack(">HH", 0, 0)
        + struct.pack(">HH", 1, len(profiles))
        + profiles
    )


def build_aarq(profile: PollProfile = PollProfile()) -> bytes:
    """Return an Association Request offering the given poll profile."""
    return _wrap_association(
        Spdu.CN, _AARQ_PRESENTATION, user_info(profile=profile, system_type=SYSTEM_TYPE_CLIENT)
    )


def build_aare(profile: PollProfile = PollProfile()) -> bytes:
    """Return an Association Result (accept) as the simulated monitor sends it."""
    return _wrap_association(
        Spdu.AC, _AARE_PRESENTATION, user_info(profile=profile, system_type=SYSTEM_TYPE_SERVER)
    )


def spdu_of(message: bytes) -> Spdu | None:
    """Return the SPDU kind of a message (None for an unknown first byte or an empty message)."""
    if not message:
        return None
    try:
        return Spdu(message[0])
    except ValueError:
        return None


def check_association(message: bytes) -> None:
    """Check a CN/AC SPDU's length indicator against its size; MessageError when they disagree."""
    if len(message) < 2:
        raise MessageError("association SPDU without a length indicator")
    if message[1] == 0xFF:
        if len(message) < 4:
            raise MessageError("association SPDU with a truncated long length indicator")
        length, start = struct.unpack_from(">H", message, 2)[0], 4
    else:
        length, start = message[1], 2
    if len(message) - start != length:
        raise MessageError(f"association SPDU says {length} bytes, carries {len(message) - start}")


# ---- remote operations --------------------------------------------------------------------------


class RoType(enum.IntEnum):
    """ROapdus.ro_type."""

    ROIV = 1
    RORS = 2
    ROER = 3
    RORLS = 5


class Command(enum.IntEnum):
    """ROIV/RORS command_type."""

    EVENT_REPORT = 0
    CONFIRMED_EVENT_REPORT = 1
    GET = 3
    SET = 4
    CONFIRMED_SET = 5
    CONFIRMED_ACTION = 7


class LinkedState(enum.IntEnum):
    """RORLS state of one linked result."""

    FIRST = 1
    NOT_FIRST_NOT_LAST = 2
    LAST = 3


class RoError(enum.IntEnum):
    """ROER error_value (those the simulator sends)."""

    NO_SUCH_OBJECT_CLASS = 0
    NO_SUCH_ACTION = 9
    PROCESSING_FAILURE = 10
    INVALID_ARGUMENT = 15


NOM_ACT_POLL_MDIB_DATA = 0x0C16
NOM_ACT_POLL_MDIB_DATA_EXT = 0xF13B
NOM_NOTI_MDS_CREAT = 0x0D06
NOM_PART_OBJ = 0x0001


class ObjectClass(enum.IntEnum):
    """Managed object classes that can be polled (NOM_MOC_*)."""

    NUMERIC = 0x0006
    SAMPLE_ARRAY_RT = 0x0009
    MDS = 0x0021
    PATIENT = 0x002A
    ALARM_MONITOR = 0x0036


class Attr(enum.IntEnum):
    """Attribute ids used here (NOM_ATTR_*)."""

    AL_MON_P_AL_LIST = 0x0902
    AL_MON_T_AL_LIST = 0x0904
    ID_HANDLE = 0x0921
    ID_LABEL = 0x0924
    ID_LABEL_STRING = 0x0927
    ID_MODEL = 0x0928
    NU_CMPD_VAL_OBS = 0x094B
    NU_VAL_OBS = 0x0950
    SA_CALIB_I16 = 0x0964
    SA_CMPD_VAL_OBS = 0x0967
    SA_SPECN = 0x096D
    SA_VAL_OBS = 0x096E
    SCALE_SPECN_I16 = 0x096F
    TIME_ABS = 0x0987
    TIME_REL = 0x098F
    TIME_PD_SAMP = 0x098D
    TIME_STAMP_ABS = 0x0990
    TIME_STAMP_REL = 0x0991
    POLL_RTSA_PRIO_LIST = 0xF23A
    TIME_PD_POLL = 0xF13E


_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_RO_HEAD = struct.Struct(">HH")
_OP_HEAD = struct.Struct(">HHH")
_MANAGED = struct.Struct(">HHH")
_ACTION_ARG_HEAD = struct.Struct(">HHHIHH")
_ACTION_RESULT_HEAD = struct.Struct(">HHHHH")
_EVENT_HEAD = struct.Struct(">HHHIHH")
_EVENT_RESULT = struct.Struct(">HHHIHH")
_POLL_REQ = struct.Struct(">HHHH")
_POLL_REPLY_HEAD = struct.Struct(">HI8sHHH")
_POLL_REPLY_EXT_HEAD = struct.Struct(">HHI8sHHH")
_NU_OBS = struct.Struct(">HHHI")
_SA_SPECN = struct.Struct(">HBBH")
_SCALE = struct.Struct(">IIHH")
MDS_OBJECT = (ObjectClass.MDS, 0, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class DataApdu:
    """One decoded data message: its remote-operation header and the argument/result bytes."""

    ro_type: RoType
    invoke_id: int
    command: int
    """command_type for ROIV/RORS/RORLS, error_value for ROER."""
    payload: bytes
    linked_state: int | None = None
    linked_count: int | None = None


def _need(data: bytes, size: int, what: str) -> None:
    if len(data) < size:
        raise MessageError(f"{what}: needs {size} bytes, has {len(data)}")


def decode_data(message: bytes) -> DataApdu:
    """Decode a data message (`E1 00 00 02` ...); MessageError on anything malformed."""
    _need(message, 10, "data message")
    if message[:4] != DATA_HEADER:
        raise MessageError(f"not a data export message: {message[:4].hex()}")
    ro_raw, ro_len = _RO_HEAD.unpack_from(message, 4)
    if ro_len != len(message) - 8:
        raise MessageError(f"ROapdus length {ro_len} but {len(message) - 8} bytes follow")
    try:
        ro_type = RoType(ro_raw)
    except ValueError:
        raise MessageError(f"unknown ro_type {ro_raw}") from None
    pos, state, count = 8, None, None
    if ro_type is RoType.RORLS:
        _need(message, 16, "linked result")
        state, count = message[8], message[9]
        pos = 10
    _need(message, pos + 6, "remote operation header")
    invoke_id, command, length = _OP_HEAD.unpack_from(message, pos)
    payload = message[pos + 6 :]
    if length != len(payload):
        raise MessageError(f"operation length {length} but {len(payload)} bytes follow")
    return DataApdu(
        ro_type=ro_type,
        invoke_id=invoke_id,
        command=command,
        payload=payload,
        linked_state=state,
        linked_count=count,
    )


def _data(ro_type: RoType, prefix: bytes, invoke_id: int, command: int, payload: bytes) -> bytes:
    body = prefix + _OP_HEAD.pack(invoke_id, command, len(payload)) + payload
    return DATA_HEADER + _RO_HEAD.pack(ro_type, len(body)) + body


def encode_roiv(*, invoke_id: int, command: int, argument: bytes) -> bytes:
    """Return an invoke (request) message."""
    return _data(RoType.ROIV, b"", invoke_id, command, argument)


def encode_rors(*, invoke_id: int, command: int, result: bytes) -> bytes:
    """Return a result message."""
    return _data(RoType.RORS, b"", invoke_id, command, result)


def encode_rorls(*, state: LinkedState, count: int, invoke_id: int, command: int, result: bytes) -> bytes:
    """Return one linked result of a chain (state first / middle / last, count 1, 2, ...)."""
    return _data(RoType.RORLS, bytes((state, count & 0xFF)), invoke_id, command, result)


def encode_roer(*, invoke_id: int, error: RoError) -> bytes:
    """Return an error message without parameters."""
    return _data(RoType.ROER, b"", invoke_id, error, b"")


# ---- action (poll) arguments and results ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PollRequest:
    """A single (0C16) or extended (F13B) MDIB poll request."""

    extended: bool
    poll_number: int
    object_class: int
    period: int | None = None
    """Extended polls: NOM_ATTR_TIME_PD_POLL in 1/8 ms (None: none sent)."""


def encode_poll_request(request: PollRequest) -> bytes:
    """Return the ActionArgument of a poll request (without the ROIV header)."""
    body = _POLL_REQ.pack(request.poll_number, NOM_PART_OBJ, request.object_class, 0)
    action = NOM_ACT_POLL_MDIB_DATA
    if request.extended:
        action = NOM_ACT_POLL_MDIB_DATA_EXT
        avas = b"" if request.period is None else ava(Attr.TIME_PD_POLL, _U32.pack(request.period))
        body += attribute_list_header(1 if avas else 0, len(avas)) + avas
    return _ACTION_ARG_HEAD.pack(*MDS_OBJECT, 0, action, len(body)) + body


def decode_action_argument(payload: bytes) -> tuple[int, bytes]:
    """Return (action_type, argument bytes) of an ActionArgument."""
    _need(payload, _ACTION_ARG_HEAD.size, "action argument")
    *_, action, length = _ACTION_ARG_HEAD.unpack_from(payload)
    argument = payload[_ACTION_ARG_HEAD.size :]
    if length != len(argument):
        raise MessageError(f"action argument length {length} but {len(argument)} bytes follow")
    return action, argument


def decode_poll_request(payload: bytes) -> PollRequest:
    """Decode a poll ActionArgument; MessageError for another action or a malformed one."""
    action, argument = decode_action_argument(payload)
    if action not in (NOM_ACT_POLL_MDIB_DATA, NOM_ACT_POLL_MDIB_DATA_EXT):
        raise MessageError(f"action {action:#06x} is no poll")
    _need(argument, _POLL_REQ.size, "poll request")
    poll_number, _partition, code, _group = _POLL_REQ.unpack_from(argument)
    period = None
    if action == NOM_ACT_POLL_MDIB_DATA_EXT:
        for attribute_id, value in decode_attribute_list(argument[_POLL_REQ.size :]):
            if attribute_id == Attr.TIME_PD_POLL and len(value) == 4:
                period = _U32.unpack(value)[0]
    return PollRequest(
        extended=action == NOM_ACT_POLL_MDIB_DATA_EXT,
        poll_number=poll_number,
        object_class=code,
        period=period,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """One ObservationPoll: an object handle and its attributes (id, raw value) in order."""

    handle: int
    attributes: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PollReply:
    """A poll result: header fields and the observations of every context, in order."""

    extended: bool
    poll_number: int
    object_class: int
    rel_time: int = 0
    abs_time: bytes = bytes(8)
    sequence_no: int = 0
    observations: tuple[Observation, ...] = ()


def ava(attribute_id: int, value: bytes) -> bytes:
    """Return one AVA: u16 attribute id, u16 length, value."""
    return _RO_HEAD.pack(attribute_id, len(value)) + value


def attribute_list_header(count: int, length: int) -> bytes:
    """Return the {u16 count, u16 length} head of an AttributeList (or any counted list)."""
    return _RO_HEAD.pack(count, length)


def encode_attribute_list(attributes: Iterable[tuple[int, bytes]]) -> bytes:
    """Return an AttributeList of AVAs."""
    items = [ava(a, v) for a, v in attributes]
    body = b"".join(items)
    return attribute_list_header(len(items), len(body)) + body


def decode_attribute_list(data: bytes) -> list[tuple[int, bytes]]:
    """Decode an AttributeList that fills data exactly."""
    items, end = _decode_attribute_list_at(data, 0)
    if end != len(data):
        raise MessageError(f"attribute list ends at {end} of {len(data)} bytes")
    return items


def _decode_attribute_list_at(data: bytes, pos: int) -> tuple[list[tuple[int, bytes]], int]:
    _need(data, pos + 4, "attribute list")
    count, length = _RO_HEAD.unpack_from(data, pos)
    end = pos + 4 + length
    if end > len(data):
        raise MessageError(f"attribute list of {length} bytes overruns its message")
    items: list[tuple[int, bytes]] = []
    cursor = pos + 4
    for _ in range(count):
        if cursor + 4 > end:
            raise MessageError("attribute list holds fewer AVAs than it counts")
        attribute_id, value_len = _RO_HEAD.unpack_from(data, cursor)
        cursor += 4
        if cursor + value_len > end:
            raise MessageError(f"AVA {attribute_id:#06x} of {value_len} bytes overruns its list")
        items.append((attribute_id, data[cursor : cursor + value_len]))
        cursor += value_len
    if cursor != end:
        raise MessageError("attribute list length disagrees with its AVAs")
    return items, end


def encode_poll_info(contexts: Sequence[tuple[int, Sequence[Observation]]]) -> bytes:
    """Return a PollInfoList of (context id, observations) SingleContextPolls."""
    polls = []
    for context_id, observations in contexts:
        obs = b"".join(_U16.pack(o.handle) + encode_attribute_list(o.attributes) for o in observations)
        polls.append(_OP_HEAD.pack(context_id, len(observations), len(obs)) + obs)
    body = b"".join(polls)
    return attribute_list_header(len(polls), len(body)) + body


def decode_poll_info(data: bytes) -> list[Observation]:
    """Decode a PollInfoList that fills data exactly into its observations (contexts flattened)."""
    _need(data, 4, "poll info list")
    count, length = _RO_HEAD.unpack_from(data)
    if 4 + length != len(data):
        raise MessageError(f"poll info list says {length} bytes, carries {len(data) - 4}")
    observations: list[Observation] = []
    pos = 4
    for _ in range(count):
        _need(data, pos + 6, "single context poll")
        _context, obs_count, obs_len = _OP_HEAD.unpack_from(data, pos)
        pos += 6
        end = pos + obs_len
        if end > len(data):
            raise MessageError("single context poll overruns its list")
        for _ in range(obs_count):
            _need(data, pos + 2, "observation poll")
            handle = _U16.unpack_from(data, pos)[0]
            attributes, pos = _decode_attribute_list_at(data[:end], pos + 2)
            observations.append(Observation(handle=handle, attributes=tuple(attributes)))
        if pos != end:
            raise MessageError("single context poll length disagrees with its observations")
    if pos != len(data):
        raise MessageError("poll info list length disagrees with its contexts")
    return observations


def encode_poll_result(reply: PollReply, *, poll_info: bytes | None = None) -> bytes:
    """Return the ActionResult of a poll reply (without the RORS header)."""
    contexts = [(0, reply.observations)] if reply.observations else []
    info = poll_info if poll_info is not None else encode_poll_info(contexts)
    if reply.extended:
        head = _POLL_REPLY_EXT_HEAD.pack(
            reply.poll_number,
            reply.sequence_no,
            reply.rel_time,
            reply.abs_time,
            NOM_PART_OBJ,
            reply.object_class,
            0,
        )
        action = NOM_ACT_POLL_MDIB_DATA_EXT
    else:
        head = _POLL_REPLY_HEAD.pack(
            reply.poll_number, reply.rel_time, reply.abs_time, NOM_PART_OBJ, reply.object_class, 0
        )
        action = NOM_ACT_POLL_MDIB_DATA
    body = head + info
    return _ACTION_RESULT_HEAD.pack(*MDS_OBJECT, action, len(body)) + body


def decode_poll_result(payload: bytes) -> PollReply:
    """Decode a poll ActionResult (single or extended); MessageError on anything else."""
    _need(payload, _ACTION_RESULT_HEAD.size, "action result")
    *_, action, length = _ACTION_RESULT_HEAD.unpack_from(payload)
    body = payload[_ACTION_RESULT_HEAD.size :]
    if length != len(body):
        raise MessageError(f"action result length {length} but {len(body)} bytes follow")
    if action == NOM_ACT_POLL_MDIB_DATA_EXT:
        _need(body, _POLL_REPLY_EXT_HEAD.size, "extended poll reply")
        number, sequence, rel, abs_time, _part, code, _grp = _POLL_REPLY_EXT_HEAD.unpack_from(body)
        info = body[_POLL_REPLY_EXT_HEAD.size :]
    elif action == NOM_ACT_POLL_MDIB_DATA:
        _need(body, _POLL_REPLY_HEAD.size, "poll reply")
        number, rel, abs_time, _part, code, _grp = _POLL_REPLY_HEAD.unpack_from(body)
        sequence = 0
        info = body[_POLL_REPLY_HEAD.size :]
    else:
        raise MessageError(f"action result {action:#06x} is no poll reply")
    return PollReply(
        extended=action == NOM_ACT_POLL_MDIB_DATA_EXT,
        poll_number=number,
        object_class=code,
        rel_time=rel,
        abs_time=abs_time,
        sequence_no=sequence,
        observations=tuple(decode_poll_info(info)),
    )


# ---- event reports -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EventReport:
    """An EventReportArgument: the reporting object, event time and type, and its info bytes."""

    object_class: int
    event_time: int
    event_type: int
    info: bytes


def encode_event_report(report: EventReport) -> bytes:
    """Return an EventReportArgument."""
    return (
        _EVENT_HEAD.pack(report.object_class, 0, 0, report.event_time, report.event_type, len(report.info))
        + report.info
    )


def decode_event_report(payload: bytes) -> EventReport:
    """Decode an EventReportArgument."""
    _need(payload, _EVENT_HEAD.size, "event report")
    object_class, _ctx, _handle, event_time, event_type, length = _EVENT_HEAD.unpack_from(payload)
    info = payload[_EVENT_HEAD.size :]
    if length != len(info):
        raise MessageError(f"event report length {length} but {len(info)} bytes follow")
    return EventReport(object_class=object_class, event_time=event_time, event_type=event_type, info=info)


def encode_event_result(*, invoke_id: int, event_time: int, event_type: int = NOM_NOTI_MDS_CREAT) -> bytes:
    """Return the 28-byte RORS answering a confirmed event report (the MDS Create Event result)."""
    result = _EVENT_RESULT.pack(*MDS_OBJECT, event_time, event_type, 0)
    return encode_rors(invoke_id=invoke_id, command=Command.CONFIRMED_EVENT_REPORT, result=result)


def encode_mds_create_info(attributes: Iterable[tuple[int, bytes]]) -> bytes:
    """Return MDSCreateInfo: the MDS object id and its attribute list."""
    return _MANAGED.pack(*MDS_OBJECT) + encode_attribute_list(attributes)


def decode_mds_create_info(info: bytes) -> list[tuple[int, bytes]]:
    """Return the attribute list of an MDSCreateInfo."""
    _need(info, _MANAGED.size, "MDS create info")
    return decode_attribute_list(info[_MANAGED.size :])


def encode_system_model(*, manufacturer: str, model: str) -> bytes:
    """Return a SystemModel value: two VariableLabels (u16 length, ASCII)."""
    parts = []
    for text in (manufacturer, model):
        raw = text.encode("ascii")
        parts.append(_U16.pack(len(raw)) + raw)
    return b"".join(parts)


def decode_system_model(value: bytes) -> str:
    """Return `manufacturer model` from a SystemModel value (MessageError when malformed)."""
    texts, pos = [], 0
    for _ in range(2):
        _need(value, pos + 2, "system model")
        length = _U16.unpack_from(value, pos)[0]
        pos += 2
        if pos + length > len(value):
            raise MessageError("system model label overruns its value")
        texts.append(value[pos : pos + length].decode("ascii", "replace").strip("\0 "))
        pos += length
    return " ".join(t for t in texts if t)


# ---- GET / SET -----------------------------------------------------------------------------------


def decode_get_argument(payload: bytes) -> list[int]:
    """Return the attribute ids a GetArgument asks for (empty: all)."""
    _need(payload, 14, "get argument")
    count, length = _RO_HEAD.unpack_from(payload, 10)
    if length != len(payload) - 14 or length != 2 * count:
        raise MessageError("get argument id list length disagrees with its size")
    return [_U16.unpack_from(payload, 14 + 2 * i)[0] for i in range(count)]


def encode_get_argument(attribute_ids: Sequence[int]) -> bytes:
    """Return a GetArgument on the MDS for the given attribute ids."""
    ids = b"".join(_U16.pack(a) for a in attribute_ids)
    return (
        _MANAGED.pack(*MDS_OBJECT) + _U32.pack(0) + attribute_list_header(len(attribute_ids), len(ids)) + ids
    )


def decode_set_argument(payload: bytes) -> list[tuple[int, bytes]]:
    """Return the (attribute id, value) pairs a SetArgument modifies."""
    _need(payload, 14, "set argument")
    count, length = _RO_HEAD.unpack_from(payload, 10)
    if length != len(payload) - 14:
        raise MessageError("set argument modification list length disagrees with its size")
    pos, items = 14, []
    for _ in range(count):
        _need(payload, pos + 6, "attribute modification")
        _operator, attribute_id, value_len = _OP_HEAD.unpack_from(payload, pos)
        pos += 6
        if pos + value_len > len(payload):
            raise MessageError("attribute modification overruns its list")
        items.append((attribute_id, payload[pos : pos + value_len]))
        pos += value_len
    if pos != len(payload):
        raise MessageError("set argument holds more than its modifications")
    return items


def encode_set_argument(attributes: Sequence[tuple[int, bytes]]) -> bytes:
    """Return a SetArgument on the MDS replacing the given attributes."""
    mods = b"".join(_OP_HEAD.pack(0, a, len(v)) + v for a, v in attributes)
    return (
        _MANAGED.pack(*MDS_OBJECT) + _U32.pack(0) + attribute_list_header(len(attributes), len(mods)) + mods
    )


def encode_object_attributes(attributes: Iterable[tuple[int, bytes]]) -> bytes:
    """Return a GetResult / SetResult: the MDS object id and an attribute list."""
    return _MANAGED.pack(*MDS_OBJECT) + encode_attribute_list(attributes)


def encode_text_id_list(ids: Sequence[int]) -> bytes:
    """Return a TextIdList value."""
    body = b"".join(_U32.pack(i) for i in ids)
    return attribute_list_header(len(ids), len(body)) + body


# ---- attribute values -----------------------------------------------------------------------------


class FloatSpecial(enum.IntEnum):
    """The reserved FLOAT-Type values; none of them is a number."""

    NAN = 0x007FFFFF
    NRES = 0x00800000
    POSITIVE_INFINITY = 0x007FFFFE
    NEGATIVE_INFINITY = 0x00800002
    RESERVED = 0x00800001


FLOAT_SPECIAL_FLAGS: dict[int, str] = {
    FloatSpecial.NAN: "not_a_number",
    FloatSpecial.NRES: "not_at_this_resolution",
    FloatSpecial.POSITIVE_INFINITY: "positive_infinity",
    FloatSpecial.NEGATIVE_INFINITY: "negative_infinity",
    FloatSpecial.RESERVED: "reserved_value",
}


def decode_float(raw: int) -> tuple[float | None, str | None]:
    """Return (value, None), or (None, why) for one of the five special values.

    Top 8 bits: signed base-10 exponent; low 24 bits: signed mantissa. The value is rounded to the
    decimals its exponent carries, so `FF000048` is exactly 7.2, not 7.2000000000000002.
    """
    special = FLOAT_SPECIAL_FLAGS.get(raw & 0xFFFFFFFF)
    if special is not None:
        return None, special
    exponent = (raw >> 24) & 0xFF
    exponent = exponent - 0x100 if exponent & 0x80 else exponent
    mantissa = raw & 0xFFFFFF
    mantissa = mantissa - 0x1000000 if mantissa & 0x800000 else mantissa
    if exponent >= 0:
        return float(mantissa * 10**exponent), None
    return round(mantissa / 10 ** (-exponent), -exponent), None


def encode_float(value: float, *, decimals: int = 2) -> int:
    """Return value as FLOAT-Type with up to `decimals` decimals (fewer when the mantissa would not fit)."""
    exponent = -decimals
    mantissa = round(value * 10.0**decimals)
    while mantissa != 0 and mantissa % 10 == 0 and exponent < 0:
        mantissa //= 10
        exponent += 1
    while not -0x7FFFFD <= mantissa <= 0x7FFFFD:
        mantissa = round(mantissa / 10)
        exponent += 1
    if mantissa == 0:
        exponent = 0
    if not -128 <= exponent <= 127:
        raise ValueError(f"{value!r} does not fit a FLOAT-Type")
    return ((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF)


@dataclass(frozen=True, slots=True, kw_only=True)
class NuObsValue:
    """A numeric observation: physio id, MeasurementState, unit code, raw FLOAT-Type."""

    physio_id: int
    state: int
    unit_code: int
    raw_value: int


def encode_nu_obs(value: NuObsValue) -> bytes:
    """Return the NuObsValue bytes (the value of NOM_ATTR_NU_VAL_OBS)."""
    return _NU_OBS.pack(value.physio_id, value.state, value.unit_code, value.raw_value)


def encode_nu_compound(values: Sequence[NuObsValue]) -> bytes:
    """Return a NuObsValueCmp (the value of NOM_ATTR_NU_CMPD_VAL_OBS)."""
    body = b"".join(encode_nu_obs(v) for v in values)
    return attribute_list_header(len(values), len(body)) + body


def decode_nu_obs(value: bytes) -> NuObsValue:
    """Decode a NuObsValue."""
    if len(value) != _NU_OBS.size:
        raise MessageError(f"NuObsValue of {len(value)} bytes (expected {_NU_OBS.size})")
    physio, state, unit, raw = _NU_OBS.unpack(value)
    return NuObsValue(physio_id=physio, state=state, unit_code=unit, raw_value=raw)


def decode_nu_compound(value: bytes) -> list[NuObsValue]:
    """Decode a NuObsValueCmp."""
    _need(value, 4, "compound numeric")
    count, length = _RO_HEAD.unpack_from(value)
    if length != len(value) - 4 or length != count * _NU_OBS.size:
        raise MessageError("compound numeric length disagrees with its count")
    return [decode_nu_obs(value[4 + i * _NU_OBS.size : 4 + (i + 1) * _NU_OBS.size]) for i in range(count)]


@dataclass(frozen=True, slots=True, kw_only=True)
class SaObsValue:
    """A sample-array observation: physio id, MeasurementState, the raw sample bytes."""

    physio_id: int
    state: int
    samples: bytes


def encode_sa_obs(value: SaObsValue) -> bytes:
    """Return the SaObsValue bytes (the value of NOM_ATTR_SA_VAL_OBS)."""
    return _OP_HEAD.pack(value.physio_id, value.state, len(value.samples)) + value.samples


def decode_sa_obs(value: bytes) -> SaObsValue:
    """Decode an SaObsValue."""
    _need(value, 6, "sample array observation")
    physio, state, length = _OP_HEAD.unpack_from(value)
    if length != len(value) - 6:
        raise MessageError("sample array length disagrees with its value")
    return SaObsValue(physio_id=physio, state=state, samples=value[6:])


def decode_sa_compound(value: bytes) -> list[SaObsValue]:
    """Decode an SaObsValueCmp."""
    _need(value, 4, "compound sample array")
    count, length = _RO_HEAD.unpack_from(value)
    if length != len(value) - 4:
        raise MessageError("compound sample array length disagrees with its value")
    out, pos = [], 4
    for _ in range(count):
        _need(value, pos + 6, "compound sample array entry")
        n = _OP_HEAD.unpack_from(value, pos)[2]
        out.append(decode_sa_obs(value[pos : pos + 6 + n]))
        pos += 6 + n
    if pos != len(value):
        raise MessageError("compound sample array holds more than its entries")
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SaSpec:
    """NOM_ATTR_SA_SPECN: samples per array, bits per sample, significant bits, SaFlags."""

    array_size: int
    sample_size: int
    significant_bits: int
    flags: int


def encode_sa_spec(spec: SaSpec) -> bytes:
    """Return the SaSpec bytes."""
    return _SA_SPECN.pack(spec.array_size, spec.sample_size, spec.significant_bits, spec.flags)


def decode_sa_spec(value: bytes) -> SaSpec:
    """Decode an SaSpec."""
    if len(value) != _SA_SPECN.size:
        raise MessageError(f"SaSpec of {len(value)} bytes")
    size, sample, bits, flags = _SA_SPECN.unpack(value)
    return SaSpec(array_size=size, sample_size=sample, significant_bits=bits, flags=flags)


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleSpec:
    """NOM_ATTR_SCALE_SPECN_I16: two physical values (FLOAT-Type raw) and the raw values they map to."""

    lower_absolute: int
    upper_absolute: int
    lower_scaled: int
    upper_scaled: int


def encode_scale_spec(spec: ScaleSpec) -> bytes:
    """Return the ScaleRangeSpec16 bytes."""
    return _SCALE.pack(spec.lower_absolute, spec.upper_absolute, spec.lower_scaled, spec.upper_scaled)


def decode_scale_spec(value: bytes) -> ScaleSpec:
    """Decode a ScaleRangeSpec16."""
    if len(value) != _SCALE.size:
        raise MessageError(f"ScaleRangeSpec16 of {len(value)} bytes")
    lo, hi, lo_s, hi_s = _SCALE.unpack(value)
    return ScaleSpec(lower_absolute=lo, upper_absolute=hi, lower_scaled=lo_s, upper_scaled=hi_s)


def decode_u16(value: bytes) -> int:
    """Decode a u16 attribute value."""
    if len(value) != 2:
        raise MessageError(f"u16 attribute of {len(value)} bytes")
    return int(_U16.unpack(value)[0])


def decode_u32(value: bytes) -> int:
    """Decode a u32 attribute value (TextId, RelativeTime)."""
    if len(value) != 4:
        raise MessageError(f"u32 attribute of {len(value)} bytes")
    return int(_U32.unpack(value)[0])


def encode_u32(value: int) -> bytes:
    """Encode a u32 attribute value."""
    return _U32.pack(value)


# ---- alarms --------------------------------------------------------------------------------------

STR_ALMON_INFO = 0x0204
_ALARM_ENTRY = struct.Struct(">HHHHHHHHH")
_STR_ALMON = struct.Struct(">HIHH")


@dataclass(frozen=True, slots=True, kw_only=True)
class DevAlarm:
    """One DevAlarmEntry with its StrAlMonInfo text (the parts we use)."""

    source: int
    """Physio id the alarm is about."""
    code: int
    alert_type: int
    """AlertType: 1/2/4 low/medium/high technical, 0x100/0x200/0x400 low/medium/high physiological."""
    state: int
    text: str


def encode_alarm_list(alarms: Sequence[DevAlarm]) -> bytes:
    """Return a DevAlarmList of entries carrying a StrAlMonInfo (UTF-16BE text)."""
    entries = []
    for alarm in alarms:
        text = alarm.text.encode("utf-16-be")
        info = _STR_ALMON.pack(0, alarm.code, 0, 0) + _U16.pack(len(text)) + text
        entries.append(
            _ALARM_ENTRY.pack(
                alarm.source,
                alarm.code,
                alarm.alert_type,
                alarm.state,
                0x0006,
                0,
                0,
                STR_ALMON_INFO,
                len(info),
            )
            + info
        )
    body = b"".join(entries)
    return attribute_list_header(len(entries), len(body)) + body


def decode_alarm_list(value: bytes) -> list[DevAlarm]:
    """Decode a DevAlarmList; an entry without StrAlMonInfo gets its code as text."""
    _need(value, 4, "alarm list")
    count, length = _RO_HEAD.unpack_from(value)
    if length != len(value) - 4:
        raise MessageError("alarm list length disagrees with its value")
    alarms, pos = [], 4
    for _ in range(count):
        _need(value, pos + _ALARM_ENTRY.size, "alarm entry")
        source, code, alert_type, state, _cls, _ctx, _hnd, info_id, info_len = _ALARM_ENTRY.unpack_from(
            value, pos
        )
        pos += _ALARM_ENTRY.size
        if pos + info_len > len(value):
            raise MessageError("alarm entry info overruns its list")
        info = value[pos : pos + info_len]
        pos += info_len
        text = f"alarm {code:#06x}"
        if info_id == STR_ALMON_INFO and len(info) >= _STR_ALMON.size + 2:
            text_len = _U16.unpack_from(info, _STR_ALMON.size)[0]
            raw = info[_STR_ALMON.size + 2 : _STR_ALMON.size + 2 + text_len]
            text = raw.decode("utf-16-be", "replace").strip("\0 ") or text
        alarms.append(DevAlarm(source=source, code=code, alert_type=alert_type, state=state, text=text))
    if pos != len(value):
        raise MessageError("alarm list holds more than its entries")
    return alarms
