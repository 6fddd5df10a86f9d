"""Both loaders (DALI and PIL) on small generated datasets: batch structure, order, flips, the
hard view's geometry and statistics, every official layout, odd image modes, bad files."""
import warnings

import numpy as np
import pytest
import torch

from scob_fast.data import (DataLoadError, build_dataset, build_loader, dali_available, epoch_order,
                            observe_labels)
from scob_fast.data.augment import apply_hard, draw_batch
from scob_fast.data.testing import damage, make_coco, make_folder, make_list_dataset, make_voc, write_image

LOADERS = [pytest.param("dali", marks=pytest.mark.skipif(dali_available() is not None, reason="no DALI")), "pil"]
HALF = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
RAW = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))  # images come back in [0, 255]
# one grey level = 2/255 in HALF units; decoders (libjpeg-turbo vs PIL's libjpeg) and resamplers
# differ by about that much
TOL_HALF = 2.5 / 255 * 2

MODES = [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"),
         ("L", "PNG"), ("RGB", "BMP")]


def _loader(ds, kind, obs=None, **kw):
    obs = observe_labels(ds.labels, "single") if obs is None else obs
    args = dict(batch_size=4, image_size=32, train=False, hard_view=False, loader=kind, workers=1, **HALF)
    args.update(kw)
    return build_loader(ds, obs, **args)


def _collect(loader):
    batches = list(loader)
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}, batches


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A folder dataset of 16 images in every mode/format the issue names (grey, CMYK, PNG, ...)."""
    root = tmp_path_factory.mktemp("mixed")
    rows = []
    for i in range(16):
        mode, fmt = MODES[i % len(MODES)]
        ext = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp"}[fmt]
        write_image(root / f"img{i}.{ext}", seed=i, mode=mode, fmt=fmt)
        rows.append(f"img{i}.{ext},{'a' if i % 2 else 'b'};{'c' if i % 3 else 'a'}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "test.csv").write_text("\n".join(rows) + "\n")
    return build_dataset("folder", root, "test")


@pytest.mark.parametrize("kind", LOADERS)
def test_eval_batches(mixed, kind):
    obs = observe_labels(mixed.labels, "partial:0.5")
    loader = _loader(mixed, kind, obs=obs, batch_size=5)
    assert len(loader) == 4
    got, batches = _collect(loader)
    assert [len(b["index"]) for b in batches] == [5, 5, 5, 1], "eval keeps every sample"
    assert got["index"].tolist() == list(range(16)), "eval keeps dataset order"
    assert got["image"].shape == (16, 3, 32, 32) and got["image"].dtype == torch.float32
    assert "image_hard" not in got
    np.testing.assert_array_equal(got["labels"].numpy(), mixed.labels)
    np.testing.assert_array_equal(got["observed"].numpy(), obs)
    assert loader.skipped == 0


def test_loaders_agree_on_every_mode(mixed):
    if dali_available() is not None:
        pytest.skip("no DALI")
    dali, _ = _collect(_loader(mixed, "dali"))
    pil, _ = _collect(_loader(mixed, "pil"))
    diff = (dali["image"] - pil["image"]).abs().mean(dim=(1, 2, 3))
    assert diff.max() < TOL_HALF, f"per-image mean |dali - pil| {diff.tolist()}"
    # grey sources come back grey (three equal channels) from both
    for i, (mode, _) in enumerate(MODES * 2):
        if mode == "L":
            for got in (dali, pil):
                assert (got["image"][i, 0] - got["image"][i, 1]).abs().max() < 1e-6


@pytest.mark.parametrize("kind", LOADERS)
def test_train_order_flips_and_dtype(mixed, kind):
    ref, _ = _collect(_loader(mixed, kind, batch_size=16))
    loader = _loader(mixed, kind, train=True, batch_size=3, seed=5, dtype=torch.bfloat16)
    assert len(loader) == 5, "train drops the last partial batch by default"
    orders = []
    for epoch in (0, 1, 0):
        loader.set_epoch(epoch)
        got, batches = _collect(loader)
        assert all(len(b["index"]) == 3 for b in batches)
        orders.append(got["index"].tolist())
        assert orders[-1] == epoch_order(16, 5, epoch, True)[:15].tolist()
        assert got["image"].dtype == torch.bfloat16
        img = got["image"].float()
        plain = ref["image"][got["index"]]
        same = (img - plain).abs().mean((1, 2, 3))
        flipped = (img - plain.flip(-1)).abs().mean((1, 2, 3))
        assert (torch.minimum(same, flipped) < TOL_HALF + 0.01).all(), "each image is the eval image or its mirror"
    assert orders[0] == orders[2] and orders[0] != orders[1], "order depends only on seed and epoch"


@pytest.mark.parametrize("kind", LOADERS)
def test_hard_view_geometry_and_statistics(tmp_path, kind):
    """Untouched hard views (no jitter, grey or blur) equal the clean view pixel for pixel (so the
    flip is shared); their rate and the grey rate match the published probabilities (jitter 0.3,
    grey 0.2 x 0.1, blur 0.2); and every hard view is the torch definition (augment.apply_hard) of
    the loader's own clean view with the batch's drawn parameters, within one uint8 level."""
    for i in range(50):
        write_image(tmp_path / f"{i}.png", seed=100 + i, size=(24, 24), fmt="PNG")
    (tmp_path / "train.csv").write_text("".join(f"{i}.png,x\n" for i in range(50)))
    ds = build_dataset("folder", tmp_path, "train", val_fraction=0.0)
    loader = _loader(ds, kind, train=True, hard_view=True, batch_size=50, image_size=24, seed=3, **RAW)
    untouched = grey = total = 0
    worst = 0.0
    for epoch in range(20):
        loader.set_epoch(epoch)
        for b in loader:
            x, h = b["image"], b["image_hard"]
            assert h.shape == x.shape
            untouched += int(((x - h).abs().amax((1, 2, 3)) < 1e-3).sum())
            grey += int(((h[:, 0] - h[:, 1]).abs().amax((1, 2)) < 1e-3).sum())
            total += len(x)
            _, params = draw_batch(3, epoch, 0, 50, flip=True, hard_view=True)
            want = apply_hard(x.round() / 255.0, params) * 255.0
            worst = max(worst, float((h - want).abs().max()))
    assert worst <= 1.0, f"hard view vs the torch definition: {worst} uint8 levels"
    p_untouched = 0.7 * (1 - 0.02) * 0.8
    assert abs(untouched / total - p_untouched) < 4 * np.sqrt(p_untouched * (1 - p_untouched) / total)
    assert abs(grey / total - 0.02) < 4 * np.sqrt(0.02 * 0.98 / total)


LAYOUTS = {
    "coco2014": lambda root: make_coco(root, n_train=6, n_val=5, unannotated=1),
    "voc2007": lambda root: make_voc(root, "2007", n_train=6, n_test=5),
    "voc2012": lambda root: make_voc(root, "2012", n_train=6, n_test=5),
    "nuswide": lambda root: make_list_dataset(root, "nuswide", n_train=6, n_test=5),
    "cub": lambda root: make_list_dataset(root, "cub", "txt", n_train=6, n_test=5),
    "folder": lambda root: make_folder(root, n_train=6, n_test=5),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", LOADERS)
def test_every_layout_loads(tmp_path, layout, kind):
    LAYOUTS[layout](tmp_path)
    ds = build_dataset(layout, tmp_path, "test")
    got, _ = _collect(_loader(ds, kind, batch_size=2))
    assert got["index"].tolist() == list(range(5))
    assert torch.isfinite(got["image"]).all() and got["image"].abs().sum() > 0
    np.testing.assert_array_equal(got["labels"].numpy(), ds.labels)


def _bad_dataset(root):
    make_folder(root, n_train=12, n_test=12)
    ds = build_dataset("folder", root, "test")
    damage(ds.image_paths[1], "truncate")
    damage(ds.image_paths[4], "garbage")
    damage(ds.image_paths[6], "empty")
    damage(ds.image_paths[9], "missing")
    # a file whose bytes, structure and header pass every check but whose compressed image data is
    # broken: only a decoder finds out (for DALI this is the rebuild-and-retry path)
    path = ds.image_paths[10]
    write_image(path, seed=10, fmt="PNG")
    damage(path, "undecodable")
    return ds, {1, 4, 6, 9, 10}


@pytest.mark.parametrize("kind", LOADERS)
def test_bad_images_are_skipped_and_counted(tmp_path, kind):
    ds, bad = _bad_dataset(tmp_path)
    loader = _loader(ds, kind, batch_size=4, max_bad_fraction=0.5, train=True, hard_view=True, drop_last=False)
    for epoch in range(2):
        loader.set_epoch(epoch)
        with pytest.warns(RuntimeWarning, match="skipping image"):
            got, _ = _collect(loader)
        assert sorted(got["index"].tolist()) == sorted(set(range(12)) - bad)
        assert loader.skipped == len(bad), "counted per epoch"
        assert {p for p, _ in loader.skipped_files} == {ds.image_paths[i] for i in bad}
        assert f"{len(bad)} image(s) skipped" in loader.summary()
        np.testing.assert_array_equal(got["labels"].numpy(), ds.labels[got["index"].numpy()])
    if kind == "dali":
        assert loader.rebuilds == 2, "image 10 is only found by the decoder: one rebuild per epoch"


@pytest.mark.parametrize("kind", LOADERS)
def test_too_many_bad_images_stop_the_run(tmp_path, kind):
    ds, _ = _bad_dataset(tmp_path)
    loader = _loader(ds, kind, max_bad_fraction=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(DataLoadError, match=r"folder \(test\): 2 of 12 images failed in epoch 0.*max_bad_fraction=0.1"):
            list(loader)


def test_bad_fraction_from_environment(tmp_path, monkeypatch):
    ds, _ = _bad_dataset(tmp_path)
    monkeypatch.setenv("SCOB_FAST_MAX_BAD_IMAGE_FRACTION", "0.9")
    loader = _loader(ds, "pil")
    assert loader.max_bad_fraction == 0.9
    monkeypatch.setenv("SCOB_FAST_MAX_BAD_IMAGE_FRACTION", "lots")
    with pytest.raises(ValueError, match="SCOB_FAST_MAX_BAD_IMAGE_FRACTION"):
        _loader(ds, "pil")


@pytest.mark.parametrize("kind", LOADERS)
def test_float16(mixed, kind):
    got, _ = _collect(_loader(mixed, kind, dtype=torch.float16, train=True, hard_view=True, batch_size=8))
    assert got["image"].dtype == torch.float16 and got["image_hard"].dtype == torch.float16


def test_bad_arguments(mixed):
    obs = observe_labels(mixed.labels, "single")
    base = dict(batch_size=4, image_size=32, train=False, hard_view=False, loader="pil", **HALF)
    with pytest.raises(ValueError, match="observed has shape"):
        build_loader(mixed, obs[:3], **base)
    for key, value, match in [("loader", "opencv", "loader must be one of"), ("batch_size", 0, "batch_size"),
                              ("image_size", 2, "image_size"), ("dtype", torch.int8, "dtype"),
                              ("workers", -1, "workers"), ("std", (1, 0, 1), "std must be positive"),
                              ("mean", (0.5,), "mean and std need 3 values")]:
        with pytest.raises(ValueError, match=match):
            build_loader(mixed, obs, **{**base, key: value})
    with pytest.raises(ValueError, match="only -1, 0 and 1"):
        build_loader(mixed, obs * 3, **base)


@pytest.mark.parametrize("kind", LOADERS)
def test_abandoned_epoch_then_full_epoch(mixed, kind):
    loader = _loader(mixed, kind, train=True, batch_size=4)
    for _ in loader:
        break  # e.g. a smoke run that stops after one step
    loader.set_epoch(1)
    got, _ = _collect(loader)
    assert sorted(got["index"].tolist()) == list(range(16))
    assert got["index"].tolist() == epoch_order(16, 0, 1, True).tolist()
