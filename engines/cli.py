"""`icu-edge engines list|build|verify|bench|eval|manifest`: manage and check the forecasting engines.

`manifest DIR...` writes each model directory's SHA256SUMS (`--check`: verifies it).

Exit codes: 0 ok; 1 verification failed (a hash, an output outside tolerance, a non-conformant or
unverifiable model, a file that differs from its manifest); 2 usage; 69 unavailable (no usable CUDA
device for `build` or `--backend tensorrt`, no such model, onnxruntime missing); 78 configuration
(`--models-dir`, `--cache-dir` or a manifest's DIR is not a directory).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.backend import BackendName, BatchInput, BatchOutput, EngineBackend
from engines.backends import DEFAULT_CACHE_DIR, BackendUnavailable, open_backend
from engines.catalog import (
    MANIFEST_FILE,
    SHIPPED_MODELS_DIR,
    InstalledModel,
    ModelError,
    find_models,
    load_model,
    scan_models,
    select_model,
    write_manifest,
)
from engines.plan_cache import PlanCache, Precision
from engines.spec import MAX_BATCH
from engines.tensorrt_backend import (
    OPT_BATCH,
    TensorRtError,
    build_plan,
    cuda_status,
    device_info,
    plan_key,
    tolerance_for,
    verify_precisions,
)
from engines.testing import REFERENCE_FILE, Tolerance, check_inputs, compare_outputs, load_reference

LOGGER = logging.getLogger(__name__)

EX_OK = 0
EX_FAILED = 1
EX_USAGE = 2
EX_UNAVAILABLE = 69
EX_CONFIG = 78

ONNXRUNTIME_TOLERANCE = Tolerance(quantiles_abs=1e-5, probability_abs=1e-5, relative=1e-5)
"""onnxruntime vs the exporter's reference outputs: float32 rounding only (|a - e| <= 1e-5 + 1e-5·|e|)."""

WARMUP_RUNS = 10

_EPILOG = """exit codes: 0 ok, 1 verification failed, 2 usage, 69 unavailable (no usable CUDA device for
build or --backend tensorrt; no such model; onnxruntime missing), 78 configuration (--models-dir or
--cache-dir is not a directory)"""


def main(argv: list[str]) -> int:
    """Run `icu-edge engines SUBCOMMAND ...`; return the exit code."""
    if argv[:1] == ["eval"]:
        try:
            from engines.evaluate import eval_main  # pulls in the evaluation's dependencies: only for eval
        except ImportError as exc:
            print(f"engines eval is unavailable: {exc}", file=sys.stderr)
            return EX_UNAVAILABLE
        return eval_main(argv[1:])
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EX_USAGE
    for option in ("models_dir", "cache_dir"):
        path: Path | None = getattr(args, option, None)
        if path is not None and path.exists() and not path.is_dir():
            print(f"--{option.replace('_', '-')} {path}: not a directory", file=sys.stderr)
            return EX_CONFIG
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        return command(args)
    except ModelError as exc:
        print(f"model: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    except BackendUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return EX_UNAVAILABLE
    except ImportError as exc:
        print(f"missing dependency: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--models-dir",
        type=Path,
        default=SHIPPED_MODELS_DIR,
        help="models root (<id>/<version>/) (default: %(default)s)",
    )
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help="TensorRT plan cache (default: %(default)s)",
    )
    parser = argparse.ArgumentParser(
        prog="icu-edge engines", description="Manage and check the forecasting engines.", epilog=_EPILOG
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser(
        "list",
        parents=[common],
        help="installed models and cached TensorRT plans",
        description="List the installed models (refused ones with the reason), the cached TensorRT "
        "plans, and whether TensorRT is usable here.",
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=_list)

    build = commands.add_parser(
        "build",
        parents=[common],
        help="build the TensorRT plan(s)",
        description="Build the TensorRT plans of every installed model (or --model) into the cache; "
        "needs a CUDA device. --precision auto keeps FP16 only within tolerance of onnxruntime.",
        epilog=_EPILOG,
    )
    build.add_argument("--model", metavar="REF", help="id or id@version (default: every installed model)")
    build.add_argument(
        "--precision",
        choices=("auto", "fp16", "fp32"),
        default="auto",
        help="auto: build both, keep FP16 only within tolerance of onnxruntime (default: %(default)s)",
    )
    build.add_argument("--force", action="store_true", help="rebuild even when a valid plan is cached")
    build.set_defaults(run=_build)

    verify = commands.add_parser(
        "verify",
        parents=[common],
        help="check hashes and reference outputs",
        description="Check every installed model's files against its manifest and card, then run one "
        "model (--model, else the default) on its reference windows and compare with the exporter's outputs.",
        epilog=_EPILOG,
    )
    verify.add_argument("--model", metavar="REF", help="id or id@version (default: the default model)")
    verify.add_argument(
        "--backend",
        choices=("auto", "onnxruntime", "tensorrt"),
        default="auto",
        help="auto: TensorRT when usable, else onnxruntime (default: %(default)s)",
    )
    verify.set_defaults(run=_verify)

    bench = commands.add_parser(
        "bench",
        parents=[common],
        help="latency of one tick, batched vs one call per bed",
        description="Measure the latency of one forecast tick for each bed count: one batched call vs "
        "one call per bed.",
        epilog=_EPILOG,
    )
    bench.add_argument("--model", metavar="REF", help="id or id@version (default: the default model)")
    bench.add_argument(
        "--backend",
        choices=("auto", "onnxruntime", "tensorrt"),
        default="auto",
        help="auto: TensorRT when usable, else onnxruntime (default: %(default)s)",
    )
    bench.add_argument(
        "--beds", type=_beds, default=(1, 8, 32, 64), help="comma-separated bed counts (default: 1,8,32,64)"
    )
    bench.add_argument(
        "--repeats", type=_positive, default=200, help="timed repeats per bed count (default: %(default)s)"
    )
    bench.add_argument("--json", action="store_true", help="print JSON")
    bench.set_defaults(run=_bench)

    manifest = commands.add_parser(
        "manifest",
        help=f"write (or --check) the {MANIFEST_FILE} of model directories",
        description=f"Write {MANIFEST_FILE}, the SHA-256 of every file, into each model directory "
        "(<id>/<version>/). Write it only for files you have checked: the catalog loads exactly what "
        "it lists and refuses a model with a changed, missing or unlisted file.",
        epilog=_EPILOG,
    )
    manifest.add_argument("directories", nargs="+", type=Path, metavar="DIR", help="a model directory")
    manifest.add_argument("--check", action="store_true", help="verify the manifests; write nothing")
    manifest.set_defaults(run=_manifest)

    commands.add_parser("eval", help="held-out evaluation of a model (engines.evaluate; see eval --help)")
    return parser


def _beds(text: str) -> tuple[int, ...]:
    try:
        beds = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers expected") from exc
    if not beds or any(not 1 <= b <= MAX_BATCH for b in beds):
        raise argparse.ArgumentTypeError(f"{text!r}: every bed count must be 1..{MAX_BATCH}")
    return beds


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: an integer expected") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def _model(args: argparse.Namespace) -> InstalledModel:
    return select_model(find_models(args.models_dir), ref=args.model)


# --- list ---------------------------------------------------------------------------------------------


def _list(args: argparse.Namespace) -> int:
    models, refused = scan_models(args.models_dir)
    cache = PlanCache(args.cache_dir)
    plans = cache.entries()
    failures = cache.failures()
    usable, why = cuda_status()
    if args.json:
        document = {
            "models_dir": str(args.models_dir),
            "cache_dir": str(args.cache_dir),
            "tensorrt": {"usable": usable, "reason": why},
            "tensorrt_failures": [
                {"model": f.model_ref, "onnx_sha256": f.onnx_sha256, "reason": f.reason, "at": f.at}
                for f in failures
            ],
            "refused": refused,
            "models": [
                {
                    "id": m.card.id,
                    "version": m.card.version,
                    "kind": m.card.kind,
                    "default": m.card.default,
                    "size_bytes": m.card.size_bytes,
                    "sha256": m.card.onnx_sha256,
                    "summary": m.card.summary,
                    "events_estimated": sorted(m.events_estimated),
                    "reference": (m.onnx_path.parent / REFERENCE_FILE).is_file(),
                }
                for m in models
            ],
            "plans": [
                {
                    "path": str(p.plan_path),
                    "key": None if p.key is None else p.key.to_dict(),
                    "plan_size_bytes": p.plan_size_bytes,
                    "created": p.created,
                    "problem": p.problem,
                }
                for p in plans
            ],
        }
        print(json.dumps(document, indent=2))
        return EX_OK
    print(f"TensorRT: {'usable' if usable else 'not usable, auto runs onnxruntime'}: {why}")
    for failure in failures:
        print(f"  {failure.model_ref}: TensorRT failed at {failure.at}: {failure.reason}")
    print(f"models in {args.models_dir}:")
    if not models:
        print("  none")
    for m in models:
        flag = "default" if m.card.default else "       "
        print(
            f"  {m.ref:<28} {m.card.kind:<8} {flag} {m.card.size_bytes / 1024:8.1f} KiB "
            f"sha256 {m.card.onnx_sha256[:12]}  {m.card.summary[:80]}"
        )
        print(f"    event probabilities published: {', '.join(sorted(m.events_estimated)) or 'none'}")
    for problem in refused:
        print(f"  REFUSED {problem}")
    print(f"TensorRT plans in {args.cache_dir}:")
    if not plans:
        print("  none")
    for p in plans:
        size = "?" if p.plan_size_bytes is None else f"{p.plan_size_bytes / 1e6:.1f} MB"
        state = "ok" if p.problem is None else f"UNUSABLE: {p.problem}"
        if p.key is None:
            print(f"  {p.plan_path.name}  {size}  {state}")
            continue
        k = p.key
        print(
            f"  {k.model_id}@{k.model_version} {k.precision} on {k.gpu_name} (sm {k.compute_capability}, "
            f"{k.sm_count} SMs), TensorRT {k.tensorrt_version}, batch {k.profile[0]}/{k.profile[1]}/"
            f"{k.profile[2]}, flags {','.join(k.builder_flags) or '-'}, {size}, {p.created}: {state}"
        )
    return EX_OK


# --- manifest -----------------------------------------------------------------------------------------


def _manifest(args: argparse.Namespace) -> int:
    status = EX_OK
    for directory in args.directories:
        if not directory.is_dir():
            print(f"{directory}: not a directory", file=sys.stderr)
            return EX_CONFIG
        try:
            if not args.check:
                written = write_manifest(directory)
                print(f"wrote {written} ({len(written.read_text().splitlines())} files)")
            model = load_model(directory)  # checks every file against the manifest
        except ModelError as exc:
            print(f"FAIL {exc}")
            status = EX_FAILED
            continue
        print(f"ok   {model.ref}: every file matches {directory / MANIFEST_FILE}")
    return status


# --- build --------------------------------------------------------------------------------------------


def _build(args: argparse.Namespace) -> int:
    usable, why = cuda_status()
    if not usable:
        print(
            f"no usable CUDA device ({why}): onnxruntime runs the ONNX directly, nothing to build",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    models = [_model(args)] if args.model else find_models(args.models_dir)
    if not models:
        raise ModelError(f"no models in {args.models_dir}")
    cache = PlanCache(args.cache_dir)
    print(why)
    for model in models:
        started = time.perf_counter()
        if args.precision == "auto":
            if args.force:
                for both in ("fp32", "fp16"):
                    build_plan(model=model, precision=both, cache=cache)
            decision = verify_precisions(model=model, cache=cache)
            for check in decision.checks:
                c, t = check.comparison, check.tolerance
                print(
                    f"{model.ref} {check.precision} vs {decision.reference} on {decision.inputs}: "
                    f"quantiles max abs error {c.quantiles_max_abs:.3g} (tolerance {t.quantiles_abs:g}), "
                    f"probability {c.probability_max_abs:.3g} (tolerance {t.probability_abs:g}): "
                    f"{'within' if c.within else 'OUTSIDE'}"
                )
            print(f"{model.ref}: runs {decision.chosen} ({time.perf_counter() - started:.1f} s)")
            continue
        precision: Precision = args.precision
        key = plan_key(
            model=model, precision=precision, device=device_info(), max_batch=MAX_BATCH, opt_batch=OPT_BATCH
        )
        if not args.force and cache.lookup(key) is not None:
            print(f"{model.ref} {precision}: cached plan {cache.path_for(key)} is up to date")
            continue
        plan = build_plan(model=model, precision=precision, cache=cache)
        print(
            f"{model.ref} {precision}: built {cache.path_for(key)} ({len(plan) / 1e6:.1f} MB) "
            f"in {time.perf_counter() - started:.1f} s"
        )
    return EX_OK


# --- verify -------------------------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    failed = False
    for card_path in sorted(args.models_dir.glob("*/*/card.json")):
        try:
            checked = load_model(card_path.parent)
        except ModelError as exc:
            print(f"FAIL {exc}")
            failed = True
            continue
        print(f"ok   {checked.ref}: ONNX SHA-256 matches its card ({checked.card.onnx_sha256[:12]}…)")
    model = _model(args)
    reference = load_reference(model)
    if reference is None:
        print(f"FAIL {model.ref}: no {REFERENCE_FILE}: its outputs cannot be checked")
        return EX_FAILED
    inputs, expected = reference
    try:
        backend, reason = _open(model=model, backend=args.backend, cache_dir=args.cache_dir)
    except ModelError as exc:
        print(f"FAIL {exc}")
        return EX_FAILED
    try:
        actual = _run_chunked(backend, inputs)
        tolerance = (
            ONNXRUNTIME_TOLERANCE
            if backend.name == "onnxruntime"
            else tolerance_for(_precision(backend.precision))
        )
    finally:
        backend.close()
    comparison = compare_outputs(actual=actual, expected=expected, tolerance=tolerance)
    print(f"{model.ref} on {backend.name} ({backend.precision}; {reason}), {inputs.beds} reference windows:")
    rel = f" + {tolerance.relative:g}·|reference|" if tolerance.relative else ""
    for name, error, absolute in (
        ("quantiles", comparison.quantiles_max_abs, tolerance.quantiles_abs),
        ("event_probability", comparison.probability_max_abs, tolerance.probability_abs),
    ):
        print(f"  {name:<18} max abs error {error:.3g}  (tolerance {absolute:g}{rel})")
    if not comparison.within:
        print("FAIL outputs outside tolerance")
        return EX_FAILED
    if failed:
        print("FAIL some installed models do not match their cards")
        return EX_FAILED
    print("PASS")
    return EX_OK


def _precision(text: str) -> Precision:
    return "fp16" if text == "fp16" else "fp32"


def _open(*, model: InstalledModel, backend: BackendName, cache_dir: Path) -> tuple[EngineBackend, str]:
    try:
        return open_backend(model=model, backend=backend, cache_dir=cache_dir)
    except TensorRtError as exc:
        raise BackendUnavailable(f"TensorRT failed: {exc}") from exc


def _run_chunked(backend: EngineBackend, inputs: BatchInput) -> BatchOutput:
    """Run any number of windows through backend in batches of at most MAX_BATCH."""
    outputs = [
        backend.infer(
            BatchInput(
                values=inputs.values[start : start + MAX_BATCH],
                mask=inputs.mask[start : start + MAX_BATCH],
                context=inputs.context[start : start + MAX_BATCH],
                context_mask=inputs.context_mask[start : start + MAX_BATCH],
            )
        )
        for start in range(0, inputs.beds, MAX_BATCH)
    ]
    return BatchOutput(
        quantiles=np.concatenate([o.quantiles for o in outputs]),
        event_probability=np.concatenate([o.event_probability for o in outputs]),
    )


# --- bench --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchRow:
    """Latency of one tick for `beds` beds: one batched call vs one call per bed."""

    beds: int
    batched_p50_ms: float
    batched_p99_ms: float
    per_bed_calls_p50_ms: float
    per_bed_calls_p99_ms: float
    ratio: float
    """per_bed_calls_p50_ms / batched_p50_ms: how many times faster batching is."""
    per_bed_cost_ms: float
    """batched_p50_ms / beds."""


def _bench(args: argparse.Namespace) -> int:
    model = _model(args)
    backend, reason = _open(model=model, backend=args.backend, cache_dir=args.cache_dir)
    rows: list[BenchRow] = []
    try:
        source = ""
        for beds in args.beds:
            batch, source = check_inputs(model, beds=beds)
            singles = [_rows(batch, index) for index in range(beds)]
            for _ in range(WARMUP_RUNS):
                backend.infer(batch)
                for single in singles:
                    backend.infer(single)
            batched_ns: list[int] = []
            per_bed_ns: list[int] = []
            for _ in range(args.repeats):
                start = time.perf_counter_ns()
                backend.infer(batch)
                middle = time.perf_counter_ns()
                for single in singles:
                    backend.infer(single)
                per_bed_ns.append(time.perf_counter_ns() - middle)
                batched_ns.append(middle - start)
            batched = np.array(batched_ns, dtype=np.float64) / 1e6
            per_bed = np.array(per_bed_ns, dtype=np.float64) / 1e6
            b50, p50 = float(np.percentile(batched, 50)), float(np.percentile(per_bed, 50))
            rows.append(
                BenchRow(
                    beds=beds,
                    batched_p50_ms=b50,
                    batched_p99_ms=float(np.percentile(batched, 99)),
                    per_bed_calls_p50_ms=p50,
                    per_bed_calls_p99_ms=float(np.percentile(per_bed, 99)),
                    ratio=p50 / b50,
                    per_bed_cost_ms=b50 / beds,
                )
            )
        method = _method(backend=backend, reason=reason, source=source, repeats=args.repeats)
    finally:
        backend.close()
    if args.json:
        print(json.dumps({"method": method, "rows": [_row_dict(r) for r in rows]}, indent=2))
        return EX_OK
    print(
        "| beds | batched p50 (ms) | batched p99 (ms) | one call per bed p50 (ms) "
        "| one call per bed p99 (ms) | ratio (per-bed / batched) | batched cost per bed (ms) |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r.beds} | {r.batched_p50_ms:.3f} | {r.batched_p99_ms:.3f} | {r.per_bed_calls_p50_ms:.3f} | "
            f"{r.per_bed_calls_p99_ms:.3f} | {r.ratio:.1f} | {r.per_bed_cost_ms:.4f} |"
        )
    print()
    print(
        f"Method: {method['model']} on {method['backend']} ({method['precision']}, "
        f"{method['threads']}); {method['reason']}; Python {method['python']}, "
        f"onnxruntime {method['onnxruntime']}; CPU {method['cpu']} ({method['cpu_count']} logical); "
        f"inputs: {method['inputs']}; {method['warmup']} warm-up then {method['repeats']} repeats per bed "
        "count, "
        "batched call and B one-bed calls timed alternately with time.perf_counter_ns (includes input checks "
        "and output copies)."
    )
    return EX_OK


def _rows(batch: BatchInput, index: int) -> BatchInput:
    return BatchInput(
        values=batch.values[index : index + 1],
        mask=batch.mask[index : index + 1],
        context=batch.context[index : index + 1],
        context_mask=batch.context_mask[index : index + 1],
    )


def _row_dict(row: BenchRow) -> dict[str, float | int]:
    return {
        "beds": row.beds,
        "batched_p50_ms": row.batched_p50_ms,
        "batched_p99_ms": row.batched_p99_ms,
        "per_bed_calls_p50_ms": row.per_bed_calls_p50_ms,
        "per_bed_calls_p99_ms": row.per_bed_calls_p99_ms,
        "ratio": row.ratio,
        "per_bed_cost_ms": row.per_bed_cost_ms,
    }


def _method(*, backend: EngineBackend, reason: str, source: str, repeats: int) -> dict[str, Any]:
    try:
        import onnxruntime

        ort_version = str(onnxruntime.__version__)
    except ImportError:
        ort_version = "not installed"
    threads = getattr(backend, "intra_op_threads", None)
    return {
        "model": backend.model.ref,
        "backend": backend.name,
        "precision": backend.precision,
        "reason": reason,
        "threads": f"{threads} intra-op thread(s)" if threads is not None else "one inference thread",
        "python": platform.python_version(),
        "onnxruntime": ort_version,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "inputs": source,
        "warmup": WARMUP_RUNS,
        "repeats": repeats,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
