"""Scob: Semantic Contrastive Bootstrapping for single-positive multi-label recognition (IJCV 2023).

Two engines run the same mathematics:
- `reference`: the published per-iteration procedure, pass for pass: the frozen backbone runs four
  times (supervised pass, Grad-CAM++ with its backward down to the image as the hook library does
  it, momentum pass, hard view), the reference attention and contrastive ops, a one-image-at-a-time
  prototype bank and a double-loop class correlation.
- `fast`: one backbone pass on the clean view (its features are reused by the supervised pass,
  the CAM and the momentum pass) and one on the hard view; Grad-CAM++ needs only the high-level head
  (the low-level head does not depend on the high-level features, so it adds a constant to the
  logit) and no backward through the backbone; the fast attention/contrastive kernels; a
  vectorised bank and correlation.
"""
from __future__ import annotations

import torch

from scob_fast.methods.base import Method, MethodContext
from scob_fast.models.label_estimator import LabelEstimator
from scob_fast.models.scob_net import ScobNet

from .cam import cam_keep_masks, grad_cam_plus_plus, target_classes
from .config import ScobConfig
from .correlation import contrastive_weights, correlation, correlation_loop
from .losses import scob_contrastive_loss, scob_supervised_loss
from .phase_timer import PhaseTimer
from .prototype_bank import PrototypeBank


class Scob(Method):
    name = "scob"
    needs_hard_view = True
    supports_feature_cache = False    # its hard view is an image-space augmentation
    label_regimes = ("single",)
    config_class = ScobConfig
    # Default k per dataset where the public code's differs from the dataset's (scob_fast.config):
    # main.py BasicRecipe sets expected_positive_labels = 3.9 for coco2014 (1.5 for VOC, as the registry).
    published_expected_positives = {"coco2014": 3.9}

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        heads = ctx.heads
        self.net = ScobNet(ctx.backbone.channels, ctx.num_classes, dim=heads.dim, ffn=heads.ffn,
                           dropout=heads.dropout)
        self.estimator = LabelEstimator(ctx.observed, seed=ctx.seed)
        self.bank = PrototypeBank(ctx.num_classes, self.config.bank_size, heads.dim)
        self.register_buffer("contrast_weights", torch.ones(ctx.num_classes, ctx.num_classes))
        self.timer = PhaseTimer(enabled=False)
        self.set_engine(self.config.engine)

    def set_engine(self, engine: str) -> None:
        if engine not in ("fast", "reference"):
            raise ValueError(f"engine must be 'fast' or 'reference', got {engine!r}")
        self.engine = engine
        self.net.set_attention_backend("reference" if engine == "reference" else None)

    def describe(self) -> str:
        return f"{self.name} ({self.engine} engine)"

    def compiled_modules(self):
        return list(self.net.mid_heads())

    def param_groups(self) -> list[dict]:
        lr = self.ctx.lr
        groups = self.net.param_groups(lr.linear, lr.transformer, lr.projector, lr.classifier)
        groups.append({"name": "estimator", "params": list(self.estimator.parameters()), "lr": lr.estimator})
        return groups

    def start_epoch(self, epoch: int) -> None:
        self.bank.clear()
        probabilities = torch.sigmoid(self.estimator.logits.detach().float())
        r = (correlation_loop if self.engine == "reference" else correlation)(probabilities.cpu())
        self.contrast_weights.copy_(contrastive_weights(r, hard=not self.config.soft_correlation))

    @torch.no_grad()
    def predict_from_features(self, f_low: torch.Tensor, f_high: torch.Tensor) -> torch.Tensor:
        return self.net(f_low, f_high)

    # -- the pieces both engines share --------------------------------------------------------
    def _supervised(self, f_low, f_high, batch, optimizer):
        amp = self.ctx.amp
        with amp.autocast():
            logits = self.net(f_low, f_high)
        loss = scob_supervised_loss(logits, self.estimator(batch["index"]), batch["observed"],
                                    self.ctx.expected_positives)
        amp.step(loss, optimizer)
        return logits.detach().float(), loss.detach()

    def _masks_from_gradients(self, f_high, gradients, low_grid):
        cam = grad_cam_plus_plus(f_high.detach(), gradients)
        grids = [tuple(low_grid), tuple(f_high.shape[-2:])]
        return cam_keep_masks(cam, self.ctx.image_size, grids, self.config.cam_threshold)

    def _cam_masks_reference(self, images, classes):
        """Grad-CAM++ the way the public code gets it from its hook library: the whole model in
        eval mode on an image that requires grad, so the backward runs through the frozen backbone
        down to the pixels (only d logit / d layer4 is used)."""
        images = images.detach().clone().requires_grad_(True)
        self.net.eval()
        try:
            with torch.enable_grad():
                with self.ctx.amp.autocast():
                    f_low, f_high = self.backbone(images)
                    logits = self.net(f_low, f_high)
                score = logits.float().gather(1, classes[:, None]).sum()
                gradients, _ = torch.autograd.grad(score, [f_high, images])
        finally:
            self.net.train()
        return self._masks_from_gradients(f_high, gradients, f_low.shape[-2:])

    def _cam_masks_fast(self, f_low, f_high, classes):
        """Grad-CAM++ from the cached clean features: d logit / d f_high only flows through the
        high-level head (the low head does not see f_high), so score that part alone."""
        f_high = f_high.detach().float().requires_grad_(True)
        self.net.eval()
        try:
            with torch.enable_grad():
                half = self.net.classifier.in_features // 2
                h_high = self.net.head_high(f_high)
                score = (h_high * self.net.classifier.weight[classes, half:]).sum()
                gradients, = torch.autograd.grad(score, f_high)
        finally:
            self.net.train()
        return self._masks_from_gradients(f_high, gradients, f_low.shape[-2:])

    def _contrastive(self, z, zk, classes, optimizer):
        a = self.config
        prototypes, valid = self.bank.prototypes()
        loss = a.lambda_cl * scob_contrastive_loss(
            z, zk, classes, prototypes, valid, self.contrast_weights, a.temperature,
            backend="reference" if self.engine == "reference" else None)
        self.ctx.amp.step(loss, optimizer)
        return loss.detach()

    def train_step(self, batch: dict, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        amp, a, timer = self.ctx.amp, self.config, self.timer
        images, hard = batch["image"], batch["image_hard"]
        reference = self.engine == "reference"
        with timer("backbone"), torch.no_grad(), amp.autocast():
            # The clean features serve the supervised pass, the CAM and the momentum key. (One call
            # on both views concatenated was measured slower per image on CPU at 256 px.)
            f_low, f_high = self.backbone(images)
        # 1. supervised pass against the label estimator
        with timer("supervised"):
            logits, loss_sup = self._supervised(f_low, f_high, batch, optimizer)
            probabilities = torch.sigmoid(logits)
            classes = target_classes(batch["observed"], probabilities)
        # 2. CAM keep masks
        with timer("cam"):
            if reference:
                keep_low, keep_high = self._cam_masks_reference(images, classes)
            else:
                keep_low, keep_high = self._cam_masks_fast(f_low, f_high, classes)
        # 3. momentum key on the clean image with the masks (the reference recomputes the features)
        if reference:
            with timer("backbone"), torch.no_grad(), amp.autocast():
                f_low, f_high = self.backbone(images)
        with timer("momentum"), torch.no_grad():
            if not a.published_ema:
                self.net.update_momentum(a.ema_alpha)
            with amp.autocast():
                zk = self.net.embed_momentum(f_low, f_high, keep_low, keep_high).float()
        # 4. hard-augmented view through the masked heads and the projector
        with timer("backbone"), torch.no_grad(), amp.autocast():
            h_low, h_high = self.backbone(hard)
        stats = {"loss_sup": loss_sup}
        # 5. contrastive step, only when both levels keep something
        with timer("contrastive"):
            if bool(keep_low.any()) and bool(keep_high.any()):
                with amp.autocast():
                    z = self.net.projector(self.net.embed(h_low, h_high, keep_low, keep_high))
                stats["loss_cl"] = self._contrastive(z, zk, classes, optimizer)
            else:
                stats["loss_cl"] = torch.zeros(())
        # 6. bank update with the supervised pass's confidence of each image's class
        with timer("bank"):
            confidence = probabilities.gather(1, classes[:, None])[:, 0]
            update = self.bank.update_sequential if reference else self.bank.update
            update(zk, classes, confidence, batch["index"])
        stats["keep_low"] = keep_low.float().mean()
        stats["keep_high"] = keep_high.float().mean()
        stats["estimator_drift"] = self.estimator.drift(batch["index"], batch["observed"] > 0)
        return stats
