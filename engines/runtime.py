"""The forecasting runtime: every tick, one batched inference for all beds.

A tick is a few array operations whatever the number of beds: every bed's window comes from one ring
(`WardHistory`) in one gather, the model runs once per MAX_BATCH beds, and the outlooks (freshness,
last values, the NaN/Infinity checks) are computed for all beds at once; only the assembly of each
bed's `BedForecast` from plain Python lists is per bed.

Threads (who owns what):
- The event loop (the caller) owns the bed histories, builds the windows at each tick and swaps
  backends; it never waits for a load. It runs onnxruntime's forward pass itself: on the CPU a
  64-bed pass takes well under a millisecond, less than the hop to a thread and back.
- One inference thread (the single-worker executor `engines`) runs every TensorRT forward pass (a GPU
  stack that hangs must never stop the loop, and with it the vitals) and closes backends that were
  swapped out.
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
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt

from drivers.plausibility import TABLE
from engines.backend import BackendName, BatchInput, EngineBackend
from engines.backends import abandon, close_quietly, in_daemon_thread, open_backend
from engines.catalog import SHIPPED_MODELS_DIR, InstalledModel, ModelError, scan_models, select_model
from engines.features import FeatureWindows, IntArray, WardHistory
from engines.onnx_backend import OnnxRuntimeBackend
from engines.spec import (
    EVENTS,
    FRESH_WITHIN_STEPS,
    HORIZONS_MIN,
    MAX_BATCH,
    QUANTILES,
    SIGNAL_KEYS,
    SIGNALS,
    STAND_INS,
    STEP_S,
    WINDOW_STEPS,
)
from engines.tensorrt_backend import describe

LOGGER = logging.getLogger(__name__)

_REPORTED_QUANTILES = [QUANTILES.index(q) for q in (0.1, 0.5, 0.9)]
"""Where p10, p50 and p90 sit on the model's quantile axis."""
_EVENT_SIGNALS = [SIGNAL_KEYS.index(event.signal) for event in EVENTS]
_POSSIBLE_LOW = np.array([TABLE[s.key].minimum for s in SIGNALS], dtype=np.float64).reshape(1, -1, 1, 1)
_POSSIBLE_HIGH = np.array([TABLE[s.key].maximum for s in SIGNALS], dtype=np.float64).reshape(1, -1, 1, 1)
"""What a signal can physically be (the plausibility table): a forecast quantile is clipped into it, so an
interval that a noisy window widens never says SpO2 109 % or a negative rate, whatever the model."""
_STAND_IN_KEYS = tuple(
    next((s.source.key for s in STAND_INS if s.signal == signal.key), signal.key) for signal in SIGNALS
)
"""Per signal, the key of its stand-in source (the signal's own key where it has none)."""
_NO_STAND_IN = tuple(
    "" if stand_in == signal.key else f"; no {stand_in} within {FRESH_WITHIN_STEPS} min to stand in either"
    for signal, stand_in in zip(SIGNALS, _STAND_IN_KEYS, strict=True)
)
"""What a signal's not-fresh reason adds when it has a stand-in that was not fresh either."""
VALUE_DECIMALS = 3
"""Forecasts and last values are reported to 0.001 of their unit (float32 carries ~7 digits, the rest
is arithmetic noise); ages to 0.1 s, probabilities to 0.0001."""
AGE_DECIMALS = 1
PROBABILITY_DECIMALS = 4
_INLINE_BACKENDS = frozenset({"onnxruntime"})
"""Backends whose forward pass runs on the event loop: CPU only, nothing that can hang in a driver."""

DEFAULT_LOAD_TIMEOUT_S = 600.0
"""How long one TensorRT load may take (two plan builds on a Jetson) before onnxruntime runs instead."""
STATUS_MAX_CHARS = 300
"""The status line is for `systemctl status`: a long driver message is cut here."""


class EnginesUnavailable(Exception):
    """No model could be loaded (the message says why); the daemon runs without forecasts."""


class SignalOutlook(NamedTuple):
    """One signal's forecast for one bed (a named tuple: immutable, and cheap at 5 per bed per tick)."""

    key: str
    source: str
    """The key whose readings the window held: the signal's own, or its stand-in's (pr for hr)."""
    unit: str
    last_value: float
    last_age_s: float
    valid_minutes: int
    quantiles: tuple[tuple[float, float, float], ...]
    """(p10, p50, p90) per horizon, in HORIZONS_MIN order (VALUE_DECIMALS)."""


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
    """Event key -> probability in [0, 1] per horizon (only events the model estimates and whose signal
    is fresh)."""
    unavailable: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class TickPhases:
    """How long the phases of the last tick took, in nanoseconds (for the benchmark and diagnostics)."""

    windows_ns: int
    inference_ns: int
    """Every forward pass, with the hop to the inference thread where there is one."""
    outlooks_ns: int


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
        self._history = WardHistory(beds=beds)
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
        self.last_tick: TickPhases | None = None

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
        card = backend.model.card
        if card.events_estimated is None:
            self._report(
                logging.WARNING,
                f"{backend.model.ref}: its card lists no events_estimated: read as estimating no event, "
                "so no event probability is published and no predictive alarm can fire",
            )
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
        self._history.observe(bed=bed, key=key, value=value, unit=unit, valid=valid, at_s=at_s)

    def rejected(self, *, bed: str) -> dict[str, int]:
        """Return how many observations of a bed were not used, by reason."""
        return dict(self._history.rejected(bed=bed))

    async def tick(self, *, now_s: float) -> list[BedForecast]:
        """Forecast every bed with one batched inference per MAX_BATCH beds.

        A forward pass that raises is no crash: its beds get no forecast this tick, the reason says
        why, and a TensorRT failure makes `needs_fallback` true.
        """
        started_ns = time.perf_counter_ns()
        async with self._swap_lock:
            backend = self.backend
            windows = self._history.windows(now_s=now_s)
            fresh = windows.fresh()
            windowed_ns = time.perf_counter_ns()
            outputs = await self._infer(backend, windows=windows, rows=np.flatnonzero(fresh.any(axis=1)))
            inferred_ns = time.perf_counter_ns()
        forecasts = _outlooks(
            beds=self._history.beds,
            windows=windows,
            fresh=fresh,
            outputs=outputs,
            now_s=now_s,
            backend=backend,
        )
        self.last_tick = TickPhases(
            windows_ns=windowed_ns - started_ns,
            inference_ns=inferred_ns - windowed_ns,
            outlooks_ns=time.perf_counter_ns() - inferred_ns,
        )
        return forecasts

    async def _infer(self, backend: EngineBackend, *, windows: FeatureWindows, rows: IntArray) -> _Outputs:
        """Run the beds in rows, MAX_BATCH at a time; stop at the first forward pass that fails."""
        outputs = _Outputs.empty(beds=windows.beds)
        inline = backend.name in _INLINE_BACKENDS
        loop = asyncio.get_running_loop()
        for start in range(0, rows.size, MAX_BATCH):
            chunk = rows[start : start + MAX_BATCH]
            batch = _batch(windows, chunk)
            try:
                if inline:
                    output = backend.infer(batch)
                else:
                    output = await loop.run_in_executor(self._executor, backend.infer, batch)
            except Exception as exc:  # noqa: BLE001 - logged with its traceback in _report
                outputs.failed = describe(exc)
                self._report(
                    logging.ERROR,
                    f"{backend.name} inference of {backend.model.ref} failed: {outputs.failed}",
                    exc_info=exc,
                )
                if backend.name == "tensorrt":
                    self._tensorrt_failed = outputs.failed
                break
            outputs.ran[chunk] = True
            outputs.quantiles[chunk] = output.quantiles[:, :, : len(HORIZONS_MIN)][..., _REPORTED_QUANTILES]
            outputs.events[chunk] = output.event_probability
        return outputs

    async def close(self) -> None:
        """Release the backend and stop the inference thread (a load still running is discarded)."""
        self._closed = True
        async with self._swap_lock:
            if self._backend is not None:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._backend.close)
                self._backend = None
        self._executor.shutdown(wait=True)


_Quantiles = tuple[tuple[float, float, float], ...]


@dataclass(slots=True, kw_only=True)
class _Outputs:
    """One tick's model outputs for every bed (rows of beds that did not run stay unset)."""

    ran: npt.NDArray[np.bool_]
    """[beds]: whether the bed's forward pass ran."""
    quantiles: npt.NDArray[np.float32]
    """[beds, signals, horizons, (p10, p50, p90)]."""
    events: npt.NDArray[np.float32]
    """[beds, events, horizons]."""
    failed: str | None = None
    """Why a forward pass failed (the beds after it did not run)."""

    @classmethod
    def empty(cls, *, beds: int) -> _Outputs:
        return cls(
            ran=np.zeros(beds, dtype=np.bool_),
            quantiles=np.zeros(
                (beds, len(SIGNALS), len(HORIZONS_MIN), len(_REPORTED_QUANTILES)), dtype=np.float32
            ),
            events=np.zeros((beds, len(EVENTS), len(HORIZONS_MIN)), dtype=np.float32),
        )


def _batch(windows: FeatureWindows, rows: IntArray) -> BatchInput:
    if rows.size == windows.beds:  # every bed (rows are sorted and unique): no copy
        return BatchInput(
            values=windows.values,
            mask=windows.mask,
            context=windows.context,
            context_mask=windows.context_mask,
        )
    return BatchInput(
        values=windows.values[rows],
        mask=windows.mask[rows],
        context=windows.context[rows],
        context_mask=windows.context_mask[rows],
    )


def _as_lists(array: npt.NDArray[Any]) -> Any:
    """Return an array as nested Python lists of Python scalars (numpy converts in one call)."""
    return array.tolist()


def _outlooks(
    *,
    beds: tuple[str, ...],
    windows: FeatureWindows,
    fresh: npt.NDArray[np.bool_],
    outputs: _Outputs,
    now_s: float,
    backend: EngineBackend,
) -> list[BedForecast]:
    """Turn a tick's outputs into per-bed forecasts: array operations for all beds, then plain lists.

    Values are rounded here for all beds, in float64: a float32 value times 10**decimals is exact
    there, so a rounded forecast, last value or probability equals Python's `round` of it (an age, a
    float64 sum, may differ from it by one in its last digit at a near-tie).
    """
    steps_ago = windows.last_valid_steps_ago()
    last_rows = np.where(steps_ago >= 0, WINDOW_STEPS - 1 - steps_ago, 0)
    last_values = np.take_along_axis(windows.values, last_rows[:, None, :], axis=1)[:, 0, :]
    last_ages_s = np.round(steps_ago * STEP_S + now_s % STEP_S, AGE_DECIMALS)
    finite_signals = np.asarray(np.isfinite(outputs.quantiles).all(axis=(2, 3)))
    finite_events = np.asarray(np.isfinite(outputs.events).all(axis=2))
    quantiles = np.round(
        np.clip(outputs.quantiles.astype(np.float64), _POSSIBLE_LOW, _POSSIBLE_HIGH), VALUE_DECIMALS
    )
    probabilities = np.round(np.clip(outputs.events.astype(np.float64), 0.0, 1.0), PROBABILITY_DECIMALS)
    # One conversion to Python objects per array, never one per scalar in the loop below.
    fresh_rows: list[list[bool]] = _as_lists(fresh)
    ran_rows: list[bool] = _as_lists(outputs.ran)
    steps_ago_rows: list[list[int]] = _as_lists(steps_ago)
    last_value_rows: list[list[float]] = _as_lists(np.round(last_values.astype(np.float64), VALUE_DECIMALS))
    last_age_rows: list[list[float]] = _as_lists(last_ages_s)
    valid_steps_rows: list[list[int]] = _as_lists(windows.valid_steps())
    quantile_rows: list[list[list[list[float]]]] = _as_lists(quantiles)
    finite_signal_rows: list[list[bool]] = _as_lists(finite_signals)
    finite_event_rows: list[list[bool]] = _as_lists(finite_events)
    event_rows: list[list[list[float]]] = _as_lists(probabilities)
    stand_in_rows: list[list[bool]] = _as_lists(windows.stand_in)
    estimated = backend.model.events_estimated
    not_estimated = f"model {backend.model.ref} has no event estimate that beats the current-value baseline"
    events_estimated = [event.key in estimated for event in EVENTS]
    failed = outputs.failed
    forecasts: list[BedForecast] = []
    for row, bed in enumerate(beds):
        unavailable: dict[str, str] = {}
        signals: list[SignalOutlook] = []
        events: dict[str, tuple[float, ...]] = {}
        ran, bed_fresh, bed_stand_in = ran_rows[row], fresh_rows[row], stand_in_rows[row]
        for index, signal in enumerate(SIGNALS):
            key = signal.key
            if bed_fresh[index] and not ran and failed is not None:
                unavailable[key] = f"inference failed: {failed}"
            elif not bed_fresh[index] or not ran:
                age = steps_ago_rows[row][index]
                unavailable[key] = (
                    f"no valid {key} in the last {WINDOW_STEPS} min"
                    if age < 0
                    else f"last valid {key} is {age} min old (needs one within {FRESH_WITHIN_STEPS} min)"
                ) + _NO_STAND_IN[index]
            elif not finite_signal_rows[row][index]:
                # An overflowing engine (FP16) must not put NaN or Infinity on the wire: JSON has neither.
                unavailable[key] = f"the model gave a non-finite {key} forecast"
            else:
                signals.append(
                    SignalOutlook(
                        key=key,
                        source=_STAND_IN_KEYS[index] if bed_stand_in[index] else key,
                        unit=signal.unit,
                        last_value=last_value_rows[row][index],
                        last_age_s=last_age_rows[row][index],
                        valid_minutes=valid_steps_rows[row][index],
                        quantiles=cast(_Quantiles, tuple(map(tuple, quantile_rows[row][index]))),
                    )
                )
        for index, event in enumerate(EVENTS):
            signal_fresh = bed_fresh[_EVENT_SIGNALS[index]]
            if not events_estimated[index]:
                unavailable[event.key] = not_estimated
            elif not ran or not signal_fresh:
                unavailable[event.key] = (
                    f"inference failed: {failed}"
                    if signal_fresh and failed is not None
                    else f"needs a fresh {event.signal}"
                )
            elif not finite_event_rows[row][index]:
                unavailable[event.key] = f"the model gave a non-finite {event.key} probability"
            else:
                events[event.key] = tuple(event_rows[row][index])
        forecasts.append(
            BedForecast(
                bed=bed,
                made_at_s=now_s,
                model=backend.model,
                backend=backend.name,
                precision=backend.precision,
                signals=tuple(signals),
                events=events,
                unavailable=unavailable,
            )
        )
    return forecasts
