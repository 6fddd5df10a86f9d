"""The single-positive benchmark's list format (NUS-WIDE, CUB): an image list and a label matrix per split."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..multilabel import DatasetError
from .files import require_dir

LIST_LAYOUT = ("<root>/formatted_{train,val}_images.npy + formatted_{train,val}_labels.npy "
               "(or {train,test}_images.txt + {train,test}_labels.txt), images under <root>/{image_dir}")


def _read_class_file(dataset: str, path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.split(maxsplit=1)
        # attributes.txt rows are "<id> <name>"; Concepts81.txt rows are bare names.
        names.append(parts[1] if len(parts) == 2 and parts[0].isdigit() else line)
    if not names:
        raise DatasetError(dataset, path, "class-name file is empty")
    return names


def read_list_format(root, official_split: str, *, dataset: str, image_dir: str,
                     class_files: tuple[str, ...] = ()):
    """NUS-WIDE / CUB in the single-positive benchmark's list format: an image list and a label matrix
    per official split (`formatted_<s>_images.npy` holding relative paths and `formatted_<s>_labels.npy`
    holding an [N, C] 0/1 matrix, with s = train or val, val being the official test split), or
    the same as text (`<s>_images.txt`, one path a line; `<s>_labels.txt`, C whitespace-separated 0/1).
    Image paths are relative to `<root>/<image_dir>`; class names come from the first of `class_files`
    present under root, else they are numbered. Every row is kept, also a row of zeros
    (readers/files.py says why)."""
    root = Path(root)
    require_dir(dataset, root, LIST_LAYOUT)
    names = ("train",) if official_split == "train" else ("val", "test")
    found = None
    for s in names:
        npy = (root / f"formatted_{s}_images.npy", root / f"formatted_{s}_labels.npy")
        txt = (root / f"{s}_images.txt", root / f"{s}_labels.txt")
        for pair in (npy, txt):
            if pair[0].is_file() or pair[1].is_file():
                found = pair
                break
        if found:
            break
    if found is None:
        raise DatasetError(dataset, root / f"formatted_{names[0]}_images.npy",
                           f"image list is missing (expected layout: {LIST_LAYOUT})")
    for path in found:
        if not path.is_file():
            raise DatasetError(dataset, path, f"file is missing (expected layout: {LIST_LAYOUT})")
    images_path, labels_path = found
    npy = images_path.suffix == ".npy"
    try:
        if npy:
            rel = [str(p) for p in np.load(images_path, allow_pickle=False).tolist()]
        else:
            rel = [line.strip() for line in images_path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise DatasetError(dataset, images_path, f"unreadable image list ({type(exc).__name__}: {exc})") from None
    try:
        labels = np.load(labels_path, allow_pickle=False) if npy else np.loadtxt(labels_path, ndmin=2)
    except (OSError, ValueError) as exc:
        raise DatasetError(dataset, labels_path, f"unreadable label matrix ({type(exc).__name__}: {exc})") from None
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != len(rel):
        raise DatasetError(dataset, labels_path, f"label matrix has shape {labels.shape}, expected "
                                                 f"[{len(rel)}, C] to match {images_path.name}")
    if not np.isin(labels, (0, 1)).all():
        raise DatasetError(dataset, labels_path, "label matrix must hold only 0 and 1")
    class_names = None
    for name in class_files:
        if (root / name).is_file():
            class_names = _read_class_file(dataset, root / name)
            if len(class_names) != labels.shape[1]:
                raise DatasetError(dataset, root / name, f"{len(class_names)} class names but the label "
                                                         f"matrix has {labels.shape[1]} columns")
            break
    if class_names is None:
        class_names = [f"class_{k:03d}" for k in range(labels.shape[1])]
    base = root / image_dir
    require_dir(dataset, base, LIST_LAYOUT.replace("{image_dir}", str(base.relative_to(root))))
    return class_names, [str(base / p) for p in rel], labels.astype(np.uint8)
