"""SST's options (flags --sst-*; defaults are the authors' public code's: HCPLab-SYSU/HCP-MLR-PL
scripts/SST.sh for the numbers, loss/SST.py and model/SST.py for the variants)."""
from __future__ import annotations

from dataclasses import dataclass

from scob_fast.cli_options import option

PAPER_PSEUDO_START_EPOCH = 5          # scripts/SST.sh generateLabelEpoch=5


@dataclass(frozen=True)
class SSTConfig:
    cli_prefix = "sst_"
    threshold: float = option(0.95, "initial pseudo-label threshold (public intraBCEMargin/interBCEMargin)")
    threshold_step: float = option(0.025, "threshold drop per epoch")
    threshold_floor: float = option(0.75, "lowest threshold")
    pseudo_start_epoch: int | None = option(None, "0-based epoch from which pseudo labels are used and the threshold "
                                            f"drops after each epoch (default {PAPER_PSEUDO_START_EPOCH} as the "
                                            "public script; a dataset may set its own, the 3-epoch demo uses 1)")
    bank_size: int = option(100, "cross-image bank size per class (public interExampleNumber)")
    intra_weight: float = option(1.0, "intra-image pseudo-label BCE weight")
    inter_weight: float = option(1.0, "cross-image pseudo-label BCE weight")
    cooc_weight: float = option(10.0, "co-occurrence loss weight")
    cooc_pairs: str = option("all", "pairs the co-occurrence loss scores: all (public: a pair with an unknown "
                             "label counts as negative) or observed (ours: only pairs whose two labels are "
                             "observed)", choices=("all", "observed"))
    distance_weight: float = option(0.05, "feature distance loss weight")
    distance_pairs: str = option("published", "feature distance loss: published (pos-pos, pos-neg and neg-neg "
                                 "pairs, negatives subsampled as the public code) or balanced (ours: mean over "
                                 "pos-pos plus mean over pos-neg, no sampling)", choices=("published", "balanced"))
    pool: str = option("auto", "2x2 average pooling (stride 2) of the backbone's last level before the 1x1 conv: "
                       "always (public), never, or auto (only when the grid is at least 8x8, so small demo grids "
                       "keep their positions)", choices=("auto", "always", "never"))
    class_embeddings: str | None = option(None, "fixed class embeddings [C, D] (.npy, or a torch file holding a "
                                          "tensor), e.g. the 300-d GloVe vectors of the class names as the paper; "
                                          "default: learned 300-d embeddings")
