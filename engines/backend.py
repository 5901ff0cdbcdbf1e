"""One small interface for every inference backend (onnxruntime on CPU, TensorRT on a GPU).

A backend runs one model for a whole batch of beds in one call. Call it from one thread at a time
(the runtime's inference thread). It may be created on another thread (the runtime's load thread):
TensorRtBackend keeps its CUDA context on a thread of its own, because a CUDA context belongs to a
thread, and an onnxruntime session may be run from any thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from engines.catalog import InstalledModel

BackendName = Literal["auto", "tensorrt", "onnxruntime"]


@dataclass(frozen=True, slots=True)
class BatchInput:
    """Model inputs for B beds (see engines.spec for names, shapes and units)."""

    values: npt.NDArray[np.float32]
    mask: npt.NDArray[np.float32]
    context: npt.NDArray[np.float32]
    context_mask: npt.NDArray[np.float32]

    @property
    def beds(self) -> int:
        """Return the batch size B."""
        return int(self.values.shape[0])


@dataclass(frozen=True, slots=True)
class BatchOutput:
    """Model outputs for B beds."""

    quantiles: npt.NDArray[np.float32]
    """[B, signals, horizons, quantiles]"""
    event_probability: npt.NDArray[np.float32]
    """[B, events, horizons]"""


class EngineBackend(Protocol):
    """A loaded model on one backend."""

    name: str
    """`onnxruntime` or `tensorrt`."""
    model: InstalledModel
    precision: str
    """`fp32` or `fp16`."""

    def infer(self, batch: BatchInput) -> BatchOutput:
        """Run one forward pass for the whole batch (1..MAX_BATCH beds)."""

    def close(self) -> None:
        """Release the session, buffers and contexts."""
