"""Scob's options (flags generated from this dataclass; defaults are the public code's, except the
three `published_*` switches, which reproduce what the public loop does by accident and are off)."""
from __future__ import annotations

from dataclasses import dataclass

from scob_fast.cli_options import option


@dataclass(frozen=True)
class ScobConfig:
    engine: str = option("fast", "fast: one backbone pass per view, fused kernels; reference: the published "
                         "procedure pass for pass (--published-bn always runs the reference)",
                         choices=("fast", "reference"))
    lambda_cl: float = option(0.1, "contrastive loss weight")
    temperature: float = option(1.0, "contrastive temperature")
    ema_alpha: float = option(0.999, "momentum heads' EMA decay")
    published_ema: bool = option(False, "as the public code: momentum heads with their own random initialisation "
                                 "(seeded from --seed), never updated (its EMA rebinds a loop variable)")
    published_bn: bool = option(False, "as the public code (main.py:329 model.train() after the CAM): the frozen "
                                "backbone's BatchNorm runs on batch statistics in the supervised (after an "
                                "epoch's first step), momentum and hard-view passes and its running statistics "
                                "drift; CAM and evaluation use them. Unfolds BN; runs the reference engine")
    published_bank: bool = option(False, "as the public code: empty prototype slots stay in the softmax as zero "
                                  "vectors, and a batch with a sample keeping no token in a level skips its "
                                  "contrastive step (NaN there) and that sample is not stored")
    bank_size: int = option(2, "momentum features stored per class")
    cam_threshold: float = option(0.5, "CAM keep threshold (kept: >= threshold)")
    soft_correlation: bool = option(False, "weights from the raw correlation instead of the published hard (==1) one")
    negative_weights: str = option("correlation", "prototype weights in the contrastive softmax: correlation: "
                                   "W[y, c] from the class correlation, as published; estimator (ours): W[y, c] "
                                   "times 1 - the label estimator's probability of class c for that image, so a "
                                   "class the estimator believes present is not pushed away",
                                   choices=("correlation", "estimator"))
    prototype_positive: bool = option(False, "ours: the image's own class prototype (the bank's most confident "
                                      "stored embedding of its class) is a second positive of the InfoNCE "
                                      "beside the momentum key, where the public code gives it weight 0 "
                                      "(W[y, y] = 1 - 1^2)")
    estimator_blend: float = option(0.0, "ours, 0 = published: after each supervised step the batch's unknown "
                                    "estimator entries move this fraction of the way (in probability) to the "
                                    "classifier's prediction from that step, besides their gradient step (an "
                                    "E-step at every visit; the rows otherwise move once per epoch by about "
                                    "the learning rate)")
    contrastive_update: str = option("published", "published: the contrastive loss takes a second optimiser step of "
                                     "its own after the supervised one (main.py run_train_iter: two "
                                     "optimizer.step() calls on one Adam), so the shared Adam moments re-apply the "
                                     "supervised direction in that step; joint (ours): one step on the sum "
                                     "L_sup + lambda_cl L_cl, with the CAM taken from the heads before the step",
                                     choices=("published", "joint"))
    estimator_init_width: float = option(0.3, "the label estimator's unknown entries start uniform in logit space "
                                         "over [logit(0.5 - w), logit(0.5 + w)]: 0.3 is the public code's 0.2..0.8 "
                                         "(main.py), 0.1 ROLE's (Cole et al. models.py)")
