"""The simulated ventilator's values come from the shared scenario engine through the driver's code map."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.base import MeasurementsReceived
from drivers.medibus.codes import MEASURED_CP1, MeasuredCodeCP1
from drivers.medibus.session import MedibusSession
from drivers.medibus.simulator import (
    REPORTED_CODES,
    SCENARIOS,
    VENTILATOR_EXTRAS,
    PatientScenario,
    VentilatorSimulator,
    main,
)
from drivers.scenario import PATIENTS, DesaturationPatient, DeterioratingPatient, Patient

STEP_S = 0.02


class _Odd(Patient):
    """A patient no built-in scenario has: every value distinct, so a wrong mapping shows."""

    name = "odd"

    def vitals_at(self, t_s: float) -> dict[str, float | None]:
        return {
            "ppeak": 31.5,
            "peep": 7.0,
            "pmean": 12.5,
            "pplat": 26.0,
            "rr": 19.0,
            "vt": 410.0,
            "mv": 7.8,
            "fio2": 55.0,
            "etco2": 44.0,
            "spo2": 91.0,
            "pr": 101.0,
            "hr": 99.0,
        }


def test_every_patient_of_the_engine_is_a_scenario_name_and_noise_stays() -> None:
    assert set(SCENARIOS) == {*PATIENTS, "noise"}
    for name, make in SCENARIOS.items():
        assert make().name == name


def test_values_are_the_patients_values_under_the_drivers_codes() -> None:
    values = PatientScenario(patient=_Odd()).values_at(0.0)
    by_key = {MEASURED_CP1[code].key: value for code, value in values.items()}
    from_patient = {key: value for key, value in _Odd().vitals_at(0.0).items() if key != "hr"}
    assert by_key == {**from_patient, "etco2_kpa": 5.9, "cdyn": 45.0, "r": 9.0, "p01": None}
    assert "hr" not in by_key, "the ventilator reports the pulse rate of its SpO2 module, not HR"
    assert list(values)[: len(REPORTED_CODES)] == list(REPORTED_CODES)
    assert all(values[code] == extra for code, extra in VENTILATOR_EXTRAS.items())


@pytest.mark.parametrize("t_s", [0.0, 45.0, 80.0, 200.0])
def test_deteriorating_values_follow_the_engine_at_every_time(t_s: float) -> None:
    patient = DeterioratingPatient()
    values = PatientScenario(patient=patient).values_at(t_s)
    vitals = patient.vitals_at(t_s)
    for code in REPORTED_CODES:
        assert values[code] == vitals[MEASURED_CP1[code].key], code


def test_ventilator_alarms_follow_its_limits_whatever_the_patient() -> None:
    scenario = PatientScenario(patient=_Odd(), paw_limit_mbar=30.0, vt_low_limit_ml=420.0)
    assert [a.text for a in scenario.alarms_at(0.0)] == ["Paw high", "VT low"]
    assert PatientScenario(patient=_Odd()).alarms_at(0.0) == []


def test_desaturation_reaches_the_session_as_falling_spo2_and_rising_pulse() -> None:
    patient = DesaturationPatient(stable_s=2.0, fall_s=2.0, hold_s=4.0, nadir=84.0)
    session = MedibusSession()
    simulator = VentilatorSimulator(scenario=PatientScenario(patient=patient), device_command_interval_s=None)
    spo2: list[float | None] = []
    pr: list[float | None] = []
    now_s = 0.0
    while now_s < 10.0:
        session.poll(now_s=now_s)
        simulator.poll(now_s=now_s)
        simulator.receive(session.data_to_send(), now_s=now_s)
        session.receive(simulator.data_to_send(), now_s=now_s)
        for event in session.events():
            if isinstance(event, MeasurementsReceived):
                by_key = {m.key: m.value for m in event.measurements}
                spo2.append(by_key["spo2"])
                pr.append(by_key["pr"])
        now_s += STEP_S
    assert spo2[0] == 97.0
    assert min(v for v in spo2 if v is not None) == 84.0
    assert max(v for v in pr if v is not None) == 92.0
    assert MeasuredCodeCP1.SPO2 in REPORTED_CODES


@pytest.mark.parametrize("name", ["desaturation", "noise"])
def test_cli_serves_every_scenario_name(tmp_path: Path, name: str) -> None:
    link = tmp_path / "medibus0"
    assert main(["--pty", str(link), "--scenario", name, "--seconds", "0.2"]) == 0
    assert not link.is_symlink()


def test_cli_refuses_an_unknown_scenario_name() -> None:
    with pytest.raises(SystemExit) as refused:
        main(["--pty", "/nonexistent/x", "--scenario", "no-such-patient"])
    assert refused.value.code == 2
