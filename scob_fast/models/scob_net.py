"""Scob's network on top of a frozen two-level backbone (see NOTES in the README's method section).

Per level a "mid head": 1x1 conv to dim/2, learned 2-D position embedding (row and column halves),
a 2-layer post-norm transformer encoder whose attention can be restricted to CAM-kept tokens,
then the mean over all token positions. Both levels are concatenated into h [B, dim]; a linear
classifier gives logits and a 2-layer projector gives the contrastive feature. Momentum (EMA) copies
of both mid heads give the contrastive key.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from scob_fast.models.masked_encoder import MaskedTransformerEncoder


class PositionEmbedding2D(nn.Module):
    """Learned row and column embeddings, each dim/2 wide, concatenated per grid cell."""

    def __init__(self, dim: int, max_size: int = 64):
        super().__init__()
        if dim % 2:
            raise ValueError(f"PositionEmbedding2D: dim must be even, got {dim}")
        self.max_size = max_size
        self.rows = nn.Parameter(torch.empty(max_size, dim // 2).uniform_())
        self.cols = nn.Parameter(torch.empty(max_size, dim // 2).uniform_())

    def forward(self, height: int, width: int) -> torch.Tensor:
        if height > self.max_size or width > self.max_size:
            raise ValueError(f"feature grid {height}x{width} exceeds the position embedding's {self.max_size}")
        rows = self.rows[:height, None, :].expand(height, width, -1)
        cols = self.cols[None, :width, :].expand(height, width, -1)
        return torch.cat([rows, cols], dim=-1).reshape(height * width, -1)


class MidHead(nn.Module):
    def __init__(self, in_channels: int, dim: int, heads: int, ffn: int, layers: int, dropout: float,
                 attention_backend: str | None = None):
        super().__init__()
        self.input_proj = nn.Conv2d(in_channels, dim, 1)
        self.position = PositionEmbedding2D(dim)
        self.encoder = MaskedTransformerEncoder(dim, nhead=heads, dim_feedforward=ffn, dropout=dropout,
                                                num_layers=layers, backend=attention_backend)

    def forward(self, features: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """features [B, Cin, H, W], keep bool [B, H*W] (True = attend) -> pooled [B, dim]."""
        x = self.input_proj(features)
        b, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2) + self.position(h, w).to(x.dtype)
        if keep is not None and keep.shape != (b, h * w):
            raise ValueError(f"keep mask must be [B, H*W] = [{b}, {h * w}], got {tuple(keep.shape)}")
        return self.encoder(tokens, keep).mean(dim=1)


class ScobNet(nn.Module):
    def __init__(self, in_channels: tuple[int, int], num_classes: int, dim: int = 1024, heads: int = 8,
                 ffn: int = 2048, layers: int = 2, dropout: float = 0.1, attention_backend: str | None = None):
        super().__init__()
        if dim % (2 * heads):
            raise ValueError(f"dim={dim} must be divisible by 2*heads={2 * heads}")
        half = dim // 2
        self.head_low = MidHead(in_channels[0], half, heads, ffn, layers, dropout, attention_backend)
        self.head_high = MidHead(in_channels[1], half, heads, ffn, layers, dropout, attention_backend)
        self.classifier = nn.Linear(dim, num_classes)
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.LeakyReLU(), nn.Linear(dim, dim))
        self.momentum_low = copy.deepcopy(self.head_low)
        self.momentum_high = copy.deepcopy(self.head_high)
        for parameter in self.momentum_parameters():
            parameter.requires_grad_(False)

    def mid_heads(self):
        """The four transformer heads (trained and momentum): what --compile compiles."""
        return (self.head_low, self.head_high, self.momentum_low, self.momentum_high)

    def set_attention_backend(self, backend: str | None) -> None:
        for head in self.mid_heads():
            head.encoder.backend = backend

    def momentum_parameters(self):
        yield from self.momentum_low.parameters()
        yield from self.momentum_high.parameters()

    def embed(self, f_low, f_high, keep_low=None, keep_high=None) -> torch.Tensor:
        return torch.cat([self.head_low(f_low, keep_low), self.head_high(f_high, keep_high)], dim=1)

    def embed_momentum(self, f_low, f_high, keep_low=None, keep_high=None) -> torch.Tensor:
        return torch.cat([self.momentum_low(f_low, keep_low), self.momentum_high(f_high, keep_high)], dim=1)

    def forward(self, f_low, f_high) -> torch.Tensor:
        """Classifier logits from unmasked features."""
        return self.classifier(self.embed(f_low, f_high))

    @torch.no_grad()
    def update_momentum(self, alpha: float) -> None:
        """In-place EMA: slow = alpha * slow + (1 - alpha) * fast (the public code's version rebinds a
        loop variable and so never moves the momentum heads; see --published-ema)."""
        for slow_head, fast_head in ((self.momentum_low, self.head_low), (self.momentum_high, self.head_high)):
            for slow, fast in zip(slow_head.parameters(), fast_head.parameters()):
                slow.mul_(alpha).add_(fast.detach(), alpha=1.0 - alpha)

    def param_groups(self, lr_linear: float, lr_transformer: float, lr_projector: float,
                     lr_classifier: float) -> list[dict]:
        linear, transformer = [], []
        for head in (self.head_low, self.head_high):
            linear += list(head.input_proj.parameters()) + list(head.position.parameters())
            transformer += list(head.encoder.parameters())
        return [
            {"name": "linear", "params": linear, "lr": lr_linear},
            {"name": "transformer", "params": transformer, "lr": lr_transformer},
            {"name": "projector", "params": list(self.projector.parameters()), "lr": lr_projector},
            {"name": "classifier", "params": list(self.classifier.parameters()), "lr": lr_classifier},
        ]
