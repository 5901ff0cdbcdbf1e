"""The patient split of the concatenated pap-train-hr records: no patient on both sides of a buffer."""

from __future__ import annotations

import numpy as np
import pytest

from engines.records import PatientGrid
from engines.spec import CONTEXT, SIGNALS

pytest.importorskip("torch", reason="torch is a dev-time extra (pip install 'icu-edge[train]')")

from engines.train.pipeline import split_pap


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
