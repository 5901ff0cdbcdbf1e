"""The torch modules exported to ONNX: the persistence baseline and the learned NLinear-quantile model.

Both take the four spec inputs (physical units, 0 where masked) and return the two spec outputs. Both
compute persistence inside the graph: the last valid value per signal, found with a constant
"later steps" matrix so it stays exact (a sum of one value and zeros) and batch-independent.
"""

from __future__ import annotations

import torch
from torch import nn

from engines.spec import CONTEXT, EVENTS, HORIZONS_MIN, SIGNAL_KEYS, SIGNALS, WINDOW_STEPS

S = len(SIGNALS)
C = len(CONTEXT)
H = len(HORIZONS_MIN)
E = len(EVENTS)
T = WINDOW_STEPS

SIGNAL_SCALE = (10.0, 2.0, 8.0, 4.0, 4.0)
"""Per-signal normalization scale (hr, spo2, map, rr, etco2), about a 15-min change, in physical units."""
CONTEXT_CENTER = (40.0, 6.0)
CONTEXT_SCALE = (20.0, 4.0)
EVENT_SIGNAL_INDEX = tuple(SIGNAL_KEYS.index(e.signal) for e in EVENTS)
EVENT_THRESHOLD = tuple(e.below for e in EVENTS)
HIDDEN = 32
DELTA_CLIP = 6.0
"""Normalized deltas are clipped to +-6 scales: a plausible-but-wild jump (artefact) cannot dominate."""


class LastValid(nn.Module):
    """Return (last valid value, has any valid value) per signal of [B, T, S] inputs."""

    later: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("later", torch.triu(torch.ones(T, T), diagonal=1))

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        later_valid = torch.matmul(self.later, mask)
        is_last = mask * torch.relu(1.0 - later_valid)
        return (values * is_last).sum(dim=1), is_last.sum(dim=1)


def _clean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    valid = mask > 0.5
    return torch.where(valid, values, torch.zeros_like(values))


class PersistenceBaseline(nn.Module):
    """Median = last valid value; interval = last + empirical residual quantiles; events = current value."""

    lower_offset: torch.Tensor
    upper_offset: torch.Tensor
    event_slope: torch.Tensor
    event_bias: torch.Tensor
    event_prior: torch.Tensor
    event_threshold: torch.Tensor
    event_scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.last_valid = LastValid()
        self.register_buffer("lower_offset", torch.zeros(S, H))
        self.register_buffer("upper_offset", torch.zeros(S, H))
        self.register_buffer("event_slope", torch.full((E, H), -1.0))
        self.register_buffer("event_bias", torch.zeros(E, H))
        self.register_buffer("event_prior", torch.zeros(E, H))
        self.register_buffer("event_threshold", torch.tensor(EVENT_THRESHOLD))
        self.register_buffer("event_scale", torch.tensor([SIGNAL_SCALE[i] for i in EVENT_SIGNAL_INDEX]))
        self.event_index = list(EVENT_SIGNAL_INDEX)

    def forward(
        self, values: torch.Tensor, mask: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        values = _clean(values, mask)
        last, has = self.last_valid(values, mask)
        median = last.unsqueeze(-1).expand(-1, -1, H)
        quantiles = torch.stack([median + self.lower_offset, median, median + self.upper_offset], dim=-1)
        event_last = last[:, self.event_index]
        event_has = has[:, self.event_index].unsqueeze(-1)
        z = (event_last - self.event_threshold) / self.event_scale
        logits = self.event_slope * z.unsqueeze(-1) + self.event_bias
        probability = event_has * torch.sigmoid(logits) + (1.0 - event_has) * self.event_prior
        # The baseline ignores the ventilator context; this identity keeps the spec inputs in the graph.
        unused = ((context > 0.0) & (context_mask > 0.0)).flatten(1).any(dim=1).reshape(-1, 1, 1)
        return quantiles, torch.where(unused, probability, probability)


class NLinearQuantile(nn.Module):
    """Persistence plus a learned, gated linear correction per signal and horizon (NLinear-style).

    The window is normalized by subtracting each signal's last valid value (and dividing by a fixed
    scale); a linear layer over the normalized window, the masks and the ventilator context predicts the
    change at each horizon. `gate[s]` (0 or 1, baked in after held-out evaluation) switches a signal's
    correction off, which makes its median exactly persistence. p10/p90 are the median -/+ softplus
    spreads (monotone quantiles); event probabilities are a sigmoid over a small head on the window
    features, the predicted median and the last value relative to the threshold.
    """

    scale: torch.Tensor
    context_center: torch.Tensor
    context_scale: torch.Tensor
    gate: torch.Tensor
    event_threshold: torch.Tensor
    event_scale: torch.Tensor
    event_prior: torch.Tensor
    median_head: nn.Linear
    hidden: nn.Linear
    spread_head: nn.Linear
    event_head: nn.Linear

    def __init__(self) -> None:
        super().__init__()
        features = T * (2 * S + 2 * C)
        self.last_valid = LastValid()
        self.register_buffer("scale", torch.tensor(SIGNAL_SCALE))
        self.register_buffer("context_center", torch.tensor(CONTEXT_CENTER))
        self.register_buffer("context_scale", torch.tensor(CONTEXT_SCALE))
        self.register_buffer("gate", torch.ones(S))
        self.register_buffer("event_threshold", torch.tensor(EVENT_THRESHOLD))
        self.register_buffer("event_scale", torch.tensor([SIGNAL_SCALE[i] for i in EVENT_SIGNAL_INDEX]))
        self.register_buffer("event_prior", torch.zeros(E, H))
        self.event_index = list(EVENT_SIGNAL_INDEX)
        self.median_head = nn.Linear(features, S * H)
        self.hidden = nn.Linear(features, HIDDEN)
        self.spread_head = nn.Linear(HIDDEN + features, S * H * 2)
        self.event_head = nn.Linear(HIDDEN, E * H)
        self.event_median_weight = nn.Parameter(torch.full((E, H), -2.0))
        self.event_last_weight = nn.Parameter(torch.full((E, H), -2.0))
        nn.init.zeros_(self.median_head.weight)
        nn.init.zeros_(self.median_head.bias)
        nn.init.zeros_(self.event_head.weight)
        nn.init.constant_(self.spread_head.bias, 0.5)
        nn.init.normal_(self.spread_head.weight, std=1e-3)

    def forward(
        self, values: torch.Tensor, mask: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        values = _clean(values, mask)
        context = _clean(context, context_mask)
        last, has = self.last_valid(values, mask)
        delta = torch.clamp((values - last.unsqueeze(1)) / self.scale, -DELTA_CLIP, DELTA_CLIP) * mask
        ctx = (context - self.context_center) / self.context_scale * context_mask
        features = torch.cat(
            [delta.flatten(1), mask.flatten(1), ctx.flatten(1), context_mask.flatten(1)], dim=1
        )
        correction = self.median_head(features).reshape(-1, S, H) * self.scale.unsqueeze(-1)
        correction = correction * (self.gate.unsqueeze(-1) * has.unsqueeze(-1))
        median = last.unsqueeze(-1) + correction
        hidden = torch.relu(self.hidden(features))
        spread = nn.functional.softplus(self.spread_head(torch.cat([hidden, features], dim=1)))
        spread = spread.reshape(-1, S, H, 2) * self.scale.reshape(1, S, 1, 1)
        quantiles = torch.stack([median - spread[..., 0], median, median + spread[..., 1]], dim=-1)

        event_has = has[:, self.event_index].unsqueeze(-1)
        event_median = (median[:, self.event_index, :] - self.event_threshold.unsqueeze(-1)) / (
            self.event_scale.unsqueeze(-1)
        )
        event_last = ((last[:, self.event_index] - self.event_threshold) / self.event_scale).unsqueeze(-1)
        logits = (
            self.event_head(hidden).reshape(-1, E, H)
            + self.event_median_weight * event_median
            + self.event_last_weight * event_last
        )
        probability = event_has * torch.sigmoid(logits) + (1.0 - event_has) * self.event_prior
        return quantiles, probability
