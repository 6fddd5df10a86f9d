"""What every image loader shares: epoch order, bad-image accounting and the batch layout.

Both loaders (DALI and PIL) build on `LoaderBase`:
- order: train mode shuffles with numpy's default_rng([seed, epoch]), so the order depends only on the
  seed and the epoch (a resumed run sees the same batches); eval mode keeps dataset order;
- resume: `set_epoch(epoch, start_batch=k)` makes the next pass yield batches k, k+1, ... of that
  epoch, bit for bit those an uninterrupted pass yields (the flips and hard-view factors of batch k
  come from augment.draw_batch(seed, epoch, k)), without reading the k batches before; after each
  yielded batch `next_batch` is the number to pass as start_batch to continue after it;
- which files are bad is decided by the shared rules of scob_fast.data.images (`max_pixels` is the
  decompression-bomb limit), the same in both loaders and in the pre-flight check;
- a bad image (missing, unreadable, corrupt) is dropped from its batch with a warning and counted in
  `loader.skipped` (this epoch; names in `loader.skipped_files`); a batch that loses every image is
  not yielded. When more than `max_bad_fraction` of the dataset has failed in one epoch the loader
  stops with `DataLoadError` naming the first failures;
- data parallelism (`shard=(rank, world)`, torchrun): the batches stay those of one process (the
  global batch, same order, same len(loader)); rank r reads slots [r b, (r+1) b) of each, b =
  ceil(size / world), with the draws of the whole batch (`draw_shard`), so a sample's flip and
  hard view do not depend on the world size. Training batches (drop_last) must split evenly; the
  last batch of an eval pass is padded by repeating its last image, which the trainer drops after
  gathering the scores (by dataset index).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from ..augment import check_mean_std, draw_batch, subset_params
from ..images import DEFAULT_MAX_PIXELS
from ..multilabel import MultiLabelDataset

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEFAULT_MAX_BAD_FRACTION = 0.01
_WARN_LIMIT = 10


class DataLoadError(RuntimeError):
    """Too many images of a dataset could not be read, or the decode pipeline failed for good."""


def max_bad_fraction_default() -> float:
    from scob_fast import env
    return env.max_bad_image_fraction(DEFAULT_MAX_BAD_FRACTION)


def epoch_order(num_images: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(num_images)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_images)


def num_batches(num_images: int, batch_size: int, drop_last: bool) -> int:
    return num_images // batch_size if drop_last else -(-num_images // batch_size)


def batch_split(order: np.ndarray, batch_size: int, drop_last: bool) -> list[np.ndarray]:
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[s:s + batch_size] for s in range(0, stop, batch_size)]


def check_shard(shard, batch_size: int, drop_last: bool) -> tuple[int, int]:
    """(rank, world) as ints, or ValueError: a training batch must split evenly over the ranks."""
    try:
        rank, world = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be (rank, world), got {shard!r}") from None
    if not 0 <= rank < world:
        raise ValueError(f"shard (rank {rank}, world {world}): need 0 <= rank < world")
    if drop_last and batch_size % world:
        raise ValueError(f"--batch-size {batch_size} is the global batch and must be a multiple of the "
                         f"{world} processes (torchrun's world size)")
    return rank, world


def shard_slots(size: int, rank: int, world: int) -> np.ndarray | None:
    """The slots of a batch of `size` that rank `rank` reads: ceil(size / world) consecutive ones,
    the last slot repeated where the batch runs out (eval padding). None with one process (all)."""
    if world == 1:
        return None
    per = -(-size // world)
    return np.minimum(np.arange(rank * per, (rank + 1) * per), size - 1)


def draw_shard(seed: int, epoch: int, batch: int, size: int, slots: np.ndarray | None, *, flip: bool,
               hard_view: bool):
    """augment.draw_batch of the whole batch (`size` slots), restricted to this rank's `slots`."""
    flips, params = draw_batch(seed, epoch, batch, size, flip=flip, hard_view=hard_view)
    if slots is None:
        return flips, params
    return flips[slots], (None if params is None else subset_params(params, slots))


def shard_plan(batches: list[np.ndarray], rank: int, world: int) -> list[tuple[np.ndarray, np.ndarray | None, int]]:
    """(this rank's indices, their slots in the batch or None, the batch size) of every batch."""
    plan = []
    for indices in batches:
        slots = shard_slots(len(indices), rank, world)
        plan.append((indices if slots is None else indices[slots], slots, len(indices)))
    return plan


def check_position(epoch, start_batch, batches: int) -> tuple[int, int]:
    """(epoch, start_batch) as ints, or ValueError for a position the epoch does not have."""
    if not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
    if not isinstance(start_batch, (int, np.integer)) or not 0 <= start_batch <= batches:
        raise ValueError(f"start_batch must be an int in [0, {batches}] (the batches of an epoch), "
                         f"got {start_batch!r}")
    return int(epoch), int(start_batch)


class LoaderBase:
    """Epoch order, batching, bad-image accounting; subclasses turn index batches into tensors."""

    kind = "base"

    def __init__(self, dataset: MultiLabelDataset, observed, *, batch_size: int, image_size: int,
                 mean, std, train: bool, hard_view: bool, workers: int = 2, seed: int = 0,
                 dtype: torch.dtype = torch.float32, drop_last: bool | None = None,
                 max_bad_fraction: float | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 shard: tuple[int, int] = (0, 1)):
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
        if not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
        self.max_pixels = int(max_pixels)
        self.rank, self.world = check_shard(shard, self.batch_size, self.drop_last)
        self.rank_batch_size = -(-self.batch_size // self.world)   # the most images one rank gets
        self.epoch = 0
        self.start_batch = 0
        self.next_batch = 0
        self.skipped = 0
        self.skipped_files: list[tuple[str, str]] = []

    # -- order -------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch of the next pass; that pass (only that one) starts at batch
        `start_batch`. len(loader) stays the length of the whole epoch."""
        self.epoch, self.start_batch = check_position(epoch, start_batch, len(self))

    def batch_indices(self) -> list[np.ndarray]:
        """Dataset indices of every batch of the current epoch, in order."""
        return batch_split(epoch_order(len(self.dataset), self.seed, self.epoch, self.train),
                           self.batch_size, self.drop_last)

    def __len__(self) -> int:
        return num_batches(len(self.dataset), self.batch_size, self.drop_last)

    def _start_epoch(self) -> list[tuple[int, np.ndarray, np.ndarray | None, int]]:
        """Begin a pass: reset the per-epoch counts and return its (batch number, this rank's
        indices, their slots, batch size) from start_batch on (see `shard_plan`); start_batch then
        falls back to 0 so that a later pass is a whole epoch."""
        self.skipped = 0
        self.skipped_files = []
        first, self.start_batch = self.start_batch, 0
        self.next_batch = first
        plan = shard_plan(self.batch_indices(), self.rank, self.world)
        return [(k, *entry) for k, entry in enumerate(plan)][first:]

    # -- bad images --------------------------------------------------------------------------------
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

    def _assemble(self, index: torch.Tensor, image: torch.Tensor, hard: torch.Tensor | None,
                  flip: torch.Tensor | None = None) -> dict:
        index = index.to(torch.int64).reshape(-1)
        cpu_index = index.cpu()
        batch = {"image": image, "observed": self.observed[cpu_index], "labels": self.labels[cpu_index],
                 "index": cpu_index}
        if flip is not None:  # which images are mirrored (diagnostics compare masks with the true objects)
            batch["flip"] = flip.reshape(-1)
        if hard is not None:
            batch["image_hard"] = hard
        return batch

    def summary(self) -> str:
        return f"{self.kind} loader, epoch {self.epoch}: {self.skipped} image(s) skipped"

