"""The forecasting runtime: every tick, one batched inference for all beds, off the event loop.

The loop thread feeds observations into each bed's `BedHistory` (cheap, incremental) and builds the
windows at each tick; the forward pass runs on one dedicated inference thread, which also owns the
backend (a CUDA context belongs to a thread). A new model version is picked up without a restart:
`reload()` (SIGHUP, or the periodic catalog check) loads it on the inference thread and swaps it in
between ticks; if loading fails, the running model stays and the failure is logged.
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
from engines.backends import open_backend
from engines.catalog import SHIPPED_MODELS_DIR, InstalledModel, ModelError, find_models, select_model
from engines.features import BedHistory, FeatureWindow
from engines.spec import EVENTS, FRESH_WITHIN_STEPS, HORIZONS_MIN, MAX_BATCH, QUANTILES, SIGNALS, STEP_S

LOGGER = logging.getLogger(__name__)

_P10, _P50, _P90 = (QUANTILES.index(q) for q in (0.1, 0.5, 0.9))


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
    ) -> None:
        self._histories = {bed: BedHistory() for bed in beds}
        self._backend_choice: BackendName = backend
        self._model_ref = model_ref
        self._extra_models_dir = extra_models_dir
        self._cache_dir = cache_dir
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engines")
        self._backend: EngineBackend | None = None
        self.choice_reason = ""

    @property
    def backend(self) -> EngineBackend:
        """Return the loaded backend (after `start`)."""
        if self._backend is None:
            raise RuntimeError("the forecasting runtime has not started")
        return self._backend

    def _installed(self) -> list[InstalledModel]:
        models = find_models(SHIPPED_MODELS_DIR)
        if self._extra_models_dir is not None and self._extra_models_dir.is_dir():
            models += find_models(self._extra_models_dir)
        return models

    def _load(self) -> tuple[EngineBackend, str]:
        model = select_model(self._installed(), ref=self._model_ref)
        return open_backend(model=model, backend=self._backend_choice, cache_dir=self._cache_dir)

    async def start(self) -> None:
        """Load the configured model on the inference thread; raise ModelError if none can be loaded."""
        loop = asyncio.get_running_loop()
        backend, self.choice_reason = await loop.run_in_executor(self._executor, self._load)
        self._backend = backend
        LOGGER.info(
            "forecasting with %s on %s (%s): %s",
            backend.model.ref,
            backend.name,
            backend.precision,
            self.choice_reason,
        )

    async def reload(self) -> bool:
        """Load the model the catalog now selects if it differs from the running one; return if swapped."""
        loop = asyncio.get_running_loop()
        current = self.backend.model
        try:
            candidate = select_model(self._installed(), ref=self._model_ref)
        except ModelError as exc:
            LOGGER.error("model reload: %s; keeping %s", exc, current.ref)
            return False
        if candidate.ref == current.ref and candidate.card.onnx_sha256 == current.card.onnx_sha256:
            return False
        try:
            backend, reason = await loop.run_in_executor(
                self._executor,
                lambda: open_backend(
                    model=candidate, backend=self._backend_choice, cache_dir=self._cache_dir
                ),
            )
        except Exception:
            # A broken new model must not take forecasting down: keep the running one.
            LOGGER.exception("model reload: loading %s failed; keeping %s", candidate.ref, current.ref)
            return False
        old, self._backend, self.choice_reason = self._backend, backend, reason
        if old is not None:
            await loop.run_in_executor(self._executor, old.close)
        LOGGER.info("model reload: now forecasting with %s (was %s): %s", candidate.ref, current.ref, reason)
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
        """Forecast every bed with one batched inference per MAX_BATCH beds."""
        backend = self.backend
        windows = {bed: history.window(now_s=now_s) for bed, history in self._histories.items()}
        fresh = {bed: window.fresh_signals() for bed, window in windows.items()}
        to_run = [bed for bed in windows if any(fresh[bed].values())]
        outputs: dict[str, tuple[BatchOutput, int]] = {}
        loop = asyncio.get_running_loop()
        for start in range(0, len(to_run), MAX_BATCH):
            chunk = to_run[start : start + MAX_BATCH]
            batch = _stack([windows[bed] for bed in chunk])
            output = await loop.run_in_executor(self._executor, backend.infer, batch)
            for row, bed in enumerate(chunk):
                outputs[bed] = (output, row)
        forecasts = []
        for bed, window in windows.items():
            forecasts.append(
                _bed_forecast(
                    bed=bed,
                    window=window,
                    fresh=fresh[bed],
                    output=outputs.get(bed),
                    now_s=now_s,
                    backend=backend,
                )
            )
        return forecasts

    async def close(self) -> None:
        """Release the backend and stop the inference thread."""
        loop = asyncio.get_running_loop()
        if self._backend is not None:
            await loop.run_in_executor(self._executor, self._backend.close)
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
) -> BedForecast:
    unavailable: dict[str, str] = {}
    signals: list[SignalOutlook] = []
    events: dict[str, tuple[float, ...]] = {}
    ages = window.last_valid_age_steps()
    step_offset_s = now_s % STEP_S
    for index, signal in enumerate(SIGNALS):
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
            unavailable[event.key] = f"needs a fresh {event.signal}"
            continue
        batch_output, row = output
        events[event.key] = tuple(float(p) for p in batch_output.event_probability[row, index])
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
