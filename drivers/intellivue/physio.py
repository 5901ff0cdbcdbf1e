"""IntelliVue physiological ids, units and measurement states mapped onto the vocabulary.

Numerics: a NuObsValue's physio id picks the vocabulary key, its unit code the conversion to the key's
UCUM unit; its MeasurementState decides whether the value is valid, and DEMO/TEST data is refused
outright (never a Measurement). Waves: the physio id of a sample array picks the signal of
`drivers.vocabulary.WAVES`; samples are scaled to physical units with the array's scale range.
Ids and unit codes from the protocol notes §4.5 (VSCaptureMP `Class2.cs`); the pulmonary artery ids
(4A1D-4A1F) follow the IEEE 11073-10101 block of MDC_PRESS_BLD_ART_PULM.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from drivers.base import Measurement
from drivers.intellivue.messages import NuObsValue, SaSpec, ScaleSpec, decode_float
from drivers.vocabulary import TERMS, WAVES


class State(enum.IntFlag):
    """MeasurementState bits."""

    INVALID = 0x8000
    QUESTIONABLE = 0x4000
    UNAVAILABLE = 0x2000
    CALIBRATION_ONGOING = 0x1000
    TEST_DATA = 0x0800
    DEMO_DATA = 0x0400
    VALIDATED = 0x0080
    EARLY_INDICATION = 0x0040
    MSMT_ONGOING = 0x0020
    MSMT_STATE_IN_ALARM = 0x0002
    MSMT_STATE_AL_INHIBITED = 0x0001


_INVALIDATING: tuple[tuple[State, str], ...] = (
    (State.INVALID, "invalid"),
    (State.UNAVAILABLE, "unavailable"),
    (State.CALIBRATION_ONGOING, "calibrating"),
    (State.QUESTIONABLE, "questionable"),
)
"""States that make a value unusable, most severe first; the first one set names the device flag."""


def refusal_of(state: int) -> str | None:
    """Return `demo_data` / `test_data` when the state marks data that must never reach a twin."""
    if state & State.DEMO_DATA:
        return "demo_data"
    if state & State.TEST_DATA:
        return "test_data"
    return None


def invalid_flag(state: int) -> str | None:
    """Return the device's word for why a value is not valid, or None when its state allows it."""
    for bit, flag in _INVALIDATING:
        if state & bit:
            return flag
    return None


class Unit(enum.IntEnum):
    """Unit codes (NOM_DIM_*) seen on numerics and waves."""

    DIMLESS = 0x0200
    PERCENT = 0x0220
    BEATS_PER_MIN = 0x0AA0
    RESP_PER_MIN = 0x0AE0
    L_PER_MIN = 0x0C00
    ML = 0x0652
    MMHG = 0x0F20
    KPA = 0x0F03
    CMH2O = 0x0F40
    MV = 0x10B2
    DEGC = 0x17A0


_IDENTITY: Callable[[float], float] = float
KPA_TO_MMHG = 7.500617
CMH2O_TO_MBAR = 0.980665

_CONVERSIONS: Mapping[tuple[int, str], Callable[[float], float]] = MappingProxyType(
    {
        (Unit.PERCENT, "%"): _IDENTITY,
        (Unit.BEATS_PER_MIN, "/min"): _IDENTITY,
        (Unit.RESP_PER_MIN, "/min"): _IDENTITY,
        (Unit.L_PER_MIN, "L/min"): _IDENTITY,
        (Unit.ML, "mL"): _IDENTITY,
        (Unit.MMHG, "mm[Hg]"): _IDENTITY,
        (Unit.KPA, "mm[Hg]"): lambda v: round(v * KPA_TO_MMHG, 1),
        (Unit.CMH2O, "mbar"): lambda v: round(v * CMH2O_TO_MBAR, 2),
        (Unit.DEGC, "Cel"): _IDENTITY,
        (Unit.MV, "mV"): _IDENTITY,
        (Unit.DIMLESS, "1"): _IDENTITY,
        (Unit.DIMLESS, "%"): _IDENTITY,
    }
)
"""(device unit code, vocabulary unit) -> conversion to the vocabulary unit."""

NUMERICS: Mapping[int, str] = MappingProxyType(
    {
        0x4182: "hr",
        0x4822: "pr",
        0x4BB8: "spo2",
        0x4A05: "nbp_sys",
        0x4A06: "nbp_dia",
        0x4A07: "nbp_mean",
        0x4A11: "abp_sys",
        0x4A12: "abp_dia",
        0x4A13: "abp_mean",
        0x4A15: "abp_sys",
        0x4A16: "abp_dia",
        0x4A17: "abp_mean",
        0x4A1D: "pap_sys",
        0x4A1E: "pap_dia",
        0x4A1F: "pap_mean",
        0x4A47: "cvp",
        0x4B48: "temp",
        0xE014: "temp_blood",
        0x5808: "icp",
        0x500A: "rr",
        0x5012: "rr",
        0x50B0: "etco2",
        0x50BA: "imco2",
        0x5109: "ppeak",
        0x510B: "pmean",
        0x50E8: "pplat",
        0x513C: "vt",
        0x5148: "mv",
        0x514C: "mve",
        0x51A8: "peep",
        0x5284: "fio2",
        0x7498: "fio2",
    }
)
"""Numeric physio id -> vocabulary key (ART 4A1x and ABP 4A1x both feed the arterial pressure)."""

VITAL_UNITS: Mapping[str, int] = MappingProxyType(
    {
        "/min": Unit.BEATS_PER_MIN,
        "%": Unit.PERCENT,
        "mm[Hg]": Unit.MMHG,
        "Cel": Unit.DEGC,
        "mbar": Unit.CMH2O,
        "mL": Unit.ML,
        "L/min": Unit.L_PER_MIN,
    }
)
"""The unit code the simulator reports a vocabulary unit in (mbar as cmH2O, as monitors do)."""

WAVE_PHYSIO: Mapping[int, str] = MappingProxyType(
    {
        0x0102: "ecg",
        0x4BB4: "pleth",
        0x4A10: "abp",
        0x4A14: "abp",
        0x4A44: "cvp",
        0x5000: "resp",
        0x50AC: "co2",
        0x50F0: "paw",
        0x50D4: "flow",
    }
)
"""Sample-array physio id (the low half of the wave label TextId) -> wave signal."""

NOM_PART_SCADA = 0x0002
"""Partition of the physiological ids: a wave label TextId is `0002 <physio id>`."""


def numeric_key(physio_id: int) -> str | None:
    """Return the vocabulary key of a numeric physio id (None: not one we map)."""
    return NUMERICS.get(physio_id)


def convert(value: float, *, unit_code: int, unit: str) -> float | None:
    """Return value in the vocabulary unit, or None when the device's unit cannot be converted to it."""
    conversion = _CONVERSIONS.get((unit_code, unit))
    return None if conversion is None else conversion(value)


def to_measurement(obs: NuObsValue, *, key: str) -> Measurement:
    """Map one numeric observation (state already checked for refusal) to a Measurement."""
    vocabulary = TERMS[key]
    flag = invalid_flag(obs.state)
    value, special = decode_float(obs.raw_value)
    if flag is None:
        flag = special
    converted = None
    if flag is None and value is not None:
        converted = convert(value, unit_code=obs.unit_code, unit=vocabulary.unit)
        if converted is None:
            flag = f"unit_{obs.unit_code:04x}_not_convertible"
    return Measurement(
        key=key,
        value=converted if flag is None else None,
        unit=vocabulary.unit,
        device_code=f"{obs.physio_id:04X}",
        label=vocabulary.label,
        mdc_code=vocabulary.mdc,
        valid=flag is None,
        device_flag=flag,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class WaveFormat:
    """How to read one sample array: its spec, scale range (None: unscaled) and sample period."""

    spec: SaSpec
    scale: ScaleSpec | None
    sample_period_s: float


SA_FLAG_NO_SCALING = 0x2000
"""SaFlags bit: the samples are not scaled (raw values are the physical values)."""
MAX_SAMPLES_PER_ARRAY = 4096


def scale_samples(raw: bytes, *, wave: WaveFormat) -> tuple[float | None, ...]:
    """Return the samples of one array in physical units (ValueError when the format cannot be read).

    Masks each sample to its significant bits, then maps raw -> physical linearly through the scale
    range (VSCaptureMP `ScaleRangeSaValue`); SaFlags 2000 keeps the raw value. A scale range with a
    special FLOAT bound or equal scaled bounds cannot be used: every sample is None then.
    """
    spec = wave.spec
    if spec.sample_size not in (8, 16):
        raise ValueError(f"sample size {spec.sample_size} bits is not 8 or 16")
    dtype = ">u2" if spec.sample_size == 16 else "u1"
    step = spec.sample_size // 8
    if len(raw) % step or len(raw) // step > MAX_SAMPLES_PER_ARRAY:
        raise ValueError(f"{len(raw)} sample bytes do not make whole {spec.sample_size}-bit samples")
    bits = spec.significant_bits if 0 < spec.significant_bits <= spec.sample_size else spec.sample_size
    values = np.frombuffer(raw, dtype=dtype).astype(np.int64) & ((1 << bits) - 1)
    scale = wave.scale
    if spec.flags & SA_FLAG_NO_SCALING or scale is None:
        return tuple(values.astype(np.float64).tolist())
    lower, lower_special = decode_float(scale.lower_absolute)
    upper, upper_special = decode_float(scale.upper_absolute)
    span = scale.upper_scaled - scale.lower_scaled
    if lower is None or upper is None or lower_special or upper_special or span == 0:
        return (None,) * len(values)
    physical = lower + (values - scale.lower_scaled) * ((upper - lower) / span)
    return tuple(np.round(physical, 4).tolist())


def wave_signal(physio_id: int) -> str | None:
    """Return the wave signal of a sample-array physio id (None: not one we map)."""
    signal = WAVE_PHYSIO.get(physio_id)
    return signal if signal in WAVES else None
