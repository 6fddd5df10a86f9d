"""Per-training-sample label estimator (ROLE, Cole et al. 2021; reused by Scob).

A learnable logit matrix [N, C]: unobserved entries start uniform in logit(0.2)..logit(0.8), observed
positives are pinned at logit(0.995) at initialisation. g(idx) = sigmoid(logits[idx]).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def uniform_logits(shape, width: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logits uniform over [logit(0.5 - width), logit(0.5 + width)] (ROLE's and Scob's initialisation)."""
    if not 0.0 < width < 0.5:
        raise ValueError(f"init width must be in (0, 0.5), got {width}")
    bound = _logit(0.5 + width)
    return (2.0 * torch.rand(shape, generator=generator) - 1.0) * bound


@torch.no_grad()
def estimator_drift(logits: torch.Tensor, initial: torch.Tensor, observed_positive: torch.Tensor) -> torch.Tensor:
    """Mean |sigmoid(logits) - sigmoid(initial)| over the entries that are not observed positives: how
    far the estimates of the unknown labels have moved from their random start (a diagnostic)."""
    unknown = observed_positive == 0
    moved = (torch.sigmoid(logits.float()) - torch.sigmoid(initial.float())).abs()
    return (moved * unknown).sum() / unknown.sum().clamp(min=1)


class LabelEstimator(nn.Module):
    INIT_LOW, INIT_HIGH, POSITIVE = 0.2, 0.8, 0.995

    def __init__(self, observed: torch.Tensor, seed: int = 0, init_width: float = 0.3):
        """observed: [N, C] with 1 = observed positive (anything else is left to the random init);
        unknowns start uniform in logit space over [logit(0.5 - init_width), logit(0.5 + init_width)]
        (Scob's public code: 0.2..0.8, i.e. 0.3; ROLE's, Cole et al. models.py: 0.1)."""
        super().__init__()
        if observed.dim() != 2:
            raise ValueError(f"LabelEstimator: observed must be [N, C], got shape {tuple(observed.shape)}")
        generator = torch.Generator().manual_seed(seed)
        logits = uniform_logits(observed.shape, init_width, generator)
        logits[observed == 1] = _logit(self.POSITIVE)
        self.logits = nn.Parameter(logits)
        # The start, kept for the drift diagnostic only: rebuilt from the seed, so not checkpointed.
        self.register_buffer("initial_logits", logits.clone(), persistent=False)

    def drift(self, index: torch.Tensor, observed_positive: torch.Tensor) -> torch.Tensor:
        return estimator_drift(self.logits.detach()[index], self.initial_logits[index], observed_positive)

    @property
    def num_samples(self) -> int:
        return self.logits.shape[0]

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """Estimator logits of the samples `index` (apply sigmoid for probabilities)."""
        return self.logits[index]
