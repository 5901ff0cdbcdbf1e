"""Forecasts into the contract: engines speak arrays and dataclasses, the ward reads ForecastBody.

A tick builds one body per bed, 64 at a ward's full size, on the event loop: each body is one plain
dict validated by pydantic in one call (its core builds the nested models), not a constructor call
per nested model. The parts every bed of a tick shares (the model reference, the timestamp, the
horizons, the event descriptions) are built once, and the runtime has already rounded and clamped
every number, for all beds at once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from edge.model import ForecastBody, ForecastModelRef
from engines.runtime import BedForecast
from engines.spec import EVENTS, HORIZONS_MIN

_EVENT_DESCRIPTIONS = {event.key: event.description for event in EVENTS}
_VALIDATE = ForecastBody.model_validate


@lru_cache(maxsize=8)
def _model_ref(model_id: str, version: str, kind: str, backend: str, precision: str) -> ForecastModelRef:
    """Return the (immutable) model reference shared by every body of the same model and backend."""
    return ForecastModelRef(id=model_id, version=version, kind=kind, backend=backend, precision=precision)


@lru_cache(maxsize=4)
def _made_at(made_at_s: float) -> datetime:
    """Return the (immutable) timestamp every bed of a tick shares."""
    return datetime.fromtimestamp(made_at_s, tz=UTC)


def forecast_body(forecast: BedForecast) -> ForecastBody:
    """Return the payload of one bed's forecast."""
    signals: dict[str, Any] = {
        signal.key: {
            "unit": signal.unit,
            "source": signal.source,
            "last_value": signal.last_value,
            "last_age_s": signal.last_age_s,
            "valid_minutes": signal.valid_minutes,
            "horizons": [
                {"horizon_min": h, "p10": p10, "p50": p50, "p90": p90}
                for h, (p10, p50, p90) in zip(HORIZONS_MIN, signal.quantiles, strict=True)
            ],
        }
        for signal in forecast.signals
    }
    events: dict[str, Any] = {
        key: {
            "description": _EVENT_DESCRIPTIONS[key],
            "horizons": [
                {"horizon_min": h, "probability": p} for h, p in zip(HORIZONS_MIN, probabilities, strict=True)
            ],
        }
        for key, probabilities in forecast.events.items()
    }
    card = forecast.model.card
    return _VALIDATE(
        {
            "model": _model_ref(card.id, card.version, card.kind, forecast.backend, forecast.precision),
            "made_at": _made_at(forecast.made_at_s),
            "horizons_min": HORIZONS_MIN,
            "signals": signals,
            "events": events,
            "unavailable": forecast.unavailable,
        }
    )
