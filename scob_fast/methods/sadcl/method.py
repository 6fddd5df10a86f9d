"""SADCL: Semantic-Aware Dual Contrastive Learning for multi-label image classification (Ma et al.,
ECAI 2023), trained as the public code (yu-gi-oh-leilei/SADCL) trains its second stage, on our frozen
backbone's last level.

Per step (code/lib_sadcl/engine.py, train):
1. label-level features h [B, C, d] from the Query2Label head (net.py), logits = GroupWiseLinear(h);
2. z = projector(h), z_bank = projector(memory bank), p = projector(prototypes) (models/sadcl.py,
   forward: the bank is detached, the prototypes learn);
3. loss = cls_weight * ASL (mean over B x C; public aslloss.py: sum / B / C * 1000)
        + 100 * SSCL(z, z_bank)  (multisupconloss.py)
        + 50 * PSCL(z, p)        (sem2pro.py)                        -> losses.py;
4. one optimiser step; then the memory bank update (models/sadcl.py, memorybank_update): slot b,
   class c takes h_bc (detached) where c is present in image b and sigmoid(logit_bc) > 0.8. The
   public code writes it between the forward and the backward; the values are the forward's either
   way, and the loss used the bank as it was before the write. We skip the write when the step is
   skipped for a non-finite loss (the public run stops instead).

Variants: --sadcl-cls-loss bce, --no-sadcl-memory-bank, and any weights. Our earlier variant
(class-averaged BCE + 0.1 SupCon over the batch + 0.05 x a softmax over the C prototypes) is not
kept: its prototype term was a different loss from the public PSCL; `--sadcl-cls-loss bce
--sadcl-cls-weight 1 --sadcl-s2s-weight 0.1 --sadcl-p2s-weight 0.05 --no-sadcl-memory-bank` is the
closest setting.
"""
from __future__ import annotations

import torch

from scob_fast.methods.base import Method, MethodContext
from scob_fast.methods.losses import partial_bce

from .config import SADCLConfig
from .losses import asymmetric_loss, prototype_to_sample_loss, sample_to_sample_loss
from .net import SADCLNet, load_prototypes


class SADCL(Method):
    name = "sadcl"
    needs_hard_view = False
    label_regimes = ("full",)

    config_class = SADCLConfig

    def __init__(self, ctx: MethodContext):
        super().__init__(ctx)
        a, heads = self.config, ctx.heads
        prototypes = load_prototypes(a.prototypes, ctx.num_classes, heads.dim) if a.prototypes else None
        self.net = SADCLNet(ctx.backbone.channels[1], ctx.num_classes, heads.dim, heads.ffn, heads=a.heads,
                            encoder_layers=a.encoder_layers, decoder_layers=a.decoder_layers,
                            dropout=heads.dropout, projection_ratio=a.projection_ratio,
                            bank_slots=ctx.batch_size, prototypes=prototypes)

    def describe(self) -> str:
        a = self.config
        cls = f"{a.cls_loss.upper()} x{a.cls_weight:g}"
        bank = "memory bank" if a.memory_bank else "no memory bank"
        protos = f"prototypes from {a.prototypes}" if a.prototypes else "random prototypes"
        return f"sadcl ({cls} + {a.s2s_weight:g} SSCL + {a.p2s_weight:g} PSCL, {bank}, {protos})"

    def param_groups(self) -> list[dict]:
        lr, net = self.ctx.lr, self.net
        return [
            {"name": "linear", "params": [*net.input_proj.parameters(), net.queries], "lr": lr.linear},
            {"name": "transformer", "params": list(net.transformer.parameters()), "lr": lr.transformer},
            {"name": "projector", "params": [*net.projector.parameters(), net.prototypes], "lr": lr.projector},
            {"name": "classifier", "params": [net.classifier_weight, net.classifier_bias], "lr": lr.classifier},
        ]

    def compiled_modules(self):
        return [self.net.transformer]

    @torch.no_grad()
    def predict_from_features(self, f_low: torch.Tensor, f_high: torch.Tensor) -> torch.Tensor:
        with self.ctx.amp.autocast():
            return self.net(f_high).float()

    def classification_loss(self, logits: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        a = self.config
        if a.cls_loss == "asl":
            loss = asymmetric_loss(logits, observed, gamma_neg=a.gamma_neg, gamma_pos=a.gamma_pos, clip=a.clip,
                                   eps=a.asl_eps)
        else:
            loss = partial_bce(logits, observed)
        return a.cls_weight * loss

    def losses(self, f_high: torch.Tensor, observed: torch.Tensor):
        """(total loss, logged terms, label features h, logits) of one batch (h and logits of the
        global batch under torchrun)."""
        a, net = self.config, self.net
        if a.memory_bank and f_high.shape[0] > net.memory_bank.shape[0]:
            raise ValueError(f"SADCL: a batch of {f_high.shape[0]} images, but the memory bank has "
                             f"{net.memory_bank.shape[0]} slots (one per position of a --batch-size batch)")
        with self.ctx.amp.autocast():
            h = net.label_features(f_high)
            # The losses and the bank see the global batch (one process: this batch): SSCL and PSCL
            # contrast images across ranks.
            h = self.ctx.dist.gather_with_grad(h)
            observed = self.ctx.dist.gather(observed)
            logits = net.classify(h)
        loss_cls = self.classification_loss(logits, observed)
        z = net.project(h)
        stats = {"loss_cls": loss_cls.detach()}
        total = loss_cls
        # A term whose weight is 0 is still computed, without a graph, so that the log shows it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and a.s2s_weight != 0):
            bank = net.project(net.memory_bank[: h.shape[0]].detach()) if a.memory_bank else None
            loss_s2s = sample_to_sample_loss(z, observed, a.s2s_temperature, bank=bank, anchors=a.s2s_anchors)
        with torch.set_grad_enabled(torch.is_grad_enabled() and a.p2s_weight != 0):
            loss_p2s = prototype_to_sample_loss(z, net.project(net.prototypes), observed, a.p2s_temperature)
        if a.s2s_weight != 0:
            total = total + a.s2s_weight * loss_s2s
        if a.p2s_weight != 0:
            total = total + a.p2s_weight * loss_p2s
        stats["loss_s2s"], stats["loss_p2s"] = loss_s2s.detach(), loss_p2s.detach()
        return total, stats, h, logits

    def train_step(self, batch: dict, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        _, f_high = self.clean_features(batch)
        observed = batch["observed"]
        loss, stats, h, logits = self.losses(f_high, observed)
        ok = self.ctx.amp.step(loss, optimizer)
        writes = torch.zeros((), device=logits.device)
        if ok:
            writes = self.net.update_memory_bank(h, logits, self.ctx.dist.gather(observed),
                                                 self.config.bank_threshold).float()
        stats["bank_writes"] = writes
        stats["loss"] = loss.detach()
        return stats
