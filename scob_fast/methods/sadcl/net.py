"""SADCL's network: a Query2Label head on the frozen backbone's last level, a shared projector, class
prototypes and the memory bank.

What follows the public code (yu-gi-oh-leilei/SADCL; paths below are inside that repository):
- transformer (code/lib_sadcl/models/transformer/transformer.py, transformer_encoder.py,
  transformer_decoder.py): DETR-style post-norm layers; `--enc_layers 1 --dec_layers 2 --nheads 4`
  (scripts/sadcl/coco.sh); the decoder's self-attention is removed in every layer
  (`rm_self_attn_dec` / `rm_first_self_attn` default True in build_transformer); the decoder input
  is zeros and the label queries enter as the query position at every layer; positions are added
  to queries and keys only, never to values; a final LayerNorm closes the decoder; every
  parameter of more than one dimension is xavier-uniform initialised (`_reset_parameters`);
- positions (code/lib_sadcl/models/position_encoding.py, `--position_embedding v2`): the
  normalised DETR sine embedding, y then x, each with hidden/2 channels of interleaved sin/cos;
- input projection (code/lib_sadcl/models/sadcl.py, build_sadcl): the public model replaces it by
  Identity (its backbone already gives hidden_dim = 2048 channels); we do the same when the
  backbone's channels equal --dim and use its `keep_input_proj` 1x1 convolution otherwise;
- label queries `nn.Embedding(C, hidden)` (N(0, 1)), classifier GroupWiseLinear (W and b uniform
  in +-1/sqrt(hidden)), projector MLP(hidden, hidden, 1024, 2 layers) = Linear-ReLU-Linear
  (code/lib_sadcl/models/ffn.py), whose output width we keep as the public ratio 1024 / 2048 of
  --dim (`projection_ratio`);
- prototypes: a learnable [C, hidden] parameter (label-feature width, before the projector),
  loaded in the public code from data/prototype/*.npy (features of a trained model) and projected
  through the shared projector where used; the memory bank is a [batch, C, hidden] non-trainable
  tensor initialised to the same prototypes (sadcl.py: load_MemoryBank).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PUBLIC_PROJECTION_RATIO = 1024 / 2048    # sadcl.py: proj_head_dim 1024 on hidden_dim 2048


def sine_position_embedding(height: int, width: int, dim: int, device=None,
                            temperature: float = 10000.0) -> torch.Tensor:
    """The normalised 2-D sine embedding [H*W, dim] of position_encoding.py (`normalize=True`,
    scale 2 pi): row and column indices 1..n divided by (n + 1e-6) and times 2 pi; with F = dim / 2
    features per axis, feature i has frequency temperature^(-2 floor(i / 2) / F) and is the sin (i
    even) or cos (i odd) of it; the row (y) features come first, then the column (x) ones."""
    if dim % 4:
        raise ValueError(f"sine position embedding: dim must be divisible by 4, got {dim}")
    per_axis = dim // 2
    index = torch.arange(per_axis, device=device, dtype=torch.float32)
    inverse_frequency = temperature ** (-2.0 * torch.div(index, 2, rounding_mode="floor") / per_axis)

    def encode(n: int) -> torch.Tensor:                                             # [n, per_axis]
        position = torch.arange(1, n + 1, device=device, dtype=torch.float32) / (n + 1e-6) * (2 * math.pi)
        angles = position[:, None] * inverse_frequency[None, :]
        out = torch.empty_like(angles)
        out[:, 0::2] = angles[:, 0::2].sin()
        out[:, 1::2] = angles[:, 1::2].cos()
        return out

    rows = encode(height)[:, None, :].expand(height, width, per_axis)
    cols = encode(width)[None, :, :].expand(height, width, per_axis)
    return torch.cat([rows, cols], dim=-1).reshape(height * width, dim)


class EncoderLayer(nn.Module):
    """Post-norm self-attention + FFN; positions on queries and keys (transformer_encoder.py)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout, self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        qk = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(qk, qk, src, need_weights=False)[0]))
        return self.norm2(src + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(src))))))


class DecoderLayer(nn.Module):
    """Query2Label's decoder layer with its self-attention removed: post-norm cross-attention (query
    = target + label query, key = memory + position, value = memory) and FFN (transformer_decoder.py)."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.linear1, self.linear2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor):
        attended = self.multihead_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + self.dropout2(attended))
        return self.norm3(tgt + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class Query2LabelTransformer(nn.Module):
    """Encoder layers over the image tokens, then decoder layers from zeros with the label queries as
    query positions, then the decoder's final LayerNorm -> label-level features [B, C, dim]."""

    def __init__(self, dim: int, heads: int, ffn: int, encoder_layers: int, decoder_layers: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"SADCL: --dim {dim} must be divisible by --sadcl-heads {heads}")
        if decoder_layers < 1:
            raise ValueError(f"SADCL: --sadcl-decoder-layers must be >= 1, got {decoder_layers}")
        if encoder_layers < 0:
            raise ValueError(f"SADCL: --sadcl-encoder-layers must be >= 0, got {encoder_layers}")
        self.encoder = nn.ModuleList(EncoderLayer(dim, heads, ffn, dropout) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(dim, heads, ffn, dropout) for _ in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """src [B, L, dim], pos [L, dim], queries [C, dim] -> [B, C, dim]."""
        pos = pos[None].to(src.dtype)
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos)
        query_pos = queries[None].to(src.dtype).expand(src.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)
        for layer in self.decoder:
            tgt = layer(tgt, memory, pos, query_pos)
        return self.decoder_norm(tgt)


def load_prototypes(path: str | Path, num_classes: int, dim: int) -> torch.Tensor:
    """A [C, dim] float tensor from `path`: a tensor saved with torch.save (or a dict holding one under
    'prototypes'), or a .npy array as the public code ships them (data/prototype/*.npy)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            value = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            value = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"--sadcl-prototypes {path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"--sadcl-prototypes {path}: cannot read it ({type(exc).__name__}: {exc})") from None
    if isinstance(value, dict):
        value = value.get("prototypes")
    if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
        raise ValueError(f"--sadcl-prototypes {path}: expected a float tensor [C, D] (or a dict with 'prototypes')")
    value = value.squeeze(0) if value.dim() == 3 and value.shape[0] == 1 else value
    if tuple(value.shape) != (num_classes, dim):
        raise ValueError(f"--sadcl-prototypes {path}: shape {tuple(value.shape)}, expected [{num_classes}, {dim}] "
                         f"(classes x --dim: the label-feature width, before the projector)")
    if not torch.isfinite(value).all():
        raise ValueError(f"--sadcl-prototypes {path}: holds non-finite values")
    return value.float().clone()


class SADCLNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, dim: int, ffn: int, *, heads: int = 4,
                 encoder_layers: int = 1, decoder_layers: int = 2, dropout: float = 0.1,
                 projection_ratio: float = PUBLIC_PROJECTION_RATIO, bank_slots: int = 1,
                 prototypes: torch.Tensor | None = None):
        super().__init__()
        if dim % 4:
            raise ValueError(f"SADCL: --dim {dim} must be divisible by 4 (sine positions)")
        projection_dim = max(1, int(round(dim * projection_ratio)))
        self.input_proj = nn.Identity() if in_channels == dim else nn.Conv2d(in_channels, dim, 1)
        self.queries = nn.Parameter(torch.randn(num_classes, dim))                 # nn.Embedding's N(0, 1)
        self.transformer = Query2LabelTransformer(dim, heads, ffn, encoder_layers, decoder_layers, dropout)
        bound = 1.0 / math.sqrt(dim)
        self.classifier_weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-bound, bound))
        self.classifier_bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound))
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, projection_dim))
        if prototypes is None:
            # Ours: the public code always loads them from a file. N(0, 1) matches the scale of the
            # label features, which leave the decoder through a LayerNorm.
            prototypes = torch.randn(num_classes, dim)
        self.prototypes = nn.Parameter(prototypes.float().clone())
        self.register_buffer("memory_bank", self.prototypes.detach().clone()[None].repeat(bank_slots, 1, 1))

    def label_features(self, f_high: torch.Tensor) -> torch.Tensor:
        """[B, Cin, H, W] -> label-level features [B, C, dim]."""
        x = self.input_proj(f_high)
        _, dim, h, w = x.shape
        pos = sine_position_embedding(h, w, dim, x.device)
        return self.transformer(x.flatten(2).transpose(1, 2), pos, self.queries)

    def classify(self, label_features: torch.Tensor) -> torch.Tensor:
        return (label_features * self.classifier_weight.to(label_features.dtype)).sum(-1) \
            + self.classifier_bias.to(label_features.dtype)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The shared projector in float32 (not normalised: the losses normalise, as the public ones do)."""
        return self.projector(x.float())

    @torch.no_grad()
    def update_memory_bank(self, label_features: torch.Tensor, logits: torch.Tensor, observed: torch.Tensor,
                           threshold: float) -> torch.Tensor:
        """sadcl.py memorybank_update: slot b, class c takes image b's label feature when c is present and
        sigmoid(logit) > threshold. Returns how many entries were written (a tensor: no host sync)."""
        b = label_features.shape[0]
        write = (observed[:, : logits.shape[1]] > 0) & (torch.sigmoid(logits.float()) > threshold)
        if b > self.memory_bank.shape[0]:
            write = write[: self.memory_bank.shape[0]]
            label_features = label_features[: self.memory_bank.shape[0]]
        bank = self.memory_bank[: write.shape[0]]
        bank[write] = label_features.detach()[write].to(bank.dtype)
        return write.sum()

    def forward(self, f_high: torch.Tensor) -> torch.Tensor:
        return self.classify(self.label_features(f_high))
