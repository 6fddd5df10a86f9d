"""COCO-2014 in its official layout (also the layout the demo generator writes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..multilabel import DatasetError
from .files import drop_unlabelled, load_json, require_dir

COCO_LAYOUT = "<root>/train2014/*.jpg, <root>/val2014/*.jpg, <root>/annotations/instances_{train,val}2014.json"


def read_coco(root, official_split: str, dataset: str = "coco2014"):
    """(class_names, image_paths, labels) of COCO-2014 `official_split` ('train' or 'val').

    Classes are the annotation file's categories sorted by category id (the order the single-positive
    literature uses: person, bicycle, car, ...). Images without any instance annotation are DROPPED
    (readers/files.py says why). Crowd annotations count as positives."""
    root = Path(root)
    image_dir = root / f"{official_split}2014"
    ann_path = root / "annotations" / f"instances_{official_split}2014.json"
    require_dir(dataset, root, COCO_LAYOUT)
    require_dir(dataset, image_dir, COCO_LAYOUT)
    data = load_json(dataset, ann_path)
    try:
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        images = data["images"]
        annotations = data["annotations"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(dataset, ann_path, f"not a COCO instances file (missing or bad {exc})") from None
    cat_to_col = {int(c["id"]): k for k, c in enumerate(categories)}
    image_to_row = {}
    for image in images:
        image_to_row.setdefault(int(image["id"]), len(image_to_row))
    labels = np.zeros((len(image_to_row), len(categories)), dtype=np.uint8)
    for ann in annotations:
        cat = int(ann["category_id"])
        if cat not in cat_to_col:
            raise DatasetError(dataset, ann_path, f"annotation {ann.get('id')} has category_id {cat}, "
                                                  "which is not in the class list ('categories')")
        row = image_to_row.get(int(ann["image_id"]))
        if row is None:
            raise DatasetError(dataset, ann_path, f"annotation {ann.get('id')} refers to image_id "
                                                  f"{ann['image_id']}, which is not in 'images'")
        labels[row, cat_to_col[cat]] = 1
    file_names = [None] * len(image_to_row)
    for image in images:
        file_names[image_to_row[int(image["id"])]] = image["file_name"]
    paths, labels = drop_unlabelled([str(image_dir / name) for name in file_names], labels)
    return [c["name"] for c in categories], paths, labels
