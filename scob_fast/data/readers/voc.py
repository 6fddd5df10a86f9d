"""PASCAL VOC (2007, 2012): ImageSets/Main lists with labels from the Annotations XML."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..multilabel import DatasetError
from .files import require_dir

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
VOC_LAYOUT = "<root>/VOCdevkit/VOC20xx/{JPEGImages,Annotations,ImageSets/Main} (root may also be VOCdevkit/ or VOC20xx/)"


def _voc_base(dataset: str, root: Path, year: str) -> Path:
    for candidate in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root):
        if (candidate / "JPEGImages").is_dir() or (candidate / "Annotations").is_dir():
            base = candidate
            break
    else:
        raise DatasetError(dataset, root, f"missing directory VOCdevkit/VOC{year} (expected layout: {VOC_LAYOUT})")
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        require_dir(dataset, base / sub, VOC_LAYOUT)
    return base


def read_voc(root, year: str, image_set: str, difficult: str = "negative", dataset: str | None = None):
    """(class_names, image_paths, labels) of ImageSets/Main/<image_set>.txt, labels from Annotations/*.xml.

    `difficult`: what a class present ONLY through objects flagged <difficult>1</difficult> becomes.
    "negative" (default) matches the per-class lists ImageSets/Main/<class>_<set>.txt that the
    single-positive code reads, where such images are marked 0 and only 1 counts as positive;
    "positive" counts difficult objects like any other. Every image of the list is kept, also one
    left without a positive (readers/files.py says why)."""
    dataset = dataset or f"voc{year}"
    if difficult not in ("negative", "positive"):
        raise DatasetError(dataset, None, f"difficult={difficult!r}: expected 'negative' or 'positive'")
    base = _voc_base(dataset, Path(root), year)
    list_path = base / "ImageSets" / "Main" / f"{image_set}.txt"
    if not list_path.is_file():
        raise DatasetError(dataset, list_path, f"image-set list is missing (expected layout: {VOC_LAYOUT})")
    ids = [line.split()[0] for line in list_path.read_text().splitlines() if line.strip()]
    col = {name: k for k, name in enumerate(VOC_CLASSES)}
    labels = np.zeros((len(ids), len(VOC_CLASSES)), dtype=np.uint8)
    for row, image_id in enumerate(ids):
        xml_path = base / "Annotations" / f"{image_id}.xml"
        try:
            tree = ET.parse(xml_path)
        except FileNotFoundError:
            raise DatasetError(dataset, xml_path, f"annotation file is missing (listed in {list_path.name})") from None
        except (OSError, ET.ParseError) as exc:
            raise DatasetError(dataset, xml_path, f"unreadable annotation file ({exc})") from None
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip().lower()
            if name not in col:
                raise DatasetError(dataset, xml_path, f"object class {name!r} is not in the class list "
                                                      f"({', '.join(VOC_CLASSES)})")
            is_difficult = (obj.findtext("difficult") or "0").strip() == "1"
            if is_difficult and difficult == "negative":
                continue
            labels[row, col[name]] = 1
    paths = [str(base / "JPEGImages" / f"{i}.jpg") for i in ids]
    return list(VOC_CLASSES), paths, labels
