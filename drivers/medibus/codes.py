"""MEDIBUS protocol codes: command bytes, codepage-1 measured-data and device-settings tables, priorities.

Sources: protocol notes §2.3 and §2.5 (VSCaptureDrgVent `Class2.cs`, OpenICE `Medibus.java` maps).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from drivers.base import AlarmPriority


class CommandCode(enum.IntEnum):
    """MEDIBUS command bytes (protocol notes §2.3)."""

    NOP = 0x30
    ICC = 0x51
    DEVICE_ID = 0x52
    STOP = 0x55
    ALARMS_CP3 = 0x23
    MEASURED_CP1 = 0x24
    LOW_LIMITS_CP1 = 0x25
    HIGH_LIMITS_CP1 = 0x26
    ALARMS_CP1 = 0x27
    DATE_TIME = 0x28
    DEVICE_SETTINGS = 0x29
    TEXT_MESSAGES = 0x2A
    MEASURED_CP2 = 0x2B
    LOW_LIMITS_CP2 = 0x2C
    HIGH_LIMITS_CP2 = 0x2D
    ALARMS_CP2 = 0x2E
    TIME_CHANGED = 0x49
    CONFIGURE_DATA_RESPONSE = 0x4A
    REALTIME_CONFIG = 0x53
    CONFIGURE_REALTIME = 0x54
    REALTIME_CONFIG_CHANGED = 0x56
    TREND_STATUS = 0x6C
    TREND_DATA = 0x6D

    @classmethod
    def lookup(cls, code: int) -> CommandCode | None:
        """Return the member for a received command byte, None for an unknown one."""
        try:
            return cls(code)
        except ValueError:
            return None


class MeasuredCodeCP1(enum.StrEnum):
    """Codepage-1 measured-data codes (two uppercase hex characters on the wire)."""

    PAW = "05"
    MV_INSP = "06"
    MV_EXP = "03"
    CDYN = "07"
    RESISTANCE = "08"
    VCO2 = "09"
    VT = "88"
    VTI = "8B"
    VTE_MAND = "83"
    VTE_SPON = "84"
    MV = "B9"
    MV_SPON = "B7"
    LEAK = "B2"
    LEAK_PCT = "B3"
    FIO2 = "F0"
    O2 = "C0"
    ETO2 = "EF"
    ETCO2_PCT = "DB"
    ETCO2_MMHG = "E6"
    ETCO2_KPA = "E3"
    SPO2 = "EB"
    HR = "DC"
    PULSE_RATE = "E1"
    IE_I = "E7"
    IE_E = "E8"
    RSBI = "C9"
    PIP = "7D"
    PMEAN = "73"
    PPLAT = "74"
    PEEP = "78"
    PEEPI = "79"
    PMIN = "71"
    P01 = "72"
    RR_MAND = "7B"
    RR = "D6"
    RR_SPON = "B5"
    RR_CO2 = "D5"
    RR_FLOW = "D7"


class SettingCode(enum.StrEnum):
    """Device-settings codes (`)` response, protocol notes §2.5)."""

    FIO2 = "01"
    INSP_FLOW = "02"
    VTI_L = "04"
    TI = "05"
    TE = "06"
    IE_I = "07"
    IE_E = "08"
    RR = "09"
    PEEP = "0B"
    PSUPP = "12"
    PMAX = "13"
    PINSP = "45"
    VTI_ML = "40"


@dataclass(frozen=True, slots=True, kw_only=True)
class ParameterSpec:
    """How one device code maps to our key, UCUM unit, label, MDC id and scale (ours = device * scale)."""

    key: str
    unit: str
    label: str
    mdc_code: str | None = None
    scale: float = 1.0


_M = MeasuredCodeCP1
MEASURED_CP1: Mapping[MeasuredCodeCP1, ParameterSpec] = MappingProxyType(
    {
        _M.PAW: ParameterSpec(key="paw", unit="mbar", label="Airway pressure", mdc_code="MDC_PRESS_AWAY"),
        _M.MV_INSP: ParameterSpec(key="mvi", unit="L/min", label="Inspiratory minute volume"),
        _M.MV_EXP: ParameterSpec(key="mve", unit="L/min", label="Expiratory minute volume"),
        _M.CDYN: ParameterSpec(key="cdyn", unit="L/bar", label="Dynamic compliance"),
        _M.RESISTANCE: ParameterSpec(key="r", unit="mbar/(L/s)", label="Resistance"),
        _M.VCO2: ParameterSpec(key="vco2", unit="mL/min", label="CO2 production"),
        _M.VT: ParameterSpec(key="vt", unit="mL", label="Tidal volume", mdc_code="MDC_VOL_AWAY_TIDAL"),
        _M.VTI: ParameterSpec(key="vti", unit="mL", label="Inspiratory tidal volume"),
        _M.VTE_MAND: ParameterSpec(key="vte_mand", unit="mL", label="Expiratory tidal volume, mandatory"),
        _M.VTE_SPON: ParameterSpec(key="vte_spon", unit="mL", label="Expiratory tidal volume, spontaneous"),
        _M.MV: ParameterSpec(key="mv", unit="L/min", label="Minute volume", mdc_code="MDC_VOL_MINUTE_AWAY"),
        _M.MV_SPON: ParameterSpec(key="mvspon", unit="L/min", label="Spontaneous minute volume"),
        _M.LEAK: ParameterSpec(key="leak", unit="mL/min", label="Leakage"),
        _M.LEAK_PCT: ParameterSpec(key="leak_pct", unit="%", label="Leakage fraction"),
        _M.FIO2: ParameterSpec(key="fio2", unit="%", label="FiO2", mdc_code="MDC_CONC_AWAY_O2_INSP"),
        _M.O2: ParameterSpec(key="o2", unit="%", label="O2 concentration"),
        _M.ETO2: ParameterSpec(key="eto2", unit="%", label="End-tidal O2"),
        _M.ETCO2_PCT: ParameterSpec(key="etco2_pct", unit="%", label="End-tidal CO2 (%)"),
        _M.ETCO2_MMHG: ParameterSpec(
            key="etco2", unit="mm[Hg]", label="End-tidal CO2", mdc_code="MDC_AWAY_CO2_ET"
        ),
        _M.ETCO2_KPA: ParameterSpec(key="etco2_kpa", unit="kPa", label="End-tidal CO2 (kPa)"),
        _M.SPO2: ParameterSpec(key="spo2", unit="%", label="SpO2", mdc_code="MDC_PULS_OXIM_SAT_O2"),
        _M.HR: ParameterSpec(key="hr", unit="/min", label="Heart rate", mdc_code="MDC_ECG_HEART_RATE"),
        _M.PULSE_RATE: ParameterSpec(
            key="pr", unit="/min", label="Pulse rate", mdc_code="MDC_PULS_OXIM_PULS_RATE"
        ),
        _M.IE_I: ParameterSpec(key="ie_i", unit="1", label="Measured I:E, I part"),
        _M.IE_E: ParameterSpec(key="ie_e", unit="1", label="Measured I:E, E part"),
        _M.RSBI: ParameterSpec(key="rsbi", unit="/min/L", label="Rapid shallow breathing index"),
        _M.PIP: ParameterSpec(
            key="ppeak", unit="mbar", label="Peak inspiratory pressure", mdc_code="MDC_PRESS_AWAY_INSP_PEAK"
        ),
        _M.PMEAN: ParameterSpec(
            key="pmean", unit="mbar", label="Mean airway pressure", mdc_code="MDC_PRESS_AWAY_INSP_MEAN"
        ),
        _M.PPLAT: ParameterSpec(
            key="pplat", unit="mbar", label="Plateau pressure", mdc_code="MDC_PRESS_RESP_PLAT"
        ),
        _M.PEEP: ParameterSpec(key="peep", unit="mbar", label="PEEP", mdc_code="MDC_PRESS_AWAY_END_EXP_POS"),
        _M.PEEPI: ParameterSpec(key="peepi", unit="mbar", label="Intrinsic PEEP"),
        _M.PMIN: ParameterSpec(key="pmin", unit="mbar", label="Minimum airway pressure"),
        _M.P01: ParameterSpec(key="p01", unit="mbar", label="Occlusion pressure P0.1"),
        _M.RR_MAND: ParameterSpec(key="rr_mand", unit="/min", label="Mandatory respiratory rate"),
        _M.RR: ParameterSpec(key="rr", unit="/min", label="Respiratory rate", mdc_code="MDC_VENT_RESP_RATE"),
        _M.RR_SPON: ParameterSpec(key="rr_spon", unit="/min", label="Spontaneous respiratory rate"),
        _M.RR_CO2: ParameterSpec(key="rr_co2", unit="/min", label="Respiratory rate from CO2"),
        _M.RR_FLOW: ParameterSpec(key="rr_flow", unit="/min", label="Respiratory rate from flow"),
    }
)

_S = SettingCode
DEVICE_SETTINGS: Mapping[SettingCode, ParameterSpec] = MappingProxyType(
    {
        _S.FIO2: ParameterSpec(key="fio2_set", unit="%", label="FiO2 setting"),
        _S.INSP_FLOW: ParameterSpec(key="flow_set", unit="L/min", label="Inspiratory flow setting"),
        _S.VTI_L: ParameterSpec(key="vt_set", unit="mL", label="Tidal volume setting", scale=1000.0),
        _S.TI: ParameterSpec(key="ti_set", unit="s", label="Inspiratory time setting"),
        _S.TE: ParameterSpec(key="te_set", unit="s", label="Expiratory time setting"),
        _S.IE_I: ParameterSpec(key="ie_i_set", unit="1", label="I:E setting, I part"),
        _S.IE_E: ParameterSpec(key="ie_e_set", unit="1", label="I:E setting, E part"),
        _S.RR: ParameterSpec(key="rr_set", unit="/min", label="Respiratory rate setting"),
        _S.PEEP: ParameterSpec(key="peep_set", unit="mbar", label="PEEP setting"),
        _S.PSUPP: ParameterSpec(key="psupp_set", unit="mbar", label="Pressure support setting"),
        _S.PMAX: ParameterSpec(key="pmax_set", unit="mbar", label="Pmax setting"),
        _S.PINSP: ParameterSpec(key="pinsp_set", unit="mbar", label="Inspiratory pressure setting"),
        _S.VTI_ML: ParameterSpec(key="vt_set", unit="mL", label="Tidal volume setting"),
    }
)

# Alarm priority. MEDIBUS sends the priority as one character '0' + n, a higher n meaning a more urgent
# alarm (protocol notes §2.4). The bands below are OUR assumption: the Rev 6.00 definition of the bands
# is not in our sources, so they err towards the higher IEC 60601-1-8 priority and must be checked
# against the Dräger document before clinical use.
HIGH_PRIORITY_MIN = 6
MEDIUM_PRIORITY_MIN = 3


def alarm_priority(level: int) -> AlarmPriority:
    """Map a MEDIBUS alarm priority number to an IEC 60601-1-8 priority (higher number = more urgent)."""
    if level >= HIGH_PRIORITY_MIN:
        return AlarmPriority.HIGH
    if level >= MEDIUM_PRIORITY_MIN:
        return AlarmPriority.MEDIUM
    return AlarmPriority.LOW
