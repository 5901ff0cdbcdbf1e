"""The torch modules exported to ONNX: the persistence baseline, the learned smoothing-quantile model
(shipped as `nlinear-q`), and the small GRU it was compared with.

Every module takes the four spec inputs (physical units, 0 where masked) and returns the two spec
outputs. Each computes persistence inside the graph: the last valid value per signal, found with a
constant "later steps" matrix so it stays exact (a sum of one value and zeros) and batch-independent.
"""

from __future__ import annotations

from typing import cast

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
SMOOTHER_MINUTES = (3, 5, 10, 15, 30)
"""The k-minute means the learned model mixes with the last value (as engines.evaluate's baselines)."""
CANDIDATES = 1 + len(SMOOTHER_MINUTES)
"""Candidate forecasts per signal: the last valid value, then the mean of the last k valid values."""
NOISE_FEATURES = 2 * len(SMOOTHER_MINUTES) + 4
MIX_HIDDEN = 24
GRU_HIDDEN = 16
DELTA_CLIP = 6.0
"""Normalized deltas are clipped to +-6 scales: a plausible-but-wild jump (artefact) cannot dominate."""
NOISE_MINUTES = 15
"""The shipped interval's width follows the mean absolute minute-to-minute change over the window's last
15 minutes (pairs of consecutive valid minutes)."""
NOISE_FLOOR = 0.05
"""That noise scale is floored at 5 % of SIGNAL_SCALE: a flat or sparsely read stretch keeps an interval."""


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


class RecentMeans(nn.Module):
    """Return [B, S, len(SMOOTHER_MINUTES)]: the mean of the last k valid values per signal (0 if none).

    The count of valid steps at or after each step (a constant upper-triangular matrix) ranks the valid
    values from the end; a gap reaches further back, exactly like engines.evaluate.smoothed_means.
    """

    from_here: torch.Tensor
    minutes: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("from_here", torch.triu(torch.ones(T, T)))
        self.register_buffer("minutes", torch.tensor(SMOOTHER_MINUTES, dtype=torch.float32))

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rank = torch.matmul(self.from_here, mask).unsqueeze(-1)
        use = mask.unsqueeze(-1) * (rank <= self.minutes).to(values.dtype)
        count = use.sum(dim=1)
        return (values.unsqueeze(-1) * use).sum(dim=1) / torch.clamp(count, min=1.0)


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
    """A learned, window-dependent mix of the last value and the k-minute means (the `nlinear-q` line).

    Per signal, the candidates are the last valid value and the means of the last 3, 5, 10, 15 and 30
    valid minutes. A small network shared by all signals reads the window's own noise (mean absolute
    minute-to-minute change, spread around the 30-min mean, gaps between the last value and each mean,
    the fraction of valid minutes, the signal) and returns, per horizon, the mixture weights (softmax)
    and p10/p90 spreads: a noisy window is averaged, a smooth or trending one follows the last value.
    The spreads are trained with the medians (pinball loss on all three quantiles shapes the shared
    layer) but not shipped: calibration sets `normalized_spread` to 1, and from then on the interval is the
    window's own noise scale (`noise_scale`) x `interval_scale` (normalized split conformal), so a
    jumpy, artefact-laden window gets a wide interval and a smooth one a narrow interval.
    Version 1's NLinear correction (a linear layer over the window minus its last value) is gone: on the
    calibration patients it made the 1-min forecast worse than persistence for every signal.

    `gate` [S, H] (baked in after evaluation on the calibration patients): 1 keeps the learned mix and
    for that signal and horizon; 0 replaces it with the fixed baseline in `fixed_weight`
    (one-hot: the last value or one k-minute mean), the better baseline there. `interval_scale`
    [S, H, 2] multiplies the lower/upper spreads so the 10-90 % interval covers 80 % on the calibration
    patients (split conformal). Event probabilities: a sigmoid over a small head on the window features,
    the predicted median and the last value relative to the threshold.
    """

    scale: torch.Tensor
    context_center: torch.Tensor
    context_scale: torch.Tensor
    gate: torch.Tensor
    fixed_weight: torch.Tensor
    interval_scale: torch.Tensor
    normalized_spread: torch.Tensor
    signal_code: torch.Tensor
    event_threshold: torch.Tensor
    event_scale: torch.Tensor
    event_prior: torch.Tensor
    hidden: nn.Linear
    event_head: nn.Linear

    def __init__(self) -> None:
        super().__init__()
        features = T * (2 * S + 2 * C)
        self.last_valid = LastValid()
        self.recent_means = RecentMeans()
        self.register_buffer("scale", torch.tensor(SIGNAL_SCALE))
        self.register_buffer("context_center", torch.tensor(CONTEXT_CENTER))
        self.register_buffer("context_scale", torch.tensor(CONTEXT_SCALE))
        self.register_buffer("gate", torch.ones(S, H))
        fixed = torch.zeros(S, H, CANDIDATES)
        fixed[..., 0] = 1.0
        self.register_buffer("fixed_weight", fixed)
        self.register_buffer("interval_scale", torch.ones(S, H, 2))
        self.register_buffer("signal_code", torch.eye(S))
        self.register_buffer("event_threshold", torch.tensor(EVENT_THRESHOLD))
        self.register_buffer("event_scale", torch.tensor([SIGNAL_SCALE[i] for i in EVENT_SIGNAL_INDEX]))
        self.register_buffer("event_prior", torch.zeros(E, H))
        self.event_index = list(EVENT_SIGNAL_INDEX)
        self.register_buffer("normalized_spread", torch.zeros(()))
        self.mix = nn.Sequential(
            nn.Linear(NOISE_FEATURES + S, MIX_HIDDEN), nn.Tanh(), nn.Linear(MIX_HIDDEN, H * (CANDIDATES + 2))
        )
        self.hidden = nn.Linear(features, HIDDEN)
        self.event_head = nn.Linear(HIDDEN, E * H)
        self.event_median_weight = nn.Parameter(torch.full((E, H), -2.0))
        self.event_last_weight = nn.Parameter(torch.full((E, H), -2.0))
        nn.init.zeros_(self.event_head.weight)
        output = cast(nn.Linear, self.mix[2])
        nn.init.normal_(output.weight, std=1e-2)
        nn.init.zeros_(output.bias)

    def noise_features(
        self, values: torch.Tensor, mask: torch.Tensor, last: torch.Tensor, means: torch.Tensor
    ) -> torch.Tensor:
        """Return [B, S, NOISE_FEATURES]: how noisy, how trending and how complete each window is."""
        scale = self.scale.reshape(1, 1, S)
        pairs = mask[:, 1:, :] * mask[:, :-1, :]
        step = torch.abs(values[:, 1:, :] - values[:, :-1, :]) * pairs / scale
        roughness = step.sum(dim=1) / torch.clamp(pairs.sum(dim=1), min=1.0)
        longest = means[..., -1:]
        spread = (torch.abs(values - longest.transpose(1, 2)) * mask / scale).sum(dim=1) / torch.clamp(
            mask.sum(dim=1), min=1.0
        )
        gaps = torch.clamp(
            (last.unsqueeze(-1) - means) / self.scale.reshape(1, S, 1), -DELTA_CLIP, DELTA_CLIP
        )
        return torch.cat(
            [
                torch.log(roughness + 0.01).unsqueeze(-1),
                torch.log(spread + 0.01).unsqueeze(-1),
                gaps,
                torch.abs(gaps),
                (mask.sum(dim=1) / T).unsqueeze(-1),
                (roughness / (spread + 0.05)).unsqueeze(-1),
            ],
            dim=-1,
        )

    def noise_scale(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return [B, S]: mean |minute-to-minute change| over the last NOISE_MINUTES, floored."""
        recent_values = values[:, -NOISE_MINUTES:, :]
        recent_mask = mask[:, -NOISE_MINUTES:, :]
        pairs = recent_mask[:, 1:, :] * recent_mask[:, :-1, :]
        step = torch.abs(recent_values[:, 1:, :] - recent_values[:, :-1, :]) * pairs
        mean_step = step.sum(dim=1) / torch.clamp(pairs.sum(dim=1), min=1.0)
        return torch.maximum(mean_step, NOISE_FLOOR * self.scale.reshape(1, S))

    def forward(
        self, values: torch.Tensor, mask: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        values = _clean(values, mask)
        context = _clean(context, context_mask)
        last, has = self.last_valid(values, mask)
        means = self.recent_means(values, mask)
        candidates = torch.cat([last.unsqueeze(-1), means], dim=-1)
        noise = self.noise_features(values, mask, last, means)
        code = self.signal_code.unsqueeze(0).expand(noise.shape[0], -1, -1)
        mixed = self.mix(torch.cat([noise, code], dim=-1)).reshape(-1, S, H, CANDIDATES + 2)
        gate = self.gate.reshape(1, S, H, 1)
        weight = gate * torch.softmax(mixed[..., :CANDIDATES], dim=-1) + (1.0 - gate) * self.fixed_weight
        median = (weight * candidates.unsqueeze(2)).sum(dim=-1)

        delta = torch.clamp((values - last.unsqueeze(1)) / self.scale, -DELTA_CLIP, DELTA_CLIP) * mask
        ctx = (context - self.context_center) / self.context_scale * context_mask
        features = torch.cat(
            [delta.flatten(1), mask.flatten(1), ctx.flatten(1), context_mask.flatten(1)], dim=1
        )
        learned_spread = nn.functional.softplus(mixed[..., CANDIDATES:] + 0.5) * self.scale.reshape(
            1, S, 1, 1
        )
        noise_spread = self.noise_scale(values, mask).reshape(-1, S, 1, 1).expand_as(learned_spread)
        spread = torch.where(self.normalized_spread > 0.5, noise_spread, learned_spread) * self.interval_scale
        quantiles = torch.stack([median - spread[..., 0], median, median + spread[..., 1]], dim=-1)

        hidden = torch.relu(self.hidden(features))
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


class GRUQuantile(nn.Module):
    """The recurrent comparator: persistence plus a small GRU's quantile deltas, one GRU for all signals.

    Each signal's window (minus its last value, scaled and clipped, with its mask and the signal's
    one-hot code) runs through a GRU; its last state gives per horizon the median change and the two
    spreads. Trained and evaluated with the same loss, data and calibration as NLinearQuantile, to
    decide which one ships. It forecasts only: the event output is the training prior (no event head).
    """

    scale: torch.Tensor
    interval_scale: torch.Tensor
    signal_code: torch.Tensor
    event_prior: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.last_valid = LastValid()
        self.register_buffer("scale", torch.tensor(SIGNAL_SCALE))
        self.register_buffer("interval_scale", torch.ones(S, H, 2))
        self.register_buffer("signal_code", torch.eye(S))
        self.register_buffer("event_prior", torch.zeros(E, H))
        self.gru = nn.GRU(input_size=2 + S, hidden_size=GRU_HIDDEN, batch_first=True)
        self.head = nn.Linear(GRU_HIDDEN, H * 3)
        nn.init.normal_(self.head.weight, std=1e-2)
        nn.init.zeros_(self.head.bias)

    def forward(
        self, values: torch.Tensor, mask: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        values = _clean(values, mask)
        last, has = self.last_valid(values, mask)
        delta = torch.clamp((values - last.unsqueeze(1)) / self.scale, -DELTA_CLIP, DELTA_CLIP) * mask
        beds = values.shape[0]
        per_signal = torch.stack([delta, mask], dim=-1).permute(0, 2, 1, 3).reshape(beds * S, T, 2)
        code = self.signal_code.unsqueeze(0).expand(beds, -1, -1).reshape(beds * S, 1, S).expand(-1, T, -1)
        _, state = self.gru(torch.cat([per_signal, code], dim=-1))
        out = self.head(state[-1]).reshape(beds, S, H, 3)
        median = last.unsqueeze(-1) + out[..., 0] * self.scale.unsqueeze(-1) * has.unsqueeze(-1)
        spread = nn.functional.softplus(out[..., 1:] + 0.5) * self.scale.reshape(1, S, 1, 1)
        spread = spread * self.interval_scale
        quantiles = torch.stack([median - spread[..., 0], median, median + spread[..., 1]], dim=-1)
        unused = ((context > 0.0) & (context_mask > 0.0)).flatten(1).any(dim=1).reshape(-1, 1, 1)
        probability = self.event_prior.unsqueeze(0).expand(beds, -1, -1)
        return quantiles, torch.where(unused, probability, probability)
