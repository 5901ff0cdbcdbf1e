"""WFDB minute-numerics records (MIMIC-III matched subset) into patient grids."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from engines.records import RecordError, import_wfdb, read_concatenated_records, read_numerics_record
from engines.spec import SIGNAL_KEYS

VITALS = Path(__file__).resolve().parents[1] / "data" / "vitals"
P000020 = VITALS / "p000020-2183-04-28-17-47n"
S25047 = VITALS / "s25047-2704-05-04-10-44n"
HR, SPO2, MAP, RR, ETCO2 = (SIGNAL_KEYS.index(k) for k in ("hr", "spo2", "map", "rr", "etco2"))


def _raw(path: Path, name: str) -> np.ndarray:
    record = import_wfdb().rdrecord(str(path))
    return np.asarray(record.p_signal[:, record.sig_name.index(name)])


def test_p000020_maps_arterial_mean_not_cuff() -> None:
    grid = read_numerics_record(P000020)
    assert grid.patient_id == "p000020-2183-04-28-17-47n"
    assert grid.values.shape == (1315, 5)
    assert grid.step_s == 60
    abp = _raw(P000020, "ABPMean")
    nbp = _raw(P000020, "NBPMean")
    # ABPMean feeds map; the one ABPMean reading of 224.5 mmHg is implausible and masked.
    plausible = (abp > 0) & (abp <= 200)
    np.testing.assert_array_equal(grid.mask[:, MAP] > 0, plausible)
    np.testing.assert_allclose(grid.values[plausible, MAP], abp[plausible], rtol=1e-6)
    # Where only the cuff has a value, map stays missing: NBPMean is a fallback for records without ABP.
    cuff_only = (nbp > 0) & ~(abp > 0)
    assert cuff_only.any()
    assert (grid.mask[cuff_only, MAP] == 0).all()
    assert grid.mask[:, ETCO2].sum() == 0
    assert grid.context_mask.sum() == 0  # no ventilator context in these records
    _pr_values, pr_mask = grid.extra["pr"]
    pulse = _raw(P000020, "PULSE")
    np.testing.assert_array_equal(pr_mask > 0, pulse > 0)


def test_s25047_artefacts_and_missing_values() -> None:
    grid = read_numerics_record(S25047)
    assert grid.values.shape == (72, 5)
    pulse = _raw(S25047, "PULSE")
    pr_values, pr_mask = grid.extra["pr"]
    artefact = np.flatnonzero(np.isclose(pulse, 277.0))
    assert artefact.size == 1
    assert pr_mask[artefact[0]] == 0  # 277 /min is outside the plausible 20..250
    assert pr_values[artefact[0]] == 0
    resp = _raw(S25047, "RESP")
    high = np.flatnonzero(np.isclose(resp, 55.7))
    assert high.size == 1
    assert grid.mask[high[0], RR] == 1  # 55.7 /min is inside the rr range 2..70: kept
    assert grid.values[high[0], RR] == pytest.approx(55.7, rel=1e-6)
    low_resp = np.flatnonzero((resp > 0) & (resp < 2))
    assert low_resp.size
    assert (grid.mask[low_resp, RR] == 0).all()
    hr = _raw(S25047, "HR")
    np.testing.assert_array_equal(grid.mask[:, HR] > 0, hr > 0)  # values <= 0 are "no value"
    spo2 = _raw(S25047, "SpO2")
    np.testing.assert_array_equal(grid.mask[:, SPO2] > 0, spo2 >= 50)  # 36 % is an artefact
    # No ABPMean in this record: map comes from the cuff mean.
    nbp = _raw(S25047, "NBPMean")
    np.testing.assert_array_equal(grid.mask[:, MAP] > 0, (nbp >= 20) & (nbp <= 200))
    assert np.isfinite(grid.values).all()


def test_missing_record_is_a_record_error(tmp_path: Path) -> None:
    with pytest.raises(RecordError, match="nope"):
        read_numerics_record(tmp_path / "nope")


def test_unknown_unit_names_the_signal(tmp_path: Path) -> None:
    header = (VITALS / "s25047-2704-05-04-10-44n.hea").read_text()
    (tmp_path / "s25047-2704-05-04-10-44n.hea").write_text(header.replace("10/pm", "10/furlongs", 1))
    shutil.copy(VITALS / "3234460n.dat", tmp_path / "3234460n.dat")
    with pytest.raises(RecordError, match=r"RESP.*furlongs"):
        read_numerics_record(tmp_path / "s25047-2704-05-04-10-44n")


def test_garbage_header_is_a_record_error(tmp_path: Path) -> None:
    (tmp_path / "bad.hea").write_text("this is not a header\n")
    with pytest.raises(RecordError, match="bad"):
        read_numerics_record(tmp_path / "bad")


def _write_hr_record(directory: Path, hr: np.ndarray) -> Path:
    wfdb = import_wfdb()
    with warnings.catch_warnings():  # wfdb's writer calls pandas with an argument pandas deprecates
        warnings.simplefilter("ignore")
        wfdb.wrsamp(
            "joined",
            fs=1 / 60,
            units=["bpm"],
            sig_name=["HR"],
            p_signal=hr.reshape(-1, 1),
            fmt=["16"],
            adc_gain=[10.0],
            baseline=[0],
            write_dir=str(directory),
        )
    return directory / "joined"


def test_concatenated_records_split_into_one_grid_each(tmp_path: Path) -> None:
    # Three records of 4 min, each followed by 3 min without a value.
    hr = np.zeros(21)
    for index, start in enumerate((0, 7, 14)):
        hr[start : start + 4] = [60.0 + index, 0.0, 70.0 + index, 80.0 + index]
    grids = read_concatenated_records(_write_hr_record(tmp_path, hr), record_minutes=4, separator_minutes=3)
    assert [g.patient_id for g in grids] == ["joined#000", "joined#001", "joined#002"]
    hr_column = SIGNAL_KEYS.index("hr")
    assert grids[2].values[:, hr_column].tolist() == [62.0, 0.0, 72.0, 82.0]
    assert grids[2].mask[:, hr_column].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert all(g.mask[:, [i for i in range(len(SIGNAL_KEYS)) if i != hr_column]].sum() == 0 for g in grids)


def test_concatenated_records_refuse_a_value_in_a_separator(tmp_path: Path) -> None:
    hr = np.zeros(14)
    hr[:4] = 60.0
    hr[5] = 61.0  # inside the first separator
    path = _write_hr_record(tmp_path, hr)
    with pytest.raises(RecordError, match="separator"):
        read_concatenated_records(path, record_minutes=4, separator_minutes=3)
    with pytest.raises(RecordError, match="multiple"):
        read_concatenated_records(path, record_minutes=5, separator_minutes=3)
