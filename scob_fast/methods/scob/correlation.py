"""Class-pair correlation from the label estimator, recomputed each epoch (Scob).

R[i, j] = mean_n(x_ni x_nj) / mean_n(x_ni), diagonal 1, with x = sigmoid(estimator logits).
The published "hard" variant zeroes every entry below 1; contrastive weights are 1 - R^2.
"""
from __future__ import annotations

import torch


def correlation_loop(probabilities: torch.Tensor) -> torch.Tensor:
    """Reference: the published double loop over class pairs."""
    n, c = probabilities.shape
    x = probabilities.double()
    r = torch.empty(c, c, dtype=torch.float64)
    for i in range(c):
        for j in range(c):
            r[i, j] = 1.0 if i == j else (x[:, i] * x[:, j]).mean() / x[:, i].mean()
    return r.to(probabilities.dtype)


def correlation(probabilities: torch.Tensor) -> torch.Tensor:
    x = probabilities.double()
    co = (x.t() @ x) / x.shape[0]
    r = co / x.mean(dim=0)[:, None]
    r.fill_diagonal_(1.0)
    return r.to(probabilities.dtype)


def contrastive_weights(r: torch.Tensor, hard: bool = True) -> torch.Tensor:
    """W = 1 - R^2 over class pairs; `hard` zeroes correlations below 1 first (as published)."""
    if hard:
        r = torch.where(r >= 1.0, r, torch.zeros_like(r))
    return 1.0 - r * r
