"""Forecast bodies: the one-call build equals the payload built model by model, and is valid JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.contract import encode_message
from edge.forecasting import forecast_body
from edge.model import (
    EventForecast,
    EventProbability,
    ForecastBody,
    ForecastMessage,
    ForecastModelRef,
    HorizonForecast,
    SignalForecast,
)
from engines.catalog import InstalledModel
from engines.runtime import BedForecast, SignalOutlook
from engines.spec import EVENTS, HORIZONS_MIN, SIGNALS
from engines.testing import build_test_model

NOW_S = 1_764_000_000.0 + 30.0


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> InstalledModel:
    return build_test_model(tmp_path_factory.mktemp("models"), model_id="body-test", default=False)


def _model_by_model(forecast: BedForecast) -> ForecastBody:
    """The body built the way the contract reads: one validated constructor per nested model."""
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
            s.key: SignalForecast(
                unit=s.unit,
                source=s.source,
                last_value=s.last_value,
                last_age_s=s.last_age_s,
                valid_minutes=s.valid_minutes,
                horizons=[
                    HorizonForecast(horizon_min=h, p10=p10, p50=p50, p90=p90)
                    for h, (p10, p50, p90) in zip(HORIZONS_MIN, s.quantiles, strict=True)
                ],
            )
            for s in forecast.signals
        },
        events={
            key: EventForecast(
                description=next(e.description for e in EVENTS if e.key == key),
                horizons=[
                    EventProbability(horizon_min=h, probability=p)
                    for h, p in zip(HORIZONS_MIN, probabilities, strict=True)
                ],
            )
            for key, probabilities in forecast.events.items()
        },
        unavailable=dict(forecast.unavailable),
    )


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1), backend=st.sampled_from(("onnxruntime", "tensorrt"))
)
def test_a_body_equals_the_model_by_model_build_and_encodes_to_a_valid_message(
    model: InstalledModel, seed: int, backend: str
) -> None:
    rng = np.random.default_rng(seed)
    signals = tuple(
        SignalOutlook(
            key=s.key,
            source=str(rng.choice(("pr", s.key))) if s.key == "hr" else s.key,
            unit=s.unit,
            last_value=round(float(rng.uniform(s.minimum, s.maximum)), 3),
            last_age_s=round(float(rng.uniform(0, 300)), 1),
            valid_minutes=int(rng.integers(1, 31)),
            quantiles=tuple(
                (round(float(a), 3), round(float(b), 3), round(float(c), 3))
                for a, b, c in np.sort(rng.normal(80, 20, size=(len(HORIZONS_MIN), 3)), axis=1)
            ),
        )
        for s in SIGNALS
        if rng.random() < 0.6
    )
    forecast = BedForecast(
        bed="bed-07",
        made_at_s=NOW_S + float(rng.uniform(0, 1000)),
        model=model,
        backend=backend,
        precision="fp16" if backend == "tensorrt" else "fp32",
        signals=signals,
        events={
            e.key: tuple(round(float(p), 4) for p in rng.uniform(0, 1, size=len(HORIZONS_MIN)))
            for e in EVENTS
            if rng.random() < 0.6
        },
        unavailable={s.key: f"no valid {s.key} in the last 30 min" for s in SIGNALS if rng.random() < 0.3},
    )
    body = forecast_body(forecast)
    expected = _model_by_model(forecast)
    assert body == expected
    ts = datetime(2026, 12, 1, 5, 0, tzinfo=UTC)
    payload = encode_message(body, appliance="icu-a", bed="bed-07", session=3, seq=9, ts=ts)
    assert payload == encode_message(expected, appliance="icu-a", bed="bed-07", session=3, seq=9, ts=ts)
    message = ForecastMessage.model_validate_json(payload)  # the published schema's model
    assert message.signals == body.signals
    assert message.events == body.events


def test_a_body_refuses_a_probability_outside_zero_to_one(model: InstalledModel) -> None:
    """The runtime clamps; should a value ever slip through, validation stops it before the wire."""
    forecast = BedForecast(
        bed="bed-07",
        made_at_s=NOW_S,
        model=model,
        backend="onnxruntime",
        precision="fp32",
        signals=(),
        events={"spo2_below_90": (0.1, 0.2, 0.3, 1.0001)},
        unavailable={},
    )
    with pytest.raises(ValueError, match="less than or equal to 1"):
        forecast_body(forecast)


def test_bodies_share_the_model_reference_of_a_tick(model: InstalledModel) -> None:
    forecasts = [
        BedForecast(
            bed=bed,
            made_at_s=NOW_S,
            model=model,
            backend="onnxruntime",
            precision="fp32",
            signals=(),
            events={},
            unavailable={},
        )
        for bed in ("a", "b")
    ]
    first, second = (forecast_body(f) for f in forecasts)
    assert first.model is second.model
    assert first.model == ForecastModelRef(
        id="body-test", version="1.0.0", kind=model.card.kind, backend="onnxruntime", precision="fp32"
    )
