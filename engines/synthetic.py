"""Synthetic ICU physiology (the scenario engine for training): minute grids fully determined by a seed.

Each patient has a baseline per signal, slow mean-reverting drifts, AR(1) measurement noise, and a few
deterioration episodes with recovery:
- hypotension: MAP falls 15-40 mmHg over 5-30 min (often below 65), HR rises in compensation, then a
  simulated treatment brings it back over 10-30 min;
- desaturation: SpO2 falls 5-15 % over 5-20 min with a compensatory rise of RR (and HR, and EtCO2 drift);
  a simulated clinician raises FiO2 a few minutes after SpO2 goes below 90 %, after which SpO2 recovers.
Ventilated patients carry FiO2/PEEP context and EtCO2; others have FiO2 21 % (room air) context masked.
Sensor gaps (short dropouts, long disconnections) and artefact spikes (some implausible, masked by
`clean_grid`; some plausible, left in like a real artefact) are added last.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from engines.features import clean_grid
from engines.records import PatientGrid
from engines.spec import CONTEXT, SIGNAL_KEYS, SIGNALS, STEP_S

_HR, _SPO2, _MAP, _RR, _ETCO2 = (SIGNAL_KEYS.index(k) for k in ("hr", "spo2", "map", "rr", "etco2"))

F64 = npt.NDArray[np.float64]


def _ou(rng: np.random.Generator, minutes: int, *, tau_min: float, sd: float) -> F64:
    """Return an Ornstein-Uhlenbeck drift (stationary sd, time constant tau) sampled per minute."""
    phi = np.exp(-1.0 / tau_min)
    shocks = rng.normal(0.0, sd * np.sqrt(1.0 - phi * phi), minutes)
    out = np.empty(minutes)
    level = rng.normal(0.0, sd)
    for t in range(minutes):
        level = phi * level + shocks[t]
        out[t] = level
    return out


def _ramp(minutes: int, start: int, fall: int, hold: int, recover: int) -> F64:
    """Return 0..1..0: rise over `fall` min from start, hold, then exponential-ish recovery."""
    t = np.arange(minutes, dtype=np.float64)
    shape = np.clip((t - start) / max(fall, 1), 0.0, 1.0)
    after = t - (start + fall + hold)
    decay = np.where(after > 0, np.exp(-after / max(recover / 3.0, 1.0)), 1.0)
    return np.where(t >= start, shape * decay, 0.0)


def _patient(rng: np.random.Generator, minutes: int, patient_id: str) -> PatientGrid:
    ventilated = bool(rng.random() < 0.6)
    base = np.array(
        [
            rng.normal(85.0, 12.0),
            min(rng.normal(96.5, 1.5), 99.5),
            rng.normal(80.0, 9.0),
            rng.normal(17.0, 4.0) if not ventilated else rng.normal(16.0, 3.0),
            rng.normal(38.0, 4.0),
        ]
    )
    drift_sd = np.array([6.0, 1.0, 6.0, 2.5, 2.5])
    noise_sd = np.array([2.0, 0.6, 2.5, 1.5, 1.0])
    signals = np.empty((minutes, len(SIGNALS)))
    for column in range(len(SIGNALS)):
        drift = _ou(rng, minutes, tau_min=float(rng.uniform(60.0, 240.0)), sd=float(drift_sd[column]))
        noise = _ou(rng, minutes, tau_min=float(rng.uniform(1.5, 4.0)), sd=float(noise_sd[column]))
        signals[:, column] = base[column] + drift + noise
    fio2 = np.full(minutes, float(rng.choice([30.0, 35.0, 40.0, 50.0])) if ventilated else 21.0)
    peep = np.full(minutes, float(rng.choice([5.0, 6.0, 8.0, 10.0])))

    # Hypotension episodes.
    for _ in range(int(rng.poisson(minutes / 400.0))):
        start = int(rng.integers(0, max(minutes - 30, 1)))
        depth = float(rng.uniform(15.0, 40.0))
        shape = _ramp(
            minutes, start, int(rng.integers(5, 31)), int(rng.integers(5, 41)), int(rng.integers(10, 31))
        )
        signals[:, _MAP] -= depth * shape
        signals[:, _HR] += float(rng.uniform(5.0, 25.0)) * shape

    # Desaturation episodes, with a clinician raising FiO2 after SpO2 < 90 %.
    for _ in range(int(rng.poisson(minutes / 300.0))):
        start = int(rng.integers(0, max(minutes - 30, 1)))
        fall = int(rng.integers(5, 21))
        depth = float(rng.uniform(5.0, 15.0))
        rising = np.clip((np.arange(minutes) - start) / fall, 0.0, 1.0) * (np.arange(minutes) >= start)
        provisional = signals[:, _SPO2] - depth * rising
        below = np.flatnonzero((provisional < 90.0) & (np.arange(minutes) >= start))
        delay = int(rng.integers(3, 11))
        react = int(below[0]) + delay if below.size else start + fall + int(rng.integers(5, 20))
        react = min(react, minutes - 1)
        hold = max(react - (start + fall), 0)
        shape = _ramp(minutes, start, fall, hold, int(rng.integers(8, 25)))
        signals[:, _SPO2] -= depth * shape
        signals[:, _RR] += float(rng.uniform(4.0, 12.0)) * shape
        signals[:, _HR] += float(rng.uniform(5.0, 20.0)) * shape
        signals[:, _ETCO2] += float(rng.uniform(-4.0, 6.0)) * shape
        if ventilated:
            raised = min(fio2[react] + float(rng.choice([10.0, 20.0, 30.0])), 100.0)
            fio2[react:] = np.maximum(fio2[react:], raised)

    signals[:, _SPO2] = np.minimum(signals[:, _SPO2], 100.0)
    signals = np.round(signals, 1)
    signals[:, _SPO2] = np.round(signals[:, _SPO2])
    values = signals.copy()

    # Sensor gaps: short dropouts and long disconnections per signal; NIBP-like sparse MAP sometimes.
    for column in range(len(SIGNALS)):
        for _ in range(int(rng.poisson(minutes / 120.0))):
            gap_start = int(rng.integers(0, minutes))
            values[gap_start : gap_start + int(rng.integers(1, 6)), column] = np.nan
        if rng.random() < 0.15:
            gap_start = int(rng.integers(0, minutes))
            values[gap_start : gap_start + int(rng.integers(20, 120)), column] = np.nan
    if not ventilated:
        values[:, _ETCO2] = np.nan
    # Artefact spikes: half implausible (masked by clean_grid), half plausible outliers.
    spikes = rng.random(values.shape) < 0.004
    implausible = rng.random(values.shape) < 0.5
    factors = np.where(
        implausible, rng.choice([0.0, 3.5], size=values.shape), rng.uniform(0.6, 1.4, values.shape)
    )
    values = np.where(spikes, values * factors, values)

    clean, mask = clean_grid(values, SIGNALS)
    context_raw = np.stack([fio2, peep], axis=1)
    if not ventilated:
        context_raw[:, :] = np.nan
    context, context_mask = clean_grid(context_raw, CONTEXT)
    return PatientGrid(
        patient_id=patient_id,
        values=clean,
        mask=mask,
        context=context,
        context_mask=context_mask,
        step_s=STEP_S,
    )


def synthetic_patients(*, count: int, minutes: int, seed: int) -> list[PatientGrid]:
    """Return `count` synthetic patients of `minutes` minutes each, fully determined by seed."""
    children = np.random.SeedSequence(seed).spawn(count)
    return [
        _patient(np.random.default_rng(child), minutes, f"synthetic-{seed}-{index:03d}")
        for index, child in enumerate(children)
    ]
