"""`build_loader`: batches of (clean view, hard view, observed labels, full labels, index).

Imports point one way: this module picks a loader from `dali` / `pil` (or `cached` for frozen-backbone
features), and those build on `base`, which knows none of them.
"""
from __future__ import annotations

import torch

from ..images import DEFAULT_MAX_PIXELS
from ..multilabel import MultiLabelDataset
from .base import DataLoadError, LoaderBase, epoch_order
from .cached import CachedFeatureLoader, CleanViewFeatures, FeatureCache, cache_bytes_per_image
from .dali import DaliLoader  # imports nvidia.dali only when a DaliLoader builds its pipeline
from .pil import PilLoader

LOADERS = ("auto", "dali", "pil")

__all__ = ["LOADERS", "build_loader", "dali_available", "DataLoadError", "LoaderBase", "epoch_order",
           "DaliLoader", "PilLoader",
           "CachedFeatureLoader", "CleanViewFeatures", "FeatureCache", "cache_bytes_per_image"]


def dali_available() -> str | None:
    """None when DALI imports, else why it does not."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception as exc:  # any import failure means "not usable here"
        return f"nvidia.dali is not importable ({type(exc).__name__}: {exc})"
    return None


def build_loader(dataset: MultiLabelDataset, observed, *, batch_size: int, image_size: int, mean, std,
                 train: bool, hard_view: bool, loader: str = "auto", workers: int = 2, seed: int = 0,
                 dtype: torch.dtype = torch.float32, drop_last: bool | None = None,
                 max_bad_fraction: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 device: str | None = None, shard: tuple[int, int] = (0, 1)):
    """An iterable of batch dicts (see the module doc of scob_fast.data) with `__len__`,
    `set_epoch(epoch, start_batch=0)` (resume inside an epoch; `next_batch` after each batch) and a
    per-epoch `skipped` count. loader="auto" picks DALI when it imports. `max_pixels`: images whose
    header claims more pixels are skipped as decompression bombs (both loaders, same rule).
    `device` (DALI only): "cuda" decodes on the GPU ("mixed") and returns CUDA tensors, "cpu" never
    touches a GPU; default cuda when torch sees one. `shard=(rank, world)`: this process reads its
    slots of every batch (data parallelism; see loaders.base)."""
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {LOADERS}, got {loader!r}")
    kwargs = dict(batch_size=batch_size, image_size=image_size, mean=mean, std=std, train=train,
                  hard_view=hard_view, workers=workers, seed=seed, dtype=dtype, drop_last=drop_last,
                  max_bad_fraction=max_bad_fraction, max_pixels=max_pixels, shard=shard)
    if loader == "auto":
        loader = "dali" if dali_available() is None else "pil"
    if loader == "dali":
        reason = dali_available()
        if reason is not None:
            raise RuntimeError(f"loader='dali' requested but {reason}; use loader='pil'")
        return DaliLoader(dataset, observed, device=device, **kwargs)
    if device not in (None, "cpu"):
        raise ValueError(f"device={device!r}: the PIL loader returns CPU tensors (move them in the trainer)")
    return PilLoader(dataset, observed, **kwargs)
