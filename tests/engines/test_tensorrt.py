"""The TensorRT backend: pure logic on any machine; plan build, cache and accuracy on a CUDA device.

The `gpu` tests skip with cuda_status()'s reason where tensorrt, pycuda or a CUDA device is missing.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from engines.backend import BatchInput
from engines.backends import BackendUnavailable, open_backend
from engines.catalog import SHIPPED_MODELS_DIR, InstalledModel, find_models, select_model
from engines.onnx_backend import OnnxRuntimeBackend
from engines.plan_cache import PlanCache, Precision
from engines.spec import MAX_BATCH
from engines.tensorrt_backend import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    DeviceInfo,
    TensorRtBackend,
    TensorRtError,
    build_plan,
    cuda_status,
    device_info,
    plan_key,
    tolerance_for,
    verify_precisions,
)
from engines.testing import build_test_model, compare_outputs, load_reference, synthetic_batch

USABLE, WHY = cuda_status()
requires_cuda = pytest.mark.skipif(not USABLE, reason=f"TensorRT is not usable here: {WHY}")

DEVICE = DeviceInfo(gpu_name="Orin (nvgpu)", compute_capability="8.7", sm_count=16, tensorrt_version="10.3.0")


@pytest.fixture
def model(tmp_path: Path) -> InstalledModel:
    return build_test_model(tmp_path / "models")


@pytest.fixture
def cache(tmp_path: Path) -> PlanCache:
    return PlanCache(tmp_path / "engines")


# --- any machine ---------------------------------------------------------------------------------------


def test_module_imports_without_tensorrt_or_pycuda() -> None:
    assert "engines.tensorrt_backend" in sys.modules
    if not USABLE:
        assert "tensorrt" not in sys.modules or "pycuda.driver" not in sys.modules


def test_cuda_status_says_why() -> None:
    assert WHY
    if USABLE:
        assert WHY.startswith("CUDA device ")
        assert "TensorRT " in WHY
        assert "pycuda " in WHY
    else:
        assert WHY.startswith(("tensorrt not", "pycuda not", "no CUDA device: "))


def test_plan_key_follows_precision_profile_and_model(model: InstalledModel) -> None:
    fp16 = plan_key(model=model, precision="fp16", device=DEVICE, max_batch=MAX_BATCH, opt_batch=8)
    fp32 = plan_key(model=model, precision="fp32", device=DEVICE, max_batch=MAX_BATCH, opt_batch=8)
    opt4 = plan_key(model=model, precision="fp16", device=DEVICE, max_batch=MAX_BATCH, opt_batch=4)
    assert fp16.profile == (1, 8, MAX_BATCH)
    assert fp16.onnx_sha256 == model.card.onnx_sha256
    assert (fp16.model_id, fp16.model_version) == (model.card.id, model.card.version)
    assert "FP16" in fp16.builder_flags
    assert "FP16" not in fp32.builder_flags
    assert len({fp16.digest(), fp32.digest(), opt4.digest()}) == 3


def test_stated_tolerances() -> None:
    assert tolerance_for("fp16") == FP16_TOLERANCE
    assert tolerance_for("fp32") == FP32_TOLERANCE
    assert FP16_TOLERANCE.quantiles_abs == 0.25
    assert FP16_TOLERANCE.probability_abs == 2e-3
    assert FP32_TOLERANCE.quantiles_abs <= FP16_TOLERANCE.quantiles_abs


def test_auto_falls_back_to_onnxruntime_and_says_why(model: InstalledModel, tmp_path: Path) -> None:
    if USABLE:
        pytest.skip("a CUDA device is usable here: auto picks TensorRT (covered by the gpu tests)")
    backend, reason = open_backend(model=model, backend="auto", cache_dir=tmp_path)
    try:
        assert backend.name == "onnxruntime"
        assert reason == f"auto: onnxruntime because {WHY}"
    finally:
        backend.close()


def test_asking_for_tensorrt_without_it_is_unavailable(model: InstalledModel, tmp_path: Path) -> None:
    if USABLE:
        pytest.skip("a CUDA device is usable here")
    with pytest.raises(BackendUnavailable, match=WHY):
        open_backend(model=model, backend="tensorrt", cache_dir=tmp_path)


def test_asking_for_onnxruntime_gets_it(model: InstalledModel, tmp_path: Path) -> None:
    backend, reason = open_backend(model=model, backend="onnxruntime", cache_dir=tmp_path)
    try:
        assert (backend.name, reason) == ("onnxruntime", "asked for onnxruntime")
    finally:
        backend.close()


# --- CUDA device -------------------------------------------------------------------------------------


def _reference_outputs(model: InstalledModel, batch: BatchInput) -> tuple[np.ndarray, np.ndarray]:
    cpu = OnnxRuntimeBackend(model=model)
    try:
        output = cpu.infer(batch)
    finally:
        cpu.close()
    return output.quantiles, output.event_probability


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_plan_for_the_test_model(model: InstalledModel, cache: PlanCache, precision: Precision) -> None:
    plan = build_plan(model=model, precision=precision, cache=cache)
    device = device_info()
    key = plan_key(model=model, precision=precision, device=device, max_batch=MAX_BATCH, opt_batch=8)
    assert len(plan) > 0
    assert cache.lookup(key) == plan
    assert (
        cache.timing_cache_path(
            gpu_name=device.gpu_name,
            compute_capability=device.compute_capability,
            tensorrt_version=device.tensorrt_version,
        )
        .stat()
        .st_size
        > 0
    )


@pytest.mark.gpu
@requires_cuda
def test_build_plan_for_the_shipped_default_model(cache: PlanCache) -> None:
    models = find_models(SHIPPED_MODELS_DIR)
    if not models:
        pytest.skip(f"no shipped models in {SHIPPED_MODELS_DIR}")
    default = select_model(models)
    decision = verify_precisions(model=default, cache=cache)
    assert decision.checks[0].comparison.within
    backend = TensorRtBackend(model=default, precision=decision.chosen, cache=cache)
    try:
        reference = load_reference(default)
        batch = reference[0] if reference is not None else synthetic_batch(beds=MAX_BATCH)
        batch = BatchInput(
            values=batch.values[:MAX_BATCH],
            mask=batch.mask[:MAX_BATCH],
            context=batch.context[:MAX_BATCH],
            context_mask=batch.context_mask[:MAX_BATCH],
        )
        quantiles, probability = _reference_outputs(default, batch)
        output = backend.infer(batch)
    finally:
        backend.close()
    tolerance = tolerance_for(decision.chosen)
    assert np.abs(output.quantiles - quantiles).max() <= tolerance.quantiles_abs
    assert np.abs(output.event_probability - probability).max() <= tolerance.probability_abs


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_outputs_match_onnxruntime_within_the_stated_tolerance(
    model: InstalledModel, cache: PlanCache, precision: Precision
) -> None:
    backend = TensorRtBackend(model=model, precision=precision, cache=cache)
    try:
        for beds, seed in ((1, 1), (8, 2), (MAX_BATCH, 3)):
            batch = synthetic_batch(beds=beds, seed=seed)
            cpu = OnnxRuntimeBackend(model=model)
            try:
                expected = cpu.infer(batch)
            finally:
                cpu.close()
            comparison = compare_outputs(
                actual=backend.infer(batch), expected=expected, tolerance=tolerance_for(precision)
            )
            assert comparison.within, comparison
    finally:
        backend.close()


@pytest.mark.gpu
@requires_cuda
def test_batching_equals_one_call_per_bed(model: InstalledModel, cache: PlanCache) -> None:
    backend = TensorRtBackend(model=model, precision="fp32", cache=cache)
    try:
        batch = synthetic_batch(beds=33, seed=5)
        batched = backend.infer(batch)
        for bed in range(batch.beds):
            single = backend.infer(
                BatchInput(
                    values=batch.values[bed : bed + 1],
                    mask=batch.mask[bed : bed + 1],
                    context=batch.context[bed : bed + 1],
                    context_mask=batch.context_mask[bed : bed + 1],
                )
            )
            np.testing.assert_allclose(
                single.quantiles[0], batched.quantiles[bed], atol=FP32_TOLERANCE.quantiles_abs
            )
            np.testing.assert_allclose(
                single.event_probability[0],
                batched.event_probability[bed],
                atol=FP32_TOLERANCE.probability_abs,
            )
        with pytest.raises(ValueError, match=r"1\.\.64"):
            backend.infer(synthetic_batch(beds=MAX_BATCH + 1))
    finally:
        backend.close()


@pytest.mark.gpu
@requires_cuda
def test_infer_from_other_threads_runs_on_the_backend_thread(model: InstalledModel, cache: PlanCache) -> None:
    backend = TensorRtBackend(model=model, precision="fp32", cache=cache)
    try:
        batch = synthetic_batch(beds=4)
        with ThreadPoolExecutor(max_workers=3) as pool:
            outputs = list(pool.map(lambda _: backend.infer(batch), range(6)))
        for output in outputs[1:]:
            np.testing.assert_array_equal(output.quantiles, outputs[0].quantiles)
    finally:
        backend.close()


@pytest.mark.gpu
@requires_cuda
def test_a_changed_precision_or_profile_builds_a_new_plan(model: InstalledModel, cache: PlanCache) -> None:
    for precision, opt_batch in (("fp32", 8), ("fp16", 8), ("fp32", 4)):
        TensorRtBackend(model=model, precision=precision, cache=cache, opt_batch=opt_batch).close()
    entries = cache.entries()
    assert len(entries) == 3
    assert {(e.key.precision, e.key.profile) for e in entries if e.key is not None} == {
        ("fp32", (1, 8, 64)),
        ("fp16", (1, 8, 64)),
        ("fp32", (1, 4, 64)),
    }
    assert all(e.problem is None for e in entries)


@pytest.mark.gpu
@requires_cuda
def test_a_tampered_sidecar_is_rebuilt_not_loaded(
    model: InstalledModel, cache: PlanCache, caplog: pytest.LogCaptureFixture
) -> None:
    TensorRtBackend(model=model, precision="fp32", cache=cache).close()
    key = plan_key(model=model, precision="fp32", device=device_info(), max_batch=MAX_BATCH, opt_batch=8)
    sidecar_path = cache.path_for(key).with_suffix(".json")
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["key"]["gpu_name"] = "some other GPU"
    sidecar_path.write_text(json.dumps(sidecar))
    with caplog.at_level(logging.INFO):
        backend = TensorRtBackend(model=model, precision="fp32", cache=cache)
    backend.close()
    assert "built for another configuration" in caplog.text
    assert "building" in caplog.text
    assert cache.lookup(key) is not None


@pytest.mark.gpu
@requires_cuda
def test_a_cached_plan_that_does_not_deserialize_is_removed_and_rebuilt_once(
    model: InstalledModel, cache: PlanCache, caplog: pytest.LogCaptureFixture
) -> None:
    key = plan_key(model=model, precision="fp32", device=device_info(), max_batch=MAX_BATCH, opt_batch=8)
    cache.store(key, b"this is not a TensorRT plan")  # whole by its sidecar, garbage to TensorRT
    with caplog.at_level(logging.WARNING):
        backend = TensorRtBackend(model=model, precision="fp32", cache=cache)
    try:
        assert "does not deserialize" in caplog.text
        assert backend.infer(synthetic_batch(beds=2)).quantiles.shape[0] == 2
    finally:
        backend.close()
    assert cache.lookup(key) != b"this is not a TensorRT plan"


@pytest.mark.gpu
@requires_cuda
def test_verify_precisions_records_the_errors(model: InstalledModel, cache: PlanCache) -> None:
    decision = verify_precisions(model=model, cache=cache)
    assert [c.precision for c in decision.checks] == ["fp32", "fp16"]
    assert decision.reference == "onnxruntime"
    assert decision.checks[0].comparison.within
    assert decision.chosen == ("fp16" if decision.checks[1].comparison.within else "fp32")


@pytest.mark.gpu
@requires_cuda
def test_auto_picks_tensorrt_and_says_why(model: InstalledModel, tmp_path: Path) -> None:
    backend, reason = open_backend(model=model, backend="auto", cache_dir=tmp_path)
    try:
        assert backend.name == "tensorrt"
        assert reason.startswith("auto: tensorrt because CUDA device ")
    finally:
        backend.close()


# --- a broken GPU stack (tests/fake_gpu_stack) ----------------------------------------------------------

CUDA_MISMATCH = "RuntimeError: CUDA initialization failure with error: 35"


def test_a_tensorrt_import_that_raises_runtime_error_is_a_reason(
    fake_gpu_stack: Callable[[str], None], model: InstalledModel, tmp_path: Path
) -> None:
    fake_gpu_stack("import-error")
    usable, why = cuda_status()
    assert not usable
    assert why.startswith(f"tensorrt not loadable: {CUDA_MISMATCH}")
    backend, reason = open_backend(model=model, backend="auto", cache_dir=tmp_path)
    try:
        assert backend.name == "onnxruntime"
        assert reason == f"auto: onnxruntime because {why}"
    finally:
        backend.close()
    with pytest.raises(BackendUnavailable, match=CUDA_MISMATCH):
        open_backend(model=model, backend="tensorrt", cache_dir=tmp_path)
    backend, reason = open_backend(model=model, backend="tensorrt", cache_dir=tmp_path, fall_back=True)
    backend.close()
    assert backend.name == "onnxruntime"
    assert reason.startswith("tensorrt asked for but unavailable, onnxruntime instead: tensorrt not loadable")


def test_a_failing_build_falls_back_to_onnxruntime(
    fake_gpu_stack: Callable[[str], None], model: InstalledModel, tmp_path: Path
) -> None:
    fake_gpu_stack("build-fails")
    assert cuda_status()[0], "the fake GPU initializes: only the build fails"
    backend, reason = open_backend(model=model, backend="auto", cache_dir=tmp_path)
    backend.close()
    assert backend.name == "onnxruntime"
    assert reason.startswith(
        "auto: onnxruntime because TensorRT failed for test-model@1.0.0: TensorRtError: "
    )
    assert reason.endswith("TensorRT build failed: fake: out of device memory while building (tests)")
    with pytest.raises(BackendUnavailable, match="TensorRT build failed"):
        open_backend(model=model, backend="tensorrt", cache_dir=tmp_path)
    [failure] = PlanCache(tmp_path).failures()
    assert (failure.model_ref, failure.onnx_sha256) == (model.ref, model.card.onnx_sha256)
    assert failure.reason == reason.removeprefix("auto: onnxruntime because ")
    fake_gpu_stack("works")
    backend, reason = open_backend(model=model, backend="auto", cache_dir=tmp_path)
    backend.close()
    assert backend.name == "tensorrt"
    assert PlanCache(tmp_path).failures() == [], "a TensorRT load clears the record"


def test_a_hanging_build_is_abandoned_and_no_second_one_starts(
    fake_gpu_stack: Callable[[str], None], model: InstalledModel, tmp_path: Path
) -> None:
    fake_gpu_stack("build-hangs")
    backend, reason = open_backend(model=model, backend="auto", cache_dir=tmp_path, tensorrt_timeout_s=1)
    backend.close()
    assert backend.name == "onnxruntime"
    assert reason == (
        "auto: onnxruntime because TensorRT load of test-model@1.0.0 did not finish within 1 s; abandoned"
    )
    backend, reason = open_backend(model=model, backend="auto", cache_dir=tmp_path, tensorrt_timeout_s=1)
    backend.close()
    assert "an earlier TensorRT load has not finished" in reason


def test_a_tampered_cached_plan_is_never_deserialized(
    fake_gpu_stack: Callable[[str], None],
    model: InstalledModel,
    cache: PlanCache,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake_gpu_stack("build-fails")
    import tensorrt  # the fake

    key = plan_key(model=model, precision="fp32", device=device_info(), max_batch=MAX_BATCH, opt_batch=8)
    plan_path = cache.store(key, b"a plan as built")
    plan_path.write_bytes(b"a plan swapped!")  # same size: only the hash tells
    with caplog.at_level(logging.WARNING), pytest.raises(TensorRtError, match="TensorRT build failed"):
        TensorRtBackend(model=model, precision="fp32", cache=cache)
    assert f"not loading cached plan {plan_path.name}: plan SHA-256 does not match its sidecar" in caplog.text
    assert tensorrt.deserialized == [], "refused and rebuilt, never handed to TensorRT"


def _synthetic_input(beds: int) -> BatchInput:
    return synthetic_batch(beds=beds, seed=3)


def test_every_failure_carries_tensorrts_reason_through_the_one_process_logger(
    fake_gpu_stack: Callable[[str], None], model: InstalledModel, cache: PlanCache
) -> None:
    """TensorRT keeps the first logger of the process: a logger per build would record nothing."""
    fake_gpu_stack("build-fails")
    for attempt in range(3):
        with pytest.raises(TensorRtError) as failure:
            TensorRtBackend(model=model, precision="fp32", cache=cache)
        assert str(failure.value).endswith(
            "TensorRT build failed: fake: out of device memory while building (tests)"
        ), f"attempt {attempt + 1}: {failure.value}"
        del failure
        gc.collect()


def test_verbose_and_info_messages_are_filtered_before_they_reach_python(
    fake_gpu_stack: Callable[[str], None], model: InstalledModel, cache: PlanCache
) -> None:
    fake_gpu_stack("works")
    import tensorrt  # the fake

    backend = TensorRtBackend(model=model, precision="fp32", cache=cache)
    backend.close()
    severities = {severity for severity, _ in tensorrt.delivered}
    assert severities <= {
        tensorrt.ILogger.INTERNAL_ERROR,
        tensorrt.ILogger.ERROR,
        tensorrt.ILogger.WARNING,
    }, tensorrt.delivered[:3]


def test_every_page_locked_buffer_is_freed_while_its_context_is_current(
    fake_gpu_stack: Callable[[str], None], model: InstalledModel, cache: PlanCache
) -> None:
    fake_gpu_stack("works")
    import pycuda.driver as fake_cuda

    backend = TensorRtBackend(model=model, precision="fp32", cache=cache)
    backend.infer(_synthetic_input(4))
    backend.close()
    fake_cuda.fail_next_stream = True  # the next load fails after its buffers were allocated
    with pytest.raises(fake_cuda.Error, match="cuStreamCreate failed"):
        TensorRtBackend(model=model, precision="fp32", cache=cache)
    gc.collect()
    assert fake_cuda.host_allocations, "the backend allocated page-locked buffers"
    assert all(allocation.freed for allocation in fake_cuda.host_allocations)
    assert fake_cuda.freed_without_context == []


def test_a_refused_tensor_address_is_an_error_not_a_run_on_old_addresses(
    fake_gpu_stack: Callable[[str], None], model: InstalledModel, cache: PlanCache
) -> None:
    fake_gpu_stack("works")
    import tensorrt  # the fake

    backend = TensorRtBackend(model=model, precision="fp32", cache=cache)
    try:
        backend.infer(_synthetic_input(2))
        tensorrt.refuse_tensor_address = True
        with pytest.raises(TensorRtError, match=r"set_tensor_address\(.*\) refused: fake: address of tensor"):
            backend.infer(_synthetic_input(2))
    finally:
        backend.close()
