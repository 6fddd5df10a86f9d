"""Datasets in their official layouts, label regimes, and the DALI / PIL loaders.

    ds = build_dataset("voc2012", "/data/voc", "train")          # full labels, protocol split
    observed = observe_labels(ds.labels, "single")              # int8: 1 / -1 / 0 (unknown)
    save_observed(run_dir, observed, regime="single", seed=1200)
    loader = build_loader(ds, observed, batch_size=16, image_size=448, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD, train=True, hard_view=True)
    for epoch in range(E):
        loader.set_epoch(epoch)
        for batch in loader: ...   # image, image_hard, observed, labels, index
        print(loader.summary())   # images skipped this epoch

A batch: `image` [B, 3, S, S] (dtype as asked) normalised with mean/std; `image_hard` (train with
hard_view) the hard-augmented copy of the same resized and flipped image; `observed` float [B, C] in
{1, 0, -1}; `labels` float [B, C] full labels; `index` int64 [B] dataset indices.
"""
from .datasets import (DATASETS, VOC_CLASSES, DatasetError, MultiLabelDataset, build_dataset,
                       protocol_split)
from .labels import load_observed, observe_labels, observed_path, parse_regime, save_observed
from .loaders import LOADERS, DataLoadError, build_loader, dali_available, epoch_order

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)

__all__ = [
    "DATASETS", "VOC_CLASSES", "DatasetError", "MultiLabelDataset", "build_dataset", "protocol_split",
    "load_observed", "observe_labels", "observed_path", "parse_regime", "save_observed",
    "LOADERS", "DataLoadError", "build_loader", "dali_available", "epoch_order",
    "IMAGENET_MEAN", "IMAGENET_STD", "LITE0_MEAN", "LITE0_STD", "demo_root",
]


def demo_root(**params):
    """Directory of the demo dataset (generated into the cache on first use)."""
    from .demo import ensure_demo_dataset
    return ensure_demo_dataset(None, **params)
