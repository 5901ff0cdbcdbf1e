"""NEWS2 (RCP 2017 Chart 1 and 4): every band edge on both sides, fallbacks, rounding, what is missing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from edge.alarms.news2 import Consciousness, News2Advisory, news2
from edge.model import InvalidReason, News2Body, TwinValue

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
UNITS = {
    "rr": "/min",
    "spo2": "%",
    "fio2": "%",
    "abp_sys": "mm[Hg]",
    "nbp_sys": "mm[Hg]",
    "hr": "/min",
    "pr": "/min",
    "temp": "Cel",
}
ALL = ("rr", "spo2", "air_or_oxygen", "sbp", "hr", "consciousness", "temp")
# A patient who scores 0 everywhere: each test changes one thing.
NORMAL = {"rr": 16.0, "spo2": 97.0, "fio2": 21.0, "abp_sys": 120.0, "hr": 70.0, "temp": 37.0}


def tv(key: str, value: float | None, *, valid: bool = True, stale: bool = False) -> TwinValue:
    """A twin value as the twin would show it (an invalid one has no value and says why)."""
    return TwinValue(
        value=value if valid else None,
        unit=UNITS[key],
        mdc=None,
        label=key,
        device="mon-1",
        valid=valid,
        invalid_reason=None if valid else InvalidReason.IMPLAUSIBLE,
        rejected_value=None if valid else value,
        device_time=None,
        received_at=NOW,
        age_s=1.0,
        stale=stale,
    )


def score(
    readings: dict[str, float],
    *,
    scale: int = 1,
    consciousness: Consciousness | None = Consciousness.ALERT,
    advisory: News2Advisory | None = None,
    twin: dict[str, TwinValue] | None = None,
) -> News2Body:
    values = {key: tv(key, value) for key, value in readings.items()} | (twin or {})
    return news2(
        values,
        spo2_scale=scale,
        consciousness=consciousness,
        advisory=advisory or News2Advisory(),
        now=NOW,
    )


def with_(**changes: float) -> dict[str, float]:
    return {**NORMAL, **changes}


def without(*keys: str) -> dict[str, float]:
    return {key: value for key, value in NORMAL.items() if key not in keys}


def test_normal_patient_scores_zero_and_complete() -> None:
    body = score(NORMAL)
    assert body.total == 0
    assert body.complete
    assert body.missing == []
    assert body.subscores == dict.fromkeys(ALL, 0)
    assert list(body.subscores) == list(ALL)
    assert body.risk == "low"
    assert body.advisory is None
    assert body.on_oxygen is False
    assert body.consciousness == "alert"
    assert body.computed_at == NOW


# ---- Chart 1, every band edge from both sides ----------------------------------------------------


@pytest.mark.parametrize(
    ("rr", "expected"),
    [(0, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (60, 3)],
)
def test_respiration_rate_bands(rr: float, expected: int) -> None:
    assert score(with_(rr=rr)).subscores["rr"] == expected


@pytest.mark.parametrize(
    ("spo2", "expected"),
    [(50, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)],
)
@pytest.mark.parametrize("fio2", [21.0, 40.0])
def test_spo2_scale_1_bands_ignore_oxygen(spo2: float, fio2: float, expected: int) -> None:
    assert score(with_(spo2=spo2, fio2=fio2), scale=1).subscores["spo2"] == expected


@pytest.mark.parametrize(
    ("spo2", "expected"),
    [(50, 3), (83, 3), (84, 2), (85, 2), (86, 1), (87, 1), (88, 0), (92, 0)],
)
@pytest.mark.parametrize("fio2", [21.0, 40.0, None])
def test_spo2_scale_2_below_93_needs_no_oxygen(spo2: float, fio2: float | None, expected: int) -> None:
    readings = with_(spo2=spo2)
    if fio2 is None:
        del readings["fio2"]
    else:
        readings["fio2"] = fio2
    assert score(readings, scale=2).subscores["spo2"] == expected


@pytest.mark.parametrize(
    ("spo2", "on_air", "on_oxygen"),
    [(92, 0, 0), (93, 0, 1), (94, 0, 1), (95, 0, 2), (96, 0, 2), (97, 0, 3), (100, 0, 3)],
)
def test_spo2_scale_2_from_93_scores_by_air_or_oxygen(spo2: float, on_air: int, on_oxygen: int) -> None:
    assert score(with_(spo2=spo2, fio2=21.0), scale=2).subscores["spo2"] == on_air
    assert score(with_(spo2=spo2, fio2=40.0), scale=2).subscores["spo2"] == on_oxygen


@pytest.mark.parametrize("spo2", [93.0, 96.0, 100.0, 92.5])
def test_spo2_scale_2_from_93_with_unknown_oxygen_is_missing_not_air(spo2: float) -> None:
    body = score(without("fio2") | {"spo2": spo2}, scale=2)
    assert "spo2" not in body.subscores
    assert body.missing == ["spo2", "air_or_oxygen"]
    assert body.on_oxygen is None


def test_spo2_scale_1_with_unknown_oxygen_still_scores_spo2() -> None:
    body = score(without("fio2") | {"spo2": 93.0}, scale=1)
    assert body.subscores["spo2"] == 2
    assert body.missing == ["air_or_oxygen"]


@pytest.mark.parametrize(
    ("fio2", "on_oxygen", "expected"),
    [(18.0, False, 0), (21.0, False, 0), (21.5, True, 2), (21.01, True, 2), (100.0, True, 2)],
)
def test_air_or_oxygen_from_fio2(fio2: float, on_oxygen: bool, expected: int) -> None:
    body = score(with_(fio2=fio2))
    assert body.on_oxygen is on_oxygen
    assert body.subscores["air_or_oxygen"] == expected


@pytest.mark.parametrize(
    "fio2",
    [None, tv("fio2", 40.0, stale=True), tv("fio2", 40.0, valid=False)],
    ids=["absent", "stale", "invalid"],
)
def test_unknown_fio2_is_missing_not_air(fio2: TwinValue | None) -> None:
    overrides = {} if fio2 is None else {"fio2": fio2}
    body = score(without("fio2"), twin=overrides)
    assert body.on_oxygen is None
    assert body.missing == ["air_or_oxygen"]
    assert not body.complete


@pytest.mark.parametrize(
    ("sbp", "expected"),
    [(50, 3), (90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3), (280, 3)],
)
def test_systolic_pressure_bands(sbp: float, expected: int) -> None:
    assert score(with_(abp_sys=sbp)).subscores["sbp"] == expected


@pytest.mark.parametrize(
    ("hr", "expected"),
    [
        (20, 3),
        (40, 3),
        (41, 1),
        (50, 1),
        (51, 0),
        (90, 0),
        (91, 1),
        (110, 1),
        (111, 2),
        (130, 2),
        (131, 3),
        (220, 3),
    ],
)
def test_pulse_bands(hr: float, expected: int) -> None:
    assert score(with_(hr=hr)).subscores["hr"] == expected


@pytest.mark.parametrize(
    ("temp", "expected"),
    [
        (30.0, 3),
        (35.0, 3),
        (35.1, 1),
        (36.0, 1),
        (36.1, 0),
        (38.0, 0),
        (38.1, 1),
        (39.0, 1),
        (39.1, 2),
        (42.0, 2),
    ],
)
def test_temperature_bands(temp: float, expected: int) -> None:
    assert score(with_(temp=temp)).subscores["temp"] == expected


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (Consciousness.ALERT, 0),
        (Consciousness.NEW_CONFUSION, 3),
        (Consciousness.VOICE, 3),
        (Consciousness.PAIN, 3),
        (Consciousness.UNRESPONSIVE, 3),
    ],
)
def test_consciousness(level: Consciousness, expected: int) -> None:
    body = score(NORMAL, consciousness=level)
    assert body.subscores["consciousness"] == expected
    assert body.consciousness == level.value


def test_consciousness_not_set_is_missing() -> None:
    body = score(NORMAL, consciousness=None)
    assert body.missing == ["consciousness"]
    assert body.consciousness is None
    assert not body.complete


# ---- readings between the chart's steps: half-up to the chart's resolution -----------------------


@pytest.mark.parametrize(
    ("key", "value", "subscore", "expected"),
    [
        ("rr", 8.49, "rr", 3),
        ("rr", 8.5, "rr", 1),
        ("rr", 20.49, "rr", 0),
        ("rr", 20.5, "rr", 2),
        ("rr", 24.5, "rr", 3),
        ("spo2", 91.49, "spo2", 3),
        ("spo2", 91.5, "spo2", 2),
        ("spo2", 95.49, "spo2", 1),
        ("spo2", 95.5, "spo2", 0),
        ("abp_sys", 90.49, "sbp", 3),
        ("abp_sys", 90.5, "sbp", 2),
        ("abp_sys", 219.49, "sbp", 0),
        ("abp_sys", 219.5, "sbp", 3),
        ("hr", 40.5, "hr", 1),
        ("hr", 90.49, "hr", 0),
        ("hr", 90.5, "hr", 1),
        ("hr", 130.5, "hr", 3),
        ("temp", 35.04, "temp", 3),
        ("temp", 35.05, "temp", 1),
        ("temp", 36.04, "temp", 1),
        ("temp", 36.05, "temp", 0),
        ("temp", 36.55, "temp", 0),
        ("temp", 38.04, "temp", 0),
        ("temp", 38.05, "temp", 1),
        ("temp", 39.05, "temp", 2),
    ],
)
def test_fractional_readings_round_half_up_to_the_chart(
    key: str, value: float, subscore: str, expected: int
) -> None:
    assert score(with_(**{key: value})).subscores[subscore] == expected


@pytest.mark.parametrize(("spo2", "expected"), [(92.49, 0), (92.5, 1), (94.5, 2), (96.5, 3)])
def test_fractional_spo2_on_scale_2_rounds_before_the_oxygen_bands(spo2: float, expected: int) -> None:
    assert score(with_(spo2=spo2, fio2=40.0), scale=2).subscores["spo2"] == expected


# ---- which device's value counts --------------------------------------------------------------


@pytest.mark.parametrize(
    "primary",
    [None, tv("hr", 30.0, stale=True), tv("hr", 30.0, valid=False)],
    ids=["absent", "stale", "invalid"],
)
def test_pulse_falls_back_to_pr_when_hr_unusable(primary: TwinValue | None) -> None:
    overrides = {"pr": tv("pr", 120.0)} | ({} if primary is None else {"hr": primary})
    assert score(without("hr"), twin=overrides).subscores["hr"] == 2


def test_pulse_prefers_a_usable_hr_over_pr() -> None:
    assert score(with_(hr=70.0, pr=120.0)).subscores["hr"] == 0


def test_pulse_missing_when_hr_and_pr_are_unusable() -> None:
    body = score(without("hr"), twin={"hr": tv("hr", 70.0, stale=True), "pr": tv("pr", 70.0, valid=False)})
    assert body.missing == ["hr"]


@pytest.mark.parametrize(
    "primary",
    [None, tv("abp_sys", 250.0, stale=True), tv("abp_sys", 250.0, valid=False)],
    ids=["absent", "stale", "invalid"],
)
def test_sbp_falls_back_to_cuff_when_arterial_line_unusable(primary: TwinValue | None) -> None:
    overrides = {"nbp_sys": tv("nbp_sys", 95.0)} | ({} if primary is None else {"abp_sys": primary})
    assert score(without("abp_sys"), twin=overrides).subscores["sbp"] == 2


def test_sbp_prefers_a_usable_arterial_line_over_the_cuff() -> None:
    assert score(with_(abp_sys=120.0, nbp_sys=85.0)).subscores["sbp"] == 0


def test_valid_value_without_a_number_or_not_finite_does_not_count() -> None:
    empty = TwinValue.model_validate(tv("rr", 16.0).model_dump() | {"value": None})
    assert score(without("rr"), twin={"rr": empty}).missing == ["rr"]
    assert score(with_(temp=float("nan"), rr=float("inf"))).missing == ["rr", "temp"]


# ---- missing, partial totals, risk and advisory ---------------------------------------------------


def test_missing_lists_every_unavailable_parameter_in_chart_order() -> None:
    body = news2({}, spo2_scale=1, consciousness=None, advisory=News2Advisory(), now=NOW)
    assert body.missing == list(ALL)
    assert body.subscores == {}
    assert body.total == 0
    assert not body.complete
    assert body.risk == "low"


def test_partial_score_reports_what_it_has() -> None:
    body = score({"rr": 26.0, "temp": 39.5}, consciousness=None)
    assert body.subscores == {"rr": 3, "temp": 2}
    assert body.total == 5
    assert body.missing == ["spo2", "air_or_oxygen", "sbp", "hr", "consciousness"]
    assert body.risk == "medium"
    assert body.advisory == "urgent"


@pytest.mark.parametrize(
    ("readings", "consciousness", "total", "red", "risk", "advisory"),
    [
        (NORMAL, Consciousness.ALERT, 0, False, "low", None),
        (with_(rr=22.0, hr=95.0), Consciousness.ALERT, 3, False, "low", None),
        (with_(rr=22.0, hr=95.0, temp=38.5), Consciousness.ALERT, 4, False, "low", None),
        (NORMAL, Consciousness.VOICE, 3, True, "low_medium", "single_parameter"),
        (with_(hr=95.0), Consciousness.PAIN, 4, True, "low_medium", "single_parameter"),
        (with_(rr=22.0, temp=39.5, hr=95.0), Consciousness.ALERT, 5, False, "medium", "urgent"),
        (with_(rr=26.0, fio2=30.0), Consciousness.ALERT, 5, True, "medium", "urgent"),
        (with_(rr=26.0, fio2=30.0, hr=95.0), Consciousness.ALERT, 6, True, "medium", "urgent"),
        (with_(rr=26.0, fio2=30.0, temp=38.5, hr=95.0), Consciousness.ALERT, 7, True, "high", "emergency"),
        (
            with_(rr=5.0, spo2=85.0, fio2=60.0, abp_sys=80.0, hr=140.0, temp=34.0),
            Consciousness.PAIN,
            20,
            True,
            "high",
            "emergency",
        ),
    ],
)
def test_risk_and_default_advisory(
    readings: dict[str, float],
    consciousness: Consciousness,
    total: int,
    red: bool,
    risk: str,
    advisory: str | None,
) -> None:
    body = score(readings, consciousness=consciousness)
    assert body.total == total
    assert body.single_parameter_3 is red
    assert body.risk == risk
    assert body.advisory == advisory


@pytest.mark.parametrize(
    ("readings", "consciousness", "expected"),
    [
        (with_(hr=95.0), Consciousness.ALERT, None),  # 1
        (with_(hr=95.0, temp=38.5), Consciousness.ALERT, "urgent"),  # 2
        (with_(hr=115.0, temp=38.5), Consciousness.ALERT, "urgent"),  # 3
        (with_(hr=115.0, temp=38.5, rr=10.0), Consciousness.ALERT, "emergency"),  # 4
        (NORMAL, Consciousness.VOICE, "urgent"),  # 3 and red: urgent outranks single_parameter
    ],
)
def test_advisory_follows_custom_thresholds(
    readings: dict[str, float], consciousness: Consciousness, expected: str | None
) -> None:
    custom = News2Advisory(emergency_at=4, urgent_at=2)
    body = score(readings, consciousness=consciousness, advisory=custom)
    assert body.advisory == expected
    assert body.risk in {"low", "low_medium"}  # RCP's risk does not move with the thresholds


def test_single_parameter_advisory_can_be_turned_off() -> None:
    body = score(NORMAL, consciousness=Consciousness.VOICE, advisory=News2Advisory(single_parameter=False))
    assert body.single_parameter_3
    assert body.risk == "low_medium"
    assert body.advisory is None


@pytest.mark.parametrize(("emergency_at", "urgent_at"), [(5, 7), (7, 0), (21, 5), (0, 0)])
def test_advisory_rejects_thresholds_it_cannot_order(emergency_at: int, urgent_at: int) -> None:
    with pytest.raises(ValueError, match="urgent_at"):
        News2Advisory(emergency_at=emergency_at, urgent_at=urgent_at)


@pytest.mark.parametrize("scale", [0, 3, -1])
def test_unknown_spo2_scale_is_an_error(scale: int) -> None:
    with pytest.raises(ValueError, match="spo2_scale must be 1 or 2"):
        score(NORMAL, scale=scale)


def test_naive_time_is_an_error() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        news2({}, spo2_scale=1, consciousness=None, advisory=News2Advisory(), now=datetime(2026, 12, 1))  # noqa: DTZ001


# ---- property: the aggregate is the sum of what it has, within 0-20 -------------------------------

_READINGS = {
    "rr": st.floats(min_value=0, max_value=80),
    "spo2": st.floats(min_value=40, max_value=100),
    "fio2": st.floats(min_value=18, max_value=100),
    "abp_sys": st.floats(min_value=20, max_value=300),
    "nbp_sys": st.floats(min_value=20, max_value=300),
    "hr": st.floats(min_value=15, max_value=300),
    "pr": st.floats(min_value=15, max_value=300),
    "temp": st.floats(min_value=10, max_value=45),
}


@st.composite
def _twin_values(draw: st.DrawFn) -> dict[str, TwinValue]:
    values = {}
    for key, strategy in _READINGS.items():
        if draw(st.booleans()):
            values[key] = tv(key, draw(strategy), valid=draw(st.booleans()), stale=draw(st.booleans()))
    return values


@given(
    values=_twin_values(),
    scale=st.sampled_from([1, 2]),
    consciousness=st.none() | st.sampled_from(Consciousness),
    urgent_at=st.integers(min_value=1, max_value=20),
    spread=st.integers(min_value=0, max_value=19),
)
def test_total_is_the_sum_of_subscores_within_0_to_20(
    values: dict[str, TwinValue],
    scale: int,
    consciousness: Consciousness | None,
    urgent_at: int,
    spread: int,
) -> None:
    advisory = News2Advisory(urgent_at=urgent_at, emergency_at=min(20, urgent_at + spread))
    body = news2(values, spo2_scale=scale, consciousness=consciousness, advisory=advisory, now=NOW)
    assert body.total == sum(body.subscores.values())
    assert 0 <= body.total <= 20
    assert body.complete is (not body.missing)
    assert sorted(body.subscores, key=ALL.index) == list(body.subscores)
    assert [name for name in ALL if name not in body.subscores] == body.missing
    assert all(0 <= sub <= 3 for sub in body.subscores.values())
    assert body.single_parameter_3 is (3 in body.subscores.values())
    assert (body.advisory == "emergency") is (body.total >= advisory.emergency_at)
    assert (body.risk == "high") is (body.total >= 7)
