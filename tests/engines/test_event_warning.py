"""Acceptance (issue 9): P(SpO2 < 90 %) reaches the alarm threshold >= 2 min before SpO2 crosses 90 %.

The scenario engine's patients are driven at a minute time scale through the daemon's path: every
10 s an observation per signal into `ForecastRuntime` (engines.features' window building), a tick
each minute running the ONNX model on onnxruntime through the engines backend, the probability the
predictive alarm judges (the highest over the horizons it counts) against its threshold from
edge.alarms.profile. `model` runs each check on a model built here with the real event-head fit and
on the shipped default model; the shipped default is checked once its card declares
`events_estimated` (the integration of the event head), and then it must pass like the fitted one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from drivers.scenario import DesaturationPatient, DeterioratingPatient, Patient, SteadyPatient  # noqa: E402
from edge.alarms.profile import PredictiveConfig  # noqa: E402
from engines.catalog import ModelCard, find_models, select_model, sha256_file, write_manifest  # noqa: E402
from engines.runtime import ForecastRuntime  # noqa: E402
from engines.spec import EVENTS, HORIZONS_MIN  # noqa: E402
from engines.synthetic import synthetic_patients  # noqa: E402
from engines.train.events import WithEvents, fit_event_head  # noqa: E402
from engines.train.modules import PersistenceBaseline  # noqa: E402
from engines.train.pipeline import export_onnx  # noqa: E402

PREDICTIVE = PredictiveConfig()
EARLY_S = 120.0
BED = "bed-1"
START_S = 1_800_000_000.0
"""A minute boundary (epoch seconds)."""
OBSERVE_EVERY_S = 10
FEEDS = (
    ("hr", "hr", "/min"),
    ("spo2", "spo2", "%"),
    ("map", "abp_mean", "mm[Hg]"),
    ("rr", "rr", "/min"),
    ("etco2", "etco2", "mm[Hg]"),
    ("fio2", "fio2", "%"),
    ("peep", "peep", "mbar"),
)
"""(forecast key, scenario key, unit) fed to the runtime, as the twin hands them on."""
FITTED_ID = "event-head-test"


@dataclass(frozen=True, slots=True)
class ModelUnderTest:
    """Where the runtime finds the model: an extra models folder and a reference, or the shipped default."""

    models_dir: Path | None
    ref: str | None
    estimated: frozenset[str]
    """The events the model declares it estimates."""


@pytest.fixture(scope="module")
def fitted_model(tmp_path_factory: pytest.TempPathFactory) -> ModelUnderTest:
    """Fit the event head (real fit, small training set: seconds), export it with persistence, install it."""
    torch.set_num_threads(1)
    train = synthetic_patients(count=16, minutes=720, seed=7)
    head = fit_event_head(train, seed=7, scenario_count=48)
    model = WithEvents(PersistenceBaseline().eval(), head, estimated={e.key for e in EVENTS}).eval()
    root = tmp_path_factory.mktemp("models")
    directory = root / FITTED_ID / "1.0.0"
    export_onnx(model, directory / "model.onnx")
    card = ModelCard(
        id=FITTED_ID,
        version="1.0.0",
        kind="learned",
        default=False,
        summary="Persistence quantiles with the trend event head, fitted in the test.",
        inputs="engines.spec inputs",
        outputs="engines.spec outputs",
        training_data="16 synthetic patients (seed 7) and 48 scenario-engine patients (seed 7)",
        evaluation_data="none",
        limits_of_use="Tests only; never for patients.",
        event_definitions={e.key: e.description for e in EVENTS},
        events_estimated=[e.key for e in EVENTS],
        seed=7,
        onnx_sha256=sha256_file(directory / "model.onnx"),
        size_bytes=(directory / "model.onnx").stat().st_size,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    (directory / "card.json").write_text(card.model_dump_json(indent=2), encoding="utf-8")
    write_manifest(directory)
    return ModelUnderTest(
        models_dir=root, ref=f"{FITTED_ID}@1.0.0", estimated=frozenset(e.key for e in EVENTS)
    )


def shipped_default() -> ModelUnderTest:
    """Return the shipped default model, or skip while its card does not declare its event estimates."""
    model = select_model(find_models())
    declared = json.loads((model.onnx_path.parent / "card.json").read_text(encoding="utf-8"))
    if "events_estimated" not in declared:
        pytest.skip(
            f"the shipped default {model.ref} declares no events_estimated: event head not integrated"
        )
    return ModelUnderTest(models_dir=None, ref=None, estimated=frozenset(declared["events_estimated"]))


@pytest.fixture(params=["fitted", "shipped-default"])
def model(request: pytest.FixtureRequest) -> ModelUnderTest:
    """Each check runs on the fitted head and on the shipped default (once it declares its estimates)."""
    if request.param == "shipped-default":
        return shipped_default()
    fitted: ModelUnderTest = request.getfixturevalue("fitted_model")
    return fitted


@dataclass(frozen=True, slots=True)
class Trace:
    """What the bed showed: every observation fed, and each minute's alarm probability."""

    observed: list[tuple[float, dict[str, float]]]
    """(scenario seconds, {forecast key: value})"""
    ticks: list[tuple[float, dict[str, float | None]]]
    """(scenario seconds, {event key: highest probability over the counted horizons, None: unavailable})"""

    def first_below(self, key: str, below: float) -> float | None:
        """Return when the signal was first observed below the threshold."""
        return next((t for t, values in self.observed if values[key] < below), None)

    def first_alarm(self, event: str) -> float | None:
        """Return the first tick where the event's probability reached the alarm threshold."""
        return next(
            (t for t, p in self.ticks if p[event] is not None and p[event] >= PREDICTIVE.threshold), None
        )


def _noisy(seed: int, minutes: int, *, sd: float) -> Iterator[float]:
    """Yield per-observation SpO2 noise: AR(1) per minute (2 min time constant) plus jitter."""
    rng = np.random.default_rng(seed)
    phi = math.exp(-1.0 / 2.0)
    level = 0.0
    for _ in range(minutes):
        level = phi * level + float(rng.normal(0.0, sd * math.sqrt(1.0 - phi * phi)))
        for _ in range(60 // OBSERVE_EVERY_S):
            yield level + float(rng.normal(0.0, sd / 2.0))


async def drive(
    model: ModelUnderTest, patient: Patient, *, minutes: int, spo2_noise: Iterator[float] | None = None
) -> Trace:
    """Feed the patient to the runtime every 10 s for `minutes` minutes and tick at the end of each minute."""
    runtime = ForecastRuntime(
        beds=(BED,), backend="onnxruntime", model_ref=model.ref, extra_models_dir=model.models_dir
    )
    await runtime.start()
    observed: list[tuple[float, dict[str, float]]] = []
    ticks: list[tuple[float, dict[str, float | None]]] = []
    counted = [i for i, h in enumerate(HORIZONS_MIN) if h <= PREDICTIVE.horizon_max_min]
    try:
        for minute in range(minutes):
            for second in range(0, 60, OBSERVE_EVERY_S):
                t_s = float(minute * 60 + second)
                vitals = patient.vitals_at(t_s)
                values: dict[str, float] = {}
                for key, scenario_key, unit in FEEDS:
                    value = vitals.get(scenario_key)
                    if value is None:
                        continue
                    if key == "spo2" and spo2_noise is not None:
                        value = float(min(round(value + next(spo2_noise)), 100))
                    values[key] = value
                    runtime.observe(bed=BED, key=key, value=value, unit=unit, valid=True, at_s=START_S + t_s)
                observed.append((t_s, values))
            tick_s = minute * 60 + 59.5
            (forecast,) = await runtime.tick(now_s=START_S + tick_s)
            ticks.append(
                (
                    tick_s,
                    {
                        e.key: max(forecast.events[e.key][i] for i in counted)
                        if e.key in forecast.events
                        else None
                        for e in EVENTS
                    },
                )
            )
    finally:
        await runtime.close()
    return Trace(observed=observed, ticks=ticks)


async def test_spo2_warning_comes_two_minutes_before_the_crossing(model: ModelUnderTest) -> None:
    patient = DesaturationPatient(stable_s=40 * 60.0, fall_s=10 * 60.0, hold_s=15 * 60.0, nadir=84.0)
    trace = await drive(model, patient, minutes=70)
    crossing = trace.first_below("spo2", 90.0)
    alarm = trace.first_alarm("spo2_below_90")
    probabilities = [(t / 60.0, p["spo2_below_90"]) for t, p in trace.ticks]
    assert crossing is not None
    assert alarm is not None, f"P(SpO2 < 90 %) never reached {PREDICTIVE.threshold}: {probabilities}"
    assert crossing - alarm >= EARLY_S, (
        f"alarm at {alarm / 60:.1f} min, SpO2 below 90 % at {crossing / 60:.1f} min: {probabilities}"
    )
    assert alarm >= patient.stable_s, "no alarm while the patient was stable"
    who = model.ref or "shipped default"
    print(f"{who}: P(SpO2 < 90 %) >= {PREDICTIVE.threshold} {crossing - alarm:.1f} s early")


async def test_map_warning_comes_two_minutes_before_the_crossing(model: ModelUnderTest) -> None:
    if "map_below_65" not in model.estimated:
        pytest.skip("the model does not estimate map_below_65 (its gate did not ship it)")
    patient = DeterioratingPatient(stable_s=40 * 60.0, ramp_s=40 * 60.0)
    trace = await drive(model, patient, minutes=80)
    crossing = trace.first_below("map", 65.0)
    alarm = trace.first_alarm("map_below_65")
    assert crossing is not None
    assert alarm is not None
    assert crossing - alarm >= EARLY_S, (
        f"alarm at {alarm / 60:.1f} min, MAP below 65 at {crossing / 60:.1f} min"
    )
    assert alarm >= patient.stable_s


async def test_no_warning_on_the_steady_patient(model: ModelUnderTest) -> None:
    trace = await drive(model, SteadyPatient(), minutes=60)
    assert trace.first_alarm("spo2_below_90") is None
    assert trace.first_alarm("map_below_65") is None
    assert all(p["spo2_below_90"] is not None for _, p in trace.ticks), "the estimate is published"


@pytest.mark.parametrize("noise_seed", [1, 2, 3])
async def test_no_warning_on_a_noisy_stable_patient(model: ModelUnderTest, noise_seed: int) -> None:
    minutes = 120
    noise = _noisy(noise_seed, minutes, sd=1.0)
    trace = await drive(model, SteadyPatient(), minutes=minutes, spo2_noise=noise)
    spo2 = [values["spo2"] for _, values in trace.observed]
    assert max(spo2) - min(spo2) >= 5.0, "the noise is real"
    assert trace.first_alarm("spo2_below_90") is None, [p["spo2_below_90"] for _, p in trace.ticks]
