"""S/5 record contents: requests, displayed-value (PHDB basic class) and wave subrecords, both ways.

A displayed-value subrecord (`dri_phdb`, 278 bytes) is `u32 time`, a 270-byte class block, `u8 marker`,
`u8 reserved`, `u16 cl_drilvl_subt` (class in bits 8-11). The basic class block is a row of groups,
each starting with `u32 status, u16 label_info`, followed by scaled i16 values. Any i16 below -32001 is
a "no data" code: it becomes an invalid `Measurement` with its own flag, never a number.

Invasive pressure channels p1..p4 are named by configuration (`p1 = "abp"` ...), not by their
`label_info`: the label coding is not in the sources the protocol notes cite, and naming an arterial
line by a guessed code would put a CVP under `abp_mean`. The defaults follow the usual set-up (p1
arterial, p2 central venous) and are stated on the device's options.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from drivers.base import Measurement, WaveformChunk
from drivers.datex.codec import HEADER_BYTES, Record, RecordHeader, SubrecordDescriptor
from drivers.datex.codes import (
    LIST_END,
    WAVE_INFO,
    MainType,
    NoData,
    PhdbClass,
    PhdbClassRequest,
    PhdbSubrecordType,
    WaveRequestType,
    WaveSubrecordType,
    no_data_flag,
)
from drivers.vocabulary import WAVES, term

PHDB_SUBRECORD_BYTES = 278
CLASS_BLOCK_BYTES = 270
_CLASS_I16 = CLASS_BLOCK_BYTES // 2
_PHDB_TIME = struct.Struct("<I")
_CLASS_BLOCK = struct.Struct(f"<{_CLASS_I16}h")
_PHDB_TRAILER = struct.Struct("<BBH")
_PHDB_REQUEST = struct.Struct("<BhIh")
_WAVE_REQUEST = struct.Struct("<hh8B10h")
_WAVE_HEADER = struct.Struct("<hHH")
WAVE_HEADER_BYTES = _WAVE_HEADER.size

PRESSURE_SITES = ("abp", "pap", "cvp", "icp", "off")
"""What an invasive pressure channel may be configured as."""
DEFAULT_PRESSURE_SITES: dict[str, str] = {"p1": "abp", "p2": "cvp", "p3": "off", "p4": "off"}


@dataclass(frozen=True, slots=True, kw_only=True)
class BasicField:
    """One i16 of the basic class: its byte offset in the 270-byte block and its scale."""

    offset: int
    scale: float
    """Physical value per count, in the unit the protocol sends."""


def _group(base: int, *names_scales: tuple[str, float]) -> dict[str, BasicField]:
    return {
        name: BasicField(offset=base + 6 + 2 * i, scale=scale) for i, (name, scale) in enumerate(names_scales)
    }


_PRESSURE_OFFSETS = {"p1": 16, "p2": 30, "p3": 44, "p4": 58}
_TEMP_OFFSETS = {"t1": 86, "t2": 94, "t3": 102, "t4": 110}
AMBIENT_FIELD = "co2.amb_press"

BASIC_FIELDS: dict[str, BasicField] = {
    **{f"ecg.{k}": v for k, v in _group(0, ("hr", 1.0), ("st1", 0.01), ("st2", 0.01), ("st3", 0.01)).items()},
    **{
        f"{p}.{k}": v
        for p, base in _PRESSURE_OFFSETS.items()
        for k, v in _group(base, ("sys", 0.01), ("dia", 0.01), ("mean", 0.01), ("hr", 1.0)).items()
    },
    **{
        f"nibp.{k}": v
        for k, v in _group(72, ("sys", 0.01), ("dia", 0.01), ("mean", 0.01), ("hr", 1.0)).items()
    },
    **{f"{t}.temp": BasicField(offset=base + 6, scale=0.01) for t, base in _TEMP_OFFSETS.items()},
    **{
        f"spo2.{k}": v
        for k, v in _group(118, ("spo2", 0.01), ("pr", 1.0), ("ir_amp", 1.0), ("svo2", 1.0)).items()
    },
    **{
        f"co2.{k}": v
        for k, v in _group(132, ("et", 0.01), ("fi", 0.01), ("rr", 1.0), ("amb_press", 0.1)).items()
    },
    **{f"o2.{k}": v for k, v in _group(146, ("et", 0.01), ("fi", 0.01)).items()},
    **{
        f"flow_vol.{k}": v
        for k, v in _group(
            178,
            ("rr", 1.0),
            ("ppeak", 0.01),
            ("peep", 0.01),
            ("pplat", 0.01),
            ("tv_insp", 0.1),
            ("tv_exp", 0.1),
            ("compliance", 0.01),
            ("mv_exp", 0.01),
        ).items()
    },
}
"""The basic-class values this driver reads (protocol notes §3.4; offsets inside the class block)."""

_CMH2O_TO_MBAR = 0.980665


@dataclass(frozen=True, slots=True, kw_only=True)
class ValueMap:
    """How one basic-class field becomes one vocabulary key."""

    key: str
    field: str
    factor: float = 1.0
    """Applied after the field's scale (cmH2O -> mbar)."""
    ambient: bool = False
    """A gas fraction in % turned into a partial pressure in mm[Hg] with the ambient pressure."""


def value_maps(*, pressure_sites: Mapping[str, str]) -> tuple[ValueMap, ...]:
    """Return the field -> key table for the configured invasive pressure sites."""
    maps = [ValueMap(key="hr", field="ecg.hr")]
    for channel in ("p1", "p2", "p3", "p4"):
        site = pressure_sites.get(channel, "off")
        if site in ("abp", "pap"):
            maps += [
                ValueMap(key=f"{site}_{part}", field=f"{channel}.{part}") for part in ("sys", "dia", "mean")
            ]
        elif site in ("cvp", "icp"):
            maps.append(ValueMap(key=site, field=f"{channel}.mean"))
    maps += [
        ValueMap(key="nbp_sys", field="nibp.sys"),
        ValueMap(key="nbp_dia", field="nibp.dia"),
        ValueMap(key="nbp_mean", field="nibp.mean"),
        ValueMap(key="temp", field="t1.temp"),
        ValueMap(key="temp_2", field="t2.temp"),
        ValueMap(key="spo2", field="spo2.spo2"),
        ValueMap(key="pr", field="spo2.pr"),
        ValueMap(key="etco2", field="co2.et", ambient=True),
        ValueMap(key="imco2", field="co2.fi", ambient=True),
        ValueMap(key="rr", field="co2.rr"),
        ValueMap(key="fio2", field="o2.fi"),
        ValueMap(key="eto2", field="o2.et"),
        ValueMap(key="ppeak", field="flow_vol.ppeak", factor=_CMH2O_TO_MBAR),
        ValueMap(key="peep", field="flow_vol.peep", factor=_CMH2O_TO_MBAR),
        ValueMap(key="pplat", field="flow_vol.pplat", factor=_CMH2O_TO_MBAR),
        ValueMap(key="vt", field="flow_vol.tv_exp"),
        ValueMap(key="mve", field="flow_vol.mv_exp"),
    ]
    if len({m.key for m in maps}) != len(maps):
        raise ValueError("two pressure channels name the same site")
    return tuple(maps)


# ---- requests ----------------------------------------------------------------------------------------


def phdb_request(
    *,
    interval_s: int,
    record_type: PhdbSubrecordType = PhdbSubrecordType.DISPLAYED,
    classes: PhdbClassRequest = PhdbClassRequest.BASIC,
    dri_level: int = 0,
    r_time: int = 0,
) -> Record:
    """Return the request for periodic displayed values every interval_s (0 stops, -1 once)."""
    data = _PHDB_REQUEST.pack(record_type, interval_s, int(classes), 0)
    header = RecordHeader(
        r_len=HEADER_BYTES + len(data),
        maintype=MainType.PHDB,
        dri_level=dri_level,
        r_time=r_time,
        subrecords=(SubrecordDescriptor(offset=0, type=PhdbSubrecordType.REQUEST),),
    )
    return Record(header=header, data=data)


@dataclass(frozen=True, slots=True, kw_only=True)
class PhdbRequest:
    """A decoded PHDB request (what the monitor side acts on)."""

    record_type: int
    interval_s: int
    classes: int


def parse_phdb_request(record: Record) -> PhdbRequest | None:
    """Return the PHDB request a record carries, None when it carries none."""
    header = record.header
    if header.maintype != MainType.PHDB or not header.subrecords:
        return None
    first = header.subrecords[0]
    if first.type != PhdbSubrecordType.REQUEST or first.offset + _PHDB_REQUEST.size > len(record.data):
        return None
    record_type, interval_s, classes, _ = _PHDB_REQUEST.unpack_from(record.data, first.offset)
    return PhdbRequest(record_type=record_type, interval_s=interval_s, classes=classes)


def wave_request(
    *, waves: Iterable[WaveSubrecordType], request: WaveRequestType, dri_level: int = 0, r_time: int = 0
) -> Record:
    """Return a wave request: start continuous transmission of up to 8 waves, or stop all."""
    ids = [int(w) for w in waves][:8]
    ids = (ids + [LIST_END] + [0] * 8)[:8]
    data = _WAVE_REQUEST.pack(request, 0, *ids, *([0] * 10))
    header = RecordHeader(
        r_len=HEADER_BYTES + len(data),
        maintype=MainType.WAVE,
        dri_level=dri_level,
        r_time=r_time,
        subrecords=(SubrecordDescriptor(offset=0, type=WaveSubrecordType.REQUEST),),
    )
    return Record(header=header, data=data)


@dataclass(frozen=True, slots=True, kw_only=True)
class WaveRequest:
    """A decoded wave request."""

    request: int
    waves: tuple[int, ...]


def parse_wave_request(record: Record) -> WaveRequest | None:
    """Return the wave request a record carries, None when it carries none."""
    header = record.header
    if header.maintype != MainType.WAVE or not header.subrecords:
        return None
    first = header.subrecords[0]
    if first.type != WaveSubrecordType.REQUEST or first.offset + 12 > len(record.data):
        return None
    request, _ = struct.unpack_from("<hh", record.data, first.offset)
    ids = record.data[first.offset + 4 : first.offset + 12]
    end = ids.find(bytes((LIST_END,)))
    return WaveRequest(request=request, waves=tuple(ids if end < 0 else ids[:end]))


# ---- displayed values --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DisplayedValues:
    """One basic-class displayed-value subrecord, as raw i16 by field name, and its time."""

    time_s: int
    raw: dict[str, int]
    labels: dict[str, int]
    """`label_info` of the invasive pressure groups, by channel (reported, not used to name)."""


def subrecord_class(subrecord: bytes) -> int | None:
    """Return the class (bits 8-11 of `cl_drilvl_subt`) of a 278-byte subrecord, None if short."""
    if len(subrecord) < PHDB_SUBRECORD_BYTES:
        return None
    _, _, cl_drilvl_subt = _PHDB_TRAILER.unpack_from(subrecord, 4 + CLASS_BLOCK_BYTES)
    return int((cl_drilvl_subt >> 8) & 0x0F)


def parse_basic(subrecord: bytes) -> DisplayedValues:
    """Read the basic-class fields of a 278-byte subrecord; ValueError when it is shorter."""
    if len(subrecord) < PHDB_SUBRECORD_BYTES:
        raise ValueError(
            f"a displayed-value subrecord has {PHDB_SUBRECORD_BYTES} bytes, got {len(subrecord)}"
        )
    (time_s,) = _PHDB_TIME.unpack_from(subrecord)
    words = _CLASS_BLOCK.unpack_from(subrecord, 4)
    raw = {name: words[f.offset // 2] for name, f in BASIC_FIELDS.items()}
    labels = {p: words[(base + 4) // 2] & 0xFFFF for p, base in _PRESSURE_OFFSETS.items()}
    return DisplayedValues(time_s=time_s, raw=raw, labels=labels)


def to_measurements(values: DisplayedValues, *, maps: Iterable[ValueMap]) -> tuple[Measurement, ...]:
    """Turn raw fields into measurements: scaled numbers, or invalid with the device's flag."""
    ambient_raw = values.raw[AMBIENT_FIELD]
    ambient_flag = no_data_flag(ambient_raw)
    if ambient_flag is None and ambient_raw <= 0:
        ambient_flag = "invalid"
    out: list[Measurement] = []
    for m in maps:
        raw = values.raw[m.field]
        flag = no_data_flag(raw)
        if flag is None and m.ambient:
            flag = ambient_flag
        value: float | None = None
        if flag is None:
            scaled = raw * BASIC_FIELDS[m.field].scale * m.factor
            if m.ambient:
                scaled = scaled / 100.0 * ambient_raw * BASIC_FIELDS[AMBIENT_FIELD].scale
            value = round(scaled, 2)
        t = term(m.key)
        out.append(
            Measurement(
                key=m.key,
                value=value,
                unit=t.unit,
                device_code=f"basic.{m.field}",
                label=t.label,
                mdc_code=t.mdc,
                valid=value is not None,
                device_flag=flag,
            )
        )
    return tuple(out)


def device_time(time_s: int) -> datetime | None:
    """Return the monitor's time stamp as a UTC datetime (None when it sent 0)."""
    return datetime.fromtimestamp(time_s, tz=UTC) if time_s > 0 else None


def basic_subrecord(
    *, raw: Mapping[str, int], time_s: int = 0, labels: Mapping[str, int] | None = None, dri_level: int = 0
) -> bytes:
    """Return a 278-byte basic-class subrecord; fields not in raw are DATA_INVALID (device side)."""
    words = [0] * _CLASS_I16
    for name, f in BASIC_FIELDS.items():
        words[f.offset // 2] = int(raw.get(name, NoData.DATA_INVALID))
    for channel, label in (labels or {}).items():
        words[(_PRESSURE_OFFSETS[channel] + 4) // 2] = struct.unpack("<h", struct.pack("<H", label))[0]
    return (
        _PHDB_TIME.pack(time_s)
        + _CLASS_BLOCK.pack(*words)
        + _PHDB_TRAILER.pack(0, 0, (PhdbClass.BASIC << 8) | (dri_level & 0xFF))
    )


def displayed_record(*, subrecords: list[bytes], r_time: int = 0, dri_level: int = 0) -> Record:
    """Return a PHDB record holding displayed-value subrecords (device side)."""
    descriptors = tuple(
        SubrecordDescriptor(offset=i * PHDB_SUBRECORD_BYTES, type=PhdbSubrecordType.DISPLAYED)
        for i in range(len(subrecords))
    )
    data = b"".join(subrecords)
    header = RecordHeader(
        r_len=HEADER_BYTES + len(data),
        maintype=MainType.PHDB,
        dri_level=dri_level,
        r_time=r_time,
        subrecords=descriptors,
    )
    return Record(header=header, data=data)


# ---- waves -------------------------------------------------------------------------------------------


def _samples(subrecord: bytes, count: int) -> array[int]:
    samples = array("h")
    samples.frombytes(subrecord[WAVE_HEADER_BYTES : WAVE_HEADER_BYTES + 2 * count])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def wave_subrecords(record: Record) -> list[tuple[int, bytes]]:
    """Return (wave id, subrecord bytes) per listed wave subrecord; each is sized by its act_len."""
    out: list[tuple[int, bytes]] = []
    data = record.data
    for descriptor in record.header.subrecords:
        start = descriptor.offset
        if start < 0 or start + WAVE_HEADER_BYTES > len(data):
            continue
        (count, _, _) = _WAVE_HEADER.unpack_from(data, start)
        end = start + WAVE_HEADER_BYTES + 2 * max(count, 0)
        if count < 0 or end > len(data):
            continue
        out.append((descriptor.type, data[start:end]))
    return out


def to_wave_chunk(wave_id: int, subrecord: bytes, *, ambient_mmhg: float | None) -> WaveformChunk | None:
    """Turn a wave subrecord into a chunk in physical units; None for a wave id we do not map.

    Samples below -32001 become None. A CO2 wave (in %) needs the ambient pressure; without one the
    chunk is refused (None) rather than scaled by a guess.
    """
    try:
        info = WAVE_INFO[WaveSubrecordType(wave_id)]
    except (ValueError, KeyError):
        return None
    (count, _, _) = _WAVE_HEADER.unpack_from(subrecord)
    scale = info.scale
    if info.signal == "co2":
        if ambient_mmhg is None:
            return None
        scale = info.scale / 100.0 * ambient_mmhg
    samples = tuple(None if s < -32001 else round(s * scale, 4) for s in _samples(subrecord, count))
    signal = WAVES[info.signal]
    return WaveformChunk(
        signal=info.signal,
        unit=signal.unit,
        sample_period_s=1.0 / info.rate_hz,
        samples=samples,
        device_code=f"wave.{WaveSubrecordType(wave_id).name}",
        label=signal.label,
    )


def wave_subrecord(samples: Iterable[int]) -> bytes:
    """Return one wave subrecord for raw i16 samples (device side)."""
    values = array("h", samples)
    if sys.byteorder == "big":
        values.byteswap()
    return _WAVE_HEADER.pack(len(values), 0, 0) + values.tobytes()


def wave_record(*, waves: list[tuple[int, bytes]], r_time: int = 0, dri_level: int = 0) -> Record:
    """Return a wave record holding (wave id, subrecord) pairs (device side, at most 8)."""
    offset = 0
    descriptors: list[SubrecordDescriptor] = []
    for wave_id, sub in waves:
        descriptors.append(SubrecordDescriptor(offset=offset, type=wave_id))
        offset += len(sub)
    data = b"".join(sub for _, sub in waves)
    header = RecordHeader(
        r_len=HEADER_BYTES + len(data),
        maintype=MainType.WAVE,
        dri_level=dri_level,
        r_time=r_time,
        subrecords=tuple(descriptors),
    )
    return Record(header=header, data=data)
