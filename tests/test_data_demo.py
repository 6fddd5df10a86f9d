"""The embedded demo dataset: COCO layout, determinism, cache key and marker, splits."""
import hashlib
import json
import shutil

import numpy as np
import pytest

from scob_fast.data import build_dataset
from scob_fast.data.demo import DEMO_DEFAULTS, class_names, demo_directory, ensure_demo_dataset

SMALL = dict(num_classes=6, train_images=40, val_images=12, image_size=64, seed=3)


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOB_FAST_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_layout_and_annotations(cache):
    root = ensure_demo_dataset(None, **SMALL)
    assert root.parent == cache / "demo" and (root / ".complete").is_file()
    assert len(list((root / "train2014").glob("*.jpg"))) == 40
    assert len(list((root / "val2014").glob("*.jpg"))) == 12
    data = json.loads((root / "annotations" / "instances_val2014.json").read_text())
    assert [c["name"] for c in data["categories"]] == class_names(6)
    assert [c["id"] for c in data["categories"]] == list(range(1, 7))
    per_image = {}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 64.01 and y + h <= 64.01 and w > 5
        assert ann["segmentation"] == [] and 1 <= ann["category_id"] <= 6
        per_image.setdefault(ann["image_id"], []).append(ann["category_id"])
    assert len(per_image) == 12, "every image has objects"
    assert all(1 <= len(v) <= 4 and len(set(v)) == len(v) for v in per_image.values())


def test_splits_through_coco_reader(cache):
    train = build_dataset("demo", None, "train", **SMALL)
    val = build_dataset("demo", None, "val", **SMALL)
    test = build_dataset("demo", None, "test", **SMALL)
    assert (len(train), len(val), len(test)) == (32, 8, 12)
    assert not set(train.image_paths) & set(val.image_paths)
    assert all("val2014" in p for p in test.image_paths)
    assert train.class_names == class_names(6) and train.name == "demo"
    both = np.concatenate([train.labels, val.labels])
    assert both.sum(0).min() > 0, "every class occurs"
    assert 1 <= both.sum(1).min() and both.sum(1).max() <= 4


def test_deterministic_and_process_independent(tmp_path):
    a = ensure_demo_dataset(tmp_path / "a", processes=1, **SMALL)
    b = ensure_demo_dataset(tmp_path / "b", processes=2, **SMALL)
    assert a.name == b.name, "same parameters, same cache key"
    assert _digest(a) == _digest(b)
    c = ensure_demo_dataset(tmp_path / "c", processes=1, **{**SMALL, "seed": 4})
    assert c.name != a.name and _digest(c) != _digest(a)


def test_half_written_cache_is_regenerated(tmp_path):
    root = ensure_demo_dataset(tmp_path, **SMALL)
    digest = _digest(root)
    (root / ".complete").unlink()
    shutil.rmtree(root / "val2014")
    assert ensure_demo_dataset(tmp_path, **SMALL) == root
    assert (root / ".complete").is_file() and _digest(root) == digest
    assert [p.name for p in tmp_path.iterdir()] == [root.name], "no temporary directory left"


def test_cache_key_covers_parameters(tmp_path):
    names = {demo_directory(tmp_path, **{**SMALL, key: value}).name
             for key, value in [("seed", 9), ("num_classes", 7), ("image_size", 96), ("train_images", 41)]}
    assert len(names | {demo_directory(tmp_path, **SMALL).name}) == 5
    assert demo_directory(tmp_path).name == demo_directory(tmp_path, **DEMO_DEFAULTS).name


def test_bad_parameters(tmp_path):
    with pytest.raises(TypeError, match="unknown parameter"):
        ensure_demo_dataset(tmp_path, colours=3)
    with pytest.raises(ValueError, match="num_classes"):
        ensure_demo_dataset(tmp_path, num_classes=50)
