"""Rules shared by the readers: a directory that must exist, a JSON file that must parse, and which
images a dataset keeps.

An image that its list gives no label at all is DROPPED: a COCO image without any instance
annotation, a folder/CSV row without labels. The single-positive protocol observes one positive per
training image, which such an image does not have, and Cole et al.'s COCO preprocessing (CVPR
2021, preproc/format_coco.py) keeps only annotated images, for val2014 as well.
The readers of the benchmarks' formatted lists keep every row, in list order, even a row without a
positive (a VOC image whose objects are all "difficult" under difficult="negative", a row of zeros
in a NUS-WIDE/CUB label matrix): the public protocols (scob_fast.data.protocols) index those lists
row by row and differ on such images (Cole drops them, SST keeps them), so each protocol decides.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..multilabel import DatasetError


def load_json(dataset: str, path: Path):
    if not path.is_file():
        raise DatasetError(dataset, path, "annotation file is missing")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise DatasetError(dataset, path, f"unreadable annotation file ({type(exc).__name__}: {exc})") from None


def require_dir(dataset: str, path: Path, layout: str):
    if not path.is_dir():
        raise DatasetError(dataset, path, f"missing directory (expected layout: {layout})")


def drop_unlabelled(paths: list[str], labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(paths, labels) of the rows with at least one positive, in list order (see the module doc)."""
    keep = np.flatnonzero(labels.any(axis=1))
    return [paths[i] for i in keep], labels[keep]
