"""SADCL: Semantic-Aware Dual Contrastive Learning for multi-label image classification (Ma et al., 2023).

Network on the frozen backbone's last level:
- semantic-aware representation learning, Query2Label-style: 1x1 conv of the last level to d, a
  fixed 2-D sine position embedding (Query2Label's default), and C learnable label queries decoded by --sadcl-layers
  nn.TransformerDecoder layers (width --dim, FFN --ffn, 8 heads) -> label-level features [B, C, d];
- a per-class linear classifier (logit_c = w_c . h_c + b_c);
- a shared projector (d -> d -> 128, ReLU) whose L2-normalised output is the contrastive feature;
- C learnable class prototypes (128 wide, normalised where used).

Loss = BCE (mean over the B x C entries) + w_s2s * L_s2s + w_p2s * L_p2s, where, over the
label-level features of the classes present in each image (observed positives),
- L_s2s is SupCon (Khosla et al. L_out, temperature 0.2): positives are the same class's features
  in the other images of the batch;
- L_p2s is the prototype-to-sample loss (temperature 0.07): each present feature against all C
  prototypes, its own class's prototype the positive (gradients reach the prototypes too).
Both go through `label_contrastive_loss`. The paper weights classification : s2s : p2s as
1000 : 100 : 50; with the classification term as a plain mean BCE that ratio gives the defaults
w_s2s = 0.1, w_p2s = 0.05 (flags --sadcl-s2s-weight, --sadcl-p2s-weight).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from scob_fast.methods.base import Method, MethodContext
from scob_fast.ops.label_contrastive import label_contrastive_loss

PROJECTION_DIM = 128
HEADS = 8


def sine_position_embedding(height: int, width: int, dim: int, device=None) -> torch.Tensor:
    """DETR/Query2Label fixed 2-D sine embedding [H*W, dim]: half the channels encode the row,
    half the column, each as sin/cos pairs of geometrically spaced frequencies."""
    if dim % 4:
        raise ValueError(f"sine position embedding: dim must be divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 10000.0 ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    def encode(n):
        angles = (torch.arange(n, device=device, dtype=torch.float32) + 1.0)[:, None] * frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)                       # [n, dim/2]
    rows = encode(height)[:, None, :].expand(height, width, -1)
    cols = encode(width)[None, :, :].expand(height, width, -1)
    return torch.cat([rows, cols], dim=-1).reshape(height * width, dim)


def present_features(z: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """z [B, C, D], observed [B, C] -> (rows of the observed positives [N, D], their classes [N])."""
    b_idx, c_idx = (observed > 0).nonzero(as_tuple=True)
    return z[b_idx, c_idx], c_idx


def sample_to_sample_loss(z: torch.Tensor, observed: torch.Tensor, temperature: float = 0.2,
                          backend: str | None = None) -> torch.Tensor:
    """SupCon over the normalised contrastive features z [B, C, D] of present classes."""
    features, classes = present_features(z, observed)
    return label_contrastive_loss(features, classes, temperature=temperature, backend=backend)


def prototype_to_sample_loss(z: torch.Tensor, observed: torch.Tensor, prototypes: torch.Tensor,
                             temperature: float = 0.07, backend: str | None = None) -> torch.Tensor:
    """Each present feature of z [B, C, D] against the normalised prototypes [C, D]; its class's is the positive."""
    features, classes = present_features(z, observed)
    candidates = F.normalize(prototypes, dim=-1).to(features.dtype)
    candidate_labels = torch.arange(prototypes.shape[0], device=features.device)
    return label_contrastive_loss(features, classes, candidates, candidate_labels, temperature=temperature,
                                  backend=backend)


class SADCLNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, dim: int, ffn: int, layers: int, dropout: float):
        super().__init__()
        if dim % HEADS:
            raise ValueError(f"SADCL: --dim {dim} must be divisible by {HEADS} heads")
        self.input_proj = nn.Conv2d(in_channels, dim, 1)
        self.queries = nn.Parameter(torch.randn(num_classes, dim) * dim ** -0.5)
        layer = nn.TransformerDecoderLayer(dim, HEADS, dim_feedforward=ffn, dropout=dropout, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers=layers)
        self.classifier_weight = nn.Parameter(torch.empty(num_classes, dim).uniform_(-dim ** -0.5, dim ** -0.5))
        self.classifier_bias = nn.Parameter(torch.zeros(num_classes))
        self.projector = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, PROJECTION_DIM))
        self.prototypes = nn.Parameter(torch.randn(num_classes, PROJECTION_DIM))

    def label_features(self, f_high: torch.Tensor) -> torch.Tensor:
        """[B, Cin, H, W] -> label-level features [B, C, d]."""
        x = self.input_proj(f_high)
        b, _, h, w = x.shape
        memory = x.flatten(2).transpose(1, 2) + sine_position_embedding(h, w, x.shape[1], x.device).to(x.dtype)
        queries = self.queries.to(memory.dtype).expand(b, -1, -1)
        return self.decoder(queries, memory)

    def classify(self, label_features: torch.Tensor) -> torch.Tensor:
        return (label_features * self.classifier_weight).sum(-1) + self.classifier_bias

    def embed(self, label_features: torch.Tensor) -> torch.Tensor:
        """Normalised contrastive features [B, C, 128]."""
        return F.normalize(self.projector(label_features).float(), dim=-1)

    def forward(self, f_high: torch.Tensor) -> torch.Tensor:
        return self.classify(self.label_features(f_high))


class SADCL(Method):
    name = "sadcl"
    needs_hard_view = False
    label_regimes = ("full",)

    @staticmethod
    def add_arguments(group: argparse._ArgumentGroup) -> None:
        group.add_argument("--sadcl-layers", type=int, default=2, help="transformer decoder layers")
        group.add_argument("--sadcl-s2s-weight", type=float, default=0.1, help="sample-to-sample loss weight")
        group.add_argument("--sadcl-p2s-weight", type=float, default=0.05, help="prototype-to-sample loss weight")
        group.add_argument("--sadcl-s2s-temperature", type=float, default=0.2)
        group.add_argument("--sadcl-p2s-temperature", type=float, default=0.07)

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        a = ctx.args
        self.net = SADCLNet(ctx.backbone.channels[1], ctx.num_classes, a.dim, a.ffn, a.sadcl_layers, a.dropout)

    def param_groups(self) -> list[dict]:
        a, net = self.ctx.args, self.net
        return [
            {"name": "linear", "params": [*net.input_proj.parameters(), net.queries],
             "lr": a.lr_linear},
            {"name": "transformer", "params": list(net.decoder.parameters()), "lr": a.lr_transformer},
            {"name": "projector", "params": [*net.projector.parameters(), net.prototypes], "lr": a.lr_projector},
            {"name": "classifier", "params": [net.classifier_weight, net.classifier_bias], "lr": a.lr_classifier},
        ]

    @torch.no_grad()
    def predict_from_features(self, f_low: torch.Tensor, f_high: torch.Tensor) -> torch.Tensor:
        return self.net(f_high)

    def losses(self, f_high: torch.Tensor, observed: torch.Tensor) -> tuple[torch.Tensor, dict]:
        a = self.ctx.args
        with self.ctx.amp.autocast():
            h = self.net.label_features(f_high)
            logits = self.net.classify(h)
        z = self.net.embed(h)
        # Full labels are 1 / -1; any unknown (0) entry is left out of the BCE mean.
        known = (observed != 0).float()
        bce = F.binary_cross_entropy_with_logits(logits.float(), (observed > 0).float(), reduction="none")
        loss_cls = (bce * known).sum() / known.sum().clamp(min=1.0)
        loss_s2s = sample_to_sample_loss(z, observed, a.sadcl_s2s_temperature)
        loss_p2s = prototype_to_sample_loss(z, observed, self.net.prototypes.float(), a.sadcl_p2s_temperature)
        total = loss_cls + a.sadcl_s2s_weight * loss_s2s + a.sadcl_p2s_weight * loss_p2s
        return total, {"loss_cls": loss_cls.detach(), "loss_s2s": loss_s2s.detach(), "loss_p2s": loss_p2s.detach()}

    def train_step(self, batch: dict, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        _, f_high = self.clean_features(batch)
        loss, stats = self.losses(f_high, batch["observed"])
        self.ctx.amp.step(loss, optimizer)
        stats["loss"] = loss.detach()
        return stats
