"""What a training method is to the trainer.

A method owns its trainable modules (it is an nn.Module, so its state_dict is checkpointed whole),
any extra state (`extra_state` / `load_extra_state`), its optimiser parameter groups and its
training step; the trainer owns data, optimiser, schedule, evaluation and checkpoints.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

from scob_fast.engine.amp import AmpPolicy
from scob_fast.models.backbone import FrozenBackbone


@dataclass
class MethodContext:
    backbone: FrozenBackbone
    num_classes: int
    num_samples: int
    observed: torch.Tensor          # [N, C] int8: 1 observed positive, -1 observed negative, 0 unknown
    args: argparse.Namespace
    device: torch.device
    amp: AmpPolicy
    image_size: int


class Method(nn.Module):
    name = "method"
    needs_hard_view = False          # does the loader have to produce the hard-augmented view?
    label_regimes = ("single",)      # the label regimes this method is meant for (documentation, warnings)

    def __init__(self, ctx: MethodContext):
        super().__init__()
        self.ctx = ctx
        self.backbone = ctx.backbone

    @staticmethod
    def add_arguments(group: argparse._ArgumentGroup) -> None:
        """Method-specific command-line flags."""

    def param_groups(self) -> list[dict]:
        raise NotImplementedError

    def start_epoch(self, epoch: int) -> None:
        pass

    def train_step(self, batch: dict, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """One iteration; returns detached scalar tensors for logging (no host sync required)."""
        raise NotImplementedError

    supports_feature_cache = True     # can it train from --cache-features batches (no image views)?

    def clean_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen backbone's two levels of the clean view: from the feature cache when the batch
        carries them, else one backbone pass."""
        if "features_low" in batch:
            return batch["features_low"], batch["features_high"]
        with torch.no_grad(), self.ctx.amp.autocast():
            return self.backbone(batch["image"])

    def predict_from_features(self, f_low: torch.Tensor, f_high: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"method {self.name} cannot predict from cached features")

    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.ctx.amp.autocast():
            f_low, f_high = self.backbone(images)
        return self.predict_from_features(f_low, f_high)

    def predict_batch(self, batch: dict) -> torch.Tensor:
        if "features_low" in batch:
            return self.predict_from_features(batch["features_low"], batch["features_high"])
        return self.predict_logits(batch["image"])

    def move_state_to(self, device: torch.device) -> None:
        """Move state that is not a parameter or buffer (e.g. a prototype bank) to `device`."""

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def state_dict_for_checkpoint(self) -> dict:
        # The frozen backbone is rebuilt from its weights file; don't store 100 MB of it per checkpoint.
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_checkpoint_state(self, state: dict) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit method {self.name}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
