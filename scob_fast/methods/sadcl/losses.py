"""SADCL's three losses, each as the public code computes it (yu-gi-oh-leilei/SADCL; paths inside it).

Notation: B images, C classes; observed [B, C] is 1 (present), -1 (absent), 0 (unknown: never
produced by full labels; the public code has no such entries).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from scob_fast.ops.label_contrastive import label_contrastive_loss


def _compute_dtype(x: Tensor) -> Tensor:
    """float32 for half-precision inputs (AMP), else as given (float64 stays float64)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def present_features(z: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
    """z [B, C, D], observed [B, C] -> (rows of the observed positives [N, D], their classes [N])."""
    b_idx, c_idx = (observed > 0).nonzero(as_tuple=True)
    return z[b_idx, c_idx], c_idx


def asymmetric_loss(logits: Tensor, observed: Tensor, gamma_neg: float = 4.0, gamma_pos: float = 0.0,
                    clip: float = 0.0, eps: float = 1e-5, detach_focal: bool = True) -> Tensor:
    """AsymmetricLossOptimized of code/lib_sadcl/models/loss/aslloss.py, as a mean over the observed
    entries (the public forward returns `-loss.sum() / B / C * 1000`: with full labels this mean
    times 1000, and SADCL's `cls_weight` carries the 1000).

    p = sigmoid(x); p_neg = min(1 - p + clip, 1) when clip > 0, else 1 - p;
    entry = y log(max(p, eps)) + (1 - y) log(max(p_neg, eps)), times (1 - p_t)^(gamma_pos y + gamma_neg (1 - y))
    with p_t = p y + p_neg (1 - y), the focal weight computed without gradient (`--dtgfl`, which
    scripts/sadcl/coco.sh passes: `detach_focal`); the defaults are that script's
    `--gamma_pos 0 --gamma_neg 4 --loss_clip 0` and code/lib_sadcl/config.py's `--eps 1e-5`."""
    x = _compute_dtype(logits)
    y = (observed > 0).to(x.dtype)
    known = (observed != 0).to(x.dtype)
    p = torch.sigmoid(x)
    p_neg = (1.0 - p + clip).clamp(max=1.0) if clip is not None and clip > 0 else 1.0 - p
    loss = y * torch.log(p.clamp(min=eps)) + (1.0 - y) * torch.log(p_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focal):
            p_t = p * y + p_neg * (1.0 - y)
            weight = torch.pow(1.0 - p_t, gamma_pos * y + gamma_neg * (1.0 - y))
        loss = loss * weight
    return -(loss * known).sum() / known.sum().clamp(min=1.0)


def sample_to_sample_loss(z: Tensor, observed: Tensor, temperature: float = 0.2, bank: Tensor | None = None,
                          anchors: str = "public", backend: str | None = None) -> Tensor:
    """SSCL: MultiSupConLoss of code/lib_sadcl/models/loss/multisupconloss.py (temperature = base
    temperature = 0.2) over two views, the batch's projected label features z [B, C, D] and the
    projected memory bank [B, C, D] (engine.py: `torch.cat([vis_embed.unsqueeze(1),
    memorybank.unsqueeze(1)], dim=1)`; the bank's rows take the current batch's labels).

    The entries are the present (b, c) of every view, L2-normalised. For an anchor entry, the
    positives are the other entries of its class (other images, and its own in the other view), the
    denominator every other entry of any class in either view, and its loss is SupCon's L_out:
    log sum_{a != anchor} exp(s_a / t) - mean_{p positive} s_p / t. The loss is the sum over the
    anchors divided by the number of entries (V x present labels).

    Which entries are anchors (`anchors`):
    - "public": as multisupconloss.py runs. Its rows are ordered (view, image, class) but its anchor
      mask `labels.unsqueeze(1).repeat(1, n_view, 1).view(-1, 1)` is ordered (image, view, class),
      so row i = v B + b (view v, image b) is masked with the labels of image i // V: the entry of
      image b, class c is an anchor only when image (v B + b) // V also has c; the others still
      serve as positives and negatives, and the divisor stays V x present labels;
    - "present": every entry is an anchor (what the formula in that file's docstring says).
    With one view (bank=None: SupCon over the batch alone, our variant) both are the same.

    Through the op `label_contrastive_loss` (candidates = all entries with their classes, anchors =
    the same entries, label -1 where not an anchor, self excluded, reduction "sum"). Two differences
    from the public value, none in the gradient: the public code subtracts detached maxima for
    stability that do not cancel (the numerator's is taken over classes for a pair of images, the
    denominator's over the anchor's row), so its logged value carries a constant offset; and it adds
    eps = 1e-5 inside the log of the max-shifted denominator."""
    if anchors not in ("public", "present"):
        raise ValueError(f"sample_to_sample_loss: anchors must be 'public' or 'present', got {anchors!r}")
    views = torch.stack([z] if bank is None else [z, bank.to(z.dtype)])                  # [V, B, C, D]
    n_views, batch = views.shape[0], views.shape[1]
    present = (observed > 0)[None].expand(n_views, -1, -1)                               # [V, B, C]
    v_idx, b_idx, c_idx = present.nonzero(as_tuple=True)
    features = F.normalize(_compute_dtype(views[v_idx, b_idx, c_idx]), dim=-1)
    anchor_labels = c_idx
    if anchors == "public" and n_views > 1:
        masked_image = torch.div(v_idx * batch + b_idx, n_views, rounding_mode="floor")
        anchor_labels = torch.where(present[0, masked_image, c_idx], c_idx, torch.full_like(c_idx, -1))
    total = label_contrastive_loss(features, anchor_labels, features, c_idx, temperature=temperature,
                                   exclude_self=True, reduction="sum", backend=backend)
    return total / max(features.shape[0], 1)


def prototype_to_sample_loss(z: Tensor, prototypes: Tensor, observed: Tensor, temperature: float = 0.07) -> Tensor:
    """PSCL: Semantic2PrototypeConLoss of code/lib_sadcl/models/loss/sem2pro.py (the class in use,
    below its commented-out earlier version). For class c, over the IMAGES b of the batch, with
    s_bc = cos(z_bc, p_c) / t (z [B, C, D] the projected label features, p [C, D] the projected
    prototypes):

        term_c = log sum_{all b} exp(s_bc) - log sum_{b: c present} exp(s_bc)      (c present somewhere)
        term_c = log sum_{all b} exp(s_bc) - max_b s_bc  (max without gradient)     (c absent from the batch)
        loss   = sum_c term_c / (number of present entries (b, c) in the batch)

    The second line is what the public code computes for a class without positives: it subtracts
    the detached per-class maximum first, and its guard `pos2proto[pos2proto <= 0] = 1.0` turns the
    empty positive sum into log 1 = 0, so only the denominator's log-sum-exp remains; it pushes
    every image's class-c feature away from p_c. With no present entry at all the public code
    fails (`log_prob.meam()`); we divide by 1.

    Not through `label_contrastive_loss`: that op averages log-probabilities over the positives
    (SupCon L_out), while PSCL takes the log of the SUM over positives, and the op has no
    counterpart of the absent-class term. It is a [C, B] problem, so dense PyTorch is small."""
    z = _compute_dtype(z)
    s = F.cosine_similarity(z, prototypes.to(z.dtype)[None].expand_as(z), dim=-1) / temperature   # [B, C]
    positive = observed > 0
    has_positive = positive.any(dim=0)                                                               # [C]
    log_all = torch.logsumexp(s, dim=0)
    s_positive = s.masked_fill(~positive, float("-inf"))
    s_positive = torch.where(has_positive[None], s_positive, torch.zeros_like(s))   # keep empty columns finite
    log_positive = torch.logsumexp(s_positive, dim=0)
    per_class = torch.where(has_positive, log_all - log_positive, log_all - s.detach().max(dim=0).values)
    return per_class.sum() / positive.sum().clamp(min=1).to(s.dtype)
