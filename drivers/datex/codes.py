"""GE Datex-Ohmeda S/5 computer interface (DRI) codes: record types, levels, wave ids, sentinels.

Sources: the protocol notes §3 (S/5 Computer Interface Specification as cited by VSCapture, pyCollect
and the KaiWU17TUM/icu_devices notes). Every code is an enum; an unknown code stays a plain int.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MainType(enum.IntEnum):
    """`r_maintype` of the record header."""

    PHDB = 0
    """Physiological database: displayed values and trends."""
    WAVE = 1
    ALARM = 4


class DriLevel(enum.IntEnum):
    """`dri_level` of the record header: the interface revision a record follows."""

    ANY = 0x00
    """Accepted by monitors, used by GE iCollect: the monitor answers at its own level."""
    L95 = 0x02
    L97 = 0x03
    L98 = 0x04
    L99 = 0x05
    L2000 = 0x06
    L2001 = 0x07
    L2003 = 0x08
    L2005 = 0x09
    L2009 = 0x0A
    L2015 = 0x0B


class PhdbSubrecordType(enum.IntEnum):
    """Subrecord type inside a PHDB record."""

    REQUEST = 0
    """A transmission request (client to monitor)."""
    DISPLAYED = 1
    TREND_10S = 2
    TREND_60S = 3
    AUX_INFO = 4


class WaveSubrecordType(enum.IntEnum):
    """Subrecord type inside a wave record: 0 is the request, the rest are wave ids."""

    REQUEST = 0
    ECG1 = 0x01
    ECG2 = 0x02
    ECG3 = 0x03
    INVP1 = 0x04
    INVP2 = 0x05
    INVP3 = 0x06
    INVP4 = 0x07
    PLETH = 0x08
    CO2 = 0x09
    O2 = 0x0A
    N2O = 0x0B
    AA = 0x0C
    AWP = 0x0D
    FLOW = 0x0E
    RESP = 0x0F
    INVP5 = 0x10
    INVP6 = 0x11
    VOL = 0x17


class WaveRequestType(enum.IntEnum):
    """`req_type` of a wave request."""

    START_CONTINUOUS = 0
    STOP = 1


class PhdbClass(enum.IntEnum):
    """Class of a displayed-value subrecord (bits 8-11 of `cl_drilvl_subt`)."""

    BASIC = 0
    EXT1 = 1
    EXT2 = 2
    EXT3 = 3


class PhdbClassRequest(enum.IntFlag):
    """`phdb_class_bf` of a PHDB request: which classes the monitor sends (bit 0 *denies* basic)."""

    BASIC = 0x00
    DENY_BASIC = 0x01
    EXT1 = 0x02
    EXT2 = 0x04
    EXT3 = 0x08


TX_INTERVAL_STOP_S = 0
"""`tx_interval` 0 stops the periodic transmission."""
TX_INTERVAL_SINGLE = -1
"""`tx_interval` -1 asks for one record."""
END_OF_SUBRECORDS = 0xFF
"""Subrecord descriptor type that ends the list."""
LIST_END = 0xFF
"""Ends the wave id list of a wave request."""

DATA_INVALID_LIMIT = -32001
"""An i16 below this is a "no data" code, never a number."""


class NoData(enum.IntEnum):
    """The i16 "no data" codes; each becomes an invalid value with its own flag."""

    DATA_INVALID = -32767
    NOT_UPDATED = -32766
    DISCONT = -32765
    """Discontinuity (calibration in progress)."""
    UNDER_RANGE = -32764
    OVER_RANGE = -32763
    NOT_CALIBRATED = -32762


NO_DATA_FLAGS: dict[int, str] = {
    NoData.DATA_INVALID: "invalid",
    NoData.NOT_UPDATED: "not_updated",
    NoData.DISCONT: "discontinuity",
    NoData.UNDER_RANGE: "under_range",
    NoData.OVER_RANGE: "over_range",
    NoData.NOT_CALIBRATED: "not_calibrated",
}
"""`Measurement.device_flag` per code; any other value below the limit is `invalid`."""


def no_data_flag(raw: int) -> str | None:
    """Return the flag of a "no data" code, None when raw is a number."""
    if raw >= DATA_INVALID_LIMIT:
        return None
    return NO_DATA_FLAGS.get(raw, "invalid")


@dataclass(frozen=True, slots=True, kw_only=True)
class WaveInfo:
    """One wave id: our signal name, its scale to physical units and its sample rate."""

    signal: str
    """`drivers.vocabulary.WAVES` name."""
    scale: float
    """Physical value per count (CO2 counts are 0.01 %, converted to mm[Hg] with the ambient pressure)."""
    rate_hz: int


WAVE_INFO: dict[WaveSubrecordType, WaveInfo] = {
    WaveSubrecordType.ECG1: WaveInfo(signal="ecg", scale=0.01, rate_hz=300),
    WaveSubrecordType.INVP1: WaveInfo(signal="abp", scale=0.01, rate_hz=100),
    WaveSubrecordType.INVP2: WaveInfo(signal="cvp", scale=0.01, rate_hz=100),
    WaveSubrecordType.PLETH: WaveInfo(signal="pleth", scale=0.01, rate_hz=100),
    WaveSubrecordType.CO2: WaveInfo(signal="co2", scale=0.01, rate_hz=25),
    WaveSubrecordType.AWP: WaveInfo(signal="paw", scale=0.1 * 0.980665, rate_hz=25),
    WaveSubrecordType.FLOW: WaveInfo(signal="flow", scale=0.01, rate_hz=25),
    WaveSubrecordType.VOL: WaveInfo(signal="volume", scale=0.01, rate_hz=25),
    WaveSubrecordType.RESP: WaveInfo(signal="resp", scale=0.01, rate_hz=25),
}
"""Scaling per VSCaptureWave `GetWaveUnitShift` (AWP 0.1 cmH2O, here in mbar), rates per pyCollect
`config/waves5.txt`. Units are VSCapture's assumptions (protocol notes §3.5): confirm against the DRI
specification before clinical display."""

WAVE_BUDGET_SAMPLES_PER_S = 600
"""The monitor refuses a wave request whose sample rates add up to more than this."""

DEFAULT_WAVES: tuple[WaveSubrecordType, ...] = (
    WaveSubrecordType.ECG1,
    WaveSubrecordType.INVP1,
    WaveSubrecordType.PLETH,
    WaveSubrecordType.CO2,
)
"""What `waves = true` asks for: 300 + 100 + 100 + 25 = 525 samples/s, inside the budget."""
