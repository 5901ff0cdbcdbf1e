"""One vocabulary for every protocol: the keys, UCUM units, labels and MDC ids a twin holds.

Whatever a value came through (MEDIBUS, IntelliVue, S/5, HL7), it reaches the twin under the same key
and unit, so a central station, an alarm limit and a forecast never care which device measured it.
Each driver maps its own codes onto these terms (`term(key)` gives the unit and label to use) and the
plausibility table holds one row per key.

A term's *domain* decides which device wins when two devices of one bed report the same key: by
default the monitor for haemodynamics, the ventilator for respiratory mechanics and gases (a bed's
config may say otherwise per key).

Waveform signals have their own small table (`WAVES`): a wave chunk is published by signal name.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class Domain(enum.StrEnum):
    """Which kind of device is the reference for a key when two devices report it."""

    HAEMODYNAMIC = "haemodynamic"
    RESPIRATORY = "respiratory"


class DeviceKind(enum.StrEnum):
    """What a driver talks to (the source-precedence defaults follow it)."""

    VENTILATOR = "ventilator"
    MONITOR = "monitor"


PREFERRED_KIND: Mapping[Domain, DeviceKind] = MappingProxyType(
    {Domain.HAEMODYNAMIC: DeviceKind.MONITOR, Domain.RESPIRATORY: DeviceKind.VENTILATOR}
)
"""The default reference device kind per domain."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Term:
    """One key of the vocabulary."""

    key: str
    unit: str
    """UCUM unit the value is reported in (the plausibility table's unit for the key)."""
    label: str
    domain: Domain
    mdc: str | None = None
    """IEEE 11073-10101 reference id, where one exists."""
    intermittent_max_age_s: float | None = None
    """For a value measured now and then (a cuff pressure every 5-60 min): how long it stays current.
    Continuous values go stale after the bed's `stale_after_s`."""


NIBP_MAX_AGE_S = 3900.0
"""A cuff pressure stays current for the longest automatic cycle ICU monitors offer (60 min) plus 5 min."""

_H = Domain.HAEMODYNAMIC
_RESP = Domain.RESPIRATORY


def _terms(*terms: Term) -> Mapping[str, Term]:
    table = {t.key: t for t in terms}
    if len(table) != len(terms):
        raise ValueError("a key appears twice in the vocabulary")
    return MappingProxyType(table)


TERMS: Mapping[str, Term] = _terms(
    # ---- haemodynamics: the monitor is the reference -------------------------------------------------
    Term(key="hr", unit="/min", label="Heart rate", domain=_H, mdc="MDC_ECG_HEART_RATE"),
    Term(key="pr", unit="/min", label="Pulse rate", domain=_H, mdc="MDC_PULS_OXIM_PULS_RATE"),
    Term(key="spo2", unit="%", label="SpO2", domain=_H, mdc="MDC_PULS_OXIM_SAT_O2"),
    Term(key="pi", unit="%", label="Perfusion index", domain=_H, mdc="MDC_PULS_OXIM_PERF_REL"),
    Term(
        key="nbp_sys",
        unit="mm[Hg]",
        label="NBP systolic",
        domain=_H,
        mdc="MDC_PRESS_BLD_NONINV_SYS",
        intermittent_max_age_s=NIBP_MAX_AGE_S,
    ),
    Term(
        key="nbp_dia",
        unit="mm[Hg]",
        label="NBP diastolic",
        domain=_H,
        mdc="MDC_PRESS_BLD_NONINV_DIA",
        intermittent_max_age_s=NIBP_MAX_AGE_S,
    ),
    Term(
        key="nbp_mean",
        unit="mm[Hg]",
        label="NBP mean",
        domain=_H,
        mdc="MDC_PRESS_BLD_NONINV_MEAN",
        intermittent_max_age_s=NIBP_MAX_AGE_S,
    ),
    Term(key="abp_sys", unit="mm[Hg]", label="ABP systolic", domain=_H, mdc="MDC_PRESS_BLD_ART_ABP_SYS"),
    Term(key="abp_dia", unit="mm[Hg]", label="ABP diastolic", domain=_H, mdc="MDC_PRESS_BLD_ART_ABP_DIA"),
    Term(key="abp_mean", unit="mm[Hg]", label="ABP mean", domain=_H, mdc="MDC_PRESS_BLD_ART_ABP_MEAN"),
    Term(key="map", unit="mm[Hg]", label="Mean arterial pressure", domain=_H, mdc="MDC_PRESS_BLD_ART_MEAN"),
    Term(key="pap_sys", unit="mm[Hg]", label="PAP systolic", domain=_H, mdc="MDC_PRESS_BLD_ART_PULM_SYS"),
    Term(key="pap_dia", unit="mm[Hg]", label="PAP diastolic", domain=_H, mdc="MDC_PRESS_BLD_ART_PULM_DIA"),
    Term(key="pap_mean", unit="mm[Hg]", label="PAP mean", domain=_H, mdc="MDC_PRESS_BLD_ART_PULM_MEAN"),
    Term(key="cvp", unit="mm[Hg]", label="CVP", domain=_H, mdc="MDC_PRESS_BLD_VEN_CENT_MEAN"),
    Term(key="icp", unit="mm[Hg]", label="Intracranial pressure", domain=_H, mdc="MDC_PRESS_INTRA_CRAN_MEAN"),
    Term(key="temp", unit="Cel", label="Temperature", domain=_H, mdc="MDC_TEMP"),
    Term(key="temp_2", unit="Cel", label="Temperature 2", domain=_H),
    Term(key="temp_blood", unit="Cel", label="Blood temperature", domain=_H, mdc="MDC_TEMP_BLD"),
    # ---- respiration and gases: the ventilator is the reference --------------------------------------
    Term(key="rr", unit="/min", label="Respiratory rate", domain=_RESP, mdc="MDC_RESP_RATE"),
    Term(key="etco2", unit="mm[Hg]", label="End-tidal CO2", domain=_RESP, mdc="MDC_AWAY_CO2_ET"),
    Term(key="imco2", unit="mm[Hg]", label="Inspired minimum CO2", domain=_RESP, mdc="MDC_AWAY_CO2_INSP_MIN"),
    Term(key="fio2", unit="%", label="FiO2", domain=_RESP, mdc="MDC_CONC_AWAY_O2_INSP"),
    Term(key="eto2", unit="%", label="End-tidal O2", domain=_RESP),
    Term(key="ppeak", unit="mbar", label="Peak pressure", domain=_RESP, mdc="MDC_PRESS_AWAY_INSP_PEAK"),
    Term(key="pmean", unit="mbar", label="Mean pressure", domain=_RESP, mdc="MDC_PRESS_AWAY_INSP_MEAN"),
    Term(key="pplat", unit="mbar", label="Plateau pressure", domain=_RESP, mdc="MDC_PRESS_RESP_PLAT"),
    Term(key="peep", unit="mbar", label="PEEP", domain=_RESP, mdc="MDC_PRESS_AWAY_END_EXP_POS"),
    Term(key="vt", unit="mL", label="Tidal volume", domain=_RESP, mdc="MDC_VOL_AWAY_TIDAL"),
    Term(key="mv", unit="L/min", label="Minute volume", domain=_RESP, mdc="MDC_VOL_MINUTE_AWAY"),
    Term(key="mve", unit="L/min", label="Expiratory minute volume", domain=_RESP),
)


def term(key: str) -> Term:
    """Return the term of key (KeyError for a key outside the vocabulary)."""
    return TERMS[key]


def domain_of(key: str) -> Domain:
    """Return the key's domain; a key outside the vocabulary is a ventilator's own (respiratory)."""
    found = TERMS.get(key)
    return _RESP if found is None else found.domain


@dataclass(frozen=True, slots=True, kw_only=True)
class WaveSignal:
    """One waveform signal: its name on `wave/{signal}`, unit and label."""

    signal: str
    unit: str
    label: str
    mdc: str | None = None


def _waves(*signals: WaveSignal) -> Mapping[str, WaveSignal]:
    return MappingProxyType({s.signal: s for s in signals})


WAVES: Mapping[str, WaveSignal] = _waves(
    WaveSignal(signal="ecg", unit="mV", label="ECG", mdc="MDC_ECG_ELEC_POTL_II"),
    WaveSignal(signal="pleth", unit="1", label="Pleth", mdc="MDC_PULS_OXIM_PLETH"),
    WaveSignal(signal="abp", unit="mm[Hg]", label="Arterial pressure", mdc="MDC_PRESS_BLD_ART_ABP"),
    WaveSignal(signal="cvp", unit="mm[Hg]", label="Central venous pressure", mdc="MDC_PRESS_BLD_VEN_CENT"),
    WaveSignal(signal="co2", unit="mm[Hg]", label="CO2", mdc="MDC_AWAY_CO2"),
    WaveSignal(signal="resp", unit="1", label="Respiration (impedance)", mdc="MDC_IMPED_TTHOR"),
    WaveSignal(signal="paw", unit="mbar", label="Airway pressure", mdc="MDC_PRESS_AWAY"),
    WaveSignal(signal="flow", unit="L/min", label="Airway flow", mdc="MDC_FLOW_AWAY"),
    WaveSignal(signal="volume", unit="mL", label="Volume", mdc="MDC_VOL_AWAY"),
)
