"""The shipped models: cards and hashes, onnxruntime against the PyTorch reference, batching, bounds.

`reference.npz` next to each model holds a fixed batch of real and synthetic windows and the PyTorch
outputs for them (written by the training pipeline), so the comparison runs without torch.

Tolerances (measured, see the report in engines/models/README.md): event probabilities agree within
1e-5 absolute, batched or not. Quantiles are physical values up to 200 (float32 spacing is 1.5e-5 above
128), and the learned model's gemms sum in a different order in onnxruntime (MLAS) than in ATen, and
in MLAS differently for different batch sizes (the mix network's gemm has B x 5 rows), so quantiles
are compared within 1e-5 + 1e-6 * (|median| + |spread|), a few float32 ulps of the operands (p10 =
median - spread can cancel to a small number carrying the operands' rounding).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engines.catalog import MANIFEST_FILE, SHIPPED_MODELS_DIR, InstalledModel, find_models, select_model
from engines.evaluate import last_valid, smoothed_means
from engines.spec import (
    CONTEXT,
    EVENTS,
    HORIZONS_MIN,
    INPUT_NAMES,
    OUTPUT_NAMES,
    QUANTILES,
    SIGNAL_KEYS,
    SIGNALS,
    WINDOW_STEPS,
)

ort = pytest.importorskip(
    "onnxruntime", reason="onnxruntime is the CPU backend (pip install 'icu-edge[cpu]')"
)

MODELS = find_models()
IDS = [m.ref for m in MODELS]
ATOL = 1e-5
QUANTILE_RTOL = 1e-6


def _session(model: InstalledModel) -> object:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        str(model.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )


def _run(session: object, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    quantiles, probability = session.run(list(OUTPUT_NAMES), {n: feeds[n] for n in INPUT_NAMES})  # type: ignore[attr-defined]
    return np.asarray(quantiles), np.asarray(probability)


def _assert_quantiles_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Within ATOL + QUANTILE_RTOL x the magnitude of the operands (median and spread) of each quantile."""
    median = expected[..., 1:2]
    scale = np.abs(median) + np.abs(expected - median)
    excess = np.abs(actual - expected) - (ATOL + QUANTILE_RTOL * scale)
    assert (excess <= 0).all(), (
        f"max |diff| {np.abs(actual - expected).max():.3g}, worst excess {excess.max():.3g}"
    )


def _reference(model: InstalledModel) -> dict[str, np.ndarray]:
    with np.load(model.onnx_path.parent / "reference.npz") as data:
        return {k: data[k] for k in data.files}


def _random_inputs(beds: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    low = np.array([s.minimum for s in SIGNALS], np.float32)
    high = np.array([s.maximum for s in SIGNALS], np.float32)
    values = rng.uniform(low, high, size=(beds, WINDOW_STEPS, len(SIGNALS))).astype(np.float32)
    mask = (rng.random(values.shape) < 0.8).astype(np.float32)
    c_low = np.array([s.minimum for s in CONTEXT], np.float32)
    c_high = np.array([s.maximum for s in CONTEXT], np.float32)
    context = rng.uniform(c_low, c_high, size=(beds, WINDOW_STEPS, len(CONTEXT))).astype(np.float32)
    context_mask = (rng.random(context.shape) < 0.5).astype(np.float32)
    return {
        "values": values * mask,
        "mask": mask,
        "context": context * context_mask,
        "context_mask": context_mask,
    }


def test_shipped_models_load_with_matching_hashes_and_one_default() -> None:
    assert {m.card.id for m in MODELS} >= {"persistence", "nlinear-q"}
    assert len(list(SHIPPED_MODELS_DIR.glob("*/*/card.json"))) == len(MODELS)  # none skipped
    assert sum(m.card.default for m in MODELS) == 1
    default = select_model(MODELS)
    assert default.card.default
    for model in MODELS:
        assert model.onnx_path.stat().st_size == model.card.size_bytes
        assert model.card.size_bytes < 2 * 1024 * 1024
        assert set(model.card.event_definitions) == {e.key for e in EVENTS}
        assert model.card.metrics
        assert model.card.event_metrics
        assert (model.onnx_path.parent / "card.md").is_file()
        assert (model.onnx_path.parent / MANIFEST_FILE).is_file(), "shipped with its SHA-256 manifest"


def test_default_learned_model_beats_persistence_where_learned() -> None:
    """Held-out (card): where the learned mix is kept it beats persistence; 1 min is persistence."""
    default = select_model(MODELS)
    if default.card.kind == "baseline":
        learned = [m for m in MODELS if m.card.kind == "learned"]
        assert all("met the bar for no signal" in m.card.summary for m in learned)
        return
    with np.load(default.onnx_path.parent / "state.npz") as state:
        gate = state["forecaster.gate"]
    assert gate.shape == (len(SIGNALS), len(HORIZONS_MIN))
    assert (gate[:, HORIZONS_MIN.index(1)] == 0.0).all(), "the 1-min median is persistence by design"
    assert gate.any()
    for s, key in enumerate(SIGNAL_KEYS):
        for h, horizon in enumerate(HORIZONS_MIN):
            if gate[s, h] == 1.0:
                row = next(r for r in default.card.metrics if r.signal == key and r.horizon_min == horizon)
                assert row.mae_ratio < 1.0, row


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_io_names_and_dynamic_batch(model: InstalledModel) -> None:
    session = _session(model)
    inputs = session.get_inputs()  # type: ignore[attr-defined]
    outputs = session.get_outputs()  # type: ignore[attr-defined]
    assert [i.name for i in inputs] == list(INPUT_NAMES)
    assert [o.name for o in outputs] == list(OUTPUT_NAMES)
    assert all(isinstance(i.shape[0], str) for i in inputs)  # dynamic batch axis
    quantiles, probability = _run(session, _random_inputs(3, seed=1))
    assert quantiles.shape == (3, len(SIGNALS), len(HORIZONS_MIN), len(QUANTILES))
    assert probability.shape == (3, len(EVENTS), len(HORIZONS_MIN))
    assert quantiles.dtype == np.float32
    assert probability.dtype == np.float32


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_onnxruntime_equals_pytorch_reference(model: InstalledModel) -> None:
    reference = _reference(model)
    assert reference["values"].shape[0] == 16
    quantiles, probability = _run(_session(model), reference)
    np.testing.assert_allclose(probability, reference["event_probability"], rtol=0, atol=ATOL)
    _assert_quantiles_close(quantiles, reference["quantiles"])


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_onnxruntime_equals_live_pytorch(model: InstalledModel) -> None:
    torch = pytest.importorskip("torch", reason="torch is a dev-time extra (pip install 'icu-edge[train]')")
    from engines.train.events import EventHead, WithEvents
    from engines.train.modules import NLinearQuantile, PersistenceBaseline

    module: torch.nn.Module = (
        PersistenceBaseline()
        if model.card.kind == "baseline"
        else WithEvents(NLinearQuantile(), EventHead(), estimated=set(model.card.events_estimated or []))
    )
    with np.load(model.onnx_path.parent / "state.npz") as state:
        module.load_state_dict({k: torch.from_numpy(state[k]) for k in state.files})
    module.eval()
    feeds = {**_random_inputs(20, seed=5)}
    reference = _reference(model)
    for name in INPUT_NAMES:
        feeds[name] = np.concatenate([feeds[name], reference[name]])
    with torch.no_grad():
        live_q, live_p = module(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))
    # The saved state reproduces the stored reference exactly, and onnxruntime matches it.
    np.testing.assert_array_equal(live_q.numpy()[20:], reference["quantiles"])
    np.testing.assert_array_equal(live_p.numpy()[20:], reference["event_probability"])
    quantiles, probability = _run(_session(model), feeds)
    np.testing.assert_allclose(probability, live_p.numpy(), rtol=0, atol=ATOL)
    _assert_quantiles_close(quantiles, live_q.numpy())


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_batching_gives_each_bed_its_result_alone(model: InstalledModel) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = min(os.cpu_count() or 1, 4)
    session = ort.InferenceSession(
        str(model.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    pool = _random_inputs(64, seed=9)
    reference = _reference(model)
    for name in INPUT_NAMES:
        pool[name] = np.concatenate([reference[name], pool[name]])[:64]
    alone = [_run(session, {n: pool[n][i : i + 1] for n in INPUT_NAMES}) for i in range(64)]
    rng = np.random.default_rng(0)
    worst = 0.0
    for beds in (1, 2, 8, 33, 64):
        index = rng.permutation(64)[:beds]
        quantiles, probability = _run(session, {n: pool[n][index] for n in INPUT_NAMES})
        for row, bed in enumerate(index):
            _assert_quantiles_close(quantiles[row], alone[bed][0][0])
            worst = max(worst, float(np.abs(probability[row] - alone[bed][1][0]).max()))
    assert worst <= ATOL


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_all_masked_and_garbage_under_mask_stay_finite(model: InstalledModel) -> None:
    feeds = _random_inputs(6, seed=3)
    feeds["mask"][:2] = 0.0
    feeds["context_mask"][:2] = 0.0
    feeds["values"][:2] = 0.0
    feeds["values"][2:4] = np.where(
        feeds["mask"][2:4] > 0, feeds["values"][2:4], np.nan
    )  # NaN under the mask
    feeds["values"][4] = np.where(feeds["mask"][4] > 0, feeds["values"][4], 1e30)
    quantiles, probability = _run(_session(model), feeds)
    assert np.isfinite(quantiles).all()
    assert np.isfinite(probability).all()


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_quantiles_ordered_and_probabilities_bounded(model: InstalledModel) -> None:
    feeds = _random_inputs(64, seed=4)
    reference = _reference(model)
    quantiles, probability = _run(_session(model), feeds)
    for q, p in ((quantiles, probability), (reference["quantiles"], reference["event_probability"])):
        assert (q[..., 0] <= q[..., 1]).all()
        assert (q[..., 1] <= q[..., 2]).all()
        assert ((p >= 0.0) & (p <= 1.0)).all()


def _fixed_baselines(model: InstalledModel) -> list[tuple[int, int, int]]:
    """Return (signal, horizon index, candidate) where the median is a fixed baseline.

    Candidate 0 is the last valid value, i >= 1 the mean of the last SMOOTHER_MINUTES[i - 1] values.
    """
    if model.card.kind == "baseline":
        return [(s, h, 0) for s in range(len(SIGNALS)) for h in range(len(HORIZONS_MIN))]
    with np.load(model.onnx_path.parent / "state.npz") as state:
        gate, fixed = state["forecaster.gate"], state["forecaster.fixed_weight"]
    return [
        (s, h, int(fixed[s, h].argmax()))
        for s in range(len(SIGNALS))
        for h in range(len(HORIZONS_MIN))
        if gate[s, h] == 0.0
    ]


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_median_is_the_fixed_baseline_where_gated(model: InstalledModel) -> None:
    """The baseline everywhere, the learned model where gated: exactly the last value, or the k-min mean."""
    feeds = _random_inputs(64, seed=6)
    reference = _reference(model)
    fixed = _fixed_baselines(model)
    assert fixed
    for feed in (feeds, reference):
        quantiles, _ = _run(_session(model), feed)
        candidates = np.concatenate(
            [
                last_valid(feed["values"], feed["mask"])[:, None, :],
                smoothed_means(feed["values"], feed["mask"]),
            ],
            axis=1,
        )
        has = feed["mask"].max(axis=1) > 0
        for signal, h, candidate in fixed:
            rows = has[:, signal]
            expected = candidates[rows, candidate, signal]
            if candidate == 0:
                np.testing.assert_array_equal(quantiles[rows, signal, h, 1], expected)
            else:
                np.testing.assert_allclose(quantiles[rows, signal, h, 1], expected, rtol=1e-6, atol=1e-4)


def test_in_graph_recent_means_equal_the_evaluation_smoothers() -> None:
    torch = pytest.importorskip("torch", reason="torch is a dev-time extra (pip install 'icu-edge[train]')")
    from engines.train.modules import RecentMeans

    feeds = _random_inputs(64, seed=12)
    feeds["mask"][:8, :25, :] = 0.0  # short windows: fewer valid values than k
    values = feeds["values"] * feeds["mask"]
    with torch.no_grad():
        graph = RecentMeans()(torch.from_numpy(values), torch.from_numpy(feeds["mask"])).numpy()
    np.testing.assert_allclose(
        graph, smoothed_means(values, feeds["mask"]).transpose(0, 2, 1), rtol=1e-6, atol=1e-4
    )


def test_learned_interval_width_follows_the_window_noise() -> None:
    """p10/p90 = median -/+ the mean |1-min change| over the last 15 min (floored) x the calibrated factor.

    Checked on the shipped graph against hand-built windows: flat (the floor), steps of 3 (noise 3),
    a gap (only consecutive valid minutes count), and random windows against a numpy re-computation.
    """
    model = select_model(MODELS)
    with np.load(model.onnx_path.parent / "state.npz") as state:
        assert float(state["forecaster.normalized_spread"]) == 1.0
        factor = state["forecaster.interval_scale"]
        scale = state["forecaster.scale"]
    feeds = _random_inputs(32, seed=21)
    hr = SIGNAL_KEYS.index("hr")
    feeds["mask"][:3, :, hr] = 1.0
    feeds["values"][0, :, hr] = 80.0
    feeds["values"][1, :, hr] = 80.0 + 3.0 * (np.arange(WINDOW_STEPS) % 2)
    feeds["values"][2, :, hr] = 80.0 + 3.0 * (np.arange(WINDOW_STEPS) % 2)
    feeds["values"][2, -15:-10, hr] = 200.0
    feeds["mask"][2, -15:-10, hr] = 0.0
    feeds["values"] = feeds["values"] * feeds["mask"]
    recent, valid = feeds["values"][:, -15:, :], feeds["mask"][:, -15:, :]
    pairs = valid[:, 1:] * valid[:, :-1]
    change = (np.abs(np.diff(recent, axis=1)) * pairs).sum(axis=1) / np.maximum(pairs.sum(axis=1), 1.0)
    noise = np.maximum(change, 0.05 * scale)
    assert noise[0, hr] == pytest.approx(0.05 * scale[hr])
    assert noise[1, hr] == pytest.approx(3.0)
    assert noise[2, hr] == pytest.approx(3.0)
    quantiles, _ = _run(_session(model), feeds)
    lower = quantiles[..., 1] - quantiles[..., 0]
    upper = quantiles[..., 2] - quantiles[..., 1]
    np.testing.assert_allclose(lower, noise[:, :, None] * factor[None, :, :, 0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(upper, noise[:, :, None] * factor[None, :, :, 1], rtol=1e-4, atol=1e-3)


def test_models_readme_lists_every_model() -> None:
    readme = (SHIPPED_MODELS_DIR / "README.md").read_text(encoding="utf-8")
    assert "python -m engines.train" in readme
    for model in MODELS:
        assert model.card.id in readme


@pytest.mark.timeout(300)
def test_training_pipeline_quick_run_is_reproducible(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="torch is a dev-time extra (pip install 'icu-edge[train]')")
    pytest.importorskip("onnx", reason="the ONNX exporter needs the onnx package")
    from engines.train.__main__ import main

    data = Path(__file__).resolve().parents[1] / "data" / "vitals"
    digests = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert main(["--seed", "3", "--out", str(out), "--data", str(data), "--quick"]) == 0
        found = find_models(out)
        assert {m.card.id for m in found} == {"persistence", "nlinear-q"}
        assert sum(m.card.default for m in found) == 1
        for m in found:
            assert (m.onnx_path.parent / "reference.npz").is_file()
            assert (m.onnx_path.parent / MANIFEST_FILE).is_file(), "the export writes the manifest"
            assert m.card.seed == 3
        digests.append(sorted(m.card.onnx_sha256 for m in found))
    assert digests[0] == digests[1]
