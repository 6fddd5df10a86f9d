"""bench/published_replica.py: the replica of the public Scob iteration's cost really does the public
loop's extra work (hard view rebuilt inside the step from the clean image, its backbone pass with a
graph down to the pixels, BatchNorm on batch statistics after the CAM), so that `bench/train_step.py
--vs-published` measures against it and not against a cheaper procedure."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.published_replica import PublishedIterationScob
from scob_fast.engine.amp import AmpPolicy
from scob_fast.methods.base import HeadOptions, LearningRates, MethodContext
from scob_fast.methods.scob import ScobConfig
from scob_fast.models.backbone import build_backbone


def _replica(samples=8, classes=4, size=96):
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", pretrained=True, fold_batchnorm=False)
    observed = torch.zeros(samples, classes, dtype=torch.int8)
    observed[torch.arange(samples), torch.arange(samples) % classes] = 1
    config = ScobConfig(engine="reference", published_bn=True, published_ema=True, published_bank=True)
    ctx = MethodContext(backbone=backbone, num_classes=classes, num_samples=samples, observed=observed, config=config,
                        device=torch.device("cpu"), amp=AmpPolicy("cpu", False), image_size=size,
                        heads=HeadOptions(dim=32, ffn=64, dropout=0.1), lr=LearningRates(), expected_positives=1.5,
                        seed=0)
    method = PublishedIterationScob(ctx)
    method.net.set_attention_backend("sdpa")
    return method, observed


def _batch(observed, size, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    index = torch.arange(n)
    return {"image": torch.randn(n, 3, size, size, generator=g), "image_hard": torch.zeros(n, 3, size, size),
            "observed": observed[index].float(), "index": index}


def test_the_replica_runs_the_public_loops_extra_work():
    size = 96
    method, observed = _replica(size=size)
    optimizer = torch.optim.Adam(method.param_groups())
    method.train()
    method.start_epoch(0)
    bn = next(m for m in method.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    ran = 0
    for step in range(3):
        stats = method.train_step(_batch(observed, size, seed=step), optimizer)
        ran += int(stats["cl_step"])
    assert ran > 0, "the contrastive step never ran: the test shows nothing"
    # every contrastive step's hard view went through the backbone with a graph to the pixels
    assert method.hard_passes_with_grad == 3
    # --published-bn: the passes after the CAM ran BN on batch statistics, so the running ones moved
    assert not torch.equal(bn.running_mean, before)


def test_the_hard_view_is_rebuilt_from_the_clean_image_and_not_taken_from_the_batch():
    size = 96
    method, observed = _replica(size=size)
    images = torch.randn(3, 3, size, size)
    hard = method._hard_view(images.clone().requires_grad_(True))
    assert hard.shape == images.shape and hard.requires_grad
    # the images the draw leaves untouched come back equal (un-normalise / normalise round trip)
    method._rng = np.random.default_rng(0)
    from scob_fast.data.augment import sample_hard_params, touched
    params = sample_hard_params(np.random.default_rng(0), 3)
    hard = method._hard_view(images)
    for i, changed in enumerate(touched(params)):
        if not changed:
            unit = (images[i] * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
                    + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)).clamp(0, 1)
            expected = (unit - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
                [0.229, 0.224, 0.225]).view(3, 1, 1)
            torch.testing.assert_close(hard[i], expected, atol=1e-5, rtol=0)
    # and the batch's own hard view is ignored: a batch whose image_hard is NaN trains without NaN
    optimizer = torch.optim.Adam(method.param_groups())
    method.train()
    method.start_epoch(0)
    batch = _batch(observed, size)
    batch["image_hard"] = torch.full_like(batch["image"], float("nan"))
    stats = method.train_step(batch, optimizer)
    assert all(torch.isfinite(v).all() for v in stats.values())


@pytest.mark.parametrize("flag", ["--vs-published", "--sizes"])
def test_the_benchmark_flag_exists(flag):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, str(root / "bench" / "train_step.py"), "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert flag in out
