"""Open a model on a backend by name: `onnxruntime`, `tensorrt`, or `auto` (TensorRT where it is usable).

Every choice comes with a one-line reason, logged by the runtime and shown by the CLI, so a field
engineer can see why a box runs on the CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engines.backend import BackendName, EngineBackend
from engines.catalog import InstalledModel
from engines.onnx_backend import OnnxRuntimeBackend
from engines.plan_cache import PlanCache, Precision
from engines.tensorrt_backend import TensorRtBackend, cuda_status, verify_precisions

LOGGER = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("/var/lib/icu-edge/engines")
"""TensorRT plans and timing caches: under the service's systemd StateDirectory."""


class BackendUnavailable(RuntimeError):
    """The asked-for backend cannot run on this machine (the message says why)."""


def open_backend(
    *,
    model: InstalledModel,
    backend: BackendName,
    cache_dir: Path | None = None,
    precision: Precision | None = None,
) -> tuple[EngineBackend, str]:
    """Load model on the named backend; return it and why it was chosen.

    For TensorRT, `precision=None` measures FP16 against onnxruntime and keeps it only within
    tolerance (`verify_precisions`; the plans come from the cache after the first build).
    """
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(model=model), "asked for onnxruntime"
    usable, why = cuda_status()
    if backend == "tensorrt":
        if not usable:
            raise BackendUnavailable(f"tensorrt asked for but unavailable: {why}")
        return _tensorrt(model=model, cache_dir=cache_dir, precision=precision), f"asked for tensorrt: {why}"
    if not usable:
        return OnnxRuntimeBackend(model=model), f"auto: onnxruntime because {why}"
    return _tensorrt(model=model, cache_dir=cache_dir, precision=precision), f"auto: tensorrt because {why}"


def _tensorrt(
    *, model: InstalledModel, cache_dir: Path | None, precision: Precision | None
) -> TensorRtBackend:
    cache = PlanCache(cache_dir or DEFAULT_CACHE_DIR)
    if precision is None:
        precision = verify_precisions(model=model, cache=cache).chosen
    return TensorRtBackend(model=model, precision=precision, cache=cache)
