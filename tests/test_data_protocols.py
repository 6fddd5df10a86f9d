"""The public protocols (scob_fast.data.protocols) against independent transcriptions of the public
code, written out here from the files they name: on a tiny generated COCO (ids of varied lengths,
images and annotations in shuffled order, categories out of id order), on VOC lists, and on plain
label matrices, row by row. Plus splits.json, the --label-seed rule and the wiring in training.py."""
import json
import os
import random

import numpy as np
import pytest

from scob_fast.data.protocols import (PROTOCOLS, cole_single_positive, load_splits, protocol_splits,
                                      scob_single_positive, sst_partial, splits_path)
from scob_fast.data.datasets import protocol_split
from scob_fast.data.testing import make_coco, make_list_dataset, make_voc


# ----- transcriptions of the public code --------------------------------------------------------

def cole_format_coco(D):
    """elijahcole/single-positive-multi-label preproc/format_coco.py, one split: (image ids in row
    order, category ids in column order, label matrix)."""
    category_ids = [c["id"] for c in D["categories"]]                  # parse_categories: file order
    id_to_index = {c["id"]: i for i, c in enumerate(D["categories"])}
    image_id_list = sorted(np.unique([str(D["annotations"][i]["image_id"]) for i in range(len(D["annotations"]))]))
    image_id_list = np.array(image_id_list, dtype=int)  # sorting as strings for backwards compatibility
    image_id_to_index = {image_id_list[i]: i for i in range(len(image_id_list))}
    label_matrix = np.zeros((len(image_id_list), len(D["categories"])))
    for ann in D["annotations"]:
        label_matrix[image_id_to_index[int(ann["image_id"])]][int(id_to_index[int(ann["category_id"])])] = 1
    return [int(i) for i in image_id_list], category_ids, label_matrix


def cole_get_random_label_indices(label_vec, label_value, num_sel, rng):
    idx_all = np.nonzero(label_vec == label_value)[0]
    rng.shuffle(idx_all)
    return idx_all if num_sel == -1 else idx_all[:num_sel]


def cole_observe_uniform(label_matrix, num_pos, num_neg, rng):
    """preproc/generate_observed_labels.py observe_uniform (label_matrix in -1 / +1)."""
    num_items, num_classes = np.shape(label_matrix)
    label_matrix_obs = np.zeros_like(label_matrix)
    for i in range(num_items):
        idx_pos = cole_get_random_label_indices(label_matrix[i, :], 1.0, num_pos, rng)
        label_matrix_obs[i, idx_pos] = 1.0
        idx_neg = cole_get_random_label_indices(label_matrix[i, :], -1.0, num_neg, rng)
        label_matrix_obs[i, idx_neg] = -1.0
    return label_matrix_obs


def cole_generate_observed(label_matrix01, seed=1200):
    label_matrix = label_matrix01.astype(float).copy()
    label_matrix[label_matrix == 0] = -1
    return cole_observe_uniform(label_matrix, 1, 0, np.random.RandomState(seed))


def cole_generate_split(num_ex, frac, rng):
    """datasets.py generate_split."""
    n_2 = int(np.round(frac * num_ex))
    n_1 = num_ex - n_2
    idx_rand = rng.permutation(num_ex)
    return np.sort(idx_rand[:n_1]), np.sort(idx_rand[-n_2:])


def scob_prepare_coco(D):
    """iCVTEAM/Scob data/coco.py prepare_coco2014 (+ the json round trip): (anno_list, cat2idx)."""
    annotations_id, img_id = {}, {}
    category_id = {}
    for cat in D["categories"]:
        category_id[cat["id"]] = cat["name"]
    cat2idx = {}
    for cat in sorted(category_id.values()):                             # category_to_idx
        cat2idx[cat] = len(cat2idx)
    for annotation in D["annotations"]:
        if annotation["image_id"] not in annotations_id:
            annotations_id[annotation["image_id"]] = set()
        annotations_id[annotation["image_id"]].add(cat2idx[category_id[annotation["category_id"]]])
    for img in D["images"]:
        if img["id"] not in annotations_id:
            continue
        if img["id"] not in img_id:
            img_id[img["id"]] = {}
        img_id[img["id"]]["file_name"] = img["file_name"]
        img_id[img["id"]]["labels"] = list(annotations_id[img["id"]])
    anno_list = [v for _, v in img_id.items()]
    return json.loads(json.dumps(anno_list)), cat2idx


def scob_drop_to_single(img_list, seed=114514, key="labels"):
    """data/coco.py (key 'labels') and data/voc.py (key 'label') drop_to_single."""
    random.seed(seed)
    for img in img_list:
        img["single_label"] = [random.choice(img[key])]


def sst_coco_labels(D):
    """HCPLab-SYSU/HCP-MLR-PL datasets/coco2014.py: pycocotools' image order, labels -1 / 1, with
    category.json assumed to map the category ids in ascending order (1-based)."""
    imgs = {}
    for img in D["images"]:
        imgs[img["id"]] = img                                            # COCO.createIndex
    ids = list(imgs.keys())
    category_map = {str(cid): k + 1 for k, cid in enumerate(sorted(c["id"] for c in D["categories"]))}
    anns_of = {}
    for ann in D["annotations"]:
        anns_of.setdefault(ann["image_id"], []).append(ann)
    labels = []
    for img_id in ids:
        categories = list({t["category_id"] for t in anns_of.get(img_id, [])})   # getCategoryList
        label = np.zeros(len(category_map))
        for c in categories:                                                    # getLabelVector
            label[category_map[str(c)] - 1] = 1.0
        labels.append(label)
    labels = np.array(labels)
    labels[labels == 0] = -1
    return [imgs[i]["file_name"] for i in ids], labels


def sst_change_label_proportion(labels, label_proportion):
    """datasets/coco2014.py changeLabelProportion (the global numpy RNG, saved and restored here)."""
    state = np.random.get_state()
    try:
        np.random.seed(0)
        mask = np.random.random(labels.shape)
        mask[mask < label_proportion] = 1
        mask[mask < 1] = 0
        return mask * labels
    finally:
        np.random.set_state(state)


# ----- a tiny COCO whose order traps every shortcut -----------------------------------------------

def scrambled_coco(root, seed=0, num_classes=12, n_train=60, n_val=20):
    """make_coco, then image ids of 1 to 5 digits (string order != numeric order), images and
    annotations shuffled (file order != id order); make_coco lists the categories out of id order."""
    root, _ = make_coco(root, n_train=n_train, n_val=n_val, num_classes=num_classes, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for split in ("train", "val"):
        path = root / "annotations" / f"instances_{split}2014.json"
        data = json.loads(path.read_text())
        fresh = rng.choice(np.arange(1, 100000), size=len(data["images"]), replace=False)
        fresh[:3] = [7, 42, 1000]                                       # surely mixed lengths
        new_id = {img["id"]: int(n) for img, n in zip(data["images"], fresh)}
        for img in data["images"]:
            img["id"] = new_id[img["id"]]
        for ann in data["annotations"]:
            ann["image_id"] = new_id[ann["image_id"]]
        rng.shuffle(data["images"])
        rng.shuffle(data["annotations"])
        path.write_text(json.dumps(data))
    return root


def _json(root, split):
    return json.loads((root / "annotations" / f"instances_{split}2014.json").read_text())


def _names(dataset):
    return [os.path.basename(p) for p in dataset.image_paths]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return scrambled_coco(tmp_path_factory.mktemp("coco"))


def test_the_tiny_coco_does_trap_the_shortcuts(coco):
    D = _json(coco, "train")
    ids = [img["id"] for img in D["images"] if any(a["image_id"] == img["id"] for a in D["annotations"])]
    assert sorted(ids, key=str) != sorted(ids) and sorted(ids) != ids, "string, numeric and file order differ"
    assert [c["id"] for c in D["categories"]] != sorted(c["id"] for c in D["categories"])
    anno, _ = scob_prepare_coco(D)
    assert any(img["labels"] != sorted(img["labels"]) for img in anno), "some label list is not ascending"


def test_cole_on_coco_matches_the_public_code(coco):
    D = _json(coco, "train")
    ids, category_ids, label_matrix = cole_format_coco(D)
    observed_public = cole_generate_observed(label_matrix)
    idx_train, idx_val = cole_generate_split(len(ids), 0.2, np.random.RandomState(1200))
    file_of = {img["id"]: img["file_name"] for img in D["images"]}

    splits = protocol_splits("cole", "coco2014", coco)
    assert _names(splits.train) == [file_of[ids[i]] for i in idx_train]
    assert _names(splits.val) == [file_of[ids[i]] for i in idx_val]
    Dv = _json(coco, "val")
    test_ids, _, test_labels = cole_format_coco(Dv)
    file_of_val = {img["id"]: img["file_name"] for img in Dv["images"]}
    assert _names(splits.test) == [file_of_val[i] for i in test_ids]

    observed, draw = splits.observe("single")
    ours_column_of = {cid: k for k, cid in enumerate(sorted(category_ids))}   # our classes: sorted by id
    public_in_ours = np.zeros_like(observed)
    for j, cid in enumerate(category_ids):
        public_in_ours[:, ours_column_of[cid]] = observed_public[idx_train, j]
    np.testing.assert_array_equal(observed, public_in_ours)              # row by row, class by class
    assert draw.seed == 1200 and draw.seed_source == "protocol"
    # full labels come along in the same rows
    np.testing.assert_array_equal(splits.train.labels[:, [ours_column_of[c] for c in category_ids]],
                                  label_matrix[idx_train])
    np.testing.assert_array_equal(splits.test.labels[:, [ours_column_of[c] for c in category_ids]], test_labels)


def test_scob_on_coco_matches_the_public_code(coco):
    D, Dv = _json(coco, "train"), _json(coco, "val")
    anno, cat2idx = scob_prepare_coco(D)
    scob_drop_to_single(anno)
    name_of = {k: name for name, k in cat2idx.items()}

    splits = protocol_splits("scob", "coco2014", coco)
    assert _names(splits.train) == [img["file_name"] for img in anno]
    val_anno, _ = scob_prepare_coco(Dv)
    assert _names(splits.val) == _names(splits.test) == [img["file_name"] for img in val_anno]
    observed, draw = splits.observe("single")
    classes = splits.train.class_names
    for row, img in enumerate(anno):
        assert [classes[c] for c in np.flatnonzero(observed[row])] == [name_of[img["single_label"][0]]], row
        assert sorted(classes[c] for c in np.flatnonzero(splits.train.labels[row])) == \
            sorted(name_of[k] for k in img["labels"])
    assert not (observed == -1).any() and draw.seed == 114514


@pytest.mark.parametrize("p", [0.3, 0.7])
def test_sst_on_coco_matches_the_public_code(coco, p):
    D, Dv = _json(coco, "train"), _json(coco, "val")
    files, labels = sst_coco_labels(D)
    changed = sst_change_label_proportion(labels, p)

    splits = protocol_splits("sst", "coco2014", coco)
    assert _names(splits.train) == files, "every image of the file, unannotated ones included, in file order"
    assert _names(splits.val) == _names(splits.test) == sst_coco_labels(Dv)[0]
    np.testing.assert_array_equal(np.where(splits.train.labels == 1, 1, -1), labels)
    observed, draw = splits.observe(f"partial:{p}")
    np.testing.assert_array_equal(observed, changed)
    assert draw.seed == 0


def test_label_seed_replaces_the_protocol_seed_only_when_given(coco):
    splits = protocol_splits("sst", "coco2014", coco)
    default, draw = splits.observe("partial:0.5")
    given, draw_given = splits.observe("partial:0.5", seed=5)
    np.testing.assert_array_equal(default, sst_partial(splits.train.labels, 0.5, 0))
    np.testing.assert_array_equal(given, sst_partial(splits.train.labels, 0.5, 5))
    assert (draw.seed, draw.seed_source) == (0, "protocol")
    assert (draw_given.seed, draw_given.seed_source) == (5, "--label-seed")
    # single under sst (which has none): Cole's draw with Cole's seed
    single, single_draw = splits.observe("single")
    np.testing.assert_array_equal(single, cole_single_positive(splits.train.labels, 1200))
    assert single_draw.seed == 1200


# ----- VOC: per-class lists written from the generated ground truth ------------------------------

VOC_CLASSES_ORDER = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
                     "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                     "train", "tvmonitor")


def _write_class_lists(root, expected, image_set):
    """ImageSets/Main/<class>_<set>.txt as VOC ships them: 1 present, 0 only difficult, -1 absent."""
    names, negative = expected[image_set]
    _, positive = expected[f"{image_set}:positive"]
    base = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    for c, cls in enumerate(VOC_CLASSES_ORDER):
        lines = [f"{n[:-4]} {1 if negative[i, c] else 0 if positive[i, c] else -1:2d}" for i, n in enumerate(names)]
        (base / f"{cls}_{image_set}.txt").write_text("\n".join(lines) + "\n")


def cole_format_pascal(base, phase):
    """preproc/format_pascal.py, one phase: (sorted file names, label matrix)."""
    ann_dict, image_list = {}, []
    for cat_id, cat in enumerate(VOC_CLASSES_ORDER):
        with open(base / f"{cat}_{phase}.txt") as f:
            for line in f:
                cur_line = line.rstrip().split(" ")
                image_fname, label = cur_line[0] + ".jpg", cur_line[-1]
                if int(label) == 1:
                    if image_fname not in ann_dict:
                        ann_dict[image_fname] = []
                        image_list.append(image_fname)
                    ann_dict[image_fname].append(cat_id)
    image_list.sort()
    label_matrix = np.zeros((len(image_list), 20))
    for i, name in enumerate(image_list):
        label_matrix[i, np.array(ann_dict[name])] = 1.0
    return image_list, label_matrix


def scob_prepare_voc(base, phase):
    """data/voc.py prepare_voc12, one phase: the annotation list."""
    img_annotations, img_ids = {}, []
    for label_id, label in enumerate(VOC_CLASSES_ORDER):
        with open(base / f"{label}_{phase}.txt") as f:
            for line in f:
                spline = list(map(lambda x: x.strip(), line.strip().split(" ")))
                image_id, positive = spline[0], spline[-1]
                if positive == "1":
                    if image_id not in img_annotations:
                        img_annotations[image_id] = []
                        img_ids.append(image_id)
                    img_annotations[image_id].append(label_id)
    return [{"id": i, "name": f"{image_id}.jpg", "label": img_annotations[image_id]}
            for i, image_id in enumerate(img_ids)]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root, expected = make_voc(tmp_path_factory.mktemp("voc"), "2012", n_train=40, n_test=15, seed=3)
    for image_set in ("train", "val"):
        _write_class_lists(root, expected, image_set)
    return root, expected


def test_cole_and_scob_on_voc_match_the_public_code(voc):
    root, expected = voc
    base = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    files, label_matrix = cole_format_pascal(base, "train")
    assert len(files) < len(expected["train"][0]), "an image with only difficult objects is dropped"
    idx_train, idx_val = cole_generate_split(len(files), 0.2, np.random.RandomState(1200))
    splits = protocol_splits("cole", "voc2012", root)
    assert _names(splits.train) == [files[i] for i in idx_train]
    assert _names(splits.val) == [files[i] for i in idx_val]
    assert _names(splits.test) == cole_format_pascal(base, "val")[0]
    np.testing.assert_array_equal(splits.observe("single")[0], cole_generate_observed(label_matrix)[idx_train])

    anno = scob_prepare_voc(base, "train")
    scob_drop_to_single(anno, key="label")
    splits = protocol_splits("scob", "voc2012", root)
    assert _names(splits.train) == [img["name"] for img in anno]
    assert _names(splits.test) == [img["name"] for img in scob_prepare_voc(base, "val")]
    observed = splits.observe("single")[0]
    assert [list(np.flatnonzero(row)) for row in observed] == [img["single_label"] for img in anno]

    splits = protocol_splits("sst", "voc2012", root)   # datasets/voc2007.py: the list's order, all images
    assert _names(splits.train) == expected["train"][0]


# ----- plain label matrices -----------------------------------------------------------------------

def _matrix(n, c, p, seed):
    labels = (np.random.default_rng(seed).random((n, c)) < p).astype(np.uint8)
    labels[::7] = 0  # some images without any positive (NUS-WIDE has them)
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_draws_on_plain_matrices_match_the_public_code(seed):
    labels = _matrix(300, 11, 0.25, seed)
    np.testing.assert_array_equal(cole_single_positive(labels, 1200), cole_generate_observed(labels))
    np.testing.assert_array_equal(sst_partial(labels, 0.4), sst_change_label_proportion(np.where(labels == 1, 1, -1), 0.4))
    lists = [list(np.flatnonzero(row)) for row in labels if row.any()]
    imgs = [{"label": lst} for lst in lists]
    scob_drop_to_single(imgs, key="label")
    assert [c for c in scob_single_positive(lists) if c is not None] == [img["single_label"][0] for img in imgs]


def test_the_negative_shuffle_matters():
    # Without the second shuffle (labels.observe_labels' "single") the draws part after the first image.
    from scob_fast.data.labels import observe_labels
    labels = _matrix(200, 9, 0.3, 5)
    assert not np.array_equal(cole_single_positive(labels, 1200), observe_labels(labels, "single", seed=1200))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 97, 1000, 82081])
@pytest.mark.parametrize("frac", [0.2, 0.25, 0.1])
def test_split_matches_generate_split(n, frac):
    ours = protocol_split(n, 1200, frac)
    theirs = cole_generate_split(n, frac, np.random.RandomState(1200))
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])


def test_list_datasets_keep_their_order(tmp_path):
    root, expected = make_list_dataset(tmp_path, "nuswide", n_train=30, n_test=8)
    names, labels = expected["train"]
    for name in PROTOCOLS:
        splits = protocol_splits(name, "nuswide", root)
        if name == "cole":
            idx_train, idx_val = cole_generate_split(len(names), 0.2, np.random.RandomState(1200))
            assert [os.path.relpath(p, root / "Flickr") for p in splits.train.image_paths] == [names[i] for i in idx_train]
            np.testing.assert_array_equal(splits.observe("single")[0], cole_generate_observed(labels)[idx_train])
        else:
            assert len(splits.train) == len(names) and len(splits.val) == len(splits.test) == 8


# ----- splits.json and the wiring in training.py --------------------------------------------------

def _config(root, out, *extra):
    from scob_fast.config import parse_args
    return parse_args(["--dataset", "coco2014", "--data-root", str(root), "--method", "an", "--out", str(out),
                       "--quiet", *extra])


def test_observed_labels_write_splits_json(coco, tmp_path):
    from scob_fast.data.labels import load_observed
    from scob_fast.engine.run_directory import RunDirectory
    from scob_fast.training import build_splits, observed_labels

    config = _config(coco, tmp_path / "run")
    assert config.data.protocol == "cole" and config.data.label_seed is None
    train, val, test = build_splits(config)
    run_dir = RunDirectory(tmp_path / "run")
    observed = observed_labels(config, train, run_dir)
    manifest = load_splits(run_dir.path)
    assert manifest["protocol"] == "cole" and manifest["dataset"] == "coco2014" and manifest["val_is_test"] is False
    assert manifest["labels"] == {"regime": "single", "seed": 1200, "seed_source": "protocol",
                                  "procedure": manifest["labels"]["procedure"]}
    assert "generate_observed_labels.py" in manifest["labels"]["procedure"]
    for split, dataset in (("train", train), ("val", val), ("test", test)):
        assert manifest[split] == [os.path.relpath(p, coco) for p in dataset.image_paths]
        assert all((coco / name).is_file() for name in manifest[split])
    assert manifest["train"][0].startswith("train2014/") and manifest["test"][0].startswith("val2014/")
    saved, meta = load_observed(run_dir.path, with_meta=True)
    np.testing.assert_array_equal(saved, observed)
    assert meta["protocol"] == "cole" and meta["seed"] == 1200 and meta["seed_source"] == "protocol"
    assert sorted(os.listdir(run_dir.path)) == ["observed_labels.npz", "splits.json"], "no temp file left"
    # the observed rows are the train rows of splits.json: the public draw, independently rebuilt
    D = _json(coco, "train")
    ids, category_ids, label_matrix = cole_format_coco(D)
    idx_train, _ = cole_generate_split(len(ids), 0.2, np.random.RandomState(1200))
    file_of = {img["id"]: img["file_name"] for img in D["images"]}
    assert manifest["train"] == [f"train2014/{file_of[ids[i]]}" for i in idx_train]


def test_label_seed_and_protocol_reach_splits_json(coco, tmp_path, caplog):
    from scob_fast.engine.run_directory import RunDirectory
    from scob_fast.training import build_splits, observed_labels

    config = _config(coco, tmp_path / "sst", "--protocol", "sst", "--labels", "partial:0.5", "--label-seed", "7")
    train, val, test = build_splits(config)
    assert _names(val) == _names(test)
    with caplog.at_level("INFO", logger="scob_fast.train"):
        observed = observed_labels(config, train, RunDirectory(tmp_path / "sst"))
    assert "--label-seed 7" in caplog.text
    manifest = load_splits(tmp_path / "sst")
    assert manifest["protocol"] == "sst" and manifest["val_is_test"] is True
    assert manifest["labels"]["seed"] == 7 and manifest["labels"]["seed_source"] == "--label-seed"
    np.testing.assert_array_equal(observed, sst_partial(train.labels, 0.5, 7))


def test_resume_with_other_splits_is_refused(coco, tmp_path):
    from scob_fast.engine.run_directory import RunDirectory
    from scob_fast.training import build_splits, observed_labels

    first = tmp_path / "first"
    config = _config(coco, first)
    train = build_splits(config)[0]
    observed_labels(config, train, RunDirectory(first))
    (first / "last.pth").write_bytes(b"")  # only its directory matters here
    again = _config(coco, tmp_path / "again", "--resume", str(first / "last.pth"))
    np.testing.assert_array_equal(observed_labels(again, train, RunDirectory(tmp_path / "again")),
                                  observed_labels(config, train, RunDirectory(tmp_path / "third")))
    other = _config(coco, tmp_path / "other", "--resume", str(first / "last.pth"), "--protocol", "scob")
    with pytest.raises(ValueError, match="splits.json"):
        observed_labels(other, build_splits(other)[0], RunDirectory(tmp_path / "other"))
    assert splits_path(tmp_path / "again").is_file()


# ----- presets and per-method defaults ------------------------------------------------------------

BASELINE_PRESETS = ["an", "an-ls", "wan", "epr", "role", "ll-r", "ll-ct", "ll-cp", "splc", "em", "em-apl"]
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@pytest.mark.parametrize("method", BASELINE_PRESETS)
def test_baseline_presets_parse_and_name_their_source(method):
    from scob_fast.config import parse_args
    path = os.path.join(CONFIGS, f"{method}-coco2014.yaml")
    config = parse_args(["--config", path])
    assert config.model.method == method and config.data.dataset == "coco2014"
    lines = open(path).read().splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith("#"):
            commented = "#" in line or (i > 0 and lines[i - 1].lstrip().startswith("#"))
            assert commented, f"{path}:{i + 1}: {line!r} has no comment naming its public file"
    if method in ("epr", "role"):
        assert config.optim.expected_positives == 2.9


def test_expected_positives_defaults():
    # The registry's COCO k is Cole et al.'s 2.9 (train.py); Scob keeps its own 3.9 (main.py).
    from scob_fast.config import parse_args
    k = {m: parse_args(["--dataset", "coco2014", "--method", m]).optim.expected_positives
         for m in ("epr", "role", "scob")}
    assert k == {"epr": 2.9, "role": 2.9, "scob": 3.9}
    assert parse_args(["--dataset", "coco2014", "--method", "scob", "--expected-positives", "2.5"]
                      ).optim.expected_positives == 2.5
    assert parse_args(["--dataset", "voc2012", "--method", "scob"]).optim.expected_positives == 1.5
    assert parse_args(["--dataset", "demo", "--method", "scob"]).optim.expected_positives == 2.25


def test_a_training_split_with_images_left_out_keeps_their_draw(coco, tmp_path):
    # e.g. the pre-flight check removed unreadable files after the split: the rest keep their labels
    from scob_fast.engine.run_directory import RunDirectory
    from scob_fast.training import build_splits, observed_labels

    config = _config(coco, tmp_path / "run")
    train = build_splits(config)[0]
    full = observed_labels(config, train, RunDirectory(tmp_path / "full"))
    keep = [i for i in range(len(train)) if i % 5]
    fewer = train.subset(keep, "train")
    observed = observed_labels(config, fewer, RunDirectory(tmp_path / "run"))
    np.testing.assert_array_equal(observed, full[keep])
    assert load_splits(tmp_path / "run")["train"] == [os.path.relpath(p, coco) for p in fewer.image_paths]


def _write_voc2007_lists(root, image_set, names, negative, positive):
    base = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"
    (base / f"{image_set}.txt").write_text("".join(f"{n[:-4]}\n" for n in names))
    for c, cls in enumerate(VOC_CLASSES_ORDER):
        lines = [f"{n[:-4]} {1 if negative[i, c] else 0 if positive[i, c] else -1:2d}" for i, n in enumerate(names)]
        (base / f"{cls}_{image_set}.txt").write_text("\n".join(lines) + "\n")


def test_voc2007_scob_reads_train_and_val_while_cole_reads_trainval_and_test(tmp_path):
    # VOC2007 ships train + val = trainval, and test. Scob's data/voc.py prepare_voc07 reads the
    # train and val phases (its val is where it reports); the SPML protocols use trainval / test.
    root, expected = make_voc(tmp_path, "2007", n_train=40, n_test=12, seed=5)
    names, negative = expected["trainval"]
    _, positive = expected["trainval:positive"]
    _write_voc2007_lists(root, "trainval", names, negative, positive)
    _write_voc2007_lists(root, "test", *expected["test"], expected["test:positive"][1])
    order = np.random.default_rng(0).permutation(len(names))
    train_rows, val_rows = sorted(order[:26]), sorted(order[26:])
    for image_set, rows in (("train", train_rows), ("val", val_rows)):
        _write_voc2007_lists(root, image_set, [names[i] for i in rows], negative[rows], positive[rows])
    base = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main"

    anno = scob_prepare_voc(base, "train")
    scob_drop_to_single(anno, key="label")
    splits = protocol_splits("scob", "voc2007", root)
    assert _names(splits.train) == [img["name"] for img in anno]
    assert set(_names(splits.train)) <= {names[i] for i in train_rows}
    assert _names(splits.test) == [img["name"] for img in scob_prepare_voc(base, "val")]
    assert _names(splits.val) == _names(splits.test)      # no held-out val in the public code
    observed = splits.observe("single")[0]
    assert [list(np.flatnonzero(row)) for row in observed] == [img["single_label"] for img in anno]

    splits = protocol_splits("cole", "voc2007", root)
    trainval = set(_names(splits.train)) | set(_names(splits.val))
    assert trainval <= set(names) and not trainval & set(_names(splits.test))
    assert len(trainval) > 26 and set(_names(splits.test)) <= set(expected["test"][0])
