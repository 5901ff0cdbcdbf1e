"""`icu-edge engines list|build|verify|bench|eval` on a tiny test model."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from engines.catalog import MANIFEST_FILE, InstalledModel, write_manifest
from engines.cli import EX_CONFIG, EX_FAILED, EX_OK, EX_UNAVAILABLE, EX_USAGE, main
from engines.plan_cache import PlanCache, PlanKey
from engines.tensorrt_backend import cuda_status
from engines.testing import REFERENCE_FILE, build_test_model

USABLE, WHY = cuda_status()


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def model(models_dir: Path) -> InstalledModel:
    return build_test_model(models_dir)


def _dirs(models_dir: Path, tmp_path: Path) -> list[str]:
    return ["--models-dir", str(models_dir), "--cache-dir", str(tmp_path / "engines")]


def test_list_json_shows_models_and_cached_plans(
    model: InstalledModel, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = PlanKey(
        model_id=model.card.id,
        model_version=model.card.version,
        onnx_sha256=model.card.onnx_sha256,
        gpu_name="Orin",
        compute_capability="8.7",
        sm_count=16,
        tensorrt_version="10.3.0",
        precision="fp16",
        profile=(1, 8, 64),
        builder_flags=("FP16",),
    )
    PlanCache(tmp_path / "engines").store(key, b"plan")
    assert main(["list", "--json", *_dirs(models_dir, tmp_path)]) == EX_OK
    document = json.loads(capsys.readouterr().out)
    [listed] = document["models"]
    assert listed["id"] == "test-model"
    assert listed["version"] == "1.0.0"
    assert listed["kind"] == "baseline"
    assert listed["default"] is True
    assert listed["sha256"] == model.card.onnx_sha256
    assert listed["size_bytes"] == model.onnx_path.stat().st_size
    assert listed["summary"].startswith("Test model")
    assert listed["events_estimated"] == ["map_below_65", "spo2_below_90"]
    [plan] = document["plans"]
    assert plan["key"] == key.to_dict()
    assert plan["problem"] is None


def test_list_text(
    model: InstalledModel, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list", *_dirs(models_dir, tmp_path)]) == EX_OK
    out = capsys.readouterr().out
    assert "test-model@1.0.0" in out
    assert model.card.onnx_sha256[:12] in out
    assert "event probabilities published: map_below_65, spo2_below_90" in out
    assert "TensorRT plans" in out


def test_build_without_cuda_exits_69_with_one_line(
    model: InstalledModel, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if USABLE:
        pytest.skip("a CUDA device is usable here: build builds")
    assert main(["build", *_dirs(models_dir, tmp_path)]) == EX_UNAVAILABLE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"no usable CUDA device ({WHY}): onnxruntime runs the ONNX directly, nothing to build\n"
    )


def test_verify_onnxruntime_passes_against_the_closed_form_reference(
    model: InstalledModel, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # reference.npz of the test model holds numpy's closed-form outputs, not onnxruntime's.
    assert main(["verify", "--backend", "onnxruntime", *_dirs(models_dir, tmp_path)]) == EX_OK
    out = capsys.readouterr().out
    assert "ONNX SHA-256 matches its card" in out
    assert "quantiles          max abs error" in out
    assert "event_probability  max abs error" in out
    assert out.rstrip().endswith("PASS")


@pytest.mark.parametrize("output", ["quantiles", "event_probability"])
def test_verify_fails_on_a_tampered_reference(
    model: InstalledModel, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str
) -> None:
    path = model.onnx_path.parent / REFERENCE_FILE
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays[output] = arrays[output].copy()
    arrays[output][3, 0, 1] += 1e-3
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    write_manifest(path.parent)  # a listed reference whose outputs are wrong, not a tampered file
    assert main(["verify", "--backend", "onnxruntime", *_dirs(models_dir, tmp_path)]) == EX_FAILED
    out = capsys.readouterr().out
    assert "FAIL outputs outside tolerance" in out


def test_verify_fails_on_a_model_that_does_not_match_its_card(
    model: InstalledModel, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_test_model(models_dir, model_id="other", default=False)
    other = models_dir / "other" / "1.0.0" / "model.onnx"
    other.write_bytes(other.read_bytes() + b"\0")
    write_manifest(other.parent)  # the manifest agrees with the bytes; the card does not
    assert main(["verify", "--backend", "onnxruntime", *_dirs(models_dir, tmp_path)]) == EX_FAILED
    out = capsys.readouterr().out
    assert "FAIL" in out
    assert "does not match its card" in out


@pytest.mark.parametrize("file", ["model.onnx", "card.json", REFERENCE_FILE])
def test_verify_refuses_a_file_that_differs_from_the_manifest(
    model: InstalledModel, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], file: str
) -> None:
    build_test_model(models_dir, model_id="other", default=False)
    tampered = models_dir / "other" / "1.0.0" / file
    tampered.write_bytes(tampered.read_bytes() + b" ")
    assert main(["verify", "--backend", "onnxruntime", *_dirs(models_dir, tmp_path)]) == EX_FAILED
    out = capsys.readouterr().out
    assert f"FAIL {tampered}: SHA-256 " in out
    assert f"does not match {MANIFEST_FILE}" in out


def test_manifest_writes_checks_and_names_an_unlisted_file(
    model: InstalledModel, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = model.onnx_path.parent
    (directory / MANIFEST_FILE).unlink()
    assert main(["manifest", "--check", str(directory)]) == EX_FAILED
    assert f"{directory / MANIFEST_FILE}: missing" in capsys.readouterr().out
    assert main(["manifest", str(directory)]) == EX_OK
    assert "ok   test-model@1.0.0" in capsys.readouterr().out
    assert main(["manifest", "--check", str(directory)]) == EX_OK
    capsys.readouterr()
    (directory / "notes.txt").write_text("added after the manifest")
    assert main(["manifest", "--check", str(directory)]) == EX_FAILED
    assert f"{directory / 'notes.txt'}: not listed in {MANIFEST_FILE}" in capsys.readouterr().out


def test_list_shows_why_tensorrt_is_not_used_and_refused_models(
    model: InstalledModel, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_test_model(models_dir, model_id="other", default=False)
    (models_dir / "other" / "1.0.0" / "card.json").write_text("{}")
    assert main(["list", "--json", *_dirs(models_dir, tmp_path)]) == EX_OK
    document = json.loads(capsys.readouterr().out)
    assert document["tensorrt"] == {"usable": USABLE, "reason": WHY}
    [refused] = document["refused"]
    assert refused.startswith(f"{models_dir / 'other' / '1.0.0' / 'card.json'}: SHA-256 ")
    assert main(["list", *_dirs(models_dir, tmp_path)]) == EX_OK
    out = capsys.readouterr().out
    assert f"TensorRT: {'usable' if USABLE else 'not usable, auto runs onnxruntime'}: {WHY}" in out
    assert f"REFUSED {refused}" in out


def test_list_shows_the_last_tensorrt_failure(
    model: InstalledModel, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    PlanCache(tmp_path / "engines").record_failure(
        model_ref=model.ref, onnx_sha256=model.card.onnx_sha256, reason="TensorRT build failed: no memory"
    )
    assert main(["list", "--json", *_dirs(models_dir, tmp_path)]) == EX_OK
    [failure] = json.loads(capsys.readouterr().out)["tensorrt_failures"]
    assert failure["model"] == "test-model@1.0.0"
    assert failure["reason"] == "TensorRT build failed: no memory"
    assert main(["list", *_dirs(models_dir, tmp_path)]) == EX_OK
    assert f"test-model@1.0.0: TensorRT failed at {failure['at']}: TensorRT build failed: no memory" in (
        capsys.readouterr().out
    )


def test_verify_fails_without_a_reference(
    model: InstalledModel, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (model.onnx_path.parent / REFERENCE_FILE).unlink()
    write_manifest(model.onnx_path.parent)
    assert main(["verify", "--backend", "onnxruntime", *_dirs(models_dir, tmp_path)]) == EX_FAILED
    assert "no reference.npz" in capsys.readouterr().out


def test_bench_json_reports_batched_vs_per_bed_latency(
    model: InstalledModel, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--backend", "onnxruntime", "--beds", "1,8", "--repeats", "5", "--json"]
    assert main([*argv, *_dirs(models_dir, tmp_path)]) == EX_OK
    document = json.loads(capsys.readouterr().out)
    assert document["method"]["backend"] == "onnxruntime"
    assert document["method"]["model"] == "test-model@1.0.0"
    assert document["method"]["repeats"] == 5
    assert document["method"]["inputs"].startswith(REFERENCE_FILE)
    assert [row["beds"] for row in document["rows"]] == [1, 8]
    for row in document["rows"]:
        assert row["ratio"] > 0
        assert row["batched_p50_ms"] > 0
        assert row["batched_p99_ms"] >= row["batched_p50_ms"]
        assert row["per_bed_calls_p50_ms"] > 0
        assert row["per_bed_cost_ms"] == pytest.approx(row["batched_p50_ms"] / row["beds"])


def test_bench_markdown_table(
    model: InstalledModel, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--backend", "onnxruntime", "--beds", "2", "--repeats", "3"]
    assert main([*argv, *_dirs(models_dir, tmp_path)]) == EX_OK
    out = capsys.readouterr().out
    assert out.startswith("| beds | batched p50 (ms)")
    assert "\n| 2 | " in out
    assert "Method: test-model@1.0.0 on onnxruntime" in out


@pytest.mark.parametrize(
    "argv",
    [[], ["frobnicate"], ["bench", "--beds", "0"], ["bench", "--beds", "65"], ["bench", "--repeats", "0"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EX_USAGE
    assert capsys.readouterr().err


def test_models_dir_that_is_a_file_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "file"
    path.write_text("")
    assert main(["list", "--models-dir", str(path)]) == EX_CONFIG
    assert "not a directory" in capsys.readouterr().err


def test_an_unknown_model_is_unavailable(
    model: InstalledModel, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--model", "nope", "--backend", "onnxruntime", *_dirs(models_dir, tmp_path)]
    assert main(argv) == EX_UNAVAILABLE
    assert "no model 'nope'" in capsys.readouterr().err


def test_eval_dispatches_to_the_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def eval_main(argv: list[str]) -> int:
        seen.append(argv)
        return 7

    fake = types.ModuleType("engines.evaluate")
    fake.eval_main = eval_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "engines.evaluate", fake)
    assert main(["eval", "--model", "x", "--json"]) == 7
    assert seen == [["--model", "x", "--json"]]
