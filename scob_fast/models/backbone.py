"""Two-level backbones: ResNet-50/101 (layer3, layer4) and EfficientNet-Lite0 (stride 16, stride 32).

Frozen by default (Scob's published model: parameters fixed, BN folded into the convolutions,
eval mode whatever `.train()` says). `train_from` makes a suffix of the network trainable, stage
by stage (`stem`, `layer1` .. `layer4`; see each network's STAGE_NAMES): the named stage and every
stage after it train, the stages before it stay frozen and folded and run without autograd (no
activations kept). `bn_mode` says what the trainable stages' BatchNorms do:
- "frozen": eval mode (running statistics) with weight and bias fixed, as SADCL's FrozenBatchNorm2d
  (code/lib_sadcl/models/backbone.py);
- "train": batch statistics in training (running statistics updated) and weight and bias learned,
  as torchvision's ResNet under model.train() (Cole et al.'s end-to-end train.py; SST.py Train:
  model.backbone.layer4.train()).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from scob_fast.models.efficientnet_lite import EfficientNetLite0, packaged_weights_path
from scob_fast.models.resnet import ResNet50, ResNet101

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    channels: tuple[int, int]   # (low level at stride 16, high level at stride 32)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


SPECS = {
    "resnet50": BackboneSpec((1024, 2048), IMAGENET_MEAN, IMAGENET_STD),
    "resnet101": BackboneSpec((1024, 2048), IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": BackboneSpec((112, 1280), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


# --train-backbone values: the first trainable stage ("all": from the stem on; "none": frozen).
TRAIN_FROM_CHOICES = ("none", "layer4", "layer3", "layer2", "all")
BN_MODES = ("frozen", "train")


class Backbone(nn.Module):
    """Frozen by default: parameters fixed and kept in eval mode whatever .train() is called with,
    as Scob does. With `train_from` a suffix of stages trains (module docstring)."""

    def __init__(self, name: str, network: nn.Module, fold_batchnorm: bool = True, train_from: str = "none",
                 bn_mode: str = "frozen"):
        super().__init__()
        if name not in SPECS:
            raise ValueError(f"unknown backbone {name!r}; choose from {sorted(SPECS)}")
        if train_from not in TRAIN_FROM_CHOICES:
            raise ValueError(f"--train-backbone must be one of {', '.join(TRAIN_FROM_CHOICES)}, got {train_from!r}")
        if bn_mode not in BN_MODES:
            raise ValueError(f"--bn-mode must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
        self.name = name
        self.spec = SPECS[name]
        self.network = network
        stages = tuple(network.STAGE_NAMES)
        first = {"none": len(stages), "all": 0}.get(train_from)
        first = stages.index(train_from) if first is None else first
        self.frozen_stages, self.trainable_stages = stages[:first], stages[first:]
        self.train_from, self.bn_mode = train_from, bn_mode
        self.trainable = bool(self.trainable_stages)
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.network.eval()
        if self.trainable:
            for module in self._trainable_modules():
                for sub in module.modules():
                    is_bn = isinstance(sub, nn.modules.batchnorm._BatchNorm)
                    for parameter in sub.parameters(recurse=False):
                        parameter.requires_grad_(not is_bn or bn_mode == "train")
        if fold_batchnorm:
            # Frozen + eval: BN is a per-channel affine map; folding it saves a pass over every
            # activation (~15% of the backbone's CPU time). Only the frozen stages: a trainable
            # stage keeps its convolutions' own parameterisation (and torchvision's names).
            for stage in self.frozen_stages:
                self.network.fold_stage_batchnorm(stage)
        self.channels_last = False
        self.folded = fold_batchnorm and bool(self.frozen_stages)   # some BatchNorm is folded away
        self.batchnorm_training = False

    def set_batchnorm_training(self, mode: bool) -> "FrozenBackbone":
        """BatchNorm on batch statistics (running statistics updated) while the parameters stay
        frozen: what the public Scob loop does after its CAM pass (main.py:329 calls model.train()).
        Needs an unfolded backbone (build_backbone(..., fold_batchnorm=False))."""
        if mode and self.folded:
            raise ValueError("set_batchnorm_training: this backbone's BatchNorm was folded into its "
                             "convolutions; build it with fold_batchnorm=False")
        self.batchnorm_training = bool(mode)
        for module in self.network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(self.batchnorm_training)
        return self

    def use_channels_last(self) -> "FrozenBackbone":
        """oneDNN (CPU) and cuDNN run these convolutions faster on NHWC tensors."""
        self.network.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.network.eval()
        if self.trainable and self.bn_mode == "train":
            for module in self._trainable_modules():
                module.train(mode)
        if self.batchnorm_training:
            self.set_batchnorm_training(True)
        return self

    # -- trainable stages -------------------------------------------------------------------------
    def _trainable_modules(self) -> list[nn.Module]:
        return [m for stage in self.trainable_stages for m in self.network.stage_modules(stage)]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr: float) -> list[dict]:
        """The optimiser group of the trainable stages (none when frozen)."""
        params = self.trainable_parameters()
        return [{"name": "backbone", "params": params, "lr": lr}] if params else []

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers (BN running statistics included) of the trainable stages, keyed as
        in this module's state_dict(): what a checkpoint must keep, the rest is rebuilt from the
        weights file."""
        if not self.trainable:
            return {}
        names = {id(m): n for n, m in self.named_modules()}
        prefixes = tuple(names[id(m)] + "." for m in self._trainable_modules())
        return {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}

    def describe(self) -> str:
        if not self.trainable:
            return f"{self.name} (frozen)"
        return (f"{self.name} ({', '.join(self.trainable_stages)} trained, BN {self.bn_mode}; "
                f"{', '.join(self.frozen_stages) or 'nothing'} frozen)")

    @property
    def channels(self) -> tuple[int, int]:
        return self.spec.channels

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if not self.trainable:
            return self.network.features(images)
        x, low = images, None
        # The frozen prefix keeps no activations for backward, unless the caller wants gradients
        # with respect to the image itself (it asked for them by making the image require grad).
        with torch.set_grad_enabled(torch.is_grad_enabled() and images.requires_grad):
            for stage in self.frozen_stages:
                x = self.network.run_stage(stage, x)
                low = x if stage == self.network.LOW_STAGE else low
        for stage in self.trainable_stages:
            x = self.network.run_stage(stage, x)
            low = x if stage == self.network.LOW_STAGE else low
        return low, x


# The name every caller knows; a Backbone is frozen unless built with train_from.
FrozenBackbone = Backbone


def _load_state(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read backbone weights {path}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


RESNETS = {"resnet50": ResNet50, "resnet101": ResNet101}


def build_backbone(name: str, weights: str | None = None, pretrained: bool = True,
                   fold_batchnorm: bool = True, train_from: str = "none", bn_mode: str = "frozen") -> Backbone:
    """`weights`: a state-dict file (torchvision's resnet50-*.pth / resnet101-*.pth for the ResNets).
    For efficientnet_lite0 the packaged ImageNet weights are used when none is given. A ResNet
    without a weights file is refused unless pretrained=False (random init, for tests).
    `train_from`, `bn_mode`: see Backbone (defaults: frozen, today's behaviour)."""
    if name in RESNETS:
        network = RESNETS[name]()
        if weights is None and pretrained:
            raise FileNotFoundError(
                f"{name} needs ImageNet weights from a local file: pass --backbone-weights PATH "
                f"(torchvision's {name}-*.pth loads strictly); nothing is downloaded")
    elif name == "efficientnet_lite0":
        network = EfficientNetLite0()
        if weights is None and pretrained:
            weights = packaged_weights_path()
    else:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(SPECS)}")
    if weights is not None:
        state = _load_state(weights)
        missing, unexpected = network.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"backbone weights {weights} do not fit {name}: "
                             f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                             f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    return Backbone(name, network, fold_batchnorm=fold_batchnorm, train_from=train_from, bn_mode=bn_mode)
