"""The event head: P(SpO2 < 90 %) and P(MAP < 65 mmHg) per horizon, from the trend, before the crossing.

The forecaster's own event outputs saw little more than the current value, so they rose only once the
threshold was crossed. This head looks at what a clinician looks at on the trend screen, per event
signal (physical units in, engines.spec; masks respected; the other signals never move it):

- `margin`: the last valid value minus the threshold, and the robust level at 'now', in signal scales;
- `slope`: a robust slope over the last SLOPE_STEPS minutes (least squares on the deviations from the
  last value, clipped, then two Huber re-weightings, so one artefact minute cannot make a trend), and
  the least-squares slope over the whole window;
- `drop`: the robust level now minus the mean of the window's first 20 minutes (the patient's own
  recent baseline);
- `noise`: the mean absolute second difference over those first 20 minutes (the patient's own
  variability before now; a trend does not count as noise).

A small per-event MLP maps these smooth features to the 1-minute logit plus non-negative increments per
longer horizon, so P(within 15 min) >= P(within 10) >= ... by construction. Every operation is
elementwise or a masked sum, so the probability moves continuously with the values and the graph exports
to ONNX (the pipeline's opset).

The trade-off measured (BENCHMARKS.md, "Event warnings"): trained on clean scenario ramps, it warns
early of a clean fall, and also of a fast fall from a flat line that stops by itself.

API for the training pipeline (`pipeline.run` wires these in):
- `fit_event_head(train_grids, *, seed) -> EventHead`: train on the training patients only (the
  scenario-engine training patients are added inside, seed `seed`);
- `WithEvents(forecaster, head, estimated=...)`: the exported module (forecaster's quantiles, head's
  probabilities);
- `scenario_grids(*, seed) -> list[PatientGrid]`: held-out deteriorations from drivers.scenario
  (use seed + HELD_OUT_SEED_OFFSET);
- `gate_events(head, sources, *, alarm_threshold) -> EventGate`: per event, ship the head only where it
  beats the current-value baseline's lead time at <= 0.1 false alarms per bed-hour on the held-out
  beds; `EventGate.estimated` goes into card.json as `events_estimated`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from drivers.scenario import DesaturationPatient, DeterioratingPatient, Patient, SteadyPatient
from engines import lead_time
from engines.features import clean_grid, windows_from_grid
from engines.records import PatientGrid
from engines.spec import CONTEXT, EVENTS, FRESH_WITHIN_STEPS, SIGNAL_KEYS, SIGNALS
from engines.train.modules import EVENT_SIGNAL_INDEX, E, H, T
from engines.train.windows import build_windows

LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

EVENT_SCALE = {"spo2": 2.0, "map": 8.0}
"""Signal scale (about a 15-min change) in physical units: features are in these units."""
SLOPE_STEPS = 10
"""The robust slope looks at the last 10 minutes."""
CLIP = 6.0
"""Deviations are clipped to +-6 scales before fitting: a wild minute cannot dominate."""
HUBER = 0.5
"""Residuals beyond half a scale are down-weighted in the robust slope."""
FEATURES = 6
BASELINE_STEPS = 20
"""The patient's own recent baseline: the mean of the window's first 20 minutes."""
HIDDEN = 12
EPOCHS = 100
SCENARIO_TRAIN_COUNT = 96
"""Scenario-engine patients (seed = the training seed) added to the training grids."""
HELD_OUT_SEED_OFFSET = 1000
"""Held-out synthetic and scenario patients use seed + 1000, as the pipeline's split does."""
BATCH = 1024
LEARNING_RATE = 1e-2


def _masked_fit(d: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the weighted least-squares (level at t = 0, slope) of d over [B, K, E] with weights w."""
    sw = w.sum(dim=1).clamp(min=1e-6)
    t_mean = (w * t).sum(dim=1) / sw
    d_mean = (w * d).sum(dim=1) / sw
    centred = t - t_mean.unsqueeze(1)
    slope = (w * centred * (d - d_mean.unsqueeze(1))).sum(dim=1) / ((w * centred * centred).sum(dim=1) + 1e-6)
    return d_mean - slope * t_mean, slope


class EventHead(nn.Module):
    """forward(values, mask) -> event probability [B, E, H] from trend features of each event's signal."""

    threshold: torch.Tensor
    scale: torch.Tensor
    later: torch.Tensor
    positions: torch.Tensor
    prior: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.tensor([e.below for e in EVENTS]))
        self.register_buffer("scale", torch.tensor([EVENT_SCALE[e.signal] for e in EVENTS]))
        self.register_buffer("later", torch.triu(torch.ones(T, T), diagonal=1))
        self.register_buffer("positions", (torch.arange(T, dtype=torch.float32) - (T - 1)).reshape(1, T, 1))
        self.register_buffer("prior", torch.zeros(E, H))
        self.event_index = list(EVENT_SIGNAL_INDEX)
        self.hidden = nn.ModuleList(nn.Linear(FEATURES, HIDDEN) for _ in EVENTS)
        self.output = nn.ModuleList(nn.Linear(HIDDEN, H) for _ in EVENTS)

    def features(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ([B, E, FEATURES] trend features in signal scales, [B, E] has a valid value)."""
        m = (mask[:, :, self.event_index] > 0.5).to(values.dtype)
        # where, not a product: a masked step may hold anything (NaN, inf), and inf * 0 is NaN
        v = torch.where(m > 0.5, values[:, :, self.event_index], torch.zeros_like(m))
        is_last = m * torch.relu(1.0 - torch.matmul(self.later, m))
        last = (v * is_last).sum(dim=1)
        has = is_last.sum(dim=1)
        d = torch.clamp((v - last.unsqueeze(1)) / self.scale, -CLIP, CLIP) * m
        # Robust short slope: least squares, then two Huber re-weightings.
        d_short, m_short, t_short = d[:, -SLOPE_STEPS:], m[:, -SLOPE_STEPS:], self.positions[:, -SLOPE_STEPS:]
        level, slope = _masked_fit(d_short, m_short, t_short)
        for _ in range(2):
            residual = torch.abs(d_short - (level.unsqueeze(1) + slope.unsqueeze(1) * t_short))
            weight = m_short * torch.clamp(HUBER / (residual + 1e-6), max=1.0)
            level, slope = _masked_fit(d_short, weight, t_short)
        _, long_slope = _masked_fit(d, m, self.positions)
        m_early = m[:, :BASELINE_STEPS]
        early = (d[:, :BASELINE_STEPS] * m_early).sum(dim=1) / m_early.sum(dim=1).clamp(min=1.0)
        drop = (level - early) * (m_early.sum(dim=1) > 0.5).to(d.dtype)
        # Noise of the patient's own baseline: mean |second difference| over the window's first
        # BASELINE_STEPS minutes, so a fall going on now does not count as noise.
        early_d, early_m = d[:, :BASELINE_STEPS], m[:, :BASELINE_STEPS]
        triple = early_m[:, 2:] * early_m[:, 1:-1] * early_m[:, :-2]
        second = torch.abs(early_d[:, 2:] - 2.0 * early_d[:, 1:-1] + early_d[:, :-2])
        noise = (torch.clamp(second, max=CLIP) * triple).sum(dim=1) / triple.sum(dim=1).clamp(min=1.0)
        margin = torch.clamp((last - self.threshold) / self.scale, -CLIP, 2.0 * CLIP)
        features = torch.stack(
            [
                margin,
                torch.clamp(margin + level, -CLIP, 2.0 * CLIP),
                torch.clamp(slope * 10.0, -CLIP, CLIP),
                torch.clamp(long_slope * 15.0, -CLIP, CLIP),
                noise,
                torch.clamp(drop, -CLIP, CLIP),
            ],
            dim=-1,
        )
        return features, has

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Return [B, E, H] logits, non-decreasing over the horizons."""
        per_event = []
        for e, (hidden, output) in enumerate(zip(self.hidden, self.output, strict=True)):
            raw = output(torch.tanh(hidden(features[:, e, :])))
            steps = torch.cat([raw[:, :1], nn.functional.softplus(raw[:, 1:])], dim=1)
            per_event.append(torch.cumsum(steps, dim=1))
        return torch.stack(per_event, dim=1)

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return the event probabilities [B, E, H] (the training prior where the signal has no value)."""
        features, has = self.features(values, mask)
        probability = torch.sigmoid(self.logits(features))
        present = (has > 0.5).to(probability.dtype).unsqueeze(-1)
        return present * probability + (1.0 - present) * self.prior


class WithEvents(nn.Module):
    """The exported model: the forecaster's quantiles with the event head's probabilities.

    `estimated` names the events the gate let through; the others keep the head's output in the
    graph (the shape is the spec's) and are marked unavailable by the runtime from the card's
    `events_estimated`.
    """

    def __init__(self, forecaster: nn.Module, head: EventHead, *, estimated: set[str]) -> None:
        super().__init__()
        unknown = estimated - {e.key for e in EVENTS}
        if unknown:
            raise ValueError(f"unknown event keys: {sorted(unknown)}")
        self.forecaster = forecaster
        self.head = head
        self.estimated = sorted(estimated)

    def forward(
        self, values: torch.Tensor, mask: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (quantiles [B, S, H, Q], event probability [B, E, H])."""
        quantiles, _ = self.forecaster(values, mask, context, context_mask)
        probability = self.head(values, mask)
        # The head ignores the ventilator context; this identity keeps every spec input in the graph
        # whatever the forecaster uses (an exported graph drops inputs nothing reads).
        read = ((context > 0.0) & (context_mask > 0.0)).flatten(1).any(dim=1).reshape(-1, 1, 1)
        return quantiles, torch.where(read, probability, probability)


# --- training ------------------------------------------------------------------------------------------


def fit_event_head(
    train_grids: Sequence[PatientGrid],
    *,
    seed: int,
    epochs: int = EPOCHS,
    scenario_count: int = SCENARIO_TRAIN_COUNT,
) -> EventHead:
    """Train the head on the training patients plus `scenario_count` scenario-engine patients (seed).

    Pass the training split only (real and engines.synthetic patients): never a held-out patient. The
    scenario patients come from `scenario_grids(seed=seed)`; the held-out ones from seed + 1000. Only
    minutes where an event's signal is fresh and labeled train it (BCE), so heart-rate-only records
    contribute nothing. Deterministic for a seed (single-threaded CPU).
    """
    torch.manual_seed(seed)
    scenario = scenario_grids(seed=seed, count=scenario_count) if scenario_count else []
    windows = build_windows([*train_grids, *scenario])
    keep = windows.event_mask.reshape(windows.event_mask.shape[0], -1).max(axis=1) > 0
    values = torch.from_numpy(windows.values[keep])
    mask = torch.from_numpy(windows.mask[keep])
    label = torch.from_numpy(windows.event_label[keep])
    label_mask = torch.from_numpy(windows.event_mask[keep])
    if not values.shape[0]:
        raise ValueError("no training minute has a fresh, labeled SpO2 or MAP")
    head = EventHead()
    prior = (label * label_mask).sum(0) / label_mask.sum(0).clamp(min=1.0)
    head.prior.copy_(prior)
    with torch.no_grad():
        features, _ = head.features(values, mask)
    optimizer = torch.optim.Adam(head.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(seed)
    count = features.shape[0]
    head.train()
    for epoch in range(epochs):
        order = torch.randperm(count, generator=generator)
        total = 0.0
        for start in range(0, count, BATCH):
            idx = order[start : start + BATCH]
            logits = head.logits(features[idx])
            loss_each = nn.functional.binary_cross_entropy_with_logits(logits, label[idx], reduction="none")
            loss = (loss_each * label_mask[idx]).sum() / label_mask[idx].sum().clamp(min=1.0)
            optimizer.zero_grad()
            cast(Any, loss).backward()  # untyped in torch stubs
            optimizer.step()
            total += float(loss.detach()) * idx.numel()
        LOGGER.info("event head epoch %d/%d: loss %.4f", epoch + 1, epochs, total / count)
    return head.eval()


# --- held-out scenario deteriorations -----------------------------------------------------------------

NOISELESS_EVERY = 2
NOISE_SCALES = (0.5, 2.0)
_NOISE_SD = {"hr": 2.0, "spo2": 0.7, "map": 2.5, "rr": 1.0, "etco2": 1.0}
"""Per-minute measurement noise added to the scenario engine's (noiseless) values."""
_SCENARIO_KEYS = {"hr": "hr", "spo2": "spo2", "map": "abp_mean", "rr": "rr", "etco2": "etco2"}


def scenario_grid(
    patient: Patient, *, minutes: int, patient_id: str, noise_seed: int | None, noise_scale: float = 1.0
) -> PatientGrid:
    """Return a scenario patient sampled at mid-minute as a grid, with AR(1) measurement noise if seeded.

    `noise_scale` multiplies the per-signal noise SD (patients and sensors differ).

    The scenario engine's times are seconds; build the patient with minute-scale durations.
    SpO2 is rounded to whole percent, as a monitor shows it.
    """
    rows = [patient.vitals_at(60.0 * t + 30.0) for t in range(minutes)]
    values = np.array(
        [[float(row.get(_SCENARIO_KEYS[s.key]) or np.nan) for s in SIGNALS] for row in rows], dtype=np.float64
    )
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
        phi = np.exp(-1.0 / 2.0)
        for column, signal in enumerate(SIGNALS):
            sd = _NOISE_SD[signal.key] * noise_scale
            shocks = rng.normal(0.0, sd * np.sqrt(1.0 - phi * phi), minutes)
            level = rng.normal(0.0, sd)
            for t in range(minutes):
                level = phi * level + shocks[t]
                values[t, column] += level
    spo2 = SIGNAL_KEYS.index("spo2")
    values[:, spo2] = np.minimum(np.round(values[:, spo2]), 100.0)
    context_raw = np.array([[float(row.get(c.key) or np.nan) for c in CONTEXT] for row in rows])
    clean, mask = clean_grid(values, SIGNALS)
    context, context_mask = clean_grid(context_raw, CONTEXT)
    return PatientGrid(
        patient_id=patient_id, values=clean, mask=mask, context=context, context_mask=context_mask
    )


def scenario_grids(*, seed: int, count: int = 24, minutes: int = 240) -> list[PatientGrid]:
    """Return scenario patients in turn: a desaturation, a septic deterioration, a steady bed.

    Drawn from drivers.scenario with durations in minutes chosen by seed. Every NOISELESS_EVERY-th
    round of three is exactly as the simulators play it (no noise: what a demo bed shows); the others
    carry measurement noise, its SD scaled per patient by NOISE_SCALES (0.5-2x the typical).
    """
    rng = np.random.default_rng(seed)
    grids: list[PatientGrid] = []
    for index in range(count):
        kind = index % 3
        patient: Patient
        if kind == 0:
            patient = DesaturationPatient(
                stable_s=60.0 * float(rng.uniform(40.0, 150.0)),
                fall_s=60.0 * float(rng.uniform(4.0, 20.0)),
                hold_s=60.0 * float(rng.uniform(5.0, 30.0)),
                nadir=float(rng.uniform(80.0, 88.0)),
            )
        elif kind == 1:
            patient = DeterioratingPatient(
                stable_s=60.0 * float(rng.uniform(40.0, 120.0)), ramp_s=60.0 * float(rng.uniform(20.0, 110.0))
            )
        else:
            patient = SteadyPatient()
        grids.append(
            scenario_grid(
                patient,
                minutes=minutes,
                patient_id=f"scenario-{seed}-{index:03d}-{patient.name}",
                noise_seed=None if (index // 3) % NOISELESS_EVERY == 0 else int(rng.integers(2**31)),
                noise_scale=float(rng.uniform(*NOISE_SCALES)),
            )
        )
    return grids


# --- gate ------------------------------------------------------------------------------------------------


def alarm_scores(head: EventHead, grid: PatientGrid) -> F64:
    """Return [N, E]: the head's alarm score per minute (max over horizons), NaN where not fresh.

    The daemon raises a predictive alarm when any horizon up to 15 min reaches its threshold, and the
    runtime publishes an event only while its signal is fresh: the same rule here.
    """
    ends = np.arange(grid.minutes, dtype=np.int64)
    values, mask, _, _ = windows_from_grid(
        values=grid.values,
        mask=grid.mask,
        context=grid.context,
        context_mask=grid.context_mask,
        end_steps=ends,
    )
    with torch.no_grad():
        probability = head(torch.from_numpy(values), torch.from_numpy(mask)).numpy().astype(np.float64)
    score = probability.max(axis=2)
    fresh = mask[:, -FRESH_WITHIN_STEPS:, :].max(axis=1) > 0
    return np.where(fresh[:, list(EVENT_SIGNAL_INDEX)], score, np.nan)


@dataclass(frozen=True, slots=True)
class EventLeadFigures:
    """One event on one held-out source, model and baseline at the thresholds chosen on all sources pooled."""

    event: str
    source: str
    """A source's name, or POOLED for every held-out bed together (where the thresholds are chosen)."""
    comparison: lead_time.Comparison

    def line(self) -> str:
        """Return one line for a card or a report."""
        c = self.comparison

        def side(name: str, figures: lead_time.LeadTimes | None, at: str) -> str:
            if figures is None or figures.mean_lead_min is None:
                return f"{name}: no figures"
            return (
                f"{name} @ {at}: median lead {figures.median_lead_min:g} min, mean "
                f"{figures.mean_lead_min:.1f}, {figures.fraction_early:.0%} warned "
                f">= {lead_time.EARLY_MIN} min, "
                f"{figures.false_alarms_per_bed_hour:.3f} FA/bed-h"
            )

        at = c.model_at_alarm_threshold
        model_at = f"p >= {c.model.threshold:.2f}" if c.model else ""
        baseline_at = f"value <= threshold + {-c.baseline.threshold:g}" if c.baseline else ""
        return (
            f"{self.event} on {self.source} ({c.episodes} episodes, {at.bed_hours:.1f} bed-h): "
            f"{side('model', c.model, model_at)}; {side('baseline', c.baseline, baseline_at)}; "
            f"{side('model', at, f'the alarm threshold {at.threshold:g}')}"
        )


POOLED = "all held-out"


@dataclass(frozen=True, slots=True)
class EventGate:
    """Which events the model estimates, and the figures the decision was made on."""

    estimated: list[str]
    """Event keys for card.json's `events_estimated`."""
    figures: list[EventLeadFigures]
    """Per event: POOLED first (the decision), then each source at the pooled thresholds."""


def _at_chosen(
    beds: list[lead_time.BedSeries], chosen: lead_time.LeadTimes | None, *, below: float
) -> lead_time.LeadTimes | None:
    """Return the figures of beds at a threshold chosen elsewhere (None where none was)."""
    return None if chosen is None else lead_time.lead_times(beds, below=below, threshold=chosen.threshold)


def gate_events(
    head: EventHead, sources: Mapping[str, Sequence[PatientGrid]], *, alarm_threshold: float
) -> EventGate:
    """Judge each event on held-out sources (e.g. {"real": ..., "synthetic": ..., "scenario": ...}).

    One ward, one alarm setting: the model's probability threshold and the baseline's margin are
    each chosen on every held-out bed pooled, as the lowest with <= 0.1 false alarms per bed-hour
    (`engines.lead_time`). An event is estimated when, pooled, the model's mean lead is longer than
    the baseline's and its fraction warned >= 2 min early is no lower
    (`lead_time.Comparison.model_beats_baseline`). Each source's figures at those thresholds are
    reported too (a source's own false-alarm rate may differ). `alarm_threshold` is the daemon's
    predictive alarm threshold (edge.alarms.profile.PredictiveConfig), where the model is also shown.
    """
    figures: list[EventLeadFigures] = []
    estimated: list[str] = []
    scores = {name: [alarm_scores(head, g) for g in grids] for name, grids in sources.items()}
    for e_index, event in enumerate(EVENTS):
        column = SIGNAL_KEYS.index(event.signal)
        largest, step = lead_time.BASELINE_MARGINS[event.signal]
        beds: dict[str, tuple[list[F64], list[F64], list[npt.NDArray[np.bool_]]]] = {
            name: (
                [s[:, e_index] for s in scores[name]],
                [g.values[:, column].astype(np.float64) for g in grids],
                [g.mask[:, column] > 0 for g in grids],
            )
            for name, grids in sources.items()
        }
        pooled = lead_time.compare(
            [s for model, _, _ in beds.values() for s in model],
            [v for _, values, _ in beds.values() for v in values],
            [m for _, _, valid in beds.values() for m in valid],
            below=event.below,
            margins=lead_time.margin_candidates(largest=largest, step=step),
            alarm_threshold=alarm_threshold,
        )
        per_event = [EventLeadFigures(event=event.key, source=POOLED, comparison=pooled)]
        for name, (model, values, valid) in beds.items():
            model_beds = [lead_time.BedSeries(*bed) for bed in zip(model, values, valid, strict=True)]
            baseline_beds = [
                lead_time.BedSeries(lead_time.baseline_score(v, m, below=event.below), v, m)
                for v, m in zip(values, valid, strict=True)
            ]

            comparison = lead_time.Comparison(
                model=_at_chosen(model_beds, pooled.model, below=event.below),
                baseline=_at_chosen(baseline_beds, pooled.baseline, below=event.below),
                model_at_alarm_threshold=lead_time.lead_times(
                    model_beds, below=event.below, threshold=alarm_threshold
                ),
            )
            per_event.append(EventLeadFigures(event=event.key, source=name, comparison=comparison))
        if pooled.model_beats_baseline():
            estimated.append(event.key)
        figures += per_event
        for f in per_event:
            LOGGER.info("%s", f.line())
    return EventGate(estimated=estimated, figures=figures)


def main(argv: Sequence[str] | None = None) -> int:
    """Fit the head on the training split and print its lead times against the baseline (the report)."""
    import argparse
    from pathlib import Path

    from engines.records import read_numerics_record
    from engines.synthetic import synthetic_patients

    parser = argparse.ArgumentParser(prog="python -m engines.train.events", description=main.__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder of WFDB minute-numerics records")
    parser.add_argument(
        "--held-out",
        nargs="+",
        default=["p000020", "s25047"],
        help="real records held out (by name prefix; default: the two with SpO2/MAP)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--alarm-threshold", type=float, default=0.7, help="the daemon's predictive threshold"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    records = [read_numerics_record(p.with_suffix("")) for p in sorted(args.data.glob("*.hea"))]
    held_real = [g for g in records if g.patient_id.startswith(tuple(args.held_out))]
    train_real = [g for g in records if g not in held_real]
    train = [*train_real, *synthetic_patients(count=32, minutes=720, seed=args.seed)]
    head = fit_event_head(train, seed=args.seed)
    held_seed = args.seed + HELD_OUT_SEED_OFFSET
    gate = gate_events(
        head,
        {
            "real": held_real,
            "synthetic": synthetic_patients(count=12, minutes=720, seed=held_seed),
            "scenario": scenario_grids(seed=held_seed),
        },
        alarm_threshold=args.alarm_threshold,
    )
    print(f"events_estimated: {gate.estimated}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
