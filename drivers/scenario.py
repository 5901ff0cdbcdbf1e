"""The one scenario engine every simulator draws from: a patient's values and waves over scenario time.

A ventilator simulator and a monitor simulator of the same bed run the same `Patient`, so the twin
sees one consistent patient whichever device a value comes from. Values are in the vocabulary's keys
and units (`drivers.vocabulary`); each simulator maps them to its protocol's codes. Waves are
synthesised from the same values (heart rate drives the ECG, pleth and arterial curve; respiratory
rate, PEEP and peak pressure the airway curves), shaped to look right on a screen, not to be
physiologically exact. Nothing here is device data.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from drivers.base import AlarmPriority


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientAlarm:
    """An alarm a device would show for this patient (its own code space is the simulator's business)."""

    key: str
    """The vocabulary key the alarm is about."""
    priority: AlarmPriority
    text: str


STEADY: dict[str, float | None] = {
    # haemodynamics (monitor)
    "hr": 78.0,
    "pr": 78.0,
    "spo2": 97.0,
    "pi": 3.2,
    "nbp_sys": 122.0,
    "nbp_dia": 74.0,
    "nbp_mean": 90.0,
    "abp_sys": 118.0,
    "abp_dia": 68.0,
    "abp_mean": 85.0,
    "cvp": 8.0,
    "temp": 37.1,
    # respiration (ventilator, and the monitor's capnograph and impedance rate)
    "rr": 14.0,
    "etco2": 38.0,
    "imco2": 0.0,
    "fio2": 40.0,
    "ppeak": 22.0,
    "pplat": 18.0,
    "pmean": 11.0,
    "peep": 5.0,
    "vt": 480.0,
    "mv": 6.7,
}
"""A stable, well-ventilated adult."""

INSPIRATORY_TIME_S = 1.5


class Patient:
    """Values as a function of scenario time; the base patient reports nothing."""

    name = "empty"

    def vitals_at(self, t_s: float) -> dict[str, float | None]:
        """Return the patient's values at t_s (None: the device shows the parameter without a value)."""
        return {}

    def alarms_at(self, t_s: float) -> list[PatientAlarm]:
        """Return the alarms a monitor would show at t_s."""
        return []

    def wave(self, signal: str, *, t0_s: float, count: int, period_s: float) -> npt.NDArray[np.float64]:
        """Return `count` samples of signal starting at t0_s, one every period_s, in the signal's unit."""
        return synthesise_wave(signal, self.vitals_at(t0_s), t0_s=t0_s, count=count, period_s=period_s)


class SteadyPatient(Patient):
    """A stable patient: constant values, no alarms."""

    name = "steady"

    def vitals_at(self, t_s: float) -> dict[str, float | None]:
        """Return the constant steady values."""
        return dict(STEADY)


class DeterioratingPatient(Patient):
    """Stable for `stable_s`, then over `ramp_s` a septic, hypoxaemic slide.

    Rising peak pressure, falling tidal volume, rising rate and etCO2 on the ventilator side; rising
    heart rate and temperature, falling SpO2 and arterial pressure (MAP 85 -> 62 mmHg) on the monitor.
    """

    name = "deteriorating"

    def __init__(self, *, stable_s: float = 30.0, ramp_s: float = 90.0) -> None:
        self.stable_s = stable_s
        self.ramp_s = ramp_s

    def progress(self, t_s: float) -> float:
        """Return how far the deterioration has gone at t_s (0 stable, 1 fully deteriorated)."""
        return min(1.0, max(0.0, (t_s - self.stable_s) / self.ramp_s))

    def vitals_at(self, t_s: float) -> dict[str, float | None]:
        """Return values interpolated between the stable and the deteriorated patient."""
        f = self.progress(t_s)
        wobble = 0.5 * math.sin(t_s / 7.0)
        vt_ml = round(480.0 - 190.0 * f)
        rr_per_min = round(14.0 + 18.0 * f)
        hr = float(round(78.0 + 40.0 * f))
        values = dict(STEADY)
        values.update(
            {
                "ppeak": round(22.0 + 18.0 * f + wobble, 1),
                "pplat": round(18.0 + 12.0 * f, 1),
                "vt": float(vt_ml),
                "rr": float(rr_per_min),
                "mv": round(vt_ml * rr_per_min / 1000.0, 1),
                "etco2": float(round(38.0 + 17.0 * f)),
                "spo2": float(round(97.0 - 11.0 * f)),
                "hr": hr,
                "pr": hr,
                "abp_sys": float(round(118.0 - 26.0 * f)),
                "abp_dia": float(round(68.0 - 20.0 * f)),
                "abp_mean": float(round(85.0 - 23.0 * f)),
                "nbp_sys": float(round(122.0 - 28.0 * f)),
                "nbp_dia": float(round(74.0 - 22.0 * f)),
                "nbp_mean": float(round(90.0 - 25.0 * f)),
                "cvp": float(round(8.0 + 4.0 * f)),
                "temp": round(37.1 + 1.2 * f, 1),
            }
        )
        return values

    def alarms_at(self, t_s: float) -> list[PatientAlarm]:
        """Return the monitor alarms the deterioration triggers (adult defaults)."""
        values = self.vitals_at(t_s)
        alarms: list[PatientAlarm] = []
        spo2, hr, mean = values["spo2"], values["hr"], values["abp_mean"]
        if spo2 is not None and spo2 < 90.0:
            alarms.append(PatientAlarm(key="spo2", priority=AlarmPriority.HIGH, text="SpO2 LOW"))
        if hr is not None and hr > 110.0:
            alarms.append(PatientAlarm(key="hr", priority=AlarmPriority.MEDIUM, text="HR HIGH"))
        if mean is not None and mean < 65.0:
            alarms.append(PatientAlarm(key="abp_mean", priority=AlarmPriority.HIGH, text="ABP MEAN LOW"))
        return alarms


class DesaturationPatient(Patient):
    """Stable, then SpO2 falls to `nadir` over `fall_s`, stays `hold_s`, and recovers over `fall_s`.

    The pulse rises a little with the desaturation; everything else stays steady.
    """

    name = "desaturation"

    def __init__(
        self, *, stable_s: float = 20.0, fall_s: float = 10.0, hold_s: float = 30.0, nadir: float = 84.0
    ) -> None:
        self.stable_s = stable_s
        self.fall_s = fall_s
        self.hold_s = hold_s
        self.nadir = nadir

    def depth(self, t_s: float) -> float:
        """Return how deep the desaturation is at t_s (0 none, 1 at the nadir)."""
        t = t_s - self.stable_s
        if t <= 0.0:
            return 0.0
        if t < self.fall_s:
            return t / self.fall_s
        t -= self.fall_s
        if t < self.hold_s:
            return 1.0
        t -= self.hold_s
        return max(0.0, 1.0 - t / self.fall_s)

    def vitals_at(self, t_s: float) -> dict[str, float | None]:
        """Return the steady values with SpO2 and pulse following the desaturation."""
        d = self.depth(t_s)
        hr = float(round(78.0 + 14.0 * d))
        values = dict(STEADY)
        values.update({"spo2": float(round(97.0 - (97.0 - self.nadir) * d)), "hr": hr, "pr": hr})
        return values

    def alarms_at(self, t_s: float) -> list[PatientAlarm]:
        """Return the monitor's own SpO2 alarm while below 90 %."""
        spo2 = self.vitals_at(t_s)["spo2"]
        if spo2 is not None and spo2 < 90.0:
            return [PatientAlarm(key="spo2", priority=AlarmPriority.HIGH, text="SpO2 LOW")]
        return []


PATIENTS: dict[str, type[Patient]] = {
    SteadyPatient.name: SteadyPatient,
    DeterioratingPatient.name: DeterioratingPatient,
    DesaturationPatient.name: DesaturationPatient,
}
"""The scenarios a simulator's `--scenario` may name."""


def _value(values: dict[str, float | None], key: str) -> float:
    found = values.get(key)
    if found is None:
        return STEADY.get(key) or 0.0
    return found


def _gauss(phase: npt.NDArray[np.float64], centre: float, width: float) -> npt.NDArray[np.float64]:
    result: npt.NDArray[np.float64] = np.exp(-0.5 * ((phase - centre) / width) ** 2)
    return result


def synthesise_wave(
    signal: str, values: dict[str, float | None], *, t0_s: float, count: int, period_s: float
) -> npt.NDArray[np.float64]:
    """Return `count` samples of a plausible-looking signal for the given values (ValueError: unknown)."""
    t = t0_s + period_s * np.arange(count, dtype=np.float64)
    beat = np.mod(t * _value(values, "hr") / 60.0, 1.0)
    breath_period_s = 60.0 / max(1.0, _value(values, "rr"))
    breath_t = np.mod(t, breath_period_s)
    inspiring = breath_t < min(INSPIRATORY_TIME_S, 0.45 * breath_period_s)
    ti_s = min(INSPIRATORY_TIME_S, 0.45 * breath_period_s)
    if signal == "ecg":
        return (
            0.12 * _gauss(beat, 0.12, 0.025)
            - 0.1 * _gauss(beat, 0.2, 0.008)
            + 1.1 * _gauss(beat, 0.22, 0.01)
            - 0.25 * _gauss(beat, 0.245, 0.01)
            + 0.3 * _gauss(beat, 0.45, 0.05)
        )
    if signal == "pleth":
        return 0.2 + 0.8 * (_gauss(beat, 0.3, 0.08) + 0.35 * _gauss(beat, 0.55, 0.06))
    if signal == "abp":
        systolic, diastolic = _value(values, "abp_sys"), _value(values, "abp_dia")
        shape = _gauss(beat, 0.25, 0.07) + 0.3 * _gauss(beat, 0.5, 0.05)
        return diastolic + (systolic - diastolic) * np.minimum(shape, 1.0)
    if signal == "cvp":
        return _value(values, "cvp") + 1.5 * np.sin(2.0 * np.pi * t / breath_period_s)
    if signal == "co2":
        plateau = _value(values, "etco2") * np.minimum(1.0, (breath_t - ti_s) / 0.4)
        return np.where(inspiring, _value(values, "imco2"), np.maximum(plateau, 0.0))
    if signal == "resp":
        return 0.5 + 0.5 * np.sin(2.0 * np.pi * t / breath_period_s)
    peep, ppeak, vt_ml = _value(values, "peep"), _value(values, "ppeak"), _value(values, "vt")
    if signal == "paw":
        rising = peep + (ppeak - peep) * np.minimum(1.0, breath_t / (0.8 * ti_s))
        falling = peep + (ppeak - peep) * np.exp(-(breath_t - ti_s) / 0.15)
        return np.where(inspiring, rising, falling)
    insp_flow_l_min = vt_ml / 1000.0 / ti_s * 60.0
    if signal == "flow":
        expiring = -insp_flow_l_min * 1.6 * np.exp(-(breath_t - ti_s) / 0.35)
        return np.where(inspiring, insp_flow_l_min, expiring)
    if signal == "volume":
        return np.where(
            inspiring, vt_ml * breath_t / ti_s, vt_ml * np.exp(-(breath_t - ti_s) / 0.35 * 1.6 * ti_s / 0.6)
        )
    raise ValueError(f"no synthetic {signal!r} wave")


def add_patient_arguments(
    parser: argparse.ArgumentParser, *, choices: Iterable[str], default: str, speed: bool = True
) -> None:
    """Add what every simulator takes: `--scenario`, `--seconds` and (with `speed`) `--speed`."""
    parser.add_argument(
        "--scenario",
        choices=sorted(choices),
        default=default,
        help="simulated patient (default: %(default)s)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="stop after this many seconds (default: run until stopped)",
    )
    if speed:
        parser.add_argument(
            "--speed",
            type=float,
            default=1.0,
            help="scenario time per wall-clock second (default: %(default)g)",
        )


def check_speed(parser: argparse.ArgumentParser, speed: float) -> None:
    """Refuse (exit 2) a `--speed` that is not a positive finite number."""
    if not (speed > 0 and math.isfinite(speed)):
        parser.error("--speed must be a positive number")
