"""`build_loader`: batches of (clean view, hard view, observed labels, full labels, index).

Both loaders (DALI and PIL) share this module's epoch order, bad-image accounting and batch layout:
- order: train mode shuffles with numpy's default_rng([seed, epoch]), so the order depends only on the
  seed and the epoch (a resumed run sees the same batches); eval mode keeps dataset order;
- a bad image (missing, unreadable, corrupt) is dropped from its batch with a warning and counted in
  `loader.skipped` (this epoch; names in `loader.skipped_files`); a batch that loses every image is
  not yielded. When more than `max_bad_fraction` of the dataset has failed in one epoch the loader
  stops with `DataLoadError` naming the first failures.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .augment import check_mean_std
from .datasets import MultiLabelDataset

LOADERS = ("auto", "dali", "pil")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEFAULT_MAX_BAD_FRACTION = 0.01
_WARN_LIMIT = 10


class DataLoadError(RuntimeError):
    """Too many images of a dataset could not be read, or the decode pipeline failed for good."""


def dali_available() -> str | None:
    """None when DALI imports, else why it does not."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except Exception as exc:  # any import failure means "not usable here"
        return f"nvidia.dali is not importable ({type(exc).__name__}: {exc})"
    return None


def max_bad_fraction_default() -> float:
    from scob_fast import env
    return env.max_bad_image_fraction(DEFAULT_MAX_BAD_FRACTION)


def epoch_order(num_images: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(num_images)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_images)


class LoaderBase:
    """Epoch order, batching, bad-image accounting; subclasses turn index batches into tensors."""

    kind = "base"

    def __init__(self, dataset: MultiLabelDataset, observed, *, batch_size: int, image_size: int,
                 mean, std, train: bool, hard_view: bool, workers: int = 2, seed: int = 0,
                 dtype: torch.dtype = torch.float32, drop_last: bool | None = None,
                 max_bad_fraction: float | None = None):
        if not isinstance(dataset, MultiLabelDataset):
            raise TypeError(f"dataset must be a MultiLabelDataset, got {type(dataset).__name__}")
        if len(dataset) == 0:
            raise ValueError(f"dataset {dataset.name!r} ({dataset.split}) has no images")
        observed = np.asarray(observed)
        if observed.shape != dataset.labels.shape:
            raise ValueError(f"observed has shape {observed.shape}, expected {dataset.labels.shape} "
                             f"(the labels of dataset {dataset.name!r}, split {dataset.split!r})")
        if observed.size and not np.isin(observed, (-1, 0, 1)).all():
            raise ValueError("observed must hold only -1, 0 and 1")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(image_size, (int, np.integer)) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype}")
        if not isinstance(workers, (int, np.integer)) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        self.dataset = dataset
        self.observed = torch.from_numpy(observed.astype(np.float32))
        self.labels = torch.from_numpy(dataset.labels.astype(np.float32))
        self.batch_size, self.image_size = int(batch_size), int(image_size)
        self.mean, self.std = check_mean_std(mean, std)
        self.train, self.hard_view = bool(train), bool(hard_view)
        self.workers, self.seed, self.dtype = int(workers), int(seed), dtype
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        if self.drop_last and len(dataset) < self.batch_size:
            raise ValueError(f"drop_last with batch_size={batch_size} but only {len(dataset)} images: no batch")
        fraction = max_bad_fraction_default() if max_bad_fraction is None else float(max_bad_fraction)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {fraction}")
        self.max_bad_fraction = fraction
        self.epoch = 0
        self.skipped = 0
        self.skipped_files: list[tuple[str, str]] = []

    # -- order -------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batch_indices(self) -> list[np.ndarray]:
        order = epoch_order(len(self.dataset), self.seed, self.epoch, self.train)
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        return [order[s:s + self.batch_size] for s in range(0, stop, self.batch_size)]

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    # -- bad images --------------------------------------------------------------------------------
    def _start_epoch(self) -> None:
        self.skipped = 0
        self.skipped_files = []

    def _record_bad(self, index: int, reason: str) -> None:
        path = self.dataset.image_paths[int(index)]
        self.skipped += 1
        self.skipped_files.append((path, reason))
        if self.skipped <= _WARN_LIMIT:
            more = " (further ones counted, not shown)" if self.skipped == _WARN_LIMIT else ""
            warnings.warn(f"{self.dataset.name}: skipping image {path}: {reason}{more}", RuntimeWarning, stacklevel=3)
        if self.skipped > self.max_bad_fraction * len(self.dataset):
            shown = "; ".join(f"{p}: {r}" for p, r in self.skipped_files[:5])
            raise DataLoadError(
                f"{self.dataset.name} ({self.dataset.split}): {self.skipped} of {len(self.dataset)} images "
                f"failed in epoch {self.epoch}, more than max_bad_fraction={self.max_bad_fraction:g} "
                f"(SCOB_FAST_MAX_BAD_IMAGE_FRACTION). First failures: {shown}")

    def _assemble(self, index: torch.Tensor, image: torch.Tensor, hard: torch.Tensor | None) -> dict:
        index = index.to(torch.int64).reshape(-1)
        cpu_index = index.cpu()
        batch = {"image": image, "observed": self.observed[cpu_index], "labels": self.labels[cpu_index],
                 "index": cpu_index}
        if hard is not None:
            batch["image_hard"] = hard
        return batch

    def summary(self) -> str:
        return f"{self.kind} loader, epoch {self.epoch}: {self.skipped} image(s) skipped"


def build_loader(dataset: MultiLabelDataset, observed, *, batch_size: int, image_size: int, mean, std,
                 train: bool, hard_view: bool, loader: str = "auto", workers: int = 2, seed: int = 0,
                 dtype: torch.dtype = torch.float32, drop_last: bool | None = None,
                 max_bad_fraction: float | None = None, device: str | None = None):
    """An iterable of batch dicts (see the module doc of scob_fast.data) with `__len__`,
    `set_epoch(epoch)` and a per-epoch `skipped` count. loader="auto" picks DALI when it imports.
    `device` (DALI only): "cuda" decodes on the GPU ("mixed") and returns CUDA tensors, "cpu" never
    touches a GPU; default cuda when torch sees one."""
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {LOADERS}, got {loader!r}")
    kwargs = dict(batch_size=batch_size, image_size=image_size, mean=mean, std=std, train=train,
                  hard_view=hard_view, workers=workers, seed=seed, dtype=dtype, drop_last=drop_last,
                  max_bad_fraction=max_bad_fraction)
    if loader == "auto":
        loader = "dali" if dali_available() is None else "pil"
    if loader == "dali":
        reason = dali_available()
        if reason is not None:
            raise RuntimeError(f"loader='dali' requested but {reason}; use loader='pil'")
        from .dali_loader import DaliLoader
        return DaliLoader(dataset, observed, device=device, **kwargs)
    if device not in (None, "cpu"):
        raise ValueError(f"device={device!r}: the PIL loader returns CPU tensors (move them in the trainer)")
    from .pil_loader import PilLoader
    return PilLoader(dataset, observed, **kwargs)
