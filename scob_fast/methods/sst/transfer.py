"""SST's semantic transfer: intra-image and cross-image pseudo positives, the threshold schedule,
and the per-class feature bank that cross-image transfer reads.

Public reference: HCPLab-SYSU/HCP-MLR-PL loss/SST.py (getIntraPseudoLabel, getInterPseudoLabel),
model/SST.py (updateFeature) and SST.py (the margin schedule in main)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .losses import COSINE_EPS


def _fires(score: torch.Tensor, threshold: float) -> torch.Tensor:
    """The public binarisation: score >= threshold -> 1, then everything <= threshold -> 0, so a
    threshold of 1 or more never fires."""
    return (score >= threshold) & (threshold < 1.0)


@torch.no_grad()
def intra_pseudo_labels(pair_probability: torch.Tensor, observed: torch.Tensor, threshold: float) -> torch.Tensor:
    """Observed labels plus intra-image pseudo positives.

    pair_probability [B, C, C] (symmetric; sigmoid of the pair scores), observed [B, C] in {1, 0, -1}.
    An unknown label j becomes 1 when sum_{i observed positive} pair_probability[i, j] / max(1, #positives)
    >= threshold (an image without observed positives scores 0). Observed entries are unchanged."""
    positive = (observed > 0).to(pair_probability.dtype)
    count = positive.sum(dim=1, keepdim=True)
    mean = (pair_probability * positive[:, :, None]).sum(dim=1) / count.clamp(min=1.0)
    pseudo = _fires(mean, threshold) & (observed == 0)
    return torch.where(pseudo, torch.ones_like(observed), observed)


@torch.no_grad()
def cross_pseudo_labels(features: torch.Tensor, observed: torch.Tensor, bank: torch.Tensor,
                        threshold: float) -> torch.Tensor:
    """Observed labels plus cross-image pseudo positives.

    features [B, C, d], bank [C, K, d] (zero rows = empty slots, which count as similarity 0).
    An unknown label j becomes 1 when mean_k cos(features[:, j], bank[j, k]) >= threshold."""
    z = F.normalize(features.float(), dim=-1, eps=COSINE_EPS)
    stored = F.normalize(bank.float(), dim=-1, eps=COSINE_EPS)          # zero rows stay zero
    similarity = torch.einsum("bcd,ckd->bck", z, stored).mean(dim=-1)
    pseudo = _fires(similarity, threshold) & (observed == 0)
    return torch.where(pseudo, torch.ones_like(observed), observed)


def threshold_at(epoch: int, start: float, step: float, floor: float, start_epoch: int) -> float:
    """0-based epoch -> pseudo-label threshold used during that epoch. SST.py lowers the margin by
    `step` (to `floor`) after every epoch e >= start_epoch, so epochs up to start_epoch use `start`."""
    return max(floor, start - step * max(0, epoch - start_epoch))


class FeatureBank(nn.Module):
    """Per-class bank of the features of observed positives, newest first: [C, K, d], zeros where empty.

    A push puts the batch's positives of class c (in batch order) in front of the stored ones and
    keeps the first K (model/SST.py updateFeature: cat((new, old))[:K]); so when a batch brings more
    than K positives of a class, its first K are kept."""

    def __init__(self, num_classes: int, capacity: int, dim: int):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"bank capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.register_buffer("features", torch.zeros(num_classes, capacity, dim))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def push(self, features: torch.Tensor, positive: torch.Tensor) -> None:
        """features [B, C, d], positive bool [B, C]: prepend features[b, c] to bank c where positive."""
        k = self.capacity
        positive = positive.bool()
        b = positive.shape[0]
        # per class, the batch rows with positives first (in batch order), then the rest
        order = torch.argsort((~positive).to(torch.int8), dim=0, stable=True)          # [B, C]
        new = torch.gather(features.to(self.features.dtype), 0,
                           order[:, :, None].expand(-1, -1, features.shape[-1])).transpose(0, 1)  # [C, B, d]
        merged = torch.cat([new, self.features], dim=1)                                # [C, B + K, d]
        n = positive.sum(dim=0)                                                        # [C]
        slot = torch.arange(k, device=n.device)[None, :]
        source = torch.where(slot < n[:, None], slot, b + slot - n[:, None])           # [C, K]
        self.features.copy_(torch.gather(merged, 1, source[:, :, None].expand(-1, -1, merged.shape[-1])))
        self.count.copy_((self.count + n).clamp(max=k))

    def clear(self) -> None:
        self.features.zero_()
        self.count.zero_()
