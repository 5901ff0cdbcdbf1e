"""The onnxruntime backend: the shipped ONNX on the CPU (the default where there is no CUDA device).

Single-threaded by default (`intra_op_threads=1`, sequential execution): the appliance has two cores,
and the event loop, the device reader threads and the publisher need them; our models are small, so a
second thread buys little latency and costs jitter elsewhere. One thread also makes results
reproducible bit for bit (no reduction order that depends on the thread split), which `engines verify`
relies on. onnxruntime is imported when a backend is created, so a GPU box without it still imports us.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from engines.backend import BatchInput, BatchOutput
from engines.catalog import InstalledModel, ModelError
from engines.spec import (
    CONTEXT,
    EVENTS,
    HORIZONS_MIN,
    INPUT_CONTEXT,
    INPUT_CONTEXT_MASK,
    INPUT_MASK,
    INPUT_NAMES,
    INPUT_VALUES,
    MAX_BATCH,
    OUTPUT_EVENTS,
    OUTPUT_NAMES,
    OUTPUT_QUANTILES,
    QUANTILES,
    SIGNALS,
    WINDOW_STEPS,
)

LOGGER = logging.getLogger(__name__)

TRAILING_DIMS: dict[str, tuple[int, ...]] = {
    INPUT_VALUES: (WINDOW_STEPS, len(SIGNALS)),
    INPUT_MASK: (WINDOW_STEPS, len(SIGNALS)),
    INPUT_CONTEXT: (WINDOW_STEPS, len(CONTEXT)),
    INPUT_CONTEXT_MASK: (WINDOW_STEPS, len(CONTEXT)),
    OUTPUT_QUANTILES: (len(SIGNALS), len(HORIZONS_MIN), len(QUANTILES)),
    OUTPUT_EVENTS: (len(EVENTS), len(HORIZONS_MIN)),
}
"""Every I/O tensor's shape after the batch dimension (engines.spec)."""


def batch_arrays(batch: BatchInput) -> dict[str, npt.NDArray[np.float32]]:
    """Return the batch's inputs by ONNX name after checking them: float32, 1..MAX_BATCH beds, spec shapes."""
    arrays = {
        INPUT_VALUES: batch.values,
        INPUT_MASK: batch.mask,
        INPUT_CONTEXT: batch.context,
        INPUT_CONTEXT_MASK: batch.context_mask,
    }
    beds = batch.beds
    if not 1 <= beds <= MAX_BATCH:
        raise ValueError(f"batch of {beds} beds; a backend runs 1..{MAX_BATCH}")
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray) or array.dtype != np.float32:
            raise TypeError(
                f"input {name} must be a float32 ndarray, got {getattr(array, 'dtype', type(array))}"
            )
        expected = (beds, *TRAILING_DIMS[name])
        if array.shape != expected:
            raise ValueError(f"input {name} has shape {array.shape}, expected {expected}")
    return arrays


def check_output_shapes(output: BatchOutput, *, beds: int) -> None:
    """Raise ModelError when outputs do not have the spec shapes for `beds` beds."""
    for name, array in ((OUTPUT_QUANTILES, output.quantiles), (OUTPUT_EVENTS, output.event_probability)):
        expected = (beds, *TRAILING_DIMS[name])
        if array.shape != expected:
            raise ModelError(f"output {name} has shape {array.shape}, expected {expected}")


def zero_batch(*, beds: int) -> BatchInput:
    """Return an all-missing batch (every mask 0): a probe that any conformant model must accept."""

    def zeros(name: str) -> npt.NDArray[np.float32]:
        return np.zeros((beds, *TRAILING_DIMS[name]), dtype=np.float32)

    return BatchInput(
        values=zeros(INPUT_VALUES),
        mask=zeros(INPUT_MASK),
        context=zeros(INPUT_CONTEXT),
        context_mask=zeros(INPUT_CONTEXT_MASK),
    )


class OnnxRuntimeBackend:
    """A model on onnxruntime's CPU execution provider (thread-affine like every backend)."""

    name = "onnxruntime"
    precision = "fp32"

    def __init__(self, *, model: InstalledModel, intra_op_threads: int = 1) -> None:
        import onnxruntime as ort  # optional dependency (the `cpu` extra)

        self.model = model
        self.intra_op_threads = intra_op_threads
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        onnx = model.read_onnx()  # the checked bytes, not whatever the path holds by now
        try:
            self._session: Any = ort.InferenceSession(
                onnx, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
            raise ModelError(f"{model.ref}: onnxruntime cannot load {model.onnx_path}: {exc}") from exc
        self._check_signature()
        check_output_shapes(self.infer(zero_batch(beds=2)), beds=2)
        LOGGER.info(
            "loaded %s on onnxruntime %s (%d thread(s))", model.ref, ort.__version__, intra_op_threads
        )

    def _check_signature(self) -> None:
        """Raise ModelError unless the graph's I/O names, dtypes and shapes are those of engines.spec."""
        problems: list[str] = []
        for kind, declared, wanted in (
            ("inputs", self._session.get_inputs(), INPUT_NAMES),
            ("outputs", self._session.get_outputs(), OUTPUT_NAMES),
        ):
            by_name = {node.name: node for node in declared}
            if set(by_name) != set(wanted):
                problems.append(f"{kind} are {sorted(by_name)}, expected {sorted(wanted)}")
                continue
            for name in wanted:
                node = by_name[name]
                if node.type != "tensor(float)":
                    problems.append(f"{name} is {node.type}, expected tensor(float)")
                shape = list(node.shape)
                trailing = TRAILING_DIMS[name]
                if len(shape) != 1 + len(trailing):
                    problems.append(f"{name} has rank {len(shape)}, expected {1 + len(trailing)}")
                    continue
                if isinstance(shape[0], int):
                    problems.append(f"{name} has a fixed batch dimension {shape[0]}; it must be dynamic")
                for axis, (got, want) in enumerate(zip(shape[1:], trailing, strict=True), start=1):
                    # Outputs may carry symbolic trailing dims; the probe run at load checks their values.
                    if (isinstance(got, int) and got != want) or (
                        kind == "inputs" and not isinstance(got, int)
                    ):
                        problems.append(f"{name} dimension {axis} is {got}, expected {want}")
        if problems:
            raise ModelError(f"{self.model.ref}: not conformant to engines.spec: " + "; ".join(problems))

    def infer(self, batch: BatchInput) -> BatchOutput:
        """Run one forward pass for the whole batch (1..MAX_BATCH beds)."""
        feeds = batch_arrays(batch)
        quantiles, probability = self._session.run(list(OUTPUT_NAMES), feeds)
        output = BatchOutput(
            quantiles=np.ascontiguousarray(quantiles, dtype=np.float32),
            event_probability=np.ascontiguousarray(probability, dtype=np.float32),
        )
        check_output_shapes(output, beds=batch.beds)
        return output

    def close(self) -> None:
        """Release the session."""
        self._session = None
