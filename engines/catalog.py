"""The shipped and installed models: `engines/models/<id>/<version>/` with `model.onnx` and `card.json`.

A model is identified by id and version; its card says what it is, what it was trained on, how it
scored against persistence, where it must not be used, and whether it is the default. The card's
`onnx_sha256` must match the file: a model whose bytes differ from its card is refused.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

LOGGER = logging.getLogger(__name__)

SHIPPED_MODELS_DIR = Path(__file__).parent / "models"


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
    seed: int | None = None
    onnx_sha256: str
    size_bytes: int
    created: str


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


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(directory: Path) -> InstalledModel:
    """Read `card.json` and check `model.onnx` against it."""
    card_path = directory / "card.json"
    onnx_path = directory / "model.onnx"
    try:
        card = ModelCard.model_validate_json(card_path.read_bytes())
    except OSError as exc:
        raise ModelError(f"{card_path}: cannot read: {exc.strerror or exc}") from exc
    except ValidationError as exc:
        raise ModelError(f"{card_path}: invalid model card: {exc.error_count()} error(s): {exc}") from exc
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: missing")
    actual = sha256_file(onnx_path)
    if actual != card.onnx_sha256:
        raise ModelError(
            f"{onnx_path}: SHA-256 {actual[:12]}… does not match its card ({card.onnx_sha256[:12]}…)"
        )
    return InstalledModel(card=card, onnx_path=onnx_path)


def find_models(root: Path = SHIPPED_MODELS_DIR) -> list[InstalledModel]:
    """Return every valid model under root (`<id>/<version>/`); log and skip invalid ones."""
    models: list[InstalledModel] = []
    for card_path in sorted(root.glob("*/*/card.json")):
        try:
            models.append(load_model(card_path.parent))
        except ModelError as exc:
            LOGGER.error("skipping model: %s", exc)
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
