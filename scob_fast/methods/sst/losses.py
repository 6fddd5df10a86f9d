"""SST's own training signals on the pair head and the semantic features (partial BCE and the
asymmetric loss are shared: scob_fast.methods.losses).

Public reference: HCPLab-SYSU/HCP-MLR-PL loss/SST.py (intraAsymmetricLoss, ContrastiveLoss)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from scob_fast.methods.losses import asymmetric_loss

COSINE_EPS = 1e-9       # loss/SST.py: torch.nn.CosineSimilarity(dim=2, eps=1e-9)


def pair_index(num_classes: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(i, j) of every unordered class pair i < j, row-major: (0,1), (0,2), ..., (C-2, C-1)
    (the order of getConcatIndex in model/SST.py and loss/SST.py)."""
    i, j = torch.triu_indices(num_classes, num_classes, offset=1, device=device)
    return i, j


def pair_matrix(pair_values: torch.Tensor, num_classes: int, diagonal: float = 1.0) -> torch.Tensor:
    """[B, P] values of the pairs i < j -> symmetric [B, C, C] with `diagonal` on the diagonal."""
    b = pair_values.shape[0]
    i, j = pair_index(num_classes, pair_values.device)
    out = torch.full((b, num_classes, num_classes), diagonal, dtype=pair_values.dtype, device=pair_values.device)
    out[:, i, j] = pair_values
    out[:, j, i] = pair_values
    return out


def cooccurrence_loss(pair_logits: torch.Tensor, observed: torch.Tensor, pairs: str = "all") -> torch.Tensor:
    """Asymmetric loss (gamma- 2, gamma+ 1, clip 0.05) of the pair scores [B, P] against "both
    observed positive".

    pairs="all" (public intraAsymmetricLoss): every pair counts and the mean is over all B * P, so a
    pair with an unknown or negative label is a negative. pairs="observed" (ours): only pairs whose
    two labels are observed count, mean over them."""
    i, j = pair_index(observed.shape[1], observed.device)
    target = ((observed[:, i] > 0) & (observed[:, j] > 0)).float()
    if pairs == "all":
        weights = torch.ones_like(target)
    elif pairs == "observed":
        weights = ((observed[:, i] != 0) & (observed[:, j] != 0)).float()
    else:
        raise ValueError(f"pairs must be 'all' or 'observed', got {pairs!r}")
    return asymmetric_loss(pair_logits, target, weights)


def _rank(values: torch.Tensor, descending: bool) -> torch.Tensor:
    """Position of each entry in the (stable) sort of `values`."""
    order = torch.argsort(values, descending=descending, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank


def _subsample(mask: torch.Tensor, loss: torch.Tensor, keys: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """How often each entry of the set `mask` enters the public mean once there are k > 0 pull pairs:
    a uniformly random min(2k, n) of them (those with the smallest `keys`, which is torch.randperm(n)[:2k]
    in distribution) plus the min(k, n) largest losses; both may pick an entry (then it counts twice).
    With k = 0 every entry counts once. No host synchronisation."""
    inf = torch.tensor(float("inf"), device=loss.device)
    random_rank = _rank(torch.where(mask, keys, inf), descending=False)
    top_rank = _rank(torch.where(mask, loss.detach(), -inf), descending=True)
    picked = mask & (random_rank < 2 * k)
    picked_top = mask & (top_rank < k)
    weight = picked.to(loss.dtype) + picked_top.to(loss.dtype)
    return torch.where(k > 0, weight, mask.to(loss.dtype))


def feature_distance_loss(features: torch.Tensor, observed: torch.Tensor, keys: torch.Tensor | None = None,
                          pairs: str = "published") -> torch.Tensor:
    """Within-batch feature distance over image pairs m < n, per class (features [B, C, d]).

    pairs="published" (public ContrastiveLoss): with cos = cos(f_mc, f_nc), the entries (pair, class)
    are pull = both observed positive (loss 1 - cos), push = one observed positive and one observed
    negative (1 + cos) and negneg = both observed negative (1 + cos). When there are k > 0 pull
    entries, push and negneg are each cut to a random min(2k, n) of them plus their min(k, n) largest
    losses; the loss is one mean over all kept entries. `keys` [2, B(B-1)/2 * C] are the uniform random
    numbers of that draw (row 0 negneg, row 1 push, entries ordered pair-major as the public flattening);
    default: torch.rand from the global generator. No entry at all: 0 (the public code gives NaN).

    pairs="balanced" (ours): mean(1 - cos) over pull entries plus mean(1 + cos) over push entries,
    no negneg, no sampling (an empty mean counts 0)."""
    b, c = observed.shape
    m, n = pair_index(b, features.device)
    z = F.normalize(features.float(), dim=-1, eps=COSINE_EPS)
    cos = torch.einsum("mcd,ncd->mnc", z, z)[m, n]                       # [B(B-1)/2, C]
    pos, neg = observed > 0, observed < 0
    pull = pos[m] & pos[n]
    push = (pos[m] & neg[n]) | (neg[m] & pos[n])
    if pairs == "balanced":
        pull_f, push_f = pull.float(), push.float()
        return (((1.0 - cos) * pull_f).sum() / pull_f.sum().clamp(min=1.0)
                + ((1.0 + cos) * push_f).sum() / push_f.sum().clamp(min=1.0))
    if pairs != "published":
        raise ValueError(f"pairs must be 'published' or 'balanced', got {pairs!r}")
    negneg = neg[m] & neg[n]
    cos, pull, push, negneg = cos.flatten(), pull.flatten(), push.flatten(), negneg.flatten()
    if keys is None:
        keys = torch.rand(2, cos.numel(), device=cos.device)
    keys = keys.to(cos.device)
    k = pull.sum()
    w_negneg = _subsample(negneg, 1.0 + cos, keys[0], k)
    w_push = _subsample(push, 1.0 + cos, keys[1], k)
    total = ((1.0 - cos) * pull).sum() + ((1.0 + cos) * (w_push + w_negneg)).sum()
    count = pull.sum() + w_push.sum() + w_negneg.sum()
    return total / count.clamp(min=1.0)
