"""Scob's two objectives: the supervised pair loss against the label estimator, and the
label-level InfoNCE against the momentum key and the prototype bank."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from scob_fast.methods.losses import estimator_pair_loss, expected_positive_regulariser
from scob_fast.ops.label_contrastive import label_contrastive_loss


def scob_supervised_loss(logits: torch.Tensor, estimator_logits: torch.Tensor, observed: torch.Tensor,
                         expected_positives: float) -> torch.Tensor:
    """(L1 + L2) / 2 with L1 = mean_b bce(p, sg(g)) + EPR(p), L2 = mean_b bce(g, sg(p)) + EPR(g)."""
    return estimator_pair_loss(logits.float(), estimator_logits.float(), (observed > 0).float(), expected_positives)


def scob_supervised_terms(logits: torch.Tensor, estimator_logits: torch.Tensor, observed: torch.Tensor,
                          expected_positives: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of the supervised loss, (L1 / 2, L2 / 2): the classifier's term and the label
    estimator's term, so that their shares can be logged; they sum to scob_supervised_loss (the
    same operations as methods.losses.estimator_pair_loss, in the same order)."""
    x, g, y = logits.float(), estimator_logits.float(), (observed > 0).float()
    classifier = (F.binary_cross_entropy_with_logits(x, torch.sigmoid(g).detach())
                  + expected_positive_regulariser(x, y, expected_positives))
    estimator = (F.binary_cross_entropy_with_logits(g, torch.sigmoid(x).detach())
                 + expected_positive_regulariser(g, y, expected_positives))
    return 0.5 * classifier, 0.5 * estimator


def scob_contrastive_loss(z, zk, labels, prototypes, prototype_valid, weights, temperature, backend=None):
    """Published InfoNCE: logits [cos(z, zk), cos(z, proto_c) for every stored class] + 1, times
    weights (1 for the positive, W[y, c] for prototypes), / temperature, cross-entropy on index 0.
    A class with `prototype_valid` False is left out of the softmax; the public code keeps an empty
    class in it as a zero vector (cos = 0, losses.py loss_contrastive_infonce on the zeros of
    main.py get_most_confident_feats): pass all-True validity and zero prototypes for that."""
    z = F.normalize(z.float(), dim=1)
    zk = F.normalize(zk.float(), dim=1)
    protos = F.normalize(prototypes.float(), dim=1)
    candidate_labels = torch.arange(protos.shape[0], device=z.device)
    candidate_labels = torch.where(prototype_valid, candidate_labels, torch.full_like(candidate_labels, -1))
    return label_contrastive_loss(
        z, labels, protos, candidate_labels, temperature=temperature, class_weights=weights,
        extra_positive=zk, positives="extra_only", weight_mode="logit", logit_shift=1.0, backend=backend)


def scob_contrastive_loss_per_sample(z, zk, prototypes, prototype_valid, weights, temperature, own_classes=None):
    """The published InfoNCE with a weight per (sample, class) instead of per (class, class):
    logits [cos(z, zk) + 1, weights[b, c] (cos(z, proto_c) + 1) for every stored class c] / temperature,
    cross-entropy on index 0, mean over the batch. weights: [B, C]; with weights = W[labels] this is
    scob_contrastive_loss.

    own_classes ([B] long, ours: --prototype-positive): the sample's own class prototype joins the
    positive side with weight 1, -log((e^{l_k} + e^{l_y}) / sum_j e^{l_j}), so the hard view's class
    embedding is pulled towards the class's most confident stored embedding as well as to its own
    momentum key (a class it has no prototype for keeps the single positive)."""
    z = F.normalize(z.float(), dim=1)
    zk = F.normalize(zk.float(), dim=1)
    protos = F.normalize(prototypes.float(), dim=1)
    positive = (z * zk).sum(dim=1, keepdim=True) + 1.0
    similarity = z @ protos.t() + 1.0
    weights = weights.float()
    own = None
    if own_classes is not None:
        own = F.one_hot(own_classes.long(), protos.shape[0]).bool() & prototype_valid[None, :]
        weights = torch.where(own, torch.ones_like(weights), weights)
    negatives = (weights * similarity).masked_fill(~prototype_valid[None, :], float("-inf"))
    logits = torch.cat([positive, negatives], dim=1) / temperature
    if own is None:
        return F.cross_entropy(logits, torch.zeros(z.shape[0], dtype=torch.long, device=z.device))
    positives = torch.cat([torch.ones_like(own[:, :1]), own], dim=1)
    numerator = torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=1)
    return (torch.logsumexp(logits, dim=1) - numerator).mean()
