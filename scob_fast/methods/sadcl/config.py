"""SADCL's options (flags --sadcl-*). Defaults are the public code's (yu-gi-oh-leilei/SADCL): the file
each comes from is named in its help."""
from __future__ import annotations

from dataclasses import dataclass

from scob_fast.cli_options import option


@dataclass(frozen=True)
class SADCLConfig:
    cli_prefix = "sadcl_"
    # network (Query2Label head): scripts/sadcl/coco.sh --enc_layers 1 --dec_layers 2 --nheads 4
    encoder_layers: int = option(1, "Query2Label encoder layers (public: --enc_layers 1, scripts/sadcl/coco.sh)")
    decoder_layers: int = option(2, "Query2Label decoder layers, without self-attention (public: --dec_layers 2)")
    heads: int = option(4, "attention heads (public: --nheads 4); width and FFN are --dim and --ffn")
    projection_ratio: float = option(0.5, "projector output width as a fraction of --dim (public: 1024 of "
                                     "hidden 2048, code/lib_sadcl/models/sadcl.py)")
    prototypes: str | None = option(None, "file with the initial class prototypes [C, --dim] (torch.save of a "
                                    "tensor, or the public .npy): label features of a trained model, as the "
                                    "public data/prototype/*.npy; default: random N(0, 1)")
    # losses: code/lib_sadcl/engine.py  loss = aslloss + 100 * contrasloss + 50 * sem2pro
    cls_loss: str = option("asl", "classification loss: asl (public, aslloss.py) or bce", choices=("asl", "bce"))
    cls_weight: float = option(1000.0, "weight of the classification loss averaged over the B x C entries "
                               "(public: aslloss.py returns sum / B / C * 1000)")
    gamma_neg: float = option(4.0, "ASL gamma for negatives (public: --gamma_neg 4, scripts/sadcl/coco.sh)")
    gamma_pos: float = option(0.0, "ASL gamma for positives (public: --gamma_pos 0)")
    clip: float = option(0.0, "ASL probability margin for negatives (public: --loss_clip 0)")
    asl_eps: float = option(1e-5, "ASL log clamp (public: --eps 1e-5, code/lib_sadcl/config.py)")
    s2s_weight: float = option(100.0, "sample-to-sample (SSCL) loss weight (public: 100, engine.py)")
    p2s_weight: float = option(50.0, "prototype-to-sample (PSCL) loss weight (public: 50, engine.py)")
    s2s_temperature: float = option(0.2, "SSCL temperature (public: 0.2, multisupconloss.py)")
    p2s_temperature: float = option(0.07, "PSCL temperature (public: 0.07, sem2pro.py)")
    memory_bank: bool = option(True, "SSCL's second view is the memory bank (public); --no-sadcl-memory-bank: "
                               "SupCon over the batch's features only (our earlier variant)")
    s2s_anchors: str = option("public", "which SSCL entries are anchors: public (as multisupconloss.py runs: its "
                              "anchor mask is in another row order than its rows, see losses.py) or present "
                              "(every present label, as that file's docstring formula)",
                              choices=("public", "present"))
    bank_threshold: float = option(0.8, "a present label's feature enters the memory bank when its sigmoid "
                                   "score exceeds this (public: 0.8, sadcl.py memorybank_update)")
