"""`--cache-features`: the frozen backbone's two feature levels, computed once, memory-mapped (fp16).

A frozen backbone in eval mode gives the same features for the same image every epoch, so methods
that need no image-space augmentation beyond the horizontal flip can train at head cost. For each
training image the cache holds the features of the resized image and of its mirror; val/test hold
the unflipped features only. Disk per image (fp16, x2 for the flip): 2 * 2 bytes * (C_low * H_low *
W_low + C_high * H_high * W_high) — 110 KB for EfficientNet-Lite0 at 128 px, 4.8 MB for ResNet-50 at
448 px (so about 390 GB for COCO-2014 train at full size: size the cache before you ask for it).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from .base import batch_split, check_position, check_shard, draw_shard, epoch_order, num_batches, shard_plan

CACHE_VERSION = 1


def cache_bytes_per_image(shapes: tuple[tuple[int, ...], tuple[int, ...]], views: int) -> int:
    return views * 2 * sum(int(np.prod(s)) for s in shapes)


@torch.no_grad()
def feature_bytes_per_image(backbone, image_size: int, views: int) -> int:
    """The cache's disk bytes per image for this backbone and size (one probe forward on a blank image)."""
    device = next(backbone.parameters()).device
    f_low, f_high = backbone(torch.zeros(1, 3, image_size, image_size, device=device))
    return cache_bytes_per_image((tuple(f_low.shape[1:]), tuple(f_high.shape[1:])), views)


def cached(path: Path, key: dict) -> bool:
    """Is a complete cache for `key` already at `path` (FeatureCache.build would only open it)?"""
    meta_path = Path(path) / "meta.json"
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    return meta.get("key") == key and meta.get("version") == CACHE_VERSION


def disk_shortfall(root: Path, needed_bytes: int, margin: float = 1.05) -> str | None:
    """Why `needed_bytes` (plus a 5 % margin) would not fit on the filesystem of `root`, or None."""
    probe = Path(root)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed_bytes * margin <= free:
        return None
    return (f"the feature cache needs {needed_bytes / 2**30:.2f} GiB in {root}, and {probe} has "
            f"{free / 2**30:.2f} GiB free")


class FeatureCache:
    """Two memory-mapped arrays [N, views, C, H, W] (float16) plus meta.json, written last."""

    def __init__(self, path: Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"feature cache {self.path} is incomplete (no meta.json)")
        self.meta = json.loads(meta_path.read_text())
        self.views = self.meta["views"]
        self.low = np.memmap(self.path / "low.f16", dtype=np.float16, mode="r", shape=tuple(self.meta["low_shape"]))
        self.high = np.memmap(self.path / "high.f16", dtype=np.float16, mode="r", shape=tuple(self.meta["high_shape"]))

    def __len__(self) -> int:
        return self.low.shape[0]

    @staticmethod
    @torch.no_grad()
    def build(path: Path, backbone, loader, num_images: int, flips: bool, key: dict) -> "FeatureCache":
        """Run `backbone` over an eval-mode `loader` (dataset order) and store the features."""
        path = Path(path)
        if cached(path, key):
            return FeatureCache(path)
        tmp = path.with_name(path.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        views = 2 if flips else 1
        low = high = None
        written = 0
        device = next(backbone.parameters()).device
        for batch in loader:
            images = batch["image"].to(device)
            variants = [images, images.flip(-1)] if flips else [images]
            outputs = [backbone(v) for v in variants]
            if low is None:
                low_shape = (num_images, views, *outputs[0][0].shape[1:])
                high_shape = (num_images, views, *outputs[0][1].shape[1:])
                low = np.memmap(tmp / "low.f16", dtype=np.float16, mode="w+", shape=low_shape)
                high = np.memmap(tmp / "high.f16", dtype=np.float16, mode="w+", shape=high_shape)
            index = batch["index"].numpy()
            for view, (f_low, f_high) in enumerate(outputs):
                low[index, view] = f_low.float().cpu().numpy().astype(np.float16)
                high[index, view] = f_high.float().cpu().numpy().astype(np.float16)
            written += len(index)
        if low is None:
            raise RuntimeError(f"feature cache {path}: the loader produced no images")
        low.flush()
        high.flush()
        meta = {"version": CACHE_VERSION, "key": key, "views": views, "low_shape": list(low.shape),
                "high_shape": list(high.shape), "images_written": written,
                "bytes_per_image": cache_bytes_per_image((low.shape[2:], high.shape[2:]), views)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
        return FeatureCache(path)


class CachedFeatureLoader:
    """Batches of cached features with the loader's batch layout (features instead of images).

    Train mode shuffles with the same seed/epoch rule as the image loaders and picks the mirrored
    view where the image loaders would flip: the flips of batch k are augment.draw_batch(seed,
    epoch, k)'s, so `set_epoch(epoch, start_batch=k)` resumes bit for bit (see loaders.base).
    `shard=(rank, world)` reads this rank's slots of each batch, as the image loaders do.
    """

    def __init__(self, cache: FeatureCache, labels: np.ndarray, observed: np.ndarray | None, batch_size: int,
                 train: bool, seed: int = 0, drop_last: bool | None = None, shard: tuple[int, int] = (0, 1)):
        self.cache, self.labels = cache, labels
        self.observed = observed if observed is not None else np.zeros_like(labels, dtype=np.int8)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.drop_last = train if drop_last is None else drop_last
        self.rank, self.world = check_shard(shard, batch_size, self.drop_last)
        self.epoch = 0
        self.start_batch = 0
        self.next_batch = 0
        self.skipped = 0
        self.dataset = range(len(cache))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """As LoaderBase.set_epoch: the next pass (only that one) starts at batch `start_batch`."""
        self.epoch, self.start_batch = check_position(epoch, start_batch, len(self))

    def __len__(self) -> int:
        return num_batches(len(self.cache), self.batch_size, self.drop_last)

    def __iter__(self):
        batches = batch_split(epoch_order(len(self.cache), self.seed, self.epoch, self.train),
                              self.batch_size, self.drop_last)
        plan = shard_plan(batches, self.rank, self.world)
        first, self.start_batch = self.start_batch, 0
        self.next_batch = first
        mirrored = self.train and self.cache.views > 1
        for k in range(first, len(batches)):
            index, slots, size = plan[k]
            flips, _ = draw_shard(self.seed, self.epoch, k, size, slots, flip=mirrored, hard_view=False)
            view = flips.astype(np.int64)
            self.next_batch = k + 1
            yield {
                "features_low": torch.from_numpy(np.asarray(self.cache.low[index, view], dtype=np.float32)),
                "features_high": torch.from_numpy(np.asarray(self.cache.high[index, view], dtype=np.float32)),
                "observed": torch.from_numpy(self.observed[index].astype(np.float32)),
                "labels": torch.from_numpy(self.labels[index].astype(np.float32)),
                "index": torch.from_numpy(index.astype(np.int64)),
            }


class CleanViewFeatures:
    """An image loader's training batches with the clean view's cached features attached.

    For a method whose hard view is an image-space augmentation (Scob): the images still come from
    the loader, which builds the hard view from them, while the clean view's two feature levels come
    from the cache (`features_low` / `features_high`, the mirrored view where the batch's `flip` says
    the loader mirrored the image), so only the hard view runs through the backbone. The cache must
    hold two views per image (built with flips) and the loader must report its flips. Epochs,
    positions and skipped images are the wrapped loader's.
    """

    def __init__(self, loader, cache: FeatureCache):
        if cache.views != 2:
            raise ValueError(f"feature cache {cache.path}: the clean view needs the mirrored features too "
                             f"(views = 2), it holds {cache.views}")
        if len(cache) != len(loader.dataset):
            raise ValueError(f"feature cache {cache.path} holds {len(cache)} images, the loader's dataset "
                             f"{len(loader.dataset)}")
        self.loader, self.cache = loader, cache

    def __getattr__(self, name):
        # set_epoch, next_batch, skipped, dataset, summary, ...: the image loader's own
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if "flip" not in batch:
                raise RuntimeError("CleanViewFeatures: the image loader did not report its flips")
            index = batch["index"].cpu().numpy()
            view = batch["flip"].cpu().numpy().astype(np.int64)
            device = batch["image"].device
            batch["features_low"] = torch.from_numpy(np.asarray(self.cache.low[index, view], dtype=np.float32)).to(device)
            batch["features_high"] = torch.from_numpy(np.asarray(self.cache.high[index, view], dtype=np.float32)).to(device)
            yield batch
