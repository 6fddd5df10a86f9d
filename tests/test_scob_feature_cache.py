"""Scob with --cache-features: the clean view's features come from the cache (fp16), the hard view
still from the images; the cached step equals the uncached one within the cache's precision."""
import numpy as np
import pytest
import torch

from scob_fast.config import parse_args
from scob_fast.data import CleanViewFeatures, FeatureCache, build_dataset, build_loader
from scob_fast.engine import checkpoint
from scob_fast.training import run

import test_scob_engines as scob_engines  # its Scob test method (the same small heads and optimiser groups)

C, N, B, S = scob_engines.C, scob_engines.N, scob_engines.B, scob_engines.S
SMALL = ["--dataset", "demo", "--demo-images", "300", "--image-size", "64", "--dim", "64", "--ffn", "128",
         "--batch-size", "16", "--quiet", "--loader", "pil", "--workers", "0", "--method", "scob"]


backbone = scob_engines.backbone     # the module-scoped random-weight Lite0 fixture



def _method(backbone, observed):
    return scob_engines._method("fast", backbone, observed)


def _smooth_images(generator, count):
    """Low-frequency images (objects, not pixel noise), so the CAM's kept cells are not decided by
    the fp16 rounding of the features."""
    coarse = torch.rand(count, 3, 4, 4, generator=generator) * 4 - 2
    return torch.nn.functional.interpolate(coarse, size=(S, S), mode="bilinear", align_corners=False)


def test_cached_step_equals_uncached_within_fp16(backbone):
    observed = torch.zeros(N, C, dtype=torch.int8)
    observed[torch.arange(N), torch.arange(N) % C] = 1
    plain, cached = _method(backbone, observed), _method(backbone, observed)
    cached.load_state_dict(plain.state_dict())
    # SGD: the parameters' difference after the steps is the gradients' (Adam's first steps are
    # about lr x sign(gradient), which would hide or blow up a small difference)
    opt_plain = torch.optim.SGD(plain.param_groups(), lr=0.1)
    opt_cached = torch.optim.SGD(cached.param_groups(), lr=0.1)
    plain.start_epoch(0), cached.start_epoch(0)
    g = torch.Generator().manual_seed(1)
    contrasted = 0
    for _ in range(4):
        index = torch.randperm(N, generator=g)[:B]
        batch = {"image": _smooth_images(g, B), "image_hard": _smooth_images(g, B),
                 "observed": observed[index].float(), "index": index}
        with torch.no_grad():
            f_low, f_high = backbone(batch["image"])
        # what the cache stores and gives back
        stored = {"features_low": f_low.half().float(), "features_high": f_high.half().float()}
        s_plain = plain.train_step(dict(batch), opt_plain)
        s_cached = cached.train_step({**batch, **stored}, opt_cached)
        for key in ("keep_low", "keep_high"):
            assert torch.equal(s_plain[key], s_cached[key]), key
        for key in ("loss_sup", "loss_cl"):
            assert torch.allclose(s_plain[key], s_cached[key], rtol=2e-3, atol=1e-5), (key, s_plain[key], s_cached[key])
        contrasted += float(s_plain["loss_cl"]) != 0.0
    assert contrasted >= 2, "the contrastive branch must run in this test"
    for (name, a), b in zip(plain.named_parameters(), cached.parameters()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4), (name, float((a - b).abs().max()))


def test_cached_step_skips_the_clean_backbone_pass(backbone):
    observed = torch.zeros(N, C, dtype=torch.int8)
    observed[torch.arange(N), 0] = 1
    method = _method(backbone, observed)
    calls = []
    hook = backbone.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape))
    try:
        g = torch.Generator().manual_seed(2)
        index = torch.arange(B)
        batch = {"image": _smooth_images(g, B), "image_hard": _smooth_images(g, B), "observed": observed[index].float(),
                 "index": index}
        with torch.no_grad():
            f_low, f_high = backbone(batch["image"])
        calls.clear()
        method.start_epoch(0)
        method.train_step({**batch, "features_low": f_low, "features_high": f_high},
                          torch.optim.SGD(method.param_groups(), lr=0.1))
    finally:
        hook.remove()
    assert len(calls) == 1, "only the hard view runs through the backbone"


def test_clean_view_features_are_the_loaders_images(cache_dir, backbone):
    dataset = build_dataset("demo", None, "train", train_images=48, val_images=16)
    labels = dataset.labels
    observed = np.zeros_like(labels, dtype=np.int8)
    observed[np.arange(len(dataset)), labels.argmax(1)] = 1
    options = dict(batch_size=8, image_size=64, mean=backbone.spec.mean, std=backbone.spec.std, loader="pil",
                   workers=0, seed=3)
    source = build_loader(dataset, np.zeros_like(observed), train=False, hard_view=False, **options)
    cache = FeatureCache.build(cache_dir / "clean-view", backbone, source, len(dataset), True, {"test": 1})
    loader = CleanViewFeatures(build_loader(dataset, observed, train=True, hard_view=True, **options), cache)
    loader.set_epoch(1)
    flipped = 0
    for batch in loader:
        assert "image_hard" in batch
        with torch.no_grad():
            f_low, f_high = backbone(batch["image"])
        for got, want in ((batch["features_low"], f_low), (batch["features_high"], f_high)):
            assert torch.allclose(got, want, rtol=2e-3, atol=2e-3 * float(want.abs().max()))
        mirrored = batch["flip"]
        flipped += int(mirrored.sum())
        if mirrored.any():   # the other view differs: the test would catch a wrong view
            wrong = torch.from_numpy(np.asarray(cache.high[batch["index"].numpy(), (~mirrored).numpy().astype(np.int64)],
                                                dtype=np.float32))
            assert not torch.allclose(wrong[mirrored], f_high[mirrored], atol=1e-2)
    assert flipped > 0
    assert len(loader) == len(loader.loader) and loader.epoch == 1


def test_train_py_scob_with_cache_features_matches_uncached(cache_dir, tmp_path):
    common = SMALL + ["--epochs", "1", "--max-steps", "4", "--dropout", "0"]
    run(parse_args(common + ["--out", str(tmp_path / "plain")]))
    final = run(parse_args(common + ["--cache-features", "--out", str(tmp_path / "cached")]))
    assert (tmp_path / "cached" / "feature_cache" / "train" / "meta.json").is_file()
    a = checkpoint.load(tmp_path / "plain" / "last.pth")["model"]
    b = checkpoint.load(tmp_path / "cached" / "last.pth")["model"]
    assert torch.equal(a["bank.image_index"], b["bank.image_index"])
    close = [k for k in a if a[k].is_floating_point() and torch.allclose(a[k], b[k], rtol=1e-2, atol=1e-3)]
    assert len(close) >= 0.9 * sum(a[k].is_floating_point() for k in a), sorted(set(a) - set(close))[:5]
    assert final["test"]["mAP"] > 0.0


@pytest.mark.parametrize("flags, reason", [
    (["--engine", "reference"], "--engine reference runs the backbone"),
    (["--published-bn"], "--published-bn runs the backbone's BatchNorm on batch statistics"),
])
def test_scob_cache_refusals(cache_dir, tmp_path, flags, reason):
    with pytest.raises(SystemExit, match=reason):
        run(parse_args(SMALL + ["--epochs", "1", "--cache-features", "--out", str(tmp_path / "r")] + flags))


def test_cache_that_would_not_fit_falls_back_to_the_images(cache_dir, tmp_path, monkeypatch, caplog):
    import collections
    import logging

    from scob_fast.data.loaders import cached as cached_module
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(cached_module.shutil, "disk_usage", lambda path: usage(10 ** 12, 10 ** 12 - 1000, 1000))
    out = tmp_path / "small-disk"
    with caplog.at_level(logging.WARNING, logger="scob_fast"):
        final = run(parse_args(SMALL + ["--epochs", "1", "--max-steps", "2", "--cache-features", "--out", str(out)]))
    assert "training without the cache" in caplog.text and "GiB free" in caplog.text
    assert not (out / "feature_cache").exists()
    assert "test" in final


def test_disk_shortfall_names_what_is_needed(tmp_path):
    from scob_fast.data.loaders.cached import disk_shortfall
    assert disk_shortfall(tmp_path / "not" / "yet", 1) is None           # the nearest existing parent is asked
    reason = disk_shortfall(tmp_path, 10 ** 18)
    assert reason is not None and "GiB" in reason and str(tmp_path) in reason
