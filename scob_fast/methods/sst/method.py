"""SST: Structured Semantic Transfer for multi-label recognition with partial labels (Chen et al., AAAI 2022).

Checked against the authors' public code, HCPLab-SYSU/HCP-MLR-PL: SST.py (training loop),
scripts/SST.sh (hyper-parameters), model/SST.py, model/SemanticDecoupling.py,
model/GraphNeuralNetwork.py, model/Element_Wise_Layer.py, model/backbone/resnet.py, loss/SST.py,
utils/dataloader.py. File names below are that repository's.

Network on the frozen backbone's last level (width d = --dim; public 1024, intermediate d/2 = 512):
- 2x2 average pooling with stride 2 (resnet.py avgpool1: 14x14 -> 7x7 at 448 px), then 1x1 conv +
  BN to d channels (model/SST.py changeChannel). --sst-pool auto (default) skips the pooling on grids
  smaller than 8x8, such as the demo's 4x4 at 128 px; --sst-pool always is the public code exactly.
- semantic decoupling (model/SemanticDecoupling.py): per class an attention over the positions
  driven by a class embedding, a_c = softmax_hw(fc4(fc3(tanh(fc1 x_hw * fc2 e_c)))),
  f_c = sum_hw a_c,hw x_hw -> [B, C, d]. The public embeddings are fixed GloVe vectors (a .npy per
  dataset, utils/dataloader.py); --sst-class-embeddings FILE loads such a [C, D] table (fixed, a
  buffer); without it they are learned, 300 wide.
- a gated graph network (model/GraphNeuralNetwork.py, 3 steps) over the label graph
  A[i, j] = N(i+ and j+) / N(i+) counted on the observed partial labels (utils/dataloader.py
  get_graph_file), in-edges A, out-edges A^T;
- o_c = tanh(fc [h_c^T, f_c]) and a per-class classifier logit_c = w_c . o_c + b_c
  (Element_Wise_Layer, weight and bias ~ U(+-1/sqrt(d)));
- intra-image pair head (model/SST.py intra_fc_1..3, intra_classifiers): u = W f, for every class
  pair i < j  s_ij = v_ij . fc3 relu(fc2 [u_i, u_j]), one classifier vector per pair.

Training signals (loss/SST.py, SST.py Train; weights from scripts/SST.sh):
- partial BCE over the observed labels (BCELoss: mean over observed entries);
- intra-image transfer (getIntraPseudoLabel): for an unknown label j, sum of sigmoid(s_ij) over the
  image's observed positives i divided by max(1, their number); at or above the threshold, j becomes
  a pseudo positive;
- cross-image transfer (getInterPseudoLabel, updateFeature): a per-class bank (--sst-bank-size 100)
  of the semantic-decoupling features of observed positives, newest first, updated with the batch
  BEFORE the pseudo labels are read; an unknown label j whose mean cosine similarity to the K slots
  of bank j reaches the threshold becomes a pseudo positive (empty, zero slots count 0);
- each pseudo set (observed labels plus its pseudo positives) in its own partial BCE, weight 1;
- co-occurrence loss (intraAsymmetricLoss, weight 10): asymmetric loss (gamma- 2, gamma+ 1, clip
  0.05) of s_ij against "both observed positive" over ALL pairs, mean over B * P (a pair with an
  unknown label is a negative). --sst-cooc-pairs observed scores only pairs whose two labels are
  observed (our earlier variant);
- feature distance loss (ContrastiveLoss, weight 0.05): over image pairs and classes, 1 - cos for
  positive-positive, 1 + cos for positive-negative and negative-negative entries; with k > 0
  positive-positive entries each of the other two sets is cut to a random 2k plus its k hardest,
  one mean over what is kept. The random draw comes from a generator seeded by (--seed, global
  step), so a run (and a resumed run) is reproducible; --sst-distance-pairs balanced is our earlier
  deterministic variant;
- in epoch 0 the co-occurrence and distance terms are scaled by batch_index / batches_per_epoch
  (0 at the first step; SST.py Train); pseudo labels enter from --sst-pseudo-start-epoch (public 5)
  and after each epoch from then on the threshold drops by 0.025 to 0.75: in 0-based epoch e it is
  max(0.75, 0.95 - 0.025 * max(0, e - start)) (SST.py main).
"""
from __future__ import annotations

import torch

from scob_fast.methods.base import Method, MethodContext
from scob_fast.methods.losses import partial_bce

from .config import PAPER_PSEUDO_START_EPOCH, SSTConfig
from .losses import cooccurrence_loss, feature_distance_loss, pair_matrix
from .net import SSTNet, label_graph, load_class_embeddings
from .transfer import FeatureBank, cross_pseudo_labels, intra_pseudo_labels, threshold_at


class SST(Method):
    name = "sst"
    needs_hard_view = False
    label_regimes = ("partial:0.5",)

    config_class = SSTConfig

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        a, dim = self.config, ctx.heads.dim
        embeddings = load_class_embeddings(a.class_embeddings, ctx.num_classes) if a.class_embeddings else None
        self.net = SSTNet(ctx.backbone.channels[1], ctx.num_classes, dim, label_graph(ctx.observed), pool=a.pool,
                          class_embeddings=embeddings)
        self.bank = FeatureBank(ctx.num_classes, a.bank_size, dim)
        start = a.pseudo_start_epoch
        self.pseudo_start_epoch = PAPER_PSEUDO_START_EPOCH if start is None else start
        # the training loader drops the last incomplete batch (as the public DataLoader, drop_last=True)
        self.steps_per_epoch = max(1, ctx.num_samples // max(1, ctx.batch_size))
        self.epoch, self.step_in_epoch = 0, 0

    def param_groups(self) -> list[dict]:
        lr = self.ctx.lr
        classifier = [self.net.classifier_weight, self.net.classifier_bias]
        ids = {id(p) for p in classifier}
        head = [p for p in self.net.parameters() if id(p) not in ids]
        return [{"name": "head", "params": head, "lr": lr.linear},
                {"name": "classifier", "params": classifier, "lr": lr.classifier}]

    def threshold(self, epoch: int | None = None) -> float:
        a = self.config
        return threshold_at(self.epoch if epoch is None else epoch, a.threshold, a.threshold_step,
                            a.threshold_floor, self.pseudo_start_epoch)

    def step_generator(self) -> torch.Generator:
        """The generator of this step's random draws (the distance loss's subsampling), seeded by
        (seed, global step) so that a run and its resumption draw the same numbers."""
        step = self.epoch * self.steps_per_epoch + self.step_in_epoch
        generator = torch.Generator(device=self.ctx.device)
        generator.manual_seed((int(self.ctx.seed) * 1_000_003 + step) % (2 ** 63))
        return generator

    def distance_keys(self, batch_size: int) -> torch.Tensor:
        """[2, B(B-1)/2 * C] uniform numbers for feature_distance_loss's subsampling."""
        entries = batch_size * (batch_size - 1) // 2 * self.ctx.num_classes
        return torch.rand(2, entries, generator=self.step_generator(), device=self.ctx.device)

    def compiled_modules(self):
        return [self.net.decoupling, self.net.graph]

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.step_in_epoch = epoch, 0

    def continue_epoch(self, epoch: int, step: int) -> None:
        self.epoch, self.step_in_epoch = epoch, step

    @torch.no_grad()
    def predict_from_features(self, f_low: torch.Tensor, f_high: torch.Tensor) -> torch.Tensor:
        return self.net(f_high)

    def losses(self, f_high: torch.Tensor, observed: torch.Tensor, labels: torch.Tensor | None = None):
        """(total loss, stats): every term of the SST objective on one batch; pushes the batch's
        observed positives into the bank first (as the authors' code does)."""
        a = self.config
        with self.ctx.amp.autocast():
            logits, semantic = self.net.classify(f_high)
            pair_logits = self.net.pair_logits(semantic)
        logits, semantic, pair_logits = logits.float(), semantic.float(), pair_logits.float()
        # Every term below is the global batch's (one process: this batch's): the distance loss pairs
        # images across ranks and the bank takes every rank's positives, identically on every copy.
        dist = self.ctx.dist
        logits, semantic, pair_logits = (dist.gather_with_grad(t) for t in (logits, semantic, pair_logits))
        observed = dist.gather(observed)
        labels = None if labels is None else dist.gather(labels)
        # SST.py Train: weight * loss * batchIndex / len(train_loader) in epoch 0
        ramp = min(1.0, self.step_in_epoch / self.steps_per_epoch) if self.epoch == 0 else 1.0
        loss_cls = partial_bce(logits, observed)
        loss_cooc = a.cooc_weight * ramp * cooccurrence_loss(pair_logits, observed, a.cooc_pairs)
        keys = self.distance_keys(observed.shape[0]) if a.distance_pairs == "published" else None
        loss_dist = a.distance_weight * ramp * feature_distance_loss(semantic, observed, keys, a.distance_pairs)
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
            loss_intra = a.intra_weight * partial_bce(logits, intra)
            loss_inter = a.inter_weight * partial_bce(logits, inter)
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
