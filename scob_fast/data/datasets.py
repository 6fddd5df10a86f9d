"""Multi-label datasets read from their official on-disk layouts (nothing is downloaded).

Every reader returns a `MultiLabelDataset` with FULL multi-hot labels; hiding labels is the job of
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
| folder    | train.csv / train.json       | test.csv / test.json       |
| demo      | train2014 (generated)        | val2014 (generated)        |
"""
from __future__ import annotations

import csv
import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
SPLIT_SEED = 1200
VAL_FRACTION = 0.2

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

COCO_LAYOUT = "<root>/train2014/*.jpg, <root>/val2014/*.jpg, <root>/annotations/instances_{train,val}2014.json"
VOC_LAYOUT = "<root>/VOCdevkit/VOC20xx/{JPEGImages,Annotations,ImageSets/Main} (root may also be VOCdevkit/ or VOC20xx/)"
LIST_LAYOUT = ("<root>/formatted_{train,val}_images.npy + formatted_{train,val}_labels.npy "
               "(or {train,test}_images.txt + {train,test}_labels.txt), images under <root>/{image_dir}")
FOLDER_LAYOUT = "<root>/train.csv|train.json (+ test.csv|test.json, optional classes.txt), rows 'path,label1;label2'"


class DatasetError(ValueError):
    """A dataset could not be read; the message names the dataset, the file and what is wrong."""

    def __init__(self, dataset: str, path: os.PathLike | str | None, problem: str):
        self.dataset, self.path, self.problem = dataset, None if path is None else str(path), problem
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{dataset}: {where}{problem}")


@dataclass
class MultiLabelDataset:
    """Image paths with full multi-hot labels. `labels[i, c] == 1` iff class c is present in image i."""

    name: str
    class_names: list[str]
    image_paths: list[str]
    labels: np.ndarray
    split: str = "train"
    root: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        self.labels = np.ascontiguousarray(self.labels, dtype=np.uint8)
        if self.labels.ndim != 2:
            raise DatasetError(self.name, None, f"labels must be 2-D [N, C], got shape {self.labels.shape}")
        n, c = self.labels.shape
        if n != len(self.image_paths):
            raise DatasetError(self.name, None, f"{len(self.image_paths)} image paths but {n} label rows")
        if c != len(self.class_names):
            raise DatasetError(self.name, None, f"{len(self.class_names)} class names but {c} label columns")
        if self.labels.size and self.labels.max() > 1:
            raise DatasetError(self.name, None, "labels must be 0/1")
        self.image_paths = [str(p) for p in self.image_paths]
        self.class_names = [str(c) for c in self.class_names]

    def __len__(self) -> int:
        return len(self.image_paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices, split: str | None = None) -> "MultiLabelDataset":
        indices = np.asarray(indices, dtype=np.int64)
        return MultiLabelDataset(self.name, list(self.class_names), [self.image_paths[i] for i in indices],
                                 self.labels[indices], split or self.split, self.root, dict(self.info))

    def __repr__(self) -> str:
        return (f"MultiLabelDataset(name={self.name!r}, split={self.split!r}, images={len(self)}, "
                f"classes={self.num_classes}, positives/image={self.labels.sum(1).mean() if len(self) else 0:.2f})")


def protocol_split(num_images: int, seed: int = SPLIT_SEED, val_fraction: float = VAL_FRACTION):
    """(train_idx, val_idx) of the official training list: a RandomState(seed) permutation, the first
    round(val_fraction * N) entries are val; both index lists are returned sorted."""
    perm = np.random.RandomState(seed).permutation(num_images)
    num_val = int(np.round(val_fraction * num_images))
    return np.sort(perm[num_val:]), np.sort(perm[:num_val])


# --------------------------------------------------------------------------------------------- COCO
def _load_json(dataset: str, path: Path):
    if not path.is_file():
        raise DatasetError(dataset, path, "annotation file is missing")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise DatasetError(dataset, path, f"unreadable annotation file ({type(exc).__name__}: {exc})") from None


def _require_dir(dataset: str, path: Path, layout: str):
    if not path.is_dir():
        raise DatasetError(dataset, path, f"missing directory (expected layout: {layout})")


def read_coco(root, official_split: str, dataset: str = "coco2014"):
    """(class_names, image_paths, labels) of COCO-2014 `official_split` ('train' or 'val').

    Classes are the annotation file's categories sorted by category id (the order the single-positive
    literature uses: person, bicycle, car, ...). Images without any instance annotation are DROPPED,
    as in the single-positive protocol (Cole et al.). Crowd annotations count as positives."""
    root = Path(root)
    image_dir = root / f"{official_split}2014"
    ann_path = root / "annotations" / f"instances_{official_split}2014.json"
    _require_dir(dataset, root, COCO_LAYOUT)
    _require_dir(dataset, image_dir, COCO_LAYOUT)
    data = _load_json(dataset, ann_path)
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
    keep = np.flatnonzero(labels.any(axis=1))
    paths = [str(image_dir / file_names[i]) for i in keep]
    return [c["name"] for c in categories], paths, labels[keep]


# ---------------------------------------------------------------------------------------------- VOC
def _voc_base(dataset: str, root: Path, year: str) -> Path:
    for candidate in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root):
        if (candidate / "JPEGImages").is_dir() or (candidate / "Annotations").is_dir():
            base = candidate
            break
    else:
        raise DatasetError(dataset, root, f"missing directory VOCdevkit/VOC{year} (expected layout: {VOC_LAYOUT})")
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        _require_dir(dataset, base / sub, VOC_LAYOUT)
    return base


def read_voc(root, year: str, image_set: str, difficult: str = "negative", dataset: str | None = None):
    """(class_names, image_paths, labels) of ImageSets/Main/<image_set>.txt, labels from Annotations/*.xml.

    `difficult`: what a class present ONLY through objects flagged <difficult>1</difficult> becomes.
    "negative" (default) matches the per-class lists ImageSets/Main/<class>_<set>.txt that the
    single-positive code reads, where such images are marked 0 and only 1 counts as positive;
    "positive" counts difficult objects like any other."""
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


# ------------------------------------------------------------------------------------ NUS-WIDE, CUB
LIST_DEFAULTS = {
    "nuswide": {"image_dir": "Flickr", "class_files": ("class_names.txt", "Concepts81.txt")},
    "cub": {"image_dir": "CUB_200_2011/images",
            "class_files": ("class_names.txt", "attributes.txt", "CUB_200_2011/attributes/attributes.txt")},
}


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


def read_list_format(root, dataset: str, official_split: str, image_dir: str | None = None):
    """NUS-WIDE / CUB in the single-positive benchmark's list format: an image list and a label matrix
    per official split (`formatted_<s>_images.npy` holding relative paths and `formatted_<s>_labels.npy`
    holding an [N, C] 0/1 matrix, with s = train or val, val being the official test split), or
    the same as text (`<s>_images.txt`, one path a line; `<s>_labels.txt`, C whitespace-separated 0/1)."""
    root = Path(root)
    _require_dir(dataset, root, LIST_LAYOUT)
    defaults = LIST_DEFAULTS[dataset]
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
    for name in defaults["class_files"]:
        if (root / name).is_file():
            class_names = _read_class_file(dataset, root / name)
            if len(class_names) != labels.shape[1]:
                raise DatasetError(dataset, root / name, f"{len(class_names)} class names but the label "
                                                         f"matrix has {labels.shape[1]} columns")
            break
    if class_names is None:
        class_names = [f"class_{k:03d}" for k in range(labels.shape[1])]
    base = root / (image_dir if image_dir is not None else defaults["image_dir"])
    _require_dir(dataset, base, LIST_LAYOUT.replace("{image_dir}", str(base.relative_to(root))))
    return class_names, [str(base / p) for p in rel], labels.astype(np.uint8)


# --------------------------------------------------------------------------------------- folder/csv
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
    labels; a label of the test list that is not a known class is an error."""
    root = Path(root)
    if root.is_file():  # a single list file: it is the training list
        list_dir, train_list = root.parent, root
        test_list = Path(list_file) if list_file else None
    else:
        _require_dir(dataset, root, FOLDER_LAYOUT)
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
    return class_names, paths, labels


# ---------------------------------------------------------------------------------------- the entry
DATASETS = ("demo", "coco2014", "voc2007", "voc2012", "nuswide", "cub", "folder", "csv")
_VOC_SETS = {"voc2007": ("2007", "trainval", "test"), "voc2012": ("2012", "train", "val")}


def build_dataset(name: str, root=None, split: str = "train", **opts) -> MultiLabelDataset:
    """Read dataset `name` from `root` and return `split` ("train", "val" or "test") with full labels.

    Common options: split_seed (1200), val_fraction (0.2). voc*: difficult ("negative"|"positive").
    nuswide/cub: image_dir. folder/csv: classes (class-name file), list_file (test list when `root`
    is a single list file). demo: root may be None (the cache), plus the generator's parameters
    (num_classes, train_images, val_images, image_size, seed)."""
    key = name.lower()
    if key not in DATASETS:
        raise ValueError(f"dataset name {name!r} is not one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    split_seed = int(opts.pop("split_seed", SPLIT_SEED))
    val_fraction = float(opts.pop("val_fraction", VAL_FRACTION))
    official = "train" if split in ("train", "val") else "test"

    def _take(allowed):
        extra = set(opts) - set(allowed)
        if extra:
            raise TypeError(f"build_dataset({name!r}): unknown option(s) {sorted(extra)}; allowed: {sorted(allowed)}")
        return {k: v for k, v in opts.items() if k in allowed}

    if key == "demo":
        from .demo import DEMO_DEFAULTS, ensure_demo_dataset
        params = _take(DEMO_DEFAULTS)
        root = ensure_demo_dataset(root, **params)
        classes, paths, labels = read_coco(root, "train" if official == "train" else "val", dataset="demo")
    elif key == "coco2014":
        _take(())
        classes, paths, labels = read_coco(_need_root(key, root), "train" if official == "train" else "val")
    elif key in _VOC_SETS:
        year, train_set, test_set = _VOC_SETS[key]
        kw = _take(("difficult",))
        classes, paths, labels = read_voc(_need_root(key, root), year,
                                          train_set if official == "train" else test_set, dataset=key, **kw)
    elif key in ("nuswide", "cub"):
        kw = _take(("image_dir",))
        classes, paths, labels = read_list_format(_need_root(key, root), key, official, **kw)
    else:
        kw = _take(("classes", "list_file"))
        classes, paths, labels = read_folder(_need_root(key, root), official, dataset=key, **kw)

    full = MultiLabelDataset(key, classes, paths, labels, split=split, root=str(root))
    if official == "test":
        return full
    train_idx, val_idx = protocol_split(len(full), split_seed, val_fraction)
    return full.subset(train_idx if split == "train" else val_idx, split=split)


def _need_root(name: str, root):
    if root is None:
        raise ValueError(f"dataset {name!r} needs root= (the directory holding its official layout)")
    return root
