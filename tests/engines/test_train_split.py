"""The patient split of the concatenated pap-train-hr records: no patient on both sides of a buffer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from engines.records import PatientGrid
from engines.spec import CONTEXT, SIGNAL_KEYS, SIGNALS

pytest.importorskip("torch", reason="torch is a dev-time extra (pip install 'icu-edge[train]')")

from engines.train.pipeline import (
    CALIBRATION_MIN_N,
    Config,
    _calibration_sources,
    calibration_source_names,
    load_split,
    split_pap,
)

VITALS = Path(__file__).resolve().parents[1] / "data" / "vitals"


def _grids(count: int) -> list[PatientGrid]:
    return [
        PatientGrid(
            patient_id=f"joined#{i:03d}",
            values=np.zeros((5, len(SIGNALS)), np.float32),
            mask=np.zeros((5, len(SIGNALS)), np.float32),
            context=np.zeros((5, len(CONTEXT)), np.float32),
            context_mask=np.zeros((5, len(CONTEXT)), np.float32),
        )
        for i in range(count)
    ]


def test_blocks_and_buffers_by_hand() -> None:
    # 20 records, 16 patients: buffer 4. Calibration #0-#2, dropped #3-#6, training #7-#11,
    # dropped #12-#15, held out #16-#19.
    grids = _grids(20)
    patients = [f"p{i:03d}" for i in range(16)]
    split = split_pap(grids, patients, quick=False, calibration_records=3, held_records=4)
    assert split.buffer == 4
    assert [g.patient_id for g in split.calibration] == ["joined#000", "joined#001", "joined#002"]
    assert [g.patient_id for g in split.train] == [f"joined#{i:03d}" for i in range(7, 12)]
    assert [g.patient_id for g in split.held] == [f"joined#{i:03d}" for i in range(16, 20)]
    assert "patients p012..p015" in split.description


@pytest.mark.parametrize("seed", range(20))
def test_no_patient_straddles_whatever_the_hidden_record_mapping(seed: int) -> None:
    # Any mapping consistent with the file (records in patient order, every patient at least once).
    rng = np.random.default_rng(seed)
    records, patients = 40, 31
    extra = np.bincount(rng.integers(0, patients, records - patients), minlength=patients)
    owner = np.repeat(np.arange(patients), 1 + extra)
    split = split_pap(
        _grids(records),
        [f"p{i:03d}" for i in range(patients)],
        quick=False,
        calibration_records=6,
        held_records=8,
    )
    index = {g.patient_id: i for i, g in enumerate(_grids(records))}

    def owners(block: list[PatientGrid]) -> set[int]:
        return {int(owner[index[g.patient_id]]) for g in block}

    assert not owners(split.calibration) & owners(split.train)
    assert not owners(split.train) & owners(split.held)
    assert not owners(split.calibration) & owners(split.held)


def test_unsorted_or_repeated_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="sorted"):
        split_pap(_grids(10), ["p2", "p1"], quick=False, calibration_records=1, held_records=1)
    with pytest.raises(ValueError, match="sorted"):
        split_pap(_grids(10), ["p1", "p1"], quick=False, calibration_records=1, held_records=1)
    with pytest.raises(ValueError, match="cannot hold"):
        split_pap(_grids(10), ["p1", "p2"], quick=False, calibration_records=1, held_records=1)


def _named_data(folder: Path) -> Path:
    """Link the two named multi-signal records (p000020, s25047) into `folder`, without pap-train-hr."""
    for name in (
        "p000020-2183-04-28-17-47n.hea",
        "s25047-2704-05-04-10-44n.hea",
        "3544749n.dat",
        "3234460n.dat",
    ):
        (folder / name).symlink_to(VITALS / name)
    return folder


def _hr_block(minutes: int) -> PatientGrid:
    mask = np.zeros((minutes, len(SIGNALS)), np.float32)
    mask[:, SIGNAL_KEYS.index("hr")] = 1.0
    return PatientGrid(
        patient_id="pap#000",
        values=np.zeros((minutes, len(SIGNALS)), np.float32),
        mask=mask,
        context=np.zeros((minutes, len(CONTEXT)), np.float32),
        context_mask=np.zeros((minutes, len(CONTEXT)), np.float32),
    )


def test_each_signal_calibrates_on_the_first_real_source_with_enough_minutes(tmp_path: Path) -> None:
    # The pap block (hr only) first, then the named calibration record, then synthetic patients.
    config = Config(
        seed=7,
        out=tmp_path,
        data=_named_data(tmp_path),
        holdout=("s25047",),
        quick=True,
        calibrate=("p000020",),
    )
    split = replace(load_split(config), calibration_real=[_hr_block(CALIBRATION_MIN_N)])
    assert _calibration_sources(split, "hr") is split.calibration_real
    assert _calibration_sources(split, "spo2") is split.calibration_named
    assert _calibration_sources(split, "rr") is split.calibration_named
    assert _calibration_sources(split, "etco2") is split.calibration_synthetic
    names = calibration_source_names(split)
    assert names["hr"] == "pap-train-hr calibration block (real)"
    assert names["map"] == "p000020-2183-04-28-17-47n (1315 min) (real)"
    assert names["etco2"] == f"{len(split.calibration_synthetic)} synthetic patients"
    # One minute short of the pap block: hr falls through to the named record.
    short = replace(split, calibration_real=[_hr_block(CALIBRATION_MIN_N - 1)])
    assert _calibration_sources(short, "hr") is short.calibration_named


@pytest.mark.parametrize("calibrate", [(), ("p000020",)])
def test_a_calibration_record_never_trains_and_the_held_out_record_stays_held(
    tmp_path: Path, calibrate: tuple[str, ...]
) -> None:
    config = Config(
        seed=7, out=tmp_path, data=_named_data(tmp_path), holdout=("s25047",), quick=True, calibrate=calibrate
    )
    split = load_split(config)
    train = [g.patient_id for g in split.train_real]
    calibration = [g.patient_id for g in split.calibration_named]
    assert [g.patient_id for g in split.held_real] == ["s25047-2704-05-04-10-44n"]
    if calibrate:
        assert calibration == ["p000020-2183-04-28-17-47n"]
        assert train == []
    else:
        assert calibration == []
        assert train == ["p000020-2183-04-28-17-47n"]
