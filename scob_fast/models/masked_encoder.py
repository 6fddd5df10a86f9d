"""Transformer encoder whose attention pays only for the tokens a class-activation mask keeps.

`MaskedMultiheadAttention` and `MaskedTransformerEncoder` have the parameter names of
`nn.MultiheadAttention` / `nn.TransformerEncoder` (post-norm layers, final LayerNorm), so state dicts
load across in both directions. Differences from PyTorch's modules:
  * the mask is `key_keep` (True = attend), the opposite sense of `src_key_padding_mask`;
  * a sample that keeps no token gets zero attention output (PyTorch's gives NaN);
  * attention-weight dropout is drawn by the op's counter hash (seeded from torch's global CPU
    generator on every training call, so `torch.manual_seed` makes runs repeatable) instead of by
    `torch.nn.functional.dropout`: each weight is dropped with probability p and survivors are scaled
    by 1 / (1 - p), as in nn.MultiheadAttention, but the random stream differs. In eval mode or with
    p = 0 there is no dropout and outputs match PyTorch's to float32 rounding;
  * the layers' activation dropouts are `HashDropout` (scob_fast.ops.hash_dropout): the same
    distribution as nn.Dropout with the counter-hash stream, several times cheaper on the CPU.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from scob_fast.ops.hash_dropout import HashDropout
from scob_fast.ops.masked_attention import masked_attention


class MaskedMultiheadAttention(nn.Module):
    """Self-attention over [B, L, D] tokens with a per-sample key mask; `backend` is passed to the op."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, backend: Optional[str] = None):
        super().__init__()
        if d_model % nhead != 0:
            raise ValueError(f"MaskedMultiheadAttention: d_model={d_model} is not divisible by nhead={nhead}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MaskedMultiheadAttention: dropout must be in [0, 1), got {dropout}")
        self.embed_dim = d_model
        self.num_heads = nhead
        self.head_dim = d_model // nhead
        self.dropout = dropout
        self.backend = backend
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # nn.MultiheadAttention's initialisation.
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, key_keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"MaskedMultiheadAttention: x must be [B, L, {self.embed_dim}], got {tuple(x.shape)}")
        B, L, E = x.shape
        if key_keep is None:
            key_keep = torch.ones(B, L, dtype=torch.bool, device=x.device)
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(B, L, 3, self.num_heads, self.head_dim)
        # [B, H, L, hd] views with unit stride in hd: the kernels read them without a copy.
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        p = self.dropout if self.training else 0.0
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,)).item()) if p > 0.0 else 0
        out = masked_attention(q, k, v, key_keep, dropout_p=p, seed=seed, backend=self.backend)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, E))


class MaskedTransformerEncoderLayer(nn.Module):
    """Post-norm layer: x = norm1(x + drop(attn(x))); x = norm2(x + drop(ff(x))), LeakyReLU in the FFN."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 backend: Optional[str] = None):
        super().__init__()
        self.self_attn = MaskedMultiheadAttention(d_model, nhead, dropout=dropout, backend=backend)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = HashDropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = HashDropout(dropout)
        self.dropout2 = HashDropout(dropout)
        self.activation = nn.LeakyReLU()

    def forward(self, x: torch.Tensor, key_keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.norm1(x + self.dropout1(self.self_attn(x, key_keep)))
        ff = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.norm2(x + self.dropout2(ff))


class MaskedTransformerEncoder(nn.Module):
    """`num_layers` post-norm layers then a final LayerNorm; `forward(tokens [B, L, D], key_keep) -> [B, L, D]`.

    `backend` can be changed after construction (e.g. "reference" vs None = fastest available); it is
    handed to every layer's attention.
    """

    def __init__(self, d_model: int, nhead: int = 8, dim_feedforward: int = 2048, dropout: float = 0.1,
                 num_layers: int = 2, backend: Optional[str] = None):
        super().__init__()
        layer = MaskedTransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, backend)
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model)
        self.backend = backend

    @property
    def backend(self) -> Optional[str]:
        return self._backend

    @backend.setter
    def backend(self, value: Optional[str]) -> None:
        self._backend = value
        for layer in self.layers:
            layer.self_attn.backend = value

    def forward(self, tokens: torch.Tensor, key_keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = tokens
        for layer in self.layers:
            x = layer(x, key_keep)
        return self.norm(x)


__all__ = ["MaskedMultiheadAttention", "MaskedTransformerEncoderLayer", "MaskedTransformerEncoder"]
