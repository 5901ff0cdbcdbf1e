"""The forecasting runtime: every tick, one batched inference for all beds, off the event loop.

Threads (who owns what):
- The event loop (the caller) owns the bed histories, builds the windows at each tick and swaps
  backends; it never waits for a load.
- One inference thread (the single-worker executor `engines`) runs every forward pass and closes
  backends that were swapped out.
- Each load (`start`, `reload`) runs on a daemon thread of its own (`engines-load`): the catalog scan
  with its hashing, the onnxruntime session, the TensorRT plan build or deserialization. A load that
  hangs therefore never stops a tick, and never keeps the process from exiting. The CUDA rule holds:
  TensorRtBackend keeps its context on a thread of its own whoever creates or calls it, and an
  onnxruntime session may be created on one thread and run on another.

A loaded backend is swapped in between ticks (`_swap_lock`), so a tick never runs on a backend being
closed. A new model version is picked up without a restart (`reload`: SIGHUP, or the periodic catalog
check); if loading it fails the running model stays. TensorRT gets `load_timeout_s` per load; past
that, or on any TensorRT failure (import, driver, build, deserialization, a failed forward pass), the
model runs on onnxruntime and `status` says why. Each distinct problem is logged once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.backend import BackendName, BatchInput, BatchOutput, EngineBackend
from engines.backends import abandon, close_quietly, in_daemon_thread, open_backend
from engines.catalog import SHIPPED_MODELS_DIR, InstalledModel, ModelError, scan_models, select_model
from engines.features import BedHistory, FeatureWindow
from engines.onnx_backend import OnnxRuntimeBackend
from engines.spec import EVENTS, FRESH_WITHIN_STEPS, HORIZONS_MIN, MAX_BATCH, QUANTILES, SIGNALS, STEP_S
from engines.tensorrt_backend import describe

LOGGER = logging.getLogger(__name__)

_P10, _P50, _P90 = (QUANTILES.index(q) for q in (0.1, 0.5, 0.9))

DEFAULT_LOAD_TIMEOUT_S = 600.0
"""How long one TensorRT load may take (two plan builds on a Jetson) before onnxruntime runs instead."""
STATUS_MAX_CHARS = 300
"""The status line is for `systemctl status`: a long driver message is cut here."""


class EnginesUnavailable(Exception):
    """No model could be loaded (the message says why); the daemon runs without forecasts."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SignalOutlook:
    """One signal's forecast for one bed."""

    key: str
    unit: str
    last_value: float
    last_age_s: float
    valid_minutes: int
    quantiles: tuple[tuple[float, float, float], ...]
    """(p10, p50, p90) per horizon, in HORIZONS_MIN order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BedForecast:
    """What one tick says about one bed."""

    bed: str
    made_at_s: float
    """Wall clock (epoch seconds) of the window's 'now'."""
    model: InstalledModel
    backend: str
    precision: str
    signals: tuple[SignalOutlook, ...]
    events: dict[str, tuple[float, ...]]
    """Event key -> probability per horizon (only events whose signal is fresh)."""
    unavailable: dict[str, str]


_Loaded = tuple[EngineBackend, str] | None
"""A backend and why it was chosen; None when the catalog selects the model already running."""


class ForecastRuntime:
    """Per-bed histories, the loaded model, and the tick."""

    def __init__(
        self,
        *,
        beds: Iterable[str],
        backend: BackendName,
        model_ref: str | None = None,
        extra_models_dir: Path | None = None,
        cache_dir: Path | None = None,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
    ) -> None:
        self._histories = {bed: BedHistory() for bed in beds}
        self._backend_choice: BackendName = backend
        self._model_ref = model_ref
        self._extra_models_dir = extra_models_dir
        self._cache_dir = cache_dir
        self._load_timeout_s = load_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engines")
        self._swap_lock = asyncio.Lock()
        self._backend: EngineBackend | None = None
        self._closed = False
        self._tensorrt_failed: str | None = None
        """Why TensorRT failed in a forward pass: later loads go straight to onnxruntime."""
        self._reported: set[str] = set()
        self.choice_reason = ""
        self.status = "loading"
        """One line for the daemon's status: loading, running (model, backend, why) or unavailable."""

    @property
    def backend(self) -> EngineBackend:
        """Return the loaded backend (after `start`)."""
        if self._backend is None:
            raise RuntimeError("the forecasting runtime has not started")
        return self._backend

    @property
    def running(self) -> bool:
        """Whether a model is loaded and ticks can run."""
        return self._backend is not None

    @property
    def needs_fallback(self) -> bool:
        """Whether TensorRT failed in a forward pass and the model should be reloaded on onnxruntime."""
        backend = self._backend
        return self._tensorrt_failed is not None and backend is not None and backend.name == "tensorrt"

    def _report(self, level: int, problem: str, *, exc_info: BaseException | None = None) -> None:
        """Log a problem once while it persists (the periodic check would repeat it every time)."""
        if problem in self._reported:
            LOGGER.debug("%s", problem)
            return
        self._reported.add(problem)
        LOGGER.log(level, "%s", problem, exc_info=exc_info)

    def _installed(self) -> list[InstalledModel]:
        models, problems = scan_models(SHIPPED_MODELS_DIR)
        if self._extra_models_dir is not None and self._extra_models_dir.is_dir():
            extra, extra_problems = scan_models(self._extra_models_dir)
            models += extra
            problems += extra_problems
        for problem in problems:
            self._report(logging.ERROR, f"refusing model: {problem}")
        return models

    def _open(self, *, current: InstalledModel | None, force: bool) -> _Loaded:
        """Select and load a model (on a load thread); None when it is the one already running."""
        candidate = select_model(self._installed(), ref=self._model_ref)
        unchanged = (
            current is not None
            and candidate.ref == current.ref
            and candidate.card.onnx_sha256 == current.card.onnx_sha256
        )
        if unchanged and not force:
            return None
        if self._tensorrt_failed is not None:
            reason = f"onnxruntime because TensorRT failed in a forward pass: {self._tensorrt_failed}"
            return OnnxRuntimeBackend(model=candidate), reason
        return open_backend(
            model=candidate,
            backend=self._backend_choice,
            cache_dir=self._cache_dir,
            tensorrt_timeout_s=self._load_timeout_s,
            fall_back=True,
        )

    async def _load(self, *, current: InstalledModel | None, force: bool = False) -> _Loaded:
        def discard(loaded: _Loaded) -> None:
            close_quietly(None if loaded is None else loaded[0])

        future = in_daemon_thread(
            lambda: self._open(current=current, force=force), name="engines-load", discard=discard
        )
        try:
            loaded = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            abandon(future, discard=discard)
            raise
        if self._closed:
            discard(loaded)
            return None
        return loaded

    def _choice_level(self, backend: EngineBackend) -> int:
        """Return WARNING when the config asked for TensorRT and got onnxruntime, else INFO."""
        asked_for_tensorrt = self._backend_choice == "tensorrt"
        return logging.WARNING if asked_for_tensorrt and backend.name != "tensorrt" else logging.INFO

    def _set_running(self, backend: EngineBackend, reason: str) -> None:
        self.choice_reason = reason
        status = f"{backend.model.ref} on {backend.name} ({backend.precision}): {reason}"
        self.status = status if len(status) <= STATUS_MAX_CHARS else status[: STATUS_MAX_CHARS - 1] + "…"

    async def start(self) -> None:
        """Load the configured model off the event loop; raise EnginesUnavailable if none can be loaded.

        A failed start can be retried (the daemon does on SIGHUP and at each catalog check).
        """
        self.status = "loading"
        try:
            loaded = await self._load(current=None)
        except Exception as exc:
            problem = str(exc) if isinstance(exc, ModelError) else describe(exc)
            self.status = f"unavailable: {problem}"[:STATUS_MAX_CHARS]
            unexpected = None if isinstance(exc, ModelError) else exc
            self._report(logging.ERROR, f"forecasting unavailable: {problem}", exc_info=unexpected)
            raise EnginesUnavailable(problem) from exc
        if loaded is None:
            raise EnginesUnavailable("the forecasting runtime is closed")
        backend, reason = loaded
        self._backend = backend
        self._set_running(backend, reason)
        LOGGER.log(
            self._choice_level(backend),
            "forecasting with %s on %s (%s): %s",
            backend.model.ref,
            backend.name,
            backend.precision,
            reason,
        )

    async def reload(self, *, force: bool = False) -> bool:
        """Load the model the catalog now selects if it differs from the running one; return if swapped.

        Runs off the loop while ticks go on; never raises: a failure keeps the running model. `force`
        reloads even an unchanged model (after TensorRT failed in a forward pass).
        """
        current = self.backend.model
        try:
            loaded = await self._load(current=current, force=force)
        except Exception as exc:  # noqa: BLE001 - logged (with its traceback when unexpected) in _report
            # A broken new model must not take forecasting down: keep the running one.
            unexpected = None if isinstance(exc, ModelError) else exc
            problem = str(exc) if unexpected is None else describe(exc)
            self._report(
                logging.ERROR, f"model reload: {problem}; keeping {current.ref}", exc_info=unexpected
            )
            return False
        if loaded is None:
            return False
        backend, reason = loaded
        async with self._swap_lock:
            old, self._backend = self._backend, backend
            self._set_running(backend, reason)
            if old is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, close_quietly, old)
        LOGGER.log(
            self._choice_level(backend),
            "model reload: now forecasting with %s on %s (was %s): %s",
            backend.model.ref,
            backend.name,
            current.ref,
            reason,
        )
        return True

    def observe(
        self, *, bed: str, key: str, value: float | None, unit: str, valid: bool, at_s: float
    ) -> None:
        """Feed one observation of a bed (wall-clock epoch seconds)."""
        self._histories[bed].observe(key=key, value=value, unit=unit, valid=valid, at_s=at_s)

    def rejected(self, *, bed: str) -> dict[str, int]:
        """Return how many observations of a bed were not used, by reason."""
        return dict(self._histories[bed].rejected)

    async def tick(self, *, now_s: float) -> list[BedForecast]:
        """Forecast every bed with one batched inference per MAX_BATCH beds.

        A forward pass that raises is no crash: its beds get no forecast this tick, the reason says
        why, and a TensorRT failure makes `needs_fallback` true.
        """
        async with self._swap_lock:
            backend = self.backend
            windows = {bed: history.window(now_s=now_s) for bed, history in self._histories.items()}
            fresh = {bed: window.fresh_signals() for bed, window in windows.items()}
            to_run = [bed for bed in windows if any(fresh[bed].values())]
            outputs: dict[str, tuple[BatchOutput, int]] = {}
            failed: str | None = None
            loop = asyncio.get_running_loop()
            for start in range(0, len(to_run), MAX_BATCH):
                chunk = to_run[start : start + MAX_BATCH]
                batch = _stack([windows[bed] for bed in chunk])
                try:
                    output = await loop.run_in_executor(self._executor, backend.infer, batch)
                except Exception as exc:  # noqa: BLE001 - logged with its traceback in _report
                    failed = describe(exc)
                    self._report(
                        logging.ERROR,
                        f"{backend.name} inference of {backend.model.ref} failed: {failed}",
                        exc_info=exc,
                    )
                    if backend.name == "tensorrt":
                        self._tensorrt_failed = failed
                    break
                for row, bed in enumerate(chunk):
                    outputs[bed] = (output, row)
        return [
            _bed_forecast(
                bed=bed,
                window=window,
                fresh=fresh[bed],
                output=outputs.get(bed),
                now_s=now_s,
                backend=backend,
                failed=failed,
            )
            for bed, window in windows.items()
        ]

    async def close(self) -> None:
        """Release the backend and stop the inference thread (a load still running is discarded)."""
        self._closed = True
        async with self._swap_lock:
            if self._backend is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._backend.close)
                self._backend = None
        self._executor.shutdown(wait=True)


def _stack(windows: list[FeatureWindow]) -> BatchInput:
    return BatchInput(
        values=np.stack([w.values for w in windows]),
        mask=np.stack([w.mask for w in windows]),
        context=np.stack([w.context for w in windows]),
        context_mask=np.stack([w.context_mask for w in windows]),
    )


def _bed_forecast(
    *,
    bed: str,
    window: FeatureWindow,
    fresh: dict[str, bool],
    output: tuple[BatchOutput, int] | None,
    now_s: float,
    backend: EngineBackend,
    failed: str | None,
) -> BedForecast:
    unavailable: dict[str, str] = {}
    signals: list[SignalOutlook] = []
    events: dict[str, tuple[float, ...]] = {}
    ages = window.last_valid_age_steps()
    step_offset_s = now_s % STEP_S
    for index, signal in enumerate(SIGNALS):
        if fresh[signal.key] and output is None and failed is not None:
            unavailable[signal.key] = f"inference failed: {failed}"
            continue
        if not fresh[signal.key] or output is None:
            age = ages[signal.key]
            unavailable[signal.key] = (
                f"no valid {signal.key} in the last {window.mask.shape[0]} min"
                if age is None
                else f"last valid {signal.key} is {age} min old (needs one within {FRESH_WITHIN_STEPS} min)"
            )
            continue
        batch_output, row = output
        valid_rows = np.flatnonzero(window.mask[:, index])
        last_row = int(valid_rows[-1])
        quantiles = batch_output.quantiles[row, index]
        if not np.all(np.isfinite(quantiles[: len(HORIZONS_MIN)])):
            # An overflowing engine (FP16) must not put NaN or Infinity on the wire: JSON has neither.
            unavailable[signal.key] = f"the model gave a non-finite {signal.key} forecast"
            continue
        signals.append(
            SignalOutlook(
                key=signal.key,
                unit=signal.unit,
                last_value=float(window.values[last_row, index]),
                last_age_s=float((window.mask.shape[0] - 1 - last_row) * STEP_S + step_offset_s),
                valid_minutes=int(valid_rows.size),
                quantiles=tuple(
                    (float(q[_P10]), float(q[_P50]), float(q[_P90])) for q in quantiles[: len(HORIZONS_MIN)]
                ),
            )
        )
    for index, event in enumerate(EVENTS):
        if output is None or not fresh[event.signal]:
            unavailable[event.key] = (
                f"inference failed: {failed}"
                if fresh[event.signal] and failed is not None
                else f"needs a fresh {event.signal}"
            )
            continue
        batch_output, row = output
        probabilities = batch_output.event_probability[row, index]
        if not np.all(np.isfinite(probabilities)):
            unavailable[event.key] = f"the model gave a non-finite {event.key} probability"
            continue
        events[event.key] = tuple(float(p) for p in probabilities)
    return BedForecast(
        bed=bed,
        made_at_s=now_s,
        model=backend.model,
        backend=backend.name,
        precision=backend.precision,
        signals=tuple(signals),
        events=events,
        unavailable=unavailable,
    )
