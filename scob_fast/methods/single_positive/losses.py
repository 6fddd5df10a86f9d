"""Single-positive multi-label baselines: AN, AN-LS, WAN, EPR, ROLE, LL-R/Ct/Cp, SPLC, EM, EM+APL.

Every loss takes the classifier logits x [B, C] (pre-sigmoid), the observed labels y [B, C]
(1 = observed positive, 0 = unknown), the batch's dataset indices [B] and the 0-based epoch, and
returns a scalar. Notation below: p = sigmoid(x), BCE(x, t) = -t log p - (1 - t) log(1 - p), and
"mean" is over all B*C entries (the convention of Cole et al. and of the LL and EM authors' code).
Defaults are the authors' public code (the file is named); our variants are named options
(`--loss-hparams key=value`).

  an      AN      mean BCE(x, y): every unknown is assumed negative.           (Cole losses.py loss_an)
  an-ls   AN-LS   mean BCE(x, t) with t = 1 - eps on positives and t = eps on unknowns (eps = 0.1):
                  "(1 - eps) * loss(y) + eps * loss(1 - y)".          (Cole losses.py loss_an_ls, ls_coef)
  wan     WAN     mean w * BCE(x, y) with w = 1 on positives and 1 / (C - 1) on unknowns. (loss_wan)
  epr     EPR     mean(-y log p) + ((mean_b sum_c p - k) / C)^2, k = expected positives per image.
                  (loss_epr, expected_positive_regularizer norm '2'; k from train.py's expected_num_pos)
  role    ROLE    learnable estimator logits G [N, C], e = sigmoid(G[index]); with sg = stop-gradient
                  L = 1/2 [mean(-y log p + BCE(x, sg e)) + R(p)  +  mean(-y log e + BCE(G, sg p)) + R(e)],
                  R(q) = ((mean_b sum_c q - k) / C)^2 (loss_role). Init (Cole models.py LabelEstimator):
                  unknowns uniform in logit space over [logit(0.5 - w), logit(0.5 + w)], w = 0.1
                  (`init_width=0.3` is Scob's 0.2..0.8), observed positives logit(0.995). Give
                  `parameters()` to the optimiser (Cole train.py: at lr_mult = 10 times the lr).
  ll-r    LL-R    AN, but from epoch e >= 1 the entries with the largest BCE among the unknowns get
                  weight 0 (Kim et al., CVPR 2022; LargeLossMatters losses.py compute_batch_loss):
                  k = ceil(B * C * (1 - clean_rate)), clean_rate = 1 - delta_rel after each epoch
                  (train.py, the same float subtractions), capped at B * C. With the published
                  `selection` the k-th largest of mask * BCE is a threshold and every entry >= it is
                  modified (ties included; observed entries count 0 there, so they are modified too
                  once k exceeds the unknowns); `selection=topk` modifies exactly k unknowns.
  ll-ct   LL-Ct   same selection, but those entries take BCE(x, 1 - y) ("corrected_loss_matrix", i.e.
                  BCE(x, 1) for unknowns) for this step only.
  ll-cp   LL-Cp   from epoch 1, k = ceil(delta_rel * B * C) every step; modified entries take BCE(x, 1)
                  and those STRICTLY above the threshold become positive for good (correction_idx;
                  kept per sample in a [N, C] mask saved in `state_dict`; `selection=topk`: exactly the
                  k chosen). This is the path the authors' code means; their `mod_scheme is 'LL-Cp'`
                  tests (losses.py, train.py) compare strings by identity, which is False for a flag
                  value, so their LL-Cp runs train LL-Ct: `ll-ct` reproduces those runs.
                  delta_rel = 0.002 (their README's grid is 0.1..0.5 %, divided by 100 in config.py;
                  the code has no default).
  splc    SPLC    Zhang et al., ECCV 2022 (robust-loss-mlml src/loss_functions/losses.py class SPLC),
                  focal margin + self-paced correction, per entry:
                    observed positives  -(1 - q)^g log q,       q = sigmoid(x - m)   (focal margin)
                    unknowns, p <= tau  -p^g log(1 - p)                              (focal)
                    unknowns, p > tau   -(1 - p)^g log p (a positive, WITHOUT the margin), only from
                                        epoch `correction_epoch` on
                  tau = 0.6, m = 1, g = 2, correction_epoch = 1, SUMMED over entries (reduction
                  'sum'); the selection p > tau carries no gradient, the focal weights do.
                  Variants: `corrected_margin=1` (the paper's equation, margin on corrected labels
                  too), `reduction=mean`.
  em      EM      Zhou et al., ECCV 2022: mean(-y log p - alpha (1 - y) H(p)),
                  H(p) = -p log p - (1 - p) log(1 - p): the entropy of unknown labels is maximised.
                  (SPML-AckTheUnknown losses.py loss_EM; alpha per dataset, main.py)
  em-apl  EM+APL  EM plus asymmetric pseudo-labelling: before each epoch e >= warmup_epochs, per class
                  c, the floor(theta * U_c / (num_epochs - warmup_epochs)) still-unknown labels with
                  the lowest predictions become soft negatives with target t = that prediction
                  (U_c = number of unknown labels of class c); they then take beta * BCE(x, t)
                  instead of the EM term (main.py aysmmetric_pseudo_labeling, losses.py loss_EM_APL).
                  Predictions are each sample's latest train-step prediction, recorded by `loss`;
                  the authors run an extra eval-mode pass over the training set instead: a trainer
                  that wants that calls `record_predictions(probs, index)` over the set before
                  `start_epoch`. Defaults are the authors' COCO values (alpha 0.1, beta 0.9, theta
                  0.9, warm-up 5 of 10 epochs); other datasets in EM_APL_DATASET_HPARAMS (main.py).

Logs are exact by default (logsigmoid of the logits). Cole et al.'s and Zhou et al.'s losses.py take
-log(p + 1e-5) instead (neg_log, LOG_EPSILON): `log_epsilon=1e-5` reproduces that for an, an-ls, wan,
epr, role, em and em-apl (LL and SPLC use logits in their code already). Losses are computed in
float32 (float64 when the logits are float64).

Interface: ``SINGLE_POSITIVE_LOSSES[name](num_samples, num_classes, expected_positives, **hparams)``
returns a `SinglePositiveLoss` (a torch.nn.Module): `loss(logits, observed, index, epoch)`,
`parameters()` (a list), `start_epoch(epoch)`, `state_dict()` / `load_state_dict()`, and `.to(device)`
(do that before building the optimiser over `parameters()`). Every factory accepts `observed_labels`
([N, C], the training set's observed labels) and `device`; ROLE and EM+APL use the labels to set up
their per-sample state at once, and otherwise learn each sample's observed positives the first time
it appears in a batch.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scob_fast.methods.losses import (estimator_pair_loss, expected_positive_penalty,
                                      expected_positive_regulariser)
from scob_fast.models.label_estimator import estimator_drift, uniform_logits

__all__ = [
    "SinglePositiveLoss", "AssumeNegative", "AssumeNegativeLabelSmoothing", "WeightedAssumeNegative",
    "ExpectedPositiveRegularizer", "OnlineLabelEstimation", "LargeLossRejection",
    "LargeLossTemporaryCorrection", "LargeLossPermanentCorrection", "SelfPacedLossCorrection",
    "EntropyMaximization", "EntropyMaximizationPseudoLabels", "SINGLE_POSITIVE_LOSSES",
    "EM_APL_DATASET_HPARAMS", "build_single_positive_loss",
]

# The EM+APL authors' per-dataset settings (10 epochs each; warm-up counted in epochs).
EM_APL_DATASET_HPARAMS = {
    "voc": dict(alpha=0.2, beta=0.02, theta=0.9, warmup_epochs=5),
    "coco": dict(alpha=0.1, beta=0.9, theta=0.9, warmup_epochs=5),
    "nus": dict(alpha=0.1, beta=0.2, theta=0.9, warmup_epochs=4),
    "cub": dict(alpha=0.01, beta=0.4, theta=0.9, warmup_epochs=3),
}


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class SinglePositiveLoss(nn.Module):
    """Base class: input checks, dtype handling and the hooks shared by every baseline."""

    name = "base"
    needs_expected_positives = False
    uses_index = False  # stateful losses read or write per-sample state at `index`

    def __init__(self, num_samples: int, num_classes: int, expected_positives: float | None = None, *,
                 observed_labels: Tensor | None = None, device: torch.device | str | None = None):
        super().__init__()
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if self.needs_expected_positives:
            if expected_positives is None or not 0 < float(expected_positives) <= num_classes:
                raise ValueError(f"{self.name}: expected_positives must be in (0, num_classes={num_classes}], "
                                 f"got {expected_positives!r}")
            expected_positives = float(expected_positives)
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.expected_positives = expected_positives
        if observed_labels is not None:
            observed_labels = torch.as_tensor(observed_labels)
            if tuple(observed_labels.shape) != (num_samples, num_classes):
                raise ValueError(f"observed_labels must have shape ({num_samples}, {num_classes}), "
                                 f"got {tuple(observed_labels.shape)}")
            self._check_label_values(observed_labels, "observed_labels")
        self._device = torch.device(device) if device is not None else None

    # ----- public interface -------------------------------------------------------------------
    def loss(self, logits: Tensor, observed: Tensor, index: Tensor, epoch: int) -> Tensor:
        self._check_inputs(logits, observed, index, epoch)
        x = logits.to(_compute_dtype(logits.dtype))
        return self._loss(x, observed.to(x.dtype), index, int(epoch))

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor, epoch: int) -> Tensor:
        return self.loss(logits, observed, index, epoch)

    def start_epoch(self, epoch: int) -> None:
        """Called once before epoch `epoch` (0-based) starts; stateless losses do nothing."""

    def parameters(self, recurse: bool = True) -> list[Tensor]:  # type: ignore[override]
        return list(super().parameters(recurse))

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, num_classes={self.num_classes}"

    # ----- to implement -----------------------------------------------------------------------
    def _loss(self, x: Tensor, y: Tensor, index: Tensor, epoch: int) -> Tensor:
        raise NotImplementedError

    # ----- checks -----------------------------------------------------------------------------
    @staticmethod
    def _check_label_values(labels: Tensor, arg: str) -> None:
        bad = (labels != 0) & (labels != 1)
        if bool(bad.any()):
            raise ValueError(f"{arg} must hold only 0 (unknown) and 1 (observed positive); "
                             f"found {labels[bad].flatten()[:3].tolist()}")

    def _check_inputs(self, logits: Tensor, observed: Tensor, index: Tensor, epoch: int) -> None:
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            raise TypeError(f"logits must be a floating-point tensor, got "
                            f"{getattr(logits, 'dtype', type(logits).__name__)}")
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape [B, {self.num_classes}], got {tuple(logits.shape)}")
        if not isinstance(observed, Tensor) or observed.shape != logits.shape:
            raise ValueError(f"observed must have the shape of logits {tuple(logits.shape)}, got "
                             f"{tuple(observed.shape) if isinstance(observed, Tensor) else type(observed).__name__}")
        if observed.device != logits.device:
            raise ValueError(f"observed is on {observed.device} but logits on {logits.device}")
        if not isinstance(index, Tensor) or index.dim() != 1 or index.shape[0] != logits.shape[0]:
            raise ValueError(f"index must be a 1-D tensor of length B={logits.shape[0]}, got "
                             f"{tuple(index.shape) if isinstance(index, Tensor) else type(index).__name__}")
        if index.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"index must be int64 or int32, got {index.dtype}")
        if index.device != logits.device:
            raise ValueError(f"index is on {index.device} but logits on {logits.device}")
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch must be a 0-based int, got {epoch!r}")
        if self.uses_index:
            state = next(iter(self.buffers()), None)
            if state is not None and state.device != logits.device:
                raise ValueError(f"{self.name} keeps its state on {state.device} but logits are on "
                                 f"{logits.device}: call .to(device) first")
        # The value checks read back from the device once per step, not once per check.
        bad_labels = ((observed != 0) & (observed != 1)).any()
        bad_index = ((index < 0) | (index >= self.num_samples)).any() if self.uses_index else bad_labels
        labels_wrong, index_wrong = torch.stack([bad_labels, bad_index]).tolist()
        if labels_wrong:
            self._check_label_values(observed, "observed")
        if self.uses_index and index_wrong:
            raise ValueError(f"index values must be in [0, {self.num_samples}), got "
                             f"[{int(index.min())}, {int(index.max())}]")


# ----- Cole et al., CVPR 2021 --------------------------------------------------------------------

def _check_log_epsilon(log_epsilon):
    if log_epsilon is not None and not 0.0 <= float(log_epsilon) < 1.0:
        raise ValueError(f"log_epsilon must be None (exact logs) or in [0, 1), got {log_epsilon}")
    return None if log_epsilon is None else float(log_epsilon)


def _log_probabilities(x: Tensor, log_epsilon: float | None) -> tuple[Tensor, Tensor]:
    """(log p, log(1 - p)) of p = sigmoid(x): exact through logsigmoid, or as Cole et al.'s and Zhou
    et al.'s losses.py compute them, log(p + eps) and log(1 - p + eps) (their neg_log, eps = 1e-5)."""
    if log_epsilon is None:
        return F.logsigmoid(x), F.logsigmoid(-x)
    p = torch.sigmoid(x)
    return torch.log(p + log_epsilon), torch.log(1.0 - p + log_epsilon)


class _ColeLoss(SinglePositiveLoss):
    """Cole et al.'s losses: every entry's loss divided by B*C and summed (compute_batch_loss)."""

    def __init__(self, num_samples, num_classes, expected_positives=None, *, log_epsilon: float | None = None,
                 **kw):
        super().__init__(num_samples, num_classes, expected_positives, **kw)
        self.log_epsilon = _check_log_epsilon(log_epsilon)

    def _bce(self, x: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        if self.log_epsilon is None:
            return F.binary_cross_entropy_with_logits(x, target, weight=weight)
        log_p, log_q = _log_probabilities(x, self.log_epsilon)
        loss = -(target * log_p + (1.0 - target) * log_q)
        return (loss if weight is None else weight * loss).mean()


class AssumeNegative(_ColeLoss):
    name = "an"

    def _loss(self, x, y, index, epoch):
        return self._bce(x, y)


class AssumeNegativeLabelSmoothing(_ColeLoss):
    name = "an-ls"

    def __init__(self, num_samples, num_classes, expected_positives=None, *, smoothing: float = 0.1, **kw):
        super().__init__(num_samples, num_classes, expected_positives, **kw)
        if not 0.0 <= smoothing < 0.5:
            raise ValueError(f"smoothing must be in [0, 0.5), got {smoothing}")
        self.smoothing = float(smoothing)

    def _loss(self, x, y, index, epoch):
        target = y * (1.0 - self.smoothing) + (1.0 - y) * self.smoothing
        return self._bce(x, target)


class WeightedAssumeNegative(_ColeLoss):
    name = "wan"

    def _loss(self, x, y, index, epoch):
        weight = y + (1.0 - y) / (self.num_classes - 1)
        return self._bce(x, y, weight=weight)


class ExpectedPositiveRegularizer(_ColeLoss):
    name = "epr"
    needs_expected_positives = True

    def _loss(self, x, y, index, epoch):
        if self.log_epsilon is None:
            return expected_positive_regulariser(x, y, self.expected_positives)
        log_p, _ = _log_probabilities(x, self.log_epsilon)
        return (-y * log_p).mean() + expected_positive_penalty(torch.sigmoid(x), self.expected_positives)


class OnlineLabelEstimation(_ColeLoss):
    name = "role"
    needs_expected_positives = True
    uses_index = True

    def __init__(self, num_samples, num_classes, expected_positives=None, *, init_width: float = 0.1,
                 positive_init: float = 0.995, seed: int | None = None,
                 observed_labels: Tensor | None = None, **kw):
        super().__init__(num_samples, num_classes, expected_positives, observed_labels=observed_labels, **kw)
        if not 0.0 < init_width < 0.5:
            raise ValueError(f"init_width must be in (0, 0.5), got {init_width}")
        if not 0.5 < positive_init < 1.0:
            raise ValueError(f"positive_init must be in (0.5, 1), got {positive_init}")
        self.positive_logit = _logit(positive_init)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        init = uniform_logits((num_samples, num_classes), init_width, generator)
        # Rows whose observed positives are already written into the estimator; without
        # observed_labels that happens the first time a sample shows up in a batch.
        seen = torch.zeros(num_samples, dtype=torch.bool)
        if observed_labels is not None:
            init = torch.where(torch.as_tensor(observed_labels).cpu().bool(), torch.tensor(self.positive_logit), init)
            seen.fill_(True)
        self.estimator = nn.Parameter(init.to(self._device))
        # The start, for the drift diagnostic only (not checkpointed: it is not training state).
        self.register_buffer("initial_estimator", init.clone().to(self._device), persistent=False)
        self.register_buffer("seen", seen.to(self._device))

    def drift(self, index: Tensor, observed_positive: Tensor) -> Tensor:
        """How far the unknown entries' estimates have moved from their start (diagnostic)."""
        return estimator_drift(self.estimator.detach()[index], self.initial_estimator[index], observed_positive)

    def estimates(self, index: Tensor) -> Tensor:
        """Current label estimates sigmoid(G[index]), without gradient."""
        return torch.sigmoid(self.estimator.detach()[index])

    def _loss(self, x, y, index, epoch):
        with torch.no_grad():
            fresh = (~self.seen[index]).unsqueeze(1) & (y == 1)
            rows = self.estimator[index]
            self.estimator[index] = torch.where(fresh, torch.full_like(rows, self.positive_logit), rows)
            self.seen[index] = True
        g = self.estimator[index].to(x.dtype)
        if self.log_epsilon is None:
            return estimator_pair_loss(x, g, y, self.expected_positives)
        # Cole et al.'s loss_role with their neg_log: halves of the classifier's and the estimator's
        # terms, each against the other's detached probabilities.
        p, e = torch.sigmoid(x), torch.sigmoid(g)
        log_p, log_1p = _log_probabilities(x, self.log_epsilon)
        log_e, log_1e = _log_probabilities(g, self.log_epsilon)
        p_d, e_d = p.detach(), e.detach()
        classifier = -y * log_p - e_d * log_p - (1.0 - e_d) * log_1p
        estimator = -y * log_e - p_d * log_e - (1.0 - p_d) * log_1e
        k = self.expected_positives
        return (0.5 * (classifier + estimator).mean()
                + 0.5 * (expected_positive_penalty(p, k) + expected_positive_penalty(e, k)))


# ----- Kim et al., CVPR 2022 ---------------------------------------------------------------------

LARGE_LOSS_SELECTIONS = ("published", "topk")


class _LargeLoss(SinglePositiveLoss):
    correct = False     # modified entries take BCE(x, 1 - y) instead of weight 0
    permanent = False   # corrections are remembered per sample and the rate stays delta_rel

    def __init__(self, num_samples, num_classes, expected_positives=None, *, delta_rel: float = 0.002,
                 selection: str = "published", **kw):
        super().__init__(num_samples, num_classes, expected_positives, **kw)
        if not 0.0 < delta_rel <= 1.0:
            raise ValueError(f"delta_rel must be a fraction in (0, 1] (0.002 = the paper's 0.2 %), got {delta_rel}")
        if selection not in LARGE_LOSS_SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(LARGE_LOSS_SELECTIONS)}, got {selection!r}")
        self.delta_rel = float(delta_rel)
        self.selection = selection

    def modification_rate(self, epoch: int) -> float:
        """1 - clean_rate of LargeLossMatters train.py: clean_rate starts at 1 and loses delta_rel after
        every epoch (the same float subtractions, so the same rounding); epoch 0 is plain AN."""
        if epoch == 0:
            return 0.0
        if self.permanent:
            return self.delta_rel
        clean_rate = 1.0
        for _ in range(epoch):
            clean_rate -= self.delta_rel
        return 1.0 - clean_rate

    def num_modified(self, batch_size: int, epoch: int) -> int:
        """ceil(B * C * rate) (losses.py compute_batch_loss), at most B * C (where torch.topk there would fail)."""
        numel = batch_size * self.num_classes
        return min(numel, math.ceil(numel * self.modification_rate(epoch)))

    def _select(self, bce: Tensor, unknown: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(entries whose loss is modified this step, entries whose label is corrected for good)."""
        if self.selection == "topk":
            scores = bce.detach().masked_fill(~unknown, float("-inf")).flatten()
            chosen = torch.zeros_like(scores, dtype=torch.bool)
            chosen[torch.topk(scores, k, sorted=False).indices] = True
            chosen = chosen.view_as(unknown) & unknown  # fewer than k unknowns: never touch positives
            return chosen, chosen
        # losses.py: unobserved_loss = mask * loss; the k-th largest value is the threshold; entries
        # >= it are modified (ties included; observed entries count 0, so a threshold of 0 takes them
        # too), entries > it are the LL-Cp label corrections (correction_idx).
        unobserved_loss = bce.detach() * unknown
        threshold = torch.topk(unobserved_loss.flatten(), k).values[-1]
        return unobserved_loss >= threshold, unobserved_loss > threshold

    def _loss(self, x, y, index, epoch):
        if self.permanent:
            y = torch.maximum(y, self.corrected[index].to(y.dtype))
        bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        k = self.num_modified(x.shape[0], epoch)
        if k == 0:
            return bce.mean()
        modified, corrected = self._select(bce, y == 0, k)
        if self.permanent:
            with torch.no_grad():
                self.corrected[index] = self.corrected[index] | corrected
        # LL-Ct/Cp: losses.py's corrected_loss_matrix, BCE against logical_not(observed).
        replacement = F.binary_cross_entropy_with_logits(x, 1.0 - y, reduction="none") if self.correct \
            else torch.zeros_like(bce)
        return torch.where(modified, replacement, bce).mean()


class LargeLossRejection(_LargeLoss):
    name = "ll-r"


class LargeLossTemporaryCorrection(_LargeLoss):
    name = "ll-ct"
    correct = True


class LargeLossPermanentCorrection(_LargeLoss):
    name = "ll-cp"
    correct = True
    permanent = True
    uses_index = True

    def __init__(self, num_samples, num_classes, expected_positives=None, **kw):
        super().__init__(num_samples, num_classes, expected_positives, **kw)
        self.register_buffer("corrected", torch.zeros(num_samples, num_classes, dtype=torch.bool,
                                                      device=self._device))


# ----- Zhang et al., ECCV 2022 -------------------------------------------------------------------

class SelfPacedLossCorrection(SinglePositiveLoss):
    name = "splc"

    def __init__(self, num_samples, num_classes, expected_positives=None, *, tau: float = 0.6,
                 margin: float = 1.0, gamma: float = 2.0, correction_epoch: int = 1,
                 corrected_margin: bool = False, reduction: str = "sum", **kw):
        super().__init__(num_samples, num_classes, expected_positives, **kw)
        if not 0.0 < tau < 1.0:
            raise ValueError(f"tau must be in (0, 1), got {tau}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' (the authors' code) or 'mean', got {reduction!r}")
        self.tau, self.margin, self.gamma = float(tau), float(margin), float(gamma)
        self.correction_epoch = int(correction_epoch)
        self.corrected_margin = bool(corrected_margin)
        self.reduction = reduction

    def _loss(self, x, y, index, epoch):
        positive = y == 1
        corrected = torch.zeros_like(positive)
        if epoch >= self.correction_epoch:
            corrected = ~positive & (torch.sigmoid(x.detach()) > self.tau)
        shifted = positive | (corrected if self.corrected_margin else torch.zeros_like(corrected))
        z = x - self.margin * shifted.to(x.dtype)
        as_positive = positive | corrected
        # -(1 - q)^g log q on positives, -p^g log(1 - p) on negatives, with q, p = sigmoid(z).
        log_pt = torch.where(as_positive, F.logsigmoid(z), F.logsigmoid(-z))
        one_minus_pt = torch.sigmoid(torch.where(as_positive, -z, z))
        loss = -(one_minus_pt ** self.gamma) * log_pt
        return loss.sum() if self.reduction == "sum" else loss.mean()


# ----- Zhou et al., ECCV 2022 --------------------------------------------------------------------

class EntropyMaximization(SinglePositiveLoss):
    name = "em"

    def __init__(self, num_samples, num_classes, expected_positives=None, *, alpha: float = 0.1,
                 log_epsilon: float | None = None, **kw):
        super().__init__(num_samples, num_classes, expected_positives, **kw)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.log_epsilon = _check_log_epsilon(log_epsilon)

    def _entry_losses(self, x: Tensor, y: Tensor) -> Tensor:
        log_p, log_q = _log_probabilities(x, self.log_epsilon)
        p = torch.sigmoid(x)
        negative_entropy = p * log_p + (1.0 - p) * log_q
        return torch.where(y == 1, -log_p, self.alpha * negative_entropy)

    def _loss(self, x, y, index, epoch):
        return self._entry_losses(x, y).mean()


class EntropyMaximizationPseudoLabels(EntropyMaximization):
    name = "em-apl"
    uses_index = True

    def __init__(self, num_samples, num_classes, expected_positives=None, *, alpha: float = 0.1,
                 beta: float = 0.9, theta: float = 0.9, warmup_epochs: int = 5, num_epochs: int = 10,
                 observed_labels: Tensor | None = None, **kw):
        super().__init__(num_samples, num_classes, expected_positives, alpha=alpha,
                         observed_labels=observed_labels, **kw)
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0.0 <= theta <= 1.0:
            raise ValueError(f"theta must be in [0, 1], got {theta}")
        if not 0 <= warmup_epochs < num_epochs:
            raise ValueError(f"need 0 <= warmup_epochs < num_epochs, got {warmup_epochs} and {num_epochs}")
        self.beta, self.theta = float(beta), float(theta)
        self.warmup_epochs, self.num_epochs = int(warmup_epochs), int(num_epochs)
        shape = (num_samples, num_classes)
        observed = torch.zeros(shape, dtype=torch.bool)
        if observed_labels is not None:
            observed = torch.as_tensor(observed_labels).cpu().bool()
        dev = self._device
        self.register_buffer("observed_mask", observed.to(dev))
        self.register_buffer("pseudo_mask", torch.zeros(shape, dtype=torch.bool, device=dev))
        self.register_buffer("pseudo_target", torch.zeros(shape, device=dev))
        self.register_buffer("predictions", torch.zeros(shape, device=dev))
        self.register_buffer("predicted", torch.zeros(num_samples, dtype=torch.bool, device=dev))
        self.register_buffer("last_labelled_epoch", torch.tensor(-1, dtype=torch.int64, device=dev))

    @torch.no_grad()
    def record_predictions(self, probs: Tensor, index: Tensor) -> None:
        """Store each sample's latest predicted probabilities [B, C] for the next pseudo-labelling."""
        if probs.shape != (index.shape[0], self.num_classes):
            raise ValueError(f"probs must have shape [{index.shape[0]}, {self.num_classes}], got {tuple(probs.shape)}")
        self.predictions[index] = probs.to(self.predictions.dtype)
        self.predicted[index] = True

    def pseudo_labels_per_step(self) -> Tensor:
        """floor(theta * U_c / (num_epochs - warmup_epochs)) per class c, U_c = unknown labels of c."""
        unknown = self.num_samples - self.observed_mask.sum(dim=0)
        return torch.floor(self.theta * unknown.double() / (self.num_epochs - self.warmup_epochs)).long()

    @torch.no_grad()
    def start_epoch(self, epoch: int) -> None:
        if epoch < max(self.warmup_epochs, 1) or int(self.last_labelled_epoch) >= epoch:
            return
        self.last_labelled_epoch.fill_(epoch)
        candidate = self.predicted.unsqueeze(1) & ~self.observed_mask & ~self.pseudo_mask
        scores = self.predictions.masked_fill(~candidate, float("inf"))
        ranked, order = torch.sort(scores, dim=0)  # ascending within each class
        rank = torch.arange(self.num_samples, device=scores.device).unsqueeze(1)
        take = (rank < self.pseudo_labels_per_step().to(scores.device)) & torch.isfinite(ranked)
        chosen = torch.zeros_like(take).scatter_(0, order, take)
        self.pseudo_mask |= chosen
        self.pseudo_target.copy_(torch.where(chosen, self.predictions, self.pseudo_target))

    def _loss(self, x, y, index, epoch):
        self.record_predictions(torch.sigmoid(x.detach()), index)
        with torch.no_grad():
            self.observed_mask[index] = self.observed_mask[index] | (y == 1)
        pseudo = self.pseudo_mask[index] & (y == 0)
        target = torch.where(pseudo, self.pseudo_target[index].to(x.dtype), torch.zeros_like(x))
        if self.log_epsilon is None:
            soft_negative = self.beta * F.binary_cross_entropy_with_logits(x, target, reduction="none")
        else:
            log_p, log_q = _log_probabilities(x, self.log_epsilon)
            soft_negative = -self.beta * (target * log_p + (1.0 - target) * log_q)
        return torch.where(pseudo, soft_negative, self._entry_losses(x, y)).mean()


SINGLE_POSITIVE_LOSSES: dict[str, Callable[..., SinglePositiveLoss]] = {
    cls.name: cls for cls in (
        AssumeNegative, AssumeNegativeLabelSmoothing, WeightedAssumeNegative, ExpectedPositiveRegularizer,
        OnlineLabelEstimation, LargeLossRejection, LargeLossTemporaryCorrection,
        LargeLossPermanentCorrection, SelfPacedLossCorrection, EntropyMaximization,
        EntropyMaximizationPseudoLabels,
    )
}


def build_single_positive_loss(name: str, num_samples: int, num_classes: int,
                               expected_positives: float | None = None, **hparams) -> SinglePositiveLoss:
    try:
        factory = SINGLE_POSITIVE_LOSSES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown single-positive loss {name!r}; choose from "
                         f"{', '.join(SINGLE_POSITIVE_LOSSES)}") from None
    return factory(num_samples, num_classes, expected_positives, **hparams)
