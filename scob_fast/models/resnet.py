"""ResNet-50 and ResNet-101 (v1.5: stride on the 3x3 conv) with torchvision's parameter names.

Keeping torchvision's names lets users pass the official `resnet50-*.pth` / `resnet101-*.pth` file
to `--backbone-weights` and load it strictly, without depending on torchvision.

Stages (what `--train-backbone` names): `stem` (conv1, bn1, relu, maxpool: stride 4), `layer1`
(stride 4), `layer2` (8), `layer3` (16: the low feature level), `layer4` (32: the high level).
"""
from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def fold_batchnorm(self) -> None:
        from scob_fast.models.efficientnet_lite import fold_batchnorm
        for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            fold_batchnorm(getattr(self, conv), getattr(self, bn))
            setattr(self, bn, nn.Identity())
        if self.downsample is not None:
            fold_batchnorm(self.downsample[0], self.downsample[1])
            self.downsample[1] = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    # (blocks, width, stride) of layer1..layer4; subclasses set the block counts
    LAYERS: tuple[int, int, int, int] = (3, 4, 6, 3)
    STAGE_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")
    LOW_STAGE = "layer3"      # its output is the low feature level (stride 16)

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (blocks, width, stride) in enumerate(zip(self.LAYERS, (64, 128, 256, 512), (1, 2, 2, 2)),
                                                        start=1):
            layers = []
            for block in range(blocks):
                layers.append(Bottleneck(in_channels, width, stride if block == 0 else 1))
                in_channels = width * Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def stage_modules(self, stage: str) -> list[nn.Module]:
        """The modules whose parameters and buffers belong to `stage` (names unchanged)."""
        if stage == "stem":
            return [self.conv1, self.bn1]
        if stage in self.STAGE_NAMES:
            return [getattr(self, stage)]
        raise ValueError(f"unknown ResNet stage {stage!r}; choose from {self.STAGE_NAMES}")

    def run_stage(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x) if stage == "stem" else getattr(self, stage)(x)

    def fold_stage_batchnorm(self, stage: str) -> None:
        """Inference-only: fold the stage's BNs into its convolutions (its state_dict names change)."""
        from scob_fast.models.efficientnet_lite import fold_batchnorm
        if stage == "stem":
            if not isinstance(self.bn1, nn.Identity):
                fold_batchnorm(self.conv1, self.bn1)
                self.bn1 = nn.Identity()
            return
        for block in getattr(self, stage):
            block.fold_batchnorm()

    def fold_batchnorm(self) -> None:
        """Inference-only: fold every BN into its convolution (state_dict names change)."""
        for stage in self.STAGE_NAMES:
            self.fold_stage_batchnorm(stage)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(layer3 output at stride 16, layer4 output at stride 32)."""
        x = self.layer2(self.layer1(self.stem(x)))
        low = self.layer3(x)
        return low, self.layer4(low)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)[1]), 1))


class ResNet50(ResNet):
    LAYERS = (3, 4, 6, 3)


class ResNet101(ResNet):
    LAYERS = (3, 4, 23, 3)
