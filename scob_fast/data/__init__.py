"""Datasets in their official layouts, label regimes, and the DALI / PIL / cached-feature loaders.

    from scob_fast.models.backbone import IMAGENET_MEAN, IMAGENET_STD   # normalisation is the backbone's
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

The dataset names, their readers and their run defaults are the registry's (`DATASETS`,
`dataset_spec(name)`); imports inside the package point one way: registry -> readers -> multilabel,
loaders -> {dali, pil, cached} -> loaders.base.
"""
from .datasets import build_dataset, protocol_split
from .demo import ensure_demo_dataset
from .labels import load_observed, observe_labels, observed_path, parse_regime, save_observed
from .loaders import (LOADERS, CachedFeatureLoader, CleanViewFeatures, DataLoadError, FeatureCache, build_loader,
                      cache_bytes_per_image, dali_available, epoch_order)
from .multilabel import DatasetError, MultiLabelDataset
from .readers import VOC_CLASSES
from .registry import DATASETS, GENERIC_DEFAULTS, DatasetSpec, dataset_names, dataset_spec

__all__ = [
    "DATASETS", "GENERIC_DEFAULTS", "DatasetSpec", "dataset_names", "dataset_spec",
    "VOC_CLASSES", "DatasetError", "MultiLabelDataset", "build_dataset", "protocol_split",
    "load_observed", "observe_labels", "observed_path", "parse_regime", "save_observed",
    "LOADERS", "DataLoadError", "build_loader", "dali_available", "epoch_order",
    "CachedFeatureLoader", "CleanViewFeatures", "FeatureCache", "cache_bytes_per_image", "demo_root",
]


def demo_root(**params):
    """Directory of the demo dataset (generated into the cache on first use)."""
    return ensure_demo_dataset(None, **params)
