"""The COCO-like demo dataset: layout, determinism, label statistics, masks, cache."""
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from scob_fast.data import build_dataset
from scob_fast.data import demo_coco
from scob_fast.data.readers import read_coco
from scob_fast.data.demo_coco import (DEMO_COCO_DEFAULTS, class_names, demo_coco_directory,
                                      ensure_demo_coco_dataset, load_object_masks)

SMALL = dict(num_classes=8, num_scenes=3, train_images=40, val_images=12, image_size=64, mask_size=64, seed=3)
# enough images for frequency statistics of the default class count, at a small image size
MODERATE = dict(train_images=400, val_images=4, image_size=64, mask_size=32, seed=5)


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _decode_rle(rle):
    h, w = rle["size"]
    flat = np.zeros(h * w, dtype=bool)
    pos = 0
    for k, run in enumerate(rle["counts"]):
        if k % 2:
            flat[pos:pos + run] = True
        pos += run
    assert pos == h * w, "runs cover the image exactly"
    return flat.reshape((h, w), order="F")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOB_FAST_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def moderate(tmp_path_factory):
    root = ensure_demo_coco_dataset(tmp_path_factory.mktemp("moderate"), **MODERATE)
    names, _, labels = read_coco(root, "train")
    return root, names, labels


def test_layout_and_coco_reader(cache):
    root = ensure_demo_coco_dataset(None, **SMALL)
    assert root.parent == cache / "demo_coco" and (root / ".complete").is_file()
    assert len(list((root / "train2014").glob("COCO_train2014_*.jpg"))) == 40
    assert len(list((root / "val2014").glob("COCO_val2014_*.jpg"))) == 12
    for name in ("instances_train2014.json", "instances_val2014.json", "masks_train2014.npz", "masks_val2014.npz"):
        assert (root / "annotations" / name).is_file()
    train, val, test = (build_dataset("coco2014", root, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (32, 8, 12), "every image has a label, none is dropped"
    assert train.class_names == class_names(8) == class_names(**SMALL)
    assert not set(train.image_paths) & set(val.image_paths)
    assert all("val2014" in p for p in test.image_paths)


def test_annotations_are_consistent(cache):
    root = ensure_demo_coco_dataset(None, **SMALL)
    data = json.loads((root / "annotations" / "instances_train2014.json").read_text())
    assert [c["id"] for c in data["categories"]] == list(range(1, 9))
    for ann in data["annotations"]:
        mask = _decode_rle(ann["segmentation"])
        assert mask.shape == (64, 64) and ann["area"] == mask.sum() > 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert 1 <= ann["category_id"] <= 8 and ann["iscrowd"] == 0


def test_deterministic_and_process_independent(tmp_path):
    a = ensure_demo_coco_dataset(tmp_path / "a", processes=1, **SMALL)
    b = ensure_demo_coco_dataset(tmp_path / "b", processes=2, **SMALL)
    assert a.name == b.name, "same parameters, same cache key"
    assert _digest(a) == _digest(b)
    np.testing.assert_array_equal(read_coco(a, "val")[2], read_coco(b, "val")[2])
    c = ensure_demo_coco_dataset(tmp_path / "c", processes=1, **{**SMALL, "seed": 4})
    assert c.name != a.name and _digest(c) != _digest(a)


def test_masks_agree_with_labels_and_json(cache):
    root = ensure_demo_coco_dataset(None, **SMALL)
    data = json.loads((root / "annotations" / "instances_val2014.json").read_text())
    masks = load_object_masks(root, "test")
    official = load_object_masks(root, "val2014")
    assert official.keys() == masks.keys() and all(np.array_equal(official[k], masks[k]) for k in masks)
    test = build_dataset("coco2014", root, "test")
    assert len(masks) == len(test)
    by_image = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    id_of = {im["file_name"]: im["id"] for im in data["images"]}
    for path, labels in zip(test.image_paths, test.labels):
        name = os.path.basename(path)
        class_map = masks[name]
        assert class_map.shape == (64, 64) and class_map.dtype == np.uint8
        # at full mask resolution the class map holds exactly the image's labels
        assert set(np.unique(class_map[class_map > 0]) - 1) == set(np.flatnonzero(labels))
        for ann in by_image[id_of[name]]:  # each visible pixel of an object shows its class
            assert np.all(class_map[_decode_rle(ann["segmentation"])] == ann["category_id"])


def test_low_resolution_masks_only_hold_labels(moderate):
    root, _, labels = moderate
    masks = load_object_masks(root, "train")
    train = build_dataset("coco2014", root, "train")
    hit = total = 0
    for path, row in zip(train.image_paths, train.labels):
        class_map = masks[os.path.basename(path)]
        assert class_map.shape == (32, 32)
        present = set(np.unique(class_map[class_map > 0]) - 1)
        assert present <= set(np.flatnonzero(row)), "a class with a mask pixel is a label"
        hit, total = hit + len(present), total + int(row.sum())
    assert hit / total > 0.9, "few objects fall between the grid centres"
    with pytest.raises(ValueError, match="split"):
        load_object_masks(root, "validation")


def test_label_statistics(moderate):
    _, names, labels = moderate
    assert len(names) == DEMO_COCO_DEFAULTS["num_classes"]
    per_image = labels.sum(1)
    assert 2.0 <= per_image.mean() <= 4.0 and per_image.min() >= 1
    freq = np.sort(labels.mean(0))[::-1]
    assert freq[-1] > 0, "every class occurs"
    assert freq[0] > 0.3 and freq[0] > 5 * np.median(freq) and freq[0] > 10 * freq[-1], "long tail"
    assert np.mean(freq < freq.mean()) > 0.6, "most classes are rarer than the average class"


def test_scene_co_occurrence(moderate):
    """Classes come in scenes: some pairs co-occur far more often than independence predicts."""
    _, _, labels = moderate
    p = labels.mean(0)
    joint = labels.T.astype(np.float64) @ labels / len(labels)
    support = joint * len(labels) >= 5
    np.fill_diagonal(support, False)
    lift = joint[support] / np.outer(p, p)[support]
    assert lift.max() > 3 and np.mean(lift > 2) > 0.2


def test_objects_small_varied_and_overlapping(moderate):
    root, _, _ = moderate
    data = json.loads((root / "annotations" / "instances_train2014.json").read_text())
    area = np.array([a["area"] for a in data["annotations"]]) / 64 ** 2
    assert np.quantile(area, 0.9) > 8 * np.quantile(area, 0.1) and np.mean(area < 0.01) > 0.1
    visible = np.array([a["visible_fraction"] for a in data["annotations"]])
    assert visible.min() >= demo_coco.MIN_VISIBLE - 0.01 and np.mean(visible < 0.95) > 0.1, "partial occlusion"
    assert len(data["annotations"]) > 3 * len(data["images"]), "several objects per image, some repeated"


def test_confusable_classes():
    table = demo_coco._class_table(48)
    assert len(set(table)) == 48
    one_apart = sum(sum(a != b for a, b in zip(x, y)) == 1 for i, x in enumerate(table) for y in table[i + 1:])
    assert one_apart >= 24, "many pairs differ in one attribute only"
    shared = [n for n in class_names(48) if n.endswith("_star")]
    assert len(shared) >= 2, "classes share shapes"


def test_cache_is_reused_not_regenerated(tmp_path, monkeypatch):
    root = ensure_demo_coco_dataset(tmp_path, **SMALL)
    digest = _digest(root)

    def fail(*_args, **_kwargs):
        raise AssertionError("regenerated a complete cache")
    monkeypatch.setattr(demo_coco, "_write_split", fail)
    assert ensure_demo_coco_dataset(tmp_path, **SMALL) == root
    monkeypatch.undo()
    (root / ".complete").unlink()  # half-written: generated again, identically
    shutil.rmtree(root / "val2014")
    assert ensure_demo_coco_dataset(tmp_path, **SMALL) == root
    assert (root / ".complete").is_file() and _digest(root) == digest
    assert [p.name for p in tmp_path.iterdir()] == [root.name], "no temporary directory left"


def test_cache_key_covers_parameters(tmp_path):
    changes = [("seed", 9), ("num_classes", 9), ("image_size", 96), ("train_images", 41), ("tail", 0.5),
               ("mean_labels", 3.5), ("mask_size", 16), ("num_scenes", 4)]
    names = {demo_coco_directory(tmp_path, **{**SMALL, key: value}).name for key, value in changes}
    assert len(names | {demo_coco_directory(tmp_path, **SMALL).name}) == len(changes) + 1
    assert demo_coco_directory(tmp_path).name == demo_coco_directory(tmp_path, **DEMO_COCO_DEFAULTS).name


def test_bad_parameters(tmp_path):
    with pytest.raises(TypeError, match="unknown parameter"):
        ensure_demo_coco_dataset(tmp_path, colours=3)
    with pytest.raises(ValueError, match="num_classes"):
        ensure_demo_coco_dataset(tmp_path, num_classes=1000)
    with pytest.raises(ValueError, match="mask_size"):
        ensure_demo_coco_dataset(tmp_path, image_size=64, mask_size=128)
    with pytest.raises(ValueError, match="min_object"):
        ensure_demo_coco_dataset(tmp_path, min_object=0.3, max_object=0.2)
