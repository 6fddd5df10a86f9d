"""Single-positive baselines (AN, AN-LS, WAN, EPR, ROLE, LL-R/Ct/Cp, SPLC, EM, EM+APL) and the
full-label BCE upper bound, trained on the same frozen backbone and the same two-level heads as
Scob (no CAM masks, no contrastive branch), so that a comparison isolates the training signal.

The losses themselves live in `single_positive_losses.py`; this file adapts them to the trainer.
Observed labels arrive as {1, 0, -1}; the losses see y = (observed == 1), so unknown and known
negatives alike are "not a positive", which makes `bce` with `--labels full` plain full-label BCE.
"""
from __future__ import annotations

import argparse

import torch

from scob_fast.methods.base import Method, MethodContext
from scob_fast.methods.single_positive_losses import EM_APL_DATASET_HPARAMS, build_single_positive_loss
from scob_fast.models.scob_net import ScobNet


def _parse_hparams(text: str | None) -> dict:
    """'delta_rel=0.004,tau=0.7' -> {'delta_rel': 0.004, 'tau': 0.7}."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        if "=" not in item:
            raise ValueError(f"--loss-hparams: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out


class SinglePositiveBaseline(Method):
    loss_name = "an"
    needs_hard_view = False
    label_regimes = ("single",)

    @staticmethod
    def add_arguments(group: argparse._ArgumentGroup) -> None:
        group.add_argument("--loss-hparams", default=None,
                           help="baseline loss hyper-parameters, e.g. 'delta_rel=0.002' (LL-*), 'tau=0.6' (SPLC)")

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        a = ctx.args
        self.net = ScobNet(ctx.backbone.channels, ctx.num_classes, dim=a.dim, ffn=a.ffn, dropout=a.dropout)
        # The projector and momentum heads are Scob's; keep the module layout but train neither.
        for parameter in self.net.projector.parameters():
            parameter.requires_grad_(False)
        hparams = _parse_hparams(getattr(a, "loss_hparams", None))
        if self.loss_name == "em-apl":
            family = {"voc2007": "voc", "voc2012": "voc", "coco2014": "coco", "nuswide": "nus", "cub": "cub"}
            defaults = dict(EM_APL_DATASET_HPARAMS.get(family.get(a.dataset, "coco")))
            defaults["num_epochs"] = a.epochs
            defaults["warmup_epochs"] = min(defaults["warmup_epochs"], max(a.epochs - 1, 0))
            hparams = {**defaults, **hparams}
        self.criterion = build_single_positive_loss(
            self.loss_name, ctx.num_samples, ctx.num_classes, a.expected_positives,
            observed_labels=(ctx.observed == 1).to(torch.uint8), **hparams)
        self.epoch = 0

    def param_groups(self) -> list[dict]:
        a = self.ctx.args
        groups = [g for g in self.net.param_groups(a.lr_linear, a.lr_transformer, a.lr_projector, a.lr_classifier)
                  if g["name"] != "projector"]
        extra = list(self.criterion.parameters())
        if extra:
            groups.append({"name": "estimator", "params": extra, "lr": a.lr_estimator})
        return groups

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.criterion.start_epoch(epoch)

    def train_step(self, batch: dict, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        f_low, f_high = self.clean_features(batch)
        with self.ctx.amp.autocast():
            logits = self.net(f_low, f_high)
        positives = (batch["observed"] > 0).float()
        loss = self.criterion.loss(logits.float(), positives, batch["index"], self.epoch)
        self.ctx.amp.step(loss, optimizer)
        return {"loss": loss.detach()}

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
