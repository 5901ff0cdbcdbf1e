"""Forecasts into the contract: engines speak arrays and dataclasses, the ward reads ForecastBody."""

from __future__ import annotations

from datetime import UTC, datetime

from edge.model import (
    EventForecast,
    EventProbability,
    ForecastBody,
    ForecastModelRef,
    HorizonForecast,
    SignalForecast,
)
from engines.runtime import BedForecast
from engines.spec import EVENTS, HORIZONS_MIN

_EVENT_DESCRIPTIONS = {event.key: event.description for event in EVENTS}


def forecast_body(forecast: BedForecast) -> ForecastBody:
    """Return the payload of one bed's forecast."""
    card = forecast.model.card
    return ForecastBody(
        model=ForecastModelRef(
            id=card.id,
            version=card.version,
            kind=card.kind,
            backend=forecast.backend,
            precision=forecast.precision,
        ),
        made_at=datetime.fromtimestamp(forecast.made_at_s, tz=UTC),
        horizons_min=list(HORIZONS_MIN),
        signals={
            signal.key: SignalForecast(
                unit=signal.unit,
                last_value=round(signal.last_value, 3),
                last_age_s=round(signal.last_age_s, 1),
                valid_minutes=signal.valid_minutes,
                horizons=[
                    HorizonForecast(horizon_min=h, p10=round(p10, 3), p50=round(p50, 3), p90=round(p90, 3))
                    for h, (p10, p50, p90) in zip(HORIZONS_MIN, signal.quantiles, strict=True)
                ],
            )
            for signal in forecast.signals
        },
        events={
            key: EventForecast(
                description=_EVENT_DESCRIPTIONS[key],
                horizons=[
                    EventProbability(horizon_min=h, probability=round(min(1.0, max(0.0, p)), 4))
                    for h, p in zip(HORIZONS_MIN, probabilities, strict=True)
                ],
            )
            for key, probabilities in forecast.events.items()
        },
        unavailable=dict(forecast.unavailable),
    )
