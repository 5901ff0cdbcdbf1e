"""The trend event head (engines.train.events): what it reads, its shapes, export, scenario grids, gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from drivers.scenario import DesaturationPatient  # noqa: E402
from engines.spec import CONTEXT, EVENTS, HORIZONS_MIN, SIGNAL_KEYS, SIGNALS, WINDOW_STEPS  # noqa: E402
from engines.testing import synthetic_batch  # noqa: E402
from engines.train.events import (  # noqa: E402
    POOLED,
    EventHead,
    WithEvents,
    gate_events,
    scenario_grid,
    scenario_grids,
)
from engines.train.modules import PersistenceBaseline  # noqa: E402

SPO2 = SIGNAL_KEYS.index("spo2")
MAP = SIGNAL_KEYS.index("map")
SPO2_EVENT = [e.key for e in EVENTS].index("spo2_below_90")


def _head(seed: int = 0) -> EventHead:
    torch.manual_seed(seed)
    return EventHead().eval()


def _flat(value: float = 95.0, beds: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.zeros(beds, WINDOW_STEPS, len(SIGNALS))
    mask = torch.ones_like(values)
    values[:, :, :] = torch.tensor([80.0, value, 80.0, 16.0, 38.0])
    return values, mask


def test_probabilities_have_the_spec_shape_and_never_fall_with_the_horizon() -> None:
    batch = synthetic_batch(beds=32, seed=4)
    with torch.no_grad():
        probability = _head()(torch.from_numpy(batch.values), torch.from_numpy(batch.mask))
    assert probability.shape == (32, len(EVENTS), len(HORIZONS_MIN))
    assert bool(((probability >= 0) & (probability <= 1)).all())
    assert bool((probability[:, :, 1:] >= probability[:, :, :-1] - 1e-6).all())


def test_masked_values_and_other_signals_do_not_move_the_spo2_probability() -> None:
    head = _head()
    values, mask = _flat(93.0)
    values[0, -5:, SPO2] = torch.tensor([95.0, 94.0, 94.0, 93.0, 93.0])
    with torch.no_grad():
        reference = head(values, mask)[0, SPO2_EVENT]
        other = values.clone()
        other[0, -3:, SIGNAL_KEYS.index("hr")] = 140.0  # the heart rate jumps
        other[0, -3:, MAP] = 60.0
        masked = values.clone()
        mask_with_gap = mask.clone()
        mask_with_gap[0, 10, SPO2] = 0.0
        masked[0, 10, SPO2] = 50.0
        gap_reference = head(values, mask_with_gap)[0, SPO2_EVENT]
        torch.testing.assert_close(head(other, mask)[0, SPO2_EVENT], reference)
        torch.testing.assert_close(head(masked, mask_with_gap)[0, SPO2_EVENT], gap_reference)


def test_a_bed_without_the_signal_gets_the_training_prior() -> None:
    head = _head()
    head.prior.copy_(torch.full((len(EVENTS), len(HORIZONS_MIN)), 0.03))
    values, mask = _flat()
    mask[:, :, SPO2] = 0.0
    with torch.no_grad():
        probability = head(values, mask)
    torch.testing.assert_close(probability[0, SPO2_EVENT], torch.full((len(HORIZONS_MIN),), 0.03))


def test_one_artefact_minute_does_not_make_a_trend() -> None:
    head = _head()
    values, mask = _flat(96.0)
    spiked = values.clone()
    spiked[0, -4, SPO2] = 88.0  # plausible, wild, one minute
    falling = values.clone()
    falling[0, -8:, SPO2] = torch.arange(8, dtype=torch.float32) * -0.5 + 96.0
    with torch.no_grad():
        slope = {
            name: float(head.features(v, mask)[0][0, SPO2_EVENT, 2])
            for name, v in (("flat", values), ("spiked", spiked), ("falling", falling))
        }
    assert slope["flat"] == pytest.approx(0.0, abs=1e-5)
    assert abs(slope["spiked"]) < 0.25 * abs(slope["falling"]), slope


def test_with_events_exports_the_forecaster_quantiles_and_the_head_probabilities(tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    from engines.train.pipeline import export_onnx

    head = _head(1)
    model = WithEvents(PersistenceBaseline().eval(), head, estimated={"spo2_below_90"}).eval()
    export_onnx(model, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["values", "mask", "context", "context_mask"]
    batch = synthetic_batch(beds=8, seed=2)
    feeds = {
        "values": batch.values,
        "mask": batch.mask,
        "context": batch.context,
        "context_mask": batch.context_mask,
    }
    quantiles, probability = session.run(["quantiles", "event_probability"], feeds)
    with torch.no_grad():
        expected_q, _ = PersistenceBaseline()(*(torch.from_numpy(feeds[k]) for k in feeds))
        expected_p = head(torch.from_numpy(batch.values), torch.from_numpy(batch.mask))
    np.testing.assert_allclose(quantiles, expected_q.numpy(), atol=1e-5)
    np.testing.assert_allclose(probability, expected_p.numpy(), atol=1e-5)
    assert model.estimated == ["spo2_below_90"]
    assert batch.context.shape[2] == len(CONTEXT)


def test_with_events_refuses_an_unknown_event() -> None:
    with pytest.raises(ValueError, match="unknown event"):
        WithEvents(PersistenceBaseline(), _head(), estimated={"hr_above_130"})


def test_scenario_grids_follow_the_scenario_engine_at_minute_scale() -> None:
    patient = DesaturationPatient(stable_s=600.0, fall_s=300.0, hold_s=300.0, nadir=84.0)
    grid = scenario_grid(patient, minutes=30, patient_id="x", noise_seed=None)
    expected = [patient.vitals_at(60.0 * t + 30.0)["spo2"] for t in range(30)]
    np.testing.assert_array_equal(grid.values[:, SPO2], np.array(expected, dtype=np.float32))
    assert grid.mask[:, MAP].all(), "abp_mean feeds map"
    grids = scenario_grids(seed=5, count=6, minutes=60)
    again = scenario_grids(seed=5, count=6, minutes=60)
    assert [g.patient_id.rsplit("-", 1)[1] for g in grids] == ["desaturation", "deteriorating", "steady"] * 2
    for a, b in zip(grids, again, strict=True):
        np.testing.assert_array_equal(a.values, b.values)
    assert np.ptp(grids[2].values[:, SPO2]) == 0, "the first round plays the steady patient as is"
    assert np.ptp(grids[5].values[:, SPO2]) > 0, "the next round adds measurement noise"
    assert not np.array_equal(grids[5].values, scenario_grids(seed=6, count=6, minutes=60)[5].values)


def test_the_gate_reports_the_pooled_decision_then_each_source() -> None:
    sources = {
        "a": scenario_grids(seed=1, count=3, minutes=120),
        "b": scenario_grids(seed=2, count=3, minutes=120),
    }
    gate = gate_events(_head(), sources, alarm_threshold=0.7)
    assert [(f.event, f.source) for f in gate.figures] == [
        (e.key, source) for e in EVENTS for source in (POOLED, "a", "b")
    ]
    assert set(gate.estimated) <= {e.key for e in EVENTS}
    for figures in gate.figures:
        assert figures.comparison.model_at_alarm_threshold.threshold == 0.7
        assert figures.line().startswith(f"{figures.event} on {figures.source}")
