"""Scob: Semantic Contrastive Bootstrapping for single-positive multi-label recognition (IJCV 2023).

Two engines run the same mathematics:
- `reference`: the published per-iteration procedure (github.com/iCVTEAM/Scob main.py
  run_train_iter), pass for pass: the frozen backbone runs four times (supervised pass, Grad-CAM++
  with its backward down to the image as the hook library does it, momentum pass, hard view), the
  reference attention and contrastive ops, a one-image-at-a-time prototype bank and a double-loop
  class correlation.
- `fast`: one backbone pass on the clean view (its features are reused by the supervised pass,
  the CAM and the momentum pass) and one on the hard view; Grad-CAM++ needs only the high-level head
  with gradients (the low-level head does not depend on the high-level features; it is run once
  without gradients for the sigmoid's slope) and no backward through the backbone; the fast
  attention/contrastive kernels; a vectorised bank and correlation. Sharing the clean pass is only
  valid for a frozen backbone in eval-mode BN (engine_choice.shared_clean_pass_valid); otherwise
  (--published-bn, a trainable backbone) the step runs the reference engine and says so once in the
  log: falling back rather than refusing keeps --engine fast (the default) usable with every
  published switch, and the reference IS the published procedure.

The `published_*` switches reproduce what the public loop does by accident (ScobConfig): BatchNorm
on batch statistics after the CAM pass, momentum heads that never move from their own random
initialisation, and zero-vector prototypes / NaN-skipped contrastive steps.

Under torchrun (`ctx.dist`) the heads, CAM and momentum key run on the rank's slice; the
supervised loss (estimator rows, EPR) and the InfoNCE are the global batch's, from gathered
logits / projections (with autograd) and keys; the contrastive step runs when both levels keep a
token on some rank; every rank offers the bank the global batch's candidates, so the top-K is the
same on every copy. One process: every gather returns its input.
"""
from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch

from scob_fast.methods.base import Method, MethodContext
from scob_fast.models.label_estimator import LabelEstimator
from scob_fast.models.scob_net import ScobNet

from .cam import grad_cam_plus_plus, keep_masks_from_full, published_cam, target_classes
from .config import ScobConfig
from .correlation import contrastive_weights, correlation, correlation_loop
from .engine_choice import shared_clean_pass_problem
from .losses import scob_contrastive_loss, scob_contrastive_loss_per_sample, scob_supervised_terms
from .phase_timer import PhaseTimer
from .prototype_bank import PrototypeBank

log = logging.getLogger("scob_fast.methods")

_BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def momentum_init_seed(seed: int) -> int:
    """The seed of the --published-ema momentum heads' own initialisation: derived from the run seed,
    so two runs with one seed agree, and apart from the stream that initialises the trained heads."""
    return int(np.random.SeedSequence([int(seed), 0x5C0B]).generate_state(1)[0])


class Scob(Method):
    name = "scob"
    needs_hard_view = True
    # Its hard view is an image-space augmentation, so with --cache-features the images still come
    # through the loader (for the hard view) and the cache gives the clean view's features: the fast
    # engine then runs the backbone on the hard view only (feature_cache_problem says when it cannot).
    feature_cache_keeps_images = True
    label_regimes = ("single",)
    config_class = ScobConfig
    # Default k per dataset where the public code's differs from the dataset's (scob_fast.config):
    # main.py BasicRecipe sets expected_positive_labels = 3.9 for coco2014 (1.5 for VOC, as the registry).
    published_expected_positives = {"coco2014": 3.9}
    # loss_sup is the sum of these two step stats (for the loss shares in reporting/diagnostics.py)
    loss_parts = {"loss_sup": ("loss_classifier", "loss_estimator")}

    @classmethod
    def needs_unfolded_batchnorm(cls, config) -> bool:
        return bool(getattr(config, "published_bn", False))

    def feature_cache_problem(self) -> str | None:
        if self.config.published_bn:
            return ("--published-bn runs the backbone's BatchNorm on batch statistics, so the clean view's "
                    "features depend on the batch and drift with training")
        if self.config.engine == "reference":
            return "--engine reference runs the backbone on the clean view in every pass, as the public code"
        return None

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        a = self.config
        if a.published_bn and getattr(ctx.backbone, "folded", False):
            raise ValueError("--published-bn: the backbone's BatchNorm is folded into its convolutions, so it "
                             "cannot run on batch statistics; build it with fold_batchnorm=False "
                             "(training.py does when Scob.needs_unfolded_batchnorm(config) is True)")
        heads = ctx.heads
        self.net = ScobNet(ctx.backbone.channels, ctx.num_classes, dim=heads.dim, ffn=heads.ffn,
                           dropout=heads.dropout)
        if a.published_ema:
            self._independent_momentum_heads(ctx.seed)
        self.estimator = LabelEstimator(ctx.observed, seed=ctx.seed, init_width=self.config.estimator_init_width)
        self.bank = PrototypeBank(ctx.num_classes, a.bank_size, heads.dim)
        self.register_buffer("contrast_weights", torch.ones(ctx.num_classes, ctx.num_classes))
        self.timer = PhaseTimer(enabled=False)
        # Where the loop is in the epoch (plain attributes: start_epoch / continue_epoch set them).
        self._epoch, self._step = 0, 0
        # Diagnostics of the last train_step (references, no copy, no host sync); see train_step.
        self.last_cam: dict | None = None
        self._fallback_reason: str | None = None
        self.set_engine(a.engine)

    def _independent_momentum_heads(self, seed: int) -> None:
        """The public code builds its momentum heads (models/__init__.py Scob.fm2_14 / fm2_28) as
        separate modules, so they start from their own random initialisation, not from a copy of the
        trained heads. Drawn from a forked RNG: the rest of the model is initialised exactly as
        without the flag."""
        heads = self.ctx.heads
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(momentum_init_seed(seed))
            fresh = ScobNet(self.ctx.backbone.channels, self.ctx.num_classes, dim=heads.dim, ffn=heads.ffn,
                            dropout=heads.dropout)
        with torch.no_grad():
            self.net.momentum_low.load_state_dict(fresh.head_low.state_dict())
            self.net.momentum_high.load_state_dict(fresh.head_high.state_dict())

    # -- engine ---------------------------------------------------------------------------------
    def set_engine(self, engine: str) -> None:
        if engine not in ("fast", "reference"):
            raise ValueError(f"engine must be 'fast' or 'reference', got {engine!r}")
        self.engine = engine
        self._fallback_reason = None
        self._backend_of = None
        self._sync_engine()

    def active_engine(self) -> str:
        """The engine the next step runs: the requested one, or the reference when the fast engine's
        shared clean backbone pass would not give the published procedure's features."""
        if self.engine == "reference":
            return "reference"
        problem = shared_clean_pass_problem(self.backbone, batchnorm_training=self.config.published_bn)
        if problem is None:
            return "fast"
        if problem != self._fallback_reason:
            log.info("scob: --engine fast shares one clean backbone pass, which is invalid here (%s); "
                     "running the reference engine, the published procedure pass for pass", problem)
            self._fallback_reason = problem
        return "reference"

    def _sync_engine(self) -> str:
        """The active engine; its attention backend is set when it changes (not every step, so a
        backend chosen afterwards, e.g. bench/train_step.py's reference+sdpa, stays)."""
        active = self.active_engine()
        if active != self._backend_of:
            self.net.set_attention_backend("reference" if active == "reference" else None)
            self._backend_of = active
        return active

    def describe(self) -> str:
        active = self.active_engine()
        if active != self.engine:
            return f"{self.name} (reference engine: --engine {self.engine} falls back, {self._fallback_reason})"
        return f"{self.name} ({active} engine)"

    # -- hooks ----------------------------------------------------------------------------------
    def compiled_modules(self):
        return list(self.net.mid_heads())

    def param_groups(self) -> list[dict]:
        lr = self.ctx.lr
        groups = self.net.param_groups(lr.linear, lr.transformer, lr.projector, lr.classifier)
        groups.append({"name": "estimator", "params": list(self.estimator.parameters()), "lr": lr.estimator})
        return groups

    @torch.no_grad()
    def diagnostics(self, true_labels: torch.Tensor) -> dict[str, float]:
        """The prototype bank as the epoch leaves it (it is cleared when the next one starts), for
        reporting/diagnostics.py: fill = share of the C x Q slots holding a feature; purity = mean over
        the stored features of 1 / (number of true labels of the stored image), 1 when every prototype
        comes from an image showing its class alone (its class is always right: it is the observed one)."""
        index = self.bank.image_index.detach().cpu()
        stored = index >= 0
        fill = float(stored.float().mean())
        if not bool(stored.any()):
            return {"bank_fill": fill, "bank_purity": float("nan")}
        counts = true_labels[index[stored]].float().sum(dim=1).clamp(min=1)
        return {"bank_fill": fill, "bank_purity": float((1.0 / counts).mean())}

    def start_epoch(self, epoch: int) -> None:
        self._epoch, self._step = epoch, 0
        self.bank.clear()
        probabilities = torch.sigmoid(self.estimator.logits.detach().float())
        r = (correlation_loop if self._sync_engine() == "reference" else correlation)(probabilities.cpu())
        self.contrast_weights.copy_(contrastive_weights(r, hard=not self.config.soft_correlation))

    def continue_epoch(self, epoch: int, step: int) -> None:
        self._epoch, self._step = epoch, step

    @torch.no_grad()
    def predict_from_features(self, f_low: torch.Tensor, f_high: torch.Tensor) -> torch.Tensor:
        return self.net(f_low, f_high)

    # -- checkpoints: --published-bn's drifted BatchNorm statistics are part of the model -----------
    def _batchnorm_statistics(self) -> dict[str, torch.Tensor]:
        """The backbone's BN running statistics, keyed as in state_dict() (those of trainable backbone
        stages excluded: the base class checkpoints them with their stage)."""
        trained = {f"backbone.{k}" for k in getattr(self.backbone, "trainable_state_dict", dict)()}
        return {k: v for k, v in self.state_dict().items()
                if k.startswith("backbone.") and k.rsplit(".", 1)[-1] in _BN_BUFFERS and k not in trained}

    def state_dict_for_checkpoint(self) -> dict:
        state = super().state_dict_for_checkpoint()
        if self.config.published_bn:
            state.update(self._batchnorm_statistics())
        return state

    def load_checkpoint_state(self, state: dict, *args, **kwargs) -> None:
        statistics = set(self._batchnorm_statistics()) if self.config.published_bn else set()
        saved = {k for k in state if k.startswith("backbone.") and k.rsplit(".", 1)[-1] in _BN_BUFFERS}
        if saved and getattr(self.backbone, "folded", False):
            raise ValueError("checkpoint trained with --published-bn: it holds the backbone's drifted BatchNorm "
                             "statistics, which a backbone with BN folded into its convolutions cannot take; build "
                             "the backbone with fold_batchnorm=not Scob.needs_unfolded_batchnorm(config)")
        require_backbone = kwargs.get("require_backbone", args[0] if args else True)
        if statistics and require_backbone and not statistics <= saved:
            raise ValueError("--published-bn: the checkpoint holds no backbone BatchNorm statistics (it was "
                             "trained without --published-bn)")
        super().load_checkpoint_state({k: v for k, v in state.items() if k not in statistics}, *args, **kwargs)
        if statistics & saved:      # a warm start (require_backbone=False) keeps the weights file's where absent
            self.load_state_dict({k: state[k] for k in statistics & saved}, strict=False)

    # -- the pieces both engines share --------------------------------------------------------
    @contextlib.contextmanager
    def _batchnorm(self, batch_statistics: bool):
        """--published-bn: one backbone pass with BN on batch statistics (updating the running ones)
        or on running statistics; back to running statistics afterwards, so that evaluation and the
        CAM see eval-mode BN with the drifted statistics, as the public code's model.eval() does."""
        if not self.config.published_bn:
            yield
            return
        self.backbone.set_batchnorm_training(batch_statistics)
        try:
            yield
        finally:
            self.backbone.set_batchnorm_training(False)

    def _supervised_terms(self, f_low, f_high, batch, heads_eval: bool = False):
        """(logits, classifier term, estimator term) with their graphs: the supervised loss is their sum."""
        was_training = self.net.training
        if heads_eval:
            self.net.eval()
        try:
            with self.ctx.amp.autocast():
                logits = self.net(f_low, f_high)
        finally:
            self.net.train(was_training)
        dist = self.ctx.dist
        classifier_term, estimator_term = scob_supervised_terms(
            dist.gather_with_grad(logits), self.estimator(dist.gather(batch["index"])), dist.gather(batch["observed"]),
            self.ctx.expected_positives)
        return logits, classifier_term, estimator_term

    @torch.no_grad()
    def _blend_estimator(self, probabilities, batch):
        """--estimator-blend: the global batch's unknown entries move towards the classifier's
        probabilities; observed positives keep their value. Every rank applies the same update."""
        dist, share = self.ctx.dist, self.config.estimator_blend
        index = dist.gather(batch["index"])
        unknown = dist.gather(batch["observed"]) <= 0
        target = dist.gather(probabilities.float())
        rows = self.estimator.logits[index]
        mixed = (1.0 - share) * torch.sigmoid(rows.float()) + share * target
        blended = torch.logit(mixed.clamp(1e-4, 1.0 - 1e-4)).to(rows.dtype)
        self.estimator.logits[index] = torch.where(unknown, blended, rows)

    def _masks_from_gradients(self, f_high, gradients, low_grid, image_size):
        cam = published_cam(f_high.detach(), gradients, image_size)
        grids = [tuple(low_grid), tuple(f_high.shape[-2:])]
        return keep_masks_from_full(cam, grids, self.config.cam_threshold)

    def _cam_masks_reference(self, images, classes):
        """Grad-CAM++ the way the public code gets it from its hook library: the whole model in
        eval mode (BN on running statistics) on an image that requires grad, so the backward runs
        through the frozen backbone down to the pixels (only d sigmoid / d layer4 is used)."""
        images = images.detach().clone().requires_grad_(True)
        self.net.eval()
        try:
            with torch.enable_grad():
                with self.ctx.amp.autocast():
                    f_low, f_high = self.backbone(images)
                    logits = self.net(f_low, f_high)
                score = torch.sigmoid(logits.float()).gather(1, classes[:, None]).sum()
                gradients, _ = torch.autograd.grad(score, [f_high, images])
        finally:
            self.net.train()
        return self._masks_from_gradients(f_high, gradients, f_low.shape[-2:], images.shape[-2:])

    def _cam_gradients(self, f_low, f_high, classes):
        """d sigmoid(logit[b, class_b]) / d f_high from the given features, heads in eval mode:
        the gradient flows through the high-level head only (the low head does not see f_high); the
        low head's output, run once without gradients, enters the logit and so the sigmoid's slope."""
        f_high = f_high.detach().float().requires_grad_(True)
        net = self.net
        was_training = net.training
        net.eval()
        try:
            half = net.classifier.in_features // 2
            weight, bias = net.classifier.weight.detach()[classes], net.classifier.bias.detach()[classes]
            with torch.no_grad():
                low_part = (net.head_low(f_low.float()) * weight[:, :half]).sum(dim=1) + bias
            with torch.enable_grad():
                logit = low_part + (net.head_high(f_high) * weight[:, half:]).sum(dim=1)
                gradients, = torch.autograd.grad(torch.sigmoid(logit).sum(), f_high)
        finally:
            net.train(was_training)
        return f_high.detach(), gradients

    def _cam_masks_fast(self, f_low, f_high, classes, image_size):
        """Grad-CAM++ from the shared clean features (see _cam_gradients)."""
        f_high, gradients = self._cam_gradients(f_low, f_high, classes)
        self.net.train()      # as the public loop after its CAM (main.py:329)
        return self._masks_from_gradients(f_high, gradients, f_low.shape[-2:], image_size)

    @torch.no_grad()
    def explain(self, images: torch.Tensor, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        """What scob_fast.reporting.explain asks for (images [B, 3, S, S], classes [B, K]): per class
        column the layer-resolution Grad-CAM++ map [B, K, h, w] and the keep masks of both token
        grids, computed as in training (sigmoid target, eval mode, BN on running statistics)."""
        if classes.dim() != 2 or classes.shape[0] != images.shape[0]:
            raise ValueError(f"classes must be [B, K] with B = {images.shape[0]}, got {tuple(classes.shape)}")
        was_training = self.training
        self.eval()
        try:
            f_low, f_high = self.backbone(images)
            cams, lows, highs = [], [], []
            for j in range(classes.shape[1]):
                feats, gradients = self._cam_gradients(f_low, f_high, classes[:, j].to(f_high.device))
                cam = grad_cam_plus_plus(feats, gradients)
                low, high = keep_masks_from_full(published_cam(feats, gradients, images.shape[-2:]),
                                                 [tuple(f_low.shape[-2:]), tuple(f_high.shape[-2:])],
                                                 self.config.cam_threshold)
                cams.append(cam)
                lows.append(low.view(-1, *f_low.shape[-2:]))
                highs.append(high.view(-1, *f_high.shape[-2:]))
        finally:
            self.train(was_training)
        return {"cam": torch.stack(cams, 1), "keep_low": torch.stack(lows, 1), "keep_high": torch.stack(highs, 1)}

    def _contrastive_loss(self, z, zk, classes, indices, reference: bool):
        """lambda_cl x the InfoNCE (with its graph). z: this rank's projections; zk, classes, indices:
        the global batch's keys, classes and sample indices."""
        a = self.config
        prototypes, valid = self.bank.prototypes()
        if a.published_bank:
            # main.py get_most_confident_feats returns zeros for a class with no stored feature, and
            # loss_contrastive_infonce contrasts against every class: cos(z, 0) = 0 stays in the softmax.
            prototypes = torch.where(valid[:, None], prototypes, torch.zeros_like(prototypes))
            valid = torch.ones_like(valid)
        z_all = self.ctx.dist.gather_with_grad(z)
        if a.negative_weights == "estimator" or a.prototype_positive:
            weights = self.contrast_weights[classes]
            if a.negative_weights == "estimator":
                weights = weights * (1.0 - torch.sigmoid(self.estimator(indices).detach().float()))
            loss = a.lambda_cl * scob_contrastive_loss_per_sample(
                z_all, zk, prototypes, valid, weights, a.temperature,
                own_classes=classes if a.prototype_positive else None)
        else:
            loss = a.lambda_cl * scob_contrastive_loss(
                z_all, zk, classes, prototypes, valid, self.contrast_weights, a.temperature,
                backend="reference" if reference else None)
        return loss

    def train_step(self, batch: dict, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """One published iteration. Returns detached scalars: loss_sup = loss_classifier +
        loss_estimator (the two halves of the supervised loss), loss_cl (lambda_cl x InfoNCE, 0 when
        the contrastive step did not run), cl_step (1 when it ran), keep_low / keep_high (kept token
        fractions) and estimator_drift. Afterwards `self.last_cam` holds this step's keep masks per
        level ([low, high], bool [B, L]), target class and sample index per image (long [B]) and the
        two token grids [(h, w), (h, w)], as references (no copy, no host sync)."""
        amp, a, timer = self.ctx.amp, self.config, self.timer
        images, hard = batch["image"], batch["image_hard"]
        reference = self._sync_engine() == "reference"
        first_of_epoch = self._step == 0
        self._step += 1
        # --published-bn reproduces the modes the public loop leaves behind: model.train() after the
        # CAM (main.py:329) stays set into the next iteration, while the validation phase leaves
        # model.eval() (chinopie set_eval), which chinopie's set_train does not undo (it only puts
        # frozen BN layers in eval). So the supervised pass of an epoch's first step runs BN on
        # running statistics (and, after the first epoch, the heads without dropout too); every later
        # supervised pass, every momentum and hard-view pass run BN on batch statistics; the CAM
        # (model.eval() inside GradCamWrapper) and evaluation use the running ones.
        supervised_bn_batch = a.published_bn and not first_of_epoch
        supervised_heads_eval = a.published_bn and first_of_epoch and self._epoch > 0
        if "features_low" in batch and not reference:
            # --cache-features: the clean view's features of a frozen eval-mode backbone (fp16 on disk)
            f_low, f_high = batch["features_low"], batch["features_high"]
        else:
            with timer("backbone"), torch.no_grad(), amp.autocast(), self._batchnorm(supervised_bn_batch):
                # The clean features serve the supervised pass, the CAM and the momentum key (fast
                # engine). (One call on both views concatenated was measured slower per image on CPU.)
                f_low, f_high = self.backbone(images)
        # 1. supervised pass against the label estimator (its own optimiser step, as published, or
        # with --contrastive-update joint one step on the sum with the contrastive loss, after step 5)
        joint = a.contrastive_update == "joint"
        with timer("supervised"):
            logits, loss_classifier, loss_estimator = self._supervised_terms(
                f_low, f_high, batch, heads_eval=supervised_heads_eval)
            loss_sup = loss_classifier + loss_estimator
            if not joint:
                amp.step(loss_sup, optimizer)
            logits, loss_classifier, loss_estimator = logits.detach().float(), loss_classifier.detach(), loss_estimator.detach()
            probabilities = torch.sigmoid(logits)
            classes = target_classes(batch["observed"], probabilities)
            if a.estimator_blend > 0 and not joint:
                self._blend_estimator(probabilities, batch)
        # 2. CAM keep masks (BN on running statistics in both engines)
        with timer("cam"):
            if reference:
                keep_low, keep_high = self._cam_masks_reference(images, classes)
            else:
                keep_low, keep_high = self._cam_masks_fast(f_low, f_high, classes, images.shape[-2:])
        self.last_cam = {"keep": [keep_low, keep_high], "targets": classes, "indices": batch["index"],
                         "grids": [tuple(f_low.shape[-2:]), tuple(f_high.shape[-2:])], "flip": batch.get("flip")}
        # 3. momentum key on the clean image with the masks (the reference recomputes the features)
        if reference:
            with timer("backbone"), torch.no_grad(), amp.autocast(), self._batchnorm(True):
                f_low, f_high = self.backbone(images)
        with timer("momentum"), torch.no_grad():
            if not a.published_ema:
                self.net.update_momentum(a.ema_alpha)
            with amp.autocast():
                zk = self.net.embed_momentum(f_low, f_high, keep_low, keep_high).float()
        # 4. hard-augmented view through the masked heads and the projector
        with timer("backbone"), torch.no_grad(), amp.autocast(), self._batchnorm(True):
            h_low, h_high = self.backbone(hard)
        stats = {"loss_sup": loss_sup.detach(), "loss_classifier": loss_classifier, "loss_estimator": loss_estimator}
        # 5. contrastive step, only when both levels keep something (main.py:342). With
        # --published-bank also only when every sample keeps a token in both levels: the public
        # MultiheadAttention gives NaN for a sample without one, its loss is NaN and
        # PhaseHelper.validate_loss skips the step (main.py:354).
        complete = keep_low.any(dim=1) & keep_high.any(dim=1) if a.published_bank else None
        # The global batch's keys, classes, sample indices and completeness (one process: this batch's).
        dist = self.ctx.dist
        zk_all, classes_all, indices_all = dist.gather(zk), dist.gather(classes), dist.gather(batch["index"])
        complete_all = None if complete is None else dist.gather(complete)
        with timer("contrastive"):
            if a.published_bank:
                run = bool(complete_all.all())
            elif dist.enabled:
                run = all(dist.any_each(bool(keep_low.any()), bool(keep_high.any())))
            else:
                run = bool(keep_low.any()) and bool(keep_high.any())
            loss_cl = None
            if run:
                with amp.autocast():
                    z = self.net.projector(self.net.embed(h_low, h_high, keep_low, keep_high))
                loss_cl = self._contrastive_loss(z, zk_all, classes_all, indices_all, reference)
            if joint:
                amp.step(loss_sup if loss_cl is None else loss_sup + loss_cl, optimizer)
                if a.estimator_blend > 0:       # after the estimator's gradient step, as without joint
                    self._blend_estimator(probabilities, batch)
            elif loss_cl is not None:
                amp.step(loss_cl, optimizer)
            stats["loss_cl"] = torch.zeros((), device=loss_sup.device) if loss_cl is None else loss_cl.detach()
        stats["cl_step"] = torch.tensor(float(run), device=loss_sup.device)
        # 6. bank update with the supervised pass's confidence of each image's class (--published-bank:
        # without the samples whose momentum feature the public code gets as NaN, main.py:363)
        with timer("bank"):
            confidence = probabilities.gather(1, classes[:, None])[:, 0]
            update = self.bank.update_sequential if reference else self.bank.update
            update(zk_all, classes_all, dist.gather(confidence), indices_all, keep=complete_all)
        stats["keep_low"] = keep_low.float().mean()
        stats["keep_high"] = keep_high.float().mean()
        stats["estimator_drift"] = self.estimator.drift(batch["index"], batch["observed"] > 0)
        return stats

