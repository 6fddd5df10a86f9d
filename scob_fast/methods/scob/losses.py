"""Scob's two objectives: the supervised pair loss against the label estimator, and the
label-level InfoNCE against the momentum key and the prototype bank."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from scob_fast.methods.losses import estimator_pair_loss
from scob_fast.ops.label_contrastive import label_contrastive_loss


def scob_supervised_loss(logits: torch.Tensor, estimator_logits: torch.Tensor, observed: torch.Tensor,
                         expected_positives: float) -> torch.Tensor:
    """(L1 + L2) / 2 with L1 = mean_b bce(p, sg(g)) + EPR(p), L2 = mean_b bce(g, sg(p)) + EPR(g)."""
    return estimator_pair_loss(logits.float(), estimator_logits.float(), (observed > 0).float(), expected_positives)


def scob_contrastive_loss(z, zk, labels, prototypes, prototype_valid, weights, temperature, backend=None):
    """Published InfoNCE: logits [cos(z, zk), cos(z, proto_c) for every stored class] + 1, times
    weights (1 for the positive, W[y, c] for prototypes), / temperature, cross-entropy on index 0."""
    z = F.normalize(z.float(), dim=1)
    zk = F.normalize(zk.float(), dim=1)
    protos = F.normalize(prototypes.float(), dim=1)
    candidate_labels = torch.arange(protos.shape[0], device=z.device)
    candidate_labels = torch.where(prototype_valid, candidate_labels, torch.full_like(candidate_labels, -1))
    return label_contrastive_loss(
        z, labels, protos, candidate_labels, temperature=temperature, class_weights=weights,
        extra_positive=zk, positives="extra_only", weight_mode="logit", logit_shift=1.0, backend=backend)
