"""Exact resume inside an epoch with every loader: the batches after `set_epoch(epoch, start_batch=k)`
on a fresh loader are bit for bit those of an uninterrupted epoch, whatever the worker count; the
skipped batches are not read; and no loader touches the global RNGs (python, numpy, torch)."""
import random

import numpy as np
import pytest
import torch

from scob_fast.data import (CachedFeatureLoader, FeatureCache, build_dataset, build_loader, dali_available,
                            observe_labels)
from scob_fast.data.testing import damage, make_folder

NO_DALI = pytest.mark.skipif(dali_available() is not None, reason="no DALI")
IMAGE_LOADERS = [("pil", 0), ("pil", 2), pytest.param("dali", 1, marks=NO_DALI)]
ALL_LOADERS = IMAGE_LOADERS + [("cached", 0)]
BATCH, HEAD = 3, 2  # 14 images: 4 batches per epoch (the last partial one dropped); resume at batch 2
HALF = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root, _ = make_folder(tmp_path_factory.mktemp("resume"), n_train=4, n_test=14)
    return build_dataset("folder", root, "test")


class _TinyBackbone(torch.nn.Module):
    """Two feature levels, as FeatureCache.build expects."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2)

    def forward(self, x):
        low = self.conv(x)
        return low, low.mean((2, 3), keepdim=True)


@pytest.fixture(scope="module")
def cache(dataset, tmp_path_factory):
    source = build_loader(dataset, observe_labels(dataset.labels, "full"), batch_size=4, image_size=16,
                          train=False, hard_view=False, loader="pil", workers=0, **HALF)
    return FeatureCache.build(tmp_path_factory.mktemp("cache") / "train", _TinyBackbone(), source,
                              len(dataset), flips=True, key={"test": 1})


def _make(kind, workers, dataset, cache):
    """A new loader object in a fresh state (train mode, hard view where the loader has one)."""
    observed = observe_labels(dataset.labels, "single")
    if kind == "cached":
        return CachedFeatureLoader(cache, dataset.labels, observed, BATCH, train=True, seed=3)
    return build_loader(dataset, observed, batch_size=BATCH, image_size=16, train=True, hard_view=True,
                        loader=kind, workers=workers, seed=3, device="cpu" if kind == "dali" else None, **HALF)


def _assert_same(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.mark.parametrize("kind,workers", ALL_LOADERS)
def test_resume_in_the_middle_of_an_epoch_is_exact(dataset, cache, kind, workers):
    whole = _make(kind, workers, dataset, cache)
    for epoch in (0, 1):
        whole.set_epoch(epoch)
        full = list(whole)
        assert len(full) == len(whole) == 4

        interrupted = _make(kind, workers, dataset, cache)
        interrupted.set_epoch(epoch)
        head = []
        for batch in interrupted:
            head.append(batch)
            if len(head) == HEAD:
                break
        assert interrupted.next_batch == HEAD, "the batch to resume from"

        resumed = _make(kind, workers, dataset, cache)  # as in a new process after a crash
        resumed.set_epoch(epoch, start_batch=HEAD)
        assert len(resumed) == 4, "len is the whole epoch's"
        tail = list(resumed)
        assert resumed.next_batch == 4
        _assert_same(head + tail, full)
        # the start applies to that pass only: the next epoch of the resumed loader is whole
        resumed.set_epoch(epoch + 1)
        whole_next = _make(kind, workers, dataset, cache)
        whole_next.set_epoch(epoch + 1)
        _assert_same(list(resumed), list(whole_next))


def test_worker_count_does_not_change_the_batches(dataset, cache):
    loaders = [_make("pil", w, dataset, cache) for w in (0, 2)]
    for epoch in (0, 1):
        for loader in loaders:
            loader.set_epoch(epoch)
        _assert_same(list(loaders[0]), list(loaders[1]))


@pytest.mark.parametrize("kind,workers", IMAGE_LOADERS)
def test_skipped_batches_are_not_read(dataset, cache, tmp_path, kind, workers):
    # the dataset's files copied, so that deleting some does not spoil the module's dataset
    copy = dataset.subset(range(len(dataset)))
    copy.image_paths = []
    for i, path in enumerate(dataset.image_paths):
        target = tmp_path / f"{i}.jpg"
        target.write_bytes(open(path, "rb").read())
        copy.image_paths.append(str(target))
    whole = _make(kind, workers, copy, cache)
    whole.set_epoch(1)
    tail = list(whole)[HEAD:]
    head_images = {int(i) for batch in whole.batch_indices()[:HEAD] for i in batch}
    for i in head_images:
        damage(copy.image_paths[i], "missing")
    resumed = _make(kind, workers, copy, cache)
    resumed.set_epoch(1, start_batch=HEAD)
    _assert_same(list(resumed), tail)
    assert resumed.skipped == 0, "no file of the skipped batches was opened"


@pytest.mark.parametrize("kind,workers", ALL_LOADERS)
def test_loaders_leave_the_global_rngs_alone(dataset, cache, kind, workers):
    loader = None
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    before = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    loader = _make(kind, workers, dataset, cache)
    for epoch, start in ((0, 0), (1, 0), (1, 3)):
        loader.set_epoch(epoch, start_batch=start)
        for _ in loader:
            pass
    after = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    assert after[0] == before[0], "python's random"
    assert all(np.array_equal(a, b) for a, b in zip(after[1], before[1])), "numpy's global RNG"
    assert torch.equal(after[2], before[2]), "torch's default generator"


def test_bad_positions_are_refused(dataset, cache):
    for kind in ("pil", "cached"):
        loader = _make(kind, 0, dataset, cache)
        with pytest.raises(ValueError, match=r"start_batch must be an int in \[0, 4\]"):
            loader.set_epoch(0, start_batch=5)
        with pytest.raises(ValueError, match="epoch must be an int >= 0"):
            loader.set_epoch(-1)
        loader.set_epoch(0, start_batch=4)
        assert list(loader) == [], "resuming after the last batch: nothing left of the epoch"


@NO_DALI
def test_dali_and_pil_draw_the_same_augmentation(dataset, cache):
    """Both loaders take a batch's flips and hard-view factors from draw_batch(seed, epoch, batch):
    their views differ only by decoder rounding (a wrong flip or factor would differ by far more)."""
    dali, pil = (_make(kind, 1, dataset, cache) for kind in ("dali", "pil"))
    for loader in (dali, pil):
        loader.set_epoch(1)
    for a, b in zip(dali, pil):
        assert torch.equal(a["index"], b["index"])
        for view in ("image", "image_hard"):
            diff = (a[view] - b[view]).abs().mean((1, 2, 3))
            assert diff.max() < 0.01, f"{view}: per-image mean |dali - pil| {diff.tolist()}"
