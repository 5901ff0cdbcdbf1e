"""The TensorRT plan cache: serialized engines on disk, each with a sidecar naming what it was built for.

A plan is only valid for the ONNX bytes, GPU, TensorRT version, precision, profile and builder flags it
was built with. Each plan `<model id>-<version>-<digest[:16]>.plan` has a sidecar `.json` holding its
full `PlanKey`, its size and its SHA-256. `lookup` returns the bytes only when the sidecar's key equals
the wanted key field by field and the plan file is whole; anything else (a stale or foreign plan, a
missing or corrupt sidecar, a truncated plan) is logged with the reason and reported as a miss, so the
caller rebuilds. Nothing here imports TensorRT: it is plain file handling, tested on any machine.

The cache also remembers why TensorRT last failed for a model (`record_failure`, one small JSON per
model version, removed when TensorRT loads it again), so `icu-edge engines list` can tell a field
engineer why the appliance runs on onnxruntime although a GPU is there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

LOGGER = logging.getLogger(__name__)

Precision = Literal["fp16", "fp32"]

_FAILURE_SUFFIX = ".tensorrt-failure.json"

SIDECAR_VERSION = 1
"""Format of the sidecar JSON; a sidecar of another version is treated as foreign."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanKey:
    """Everything a serialized TensorRT plan depends on; plans are interchangeable only if keys are equal."""

    model_id: str
    model_version: str
    onnx_sha256: str
    gpu_name: str
    compute_capability: str
    """`major.minor`, e.g. `8.7` for Jetson Orin."""
    sm_count: int
    tensorrt_version: str
    precision: Precision
    profile: tuple[int, int, int]
    """Batch sizes (min, opt, max) of the optimization profile."""
    builder_flags: tuple[str, ...] = field(default=())
    """Builder settings beyond the defaults, kept sorted so the key is canonical."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "builder_flags", tuple(sorted(self.builder_flags)))
        object.__setattr__(self, "profile", tuple(int(v) for v in self.profile))
        low, opt, high = self.profile
        if not 1 <= low <= opt <= high:
            raise ValueError(f"profile must satisfy 1 <= min <= opt <= max, got {self.profile}")

    def to_dict(self) -> dict[str, Any]:
        """Return the key as plain JSON types."""
        data = asdict(self)
        data["profile"] = list(self.profile)
        data["builder_flags"] = list(self.builder_flags)
        return data

    def to_json(self) -> str:
        """Return the canonical JSON of the key (sorted keys, no whitespace)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def digest(self) -> str:
        """Return the hex SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: object) -> PlanKey:
        """Parse a key written by `to_dict`; raise ValueError when a field is missing, extra or mistyped."""
        if not isinstance(data, dict):
            raise ValueError("key is not an object")
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"key fields {sorted(data)} differ from {sorted(names)}")
        text_fields = ("model_id", "model_version", "onnx_sha256", "gpu_name", "compute_capability")
        for name in (*text_fields, "tensorrt_version", "precision"):
            if not isinstance(data[name], str):
                raise ValueError(f"key field {name} is not a string")
        if data["precision"] not in ("fp16", "fp32"):
            raise ValueError(f"unknown precision {data['precision']!r}")
        if not isinstance(data["sm_count"], int):
            raise ValueError("key field sm_count is not an integer")
        profile = data["profile"]
        if not (isinstance(profile, list) and len(profile) == 3 and all(isinstance(v, int) for v in profile)):
            raise ValueError("key field profile is not three integers")
        flags = data["builder_flags"]
        if not (isinstance(flags, list) and all(isinstance(v, str) for v in flags)):
            raise ValueError("key field builder_flags is not a list of strings")
        return cls(
            model_id=data["model_id"],
            model_version=data["model_version"],
            onnx_sha256=data["onnx_sha256"],
            gpu_name=data["gpu_name"],
            compute_capability=data["compute_capability"],
            sm_count=data["sm_count"],
            tensorrt_version=data["tensorrt_version"],
            precision=data["precision"],
            profile=(profile[0], profile[1], profile[2]),
            builder_flags=tuple(flags),
        )

    def differences(self, other: PlanKey) -> list[str]:
        """Return `field: ours != theirs` for every field that differs."""
        return [
            f"{f.name}: {getattr(other, f.name)!r} != {getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


@dataclass(frozen=True, slots=True, kw_only=True)
class TensorRtFailure:
    """Why TensorRT last failed for one model version, and when (wall clock, UTC)."""

    model_ref: str
    onnx_sha256: str
    reason: str
    at: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanEntry:
    """One plan found in the cache directory (for `icu-edge engines list`)."""

    plan_path: Path
    key: PlanKey | None
    """None when the sidecar could not be read."""
    plan_size_bytes: int | None
    created: str | None
    problem: str | None
    """Why the entry would not be loaded for its own key (None: it is whole)."""


class PlanCache:
    """A directory of TensorRT plans with key sidecars (default: the service's StateDirectory)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path_for(self, key: PlanKey) -> Path:
        """Return where the plan for key lives (its sidecar is the same path with `.json`)."""
        name = f"{_safe(key.model_id)}-{_safe(key.model_version)}-{key.digest()[:16]}.plan"
        return self.directory / name

    def timing_cache_path(self, *, gpu_name: str, compute_capability: str, tensorrt_version: str) -> Path:
        """Return the TensorRT timing cache file for one GPU model and TensorRT version."""
        name = f"timing-{_safe(gpu_name)}-sm{_safe(compute_capability)}-trt{_safe(tensorrt_version)}.cache"
        return self.directory / name

    def lookup(self, key: PlanKey) -> bytes | None:
        """Return the cached plan for key, or None (logging why) when missing, stale, foreign or damaged."""
        plan_path = self.path_for(key)
        problem, plan = _check(plan_path, key)
        if problem is not None:
            if plan_path.exists() or _sidecar(plan_path).exists():
                LOGGER.warning("not loading cached plan %s: %s; it will be rebuilt", plan_path.name, problem)
            else:
                LOGGER.info("no cached plan for %s@%s (%s)", key.model_id, key.model_version, key.precision)
            return None
        return plan

    def store(self, key: PlanKey, plan: bytes) -> Path:
        """Write the plan and its sidecar atomically (temp file, fsync, rename); return the plan path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        plan_path = self.path_for(key)
        sidecar = {
            "sidecar_version": SIDECAR_VERSION,
            "key": key.to_dict(),
            "digest": key.digest(),
            "plan_size_bytes": len(plan),
            "plan_sha256": hashlib.sha256(plan).hexdigest(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # Plan first, sidecar last: a crash in between leaves a sidecar whose size/hash do not match.
        write_atomic(plan_path, plan)
        write_atomic(_sidecar(plan_path), json.dumps(sidecar, indent=2, sort_keys=True).encode())
        LOGGER.info("cached plan %s (%d bytes)", plan_path, len(plan))
        return plan_path

    def remove(self, key: PlanKey) -> None:
        """Delete the plan and sidecar of key, if present (a plan that failed to deserialize)."""
        plan_path = self.path_for(key)
        for path in (_sidecar(plan_path), plan_path):
            path.unlink(missing_ok=True)
        LOGGER.warning("removed cached plan %s", plan_path.name)

    def record_failure(self, *, model_ref: str, onnx_sha256: str, reason: str) -> None:
        """Remember why TensorRT failed for a model version (the daemon falls back to onnxruntime)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        record = {
            "model_ref": model_ref,
            "onnx_sha256": onnx_sha256,
            "reason": reason,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_atomic(self._failure_path(model_ref), json.dumps(record, indent=2, sort_keys=True).encode())

    def clear_failure(self, *, model_ref: str) -> None:
        """Forget a model version's TensorRT failure (it loaded on TensorRT again)."""
        self._failure_path(model_ref).unlink(missing_ok=True)

    def failures(self) -> list[TensorRtFailure]:
        """Return the recorded TensorRT failures, by model; unreadable records are skipped."""
        found: list[TensorRtFailure] = []
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.glob(f"*{_FAILURE_SUFFIX}")):
            try:
                record = json.loads(path.read_bytes())
                found.append(
                    TensorRtFailure(
                        model_ref=str(record["model_ref"]),
                        onnx_sha256=str(record["onnx_sha256"]),
                        reason=str(record["reason"]),
                        at=str(record["at"]),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                LOGGER.warning("unreadable TensorRT failure record %s: %s", path.name, exc)
        return found

    def _failure_path(self, model_ref: str) -> Path:
        return self.directory / f"{_safe(model_ref)}{_FAILURE_SUFFIX}"

    def entries(self) -> list[PlanEntry]:
        """Return every plan in the directory, with its key and whether it is whole."""
        found: list[PlanEntry] = []
        if not self.directory.is_dir():
            return found
        for plan_path in sorted(self.directory.glob("*.plan")):
            try:
                meta = json.loads(_sidecar(plan_path).read_bytes())
                key = PlanKey.from_dict(meta.get("key"))
            except (OSError, ValueError, AttributeError) as exc:
                found.append(
                    PlanEntry(
                        plan_path=plan_path,
                        key=None,
                        plan_size_bytes=_size(plan_path),
                        created=None,
                        problem=f"unreadable sidecar: {exc}",
                    )
                )
                continue
            problem, _ = _check(plan_path, key)
            found.append(
                PlanEntry(
                    plan_path=plan_path,
                    key=key,
                    plan_size_bytes=_size(plan_path),
                    created=str(meta.get("created")),
                    problem=problem,
                )
            )
        return found


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to path via a temp file in the same directory, fsync it, rename it, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory_fd = os.open(path.parent, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on a directory
            os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def _check(plan_path: Path, key: PlanKey) -> tuple[str | None, bytes]:
    """Return (why the plan at plan_path is not a whole plan for key, or None; its bytes)."""
    try:
        meta = json.loads(_sidecar(plan_path).read_bytes())
    except FileNotFoundError:
        return "sidecar missing", b""
    except (OSError, ValueError) as exc:
        return f"sidecar unreadable: {exc}", b""
    if not isinstance(meta, dict) or meta.get("sidecar_version") != SIDECAR_VERSION:
        return "sidecar of an unknown format", b""
    try:
        stored = PlanKey.from_dict(meta.get("key"))
    except ValueError as exc:
        return f"sidecar key invalid: {exc}", b""
    if stored != key:
        return "built for another configuration (" + "; ".join(key.differences(stored)) + ")", b""
    try:
        plan = plan_path.read_bytes()
    except FileNotFoundError:
        return "plan file missing", b""
    except OSError as exc:
        return f"plan file unreadable: {exc}", b""
    if len(plan) != meta.get("plan_size_bytes"):
        return f"plan is {len(plan)} bytes, sidecar says {meta.get('plan_size_bytes')} (truncated?)", b""
    if hashlib.sha256(plan).hexdigest() != meta.get("plan_sha256"):
        return "plan SHA-256 does not match its sidecar (corrupted)", b""
    return None, plan


def _sidecar(plan_path: Path) -> Path:
    return plan_path.with_suffix(".json")


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _safe(text: str) -> str:
    """Return text usable in a file name (letters, digits, `.`, `_`, `-`)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"
