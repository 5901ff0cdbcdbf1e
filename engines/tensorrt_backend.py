"""The TensorRT backend (tensorrt + pycuda): the ONNX compiled into a cached plan, run on the GPU.

Written against the TensorRT 10.3 Python API that JetPack 6.2 ships: explicit batch is the only mode
(`create_network(0)`), I/O is by tensor name (`num_io_tensors`, `get_tensor_name`, `get_tensor_mode`),
and execution is `set_input_shape` + `set_tensor_address` for every tensor + `execute_async_v3`.

Plans: one optimization profile for batch 1..MAX_BATCH (opt 8), a timing cache per GPU model and
TensorRT version, and the plan cache of engines.plan_cache keyed by everything the plan depends on.
A null build or deserialization is an error carrying the messages TensorRT logged.

Logging: TensorRT keeps the first logger any Builder or Runtime is given for the whole process and
holds a pointer to it. So there is one `_ProcessLogger`, created once and never freed (a second logger
would record nothing, and freeing the first on a reload would leave TensorRT pointing at freed memory).
Its `min_severity` filters in TensorRT's C++ before a message costs a Python call (WARNING, or VERBOSE
when this module logs at DEBUG). An operation takes `mark()` before it starts and reads the reasons
logged since then.

Threads: a CUDA context is current on one thread at a time, and pycuda allocations, copies and the
stream belong to the context that was current when they were made. The backend therefore owns one
dedicated inference thread that retains and pushes the device's primary context (the one the CUDA
runtime, and so TensorRT, uses), builds or loads the plan, allocates every buffer, and serves `infer`
calls through a queue; callers (the runtime's executor, the CLI) block on the answer. `close` tears it
all down on that same thread, and frees every buffer explicitly (device and page-locked host memory)
while the context is still current: a buffer left to the garbage collector would be freed after the
context was popped, with no context or the wrong one current.

FP16: `verify_precisions` builds FP32 and FP16 plans, runs the model's reference windows through both
and through onnxruntime, and keeps FP16 only when its max abs error stays within FP16_TOLERANCE.
tensorrt and pycuda are imported inside functions: this module imports fine without them.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from engines.backend import BatchInput, BatchOutput
from engines.catalog import InstalledModel, ModelError
from engines.onnx_backend import TRAILING_DIMS, OnnxRuntimeBackend, batch_arrays, check_output_shapes
from engines.plan_cache import PlanCache, PlanKey, Precision, write_atomic
from engines.spec import INPUT_NAMES, MAX_BATCH, OUTPUT_EVENTS, OUTPUT_NAMES, OUTPUT_QUANTILES
from engines.testing import Comparison, Tolerance, check_inputs, compare_outputs

LOGGER = logging.getLogger(__name__)

OPT_BATCH = 8
"""Batch size the profile is tuned for: a typical ward section."""
WORKSPACE_BYTES = 256 << 20
"""Builder workspace pool limit: ample for our small models, modest on a shared-memory Jetson."""

FP32_TOLERANCE = Tolerance(quantiles_abs=0.01, probability_abs=1e-4)
"""TensorRT FP32 (TF32 disabled) vs onnxruntime: only kernel and summation-order differences."""
FP16_TOLERANCE = Tolerance(quantiles_abs=0.25, probability_abs=2e-3)
"""TensorRT FP16 vs onnxruntime: a quarter of the display resolution (1 unit for every signal; FP16
spacing is 0.125 between 128 and 256, so a tighter bound would reject FP16 for heart rates alone),
and 0.2 percentage points of event probability."""

_BUILDER_FLAGS: dict[Precision, tuple[str, ...]] = {"fp32": ("no-TF32",), "fp16": ("FP16", "no-TF32")}
"""What the builder sets beyond its defaults (part of the plan key). TF32 is cleared in both: FP32
means FP32, and layers FP16 leaves in FP32 stay exact."""


class TensorRtError(RuntimeError):
    """TensorRT failed to parse, build, load or run a plan (the message says why)."""


def tolerance_for(precision: Precision) -> Tolerance:
    """Return the stated tolerance of a TensorRT plan of this precision against onnxruntime."""
    return FP16_TOLERANCE if precision == "fp16" else FP32_TOLERANCE


def cuda_status() -> tuple[bool, str]:
    """Return whether TensorRT can run here and why (or why not); never raise.

    A broken GPU stack fails in many ways besides ImportError: a CUDA driver/runtime mismatch makes
    `import tensorrt` raise RuntimeError, a missing library OSError, pycuda its own errors. Every one
    becomes the reason, so the caller falls back to onnxruntime instead of stopping.
    """
    try:
        import tensorrt as trt
    except ImportError:
        return False, "tensorrt not installed"
    except Exception as exc:  # noqa: BLE001 - the wheel is there but cannot load: that is the answer
        return False, f"tensorrt not loadable: {describe(exc)}"
    try:
        import pycuda
        import pycuda.driver as cuda
    except ImportError:
        return False, "pycuda not installed"
    except Exception as exc:  # noqa: BLE001 - as above
        return False, f"pycuda not loadable: {describe(exc)}"
    try:
        cuda.init()
        count = cuda.Device.count()
        if count < 1:
            return False, "no CUDA device: the driver reports none"
        device = device_info()
        versions = f"TensorRT {trt.__version__}, pycuda {pycuda.VERSION_TEXT}"
    except Exception as exc:  # noqa: BLE001 - a driver that cannot initialize is a reason, not a crash
        return False, f"no CUDA device: {describe(exc)}"
    return True, (
        f"CUDA device {device.gpu_name} (compute {device.compute_capability}, {device.sm_count} SMs), "
        f"{versions}"
    )


def describe(exc: BaseException) -> str:
    """Return `Type: message` on one line (driver messages can span lines)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceInfo:
    """The GPU and TensorRT a plan is built for."""

    gpu_name: str
    compute_capability: str
    sm_count: int
    tensorrt_version: str


def device_info() -> DeviceInfo:
    """Return device 0's name, compute capability and SM count, and the TensorRT version."""
    import pycuda.driver as cuda
    import tensorrt as trt

    cuda.init()
    device = cuda.Device(0)
    major, minor = device.compute_capability()
    return DeviceInfo(
        gpu_name=str(device.name()),
        compute_capability=f"{major}.{minor}",
        sm_count=int(device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)),
        tensorrt_version=str(trt.__version__),
    )


def plan_key(
    *, model: InstalledModel, precision: Precision, device: DeviceInfo, max_batch: int, opt_batch: int
) -> PlanKey:
    """Return the cache key of the plan for model on device."""
    return PlanKey(
        model_id=model.card.id,
        model_version=model.card.version,
        onnx_sha256=model.card.onnx_sha256,
        gpu_name=device.gpu_name,
        compute_capability=device.compute_capability,
        sm_count=device.sm_count,
        tensorrt_version=device.tensorrt_version,
        precision=precision,
        profile=(1, opt_batch, max_batch),
        builder_flags=_BUILDER_FLAGS[precision],
    )


_LOGGED_KEPT = 64
"""Warnings and errors the process logger keeps for error messages."""

_process_logger: Any = None
_process_logger_module: Any = None
_process_logger_lock = threading.Lock()


def process_logger() -> Any:
    """Return the process's one TensorRT logger (created on first use, never freed); see the module doc."""
    global _process_logger, _process_logger_module
    import tensorrt as trt

    with _process_logger_lock:
        if _process_logger is not None and _process_logger_module is trt:
            return _process_logger

        class _ProcessLogger(trt.ILogger):  # type: ignore[misc]
            """Forwards to LOGGER; keeps the last warnings and errors, numbered, for error messages."""

            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.min_severity = (
                    trt.ILogger.VERBOSE if LOGGER.isEnabledFor(logging.DEBUG) else trt.ILogger.WARNING
                )
                self._kept: deque[tuple[int, str]] = deque(maxlen=_LOGGED_KEPT)
                self._numbers = itertools.count(1)
                self._lock = threading.Lock()  # TensorRT logs from its own threads too

            def log(self, severity: Any, msg: str) -> None:
                if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                    level = logging.ERROR
                elif severity == trt.ILogger.WARNING:
                    level = logging.WARNING
                elif severity == trt.ILogger.INFO:
                    level = logging.INFO
                else:
                    level = logging.DEBUG
                LOGGER.log(level, "TensorRT: %s", msg)
                if level >= logging.WARNING:
                    with self._lock:
                        self._kept.append((next(self._numbers), msg))

            def mark(self) -> int:
                """A position: `reason(since=mark)` gives what was logged after it."""
                with self._lock:
                    return self._kept[-1][0] if self._kept else 0

            def reason(self, *, since: int) -> str:
                with self._lock:
                    recent = [msg for number, msg in self._kept if number > since]
                return " | ".join(recent[-5:]) or "TensorRT logged no reason"

        # Module references keep it alive for the life of the process, as TensorRT needs.
        _process_logger, _process_logger_module = _ProcessLogger(), trt
        return _process_logger


def build_plan(
    *,
    model: InstalledModel,
    precision: Precision,
    cache: PlanCache,
    max_batch: int = MAX_BATCH,
    opt_batch: int = OPT_BATCH,
) -> bytes:
    """Build the plan for model at precision on device 0, store it in the cache, and return its bytes.

    Needs a current CUDA context only through the CUDA runtime (TensorRT binds the primary context).
    """
    import tensorrt as trt

    device = device_info()
    key = plan_key(model=model, precision=precision, device=device, max_batch=max_batch, opt_batch=opt_batch)
    logger = process_logger()
    since = logger.mark()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch always; EXPLICIT_BATCH is ignored
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.read_onnx()):
        errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        raise TensorRtError(
            f"{model.ref}: ONNX parser failed: " + " | ".join(errors or [logger.reason(since=since)])
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)

    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        trailing = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (1, *trailing), (opt_batch, *trailing), (max_batch, *trailing))
    config.add_optimization_profile(profile)

    timing_path = cache.timing_cache_path(
        gpu_name=device.gpu_name,
        compute_capability=device.compute_capability,
        tensorrt_version=device.tensorrt_version,
    )
    timing_bytes = timing_path.read_bytes() if timing_path.is_file() else b""
    timing_cache = config.create_timing_cache(timing_bytes)
    if not config.set_timing_cache(timing_cache, ignore_mismatch=False):
        LOGGER.warning("timing cache %s rejected; building without it", timing_path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    LOGGER.info(
        "building %s %s plan for %s (profile 1/%d/%d)",
        model.ref,
        precision,
        device.gpu_name,
        opt_batch,
        max_batch,
    )
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRtError(f"{model.ref}: TensorRT build failed: {logger.reason(since=since)}")
    plan = bytes(serialized)
    cache.store(key, plan)
    write_atomic(timing_path, bytes(config.get_timing_cache().serialize()))
    return plan


@dataclass(slots=True)
class _Tensor:
    name: str
    is_input: bool
    host: Any
    """pycuda page-locked ndarray [max_batch, ...]; `host.base` is its HostAllocation."""
    device: Any
    """pycuda DeviceAllocation of the same size (None until allocated)."""
    row_bytes: int


class _Engine:
    """The CUDA-side state; every method runs on the backend's inference thread only."""

    def __init__(
        self, *, model: InstalledModel, precision: Precision, cache: PlanCache, max_batch: int, opt_batch: int
    ) -> None:
        import pycuda.driver as cuda

        self._cuda = cuda
        self._tensors: dict[str, _Tensor] = {}
        cuda.init()
        self._context = cuda.Device(0).retain_primary_context()
        self._context.push()
        try:
            self._load(
                model=model, precision=precision, cache=cache, max_batch=max_batch, opt_batch=opt_batch
            )
        except BaseException:
            self._release()
            raise

    def _load(
        self, *, model: InstalledModel, precision: Precision, cache: PlanCache, max_batch: int, opt_batch: int
    ) -> None:
        import tensorrt as trt

        cuda = self._cuda
        self.max_batch = max_batch
        key = plan_key(
            model=model, precision=precision, device=device_info(), max_batch=max_batch, opt_batch=opt_batch
        )
        self._logger = process_logger()
        since = self._logger.mark()
        self._runtime = trt.Runtime(self._logger)
        plan = cache.lookup(key)
        fresh = plan is None
        if plan is None:
            plan = build_plan(
                model=model, precision=precision, cache=cache, max_batch=max_batch, opt_batch=opt_batch
            )
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None and not fresh:
            LOGGER.error(
                "%s: cached plan does not deserialize (%s); rebuilding once",
                model.ref,
                self._logger.reason(since=since),
            )
            cache.remove(key)
            since = self._logger.mark()
            plan = build_plan(
                model=model, precision=precision, cache=cache, max_batch=max_batch, opt_batch=opt_batch
            )
            self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise TensorRtError(
                f"{model.ref}: a freshly built plan does not deserialize: {self._logger.reason(since=since)}"
            )
        self._execution = self._engine.create_execution_context()
        if self._execution is None:
            raise TensorRtError(
                f"{model.ref}: cannot create an execution context: {self._logger.reason(since=since)}"
            )

        names = [self._engine.get_tensor_name(index) for index in range(self._engine.num_io_tensors)]
        if set(names) != {*INPUT_NAMES, *OUTPUT_NAMES}:
            raise ModelError(f"{model.ref}: plan tensors {sorted(names)} differ from engines.spec")
        self._tensors = {}
        for name in names:
            is_input = self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
            trailing = tuple(self._engine.get_tensor_shape(name))[1:]
            if trailing != TRAILING_DIMS[name]:
                raise ModelError(
                    f"{model.ref}: plan tensor {name} has trailing dims {trailing}, "
                    f"expected {TRAILING_DIMS[name]}"
                )
            tensor = self._tensors[name] = _Tensor(
                name=name,
                is_input=is_input,
                host=cuda.pagelocked_empty((max_batch, *trailing), dtype),
                device=None,
                row_bytes=0,
            )
            tensor.device = cuda.mem_alloc(tensor.host.nbytes)
            tensor.row_bytes = tensor.host.nbytes // max_batch
        self._stream = cuda.Stream()

    def infer(self, batch: BatchInput) -> BatchOutput:
        cuda = self._cuda
        arrays = batch_arrays(batch)
        beds = batch.beds
        if beds > self.max_batch:
            raise ValueError(f"batch of {beds} beds exceeds the plan's profile maximum {self.max_batch}")
        since = self._logger.mark()
        for name, array in arrays.items():
            tensor = self._tensors[name]
            tensor.host[:beds] = array
            if not self._execution.set_input_shape(name, array.shape):
                raise TensorRtError(
                    f"set_input_shape({name}, {array.shape}) refused: {self._logger.reason(since=since)}"
                )
        for tensor in self._tensors.values():
            if not self._execution.set_tensor_address(tensor.name, int(tensor.device)):
                raise TensorRtError(
                    f"set_tensor_address({tensor.name}) refused: {self._logger.reason(since=since)}"
                )
        for name in INPUT_NAMES:
            tensor = self._tensors[name]
            cuda.memcpy_htod_async(tensor.device, tensor.host[:beds], self._stream)
        if not self._execution.execute_async_v3(self._stream.handle):
            raise TensorRtError(f"execute_async_v3 failed: {self._logger.reason(since=since)}")
        for name in OUTPUT_NAMES:
            tensor = self._tensors[name]
            cuda.memcpy_dtoh_async(tensor.host[:beds], tensor.device, self._stream)
        self._stream.synchronize()
        output = BatchOutput(
            quantiles=np.array(self._tensors[OUTPUT_QUANTILES].host[:beds], dtype=np.float32),
            event_probability=np.array(self._tensors[OUTPUT_EVENTS].host[:beds], dtype=np.float32),
        )
        check_output_shapes(output, beds=beds)
        return output

    def close(self) -> None:
        self._release()

    def _release(self) -> None:
        """Free buffers, TensorRT objects (context, engine, runtime), then pop and release the context.

        Also after a failed `_load`: whatever it allocated is in `_tensors` already, and is freed here
        with the context current (a page-locked buffer left to the garbage collector would be freed
        later, for example when the failure's traceback goes, with no context current).
        """
        for tensor in self._tensors.values():
            if tensor.device is not None:
                tensor.device.free()
            tensor.host.base.free()
        self._tensors = {}
        for attribute in ("_stream", "_execution", "_engine", "_runtime"):
            if hasattr(self, attribute):
                delattr(self, attribute)
        self._context.pop()
        self._context.detach()


_Job = tuple[Callable[[], Any], Future[Any]] | None


class TensorRtBackend:
    """A model as a TensorRT plan on device 0, served by one dedicated inference thread."""

    name = "tensorrt"

    def __init__(
        self,
        *,
        model: InstalledModel,
        precision: Precision,
        cache: PlanCache,
        max_batch: int = MAX_BATCH,
        opt_batch: int = OPT_BATCH,
    ) -> None:
        self.model = model
        self.precision: str = precision
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"tensorrt-{model.ref}", daemon=True)
        self._thread.start()
        self._engine: _Engine | None = None
        try:
            self._engine = self._call(
                lambda: _Engine(
                    model=model, precision=precision, cache=cache, max_batch=max_batch, opt_batch=opt_batch
                )
            )
        except BaseException:
            self._jobs.put(None)
            self._thread.join()
            raise
        LOGGER.info("loaded %s on TensorRT (%s)", model.ref, precision)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            work, future = job
            try:
                future.set_result(work())
            except Exception as exc:  # noqa: BLE001 - handed to the caller, who raises it
                future.set_exception(exc)

    def _call(self, work: Callable[[], Any]) -> Any:
        if not self._thread.is_alive():
            raise TensorRtError("the TensorRT backend is closed")
        future: Future[Any] = Future()
        self._jobs.put((work, future))
        return future.result()

    def infer(self, batch: BatchInput) -> BatchOutput:
        """Run one forward pass for the whole batch (1..MAX_BATCH beds) on the inference thread."""
        engine = self._engine
        if engine is None:
            raise TensorRtError("the TensorRT backend is closed")
        result: BatchOutput = self._call(lambda: engine.infer(batch))
        return result

    def close(self) -> None:
        """Free buffers, engine and context on the inference thread, then stop it."""
        engine, self._engine = self._engine, None
        if engine is not None:
            self._call(engine.close)
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()


@dataclass(frozen=True, slots=True, kw_only=True)
class PrecisionCheck:
    """How one TensorRT precision compared with the reference outputs."""

    precision: Precision
    comparison: Comparison
    tolerance: Tolerance


@dataclass(frozen=True, slots=True, kw_only=True)
class PrecisionDecision:
    """The precision to run and the measurements behind it."""

    chosen: Precision
    reference: Literal["onnxruntime", "tensorrt fp32"]
    inputs: str
    checks: tuple[PrecisionCheck, ...]


def verify_precisions(*, model: InstalledModel, cache: PlanCache, beds: int = MAX_BATCH) -> PrecisionDecision:
    """Build (or load) FP32 and FP16 plans, compare both with onnxruntime, and choose FP16 only if it holds.

    The reference is onnxruntime on the same windows (the model's reference.npz inputs, else synthetic
    windows). Where onnxruntime is not installed the FP32 plan is the reference, so only FP16 is checked.
    """
    inputs, source = check_inputs(model, beds=beds)
    expected: BatchOutput | None = None
    reference: Literal["onnxruntime", "tensorrt fp32"] = "onnxruntime"
    try:
        cpu = OnnxRuntimeBackend(model=model)
        try:
            expected = cpu.infer(inputs)
        finally:
            cpu.close()
    except ImportError:
        reference = "tensorrt fp32"
    checks: list[PrecisionCheck] = []
    for precision in ("fp32", "fp16"):
        backend = TensorRtBackend(model=model, precision=precision, cache=cache)
        try:
            actual = backend.infer(inputs)
        finally:
            backend.close()
        if expected is None:
            expected = actual
        tolerance = tolerance_for(precision)
        comparison = compare_outputs(actual=actual, expected=expected, tolerance=tolerance)
        LOGGER.info(
            "%s TensorRT %s vs %s on %s: quantiles max abs error %.3g (tolerance %g), "
            "probability max abs error %.3g (tolerance %g): %s",
            model.ref,
            precision,
            reference,
            source,
            comparison.quantiles_max_abs,
            tolerance.quantiles_abs,
            comparison.probability_max_abs,
            tolerance.probability_abs,
            "within" if comparison.within else "OUTSIDE",
        )
        checks.append(PrecisionCheck(precision=precision, comparison=comparison, tolerance=tolerance))
    fp32, fp16 = checks
    if not fp32.comparison.within:
        raise TensorRtError(
            f"{model.ref}: even the FP32 plan is outside tolerance (quantiles "
            f"{fp32.comparison.quantiles_max_abs:.3g}, probability {fp32.comparison.probability_max_abs:.3g})"
        )
    chosen: Precision = "fp16" if fp16.comparison.within else "fp32"
    LOGGER.info("%s: running TensorRT %s", model.ref, chosen)
    return PrecisionDecision(chosen=chosen, reference=reference, inputs=source, checks=tuple(checks))
