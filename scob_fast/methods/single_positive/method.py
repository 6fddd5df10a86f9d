"""Single-positive baselines (AN, AN-LS, WAN, EPR, ROLE, LL-R/Ct/Cp, SPLC, EM, EM+APL) and the
full-label BCE upper bound, trained by default on the same frozen backbone and the same two-level
heads as Scob (no CAM masks, no contrastive branch), so that a comparison isolates the training
signal. `--head linear` is the published baselines' model instead: global average pooling of the
last feature level and one linear layer (Cole et al.'s models.py: `Sequential(*children[:-1])` of
torchvision's ResNet-50, whose last child kept is the AdaptiveAvgPool2d(1), then
`Linear(2048, num_classes)` on the squeezed features); with `--train-backbone all --bn-mode train`
it trains end to end as their train.py does.

The losses themselves live in `losses.py` beside this file; this file adapts them to the trainer.
Observed labels arrive as {1, 0, -1}; the losses see y = (observed == 1), so unknown and known
negatives alike are "not a positive", which makes `bce` with `--labels full` plain full-label BCE.
"""
from __future__ import annotations

import torch

from torch import nn

from scob_fast.methods.base import Method, MethodContext
from scob_fast.models.scob_net import ScobNet

from .config import BaselineConfig, parse_hparams
from .losses import EM_APL_DATASET_HPARAMS, build_single_positive_loss


class LinearHead(nn.Module):
    """Global average pooling of the last feature level, then one linear layer (torch's default
    initialisation, as Cole's torch.nn.Linear)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, f_low: torch.Tensor, f_high: torch.Tensor) -> torch.Tensor:
        return self.classifier(f_high.mean(dim=(2, 3)))


class SinglePositiveBaseline(Method):
    loss_name = "an"
    needs_hard_view = False
    label_regimes = ("single",)
    config_class = BaselineConfig

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        heads = ctx.heads
        if self.config.head == "linear":
            self.net = LinearHead(ctx.backbone.channels[1], ctx.num_classes)
        else:
            self.net = ScobNet(ctx.backbone.channels, ctx.num_classes, dim=heads.dim, ffn=heads.ffn,
                               dropout=heads.dropout)
            # The projector and momentum heads are Scob's; keep the module layout but train neither.
            for parameter in self.net.projector.parameters():
                parameter.requires_grad_(False)
        hparams = parse_hparams(self.config.loss_hparams)
        published = EM_APL_DATASET_HPARAMS.get(ctx.hparam_family, EM_APL_DATASET_HPARAMS["coco"])
        if self.loss_name == "em":
            # SPML-AckTheUnknown main.py sets alpha per dataset for every loss, plain EM included.
            hparams = {"alpha": published["alpha"], **hparams}
        elif self.loss_name == "em-apl":
            defaults = dict(published)
            defaults["num_epochs"] = ctx.epochs
            defaults["warmup_epochs"] = min(defaults["warmup_epochs"], max(ctx.epochs - 1, 0))
            hparams = {**defaults, **hparams}
        self.criterion = build_single_positive_loss(
            self.loss_name, ctx.num_samples, ctx.num_classes, ctx.expected_positives,
            observed_labels=(ctx.observed == 1).to(torch.uint8), **hparams)
        self.epoch = 0

    def compiled_modules(self):
        return list(self.net.mid_heads()) if isinstance(self.net, ScobNet) else []

    def describe(self) -> str:
        return f"{self.name} ({self.config.head} head)"

    def param_groups(self) -> list[dict]:
        lr = self.ctx.lr
        if isinstance(self.net, LinearHead):
            groups = [{"name": "classifier", "params": list(self.net.parameters()), "lr": lr.classifier}]
        else:
            groups = [g for g in self.net.param_groups(lr.linear, lr.transformer, lr.projector, lr.classifier)
                      if g["name"] != "projector"]
        extra = list(self.criterion.parameters())
        if extra:
            groups.append({"name": "estimator", "params": extra, "lr": lr.estimator})
        return groups

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.criterion.start_epoch(epoch)

    def continue_epoch(self, epoch: int, step: int) -> None:
        self.epoch = epoch

    def train_step(self, batch: dict, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        f_low, f_high = self.clean_features(batch)
        with self.ctx.amp.autocast():
            logits = self.net(f_low, f_high)
        positives = (batch["observed"] > 0).float()
        # The global batch's loss on every rank (one process: this batch's): batch statistics (EPR,
        # the LL threshold, SPLC's sum) and per-sample state (estimator rows, LL-Cp corrections,
        # EM-APL predictions) see every rank's samples, so every copy makes the same update.
        dist = self.ctx.dist
        loss = self.criterion.loss(dist.gather_with_grad(logits.float()), dist.gather(positives),
                                   dist.gather(batch["index"]), self.epoch)
        self.ctx.amp.step(loss, optimizer)
        stats = {"loss": loss.detach()}
        if hasattr(self.criterion, "drift"):      # ROLE: its label estimator's distance from its start
            stats["estimator_drift"] = self.criterion.drift(batch["index"], positives)
        return stats

    @torch.no_grad()
    def predict_from_features(self, f_low: torch.Tensor, f_high: torch.Tensor) -> torch.Tensor:
        return self.net(f_low, f_high)


def _baseline(loss_name: str, regimes: tuple[str, ...] = ("single",)) -> type:
    return type(f"Baseline_{loss_name.replace('-', '_')}", (SinglePositiveBaseline,),
                {"name": loss_name, "loss_name": loss_name, "label_regimes": regimes})


BCE = _baseline("an", ("full",))   # assume-negative on full labels is plain BCE: the upper bound
BCE.name = "bce"
AN = _baseline("an")
AN_LS = _baseline("an-ls")
WAN = _baseline("wan")
EPR = _baseline("epr")
ROLE = _baseline("role")
LL_R = _baseline("ll-r")
LL_CT = _baseline("ll-ct")
LL_CP = _baseline("ll-cp")
SPLC = _baseline("splc")
EM = _baseline("em")
EM_APL = _baseline("em-apl")
