"""Check data for the engines: reference windows, synthetic windows, tolerances, and a tiny test model.

Used by `icu-edge engines verify|bench`, by the TensorRT FP16 decision and by the tests. Nothing here
is a forecaster: `build_test_model` writes a deliberately trivial, spec-conformant ONNX (needs the
`onnx` package, a dev dependency, imported only when called) so backends and the CLI can be checked
without the shipped models. Its outputs have a closed form (`closed_form_outputs`), so a test can
compare a backend against numpy rather than against itself.

`reference.npz` next to a model holds arrays named like the ONNX I/O in engines.spec: the four inputs
(`values`, `mask`, `context`, `context_mask`) and the outputs the exporter computed for them
(`quantiles`, `event_probability`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.backend import BatchInput, BatchOutput
from engines.catalog import InstalledModel, ModelCard, load_model, sha256_file, write_manifest
from engines.spec import (
    CONTEXT,
    EVENTS,
    HORIZONS_MIN,
    INPUT_CONTEXT,
    INPUT_CONTEXT_MASK,
    INPUT_MASK,
    INPUT_VALUES,
    OUTPUT_EVENTS,
    OUTPUT_QUANTILES,
    QUANTILES,
    SIGNAL_KEYS,
    SIGNALS,
    WINDOW_STEPS,
)

LOGGER = logging.getLogger(__name__)

REFERENCE_FILE = "reference.npz"

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, kw_only=True)
class Tolerance:
    """How far a backend's outputs may be from reference outputs: |a - e| <= abs + relative * |e|."""

    quantiles_abs: float
    """Physical units (the signal's canonical unit)."""
    probability_abs: float
    relative: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """Per-output maximum absolute errors of one run against reference outputs."""

    quantiles_max_abs: float
    probability_max_abs: float
    within: bool
    """All elements finite and inside the tolerance."""


def compare_outputs(*, actual: BatchOutput, expected: BatchOutput, tolerance: Tolerance) -> Comparison:
    """Return the max abs error per output and whether every element is within tolerance."""
    within = True
    errors: list[float] = []
    pairs = (
        (actual.quantiles, expected.quantiles, tolerance.quantiles_abs),
        (actual.event_probability, expected.event_probability, tolerance.probability_abs),
    )
    for got, want, absolute in pairs:
        if got.shape != want.shape:
            raise ValueError(f"output shape {got.shape} differs from reference {want.shape}")
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        finite = bool(np.isfinite(diff).all())
        errors.append(float(diff.max()) if finite else float("inf"))
        within &= finite and bool((diff <= absolute + tolerance.relative * np.abs(want)).all())
    return Comparison(quantiles_max_abs=errors[0], probability_max_abs=errors[1], within=within)


def load_reference(model: InstalledModel) -> tuple[BatchInput, BatchOutput] | None:
    """Return the inputs and outputs in the model's reference.npz, or None when it has none."""
    path = model.onnx_path.parent / REFERENCE_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        arrays = {name: np.ascontiguousarray(data[name], dtype=np.float32) for name in data.files}
    missing = {INPUT_VALUES, INPUT_MASK, INPUT_CONTEXT, INPUT_CONTEXT_MASK, OUTPUT_QUANTILES, OUTPUT_EVENTS}
    missing -= set(arrays)
    if missing:
        raise ValueError(f"{path}: missing arrays {sorted(missing)}")
    inputs = BatchInput(
        values=arrays[INPUT_VALUES],
        mask=arrays[INPUT_MASK],
        context=arrays[INPUT_CONTEXT],
        context_mask=arrays[INPUT_CONTEXT_MASK],
    )
    outputs = BatchOutput(quantiles=arrays[OUTPUT_QUANTILES], event_probability=arrays[OUTPUT_EVENTS])
    return inputs, outputs


def write_reference(path: Path, *, inputs: BatchInput, outputs: BatchOutput) -> None:
    """Write a reference.npz of inputs and the outputs expected for them."""
    with path.open("wb") as handle:
        arrays: dict[str, Any] = {
            INPUT_VALUES: inputs.values,
            INPUT_MASK: inputs.mask,
            INPUT_CONTEXT: inputs.context,
            INPUT_CONTEXT_MASK: inputs.context_mask,
            OUTPUT_QUANTILES: outputs.quantiles,
            OUTPUT_EVENTS: outputs.event_probability,
        }
        np.savez(handle, **arrays)


_TYPICAL = {"hr": 82.0, "spo2": 96.0, "map": 78.0, "rr": 16.0, "etco2": 37.0, "fio2": 40.0, "peep": 6.0}
_SPREAD = {"hr": 12.0, "spo2": 2.5, "map": 10.0, "rr": 4.0, "etco2": 4.0, "fio2": 15.0, "peep": 2.0}


def synthetic_batch(*, beds: int, seed: int = 0) -> BatchInput:
    """Return plausible windows for `beds` beds: per-bed level, slow drift, noise, ~10 % of steps missing."""
    rng = np.random.default_rng(seed)

    def grid(signals: tuple[str, ...], bounds: list[tuple[float, float]]) -> tuple[F32, F32]:
        steps = np.arange(WINDOW_STEPS, dtype=np.float64)[None, :, None]
        typical = np.array([_TYPICAL[s] for s in signals])
        spread = np.array([_SPREAD[s] for s in signals])
        level = typical + spread * rng.standard_normal((beds, 1, len(signals)))
        drift = 0.02 * spread * rng.standard_normal((beds, 1, len(signals))) * steps
        noise = 0.1 * spread * rng.standard_normal((beds, WINDOW_STEPS, len(signals)))
        low = np.array([b[0] for b in bounds])
        high = np.array([b[1] for b in bounds])
        values = np.clip(level + drift + noise, low, high)
        mask = (rng.random(values.shape) > 0.1).astype(np.float32)
        return (values * mask).astype(np.float32), mask

    values, mask = grid(SIGNAL_KEYS, [(s.minimum, s.maximum) for s in SIGNALS])
    context, context_mask = grid(tuple(s.key for s in CONTEXT), [(s.minimum, s.maximum) for s in CONTEXT])
    return BatchInput(values=values, mask=mask, context=context, context_mask=context_mask)


def tile_batch(batch: BatchInput, *, beds: int) -> BatchInput:
    """Return a batch of exactly `beds` rows, repeating batch's rows in order as often as needed."""
    rows = np.arange(beds) % batch.beds
    return BatchInput(
        values=np.ascontiguousarray(batch.values[rows]),
        mask=np.ascontiguousarray(batch.mask[rows]),
        context=np.ascontiguousarray(batch.context[rows]),
        context_mask=np.ascontiguousarray(batch.context_mask[rows]),
    )


def check_inputs(model: InstalledModel, *, beds: int) -> tuple[BatchInput, str]:
    """Return `beds` input windows for checks and benchmarks, and where they came from.

    The model's reference windows (tiled to `beds`) when it ships a reference.npz: they are real
    exporter inputs; else deterministic synthetic windows (`synthetic_batch`, seed 0).
    """
    reference = load_reference(model)
    if reference is not None:
        return tile_batch(reference[0], beds=beds), f"{REFERENCE_FILE} ({reference[0].beds} windows, tiled)"
    return synthetic_batch(beds=beds), "synthetic windows (seed 0)"


# The test model: quantiles = last valid value per signal + fixed offsets (+ a tiny context term);
# event probability = sigmoid((threshold - last value) / scale + horizon bias).
_Q_OFFSETS = (
    np.array(HORIZONS_MIN, dtype=np.float32)[None, :, None]
    * (np.array(QUANTILES, dtype=np.float32)[None, None, :] - 0.5)
    * np.array([s.maximum - s.minimum for s in SIGNALS], dtype=np.float32)[:, None, None]
    / 100.0
).astype(np.float32)
_CONTEXT_GAIN = np.float32(1e-4)
_EVENT_SIGNAL_INDEX = np.array([SIGNAL_KEYS.index(e.signal) for e in EVENTS], dtype=np.int64)
_EVENT_THRESHOLD = np.array([e.below for e in EVENTS], dtype=np.float32)
_EVENT_SCALE = np.float32(5.0)
_EVENT_HORIZON_BIAS = (0.1 * np.array(HORIZONS_MIN, dtype=np.float32)).astype(np.float32)


def closed_form_outputs(batch: BatchInput) -> BatchOutput:
    """Return what the test model computes for batch, in numpy (an independent implementation)."""
    steps = np.arange(1, WINDOW_STEPS + 1, dtype=np.float32)[None, :, None]
    position = batch.mask * steps
    selected = (position == position.max(axis=1, keepdims=True)) * batch.mask
    last = (batch.values * selected).sum(axis=1)
    context = (batch.context * batch.context_mask).sum(axis=(1, 2))
    quantiles = last[:, :, None, None] + _Q_OFFSETS[None] + (_CONTEXT_GAIN * context)[:, None, None, None]
    z = (_EVENT_THRESHOLD[None, :] - last[:, _EVENT_SIGNAL_INDEX]) / _EVENT_SCALE
    probability = 1.0 / (1.0 + np.exp(-(z[:, :, None] + _EVENT_HORIZON_BIAS[None, None, :])))
    return BatchOutput(
        quantiles=quantiles.astype(np.float32), event_probability=probability.astype(np.float32)
    )


_EVERY_EVENT = tuple(event.key for event in EVENTS)


def build_test_model(
    root: Path,
    *,
    model_id: str = "test-model",
    version: str = "1.0.0",
    default: bool = True,
    reference_beds: int = 16,
    events_estimated: tuple[str, ...] | None = _EVERY_EVENT,
) -> InstalledModel:
    """Write a tiny spec-conformant model under `root/<id>/<version>/` with its manifest, and load it.

    `events_estimated` is what its card lists (default: every event, so the runtime publishes them and
    the event plumbing is exercised; None: a card without the key).
    """
    import onnx  # dev dependency, only needed here
    from onnx import TensorProto, helper, numpy_helper

    directory = root / model_id / version
    directory.mkdir(parents=True, exist_ok=True)

    def const(name: str, array: npt.NDArray[np.generic]) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))

    def io(name: str, *dims: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["beds", *dims])

    n_signals, n_context, n_horizons = len(SIGNALS), len(CONTEXT), len(HORIZONS_MIN)
    nodes = [
        const("steps", np.arange(1, WINDOW_STEPS + 1, dtype=np.float32).reshape(1, WINDOW_STEPS, 1)),
        const("axis1", np.array([1], dtype=np.int64)),
        const("axes12", np.array([1, 2], dtype=np.int64)),
        const("axes23", np.array([2, 3], dtype=np.int64)),
        const("axis2", np.array([2], dtype=np.int64)),
        const("axis3", np.array([3], dtype=np.int64)),
        const("q_offsets", _Q_OFFSETS[None]),
        const("context_gain", np.array(_CONTEXT_GAIN, dtype=np.float32)),
        const("event_index", _EVENT_SIGNAL_INDEX),
        const("threshold", _EVENT_THRESHOLD.reshape(1, len(EVENTS), 1)),
        const("scale", np.array(_EVENT_SCALE, dtype=np.float32)),
        const("horizon_bias", _EVENT_HORIZON_BIAS.reshape(1, 1, n_horizons)),
        helper.make_node("Mul", [INPUT_MASK, "steps"], ["position"]),
        helper.make_node("ReduceMax", ["position"], ["last_position"], axes=[1], keepdims=1),
        helper.make_node("Equal", ["position", "last_position"], ["is_last"]),
        helper.make_node("Cast", ["is_last"], ["is_last_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["is_last_f", INPUT_MASK], ["selected"]),
        helper.make_node("Mul", [INPUT_VALUES, "selected"], ["selected_values"]),
        helper.make_node("ReduceSum", ["selected_values", "axis1"], ["last"], keepdims=0),
        helper.make_node("Mul", [INPUT_CONTEXT, INPUT_CONTEXT_MASK], ["context_valid"]),
        helper.make_node("ReduceSum", ["context_valid", "axes12"], ["context_sum"], keepdims=1),
        helper.make_node("Unsqueeze", ["context_sum", "axis3"], ["context_sum4"]),
        helper.make_node("Mul", ["context_sum4", "context_gain"], ["context_term"]),
        helper.make_node("Unsqueeze", ["last", "axes23"], ["last4"]),
        helper.make_node("Add", ["last4", "q_offsets"], ["q_raw"]),
        helper.make_node("Add", ["q_raw", "context_term"], [OUTPUT_QUANTILES]),
        helper.make_node("Gather", ["last", "event_index"], ["event_last"], axis=1),
        helper.make_node("Unsqueeze", ["event_last", "axis2"], ["event_last3"]),
        helper.make_node("Sub", ["threshold", "event_last3"], ["margin"]),
        helper.make_node("Div", ["margin", "scale"], ["z"]),
        helper.make_node("Add", ["z", "horizon_bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [OUTPUT_EVENTS]),
    ]
    graph = helper.make_graph(
        nodes,
        "icu_edge_test_model",
        [
            io(INPUT_VALUES, WINDOW_STEPS, n_signals),
            io(INPUT_MASK, WINDOW_STEPS, n_signals),
            io(INPUT_CONTEXT, WINDOW_STEPS, n_context),
            io(INPUT_CONTEXT_MASK, WINDOW_STEPS, n_context),
        ],
        [
            io(OUTPUT_QUANTILES, n_signals, n_horizons, len(QUANTILES)),
            io(OUTPUT_EVENTS, len(EVENTS), n_horizons),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="icu-edge")
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    onnx_path = directory / "model.onnx"
    onnx_path.write_bytes(proto.SerializeToString())

    if reference_beds > 0:
        inputs = synthetic_batch(beds=reference_beds, seed=1)
        write_reference(directory / REFERENCE_FILE, inputs=inputs, outputs=closed_form_outputs(inputs))

    card = ModelCard(
        id=model_id,
        version=version,
        kind="baseline",
        default=default,
        summary="Test model: last valid value plus fixed offsets; not a forecaster.",
        inputs="engines.spec inputs",
        outputs="engines.spec outputs",
        training_data="none (closed-form test graph)",
        evaluation_data="none",
        limits_of_use="Tests and field checks of the inference backends only; never for patients.",
        event_definitions={e.key: e.description for e in EVENTS},
        events_estimated=None if events_estimated is None else list(events_estimated),
        onnx_sha256=sha256_file(onnx_path),
        size_bytes=onnx_path.stat().st_size,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    (directory / "card.json").write_text(card.model_dump_json(indent=2))
    write_manifest(directory)
    return load_model(directory)
