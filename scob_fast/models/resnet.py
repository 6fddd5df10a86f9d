"""ResNet-50 (v1.5: stride on the 3x3 conv) with torchvision's parameter names.

Keeping torchvision's names lets users pass the official `resnet50-*.pth` file to
`--backbone-weights` and load it strictly, without depending on torchvision.
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


class ResNet50(nn.Module):
    # (blocks, width, stride) of layer1..layer4
    STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (blocks, width, stride) in enumerate(self.STAGES, start=1):
            layers = []
            for block in range(blocks):
                layers.append(Bottleneck(in_channels, width, stride if block == 0 else 1))
                in_channels = width * Bottleneck.expansion
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def fold_batchnorm(self) -> None:
        """Inference-only: fold every BN into its convolution (state_dict names change)."""
        from scob_fast.models.efficientnet_lite import fold_batchnorm
        fold_batchnorm(self.conv1, self.bn1)
        self.bn1 = nn.Identity()
        for index in range(1, 5):
            for block in getattr(self, f"layer{index}"):
                block.fold_batchnorm()

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(layer3 output at stride 16, layer4 output at stride 32)."""
        x = self.layer2(self.layer1(self.stem(x)))
        low = self.layer3(x)
        return low, self.layer4(low)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.features(x)[1]), 1))
