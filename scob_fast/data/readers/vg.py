"""Visual Genome in the multi-label layout of the HCP lab's code (VG-200 of SST, VG-500 of SSGRL/SADCL).

The files, as HCP-MLR-PL (SST, AAAI 2022) opens them (utils/dataloader.py get_data_path, datasets/vg.py):
  - the images, `<VG>/VG_100K/<file name>`;
  - one image list per official split, `train_list_500.txt` and `test_list_500.txt`: one file name a
    line, newline-terminated (vg.py takes `line[:-1]`); the "_500" lists serve VG-200 as well;
  - `vg_category_200_labels_index.json`: {file name: [class indices]}, one file for both lists; the
    label matrix is [len(list), 200] (vg.py hard-codes 200) with a 1 at each listed index.
HCP-MLR-PL keeps the lists and the JSON under its own ./data/vg/ (from its data.zip) and the images
elsewhere; SADCL's vg500 (code/lib_sadcl/dataset/get_dataset.py) and SSGRL (main_vg.sh) put all of
them in one directory, which is the layout read here. No public file names the classes: they are
numbered unless `<root>/class_names.txt` (one name a line) is there.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..multilabel import DatasetError
from .files import load_json, require_dir

VG_LIST_FILES = {"train": "train_list_500.txt", "test": "test_list_500.txt"}
VG_CLASS_FILE = "class_names.txt"


def vg_layout(num_classes: int, image_dir: str = "VG_100K") -> str:
    return (f"<root>/{image_dir}/<image>.jpg, <root>/{{train,test}}_list_500.txt (one image file name a line), "
            f"<root>/vg_category_{num_classes}_labels_index.json ({{file name: [class index 0..{num_classes - 1}]}})")


VG200_LAYOUT = vg_layout(200)


def _read_list(dataset: str, path: Path) -> list[str]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(dataset, path, f"unreadable image list ({type(exc).__name__}: {exc})") from None
    # vg.py drops each line's last character (its newline); stripping the line ending is the same on
    # the public files and does not eat a character of a last line without one.
    names = [line.strip() for line in text.splitlines()]
    names = [name for name in names if name]
    if not names:
        raise DatasetError(dataset, path, "image list is empty")
    return names


def _read_class_names(dataset: str, path: Path, num_classes: int) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise DatasetError(dataset, path, f"{len(names)} class names, expected {num_classes} (one a line)")
    return names


def _positives(dataset: str, label_path: Path, name: str, entry, num_classes: int) -> list[int]:
    if not isinstance(entry, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in entry):
        raise DatasetError(dataset, label_path, f"entry {name!r} is not a list of class indices: {entry!r}")
    bad = [k for k in entry if not 0 <= k < num_classes]
    if bad:
        # a VG-500 file read as VG-200 lands here (its indices run to 499)
        raise DatasetError(dataset, label_path, f"entry {name!r} has class index {bad[0]}, outside "
                                                f"0..{num_classes - 1} ({num_classes} classes)")
    return entry


def read_vg(root, official_split: str, *, dataset: str, num_classes: int, image_dir: str = "VG_100K"):
    """(class_names, image_paths, labels [N, num_classes] uint8) of `<official_split>_list_500.txt`
    ('train' or 'test'), rows in list order, labels from `vg_category_<num_classes>_labels_index.json`.
    Every listed image is kept, also one whose entry is empty (readers/files.py says why); a listed
    image without an entry is an error (the public code fails on it with a KeyError)."""
    root = Path(root)
    layout = vg_layout(num_classes, image_dir)
    require_dir(dataset, root, layout)
    list_path = root / VG_LIST_FILES["train" if official_split == "train" else "test"]
    label_path = root / f"vg_category_{num_classes}_labels_index.json"
    # every file checked before the (large) label file is parsed
    for path, what in ((list_path, "image list"), (label_path, "label file")):
        if not path.is_file():
            raise DatasetError(dataset, path, f"{what} is missing (expected layout: {layout})")
    base = root / image_dir
    require_dir(dataset, base, layout)
    names = _read_list(dataset, list_path)
    index = load_json(dataset, label_path)
    if not isinstance(index, dict):
        raise DatasetError(dataset, label_path, f"expected a JSON object {{file name: [class indices]}}, "
                                                f"got {type(index).__name__}")
    labels = np.zeros((len(names), num_classes), dtype=np.uint8)
    for row, name in enumerate(names):
        entry = index.get(name)
        if entry is None:
            raise DatasetError(dataset, label_path, f"no entry for {name!r} (line {row + 1} of {list_path.name})")
        labels[row, _positives(dataset, label_path, name, entry, num_classes)] = 1
    class_file = root / VG_CLASS_FILE
    if class_file.is_file():
        class_names = _read_class_names(dataset, class_file, num_classes)
    else:
        class_names = [f"class_{k:03d}" for k in range(num_classes)]
    return class_names, [str(base / name) for name in names], labels
