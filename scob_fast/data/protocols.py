"""The public evaluation protocols, each as one public code base runs it: which images of the official
lists are train / val / test, in which row order, and how the observed labels of the training images
are drawn (before splitting, on the whole official training list, as the public code does).

    splits = protocol_splits("cole", "coco2014", "/data/coco")
    observed, draw = splits.observe("single")            # [len(splits.train), C] int8, train rows
    save_splits(run_dir, splits, draw)                    # splits.json: file names of every split

Every statement below names the public file it was checked in.

cole  Cole et al., CVPR 2021, github.com/elijahcole/single-positive-multi-label; the same
      preproc/ and datasets.py are in snucml/LargeLossMatters (LL-R/Ct/Cp) and
      Correr-Zhou/SPML-AckTheUnknown (EM, EM+APL), so their published numbers use this protocol too.
      - Rows (preproc/format_coco.py): COCO keeps the images with at least one annotation, ordered by
        image id sorted AS STRINGS ("sorting as strings for backwards compatibility"); columns follow
        the annotation file's `categories` list (the official files list them by ascending id, which
        is our class order). VOC (preproc/format_pascal.py, VOC2012 train/val): the images with a
        "1" in some ImageSets/Main/<class>_<set>.txt, file names sorted; columns in VOC order.
        NUS-WIDE and CUB: the formatted_*.npy lists in their own order.
      - Observed labels (preproc/generate_observed_labels.py): one RandomState(1200) per official
        list; for each image in row order, shuffle its positive class indices and keep the first,
        then shuffle its negative class indices and keep none (num_neg = 0: the shuffle still
        consumes random numbers).
      - Split (datasets.py, generate_split): n2 = int(np.round(0.2 N)), n1 = N - n2,
        perm = RandomState(1200).permutation(N), train = sorted(perm[:n1]), val = sorted(perm[-n2:]);
        test = the official val/test list (formatted_val_*) with full labels (get_data); no
        subsampling (train.py ss_frac_train = ss_frac_val = 1.0).
scob  iCVTEAM/Scob.
      - Rows and columns (data/coco.py prepare_coco2014): the `images` of the annotation file that have
        an annotation, in file order; a class's index is the rank of its NAME in alphabetical order
        (category_to_idx(sorted(names))); an image's label list is list(set(...)) of those indices,
        added in annotation order (so its order is CPython's set order). VOC (data/voc.py
        prepare_voc12 / prepare_voc07, phases "train" and "val", for VOC2007 too: not trainval/test):
        images with a "1" in a per-class list, in order of first appearance over the classes in VOC
        order, labels in that class order.
      - Observed labels (data/coco.py, data/voc.py drop_to_single): random.seed(114514), then per image
        in row order single_label = [random.choice(labels)].
      - Split (main.py BasicRecipe.prepare): train on 100 % of the official train list; the official
        val list, with all labels, is the only evaluation split and its mAP is what is reported
        (report_score). There is no held-out val: here val and test are both the official val list.
sst   Chen et al., AAAI 2022, github.com/HCPLab-SYSU/HCP-MLR-PL.
      - Rows (datasets/coco2014.py): every image of the annotation file in pycocotools' order (the
        file's `images` order), INCLUDING the images without annotations (all labels -1); columns
        from data/coco/category.json (not in the repository; the ML-GCN file it comes from maps the
        category ids in ascending order, which is assumed here: our class order). VOC2007
        (datasets/voc2007.py): ImageSets/Main/trainval.txt order, difficult objects skipped.
        VG-200 (datasets/vg.py, utils/dataloader.py get_data_path): the lines of train_list_500.txt /
        test_list_500.txt in file order, columns = the indices of vg_category_200_labels_index.json
        (200, hard-coded in vg.py); an image whose entry is empty is kept (all labels -1). That is
        our reader's order, so VG-200 is the same list under every protocol (cole and scob have no
        VG code: cole splits that list 80/20, scob trains on all of it).
      - Observed labels (datasets/coco2014.py, datasets/voc2007.py, datasets/vg.py, changeLabelProportion):
        np.random.seed(0); U = np.random.random(labels.shape); an entry is kept (1 or -1) where U < P,
        else unknown (0): one draw over the whole official train list.
      - Split (utils/dataloader.py get_data_loader, SST.py main): train on the whole official train
        list, evaluate on the official val/test list and keep the best epoch by that mAP. No held-out
        val: val and test are both the official test list.

A regime a protocol's code does not have uses the lineage's own public draw on that protocol's rows:
partial:P under cole or scob is SST's draw (seed 0); single under sst is Cole's draw (seed 1200).
`--label-seed` replaces the protocol's seed only when given (the draw records where its seed came
from). Datasets a public code base has no reader for keep our reader's row order (Scob: an image
without a positive observes nothing and consumes no random number; its code has no such images).
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scob_fast.atomic_file import atomic_write

from .datasets import SPLIT_SEED, VAL_FRACTION, build_dataset, protocol_split
from .labels import parse_regime
from .multilabel import DatasetError, MultiLabelDataset
from .readers import read_voc
from .readers.files import load_json

SPLITS_FILE = "splits.json"
PROTOCOL_KEY = "protocol_splits"   # MultiLabelDataset.info key of the train split's ProtocolSplits

# How each dataset's official lists are formatted by the public code (rows and columns); the
# others ("list") keep our reader's order.
_FORMATS = {"coco2014": "coco", "demo": "coco", "voc2007": "voc", "voc2012": "voc",
            "vg200": "list"}  # SST's datasets/vg.py reads the lists in file order, as our reader does


@dataclass(frozen=True)
class Protocol:
    name: str
    source: str          # the public repository
    single_seed: int     # seed of the single-positive draw
    partial_seed: int    # seed of the partial-label draw
    single_draw: str     # "cole" (RandomState shuffles) or "scob" (random.choice)
    holds_out_val: bool  # False: val is the official test list (the public code selects on it)
    description: str     # one line for the log and splits.json


PROTOCOLS = {
    "cole": Protocol("cole", "github.com/elijahcole/single-positive-multi-label", 1200, 0, "cole", True,
                     "Cole et al.: labels drawn on the whole official train list (preproc/generate_observed_labels.py, "
                     "RandomState(1200)), then 80/20 train/val by datasets.py generate_split (RandomState(1200)); "
                     "test = official val/test list"),
    "scob": Protocol("scob", "github.com/iCVTEAM/Scob", 114514, 0, "scob", False,
                     "Scob: random.seed(114514), random.choice per image (data/coco.py, data/voc.py drop_to_single); "
                     "train = 100 % of the official train list, val = test = official val list (main.py)"),
    "sst": Protocol("sst", "github.com/HCPLab-SYSU/HCP-MLR-PL", 1200, 0, "cole", False,
                    "SST: np.random.seed(0), entry kept where U < P over the whole official train list "
                    "(datasets/coco2014.py changeLabelProportion); train = official train list, "
                    "val = test = official val/test list (utils/dataloader.py, SST.py)"),
}
PROTOCOL_NAMES = tuple(PROTOCOLS)


def protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[str(name).lower()]
    except KeyError:
        raise ValueError(f"protocol {name!r} is not one of {', '.join(PROTOCOLS)}") from None


# ---------------------------------------------------------------------------------------- the draws
def cole_single_positive(labels: np.ndarray, seed: int = 1200) -> np.ndarray:
    """Cole et al.'s observe_uniform(num_pos=1, num_neg=0) on 0/1 `labels` [N, C] (columns in the
    public code's order): int8 with one 1 per image that has a positive, 0 elsewhere."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    observed = np.zeros(labels.shape, dtype=np.int8)
    for i in range(labels.shape[0]):
        positives = np.flatnonzero(labels[i] == 1)
        rng.shuffle(positives)
        observed[i, positives[:1]] = 1
        rng.shuffle(np.flatnonzero(labels[i] != 1))  # the negatives' shuffle: random numbers used, none kept
    return observed


def sst_partial(labels: np.ndarray, proportion: float, seed: int = 0) -> np.ndarray:
    """SST's changeLabelProportion on 0/1 `labels` [N, C]: 1 / -1 where U < proportion, else 0.
    RandomState(seed).random_sample is the stream np.random.seed(seed); np.random.random draws."""
    labels = np.asarray(labels)
    keep = np.random.RandomState(seed).random_sample(labels.shape) < proportion
    return np.where(keep, np.where(labels == 1, 1, -1), 0).astype(np.int8)


def scob_single_positive(positive_lists, seed: int = 114514) -> list:
    """Scob's drop_to_single: per image in order, random.choice of its label list (None: no positive,
    no random number used)."""
    rng = random.Random(seed)  # random.seed(seed) seeds the same generator behind the module functions
    return [rng.choice(labels) if len(labels) else None for labels in positive_lists]


@dataclass(frozen=True)
class Draw:
    """How a run's observed labels were drawn (recorded in splits.json and observed_labels.npz)."""
    regime: str
    seed: int | None
    seed_source: str     # "protocol" or "--label-seed"
    procedure: str

    def as_dict(self) -> dict:
        return {"regime": self.regime, "seed": self.seed, "seed_source": self.seed_source,
                "procedure": self.procedure}


# ------------------------------------------------------------------------- official lists, public view
@dataclass
class PublicList:
    """One official list as a public code base formats it."""
    images: MultiLabelDataset          # rows in the public code's order, columns in our class order
    columns: np.ndarray                # the public code's class j is our column columns[j]
    positive_lists: list | None = None  # per row: the public class indices in the public code's list order

    def public_labels(self) -> np.ndarray:
        return self.images.labels[:, self.columns]


@dataclass
class _CocoIndex:
    annotated_ids: list        # image ids with an annotation, in the file's `images` order (our reader's rows)
    all_images: list           # (id, file_name) of every image, file order, first entry per id
    category_ids: list         # in the file's `categories` order
    category_names: list
    categories_of: dict        # image id -> category ids of its annotations, in annotation order


def _coco_index(images: MultiLabelDataset, official: str) -> _CocoIndex:
    split = "train" if official == "train" else "val"
    path = Path(images.root) / "annotations" / f"instances_{split}2014.json"
    data = load_json(images.name, path)
    all_images, seen = [], set()
    for image in data["images"]:
        if int(image["id"]) not in seen:
            seen.add(int(image["id"]))
            all_images.append((int(image["id"]), image["file_name"]))
    categories_of: dict = {}
    for ann in data["annotations"]:
        categories_of.setdefault(int(ann["image_id"]), []).append(int(ann["category_id"]))
    index = _CocoIndex([i for i, _ in all_images if i in categories_of], all_images,
                       [int(c["id"]) for c in data["categories"]], [c["name"] for c in data["categories"]],
                       categories_of)
    image_dir = Path(images.root) / f"{split}2014"
    names = dict(all_images)
    expected = [str(image_dir / names[i]) for i in index.annotated_ids]
    if expected != list(images.image_paths):
        raise DatasetError(images.name, path, "the annotated images of this file are not the reader's rows "
                                              "(was the file changed while the run started?)")
    return index


def _our_columns(index: _CocoIndex, images: MultiLabelDataset) -> dict:
    """category id -> our column (the reader sorts the categories by id)."""
    by_id = sorted(zip(index.category_ids, index.category_names))
    if [name for _, name in by_id] != list(images.class_names):
        raise DatasetError(images.name, None, "the annotation file's categories are not the reader's classes")
    return {cid: col for col, (cid, _) in enumerate(by_id)}


def _identity(images: MultiLabelDataset, protocol_name: str) -> PublicList:
    columns = np.arange(images.num_classes)
    lists = [list(np.flatnonzero(row)) for row in images.labels] if protocol_name == "scob" else None
    return PublicList(images, columns, lists)


def _coco_view(protocol_name: str, images: MultiLabelDataset, official: str) -> PublicList:
    index = _coco_index(images, official)
    col = _our_columns(index, images)
    n = len(images)
    if protocol_name == "cole":
        keys = [str(i) for i in index.annotated_ids]
        order = sorted(range(n), key=keys.__getitem__)
        return PublicList(images.subset(order, images.split), np.array([col[c] for c in index.category_ids]))
    if protocol_name == "scob":
        alphabetical = {name: k for k, name in enumerate(sorted(index.category_names))}
        scob_index = {cid: alphabetical[name] for cid, name in zip(index.category_ids, index.category_names)}
        columns = np.zeros(len(alphabetical), dtype=np.int64)
        for cid, k in scob_index.items():
            columns[k] = col[cid]
        lists = []
        for image_id in index.annotated_ids:
            # The public code builds a Python set in annotation order and lists it; for these small
            # ints the listed order depends on that insertion order, so it is rebuilt the same way.
            classes = set()
            for cid in index.categories_of[image_id]:
                classes.add(scob_index[cid])
            lists.append(list(classes))
        return PublicList(images, columns, lists)
    # sst: every image of the file in file order, the unannotated ones with no positive
    row_of = {image_id: r for r, image_id in enumerate(index.annotated_ids)}
    image_dir = Path(images.root) / f"{'train' if official == 'train' else 'val'}2014"
    paths, labels = [], np.zeros((len(index.all_images), images.num_classes), dtype=np.uint8)
    for k, (image_id, file_name) in enumerate(index.all_images):
        paths.append(str(image_dir / file_name))
        if image_id in row_of:
            labels[k] = images.labels[row_of[image_id]]
    full = MultiLabelDataset(images.name, list(images.class_names), paths, labels, images.split, images.root,
                             dict(images.info))
    return PublicList(full, np.arange(images.num_classes))


def _voc_view(protocol_name: str, images: MultiLabelDataset) -> PublicList:
    labels = images.labels
    if protocol_name == "cole":
        names = [os.path.basename(p) for p in images.image_paths]
        order = sorted((r for r in range(len(images)) if labels[r].any()), key=names.__getitem__)
        return PublicList(images.subset(order, images.split), np.arange(images.num_classes))
    if protocol_name == "scob":
        order, seen = [], set()
        for c in range(images.num_classes):
            for r in np.flatnonzero(labels[:, c]):
                if r not in seen:
                    seen.add(r)
                    order.append(int(r))
        subset = images.subset(order, images.split)
        return PublicList(subset, np.arange(images.num_classes), [list(np.flatnonzero(row)) for row in subset.labels])
    return _identity(images, protocol_name)


def _official_list(protocol_name: str, name: str, root, official: str, opts: dict) -> MultiLabelDataset:
    if protocol_name == "scob" and name == "voc2007":
        # data/voc.py prepare_voc07 reads VOC2007's train and val lists, not trainval / test.
        image_set = "train" if official == "train" else "val"
        classes, paths, labels = read_voc(root, "2007", image_set, opts.get("difficult", "negative"), dataset=name)
        return MultiLabelDataset(name, classes, paths, labels, split="train" if official == "train" else "test",
                                 root=str(root))
    if official == "test":
        return build_dataset(name, root, "test", **opts)
    # val_fraction 0: protocol_split gives every row to "train", in order: the whole official list.
    return build_dataset(name, root, "train", val_fraction=0.0, **opts)


def public_list(protocol_name: str, name: str, root, official: str, **opts) -> PublicList:
    """Official list `official` ("train" or "test") of dataset `name` as protocol `protocol_name`'s code
    formats it."""
    protocol_name = protocol(protocol_name).name
    images = _official_list(protocol_name, name, root, official, opts)
    kind = _FORMATS.get(images.name, "list")
    if kind == "coco":
        return _coco_view(protocol_name, images, official)
    if kind == "voc":
        return _voc_view(protocol_name, images)
    return _identity(images, protocol_name)


# -------------------------------------------------------------------------------------------- splits
class ProtocolSplits:
    """train / val / test of one dataset under one protocol, and the observed-label draw."""

    def __init__(self, protocol_name: str, official: PublicList, test: PublicList):
        self.protocol = protocol(protocol_name)
        self.official, self.official_test = official, test
        n = len(official.images)
        if self.protocol.holds_out_val:
            self.train_rows, self.val_rows = protocol_split(n, SPLIT_SEED, VAL_FRACTION)
        else:
            self.train_rows, self.val_rows = np.arange(n), None
        self.train = official.images.subset(self.train_rows, "train")
        self.val = (official.images.subset(self.val_rows, "val") if self.val_rows is not None
                    else test.images.subset(np.arange(len(test.images)), "val"))
        self.test = test.images.subset(np.arange(len(test.images)), "test")
        for part in (self.train, self.val, self.test):
            part.info["protocol"] = self.protocol.name
        self.train.info[PROTOCOL_KEY] = self

    @property
    def dataset(self) -> str:
        return self.train.name

    def draw(self, regime: str, seed: int | None = None) -> tuple[np.ndarray, Draw]:
        """Observed int8 labels of the WHOLE official training list (rows of `official`, our columns)."""
        kind, p = parse_regime(regime)
        public = self.official.public_labels()
        source = "protocol" if seed is None else "--label-seed"
        if kind == "full":
            observed_public = np.where(public == 1, 1, -1).astype(np.int8)
            result = Draw(regime, None, source, "every label observed")
        elif kind == "partial":
            seed = self.protocol.partial_seed if seed is None else int(seed)
            observed_public = sst_partial(public, p, seed)
            result = Draw(regime, seed, source, "SST changeLabelProportion (HCP-MLR-PL datasets/coco2014.py): "
                                                "np.random.seed(s); kept where np.random.random(shape) < P")
        elif self.protocol.single_draw == "scob":
            seed = self.protocol.single_seed if seed is None else int(seed)
            observed_public = np.zeros(public.shape, dtype=np.int8)
            for row, chosen in enumerate(scob_single_positive(self.official.positive_lists, seed)):
                if chosen is not None:
                    observed_public[row, chosen] = 1
            result = Draw(regime, seed, source, "Scob drop_to_single (data/coco.py, data/voc.py): random.seed(s); "
                                                "random.choice(labels) per image")
        else:
            seed = self.protocol.single_seed if seed is None else int(seed)
            observed_public = cole_single_positive(public, seed)
            result = Draw(regime, seed, source, "Cole observe_uniform (preproc/generate_observed_labels.py): "
                                                "RandomState(s); per image shuffle positives, keep the first, "
                                                "shuffle negatives, keep none")
        observed = np.zeros(self.official.images.labels.shape, dtype=np.int8)
        observed[:, self.official.columns] = observed_public
        return observed, result

    def observe(self, regime: str, seed: int | None = None,
                train: MultiLabelDataset | None = None) -> tuple[np.ndarray, Draw]:
        """The training split's observed labels (drawn on the whole official list, then its train rows).
        `train`: the training split as the run uses it, when images were left out of `self.train`
        since (e.g. unreadable files): its rows, matched by path, keep the labels drawn for them."""
        observed, result = self.draw(regime, seed)
        observed = observed[self.train_rows]
        if train is not None and list(train.image_paths) != list(self.train.image_paths):
            row_of = {path: row for row, path in enumerate(self.train.image_paths)}
            unknown = [path for path in train.image_paths if path not in row_of]
            if unknown:
                raise ValueError(f"{len(unknown)} training images are not in the {self.protocol.name} protocol's "
                                 f"training split, e.g. {unknown[0]}")
            observed = observed[[row_of[path] for path in train.image_paths]]
        return observed, result

    def manifest(self, draw: Draw | None = None, train: MultiLabelDataset | None = None,
                 val: MultiLabelDataset | None = None, test: MultiLabelDataset | None = None) -> dict:
        """What splits.json holds: each split's image files (relative to the dataset root) in row order
        (`train`, `val`, `test`: the splits as the run uses them, e.g. without files found unreadable;
        default the protocol's own)."""
        def names(images: MultiLabelDataset) -> list[str]:
            if not images.root:
                return list(images.image_paths)
            base = images.root if os.path.isdir(images.root) else os.path.dirname(images.root)
            return [os.path.relpath(p, base) for p in images.image_paths]
        out = {"dataset": self.dataset, "protocol": self.protocol.name, "protocol_source": self.protocol.source,
               "protocol_description": self.protocol.description,
               "split_seed": SPLIT_SEED if self.protocol.holds_out_val else None,
               "val_fraction": VAL_FRACTION if self.protocol.holds_out_val else None,
               "val_is_test": not self.protocol.holds_out_val,
               "root": str(self.train.root), "class_names": list(self.train.class_names),
               "observed_rows": "train",
               "train": names(self.train if train is None else train),
               "val": names(self.val if val is None else val), "test": names(self.test if test is None else test)}
        if draw is not None:
            out["labels"] = draw.as_dict()
        return out


def protocol_splits(protocol_name: str, name: str, root=None, **opts) -> ProtocolSplits:
    """Dataset `name` read from `root` (reader options `opts`, as build_dataset takes them) and split by
    protocol `protocol_name` ("cole", "scob" or "sst")."""
    official = public_list(protocol_name, name, root, "train", **opts)
    test = public_list(protocol_name, name, root, "test", **opts)
    return ProtocolSplits(protocol_name, official, test)


def splits_of(train_set: MultiLabelDataset) -> ProtocolSplits | None:
    """The ProtocolSplits a training split came from (None: built without a protocol)."""
    return train_set.info.get(PROTOCOL_KEY)


def splits_path(run_dir) -> Path:
    return Path(run_dir) / SPLITS_FILE


def save_splits(run_dir, splits: ProtocolSplits, draw: Draw | None = None, train: MultiLabelDataset | None = None,
                val: MultiLabelDataset | None = None, test: MultiLabelDataset | None = None) -> Path:
    """Write `<run_dir>/splits.json` (temp file, then rename); the splits as in ProtocolSplits.manifest."""
    text = json.dumps(splits.manifest(draw, train, val, test), indent=1)
    return atomic_write(splits_path(run_dir), lambda handle: handle.write(text.encode()))


def load_splits(run_dir) -> dict:
    path = splits_path(run_dir) if Path(run_dir).is_dir() else Path(run_dir)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable splits file ({type(exc).__name__}: {exc})") from None
