"""The TensorRT plan cache: pure file handling, no GPU needed."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from engines.plan_cache import PlanCache, PlanKey

KEY = PlanKey(
    model_id="forecaster",
    model_version="1.2.0",
    onnx_sha256="ab" * 32,
    gpu_name="Orin (nvgpu)",
    compute_capability="8.7",
    sm_count=16,
    tensorrt_version="10.3.0",
    precision="fp16",
    profile=(1, 8, 64),
    builder_flags=("no-TF32", "FP16"),
)
PLAN = bytes(range(256)) * 40

CHANGED: dict[str, Any] = {
    "model_id": "other",
    "model_version": "1.2.1",
    "onnx_sha256": "cd" * 32,
    "gpu_name": "NVIDIA H100",
    "compute_capability": "9.0",
    "sm_count": 8,
    "tensorrt_version": "10.4.0",
    "precision": "fp32",
    "profile": (1, 16, 64),
    "builder_flags": ("no-TF32",),
}


@pytest.fixture
def cache(tmp_path: Path) -> PlanCache:
    return PlanCache(tmp_path / "engines")


def test_every_key_field_is_covered_by_the_invalidation_tests() -> None:
    assert set(CHANGED) == {f.name for f in dataclasses.fields(PlanKey)}


def test_digest_is_canonical_and_flags_are_sorted() -> None:
    same = dataclasses.replace(KEY, builder_flags=("FP16", "no-TF32"))
    assert same == KEY
    assert same.digest() == KEY.digest()
    assert KEY.builder_flags == ("FP16", "no-TF32")
    assert json.loads(KEY.to_json())["profile"] == [1, 8, 64]
    assert ", " not in KEY.to_json()
    assert ": " not in KEY.to_json()
    assert PlanKey.from_dict(json.loads(KEY.to_json())) == KEY


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_every_field_changes_the_digest(field: str) -> None:
    assert dataclasses.replace(KEY, **{field: CHANGED[field]}).digest() != KEY.digest()


def test_a_profile_out_of_order_is_refused() -> None:
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        dataclasses.replace(KEY, profile=(1, 128, 64))


def test_path_names_model_version_and_digest(cache: PlanCache) -> None:
    assert cache.path_for(KEY).name == f"forecaster-1.2.0-{KEY.digest()[:16]}.plan"
    assert cache.path_for(KEY).parent == cache.directory


def test_store_then_lookup(cache: PlanCache) -> None:
    assert cache.lookup(KEY) is None
    path = cache.store(KEY, PLAN)
    assert path == cache.path_for(KEY)
    assert cache.lookup(KEY) == PLAN
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["key"] == KEY.to_dict()
    assert sidecar["plan_size_bytes"] == len(PLAN)


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_a_plan_for_another_key_is_never_loaded(
    cache: PlanCache, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache.store(KEY, PLAN)
    other = dataclasses.replace(KEY, **{field: CHANGED[field]})
    assert cache.lookup(other) is None  # its own path: nothing there
    # A foreign plan copied to the other key's path (same file name, different sidecar key).
    shutil.copy(cache.path_for(KEY), cache.path_for(other))
    shutil.copy(cache.path_for(KEY).with_suffix(".json"), cache.path_for(other).with_suffix(".json"))
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(other) is None
    assert "built for another configuration" in caplog.text
    assert f"{field}:" in caplog.text
    assert cache.lookup(KEY) == PLAN


def test_rebuild_after_a_miss_replaces_the_foreign_plan(cache: PlanCache) -> None:
    other = dataclasses.replace(KEY, precision="fp32")
    cache.store(KEY, PLAN)
    shutil.copy(cache.path_for(KEY), cache.path_for(other))
    shutil.copy(cache.path_for(KEY).with_suffix(".json"), cache.path_for(other).with_suffix(".json"))
    assert cache.lookup(other) is None
    cache.store(other, b"rebuilt plan")
    assert cache.lookup(other) == b"rebuilt plan"


def test_a_corrupted_plan_is_not_loaded(cache: PlanCache, caplog: pytest.LogCaptureFixture) -> None:
    path = cache.store(KEY, PLAN)
    damaged = bytearray(path.read_bytes())
    damaged[100] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(KEY) is None
    assert "SHA-256 does not match" in caplog.text


def test_a_truncated_plan_is_not_loaded(cache: PlanCache, caplog: pytest.LogCaptureFixture) -> None:
    path = cache.store(KEY, PLAN)
    path.write_bytes(PLAN[:1000])
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(KEY) is None
    assert "truncated" in caplog.text


def test_a_plan_without_its_plan_file_is_not_loaded(
    cache: PlanCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache.store(KEY, PLAN).unlink()
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(KEY) is None
    assert "plan file missing" in caplog.text


def test_a_plan_without_sidecar_is_not_loaded(cache: PlanCache, caplog: pytest.LogCaptureFixture) -> None:
    cache.store(KEY, PLAN).with_suffix(".json").unlink()
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(KEY) is None
    assert "sidecar missing" in caplog.text


@pytest.mark.parametrize(
    ("sidecar", "reason"),
    [
        (b"{not json", "sidecar unreadable"),
        (b"[]", "unknown format"),
        (json.dumps({"sidecar_version": 99}).encode(), "unknown format"),
        (json.dumps({"sidecar_version": 1, "key": {"model_id": "x"}}).encode(), "sidecar key invalid"),
    ],
)
def test_a_corrupt_or_foreign_sidecar_is_not_loaded(
    cache: PlanCache, caplog: pytest.LogCaptureFixture, sidecar: bytes, reason: str
) -> None:
    cache.store(KEY, PLAN).with_suffix(".json").write_bytes(sidecar)
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(KEY) is None
    assert reason in caplog.text


def test_a_tampered_sidecar_key_is_not_loaded(cache: PlanCache, caplog: pytest.LogCaptureFixture) -> None:
    sidecar_path = cache.store(KEY, PLAN).with_suffix(".json")
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["key"]["tensorrt_version"] = "10.0.1"
    sidecar_path.write_text(json.dumps(sidecar))
    with caplog.at_level(logging.WARNING):
        assert cache.lookup(KEY) is None
    assert "tensorrt_version: '10.0.1' != '10.3.0'" in caplog.text


def test_a_failed_store_leaves_the_previous_plan_whole(
    cache: PlanCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.store(KEY, PLAN)

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        cache.store(KEY, b"half a new plan")
    monkeypatch.undo()
    assert cache.lookup(KEY) == PLAN
    assert not [p for p in cache.directory.iterdir() if p.name.endswith(".tmp")]


def test_store_writes_through_a_temp_file_and_rename(
    cache: PlanCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    renamed: list[tuple[str, str]] = []
    original = Path.replace

    def spy(self: Path, target: Path) -> Path:
        renamed.append((self.name, Path(target).name))
        return original(self, target)

    monkeypatch.setattr(Path, "replace", spy)
    path = cache.store(KEY, PLAN)
    assert [target for _, target in renamed] == [path.name, path.with_suffix(".json").name]
    assert all(source.endswith(".tmp") and source.startswith(".") for source, _ in renamed)


def test_remove(cache: PlanCache) -> None:
    path = cache.store(KEY, PLAN)
    cache.remove(KEY)
    assert not path.exists()
    assert not path.with_suffix(".json").exists()
    cache.remove(KEY)  # idempotent


def test_timing_cache_is_per_gpu_and_tensorrt_version(cache: PlanCache) -> None:
    orin = cache.timing_cache_path(
        gpu_name="Orin (nvgpu)", compute_capability="8.7", tensorrt_version="10.3.0"
    )
    assert orin.parent == cache.directory
    assert "/" not in orin.name
    assert " " not in orin.name
    assert orin != cache.timing_cache_path(
        gpu_name="Orin (nvgpu)", compute_capability="8.7", tensorrt_version="10.4"
    )
    assert orin != cache.timing_cache_path(
        gpu_name="NVIDIA H100", compute_capability="9.0", tensorrt_version="10.3.0"
    )


def test_entries_list_plans_with_keys_and_problems(cache: PlanCache) -> None:
    assert cache.entries() == []
    cache.store(KEY, PLAN)
    fp32 = dataclasses.replace(KEY, precision="fp32", builder_flags=("no-TF32",))
    cache.store(fp32, b"x" * 10).write_bytes(b"x")
    (cache.directory / "stray.plan").write_bytes(b"?")
    entries = {e.plan_path.name: e for e in cache.entries()}
    assert len(entries) == 3
    whole = entries[cache.path_for(KEY).name]
    assert whole.key == KEY
    assert whole.problem is None
    assert whole.plan_size_bytes == len(PLAN)
    truncated = entries[cache.path_for(fp32).name]
    assert truncated.key == fp32
    assert truncated.problem is not None
    assert "truncated" in truncated.problem
    stray = entries["stray.plan"]
    assert stray.key is None
    assert stray.problem is not None
    assert "unreadable sidecar" in stray.problem
