"""When may the fast engine share one clean backbone pass between the supervised pass, the CAM and the
momentum key?

The published procedure runs the backbone again for each of them, after the supervised optimiser
step. Sharing the first pass gives the same features only if nothing between the passes can change
them: the backbone's parameters receive no gradient (no optimiser step moves them) and every
BatchNorm uses its running statistics (a BN on batch statistics also updates them on every pass,
and the public loop's CAM runs in eval mode while its other passes run in train mode). This is the
one place that decides it: --published-bn, and trainable backbones, must fall back the same way.
"""
from __future__ import annotations

from torch import nn


def shared_clean_pass_valid(backbone: nn.Module, batchnorm_training: bool = False) -> bool:
    """True only when `backbone` is frozen (no parameter requires grad) and in eval-mode BN.

    `batchnorm_training`: the method will itself switch the backbone's BatchNorm to batch statistics
    during its step (Scob's --published-bn), which makes the shared pass invalid too."""
    return not shared_clean_pass_problem(backbone, batchnorm_training)


def shared_clean_pass_problem(backbone: nn.Module, batchnorm_training: bool = False) -> str | None:
    """Why the clean pass cannot be shared (one phrase for the log), or None when it can."""
    if batchnorm_training or getattr(backbone, "batchnorm_training", False):
        return "the backbone's BatchNorm runs on batch statistics (--published-bn)"
    if any(p.requires_grad for p in backbone.parameters()):
        return "the backbone has trainable parameters"
    if any(m.training for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        return "the backbone's BatchNorm is in training mode"
    return None
