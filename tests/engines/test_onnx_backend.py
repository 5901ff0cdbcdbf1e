"""The onnxruntime backend on a tiny spec-conformant test model (engines.testing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from engines.backend import BatchInput
from engines.catalog import InstalledModel, ModelError, load_model, sha256_file, write_manifest
from engines.onnx_backend import OnnxRuntimeBackend, zero_batch
from engines.spec import EVENTS, HORIZONS_MIN, MAX_BATCH, QUANTILES, SIGNALS
from engines.testing import build_test_model, closed_form_outputs, synthetic_batch


@pytest.fixture
def model(tmp_path: Path) -> InstalledModel:
    return build_test_model(tmp_path / "models")


@pytest.fixture
def backend(model: InstalledModel) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(model=model)


def _rows(batch: BatchInput, start: int, stop: int) -> BatchInput:
    return BatchInput(
        values=batch.values[start:stop],
        mask=batch.mask[start:stop],
        context=batch.context[start:stop],
        context_mask=batch.context_mask[start:stop],
    )


def _replace_onnx(model: InstalledModel, proto: onnx.ModelProto) -> InstalledModel:
    """Overwrite the model's ONNX and re-sign its card, so only the graph is wrong."""
    model.onnx_path.write_bytes(proto.SerializeToString())
    card = model.card.model_copy(
        update={"onnx_sha256": sha256_file(model.onnx_path), "size_bytes": model.onnx_path.stat().st_size}
    )
    (model.onnx_path.parent / "card.json").write_text(card.model_dump_json())
    write_manifest(model.onnx_path.parent)
    return load_model(model.onnx_path.parent)


def test_identity(backend: OnnxRuntimeBackend) -> None:
    assert (backend.name, backend.precision, backend.intra_op_threads) == ("onnxruntime", "fp32", 1)


def test_outputs_match_the_closed_form_and_are_finite(backend: OnnxRuntimeBackend) -> None:
    batch = synthetic_batch(beds=MAX_BATCH, seed=3)
    output = backend.infer(batch)
    expected = closed_form_outputs(batch)
    assert output.quantiles.shape == (MAX_BATCH, len(SIGNALS), len(HORIZONS_MIN), len(QUANTILES))
    assert output.event_probability.shape == (MAX_BATCH, len(EVENTS), len(HORIZONS_MIN))
    assert output.quantiles.dtype == np.float32
    assert np.isfinite(output.quantiles).all()
    assert np.isfinite(output.event_probability).all()
    assert ((output.event_probability >= 0) & (output.event_probability <= 1)).all()
    np.testing.assert_allclose(output.quantiles, expected.quantiles, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(output.event_probability, expected.event_probability, atol=1e-6)


def test_an_all_missing_window_gives_finite_outputs(backend: OnnxRuntimeBackend) -> None:
    output = backend.infer(zero_batch(beds=3))
    assert np.isfinite(output.quantiles).all()
    assert np.isfinite(output.event_probability).all()


@pytest.mark.parametrize("beds", [1, 2, 7, 8, 33, MAX_BATCH])
def test_batching_equals_one_call_per_bed(backend: OnnxRuntimeBackend, beds: int) -> None:
    batch = synthetic_batch(beds=beds, seed=beds)
    batched = backend.infer(batch)
    for bed in range(beds):
        single = backend.infer(_rows(batch, bed, bed + 1))
        np.testing.assert_array_equal(single.quantiles[0], batched.quantiles[bed])
        np.testing.assert_array_equal(single.event_probability[0], batched.event_probability[bed])


def test_repeated_calls_are_bit_identical(backend: OnnxRuntimeBackend) -> None:
    batch = synthetic_batch(beds=16, seed=9)
    first, second = backend.infer(batch), backend.infer(batch)
    np.testing.assert_array_equal(first.quantiles, second.quantiles)
    np.testing.assert_array_equal(first.event_probability, second.event_probability)


@pytest.mark.parametrize("beds", [0, MAX_BATCH + 1])
def test_batch_size_outside_1_to_max_is_refused(backend: OnnxRuntimeBackend, beds: int) -> None:
    with pytest.raises(ValueError, match=r"1\.\.64"):
        backend.infer(zero_batch(beds=beds))


def test_wrong_dtype_is_refused(backend: OnnxRuntimeBackend) -> None:
    batch = zero_batch(beds=2)
    bad = BatchInput(
        values=batch.values.astype(np.float64),  # type: ignore[arg-type]
        mask=batch.mask,
        context=batch.context,
        context_mask=batch.context_mask,
    )
    with pytest.raises(TypeError, match="values must be a float32"):
        backend.infer(bad)


def test_wrong_trailing_dims_are_refused(backend: OnnxRuntimeBackend) -> None:
    batch = zero_batch(beds=2)
    bad = BatchInput(
        values=batch.values,
        mask=batch.mask,
        context=np.zeros((2, 29, 2), dtype=np.float32),
        context_mask=batch.context_mask,
    )
    with pytest.raises(ValueError, match=r"context has shape \(2, 29, 2\), expected \(2, 30, 2\)"):
        backend.infer(bad)


def test_inputs_with_different_bed_counts_are_refused(backend: OnnxRuntimeBackend) -> None:
    two, three = zero_batch(beds=2), zero_batch(beds=3)
    bad = BatchInput(values=two.values, mask=three.mask, context=two.context, context_mask=two.context_mask)
    with pytest.raises(ValueError, match="mask has shape"):
        backend.infer(bad)


def test_a_model_with_other_io_names_is_rejected(model: InstalledModel) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["vals"], ["out"])],
        "wrong",
        [helper.make_tensor_value_info("vals", TensorProto.FLOAT, ["beds", 30, 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["beds", 30, 5])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    wrong = _replace_onnx(model, proto)
    with pytest.raises(ModelError, match=r"not conformant to engines\.spec: inputs are \['vals'\]"):
        OnnxRuntimeBackend(model=wrong)


def test_a_model_with_a_fixed_batch_dimension_is_rejected(model: InstalledModel) -> None:
    proto = onnx.load(str(model.onnx_path))
    for value in proto.graph.input:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    wrong = _replace_onnx(model, proto)
    with pytest.raises(ModelError, match="values has a fixed batch dimension 1; it must be dynamic"):
        OnnxRuntimeBackend(model=wrong)


def test_a_model_with_wrong_window_length_is_rejected(model: InstalledModel) -> None:
    proto = onnx.load(str(model.onnx_path))
    for value in proto.graph.input:
        value.type.tensor_type.shape.dim[1].dim_value = 60
    proto.graph.node[0].attribute[0].t.CopyFrom(
        onnx.numpy_helper.from_array(np.arange(1, 61, dtype=np.float32).reshape(1, 60, 1), "steps")
    )
    wrong = _replace_onnx(model, proto)
    with pytest.raises(ModelError, match="dimension 1 is 60, expected 30"):
        OnnxRuntimeBackend(model=wrong)


def test_an_unloadable_graph_is_a_model_error(model: InstalledModel) -> None:
    model.onnx_path.write_bytes(b"not an onnx graph")
    card = model.card.model_copy(update={"onnx_sha256": sha256_file(model.onnx_path)})
    (model.onnx_path.parent / "card.json").write_text(card.model_dump_json())
    write_manifest(model.onnx_path.parent)
    with pytest.raises(ModelError, match="onnxruntime cannot load"):
        OnnxRuntimeBackend(model=load_model(model.onnx_path.parent))
