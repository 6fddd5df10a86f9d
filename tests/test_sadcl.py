"""SADCL (Ma et al., 2023): both contrastive terms against independently written formulas on small
examples, the label-level network's shapes, and a few training steps on a stub backbone."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scob_fast.engine.amp import AmpPolicy
from scob_fast.methods.base import MethodContext
from scob_fast.methods.sadcl import (SADCL, present_features, prototype_to_sample_loss, sample_to_sample_loss,
                                     sine_position_embedding)


def _unit(*v):
    t = torch.tensor(v, dtype=torch.float64)
    return t / t.norm()


def test_present_features_selects_observed_positives():
    z = torch.arange(2 * 3 * 1, dtype=torch.float32).reshape(2, 3, 1)
    observed = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, 0.0]])
    feats, classes = present_features(z, observed)
    assert feats[:, 0].tolist() == [0.0, 2.0, 4.0] and classes.tolist() == [0, 2, 1]


def test_sample_to_sample_is_supcon_over_present_classes():
    # two images, three classes; present: image 0 {0, 1}, image 1 {0, 2}
    z = torch.zeros(2, 3, 2, dtype=torch.float64)
    z[0, 0], z[0, 1] = _unit(1, 0), _unit(0, 1)
    z[1, 0], z[1, 2] = _unit(1, 1), _unit(-1, 0.5)
    observed = torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, 1.0]], dtype=torch.float64)
    t = 0.2
    a, b, c, d = z[0, 0], z[0, 1], z[1, 0], z[1, 2]          # classes 0, 1, 0, 2
    # only the two class-0 features have a positive (each other); the others are left out of the mean
    la = -math.log(math.exp(a @ c / t) / sum(math.exp(a @ x / t) for x in (b, c, d)))
    lc = -math.log(math.exp(c @ a / t) / sum(math.exp(c @ x / t) for x in (a, b, d)))
    expected = (la + lc) / 2
    got = sample_to_sample_loss(z, observed, t, backend="reference")
    assert got.item() == pytest.approx(expected, rel=1e-9)
    assert sample_to_sample_loss(z, observed, t).item() == pytest.approx(expected, rel=1e-6)


def test_prototype_to_sample_is_cross_entropy_over_prototypes():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(3, 4, 5, generator=g, dtype=torch.float64), dim=-1)
    prototypes = torch.randn(4, 5, generator=g, dtype=torch.float64) * 3
    observed = torch.tensor([[1, -1, 1, -1], [-1, -1, -1, 1], [1, 1, -1, -1]], dtype=torch.float64)
    t = 0.07
    rows, classes = [], []
    for b in range(3):
        for c in range(4):
            if observed[b, c] > 0:
                rows.append(z[b, c])
                classes.append(c)
    logits = torch.stack(rows) @ F.normalize(prototypes, dim=-1).t() / t
    expected = F.cross_entropy(logits, torch.tensor(classes))
    got = prototype_to_sample_loss(z, observed, prototypes, t, backend="reference")
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)
    assert prototype_to_sample_loss(z, observed, prototypes, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_prototype_loss_gradient_reaches_prototypes():
    g = torch.Generator().manual_seed(1)
    z = F.normalize(torch.randn(2, 3, 4, generator=g), dim=-1)
    prototypes = torch.randn(3, 4, generator=g, requires_grad=True)
    observed = torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])
    prototype_to_sample_loss(z, observed, prototypes, 0.07).backward()
    assert prototypes.grad is not None and prototypes.grad.abs().sum() > 0


def test_sine_position_embedding():
    pe = sine_position_embedding(3, 4, 8)
    assert pe.shape == (12, 8)
    # row half is constant along a row, column half constant along a column
    grid = pe.reshape(3, 4, 8)
    assert torch.equal(grid[:, 0, :4], grid[:, 3, :4]) and torch.equal(grid[0, :, 4:], grid[2, :, 4:])
    assert not torch.equal(grid[0, 0], grid[1, 1])
    with pytest.raises(ValueError, match="dim"):
        sine_position_embedding(2, 2, 6)


class StubBackbone(nn.Module):
    channels = (8, 16)

    def __init__(self):
        super().__init__()
        self.low = nn.Conv2d(3, 8, 4, stride=4)
        self.high = nn.Conv2d(3, 16, 8, stride=8)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, images):
        return torch.relu(self.low(images)), torch.relu(self.high(images))


def _method(num_classes=5):
    torch.manual_seed(0)
    args = argparse.Namespace(dim=32, ffn=64, dropout=0.0, lr_linear=1e-3, lr_transformer=1e-3, lr_projector=1e-3,
                              lr_classifier=1e-3, batch_size=6, seed=0, sadcl_layers=2, sadcl_s2s_weight=0.1,
                              sadcl_p2s_weight=0.05, sadcl_s2s_temperature=0.2, sadcl_p2s_temperature=0.07)
    observed = torch.randint(0, 2, (24, num_classes), dtype=torch.int8) * 2 - 1
    ctx = MethodContext(backbone=StubBackbone(), num_classes=num_classes, num_samples=24, observed=observed,
                        args=args, device=torch.device("cpu"), amp=AmpPolicy(torch.device("cpu"), False),
                        image_size=32)
    return SADCL(ctx)


def _batch(num_classes=5, b=6):
    g = torch.Generator().manual_seed(2)
    labels = (torch.rand(b, num_classes, generator=g) < 0.5).float()
    return {"image": torch.randn(b, 3, 32, 32, generator=g), "observed": labels * 2 - 1, "labels": labels,
            "index": torch.arange(b)}


def test_sadcl_train_steps_reduce_loss_and_predict_shape():
    method = _method()
    batch = _batch()
    optimizer = torch.optim.Adam(method.param_groups())
    method.train()
    first = method.train_step(batch, optimizer)
    assert set(first) == {"loss", "loss_cls", "loss_s2s", "loss_p2s"}
    assert first["loss_s2s"].item() > 0 and first["loss_p2s"].item() > 0
    for _ in range(10):
        stats = method.train_step(batch, optimizer)
    for key in ("loss", "loss_cls", "loss_s2s", "loss_p2s"):
        assert stats[key].item() < first[key].item(), key
    method.eval()
    logits = method.predict_logits(batch["image"])
    assert logits.shape == (6, 5) and torch.isfinite(logits).all()
    h = method.net.label_features(method.backbone(batch["image"])[1])
    assert h.shape == (6, 5, 32)


def test_sadcl_param_groups_cover_every_trainable_parameter_once():
    method = _method()
    grouped = [p for g in method.param_groups() for p in g["params"]]
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert len(grouped) == len({id(p) for p in grouped})
    assert {id(p) for p in grouped} == {id(p) for p in trainable}
