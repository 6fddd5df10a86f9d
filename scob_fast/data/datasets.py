"""`build_dataset`: a registered dataset read from its official on-disk layout, split by the protocol.

Every dataset comes back as a `MultiLabelDataset` with FULL multi-hot labels; hiding labels is the job of
`scob_fast.data.labels.observe_labels`. Splits follow the single-positive protocol (Cole et al.,
CVPR 2021): the official training list is split 80/20 into "train"/"val" with a RandomState(1200)
permutation, and the official validation/test list is "test" (always full labels).

| name      | official train list          | "test" is                  |
|-----------|------------------------------|----------------------------|
| coco2014  | train2014 (annotated images) | val2014 (annotated images) |
| voc2007   | trainval                     | test                       |
| voc2012   | train                        | val                        |
| nuswide   | formatted_train_*            | formatted_val_* (or _test_)|
| cub       | formatted_train_*            | formatted_val_* (or _test_)|
| vg200     | train_list_500.txt           | test_list_500.txt          |
| folder    | train.csv / train.json       | test.csv / test.json       |
| csv       | (as folder)                  | (as folder)                |
| demo      | train2014 (generated)        | val2014 (generated)        |

Which reader a name uses, with which options, is its entry in scob_fast.data.registry; the readers
themselves (one per format) are in scob_fast.data.readers.
"""
from __future__ import annotations

import numpy as np

from .multilabel import MultiLabelDataset
from .registry import dataset_spec

SPLITS = ("train", "val", "test")
SPLIT_SEED = 1200
VAL_FRACTION = 0.2


def protocol_split(num_images: int, seed: int = SPLIT_SEED, val_fraction: float = VAL_FRACTION):
    """(train_idx, val_idx) of the official training list as Cole et al.'s datasets.py generate_split
    makes them: n_val = int(np.round(val_fraction * N)) (round half to even), perm = RandomState(seed)
    .permutation(N), train = the FIRST N - n_val entries of perm, val = the LAST n_val; both sorted.
    As there, n_val = 0 (N <= 2 at 20 %) makes perm[-0:] the whole list: val is then every image."""
    perm = np.random.RandomState(seed).permutation(num_images)
    num_val = int(np.round(val_fraction * num_images))
    return np.sort(perm[:num_images - num_val]), np.sort(perm[-num_val:])


def build_dataset(name: str, root=None, split: str = "train", **opts) -> MultiLabelDataset:
    """Read dataset `name` from `root` and return `split` ("train", "val" or "test") with full labels.

    Common options: split_seed (1200), val_fraction (0.2); the rest go to the dataset's reader, which
    accepts the spec's `options`: voc*: difficult ("negative"|"positive"); nuswide/cub/vg200: image_dir;
    folder/csv: classes (class-name file), list_file (test list when `root` is a single list file);
    demo: root may be None (the cache), plus the generator's parameters (num_classes, train_images,
    val_images, image_size, seed)."""
    spec = dataset_spec(name)
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    split_seed = int(opts.pop("split_seed", SPLIT_SEED))
    val_fraction = float(opts.pop("val_fraction", VAL_FRACTION))
    unknown = set(opts) - set(spec.options)
    if unknown:
        raise TypeError(f"build_dataset({name!r}): unknown option(s) {sorted(unknown)}; "
                        f"allowed: {sorted(spec.options)}")
    if spec.needs_root and root is None:
        raise ValueError(f"dataset {spec.name!r} needs root= (the directory holding its official layout: "
                         f"{spec.layout})")
    official = "train" if split in ("train", "val") else "test"
    classes, paths, labels = spec.read(root, official, **opts)
    if spec.locate is not None:
        root = spec.locate(root, **opts)

    full = MultiLabelDataset(spec.name, classes, paths, labels, split=split, root=str(root))
    if official == "test":
        return full
    train_idx, val_idx = protocol_split(len(full), split_seed, val_fraction)
    return full.subset(train_idx if split == "train" else val_idx, split=split)
