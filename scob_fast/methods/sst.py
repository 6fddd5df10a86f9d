"""SST: Structured Semantic Transfer for multi-label recognition with partial labels (Chen et al., AAAI 2022).

Network on the frozen backbone's last level (the paper's, with the width set by --dim):
- semantic decoupling: 1x1 conv + BN to d channels, then per class an attention over the H*W
  positions driven by a class embedding, a_c = softmax_hw(w4 . (W3 tanh(W1 x_hw * W2 e_c) + b3)),
  f_c = sum_hw a_c,hw x_hw -> [B, C, d]. The paper's class embeddings are GloVe vectors of the class
  names; none are available offline, so they are learned here (300 wide, like GloVe).
- a gated graph network (Li et al. 2016, T steps) over the label graph A[i, j] = P(j positive | i
  positive), estimated from the observed training labels (in-edges A, out-edges A^T);
- o_c = tanh(W [h_c^T, f_c]) and a per-class classifier logit_c = w_c . o_c + b_c.
- intra-image pair head: u = W f, for every class pair i < j  s_ij = v_ij . W3 relu(W2 [u_i, u_j]),
  one classifier vector per pair (as the paper); sigmoid(s_ij) estimates "i and j both present".

Training signals (weights are flags; the defaults are the authors' public script's):
- partial BCE over the observed labels (mean over observed entries);
- intra-image transfer: for an unknown label j, the mean of sigmoid(s_ij) over the image's observed
  positives i; at or above the threshold, j becomes a pseudo positive;
- cross-image transfer: a per-class FIFO bank of the semantic-decoupling features of observed
  positives (--sst-bank-size, 100); an unknown label j whose mean cosine similarity to bank j
  reaches the threshold becomes a pseudo positive. Empty slots count as similarity 0 (the
  authors' zero-initialised bank), so a class needs about threshold * size stored positives
  before it can transfer anything;
- each pseudo set joins the observed labels in its own partial BCE; pseudo labels only add
  positives to unknown entries, never override an observed label;
- co-occurrence loss on the pair head: asymmetric loss (gamma- 2, gamma+ 1, clip 0.05), target
  "both positive". Deviation: the public code scores every pair and so treats a pair with an
  unknown label as negative, which pulls the scores of exactly the pairs we transfer through down
  by a factor of about P; we score only pairs whose two labels are observed (mean over them);
- within-batch feature distance (the authors' contrastive term, weight 0.05): for each class, over
  image pairs, 1 - cos for two observed positives and 1 + cos for an observed positive with an
  observed negative, each averaged. (The public code also pushes apart pairs of negatives and
  subsamples hard pairs; we keep the two balanced means, which are deterministic.)
- the co-occurrence and distance terms ramp in linearly over the first epoch; pseudo labels enter
  from --sst-pseudo-start-epoch, and from then on the threshold drops by --sst-threshold-step per
  epoch to --sst-threshold-floor (0-based epoch e: max(floor, start - step * max(0, e - start_epoch))).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from scob_fast.methods.base import Method, MethodContext

WORD_DIM = 300          # GloVe's width, which the paper's class embeddings have
SEMANTIC_STEPS = 3      # gated graph propagation steps (paper: 3)


# -- losses and pseudo-label rules (pure functions, tested one by one) ------------------------------

def partial_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE over the entries of `targets` that are observed (1 positive, -1 negative; 0 is ignored).
    0 (with a graph) when nothing is observed."""
    logits = logits.float()
    known = (targets != 0).float()
    loss = F.binary_cross_entropy_with_logits(logits, (targets > 0).float(), reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1.0)


def pair_index(num_classes: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(i, j) of every unordered class pair i < j, row-major: (0,1), (0,2), ..., (C-2, C-1)."""
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


def asymmetric_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                    gamma_neg: float = 2.0, gamma_pos: float = 1.0, clip: float = 0.05,
                    eps: float = 1e-8) -> torch.Tensor:
    """Ridnik et al.'s asymmetric loss, averaged with `weights` (0/1 mask of the entries that count)."""
    p = torch.sigmoid(logits.float())
    p_neg = (1.0 - p + clip).clamp(max=1.0) if clip > 0 else 1.0 - p
    loss_pos = targets * torch.log(p.clamp(min=eps)) * (1.0 - p) ** gamma_pos
    loss_neg = (1.0 - targets) * torch.log(p_neg.clamp(min=eps)) * (1.0 - p_neg) ** gamma_neg
    loss = -(loss_pos + loss_neg)
    return (loss * weights).sum() / weights.sum().clamp(min=1.0)


def cooccurrence_loss(pair_logits: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Asymmetric loss of the pair scores [B, P] against "both positive", over pairs whose two
    labels are observed."""
    i, j = pair_index(observed.shape[1], observed.device)
    target = ((observed[:, i] > 0) & (observed[:, j] > 0)).float()
    known = ((observed[:, i] != 0) & (observed[:, j] != 0)).float()
    return asymmetric_loss(pair_logits, target, known)


def feature_distance_loss(features: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Per class over image pairs m < n: mean(1 - cos) over positive-positive pairs plus
    mean(1 + cos) over positive-negative pairs (observed labels only); empty means count 0."""
    b = features.shape[0]
    z = F.normalize(features.float(), dim=-1).transpose(0, 1)          # [C, B, d]
    cos = z @ z.transpose(1, 2)                                        # [C, B, B]
    pos = (observed > 0).float().t()                                   # [C, B]
    neg = (observed < 0).float().t()
    upper = torch.triu(torch.ones(b, b, device=features.device), diagonal=1)
    pp = pos[:, :, None] * pos[:, None, :] * upper
    pn = (pos[:, :, None] * neg[:, None, :] + neg[:, :, None] * pos[:, None, :]) * upper
    pull = ((1.0 - cos) * pp).sum() / pp.sum().clamp(min=1.0)
    push = ((1.0 + cos) * pn).sum() / pn.sum().clamp(min=1.0)
    return pull + push


@torch.no_grad()
def intra_pseudo_labels(pair_probability: torch.Tensor, observed: torch.Tensor, threshold: float) -> torch.Tensor:
    """Observed labels plus intra-image pseudo positives.

    pair_probability [B, C, C] (symmetric; sigmoid of the pair scores), observed [B, C] in {1, 0, -1}.
    An unknown label j becomes 1 when mean_{i observed positive} pair_probability[i, j] >= threshold;
    an image without observed positives gets none. Observed entries are returned unchanged."""
    positive = (observed > 0).to(pair_probability.dtype)
    count = positive.sum(dim=1, keepdim=True)
    mean = (pair_probability * positive[:, :, None]).sum(dim=1) / count.clamp(min=1.0)
    pseudo = (mean >= threshold) & (observed == 0) & (count > 0)
    return torch.where(pseudo, torch.ones_like(observed), observed)


@torch.no_grad()
def cross_pseudo_labels(features: torch.Tensor, observed: torch.Tensor, bank: torch.Tensor,
                        threshold: float) -> torch.Tensor:
    """Observed labels plus cross-image pseudo positives.

    features [B, C, d], bank [C, K, d] (zero rows = empty slots, which count as similarity 0).
    An unknown label j becomes 1 when mean_k cos(features[:, j], bank[j, k]) >= threshold."""
    z = F.normalize(features.float(), dim=-1)
    stored = F.normalize(bank.float(), dim=-1)                         # zero rows stay zero
    similarity = torch.einsum("bcd,ckd->bck", z, stored).mean(dim=-1)
    pseudo = (similarity >= threshold) & (observed == 0)
    return torch.where(pseudo, torch.ones_like(observed), observed)


def threshold_at(epoch: int, start: float, step: float, floor: float, start_epoch: int) -> float:
    """0-based epoch -> pseudo-label threshold: `start` until `start_epoch`, then -step per epoch."""
    return max(floor, start - step * max(0, epoch - start_epoch))


# -- state and network ----------------------------------------------------------------------------

class FeatureBank(nn.Module):
    """Per-class FIFO ring of the features of observed positives: [C, K, d] (zeros where empty).

    When a batch brings more than K positives of a class, the last K (in batch order) are kept."""

    def __init__(self, num_classes: int, capacity: int, dim: int):
        super().__init__()
        if capacity < 1:
            raise ValueError(f"bank capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.register_buffer("features", torch.zeros(num_classes, capacity, dim))
        self.register_buffer("pointer", torch.zeros(num_classes, dtype=torch.long))   # next slot to write
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def push(self, features: torch.Tensor, positive: torch.Tensor) -> None:
        """features [B, C, d], positive bool [B, C]: store features[b, c] in bank c where positive."""
        k = self.capacity
        positive = positive.bool()
        rank = positive.long().cumsum(dim=0) - 1                         # order of b among class c's new ones
        new = positive.long().sum(dim=0)                                 # [C]
        keep = positive & (rank >= (new - k)[None, :])                   # only the newest K of a class
        b_idx, c_idx = keep.nonzero(as_tuple=True)
        skipped = (new - k).clamp(min=0)
        slot = (self.pointer[c_idx] + rank[b_idx, c_idx] - skipped[c_idx]) % k
        self.features[c_idx, slot] = features[b_idx, c_idx].to(self.features.dtype)
        # Writing more than K leaves the oldest kept entry where the pointer was.
        self.pointer.copy_((self.pointer + new.clamp(max=k)) % k)
        self.count.copy_((self.count + new).clamp(max=k))

    def clear(self) -> None:
        self.features.zero_()
        self.pointer.zero_()
        self.count.zero_()


def label_graph(observed: torch.Tensor) -> torch.Tensor:
    """A[i, j] ~ P(j positive | i positive) from partial labels: images where i is an observed
    positive and j is observed; the diagonal is 1 (a self-loop, as in the paper's statistics)."""
    pos = (observed > 0).double()
    known = (observed != 0).double()
    both = pos.t() @ pos                                              # [C, C] i pos & j pos
    i_pos_j_known = pos.t() @ known
    graph = both / i_pos_j_known.clamp(min=1.0)
    graph.fill_diagonal_(1.0)
    return graph.float()


class SemanticDecoupling(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, dim: int, hidden: int):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, dim, 1, bias=False), nn.BatchNorm2d(dim))
        self.class_embedding = nn.Parameter(torch.randn(num_classes, WORD_DIM) * WORD_DIM ** -0.5)
        self.image_proj = nn.Linear(dim, hidden, bias=False)
        self.word_proj = nn.Linear(WORD_DIM, hidden, bias=False)
        self.hidden = nn.Linear(hidden, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, f_high: torch.Tensor) -> torch.Tensor:
        x = self.reduce(f_high).flatten(2).transpose(1, 2)               # [B, HW, d]
        joint = torch.tanh(self.image_proj(x)[:, None, :, :] * self.word_proj(self.class_embedding)[None, :, None, :])
        attention = self.score(self.hidden(joint)).squeeze(-1).softmax(dim=-1)   # [B, C, HW]
        return attention @ x                                              # [B, C, d]


class GatedGraph(nn.Module):
    """GGNN over class nodes: a = [A h, A^T h]; GRU-style update, `steps` times."""

    def __init__(self, dim: int, graph: torch.Tensor, steps: int = SEMANTIC_STEPS):
        super().__init__()
        self.steps = steps
        self.register_buffer("graph", graph)
        self.update_w, self.update_u = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        self.reset_w, self.reset_u = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        self.cand_w, self.cand_u = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        graph = self.graph.to(h.dtype)
        for _ in range(self.steps):
            a = torch.cat([graph @ h, graph.t() @ h], dim=-1)
            z = torch.sigmoid(self.update_w(a) + self.update_u(h))
            r = torch.sigmoid(self.reset_w(a) + self.reset_u(h))
            candidate = torch.tanh(self.cand_w(a) + self.cand_u(r * h))
            h = (1.0 - z) * h + z * candidate
        return h


class SSTNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, dim: int, graph: torch.Tensor):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"SST needs at least 2 classes, got {num_classes}")
        hidden = dim // 2
        self.num_classes = num_classes
        self.decoupling = SemanticDecoupling(in_channels, num_classes, dim, hidden)
        self.graph = GatedGraph(dim, graph)
        self.fuse = nn.Linear(2 * dim, dim)
        self.classifier_weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-dim ** -0.5, dim ** -0.5))
        self.classifier_bias = nn.Parameter(torch.zeros(num_classes))
        num_pairs = num_classes * (num_classes - 1) // 2
        self.pair_in = nn.Linear(dim, hidden)
        # W2 [u_i, u_j] = W2a u_i + W2b u_j: two projections per class instead of one per pair.
        self.pair_left = nn.Linear(hidden, dim)
        self.pair_right = nn.Linear(hidden, dim, bias=False)
        self.pair_hidden = nn.Linear(dim, dim)
        self.pair_weight = nn.Parameter(torch.empty(num_pairs, dim).uniform_(-dim ** -0.5, dim ** -0.5))
        self.pair_bias = nn.Parameter(torch.zeros(num_pairs))

    def classify(self, f_high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits [B, C], semantic features [B, C, d])."""
        semantic = self.decoupling(f_high)
        refined = self.graph(semantic)
        out = torch.tanh(self.fuse(torch.cat([refined, semantic], dim=-1)))
        return (out * self.classifier_weight).sum(-1) + self.classifier_bias, semantic

    def pair_logits(self, semantic: torch.Tensor) -> torch.Tensor:
        """[B, C, d] -> [B, P] co-occurrence scores of the pairs i < j."""
        i, j = pair_index(self.num_classes, semantic.device)
        u = self.pair_in(semantic)
        hidden = torch.relu(self.pair_left(u)[:, i] + self.pair_right(u)[:, j])
        return (self.pair_hidden(hidden) * self.pair_weight).sum(-1) + self.pair_bias

    def forward(self, f_high: torch.Tensor) -> torch.Tensor:
        return self.classify(f_high)[0]


class SST(Method):
    name = "sst"
    needs_hard_view = False
    label_regimes = ("partial:0.5",)

    @staticmethod
    def add_arguments(group: argparse._ArgumentGroup) -> None:
        group.add_argument("--sst-threshold", type=float, default=0.95, help="initial pseudo-label threshold")
        group.add_argument("--sst-threshold-step", type=float, default=0.025, help="threshold drop per epoch")
        group.add_argument("--sst-threshold-floor", type=float, default=0.75, help="lowest threshold")
        group.add_argument("--sst-pseudo-start-epoch", type=int, default=None,
                           help="0-based epoch from which pseudo labels are used and the threshold drops "
                                "(default 5 as the paper; 1 on the 3-epoch demo)")
        group.add_argument("--sst-bank-size", type=int, default=100, help="cross-image bank size per class")
        group.add_argument("--sst-intra-weight", type=float, default=1.0, help="intra-image pseudo-label BCE weight")
        group.add_argument("--sst-inter-weight", type=float, default=1.0, help="cross-image pseudo-label BCE weight")
        group.add_argument("--sst-cooc-weight", type=float, default=10.0, help="co-occurrence loss weight")
        group.add_argument("--sst-distance-weight", type=float, default=0.05, help="feature distance loss weight")

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        a = ctx.args
        self.net = SSTNet(ctx.backbone.channels[1], ctx.num_classes, a.dim, label_graph(ctx.observed))
        self.bank = FeatureBank(ctx.num_classes, a.sst_bank_size, a.dim)
        start = a.sst_pseudo_start_epoch
        if start is None:
            start = 1 if getattr(a, "dataset", None) == "demo" else 5
        self.pseudo_start_epoch = start
        self.steps_per_epoch = max(1, -(-ctx.num_samples // max(1, a.batch_size)))
        self.epoch, self.step_in_epoch = 0, 0

    def param_groups(self) -> list[dict]:
        a = self.ctx.args
        classifier = [self.net.classifier_weight, self.net.classifier_bias]
        ids = {id(p) for p in classifier}
        head = [p for p in self.net.parameters() if id(p) not in ids]
        return [{"name": "head", "params": head, "lr": a.lr_linear},
                {"name": "classifier", "params": classifier, "lr": a.lr_classifier}]

    def threshold(self, epoch: int | None = None) -> float:
        a = self.ctx.args
        return threshold_at(self.epoch if epoch is None else epoch, a.sst_threshold, a.sst_threshold_step,
                            a.sst_threshold_floor, self.pseudo_start_epoch)

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.step_in_epoch = epoch, 0

    @torch.no_grad()
    def predict_from_features(self, f_low: torch.Tensor, f_high: torch.Tensor) -> torch.Tensor:
        return self.net(f_high)

    def losses(self, f_high: torch.Tensor, observed: torch.Tensor, labels: torch.Tensor | None = None):
        """(total loss, stats): every term of the SST objective on one batch; pushes the batch's
        observed positives into the bank first (as the authors' code does)."""
        a = self.ctx.args
        with self.ctx.amp.autocast():
            logits, semantic = self.net.classify(f_high)
            pair_logits = self.net.pair_logits(semantic)
        logits, semantic, pair_logits = logits.float(), semantic.float(), pair_logits.float()
        ramp = min(1.0, (self.step_in_epoch + 1) / self.steps_per_epoch) if self.epoch == 0 else 1.0
        loss_cls = partial_bce(logits, observed)
        loss_cooc = a.sst_cooc_weight * ramp * cooccurrence_loss(pair_logits, observed)
        loss_dist = a.sst_distance_weight * ramp * feature_distance_loss(semantic, observed)
        self.bank.push(semantic.detach(), observed > 0)
        stats = {"loss_cls": loss_cls.detach(), "loss_cooc": loss_cooc.detach(), "loss_dist": loss_dist.detach()}
        total = loss_cls + loss_cooc + loss_dist
        zero = torch.zeros((), device=logits.device)
        # The same keys every step (the trainer's per-epoch summary has fixed columns).
        stats.update(loss_intra=zero, loss_inter=zero, pseudo_intra=zero, pseudo_inter=zero,
                     pseudo_intra_true=zero, pseudo_inter_true=zero)
        if self.epoch >= self.pseudo_start_epoch:
            thr = self.threshold()
            pair_prob = pair_matrix(torch.sigmoid(pair_logits.detach()), observed.shape[1])
            intra = intra_pseudo_labels(pair_prob, observed, thr)
            inter = cross_pseudo_labels(semantic.detach(), observed, self.bank.features, thr)
            loss_intra = a.sst_intra_weight * partial_bce(logits, intra)
            loss_inter = a.sst_inter_weight * partial_bce(logits, inter)
            total = total + loss_intra + loss_inter
            new_intra, new_inter = (intra != observed), (inter != observed)
            stats.update(loss_intra=loss_intra.detach(), loss_inter=loss_inter.detach(),
                         pseudo_intra=new_intra.float().sum(), pseudo_inter=new_inter.float().sum())
            if labels is not None:
                # Diagnostics only (never a training signal): how many pseudo positives are true.
                stats["pseudo_intra_true"] = (new_intra & (labels > 0)).float().sum()
                stats["pseudo_inter_true"] = (new_inter & (labels > 0)).float().sum()
        return total, stats

    def train_step(self, batch: dict, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        _, f_high = self.clean_features(batch)
        loss, stats = self.losses(f_high, batch["observed"], batch.get("labels"))
        self.ctx.amp.step(loss, optimizer)
        self.step_in_epoch += 1
        stats["loss"] = loss.detach()
        return stats
