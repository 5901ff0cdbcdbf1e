"""Fake tensorrt (tests only): fails the way a broken GPU stack fails; see ../README.md."""

from __future__ import annotations

import os
import threading
from typing import Any

_MODE = os.environ.get("FAKE_GPU_STACK", "build-fails")

if _MODE == "import-error":
    raise RuntimeError(
        "CUDA initialization failure with error: 35. Please check your CUDA installation: "
        "https://docs.nvidia.com/cuda/cuda-installation-guide-linux/index.html"
    )

__version__ = "10.3.0-fake"

_RELEASE = threading.Event()

deserialized: list[bytes] = []
"""Every plan handed to Runtime.deserialize_cuda_engine (a test checks a refused plan never is)."""


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
        pass

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


class Builder:
    def __init__(self, logger: ILogger) -> None:
        self._logger = logger

    def create_network(self, flags: int) -> _Network:
        return _Network()

    def create_builder_config(self) -> _Config:
        return _Config()

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: _Network, config: _Config) -> None:
        if os.environ.get("FAKE_GPU_STACK", "build-fails") == "build-hangs":
            _RELEASE.wait(float(os.environ.get("FAKE_GPU_STACK_HANG_S", "3600")))
        self._logger.log(ILogger.ERROR, "fake: out of device memory while building (tests)")


class OnnxParser:
    def __init__(self, network: _Network, logger: ILogger) -> None:
        self.num_errors = 0

    def parse(self, data: bytes) -> bool:
        return True


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        pass

    def deserialize_cuda_engine(self, plan: bytes) -> None:
        deserialized.append(plan)
        return None
