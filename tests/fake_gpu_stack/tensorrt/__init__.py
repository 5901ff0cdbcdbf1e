"""Fake tensorrt (tests only): fails the way a broken GPU stack fails; see ../README.md."""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

_MODE = os.environ.get("FAKE_GPU_STACK", "build-fails")

if _MODE == "import-error":
    raise RuntimeError(
        "CUDA initialization failure with error: 35. Please check your CUDA installation: "
        "https://docs.nvidia.com/cuda/cuda-installation-guide-linux/index.html"
    )

__version__ = "10.3.0-fake"

_RELEASE = threading.Event()

fail_inference = False
"""Set by a test: every later forward pass fails (`works` mode), as a GPU that fell off the bus does."""

_PLAN_MAGIC = b"FAKEPLAN"

deserialized: list[bytes] = []
"""Every plan handed to Runtime.deserialize_cuda_engine (a test checks a refused plan never is)."""

refuse_tensor_address = False
"""Set by a test: `set_tensor_address` returns False (TensorRT 10 refuses a misaligned or bad address)."""

delivered: list[tuple[int, str]] = []
"""Every (severity, message) that reached a Python `log` call (after the min_severity filter)."""

_process_logger: ILogger | None = None
"""As TensorRT does: the first logger given to a Builder, Runtime or parser receives every message of
the process, whatever logger later objects are given."""


def _emit(severity: int, msg: str) -> None:
    """Log as TensorRT's C++ side does: to the process logger, filtered by its min_severity first."""
    if _process_logger is None or severity > _process_logger.min_severity:
        return
    delivered.append((severity, msg))
    _process_logger.log(severity, msg)


def _adopt(logger: ILogger) -> None:
    global _process_logger
    if _process_logger is None:
        _process_logger = logger


def release_hung_builds() -> None:
    """Let every hanging build return (in-process tests call this in their teardown)."""
    _RELEASE.set()


class ILogger:
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4

    def __init__(self) -> None:
        # TensorRT does not document the default of a Python subclass; the fake lets everything through,
        # so a test shows the backend sets the filter itself.
        self.min_severity = ILogger.VERBOSE

    def log(self, severity: int, msg: str) -> None:
        pass


class MemoryPoolType:
    WORKSPACE = "WORKSPACE"


class BuilderFlag:
    FP16 = "FP16"
    TF32 = "TF32"


class TensorIOMode:
    INPUT = "INPUT"
    OUTPUT = "OUTPUT"


class _TimingCache:
    def serialize(self) -> bytes:
        return b""


class _Config:
    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        pass

    def clear_flag(self, flag: str) -> None:
        pass

    def set_flag(self, flag: str) -> None:
        pass

    def add_optimization_profile(self, profile: Any) -> int:
        return 0

    def create_timing_cache(self, data: bytes) -> _TimingCache:
        return _TimingCache()

    def set_timing_cache(self, cache: _TimingCache, ignore_mismatch: bool) -> bool:
        return True

    def get_timing_cache(self) -> _TimingCache:
        return _TimingCache()


class _Profile:
    def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
        pass


class _Network:
    num_inputs = 0
    onnx = b""


class Builder:
    def __init__(self, logger: ILogger) -> None:
        _adopt(logger)

    def create_network(self, flags: int) -> _Network:
        return _Network()

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> bytes | None:
        for tactic in range(20):
            _emit(ILogger.VERBOSE, f"fake: [V] timing tactic {tactic}")
        _emit(ILogger.INFO, "fake: [I] total build time 0.1 s")
        mode = os.environ.get("FAKE_GPU_STACK", "build-fails")
        hang_file = os.environ.get("FAKE_GPU_STACK_HANG_FILE")
        if mode == "works" and hang_file is not None and os.path.exists(hang_file):
            mode = "build-hangs"
        if mode == "works":
            return _PLAN_MAGIC + network.onnx
        if mode == "build-hangs":
            _RELEASE.wait(float(os.environ.get("FAKE_GPU_STACK_HANG_S", "3600")))
        _emit(ILogger.ERROR, "fake: out of device memory while building (tests)")
        return None


class OnnxParser:
    def __init__(self, network: _Network, logger: ILogger) -> None:
        _adopt(logger)
        self.num_errors = 0
        self._network = network

    def parse(self, data: bytes) -> bool:
        self._network.onnx = data
        return True


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        _adopt(logger)

    def deserialize_cuda_engine(self, plan: bytes) -> _Engine | None:
        deserialized.append(plan)
        if not plan.startswith(_PLAN_MAGIC):
            return None
        return _Engine(plan[len(_PLAN_MAGIC) :])


def nptype(dtype: Any) -> Any:
    return np.float32


class _Engine:
    """A "plan" that is the ONNX itself, run by onnxruntime: the TensorRT code paths without a GPU."""

    def __init__(self, onnx: bytes) -> None:
        import onnxruntime

        self._session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        self._inputs = {i.name: i.shape for i in self._session.get_inputs()}
        self._outputs = {o.name: o.shape for o in self._session.get_outputs()}
        self._names = [*self._inputs, *self._outputs]
        self.num_io_tensors = len(self._names)

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def get_tensor_mode(self, name: str) -> str:
        return TensorIOMode.INPUT if name in self._inputs else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> str:
        return "float32"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        shape = {**self._inputs, **self._outputs}[name]
        return tuple(d if isinstance(d, int) else -1 for d in shape)

    def create_execution_context(self) -> _Execution:
        return _Execution(self._session, set(self._inputs))


class _Execution:
    def __init__(self, session: Any, inputs: set[str]) -> None:
        self._session = session
        self._inputs = inputs
        self._addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        if refuse_tensor_address:
            _emit(ILogger.ERROR, f"fake: address of tensor {name} is not aligned (tests)")
            return False
        self._addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        from pycuda.driver import allocations

        if fail_inference:
            return False
        feed = {name: allocations[self._addresses[name]].data for name in self._inputs}
        outputs = self._session.run(None, feed)
        for meta, array in zip(self._session.get_outputs(), outputs, strict=True):
            allocations[self._addresses[meta.name]].data = array
        return True
