"""Any images listed in CSV/JSON files (`folder`, alias `csv`): rows 'path,label1;label2'."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from ..multilabel import DatasetError
from .files import drop_unlabelled, require_dir

FOLDER_LAYOUT = "<root>/train.csv|train.json (+ test.csv|test.json, optional classes.txt), rows 'path,label1;label2'"


def _find_list(root: Path, stem: str) -> Path | None:
    for ext in (".csv", ".json"):
        if (root / f"{stem}{ext}").is_file():
            return root / f"{stem}{ext}"
    return None


def _read_rows(dataset: str, path: Path) -> list[tuple[str, list[str]]]:
    rows = []
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            items = data.items() if isinstance(data, dict) else data
            for item in items:
                if isinstance(item, dict):
                    image, labels = item["path"], item.get("labels", item.get("label", []))
                else:
                    image, labels = item
                if isinstance(labels, str):
                    labels = labels.split(";")
                rows.append((str(image), [str(x).strip() for x in labels if str(x).strip()]))
        else:
            with open(path, newline="") as f:
                for k, rec in enumerate(csv.reader(f)):
                    if not rec or not rec[0].strip() or rec[0].startswith("#"):
                        continue
                    if k == 0 and rec[0].strip().lower() in ("path", "image", "file", "filename"):
                        continue
                    labels = ";".join(rec[1:]).split(";")
                    rows.append((rec[0].strip(), [x.strip() for x in labels if x.strip()]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(dataset, path, f"unreadable list file ({type(exc).__name__}: {exc}); expected rows "
                                          "'path,label1;label2' (CSV) or [{\"path\": ..., \"labels\": [...]}] (JSON)") from None
    if not rows:
        raise DatasetError(dataset, path, "list file has no rows")
    return rows


def read_folder(root, official_split: str, dataset: str = "folder", classes: str | None = None,
                list_file: str | None = None):
    """Any images listed in a CSV/JSON file. Class names come from `classes` (a text file, one name a
    line) or `<root>/classes.txt` when present, else from the sorted union of the TRAINING list's
    labels; a label of the test list that is not a known class is an error. Rows without a label
    are dropped (readers/files.py says why)."""
    root = Path(root)
    if root.is_file():  # a single list file: it is the training list
        list_dir, train_list = root.parent, root
        test_list = Path(list_file) if list_file else None
    else:
        require_dir(dataset, root, FOLDER_LAYOUT)
        list_dir, train_list = root, _find_list(root, "train")
        test_list = _find_list(root, "test") or _find_list(root, "val")
        if train_list is None:
            raise DatasetError(dataset, root / "train.csv", f"list file is missing (expected layout: {FOLDER_LAYOUT})")
    wanted = train_list if official_split == "train" else test_list
    if wanted is None:
        raise DatasetError(dataset, list_dir / "test.csv", "no test list (test.csv/test.json) for split 'test'")
    class_file = Path(classes) if classes else (list_dir / "classes.txt")
    if class_file.is_file():
        class_names = [line.strip() for line in class_file.read_text().splitlines() if line.strip()]
    elif classes:
        raise DatasetError(dataset, class_file, "class-name file is missing")
    else:
        class_names = sorted({lab for _, labs in _read_rows(dataset, train_list) for lab in labs})
    col = {name: k for k, name in enumerate(class_names)}
    rows = _read_rows(dataset, wanted)
    labels = np.zeros((len(rows), len(class_names)), dtype=np.uint8)
    for r, (_, labs) in enumerate(rows):
        for lab in labs:
            if lab not in col:
                raise DatasetError(dataset, wanted, f"row {r + 1}: class {lab!r} is not in the class list "
                                                    f"({len(class_names)} classes from {class_file.name if class_file.is_file() else train_list.name})")
            labels[r, col[lab]] = 1
    paths = [p if os.path.isabs(p) else str(wanted.parent / p) for p, _ in rows]
    paths, labels = drop_unlabelled(paths, labels)
    return class_names, paths, labels
