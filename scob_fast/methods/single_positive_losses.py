"""Single-positive multi-label baselines: AN, AN-LS, WAN, EPR, ROLE, LL-R/Ct/Cp, SPLC, EM, EM+APL.

Every loss takes the classifier logits x [B, C] (pre-sigmoid), the observed labels y [B, C]
(1 = observed positive, 0 = unknown), the batch's dataset indices [B] and the 0-based epoch, and
returns a scalar. Notation below: p = sigmoid(x), BCE(x, t) = -t log p - (1 - t) log(1 - p), and
"mean" is over all B*C entries (the convention of Cole et al. and of the LL and EM papers' code).

  an      AN      mean BCE(x, y): every unknown is assumed negative.
  an-ls   AN-LS   mean BCE(x, t) with t = 1 - eps on positives and t = eps on unknowns (eps = 0.1).
                  This is the form of Cole et al.'s code: "(1 - eps) * loss(y) + eps * loss(1 - y)".
  wan     WAN     mean w * BCE(x, y) with w = 1 on positives and 1 / (C - 1) on unknowns.
  epr     EPR     mean(-y log p) + ((mean_b sum_c p - k) / C)^2, k = expected positives per image.
  role    ROLE    learnable estimator logits G [N, C], e = sigmoid(G[index]); with sg = stop-gradient
                  L = 1/2 [mean(-y log p + BCE(x, sg e)) + R(p)  +  mean(-y log e + BCE(G, sg p)) + R(e)],
                  R(q) = ((mean_b sum_c q - k) / C)^2. Init: unknowns uniform in logit space over
                  [logit(0.5 - w), logit(0.5 + w)], w = 0.3 (Scob's 0.2..0.8; Cole et al.'s code uses
                  w = 0.1), observed positives logit(0.995). Give `parameters()` to the optimiser
                  (Cole et al. train the estimator with its own, larger learning rate).
  ll-r    LL-R    AN, but from epoch e >= 1 the k = ceil(min(e * delta_rel, 1) * B * C) unknown entries
                  with the largest BCE in the batch get weight 0 (Kim et al., CVPR 2022).
  ll-ct   LL-Ct   same selection, but those entries take BCE(x, 1) for this step only.
  ll-cp   LL-Cp   from epoch 1, k = ceil(delta_rel * B * C) every step, and the selected labels become
                  positive for good (kept per sample in a [N, C] mask, saved in `state_dict`).
                  delta_rel = 0.002 (the paper's grid is 0.1..0.5 % per epoch; 0.2 % is our default
                  for all three). Exactly k entries are chosen (ties broken by torch.topk); the
                  authors' code also modifies entries tied with the k-th loss.
  splc    SPLC    Zhang et al., ECCV 2022, focal margin + self-paced correction, per entry:
                    positives           -(1 - q)^g log q,       q = sigmoid(x - m)   (focal margin)
                    unknowns, p <= tau  -p^g log(1 - p)                              (focal)
                    unknowns, p > tau   as a positive, only from epoch `correction_epoch` on
                  tau = 0.6, m = 1, g = 2, correction_epoch = 1 (one warm-up epoch); the selection
                  p > tau carries no gradient, the focal weights do (as in focal loss). The paper's
                  equation applies the positive loss, margin included, to corrected labels; the
                  authors' code corrects without the margin: `corrected_margin=False` gives that.
                  Their code sums over entries; we take the mean (Adam is insensitive to the scale,
                  SGD users rescale the learning rate by B*C).
  em      EM      Zhou et al., ECCV 2022: mean(-y log p - alpha (1 - y) H(p)),
                  H(p) = -p log p - (1 - p) log(1 - p): the entropy of unknown labels is maximised.
  em-apl  EM+APL  EM plus asymmetric pseudo-labelling: before each epoch e >= warmup_epochs, per class
                  c, the floor(theta * U_c / (num_epochs - warmup_epochs)) still-unknown labels with
                  the lowest predictions become soft negatives with target t = that prediction
                  (U_c = number of unknown labels of class c); they then take beta * BCE(x, t)
                  instead of the EM term. Predictions are each sample's latest train-step
                  prediction, recorded by `loss`; the authors run an extra eval-mode pass over the
                  training set instead: a trainer that wants that calls `record_predictions(probs,
                  index)` over the set before `start_epoch`. Defaults are the authors' COCO values
                  (alpha 0.1, beta 0.9, theta 0.9, warm-up 5 of 10 epochs); other datasets in
                  EM_APL_DATASET_HPARAMS.

Logs are taken through logsigmoid/softplus of the logits (exact; Cole et al.'s code uses
-log(p + 1e-5)). Losses are computed in float32 (float64 when the logits are float64).

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


def _expected_positive_penalty(probs: Tensor, expected_positives: float) -> Tensor:
    """((mean_b sum_c q - k) / C)^2: Cole et al.'s squared-error EPR term, scaled by 1 / C^2."""
    return ((probs.sum(dim=1).mean() - expected_positives) / probs.shape[1]) ** 2


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

class AssumeNegative(SinglePositiveLoss):
    name = "an"

    def _loss(self, x, y, index, epoch):
        return F.binary_cross_entropy_with_logits(x, y)


class AssumeNegativeLabelSmoothing(SinglePositiveLoss):
    name = "an-ls"

    def __init__(self, num_samples, num_classes, expected_positives=None, *, smoothing: float = 0.1, **kw):
        super().__init__(num_samples, num_classes, expected_positives, **kw)
        if not 0.0 <= smoothing < 0.5:
            raise ValueError(f"smoothing must be in [0, 0.5), got {smoothing}")
        self.smoothing = float(smoothing)

    def _loss(self, x, y, index, epoch):
        target = y * (1.0 - self.smoothing) + (1.0 - y) * self.smoothing
        return F.binary_cross_entropy_with_logits(x, target)


class WeightedAssumeNegative(SinglePositiveLoss):
    name = "wan"

    def _loss(self, x, y, index, epoch):
        weight = y + (1.0 - y) / (self.num_classes - 1)
        return F.binary_cross_entropy_with_logits(x, y, weight=weight)


class ExpectedPositiveRegularizer(SinglePositiveLoss):
    name = "epr"
    needs_expected_positives = True

    def _loss(self, x, y, index, epoch):
        positive = (y * F.softplus(-x)).mean()
        return positive + _expected_positive_penalty(torch.sigmoid(x), self.expected_positives)


class OnlineLabelEstimation(SinglePositiveLoss):
    name = "role"
    needs_expected_positives = True
    uses_index = True

    def __init__(self, num_samples, num_classes, expected_positives=None, *, init_width: float = 0.3,
                 positive_init: float = 0.995, seed: int | None = None,
                 observed_labels: Tensor | None = None, **kw):
        super().__init__(num_samples, num_classes, expected_positives, observed_labels=observed_labels, **kw)
        if not 0.0 < init_width < 0.5:
            raise ValueError(f"init_width must be in (0, 0.5), got {init_width}")
        if not 0.5 < positive_init < 1.0:
            raise ValueError(f"positive_init must be in (0.5, 1), got {positive_init}")
        self.positive_logit = _logit(positive_init)
        bound = _logit(0.5 + init_width)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        init = (2.0 * torch.rand(num_samples, num_classes, generator=generator) - 1.0) * bound
        # Rows whose observed positives are already written into the estimator; without
        # observed_labels that happens the first time a sample shows up in a batch.
        seen = torch.zeros(num_samples, dtype=torch.bool)
        if observed_labels is not None:
            init = torch.where(torch.as_tensor(observed_labels).cpu().bool(), torch.tensor(self.positive_logit), init)
            seen.fill_(True)
        self.estimator = nn.Parameter(init.to(self._device))
        self.register_buffer("seen", seen.to(self._device))

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
        p, e = torch.sigmoid(x), torch.sigmoid(g)
        classifier = ((y * F.softplus(-x)).mean() + F.binary_cross_entropy_with_logits(x, e.detach())
                      + _expected_positive_penalty(p, self.expected_positives))
        estimator = ((y * F.softplus(-g)).mean() + F.binary_cross_entropy_with_logits(g, p.detach())
                     + _expected_positive_penalty(e, self.expected_positives))
        return 0.5 * (classifier + estimator)


# ----- Kim et al., CVPR 2022 ---------------------------------------------------------------------

class _LargeLoss(SinglePositiveLoss):
    correct = False     # corrected entries take BCE(x, 1) instead of weight 0
    permanent = False   # corrections are remembered per sample and the rate stays delta_rel

    def __init__(self, num_samples, num_classes, expected_positives=None, *, delta_rel: float = 0.002, **kw):
        super().__init__(num_samples, num_classes, expected_positives, **kw)
        if not 0.0 < delta_rel <= 1.0:
            raise ValueError(f"delta_rel must be a fraction in (0, 1] (0.002 = the paper's 0.2 %), got {delta_rel}")
        self.delta_rel = float(delta_rel)

    def modification_rate(self, epoch: int) -> float:
        if epoch == 0:  # the first epoch is plain AN in the paper
            return 0.0
        return self.delta_rel if self.permanent else min(epoch * self.delta_rel, 1.0)

    def num_modified(self, batch_size: int, epoch: int) -> int:
        numel = batch_size * self.num_classes
        # The tolerance keeps a product that is an integer on paper (3 * 0.1 * 10 = 3.0000000000000004
        # in floating point) from rounding up to one label more.
        return min(numel, math.ceil(self.modification_rate(epoch) * numel - 1e-9))

    def _loss(self, x, y, index, epoch):
        if self.permanent:
            y = torch.maximum(y, self.corrected[index].to(y.dtype))
        bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
        k = self.num_modified(x.shape[0], epoch)
        if k == 0:
            return bce.mean()
        unknown = y == 0
        scores = bce.detach().masked_fill(~unknown, float("-inf")).flatten()
        chosen = torch.zeros_like(scores, dtype=torch.bool)
        chosen[torch.topk(scores, k, sorted=False).indices] = True
        chosen = chosen.view_as(unknown) & unknown  # fewer than k unknowns: never touch positives
        if self.permanent:
            with torch.no_grad():
                self.corrected[index] = self.corrected[index] | chosen
        replacement = F.softplus(-x) if self.correct else torch.zeros_like(bce)
        return torch.where(chosen, replacement, bce).mean()


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
                 corrected_margin: bool = True, **kw):
        super().__init__(num_samples, num_classes, expected_positives, **kw)
        if not 0.0 < tau < 1.0:
            raise ValueError(f"tau must be in (0, 1), got {tau}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.tau, self.margin, self.gamma = float(tau), float(margin), float(gamma)
        self.correction_epoch = int(correction_epoch)
        self.corrected_margin = bool(corrected_margin)

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
        return (-(one_minus_pt ** self.gamma) * log_pt).mean()


# ----- Zhou et al., ECCV 2022 --------------------------------------------------------------------

class EntropyMaximization(SinglePositiveLoss):
    name = "em"

    def __init__(self, num_samples, num_classes, expected_positives=None, *, alpha: float = 0.1, **kw):
        super().__init__(num_samples, num_classes, expected_positives, **kw)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)

    def _entry_losses(self, x: Tensor, y: Tensor) -> Tensor:
        log_p, log_q = F.logsigmoid(x), F.logsigmoid(-x)
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
        soft_negative = self.beta * F.binary_cross_entropy_with_logits(x, target, reduction="none")
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
