"""The shipped and installed models: `engines/models/<id>/<version>/` with `model.onnx` and `card.json`.

A model is identified by id and version; its card says what it is, what it was trained on, how it
scored against persistence, where it must not be used, and whether it is the default.

Integrity: every model directory carries a manifest, `SHA256SUMS` (the `sha256sum` format, so
`sha256sum -c SHA256SUMS` checks it in the field too), naming every file in the directory with its
SHA-256. The catalog checks it before it reads anything else: a file whose bytes differ, a listed file
that is missing, or a file the manifest does not list refuses the whole model, with an error naming the
file. The card's `onnx_sha256` must match too, and the backends hash the ONNX bytes they load
(`InstalledModel.read_onnx`), so a file swapped after the check is not run either. `write_manifest`
(`icu-edge engines manifest DIR`, and the training pipeline's export) writes the manifest.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engines.plan_cache import write_atomic
from engines.spec import EVENTS

LOGGER = logging.getLogger(__name__)

SHIPPED_MODELS_DIR = Path(__file__).parent / "models"
MANIFEST_FILE = "SHA256SUMS"
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
_EVENT_KEYS = frozenset(event.key for event in EVENTS)


class MetricRow(BaseModel):
    """One held-out accuracy figure of one signal at one horizon."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    signal: str
    horizon_min: int
    n: int
    mae: float
    mae_persistence: float
    mae_ratio: float = Field(description="mae / mae_persistence; < 1 beats persistence")
    coverage_10_90: float | None = None
    pinball: float | None = None
    mae_smoother: float | None = Field(
        default=None, description="MAE of the best fixed smoother (mean of the last k valid minutes)"
    )
    smoother_min: int | None = Field(default=None, description="k of that best smoother, in minutes")


class EventMetricRow(BaseModel):
    """Held-out scores of one event probability at one horizon (forward design, every minute scored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    event: str
    horizon_min: int
    n: int
    positives: int
    auroc: float | None
    auprc: float | None
    auroc_current_value: float | None
    auprc_current_value: float | None
    lead_time_min: float | None = None
    false_alarms_per_bed_hour: float | None = None
    threshold: float | None = None


class ModelCard(BaseModel):
    """What a model is and how far to trust it (also rendered as card.md next to the model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    version: str
    kind: Literal["baseline", "learned"]
    default: bool = Field(description="the runtime loads the default model unless the config names one")
    summary: str
    inputs: str
    outputs: str
    training_data: str
    evaluation_data: str
    metrics: list[MetricRow] = Field(default_factory=list)
    event_metrics: list[EventMetricRow] = Field(default_factory=list)
    limits_of_use: str
    event_definitions: dict[str, str]
    events_estimated: list[str] | None = Field(
        default=None,
        description="the events whose probability the runtime publishes: those whose estimate beat the "
        "current-value baseline on held-out data; absent: none (the conservative reading)",
    )
    seed: int | None = None
    onnx_sha256: str
    size_bytes: int
    created: str

    @field_validator("events_estimated")
    @classmethod
    def _known_events(cls, events: list[str] | None) -> list[str] | None:
        unknown = sorted(set(events or ()) - _EVENT_KEYS)
        if unknown:
            raise ValueError(f"unknown event(s) {unknown}; known: {sorted(_EVENT_KEYS)}")
        return events


class ModelError(Exception):
    """A model is missing, unreadable, or its bytes do not match its card."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstalledModel:
    """A model on disk whose card was read and whose ONNX hash was checked."""

    card: ModelCard
    onnx_path: Path

    @property
    def ref(self) -> str:
        """Return `id@version`."""
        return f"{self.card.id}@{self.card.version}"

    @property
    def events_estimated(self) -> frozenset[str]:
        """Return the events whose probability may be published (a card that lists none: no event)."""
        return frozenset(self.card.events_estimated or ())

    def read_onnx(self) -> bytes:
        """Return the ONNX bytes after checking them against the card (the file may change after loading)."""
        data = self.onnx_path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != self.card.onnx_sha256:
            raise ModelError(
                f"{self.onnx_path}: SHA-256 {actual[:12]}… no longer matches its card "
                f"({self.card.onnx_sha256[:12]}…): changed since it was checked; refusing to load it"
            )
        return data


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> Path:
    """Write `SHA256SUMS` listing every file in a model directory; return its path."""
    lines = []
    for path in sorted(directory.iterdir()):
        if path.name == MANIFEST_FILE:
            continue
        if not path.is_file() or path.is_symlink():
            raise ModelError(f"{path}: not a regular file; a model directory holds only files")
        if "\n" in path.name or "\\" in path.name:
            raise ModelError(f"{path}: a file name sha256sum cannot list")
        lines.append(f"{sha256_file(path)}  {path.name}\n")
    if not lines:
        raise ModelError(f"{directory}: no files to list")
    manifest = directory / MANIFEST_FILE
    write_atomic(manifest, "".join(lines).encode())
    return manifest


def verify_manifest(directory: Path) -> dict[str, str]:
    """Return the SHA-256 of each file by name; raise ModelError, naming the file, unless all match."""
    manifest = directory / MANIFEST_FILE
    try:
        text = manifest.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(
            f"{manifest}: missing: a model is loaded only with a manifest of its files' SHA-256 "
            f"(write one with `icu-edge engines manifest {directory}` after checking the files)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{manifest}: cannot read: {exc}") from exc
    expected: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _MANIFEST_LINE.match(line)
        if match is None or "/" in match.group(2) or match.group(2) in (".", "..", MANIFEST_FILE):
            raise ModelError(f"{manifest}: line {number} is not `<sha256>  <file name>`")
        digest, name = match.groups()
        if name in expected:
            raise ModelError(f"{manifest}: line {number} lists {name} twice")
        expected[name] = digest
    for path in sorted(directory.iterdir()):
        if path.name != MANIFEST_FILE and path.name not in expected:
            raise ModelError(f"{path}: not listed in {MANIFEST_FILE}: refusing the model")
    for name, digest in expected.items():
        path = directory / name
        if not path.is_file():
            raise ModelError(f"{path}: listed in {MANIFEST_FILE} but missing: refusing the model")
        actual = sha256_file(path)
        if actual != digest:
            raise ModelError(
                f"{path}: SHA-256 {actual[:12]}… does not match {MANIFEST_FILE} ({digest[:12]}…): "
                "tampered or damaged: refusing the model"
            )
    return expected


def load_model(directory: Path) -> InstalledModel:
    """Check the directory's manifest, read `card.json`, and check `model.onnx` against the card."""
    card_path = directory / "card.json"
    onnx_path = directory / "model.onnx"
    digests = verify_manifest(directory)
    try:
        card = ModelCard.model_validate_json(card_path.read_bytes())
    except OSError as exc:
        raise ModelError(f"{card_path}: cannot read: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        raise ModelError(f"{card_path}: invalid model card: {exc.error_count()} error(s): {exc}") from exc
    # The manifest check just hashed model.onnx (a model directory without it is refused there).
    actual = digests.get(onnx_path.name)
    if actual is None:
        raise ModelError(f"{onnx_path}: missing")
    if actual != card.onnx_sha256:
        raise ModelError(
            f"{onnx_path}: SHA-256 {actual[:12]}… does not match its card ({card.onnx_sha256[:12]}…)"
        )
    return InstalledModel(card=card, onnx_path=onnx_path)


def scan_models(root: Path = SHIPPED_MODELS_DIR) -> tuple[list[InstalledModel], list[str]]:
    """Return every valid model under root (`<id>/<version>/`) and why each other one was refused."""
    models: list[InstalledModel] = []
    problems: list[str] = []
    for card_path in sorted(root.glob("*/*/card.json")):
        try:
            models.append(load_model(card_path.parent))
        except ModelError as exc:
            problems.append(str(exc))
    return models, problems


def find_models(root: Path = SHIPPED_MODELS_DIR) -> list[InstalledModel]:
    """Return every valid model under root (`<id>/<version>/`); log and skip invalid ones."""
    models, problems = scan_models(root)
    for problem in problems:
        LOGGER.error("skipping model: %s", problem)
    return models


def select_model(models: list[InstalledModel], *, ref: str | None = None) -> InstalledModel:
    """Return the model named `id` or `id@version` (newest version of an id), or the default one."""
    if ref is not None:
        model_id, _, version = ref.partition("@")
        matching = [m for m in models if m.card.id == model_id and (not version or m.card.version == version)]
        if not matching:
            known = ", ".join(m.ref for m in models) or "none"
            raise ModelError(f"no model {ref!r}; installed: {known}")
        return max(matching, key=lambda m: _version_key(m.card.version))
    defaults = [m for m in models if m.card.default]
    if len(defaults) != 1:
        raise ModelError(f"expected exactly one default model, found {len(defaults)}")
    return defaults[0]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))
