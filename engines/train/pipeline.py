"""Train, evaluate, gate, export and document the shipped models (torch on CPU, seeded, deterministic).

Split by patient, never by minute: the real records are split by name (`--holdout`, default s25047;
everything else in `--data` trains), synthetic patients come from two different seeds (train: seed,
held out: seed + 1000). Held-out metrics are computed on the exported ONNX graphs with onnxruntime.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from engines import metrics
from engines.backend import BatchInput, BatchOutput
from engines.catalog import EventMetricRow, MetricRow, ModelCard, write_manifest
from engines.evaluate import (
    ALARM_SENSITIVITY,
    GridForecast,
    Predict,
    accuracy_rows,
    event_rows,
    event_scores,
    forecast_grid,
    last_valid,
)
from engines.features import windows_from_grid
from engines.records import PatientGrid, read_numerics_record
from engines.spec import (
    CONTEXT,
    EVENTS,
    FRESH_WITHIN_STEPS,
    HORIZONS_MIN,
    INPUT_NAMES,
    OUTPUT_NAMES,
    QUANTILES,
    SIGNAL_KEYS,
    SIGNALS,
    STEP_S,
    WINDOW_STEPS,
)
from engines.synthetic import synthetic_patients
from engines.train.modules import SIGNAL_SCALE, NLinearQuantile, PersistenceBaseline

LOGGER = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
MAX_MODEL_BYTES = 2 * 1024 * 1024
OPSET = 17
BASELINE_ID = "persistence"
LEARNED_ID = "nlinear-q"
VERSION = "1.0.0"
GATE_HORIZONS = (5, 15)
GATE_MIN_N = 30
EPOCHS = 12
QUICK_EPOCHS = 3
LEARNING_RATE = 2e-3
REAL_WEIGHT = 4
"""Real training windows are repeated this many times: there are far fewer of them than synthetic ones."""

EVENT_DEFINITIONS = {
    e.key: f"{e.description}; forward design: label at minute t and horizon h = any valid {e.signal} value "
    f"< {e.below:g} in (t, t+h]; unlabeled when (t, t+h] has no valid value"
    for e in EVENTS
}


@dataclass(frozen=True, slots=True)
class Config:
    """What a training run does."""

    seed: int
    out: Path
    data: Path
    holdout: tuple[str, ...]
    quick: bool


@dataclass(frozen=True, slots=True)
class Split:
    """Patients per role."""

    train_real: list[PatientGrid]
    train_synthetic: list[PatientGrid]
    held_real: list[PatientGrid]
    held_synthetic: list[PatientGrid]

    @property
    def train(self) -> list[PatientGrid]:
        """Return every training patient."""
        return [*self.train_real, *self.train_synthetic]

    @property
    def held(self) -> list[PatientGrid]:
        """Return every held-out patient."""
        return [*self.held_real, *self.held_synthetic]


def load_split(config: Config) -> Split:
    """Read the real records and generate the synthetic patients, split by patient."""
    records = sorted({p.with_suffix("") for p in config.data.glob("*.hea")})
    real = [read_numerics_record(path) for path in records]
    held_real = [g for g in real if any(g.patient_id.startswith(h) for h in config.holdout)]
    train_real = [g for g in real if g not in held_real]
    count, minutes = (6, 360) if config.quick else (32, 720)
    held_count = 4 if config.quick else 12
    return Split(
        train_real=train_real,
        train_synthetic=synthetic_patients(count=count, minutes=minutes, seed=config.seed),
        held_real=held_real,
        held_synthetic=synthetic_patients(count=held_count, minutes=minutes, seed=config.seed + 1000),
    )


@dataclass(frozen=True, slots=True)
class Windows:
    """Training windows with their targets (arrays over M windows)."""

    values: F32
    mask: F32
    context: F32
    context_mask: F32
    target: F32
    """[M, S, H]"""
    target_mask: F32
    """[M, S, H]: target valid and signal fresh at t."""
    event_label: F32
    """[M, E, H]"""
    event_mask: F32

    def arrays(self) -> list[F32]:
        """Return every array in field order (the order the constructor takes them)."""
        return [getattr(self, f.name) for f in fields(self)]


def build_windows(grids: Sequence[PatientGrid]) -> Windows:
    """Slice every forecast minute of every grid with its targets and event labels."""
    parts: list[tuple[F32, ...]] = []
    for grid in grids:
        ends = np.arange(max(grid.minutes - 1, 0), dtype=np.int64)
        if not ends.size:
            continue
        values, mask, context, context_mask = windows_from_grid(
            values=grid.values,
            mask=grid.mask,
            context=grid.context,
            context_mask=grid.context_mask,
            end_steps=ends,
        )
        fresh = mask[:, -FRESH_WITHIN_STEPS:, :].max(axis=1) > 0
        target = np.zeros((ends.size, len(SIGNALS), len(HORIZONS_MIN)), np.float32)
        target_mask = np.zeros_like(target)
        labels = np.zeros((ends.size, len(EVENTS), len(HORIZONS_MIN)), np.float32)
        labeled = np.zeros_like(labels)
        for h_index, horizon in enumerate(HORIZONS_MIN):
            steps = horizon * 60 // STEP_S
            index = ends + steps
            inside = index < grid.minutes
            safe = np.where(inside, index, 0)
            target[:, :, h_index] = grid.values[safe]
            target_mask[:, :, h_index] = (grid.mask[safe] > 0) & inside[:, None] & fresh
            for e_index, event in enumerate(EVENTS):
                column = SIGNAL_KEYS.index(event.signal)
                label, has_label = metrics.event_labels(
                    grid.values[:, column],
                    grid.mask[:, column],
                    below=event.below,
                    end_steps=ends,
                    horizon_steps=steps,
                )
                labels[:, e_index, h_index] = label
                labeled[:, e_index, h_index] = has_label & fresh[:, column]
        parts.append((values, mask, context, context_mask, target, target_mask, labels, labeled))
    stacked = [np.concatenate([p[i] for p in parts]).astype(np.float32) for i in range(8)]
    return Windows(*stacked)


def _concat(a: Windows, b: Windows, *, repeat_a: int) -> Windows:
    return Windows(
        *[
            np.concatenate([*([x] * repeat_a), y]).astype(np.float32)
            for x, y in zip(a.arrays(), b.arrays(), strict=True)
        ]
    )


def _torch_predict(module: nn.Module) -> Predict:
    def predict(batch: BatchInput) -> BatchOutput:
        with torch.no_grad():
            quantiles, probability = module(
                torch.from_numpy(batch.values),
                torch.from_numpy(batch.mask),
                torch.from_numpy(batch.context),
                torch.from_numpy(batch.context_mask),
            )
        return BatchOutput(quantiles=quantiles.numpy(), event_probability=probability.numpy())

    return predict


def onnx_predict(path: Path) -> Predict:
    """Return a predict function running an ONNX file on onnxruntime (CPU, one thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    def predict(batch: BatchInput) -> BatchOutput:
        feeds = dict(
            zip(INPUT_NAMES, (batch.values, batch.mask, batch.context, batch.context_mask), strict=True)
        )
        quantiles, probability = session.run(list(OUTPUT_NAMES), feeds)
        return BatchOutput(quantiles=np.asarray(quantiles), event_probability=np.asarray(probability))

    return predict


# --- baseline -----------------------------------------------------------------------------------


def _fit_logistic(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], *, iterations: int = 50
) -> tuple[float, float]:
    """Fit p = sigmoid(a x + b) by Newton's method (a small ridge keeps it finite on separable data)."""
    a, b = -1.0, 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        w = p * (1.0 - p) + 1e-9
        grad = np.array([np.sum((p - y) * x) + 1e-3 * a, np.sum(p - y)])
        hess = np.array([[np.sum(w * x * x) + 1e-3, np.sum(w * x)], [np.sum(w * x), np.sum(w)]])
        step = np.linalg.solve(hess, grad)
        a, b = a - float(step[0]), b - float(step[1])
    return a, b


def fit_baseline(train: Windows) -> PersistenceBaseline:
    """Set the baseline's interval offsets and current-value logistic from the training windows."""
    module = PersistenceBaseline()
    last = last_valid(train.values, train.mask)
    lower = np.zeros((len(SIGNALS), len(HORIZONS_MIN)), np.float32)
    upper = np.zeros_like(lower)
    for s in range(len(SIGNALS)):
        for h in range(len(HORIZONS_MIN)):
            use = train.target_mask[:, s, h] > 0
            if use.sum() < 20:
                lower[s, h], upper[s, h] = -SIGNAL_SCALE[s], SIGNAL_SCALE[s]
                continue
            residual = train.target[use, s, h] - last[use, s]
            lower[s, h] = min(float(np.quantile(residual, QUANTILES[0])), 0.0)
            upper[s, h] = max(float(np.quantile(residual, QUANTILES[-1])), 0.0)
    slope = np.zeros((len(EVENTS), len(HORIZONS_MIN)), np.float32)
    bias = np.zeros_like(slope)
    prior = np.zeros_like(slope)
    for e, event in enumerate(EVENTS):
        column = SIGNAL_KEYS.index(event.signal)
        scale = SIGNAL_SCALE[column]
        for h in range(len(HORIZONS_MIN)):
            use = train.event_mask[:, e, h] > 0
            y = train.event_label[use, e, h].astype(np.float64)
            x = (last[use, column].astype(np.float64) - event.below) / scale
            slope[e, h], bias[e, h] = _fit_logistic(x, y)
            prior[e, h] = float(y.mean()) if y.size else 0.0
    module.lower_offset.copy_(torch.from_numpy(lower))
    module.upper_offset.copy_(torch.from_numpy(upper))
    module.event_slope.copy_(torch.from_numpy(slope))
    module.event_bias.copy_(torch.from_numpy(bias))
    module.event_prior.copy_(torch.from_numpy(prior))
    return module.eval()


# --- learned model --------------------------------------------------------------------------------


def train_learned(train: Windows, *, seed: int, epochs: int, lr: float = LEARNING_RATE) -> NLinearQuantile:
    """Train the NLinear-quantile model with pinball loss on targets and BCE on event labels."""
    torch.manual_seed(seed)
    module = NLinearQuantile()
    prior = (train.event_label * train.event_mask).sum(0) / np.maximum(train.event_mask.sum(0), 1.0)
    module.event_prior.copy_(torch.from_numpy(prior.astype(np.float32)))
    tensors = [torch.from_numpy(array) for array in train.arrays()]
    scale = torch.tensor(SIGNAL_SCALE).reshape(1, -1, 1)
    quantiles = torch.tensor(QUANTILES).reshape(1, 1, 1, -1)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=1e-5)
    generator = torch.Generator().manual_seed(seed)
    batch = 256
    count = tensors[0].shape[0]
    module.train()
    for epoch in range(epochs):
        order = torch.randperm(count, generator=generator)
        total = 0.0
        for start in range(0, count, batch):
            idx = order[start : start + batch]
            values, mask, context, context_mask, target, target_mask, label, label_mask = (
                t[idx] for t in tensors
            )
            predicted, probability = module(values, mask, context, context_mask)
            diff = (target.unsqueeze(-1) - predicted) / scale.unsqueeze(-1)
            pin = torch.maximum(quantiles * diff, (quantiles - 1.0) * diff).sum(-1)
            pin_loss = (pin * target_mask).sum() / target_mask.sum().clamp(min=1.0)
            bce = nn.functional.binary_cross_entropy(
                probability.clamp(1e-6, 1 - 1e-6), label, reduction="none"
            )
            bce_loss = (bce * label_mask).sum() / label_mask.sum().clamp(min=1.0)
            loss = pin_loss + 0.5 * bce_loss
            optimizer.zero_grad()
            cast(Any, loss).backward()  # untyped in torch stubs
            optimizer.step()
            total += float(loss.detach()) * idx.numel()
        LOGGER.info("epoch %d/%d: loss %.4f", epoch + 1, epochs, total / count)
    return module.eval()


# --- export, cards --------------------------------------------------------------------------------


def export_onnx(module: nn.Module, path: Path) -> None:
    """Export with the spec's names, a dynamic batch axis and opset 17; refuse models over 2 MB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    example = (
        torch.zeros(2, WINDOW_STEPS, len(SIGNALS)),
        torch.zeros(2, WINDOW_STEPS, len(SIGNALS)),
        torch.zeros(2, WINDOW_STEPS, len(CONTEXT)),
        torch.zeros(2, WINDOW_STEPS, len(CONTEXT)),
    )
    axes = {name: {0: "beds"} for name in (*INPUT_NAMES, *OUTPUT_NAMES)}
    with warnings.catch_warnings():
        # The TorchScript exporter (and its internals) is deprecated in favour of torch.export's, which
        # needs onnxscript (not in the train extra); this graph is static and the legacy exporter is
        # deterministic. Only deprecation warnings are silenced, and only during the export.
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(module, example, path, axes)
    size = path.stat().st_size
    if size >= MAX_MODEL_BYTES:
        raise RuntimeError(f"{path}: {size} bytes, over the 2 MB limit")


def _export(
    module: nn.Module, example: tuple[torch.Tensor, ...], path: Path, axes: dict[str, dict[int, str]]
) -> None:
    torch.onnx.export(
        module,
        example,
        str(path),
        input_names=list(INPUT_NAMES),
        output_names=list(OUTPUT_NAMES),
        dynamic_axes=axes,
        opset_version=OPSET,
        dynamo=False,
        do_constant_folding=True,
    )


def reference_batch(split: Split) -> dict[str, F32]:
    """Return 16 fixed input windows: real (both records), synthetic, one all-masked, one partial."""
    picks: list[tuple[PatientGrid, int]] = []
    real = [*split.train_real, *split.held_real]
    for grid in real:
        for fraction in (0.1, 0.35, 0.6, 0.9):
            picks.append((grid, int(fraction * (grid.minutes - 1))))
    synthetic = [*split.train_synthetic[:3], *split.held_synthetic[:3]]
    for grid in synthetic:
        picks.append((grid, int(0.5 * (grid.minutes - 1))))
    picks = picks[:14]
    arrays = [
        list(
            windows_from_grid(
                values=g.values, mask=g.mask, context=g.context, context_mask=g.context_mask, end_steps=[t]
            )
        )
        for g, t in picks
    ]
    values, mask, context, context_mask = (np.concatenate([a[i] for a in arrays]) for i in range(4))
    empty = np.zeros((1, *values.shape[1:]), np.float32), np.zeros((1, *context.shape[1:]), np.float32)
    partial_values = values[:1].copy()
    partial_mask = mask[:1].copy()
    partial_mask[:, :-8, :] = 0.0
    partial_mask[:, :, 1] = 0.0
    partial_values = partial_values * partial_mask
    return {
        "values": np.concatenate([values, empty[0], partial_values]).astype(np.float32),
        "mask": np.concatenate([mask, empty[0], partial_mask]).astype(np.float32),
        "context": np.concatenate([context, empty[1], context[:1]]).astype(np.float32),
        "context_mask": np.concatenate([context_mask, empty[1], context_mask[:1]]).astype(np.float32),
    }


def _metrics_table(rows: Sequence[MetricRow]) -> str:
    lines = [
        "| signal | horizon | n | MAE | MAE persistence | ratio | coverage 10-90 | pinball |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.signal} | {r.horizon_min} min | {r.n} | {r.mae:.3f} | {r.mae_persistence:.3f} | "
            f"{r.mae_ratio:.3f} | {_fmt(r.coverage_10_90)} | {_fmt(r.pinball)} |"
        )
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _event_table(rows: Sequence[EventMetricRow]) -> str:
    lines = [
        "| event | horizon | n | positives | AUROC | AUROC current value | AUPRC | AUPRC current value | "
        "threshold | lead time (min) | false alarms / bed-hour |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r.event} | {r.horizon_min} min | {r.n} | {r.positives} | {_fmt(r.auroc)} | "
            f"{_fmt(r.auroc_current_value)} | {_fmt(r.auprc)} | {_fmt(r.auprc_current_value)} | "
            f"{_fmt(r.threshold)} | {_fmt(r.lead_time_min, 1)} | {_fmt(r.false_alarms_per_bed_hour, 2)} |"
        )
    return "\n".join(lines)


def render_card(
    card: ModelCard, *, sections: Sequence[tuple[str, list[MetricRow], list[EventMetricRow]]], command: str
) -> str:
    """Return the human-readable card.md."""
    parts = [
        f"# {card.id} {card.version} ({card.kind}{', default' if card.default else ''})",
        "",
        card.summary,
        "",
        f"- ONNX: `model.onnx`, {card.size_bytes} bytes, SHA-256 `{card.onnx_sha256}`",
        f"- Produced by: `{command}` (seed {card.seed}), {card.created}",
        "",
        "## Inputs",
        card.inputs,
        "",
        "## Outputs",
        card.outputs,
        "",
        "## Training data",
        card.training_data,
        "",
        "## Evaluation data",
        card.evaluation_data,
        "",
        "## Event definitions",
        *[f"- `{k}`: {v}" for k, v in card.event_definitions.items()],
        "",
    ]
    for title, rows, events in sections:
        parts += [f"## {title}", "", _metrics_table(rows), ""]
        if events:
            parts += [_event_table(events), ""]
    parts += ["## Limits of use", card.limits_of_use, ""]
    return "\n".join(parts)


INPUTS_TEXT = (
    f"`values`, `mask`: float32 [B, {WINDOW_STEPS}, {len(SIGNALS)}], the last {WINDOW_STEPS} one-minute "
    f"steps (oldest first, the last row is now) of {', '.join(f'{s.key} ({s.unit})' for s in SIGNALS)}; "
    "a step is the "
    "mean of its valid observations in canonical units, 0 where the mask is 0 (missing, unit not "
    f"convertible, or outside the plausible range). `context`, `context_mask`: float32 [B, {WINDOW_STEPS}, "
    f"{len(CONTEXT)}], {', '.join(f'{s.key} ({s.unit})' for s in CONTEXT)}. B is dynamic (1..64)."
)
OUTPUTS_TEXT = (
    f"`quantiles`: float32 [B, {len(SIGNALS)}, {len(HORIZONS_MIN)}, {len(QUANTILES)}]: per signal and "
    "horizon "
    f"{HORIZONS_MIN} min the 0.1/0.5/0.9 quantiles in physical units (ordered). `event_probability`: float32 "
    f"[B, {len(EVENTS)}, {len(HORIZONS_MIN)}]: probability of {', '.join(e.key for e in EVENTS)} within each "
    "horizon. A signal with no valid value in the window gets finite placeholder outputs (median 0): the "
    f"runtime publishes a signal only when it was valid within the last {FRESH_WITHIN_STEPS} steps."
)


def _describe_grids(grids: Sequence[PatientGrid]) -> str:
    return ", ".join(f"{g.patient_id} ({g.minutes} min)" for g in grids)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Held-out rows, combined and per source, for one exported model."""

    combined: list[MetricRow]
    combined_events: list[EventMetricRow]
    real: list[MetricRow]
    real_events: list[EventMetricRow]
    synthetic: list[MetricRow]
    synthetic_events: list[EventMetricRow]


def train_thresholds(predict: Predict, grids: Sequence[PatientGrid]) -> dict[tuple[str, int], float]:
    """Return per (event, horizon) the probability reaching ALARM_SENSITIVITY on the training patients."""
    forecasts = [forecast_grid(predict, g, batch_size=512) for g in grids]
    chosen: dict[tuple[str, int], float] = {}
    for e_index, event in enumerate(EVENTS):
        for h_index, horizon in enumerate(HORIZONS_MIN):
            pooled = event_scores(forecasts, e_index, h_index)
            threshold = metrics.threshold_at_sensitivity(
                pooled.probability, pooled.label, sensitivity=ALARM_SENSITIVITY
            )
            if threshold is not None:
                chosen[(event.key, horizon)] = threshold
    return chosen


def evaluate_split(predict: Predict, split: Split, thresholds: dict[tuple[str, int], float]) -> Evaluation:
    """Evaluate on the held-out real and synthetic patients, pooled and separately."""
    real: list[GridForecast] = [forecast_grid(predict, g, batch_size=512) for g in split.held_real]
    synthetic: list[GridForecast] = [forecast_grid(predict, g, batch_size=512) for g in split.held_synthetic]
    return Evaluation(
        combined=accuracy_rows([*real, *synthetic]),
        combined_events=event_rows([*real, *synthetic], thresholds=thresholds),
        real=accuracy_rows(real),
        real_events=event_rows(real, thresholds=thresholds),
        synthetic=accuracy_rows(synthetic),
        synthetic_events=event_rows(synthetic, thresholds=thresholds),
    )


def gate_decision(evaluation: Evaluation) -> dict[str, bool]:
    """Return per signal whether the learned correction is kept (ratio < 1 at 5 and 15 min).

    Each held-out source (real, synthetic) with at least GATE_MIN_N scored minutes at a gate horizon
    must show a ratio < 1 there; a signal no source can judge is gated off.
    """
    keep: dict[str, bool] = {}
    for key in SIGNAL_KEYS:
        judged = False
        ok = True
        for rows in (evaluation.real, evaluation.synthetic):
            for horizon in GATE_HORIZONS:
                row = next((r for r in rows if r.signal == key and r.horizon_min == horizon), None)
                if row is None or row.n < GATE_MIN_N:
                    continue
                judged = True
                ok &= row.mae_ratio < 1.0
        keep[key] = judged and ok
    return keep


def run(config: Config) -> int:
    """Run the whole pipeline; return the exit status."""
    started = time.monotonic()
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    split = load_split(config)
    if not split.train_real or not split.held_real:
        LOGGER.warning(
            "real records: %d train, %d held out (data %s)",
            len(split.train_real),
            len(split.held_real),
            config.data,
        )
    real_windows = build_windows(split.train_real)
    synthetic_windows = build_windows(split.train_synthetic)
    train = _concat(real_windows, synthetic_windows, repeat_a=REAL_WEIGHT)
    LOGGER.info(
        "training windows: %d real x%d + %d synthetic",
        real_windows.values.shape[0],
        REAL_WEIGHT,
        synthetic_windows.values.shape[0],
    )
    command = f"python -m engines.train --seed {config.seed} --out engines/models" + (
        " --quick" if config.quick else ""
    )
    created = datetime.now(tz=UTC).strftime("%Y-%m-%d")
    held_text = (
        f"Held-out patients, never trained on: real {_describe_grids(split.held_real)}; synthetic "
        f"{len(split.held_synthetic)} patients x {split.held_synthetic[0].minutes} min "
        f"(seed {config.seed + 1000}). "
        "Every minute with a valid target and a fresh signal is scored (forecast from the window ending at "
        "that minute). The real held-out record has no arterial line and no EtCO2: its `map` rows come from "
        "sparse NBPMean cuff readings (few scorable minutes) and EtCO2/MAP accuracy on real data by patient "
        "is impossible with the data we have (p000020, the only record with an arterial MAP, is the real "
        "training patient): MAP and EtCO2 figures are from synthetic held-out patients and labelled so. "
        "`metrics` in card.json pools real and synthetic held-out patients; card.md also shows each source. "
        f"Alarm thresholds (events): the probability reaching {ALARM_SENSITIVITY:.0%} sensitivity on the "
        "training patients; lead time = mean minutes from the first alarm within h minutes before an onset "
        "(first valid minute below the threshold after >= 10 min not below) to that onset, over detected "
        "onsets; false alarms = episodes of consecutive alarming minutes whose label was negative, per "
        "bed-hour of scored minutes."
    )
    train_text = (
        f"Real: {_describe_grids(split.train_real)} (MIMIC-III waveform database matched subset, PhysioNet; "
        f"windows repeated x{REAL_WEIGHT}). Synthetic: {len(split.train_synthetic)} patients x "
        f"{split.train_synthetic[0].minutes} min from engines.synthetic (seed {config.seed}): correlated "
        "drifts, "
        "AR noise, hypotension and desaturation episodes with clinician FiO2 response, gaps and artefacts."
    )
    # Baseline.
    baseline = fit_baseline(train)
    baseline_dir = config.out / BASELINE_ID / VERSION
    export_onnx(baseline, baseline_dir / "model.onnx")
    baseline_predict = onnx_predict(baseline_dir / "model.onnx")
    baseline_eval = evaluate_split(baseline_predict, split, train_thresholds(baseline_predict, split.train))
    # Learned.
    learned = train_learned(train, seed=config.seed, epochs=QUICK_EPOCHS if config.quick else EPOCHS)
    learned_dir = config.out / LEARNED_ID / VERSION
    export_onnx(learned, learned_dir / "model.onnx")
    ungated = evaluate_split(onnx_predict(learned_dir / "model.onnx"), split, {})
    keep = gate_decision(ungated)
    learned.gate.copy_(torch.tensor([1.0 if keep[k] else 0.0 for k in SIGNAL_KEYS]))
    export_onnx(learned, learned_dir / "model.onnx")
    learned_predict = onnx_predict(learned_dir / "model.onnx")
    learned_eval = evaluate_split(learned_predict, split, train_thresholds(learned_predict, split.train))
    learned_default = any(keep.values())
    kept = [k for k in SIGNAL_KEYS if keep[k]]
    gated = [k for k in SIGNAL_KEYS if not keep[k]]

    reference = reference_batch(split)
    for module, directory, evaluation, is_default, kind in (
        (baseline, baseline_dir, baseline_eval, not learned_default, "baseline"),
        (learned, learned_dir, learned_eval, learned_default, "learned"),
    ):
        with torch.no_grad():
            quantiles, probability = module(*(torch.from_numpy(reference[n]) for n in INPUT_NAMES))
        arrays: dict[str, Any] = {
            **reference,
            "quantiles": quantiles.numpy(),
            "event_probability": probability.numpy(),
        }
        np.savez(directory / "reference.npz", **arrays)
        np.savez(directory / "state.npz", **{k: v.detach().numpy() for k, v in module.state_dict().items()})
        onnx_path = directory / "model.onnx"
        if kind == "baseline":
            summary = (
                "Persistence: the median at every horizon is the last valid value in the window (exactly). "
                "The 10-90 % interval is the last value plus per-signal, per-horizon empirical residual "
                "quantiles from the training patients (constants in the graph). Event probabilities are the "
                "'current value' baseline: a logistic of the last valid value relative to the threshold, "
                "fitted on the training patients (monotone, so its AUROC is the current-value AUROC)."
                + (
                    " This is the default model: the learned model did not beat persistence at 5 and 15 min "
                    "on held-out data for any signal."
                    if is_default
                    else " Not the default: the learned model beat it on held-out data for "
                    + ", ".join(kept)
                    + "."
                )
            )
            limits = (
                "A reference, not a predictor: it never anticipates a change. Intervals are pooled over "
                "adults in the training data and do not adapt to a patient's variability. Not validated "
                "for clinical decisions; validate on your unit's data (`icu-edge engines eval`) first."
            )
        else:
            summary = (
                "NLinear-style quantile model: persistence (the last valid value, computed in the graph) "
                "plus "
                "a learned linear correction per signal and horizon on the window minus its last value, the "
                "masks and the ventilator context; p10/p90 = median -/+ softplus spreads; event "
                "probabilities = sigmoid of a small head on the window, the predicted median and the last "
                "value relative to the threshold. Per-signal gate baked in after held-out evaluation: "
                f"learned correction kept for {', '.join(kept) or 'no signal'}; gated off (median exactly "
                f"persistence) for {', '.join(gated) or 'no signal'}, because the learned median did not "
                "beat persistence (ratio < 1) at both 5 and 15 min on every held-out source with "
                f">= {GATE_MIN_N} scored minutes. "
                + (
                    "Default model."
                    if is_default
                    else "NOT the default: the learned model did not beat persistence on held-out data for "
                    "any "
                    "signal, so the persistence baseline is the default."
                )
            )
            limits = (
                "Trained on one real ICU patient (p000020) and synthetic physiology: not enough to claim "
                "clinical accuracy; the gate decision was made on the same held-out patients the metrics are "
                "reported on. MAP and EtCO2 behaviour is learned mostly from synthetic data. Events are rare "
                "in the real data; event probabilities are not calibrated for alarm use without local "
                "validation. Adults only; per-minute numerics only. Validate on your unit's data "
                "(`icu-edge engines eval RECORD`) before enabling."
            )
        card = ModelCard(
            id=BASELINE_ID if kind == "baseline" else LEARNED_ID,
            version=VERSION,
            kind="baseline" if kind == "baseline" else "learned",
            default=is_default,
            summary=summary,
            inputs=INPUTS_TEXT,
            outputs=OUTPUTS_TEXT,
            training_data=train_text,
            evaluation_data=held_text,
            metrics=evaluation.combined,
            event_metrics=evaluation.combined_events,
            limits_of_use=limits,
            event_definitions=EVENT_DEFINITIONS,
            seed=config.seed,
            onnx_sha256=_sha256(onnx_path),
            size_bytes=onnx_path.stat().st_size,
            created=created,
        )
        (directory / "card.json").write_text(card.model_dump_json(indent=2) + "\n", encoding="utf-8")
        sections = [
            (
                "Held-out accuracy, all held-out patients (real + synthetic)",
                evaluation.combined,
                evaluation.combined_events,
            ),
            (
                f"Held-out accuracy, real patient ({_describe_grids(split.held_real)})",
                evaluation.real,
                evaluation.real_events,
            ),
            (
                "Held-out accuracy, synthetic patients (MAP and EtCO2: synthetic only)",
                evaluation.synthetic,
                evaluation.synthetic_events,
            ),
        ]
        (directory / "card.md").write_text(
            render_card(card, sections=sections, command=command), encoding="utf-8"
        )
        write_manifest(directory)  # last: it lists every file written above
    LOGGER.info("gate: %s; learned default: %s; %.1f s", keep, learned_default, time.monotonic() - started)
    return 0
