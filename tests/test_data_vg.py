"""VG-200 (`--dataset vg200`) in the layout HCP-MLR-PL's SST reads: a tiny copy of its files, read through
the registry and compared with transcriptions of the public loader (datasets/vg.py), the errors a
user sees for a broken copy, and one short training run through training.run.

The public code transcribed here (github.com/HCPLab-SYSU/HCP-MLR-PL, datasets/vg.py):
    img_names = open(list_file).readlines(); labels_json = json.load(open(label_file))
    labels = np.zeros((len(img_names), 200)) - 1; labels[i][labels_json[img_names[i][:-1]]] = 1
    changeLabelProportion: np.random.seed(0); mask = np.random.random(labels.shape);
                           mask[mask < p] = 1; mask[mask < 1] = 0; return mask * labels
"""
import json
import os

import numpy as np
import pytest

from scob_fast.data import DatasetError, build_dataset, dataset_spec, protocol_split
from scob_fast.data.preflight import check_images
from scob_fast.data.protocols import protocol_splits
from scob_fast.data.testing import write_image

NUM_CLASSES = 200


def make_vg200(root, n_train: int = 24, n_test: int = 10, seed: int = 0):
    """A tiny VG-200: <root>/VG_100K/<id>.jpg, train_list_500.txt / test_list_500.txt (one name a line,
    newline-terminated like the public lists) and vg_category_200_labels_index.json ({name: [indices]},
    one file for both lists, with an entry no list uses). The first training image has an empty entry;
    indices 0 and 199 occur, and an entry lists an index twice (numpy indexing makes that one 1).
    -> (root, {"train"/"test": (names in list order, the JSON entries)})."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ids = rng.choice(np.arange(1, 2_500_000), n_train + n_test + 1, replace=False)  # VG ids are not contiguous
    names = [f"{i}.jpg" for i in ids]
    entries = {}
    for k, name in enumerate(names):
        positives = sorted(rng.choice(NUM_CLASSES, int(rng.integers(1, 6)), replace=False).tolist())
        entries[name] = positives
    train, test = names[:n_train], names[n_train:n_train + n_test]  # names[-1]: in the JSON only
    entries[train[0]] = []
    entries[train[1]] = [0, 199, 0]
    for name in train + test:
        write_image(root / "VG_100K" / name, seed=int(name[:-4]) % 10_000)
    (root / "train_list_500.txt").write_text("".join(f"{n}\n" for n in train))
    (root / "test_list_500.txt").write_text("".join(f"{n}\n" for n in test))
    (root / "vg_category_200_labels_index.json").write_text(json.dumps(entries))
    return root, {"train": (train, [entries[n] for n in train]), "test": (test, [entries[n] for n in test])}


# ---------------------------------------------------------------- the public loader, transcribed
def public_vg_labels(root, list_name):
    with open(root / list_name) as f:
        img_names = f.readlines()
    with open(root / "vg_category_200_labels_index.json") as f:
        index = json.load(f)
    labels = np.zeros((len(img_names), 200)).astype(np.int64) - 1
    for i in range(len(img_names)):
        labels[i][index[img_names[i][:-1]]] = 1
    return [n[:-1] for n in img_names], labels


def public_change_label_proportion(labels, p):
    np.random.seed(0)
    mask = np.random.random(labels.shape)
    mask[mask < p] = 1
    mask[mask < 1] = 0
    return mask * labels


def public_generate_split(n, frac=0.2, seed=1200):
    # Cole et al. datasets.py generate_split (the cole protocol on a list without public VG code)
    n_val = int(np.round(frac * n))
    perm = np.random.RandomState(seed).permutation(n)
    return np.sort(perm[:n - n_val]), np.sort(perm[-n_val:])


def _names(ds):
    return [os.path.basename(p) for p in ds.image_paths]


@pytest.fixture()
def vg(tmp_path):
    return make_vg200(tmp_path / "VG")


# ------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("official,list_name", [("train", "train_list_500.txt"), ("test", "test_list_500.txt")])
def test_rows_and_labels_are_the_public_loaders(vg, official, list_name):
    root, expected = vg
    names, labels = public_vg_labels(root, list_name)
    assert names == expected[official][0]
    classes, paths, ours = dataset_spec("vg200").read(root, official)
    assert paths == [str(root / "VG_100K" / n) for n in names], "list order, images under VG_100K"
    assert ours.shape == (len(names), 200) and ours.dtype == np.uint8
    np.testing.assert_array_equal(np.where(ours == 1, 1, -1), labels)
    assert classes == [f"class_{k:03d}" for k in range(200)], "no public file names the classes"
    if official == "train":
        assert not ours[0].any(), "an empty entry is kept as a row without positives"
        assert np.flatnonzero(ours[1]).tolist() == [0, 199]


def test_registry_entry_and_splits(vg):
    root, expected = vg
    spec = dataset_spec("VG200")
    assert spec.name == "vg200" and spec.hparam_family == "coco" and spec.options == ("image_dir",)
    assert spec.expected_positives == 2.0 and "\n" not in spec.layout
    assert spec.layout == ("<root>/VG_100K/<image>.jpg, <root>/{train,test}_list_500.txt (one image file name a "
                           "line), <root>/vg_category_200_labels_index.json ({file name: [class index 0..199]})")
    train, val, test = (build_dataset("vg200", root, s) for s in ("train", "val", "test"))
    names = expected["train"][0]
    idx_train, idx_val = protocol_split(len(names))
    assert _names(train) == [names[i] for i in idx_train] and _names(val) == [names[i] for i in idx_val]
    assert _names(test) == expected["test"][0]
    assert train.num_classes == val.num_classes == test.num_classes == 200 and test.root == str(root)


def test_class_names_file_and_image_dir(vg):
    root, _ = vg
    (root / "class_names.txt").write_text("".join(f"thing{k}\n" for k in range(200)))
    (root / "VG_100K").rename(root / "images")
    test = build_dataset("vg200", root, "test", image_dir="images")
    assert test.class_names[:2] == ["thing0", "thing1"] and len(test.class_names) == 200
    assert all(os.path.isfile(p) and os.path.dirname(p) == str(root / "images") for p in test.image_paths)


# -------------------------------------------------------------------------------------- protocols
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_sst_protocol_is_the_public_split_and_draw(vg, p):
    root, _ = vg
    names, labels = public_vg_labels(root, "train_list_500.txt")
    test_names, _ = public_vg_labels(root, "test_list_500.txt")
    splits = protocol_splits("sst", "vg200", root)
    assert _names(splits.train) == names, "the whole train list, in file order"
    assert _names(splits.val) == _names(splits.test) == test_names, "SST selects on the test list"
    observed, draw = splits.observe(f"partial:{p}")
    np.testing.assert_array_equal(observed, public_change_label_proportion(labels, p))
    assert draw.seed == 0


def test_cole_and_scob_protocols_use_the_list_order(vg):
    root, expected = vg
    names = expected["train"][0]
    cole = protocol_splits("cole", "vg200", root)
    idx_train, idx_val = public_generate_split(len(names))
    assert _names(cole.train) == [names[i] for i in idx_train] and _names(cole.val) == [names[i] for i in idx_val]
    scob = protocol_splits("scob", "vg200", root)
    assert _names(scob.train) == names and _names(scob.val) == _names(scob.test) == expected["test"][0]


# ---------------------------------------------------------------------------------------- errors
def _drop_file(root, name):
    (root / name).unlink()


def _drop_image_dir(root, name):
    for f in (root / name).iterdir():
        f.unlink()
    (root / name).rmdir()


@pytest.mark.parametrize("official,remove,name,problem", [
    ("train", _drop_file, "train_list_500.txt", "image list is missing (expected layout: <root>/VG_100K/"),
    ("test", _drop_file, "test_list_500.txt", "image list is missing (expected layout:"),
    ("test", _drop_file, "vg_category_200_labels_index.json", "label file is missing (expected layout:"),
    ("train", _drop_image_dir, "VG_100K", "missing directory (expected layout:"),
], ids=["train-list", "test-list", "label-file", "image-dir"])
def test_a_missing_file_is_one_line_naming_it(vg, official, remove, name, problem):
    root, _ = vg
    remove(root, name)
    with pytest.raises(DatasetError) as info:
        build_dataset("vg200", root, official)
    message = str(info.value)
    assert message.startswith(f"vg200: {root / name}: ") and problem in message and "\n" not in message


@pytest.mark.parametrize("edit,problem", [
    (lambda e, t: e.pop(t[2]), "no entry for '{2}' (line 3 of test_list_500.txt)"),
    (lambda e, t: e.__setitem__(t[0], [3, 250]), "entry '{0}' has class index 250, outside 0..199"),
    (lambda e, t: e.__setitem__(t[0], "7"), "entry '{0}' is not a list of class indices"),
], ids=["missing-entry", "vg500-index", "not-a-list"])
def test_bad_label_entries(vg, edit, problem):
    root, expected = vg
    test_names = expected["test"][0]
    path = root / "vg_category_200_labels_index.json"
    entries = json.loads(path.read_text())
    edit(entries, test_names)
    path.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match="^vg200: .*vg_category_200_labels_index.json: ") as info:
        build_dataset("vg200", root, "test")
    assert problem.format(*test_names) in str(info.value)


def test_bad_list_and_class_files(vg):
    root, _ = vg
    (root / "class_names.txt").write_text("a\nb\n")
    with pytest.raises(DatasetError, match=r"class_names.txt: 2 class names, expected 200"):
        build_dataset("vg200", root, "test")
    (root / "class_names.txt").unlink()
    (root / "test_list_500.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"test_list_500.txt: image list is empty"):
        build_dataset("vg200", root, "test")
    (root / "vg_category_200_labels_index.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match=r"expected a JSON object \{file name: \[class indices\]\}, got list"):
        build_dataset("vg200", root, "train")


def test_the_image_check_names_a_listed_image_that_is_not_there(vg):
    root, expected = vg
    gone = root / "VG_100K" / expected["test"][0][4]
    gone.unlink()
    bad = check_images(build_dataset("vg200", root, "test"), threads=1)
    assert [(b.index, b.path, b.kind) for b in bad] == [(4, str(gone), "missing")]


# -------------------------------------------------------------------------------------- training
def test_one_epoch_of_sst_on_vg200(vg, tmp_path):
    from scob_fast.config import parse_args
    from scob_fast.data.protocols import load_splits
    from scob_fast.training import run

    root, expected = vg
    out = tmp_path / "run"
    config = parse_args(["--dataset", "vg200", "--data-root", str(root), "--method", "sst", "--protocol", "sst",
                         "--labels", "partial:0.5", "--epochs", "1", "--image-size", "64", "--dim", "32",
                         "--ffn", "64", "--batch-size", "8", "--quiet", "--workers", "0", "--loader", "pil",
                         "--no-tensorboard", "--out", str(out)])
    assert config.optim.expected_positives == 2.0
    final = run(config)
    assert final["best_epoch"] == 1 and 0 <= final["test"]["mAP"] <= 100
    manifest = load_splits(out)
    assert manifest["dataset"] == "vg200" and manifest["protocol"] == "sst" and manifest["val_is_test"] is True
    assert manifest["train"] == [f"VG_100K/{n}" for n in expected["train"][0]]
    assert manifest["test"] == [f"VG_100K/{n}" for n in expected["test"][0]]
    assert len(manifest["class_names"]) == 200
