"""Code and unit maps from HL7 OBX rows to the vocabulary (built-in Mindray and IHE PCD-01 tables).

An OBX-3 identifier is looked up in this order: the device's own `codes` option (by identifier, then by
text), then the MDC table when the row names an MDC code (coding system `MDC` or a text `MDC_...`), else
the Mindray table (numeric ids without a coding system). An MDC row whose numeric code and name point
to different keys is refused: a value never reaches the twin under a key it may not mean.

Mindray 2.3.1 ids (protocol notes §5.1 and public Mindray-format examples): 101 HR, 151 RR, 160 SpO2,
161 PR, 170/171/172 NIBP sys/dia/mean, 200/201 T1/T2, 213 blood temperature, 500/501/502 ART
sys/mean/dia, 503/504/505 PA sys/mean/dia. Mindray leaves OBX-6 empty: the monitor's display units are
assumed (mmHg, Cel); a monitor set to kPa or Fahrenheit needs `codes = "170=nbp_sys@kPa; ..."`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from drivers.vocabulary import TERMS


@dataclass(frozen=True, slots=True, kw_only=True)
class CodeEntry:
    """Where one device code goes: a vocabulary key and the unit assumed when OBX-6 is empty."""

    key: str
    native_unit: str | None
    """UCUM unit of a value that comes without OBX-6; None: such a value is refused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UnitConversion:
    """How a device unit becomes a UCUM unit of the vocabulary: ucum = value * factor + offset."""

    ucum: str
    factor: float = 1.0
    offset: float = 0.0


def _native(key: str) -> CodeEntry:
    return CodeEntry(key=key, native_unit=TERMS[key].unit)


MINDRAY_CODES: Mapping[str, CodeEntry] = MappingProxyType(
    {
        "101": _native("hr"),
        "151": _native("rr"),
        "160": _native("spo2"),
        "161": _native("pr"),
        "170": _native("nbp_sys"),
        "171": _native("nbp_dia"),
        "172": _native("nbp_mean"),
        "200": _native("temp"),
        "201": _native("temp_2"),
        "213": _native("temp_blood"),
        "500": _native("abp_sys"),
        "501": _native("abp_mean"),
        "502": _native("abp_dia"),
        "503": _native("pap_sys"),
        "504": _native("pap_mean"),
        "505": _native("pap_dia"),
    }
)
"""Mindray numeric OBX-3 ids (2.3.1 gateway and monitor output)."""


def _mdc_names() -> Mapping[str, CodeEntry]:
    table = {
        t.mdc: CodeEntry(key=t.key, native_unit=None) for t in TERMS.values() if t.mdc and t.key != "map"
    }
    # The twin derives `map`; a generic arterial mean is the arterial line's mean.
    aliases = {
        "MDC_PRESS_BLD_ART_SYS": "abp_sys",
        "MDC_PRESS_BLD_ART_DIA": "abp_dia",
        "MDC_PRESS_BLD_ART_MEAN": "abp_mean",
        "MDC_PRESS_CUFF_SYS": "nbp_sys",
        "MDC_PRESS_CUFF_DIA": "nbp_dia",
        "MDC_PRESS_CUFF_MEAN": "nbp_mean",
        "MDC_PULS_RATE": "pr",
        "MDC_PULS_RATE_NON_INV": "pr",
        "MDC_TTHOR_RESP_RATE": "rr",
        "MDC_AWAY_RESP_RATE": "rr",
        "MDC_CO2_RESP_RATE": "rr",
    }
    table.update({name: CodeEntry(key=key, native_unit=None) for name, key in aliases.items()})
    return MappingProxyType(table)


MDC_NAMES: Mapping[str, CodeEntry] = _mdc_names()
"""MDC reference ids (OBX-3.2 of a PCD-01 row) -> key."""

MDC_NUMBERS: Mapping[str, str] = MappingProxyType(
    {
        "147842": "MDC_ECG_HEART_RATE",
        "149522": "MDC_PULS_RATE",
        "149530": "MDC_PULS_OXIM_PULS_RATE",
        "149546": "MDC_PULS_RATE_NON_INV",
        "150456": "MDC_PULS_OXIM_SAT_O2",
        "150017": "MDC_PRESS_BLD_ART_SYS",
        "150018": "MDC_PRESS_BLD_ART_DIA",
        "150019": "MDC_PRESS_BLD_ART_MEAN",
        "150021": "MDC_PRESS_BLD_NONINV_SYS",
        "150022": "MDC_PRESS_BLD_NONINV_DIA",
        "150023": "MDC_PRESS_BLD_NONINV_MEAN",
        "150033": "MDC_PRESS_BLD_ART_ABP_SYS",
        "150034": "MDC_PRESS_BLD_ART_ABP_DIA",
        "150035": "MDC_PRESS_BLD_ART_ABP_MEAN",
        "150045": "MDC_PRESS_BLD_ART_PULM_SYS",
        "150046": "MDC_PRESS_BLD_ART_PULM_DIA",
        "150047": "MDC_PRESS_BLD_ART_PULM_MEAN",
        "150087": "MDC_PRESS_BLD_VEN_CENT_MEAN",
        "150344": "MDC_TEMP",
        "151562": "MDC_RESP_RATE",
        "151578": "MDC_TTHOR_RESP_RATE",
    }
)
"""MDC numeric codes (OBX-3.1 of a PCD-01 row: partition * 65536 + term code) -> reference id; only
codes seen in published PCD-01 messages or derived from a seen neighbour of the same block."""

UNITS: Mapping[str, UnitConversion] = MappingProxyType(
    {
        # UCUM spellings and common device spellings
        "/min": UnitConversion(ucum="/min"),
        "1/min": UnitConversion(ucum="/min"),
        "{beat}/min": UnitConversion(ucum="/min"),
        "{beats}/min": UnitConversion(ucum="/min"),
        "{breath}/min": UnitConversion(ucum="/min"),
        "{resp}/min": UnitConversion(ucum="/min"),
        "bpm": UnitConversion(ucum="/min"),
        "rpm": UnitConversion(ucum="/min"),
        "%": UnitConversion(ucum="%"),
        "mm[Hg]": UnitConversion(ucum="mm[Hg]"),
        "mmHg": UnitConversion(ucum="mm[Hg]"),
        "kPa": UnitConversion(ucum="mm[Hg]", factor=760.0 / 101.325),
        "Cel": UnitConversion(ucum="Cel"),
        "degC": UnitConversion(ucum="Cel"),
        "[degF]": UnitConversion(ucum="Cel", factor=5.0 / 9.0, offset=-32.0 * 5.0 / 9.0),
        "mbar": UnitConversion(ucum="mbar"),
        "cm[H2O]": UnitConversion(ucum="mbar", factor=0.980665),
        "cmH2O": UnitConversion(ucum="mbar", factor=0.980665),
        "mL": UnitConversion(ucum="mL"),
        "L/min": UnitConversion(ucum="L/min"),
        # MDC dimension reference ids (OBX-6.2 of a PCD-01 row) and their numeric codes (OBX-6.1)
        "MDC_DIM_BEAT_PER_MIN": UnitConversion(ucum="/min"),
        "264864": UnitConversion(ucum="/min"),
        "MDC_DIM_RESP_PER_MIN": UnitConversion(ucum="/min"),
        "264928": UnitConversion(ucum="/min"),
        "MDC_DIM_PERCENT": UnitConversion(ucum="%"),
        "262688": UnitConversion(ucum="%"),
        "MDC_DIM_MMHG": UnitConversion(ucum="mm[Hg]"),
        "266016": UnitConversion(ucum="mm[Hg]"),
        "MDC_DIM_KILO_PASCAL": UnitConversion(ucum="mm[Hg]", factor=760.0 / 101.325),
        "MDC_DIM_DEGC": UnitConversion(ucum="Cel"),
        "268192": UnitConversion(ucum="Cel"),
        "MDC_DIM_FAHR": UnitConversion(ucum="Cel", factor=5.0 / 9.0, offset=-32.0 * 5.0 / 9.0),
        "MDC_DIM_CM_H2O": UnitConversion(ucum="mbar", factor=0.980665),
        "MDC_DIM_MILLI_BAR": UnitConversion(ucum="mbar"),
        "MDC_DIM_MILLI_L": UnitConversion(ucum="mL"),
        "MDC_DIM_L_PER_MIN": UnitConversion(ucum="L/min"),
    }
)
"""Device unit (OBX-6 identifier or text) -> conversion into a UCUM unit of the vocabulary."""


class CodeMapError(ValueError):
    """The `codes` option is not a list of CODE=KEY[@UNIT] entries."""


def parse_code_map(text: str) -> dict[str, CodeEntry]:
    """Parse the `codes` option: `CODE=KEY[@UNIT]` entries separated by `;` or `,`.

    CODE is an OBX-3 identifier or text (`9001`, `MDC_X`); KEY a vocabulary key (not `map`); UNIT the
    unit of values sent without OBX-6 (a unit of the `UNITS` table), else the key's own unit.
    """
    table: dict[str, CodeEntry] = {}
    for raw in text.replace(",", ";").split(";"):
        item = raw.strip()
        if not item:
            continue
        code, sep, target = (part.strip() for part in item.partition("="))
        key, at, unit = (part.strip() for part in target.partition("@"))
        if not sep or not code or not key:
            raise CodeMapError(f"{item!r} is not CODE=KEY or CODE=KEY@UNIT")
        if key not in TERMS or key == "map":
            raise CodeMapError(f"{item!r}: {key!r} is no vocabulary key (the twin derives map)")
        if at:
            conversion = UNITS.get(unit)
            if conversion is None:
                raise CodeMapError(f"{item!r}: unknown unit {unit!r}; known: {', '.join(sorted(UNITS))}")
            if conversion.ucum != TERMS[key].unit:
                raise CodeMapError(f"{item!r}: {unit} cannot be converted to {key}'s unit {TERMS[key].unit}")
        if code in table:
            raise CodeMapError(f"code {code!r} appears twice")
        table[code] = CodeEntry(key=key, native_unit=unit if at else TERMS[key].unit)
    return table
