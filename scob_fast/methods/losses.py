"""Losses that several methods share (each method's own losses live in its folder).

Notation: x = logits [B, C], p = sigmoid(x), y = observed positives (0/1), k = expected positives
per image, "mean" over all B*C entries unless said otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def expected_positive_penalty(probabilities: Tensor, expected_positives: float) -> Tensor:
    """((mean_b sum_c q - k) / C)^2: Cole et al.'s squared-error EPR term, scaled by 1 / C^2."""
    return ((probabilities.sum(dim=1).mean() - expected_positives) / probabilities.shape[1]) ** 2


def expected_positive_regulariser(logits: Tensor, observed_positive: Tensor, expected_positives: float) -> Tensor:
    """EPR(x) = mean(-y log p) + ((mean_b sum_c p - k) / C)^2 (Cole et al. 2021)."""
    positive_term = (observed_positive * F.softplus(-logits)).mean()
    return positive_term + expected_positive_penalty(torch.sigmoid(logits), expected_positives)


def estimator_pair_loss(logits: Tensor, estimator_logits: Tensor, observed_positive: Tensor,
                        expected_positives: float) -> Tensor:
    """ROLE's objective (Cole et al. 2021), which Scob trains its classifier and label estimator with:
    (L1 + L2) / 2, L1 = BCE(x, sg e) + EPR(x), L2 = BCE(g, sg p) + EPR(g), e = sigmoid(g)."""
    classifier = (F.binary_cross_entropy_with_logits(logits, torch.sigmoid(estimator_logits).detach())
                  + expected_positive_regulariser(logits, observed_positive, expected_positives))
    estimator = (F.binary_cross_entropy_with_logits(estimator_logits, torch.sigmoid(logits).detach())
                 + expected_positive_regulariser(estimator_logits, observed_positive, expected_positives))
    return 0.5 * (classifier + estimator)


def partial_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE over the entries of `targets` that are observed (1 positive, -1 negative; 0 is ignored).
    0 (with a graph) when nothing is observed."""
    logits = logits.float()
    known = (targets != 0).float()
    loss = F.binary_cross_entropy_with_logits(logits, (targets > 0).float(), reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1.0)


def asymmetric_loss(logits: Tensor, targets: Tensor, weights: Tensor, gamma_neg: float = 2.0,
                    gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8) -> Tensor:
    """Ridnik et al.'s asymmetric loss, averaged with `weights` (0/1 mask of the entries that count)."""
    p = torch.sigmoid(logits.float())
    p_neg = (1.0 - p + clip).clamp(max=1.0) if clip > 0 else 1.0 - p
    loss_pos = targets * torch.log(p.clamp(min=eps)) * (1.0 - p) ** gamma_pos
    loss_neg = (1.0 - targets) * torch.log(p_neg.clamp(min=eps)) * (1.0 - p_neg) ** gamma_neg
    loss = -(loss_pos + loss_neg)
    return (loss * weights).sum() / weights.sum().clamp(min=1.0)
