"""The dataset registry: every entry reads its official layout, the per-dataset facts it owns keep
their values, a new entry needs nothing else, and scob_fast.data imports point one way."""
import ast
import os
from pathlib import Path

import numpy as np
import pytest

import scob_fast.data as data
from scob_fast.data import (DATASETS, GENERIC_DEFAULTS, DatasetError, DatasetSpec, build_dataset, dataset_names,
                            dataset_spec, protocol_split)
from scob_fast.data.demo import class_names as demo_class_names
from scob_fast.data.demo import demo_directory
from scob_fast.data.testing import file_names, make_coco, make_folder, make_list_dataset, make_voc, write_image
from test_data_vg import make_vg200

DEMO_SMALL = dict(num_classes=4, train_images=20, val_images=6, image_size=48, seed=5)


def _make_demo(root):
    # The demo generates itself; `expected` is only the list sizes (its content has its own tests).
    return root, {"train": ([None] * 20, None), "test": ([None] * 6, None)}


DEMO_COCO_SMALL = dict(num_classes=6, num_scenes=2, train_images=20, val_images=6, image_size=48, mask_size=16)


def _make_demo_coco(root):
    return root, {"train": ([None] * 20, None), "test": ([None] * 6, None)}


def _official(expected, *names):
    return next(expected[n] for n in names if n in expected)


# name -> (writer of a tiny tree in the official layout, build_dataset options)
MAKERS = {
    "demo": (_make_demo, DEMO_SMALL),
    "demo-coco": (_make_demo_coco, DEMO_COCO_SMALL),
    "coco2014": (make_coco, {}),
    "voc2007": (lambda root: make_voc(root, "2007"), {}),
    "voc2012": (lambda root: make_voc(root, "2012"), {}),
    "nuswide": (lambda root: make_list_dataset(root, "nuswide"), {}),
    "cub": (lambda root: make_list_dataset(root, "cub", fmt="txt"), {}),
    "vg200": (make_vg200, {}),
    "folder": (make_folder, {}),
    "csv": (lambda root: make_folder(root, fmt="json"), {}),
}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOB_FAST_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_registry_lists_the_datasets_build_dataset_accepts():
    assert dataset_names() == ["demo", "demo-coco", "coco2014", "voc2007", "voc2012", "nuswide", "cub", "vg200", "folder", "csv"]
    assert list(DATASETS) == dataset_names()
    assert all(isinstance(spec, DatasetSpec) and spec.name == name for name, spec in DATASETS.items())


@pytest.mark.parametrize("name", dataset_names())
def test_every_entry_builds_all_splits(name, tmp_path, cache):
    make, opts = MAKERS[name]  # a KeyError here: a new entry needs a maker in MAKERS
    root, expected = make(tmp_path / name)
    spec = dataset_spec(name)
    root_arg = root if spec.needs_root else None
    train, val, test = (build_dataset(name, root_arg, split, **opts) for split in ("train", "val", "test"))
    n_train = len(_official(expected, "train", "trainval")[0])
    n_test = len(_official(expected, "test", "val")[0])
    assert (len(train) + len(val), len(test)) == (n_train, n_test)
    assert len(val) == len(protocol_split(n_train)[1])
    assert not set(train.image_paths) & set(val.image_paths)
    for ds in (train, val, test):
        assert ds.name == name and ds.num_classes == train.num_classes > 0
        assert all(os.path.isfile(p) for p in ds.image_paths)
    # the layout is one line fit for an error message
    assert spec.layout and "\n" not in spec.layout


def test_demo_root_is_the_generated_directory(cache):
    ds = build_dataset("demo", None, "test", **DEMO_SMALL)
    assert ds.root == str(demo_directory(None, **DEMO_SMALL))
    assert ds.class_names == demo_class_names(4)


def test_csv_reads_like_folder(tmp_path):
    root, _ = make_folder(tmp_path)
    for split in ("train", "test"):
        a, b = build_dataset("folder", root, split), build_dataset("csv", root, split)
        assert a.image_paths == b.image_paths and a.class_names == b.class_names
        np.testing.assert_array_equal(a.labels, b.labels)
    assert dataset_spec("csv").options == dataset_spec("folder").options


def test_unknown_name_names_the_choices():
    with pytest.raises(ValueError) as info:
        dataset_spec("nope")
    assert "'nope'" in str(info.value)
    assert all(name in str(info.value) for name in dataset_names())
    with pytest.raises(ValueError, match="dataset name 'nope' is not one of demo, demo-coco, coco2014"):
        build_dataset("nope", "/tmp")


def test_names_are_case_insensitive(tmp_path):
    root, _ = make_folder(tmp_path)
    assert dataset_spec("VOC2012") is DATASETS["voc2012"]
    assert build_dataset("Folder", root, "test").name == "folder"


def test_moved_per_dataset_facts_keep_their_values():
    # The values config.py, the trainer and the methods held before the registry existed.
    k = {name: spec.expected_positives for name, spec in DATASETS.items()}
    assert k == {"demo": 2.25, "demo-coco": 2.89, "coco2014": 2.9, "voc2007": 1.5, "voc2012": 1.5, "nuswide": 1.9, "cub": 31.4,
                 "vg200": 2.0, "folder": 2.0, "csv": 2.0}
    families = {name: spec.hparam_family for name, spec in DATASETS.items()}
    assert families == {"demo": "coco", "demo-coco": "coco", "coco2014": "coco", "voc2007": "voc", "voc2012": "voc", "nuswide": "nus",
                        "cub": "cub", "vg200": "coco", "folder": "coco", "csv": "coco"}
    assert dict(GENERIC_DEFAULTS) == dict(image_size=448, dim=1024, ffn=2048, epochs=20, batch_size=8,
                                          expected_positives=2.0, lr_step=16, workers=2)
    demo = dataset_spec("demo")
    assert demo.run_defaults() == dict(image_size=128, dim=256, ffn=512, epochs=3, batch_size=16,
                                       expected_positives=2.25, lr_step=16, workers=2, sst_pseudo_start_epoch=1)
    assert dataset_spec("coco2014").run_defaults() == {**GENERIC_DEFAULTS, "expected_positives": 2.9}
    # k rides along in defaults, so config's {**GENERIC_DEFAULTS, **spec.defaults} is complete
    assert all({**GENERIC_DEFAULTS, **s.defaults} == s.run_defaults() for s in DATASETS.values())
    assert [name for name, spec in DATASETS.items() if not spec.needs_root] == ["demo", "demo-coco"]


def test_reader_options_from_the_run_config():
    demo = dataset_spec("demo")
    assert demo.reader_options({"demo_images": 2000}) == {"train_images": 2000, "val_images": 600}
    assert demo.reader_options({"demo_images": 3}) == {"train_images": 3, "val_images": 1}
    assert set(demo.reader_options({"demo_images": 50})) <= set(demo.options)
    assert demo.reader_options({"demo_images": None}) == {}
    coco_like = dataset_spec("demo-coco")
    assert coco_like.reader_options({"demo_images": 100}) == {"train_images": 100, "val_images": 30}
    assert set(coco_like.reader_options({"demo_images": 100})) <= set(coco_like.options)
    for name in dataset_names():
        if name not in ("demo", "demo-coco"):
            assert dataset_spec(name).reader_options({"demo_images": 2000}) == {}


def test_specs_are_read_only():
    spec = dataset_spec("demo")
    with pytest.raises(AttributeError):
        spec.expected_positives = 3.0
    with pytest.raises(TypeError):
        spec.defaults["epochs"] = 100
    with pytest.raises(ValueError, match="hparam_family"):
        DatasetSpec("x", lambda root, split: None, "layout", 1.0, hparam_family="imagenet")
    with pytest.raises(ValueError, match="expected_positives"):
        DatasetSpec("x", lambda root, split: None, "layout", 1.0, defaults={"expected_positives": 2.0})


# ------------------------------------------------------------------------------- a new dataset
def _write_tags(root: Path, n_train: int = 10, n_test: int = 4):
    """A made-up layout: <root>/<split>/tags.txt rows '<file> <tag> [<tag> ...]'."""
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            write_image(root / split / f"{i}.png", seed=i, fmt="PNG")
            rows.append(f"{i}.png " + " ".join(["sun", "rain", "snow"][: 1 + i % 3]))
        (root / split / "tags.txt").write_text("\n".join(rows) + "\n")


def _read_tags(root, official_split, min_tags=1):
    path = Path(root) / official_split / "tags.txt"
    if not path.is_file():
        raise DatasetError("weather", path, "tag list is missing")
    classes = ["sun", "rain", "snow"]
    rows = [line.split() for line in path.read_text().splitlines() if len(line.split()) > min_tags]
    labels = np.array([[c in row[1:] for c in classes] for row in rows], dtype=np.uint8)
    return classes, [str(path.parent / row[0]) for row in rows], labels


def test_a_registered_dataset_needs_no_other_change(tmp_path, monkeypatch):
    spec = DatasetSpec("weather", _read_tags, "<root>/{train,test}/tags.txt + images", expected_positives=2.0,
                       hparam_family="nus", defaults={"epochs": 7}, options=("min_tags",))
    monkeypatch.setitem(DATASETS, "weather", spec)
    _write_tags(tmp_path)
    assert "weather" in dataset_names() and dataset_spec("weather") is spec
    train, val = build_dataset("weather", tmp_path, "train"), build_dataset("weather", tmp_path, "val")
    test = build_dataset("weather", tmp_path, "test")
    assert (len(train), len(val), len(test)) == (8, 2, 4) and train.name == "weather"
    assert train.root == str(tmp_path) and test.class_names == ["sun", "rain", "snow"]
    assert file_names(test.image_paths) == ["0.png", "1.png", "2.png", "3.png"]
    np.testing.assert_array_equal(test.labels, [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]])
    assert len(build_dataset("weather", tmp_path, "test", min_tags=2)) == 2, "options reach the reader"
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['colour'\]; allowed: \['min_tags'\]"):
        build_dataset("weather", tmp_path, "test", colour=1)
    with pytest.raises(ValueError, match=r"needs root=.*<root>/\{train,test\}/tags.txt"):
        build_dataset("weather", None, "test")
    with pytest.raises(DatasetError, match="weather: .*tags.txt: tag list is missing"):
        build_dataset("weather", tmp_path / "elsewhere", "test")
    assert spec.run_defaults()["epochs"] == 7 and spec.run_defaults()["image_size"] == 448


# ------------------------------------------------------------------------------- import layering
DATA = Path(data.__file__).resolve().parent


def _module(path: Path) -> str:
    parts = path.relative_to(DATA.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules `path` imports, relative imports resolved (function-level imports count too)."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return found


GRAPH = {_module(p): _imports(p) for p in DATA.rglob("*.py")}


def test_no_import_cycle_in_data():
    local = {m: {d for d in deps if d in GRAPH and d != m} for m, deps in GRAPH.items()}

    def reachable(start):
        seen, todo = set(), list(local[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(local[m])
        return seen

    assert [m for m in local if m in reachable(m)] == []


def test_loader_imports_point_one_way():
    pkg = "scob_fast.data.loaders"

    def loader_deps(name):
        return {d for d in GRAPH[f"{pkg}.{name}"] if d in GRAPH and d.startswith(pkg + ".")}

    assert loader_deps("base") == set()
    assert all(loader_deps(leaf) == {f"{pkg}.base"} for leaf in ("dali", "pil", "cached"))
    package_deps = {d for d in GRAPH[pkg] if d in GRAPH and d.startswith(pkg + ".")}
    assert package_deps == {f"{pkg}.{leaf}" for leaf in ("base", "dali", "pil", "cached")}


def test_data_imports_no_upper_layer():
    upper = ("scob_fast.models", "scob_fast.engine", "scob_fast.methods", "scob_fast.config", "scob_fast.training")
    assert [(m, d) for m, deps in GRAPH.items() for d in deps if d.startswith(upper)] == []


def test_public_names():
    kept = {"DATASETS", "VOC_CLASSES", "DatasetError", "MultiLabelDataset", "build_dataset", "protocol_split",
            "load_observed", "observe_labels", "observed_path", "parse_regime", "save_observed", "LOADERS",
            "DataLoadError", "build_loader", "dali_available", "epoch_order", "demo_root"}
    added = {"DatasetSpec", "dataset_spec", "dataset_names", "GENERIC_DEFAULTS", "FeatureCache",
             "CachedFeatureLoader", "CleanViewFeatures", "cache_bytes_per_image"}
    assert set(data.__all__) == kept | added and all(hasattr(data, n) for n in data.__all__)
    # normalisation constants belong to the backbone (scob_fast.models.backbone), not to data
    assert not any(hasattr(data, n) for n in ("IMAGENET_MEAN", "IMAGENET_STD", "LITE0_MEAN", "LITE0_STD"))
