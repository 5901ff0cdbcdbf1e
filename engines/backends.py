"""Open a model on a backend by name: `onnxruntime`, `tensorrt`, or `auto` (TensorRT where it is usable).

Every choice comes with a one-line reason, logged by the runtime and shown by the CLI, so a field
engineer can see why a box runs on the CPU.

A broken GPU stack must never stop forecasting, let alone the vitals: with `auto` (and with `tensorrt`
when the caller allows a fall-back, as the daemon does) any failure to import, initialize, build or
load TensorRT becomes the reason and the model runs on onnxruntime instead. With a `tensorrt_timeout_s`
the TensorRT attempt runs on its own daemon thread and is abandoned when it takes longer (a build that
hangs in the driver): the caller falls back at once, the hung thread never keeps the process from
exiting, and a backend it produces after all is closed, not used. While an abandoned attempt still
runs, no second one starts (one GPU, one build at a time). The last failure per model version is
kept in the plan cache (`PlanCache.record_failure`) for `icu-edge engines list`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from pathlib import Path
from typing import TypeVar

from engines.backend import BackendName, EngineBackend
from engines.catalog import InstalledModel
from engines.onnx_backend import OnnxRuntimeBackend
from engines.plan_cache import PlanCache, Precision
from engines.tensorrt_backend import TensorRtBackend, TensorRtError, cuda_status, describe, verify_precisions

LOGGER = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("/var/lib/icu-edge/engines")
"""TensorRT plans and timing caches: under the service's systemd StateDirectory."""

T = TypeVar("T")

_TENSORRT_SLOT = threading.Lock()
"""Held by the one TensorRT attempt that runs (released when it returns, even after abandonment)."""


class BackendUnavailable(RuntimeError):
    """The asked-for backend cannot run on this machine (the message says why)."""


def open_backend(
    *,
    model: InstalledModel,
    backend: BackendName,
    cache_dir: Path | None = None,
    precision: Precision | None = None,
    tensorrt_timeout_s: float | None = None,
    fall_back: bool = False,
) -> tuple[EngineBackend, str]:
    """Load model on the named backend; return it and why it was chosen.

    For TensorRT, `precision=None` measures FP16 against onnxruntime and keeps it only within
    tolerance (`verify_precisions`; the plans come from the cache after the first build). `auto`
    falls back to onnxruntime whenever TensorRT cannot run; `tensorrt` does so only with
    `fall_back=True`, else it raises BackendUnavailable.
    """
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(model=model), "asked for onnxruntime"
    loaded, why = _try_tensorrt(
        model=model, cache_dir=cache_dir, precision=precision, timeout_s=tensorrt_timeout_s
    )
    if loaded is not None:
        prefix = "auto: tensorrt because" if backend == "auto" else "asked for tensorrt:"
        return loaded, f"{prefix} {why}"
    if backend == "auto":
        return OnnxRuntimeBackend(model=model), f"auto: onnxruntime because {why}"
    if not fall_back:
        raise BackendUnavailable(f"tensorrt asked for but unavailable: {why}")
    return OnnxRuntimeBackend(model=model), f"tensorrt asked for but unavailable, onnxruntime instead: {why}"


def in_daemon_thread(work: Callable[[], T], *, name: str, discard: Callable[[T], None]) -> Future[T]:
    """Run work on a new daemon thread and return its future.

    Cancelling the future (or `abandon`) abandons the work: the thread runs on, and a result that
    arrives afterwards is handed to `discard` (a backend loaded too late is closed, never used).
    """
    future: Future[T] = Future()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
            if future.set_running_or_notify_cancel():
                future.set_exception(exc)
            return
        if future.set_running_or_notify_cancel():
            future.set_result(result)
        else:
            discard(result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def abandon(future: Future[T], *, discard: Callable[[T], None]) -> None:
    """Stop waiting for `in_daemon_thread` work; a result it still produces goes to discard."""
    if future.cancel():
        return

    def late(done: Future[T]) -> None:
        if not done.cancelled() and done.exception() is None:
            discard(done.result())

    future.add_done_callback(late)


def close_quietly(backend: EngineBackend | None) -> None:
    """Close a backend nobody uses any more; a failure to close is logged, not raised."""
    if backend is None:
        return
    try:
        backend.close()
    except Exception:
        LOGGER.exception("closing the unused %s backend of %s failed", backend.name, backend.model.ref)


def _try_tensorrt(
    *, model: InstalledModel, cache_dir: Path | None, precision: Precision | None, timeout_s: float | None
) -> tuple[TensorRtBackend | None, str]:
    """Return TensorRT's backend and why it is usable, or None and why not; never raise."""
    if not _TENSORRT_SLOT.acquire(blocking=False):
        return None, "an earlier TensorRT load has not finished (hung in the driver?); not starting another"

    cache = PlanCache(cache_dir or DEFAULT_CACHE_DIR)

    def attempt() -> tuple[TensorRtBackend | None, str]:
        try:
            usable, why = cuda_status()
            if not usable:
                return None, why
            try:
                loaded = _tensorrt(model=model, cache=cache, precision=precision)
            except TensorRtError as exc:
                failure = f"TensorRT failed for {model.ref}: {describe(exc)}"
            except Exception as exc:
                LOGGER.warning("TensorRT failed for %s", model.ref, exc_info=True)
                failure = f"TensorRT failed for {model.ref}: {describe(exc)}"
            else:
                _remember(cache, model=model, failure=None)
                return loaded, why
            _remember(cache, model=model, failure=failure)
            return None, failure
        finally:
            _TENSORRT_SLOT.release()

    if timeout_s is None:
        return attempt()

    def discard(result: tuple[TensorRtBackend | None, str]) -> None:
        LOGGER.warning("an abandoned TensorRT load of %s finished after all; discarding it", model.ref)
        close_quietly(result[0])

    future = in_daemon_thread(attempt, name=f"tensorrt-load-{model.ref}", discard=discard)
    try:
        return future.result(timeout=timeout_s)
    except FutureTimeoutError:
        abandon(future, discard=discard)
        failure = f"TensorRT load of {model.ref} did not finish within {timeout_s:g} s; abandoned"
        _remember(cache, model=model, failure=failure)
        return None, failure


def _remember(cache: PlanCache, *, model: InstalledModel, failure: str | None) -> None:
    """Record (or clear) the model's TensorRT failure for `engines list`; a read-only cache is no error."""
    try:
        if failure is None:
            cache.clear_failure(model_ref=model.ref)
        else:
            cache.record_failure(model_ref=model.ref, onnx_sha256=model.card.onnx_sha256, reason=failure)
    except OSError as exc:
        LOGGER.warning("cannot record the TensorRT outcome of %s in %s: %s", model.ref, cache.directory, exc)


def _tensorrt(*, model: InstalledModel, cache: PlanCache, precision: Precision | None) -> TensorRtBackend:
    if precision is None:
        precision = verify_precisions(model=model, cache=cache).chosen
    return TensorRtBackend(model=model, precision=precision, cache=cache)
