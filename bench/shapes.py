"""The benchmarked shapes: one definition for the scripts (bench/<op>.py) and for pytest-benchmark
(bench/test_kernels.py), so that both measure the same cases against the same peers."""
from __future__ import annotations

# masked attention: Scob's encoder (8 heads of 64) over 14 x 14 or 28 x 28 feature maps
ATTENTION_HEADS = 8
ATTENTION_HEAD_DIM = 64
ATTENTION_FULL = dict(batches=(8, 32), lengths=(196, 784), keeps=(0.3, 0.5, 1.0))
ATTENTION_QUICK = dict(batches=(8,), lengths=(196, 784), keeps=(0.3, 1.0))
# the peers: sdpa_mask (what nn.MultiheadAttention with key_padding_mask runs), gather_sdpa, reference
ATTENTION_METHODS_FULL = ("auto", "cpp", "reference", "sdpa_mask", "gather_sdpa")
ATTENTION_METHODS_QUICK = ("auto", "cpp", "sdpa_mask")

# label contrastive: N = M anchors and candidates of dimension D, over 80 classes
CONTRASTIVE_CLASSES = 80
CONTRASTIVE_FULL = dict(sizes=(512, 4096, 16384), dims=(256, 1024))
CONTRASTIVE_QUICK = dict(sizes=(256, 512, 1024), dims=(256, 1024))
CONTRASTIVE_BACKENDS = ("auto", "cpp", "reference")   # reference: the peer


def attention_shapes(quick: bool) -> list[tuple[int, int, float]]:
    """(B, L, keep fraction) in the order the script runs them."""
    grid = ATTENTION_QUICK if quick else ATTENTION_FULL
    return [(b, length, keep) for b in grid["batches"] for length in grid["lengths"] for keep in grid["keeps"]]


def contrastive_shapes(quick: bool) -> list[tuple[int, int]]:
    """(N, D), D outer as the script runs them."""
    grid = CONTRASTIVE_QUICK if quick else CONTRASTIVE_FULL
    return [(n, d) for d in grid["dims"] for n in grid["sizes"]]


# hash dropout: the Scob heads' activations, [B, L, width]: the demo's 128 px (B 16, Lite0's 8 x 8
# level, d/2 = 128 and FFN 512) and the published 256 px heads (B 8, ResNet's 16 x 16 level, 512 / 2048)
DROPOUT_SHAPES = ((16, 64, 128), (16, 64, 512), (8, 256, 512), (8, 256, 2048))
DROPOUT_P = 0.1
DROPOUT_BACKENDS = ("auto", "reference", "torch")   # torch: F.dropout, the peer
