"""Readers of each official layout against generated ground truth, the protocol splits, and the
errors a user sees for a broken layout."""
import json
import os

import numpy as np
import pytest

from scob_fast.data import VOC_CLASSES, DatasetError, build_dataset, protocol_split
from scob_fast.data.testing import file_names, make_coco, make_folder, make_list_dataset, make_voc


def _check_splits(name, root, expected_train, **opts):
    names, labels = expected_train
    train = build_dataset(name, root, "train", **opts)
    val = build_dataset(name, root, "val", **opts)
    train_idx, val_idx = protocol_split(len(names))
    assert file_names(train.image_paths) == [os.path.basename(names[i]) for i in train_idx]
    assert file_names(val.image_paths) == [os.path.basename(names[i]) for i in val_idx]
    np.testing.assert_array_equal(train.labels, labels[train_idx])
    np.testing.assert_array_equal(val.labels, labels[val_idx])
    assert len(val) == round(0.2 * len(names))
    assert train.labels.dtype == np.uint8 and train.split == "train" and val.split == "val"


def test_protocol_split_fixed_values():
    # RandomState(1200) permutation, the last 20% to val (Cole et al.'s datasets.py generate_split);
    # must never change across machines.
    train, val = protocol_split(10)
    assert val.tolist() == [3, 7]
    assert train.tolist() == [0, 1, 2, 4, 5, 6, 8, 9]
    train, val = protocol_split(1000)
    assert len(val) == 200 and len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 1000


def test_coco(tmp_path):
    root, expected = make_coco(tmp_path)
    test = build_dataset("coco2014", root, "test")
    names, labels = expected["val"]
    assert file_names(test.image_paths) == names, "unannotated images dropped, json order kept"
    np.testing.assert_array_equal(test.labels, labels)
    assert test.class_names == [f"cat{1 + 3 * k}" for k in range(5)], "categories sorted by id"
    assert all(p.startswith(str(root / "val2014")) for p in test.image_paths)
    _check_splits("coco2014", root, expected["train"])


@pytest.mark.parametrize("year", ["2007", "2012"])
def test_voc(tmp_path, year):
    root, expected = make_voc(tmp_path, year)
    train_set, test_set = ("trainval", "test") if year == "2007" else ("train", "val")
    name = f"voc{year}"
    test = build_dataset(name, root, "test")
    assert test.class_names == list(VOC_CLASSES)
    assert file_names(test.image_paths) == expected[test_set][0]
    np.testing.assert_array_equal(test.labels, expected[test_set][1])
    positive = build_dataset(name, root, "test", difficult="positive")
    np.testing.assert_array_equal(positive.labels, expected[f"{test_set}:positive"][1])
    assert (positive.labels >= test.labels).all() and positive.labels.sum() > test.labels.sum()
    _check_splits(name, root, expected[train_set])
    # the root may also be VOCdevkit/ or VOC20xx/ itself
    for alt in (root / "VOCdevkit", root / "VOCdevkit" / f"VOC{year}"):
        np.testing.assert_array_equal(build_dataset(name, alt, "test").labels, test.labels)


@pytest.mark.parametrize("name", ["nuswide", "cub"])
@pytest.mark.parametrize("fmt", ["npy", "txt"])
def test_list_formats(tmp_path, name, fmt):
    root, expected = make_list_dataset(tmp_path, name, fmt)
    test = build_dataset(name, root, "test")
    rel, labels = expected["test"]
    image_dir = "Flickr" if name == "nuswide" else "CUB_200_2011/images"
    assert test.image_paths == [str(root / image_dir / r) for r in rel]
    np.testing.assert_array_equal(test.labels, labels)
    prefix = "concept" if name == "nuswide" else "has_attr::"
    assert test.class_names == [f"{prefix}{k}" for k in range(7)]
    _check_splits(name, root, expected["train"])


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_folder(tmp_path, fmt):
    root, expected = make_folder(tmp_path, fmt)
    test = build_dataset("folder", root, "test")
    assert test.class_names == ["cat", "dog", "emu", "fox", "owl"], "sorted union of the training labels"
    assert test.image_paths == [str(root / p) for p in expected["test"][0]]
    np.testing.assert_array_equal(test.labels, expected["test"][1])
    _check_splits("csv", root, expected["train"])
    # a single list file as root is the training list
    single = build_dataset("folder", root / f"train.{fmt}", "train")
    assert len(single) == len(build_dataset("folder", root, "train"))


def test_folder_class_file(tmp_path):
    root, _ = make_folder(tmp_path)
    (root / "classes.txt").write_text("owl\ncat\ndog\nemu\nfox\nyak\n")
    ds = build_dataset("folder", root, "test")
    assert ds.class_names == ["owl", "cat", "dog", "emu", "fox", "yak"]
    assert ds.labels[:, 5].sum() == 0


# ------------------------------------------------------------------------------------------- errors
def test_missing_directory_names_layout(tmp_path):
    root, _ = make_coco(tmp_path)
    (root / "train2014").rename(root / "elsewhere")
    with pytest.raises(DatasetError, match=r"coco2014: .*train2014: missing directory \(expected layout"):
        build_dataset("coco2014", root, "train")
    with pytest.raises(DatasetError, match="missing directory VOCdevkit/VOC2012"):
        build_dataset("voc2012", tmp_path / "nothing_here", "train")


def test_unreadable_annotation_file(tmp_path):
    root, _ = make_coco(tmp_path)
    (root / "annotations" / "instances_val2014.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"instances_val2014.json: unreadable annotation file"):
        build_dataset("coco2014", root, "test")
    (root / "annotations" / "instances_val2014.json").unlink()
    with pytest.raises(DatasetError, match=r"instances_val2014.json: annotation file is missing"):
        build_dataset("coco2014", root, "test")


def test_class_not_in_class_list(tmp_path):
    root, _ = make_coco(tmp_path / "coco")
    path = root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 999
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="category_id 999, which is not in the class list"):
        build_dataset("coco2014", root, "test")

    root, _ = make_voc(tmp_path / "voc", "2012")
    xml = sorted((root / "VOCdevkit/VOC2012/Annotations").glob("*.xml"))[0]
    xml.write_text(xml.read_text().replace("<name>", "<name>unicorn", 1))
    with pytest.raises(DatasetError, match=rf"{xml.name}: object class 'unicorn.*' is not in the class list"):
        build_dataset("voc2012", root, "train")

    root, _ = make_folder(tmp_path / "folder")
    with open(root / "test.csv", "a") as f:
        f.write("images/test_0.jpg,cat;zebra\n")
    with pytest.raises(DatasetError, match=r"test.csv: row \d+: class 'zebra' is not in the class list"):
        build_dataset("folder", root, "test")


def test_bad_list_files(tmp_path):
    root, _ = make_list_dataset(tmp_path, "cub")
    np.save(root / "formatted_val_labels.npy", np.zeros((3, 7)))
    with pytest.raises(DatasetError, match=r"formatted_val_labels.npy: label matrix has shape \(3, 7\)"):
        build_dataset("cub", root, "test")
    (root / "formatted_train_images.npy").unlink()
    with pytest.raises(DatasetError, match="formatted_train_images.npy: file is missing"):
        build_dataset("cub", root, "train")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="dataset name 'imagenet'"):
        build_dataset("imagenet", tmp_path, "train")
    with pytest.raises(ValueError, match="split 'dev'"):
        build_dataset("coco2014", tmp_path, "dev")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['colour'\]"):
        build_dataset("voc2012", tmp_path, "train", colour=1)
    with pytest.raises(ValueError, match="needs root="):
        build_dataset("coco2014", None, "train")
