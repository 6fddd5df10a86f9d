"""SST (Chen et al., AAAI 2022): every loss term on hand-computed examples, the pseudo-label rules,
the FIFO bank, the label graph, and a few training steps of the whole method on a stub backbone."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scob_fast.engine.amp import AmpPolicy
from scob_fast.methods.base import MethodContext
from scob_fast.methods.sst import (SST, FeatureBank, cooccurrence_loss, cross_pseudo_labels, feature_distance_loss,
                                   intra_pseudo_labels, label_graph, pair_index, pair_matrix, partial_bce,
                                   threshold_at)


def softplus(x):
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_partial_bce_ignores_unknown():
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.3, 0.0, -0.7]])
    targets = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    # observed: (0,0) positive, (0,2) negative, (1,2) positive
    expected = (softplus(-0.5) + softplus(2.0) + softplus(0.7)) / 3
    assert partial_bce(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    assert partial_bce(logits, torch.zeros_like(targets)).item() == 0.0


def test_cooccurrence_loss_only_pairs_with_both_labels_observed():
    # image 0: labels (1, 1, 0) -> only pair (0,1) is known, target 1
    # image 1: labels (1, -1, 1) -> pairs (0,1) t=0, (0,2) t=1, (1,2) t=0
    observed = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 1.0]])
    pair_logits = torch.tensor([[0.4, -2.0, 3.0], [1.0, 0.2, -0.5]])     # pairs (0,1), (0,2), (1,2)

    def pos(x):   # -log(p) * (1 - p)^1
        p = sigmoid(x)
        return -math.log(p) * (1 - p)

    def neg(x):   # -log(min(1, 1 - p + 0.05)) * (1 - that)^2
        q = min(1.0, 1 - sigmoid(x) + 0.05)
        return -math.log(q) * (1 - q) ** 2

    expected = (pos(0.4) + neg(1.0) + pos(0.2) + neg(-0.5)) / 4
    assert cooccurrence_loss(pair_logits, observed).item() == pytest.approx(expected, rel=1e-5)


def test_feature_distance_loss():
    f = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]], [[0.0, -1.0]]])      # [B=3, C=1, 2]
    observed = torch.tensor([[1.0], [1.0], [-1.0]])
    c01, c02, c12 = 1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)
    expected = (1 - c01) + ((1 + c02) + (1 + c12)) / 2
    assert feature_distance_loss(f, observed).item() == pytest.approx(expected, rel=1e-6)
    # unknown labels take part in no pair
    assert feature_distance_loss(f, torch.tensor([[1.0], [0.0], [0.0]])).item() == 0.0


def test_pair_matrix_symmetric_and_ordered():
    i, j = pair_index(4)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    values = torch.arange(6.0)[None]
    m = pair_matrix(values, 4)
    assert torch.equal(m[0], m[0].t())
    assert m[0, 1, 3].item() == 4.0 and m[0, 2, 2].item() == 1.0


def test_intra_pseudo_labels_rules():
    c = 4
    prob = torch.full((2, c, c), 0.1)
    # image 0: positives {0, 1}; unknown 2 has mean (0.99 + 0.91) / 2 = 0.95 -> pseudo (>=);
    # unknown 3 has mean (0.99 + 0.5) / 2 < 0.95 -> stays unknown.
    prob[0, 0, 2] = prob[0, 2, 0] = 0.99
    prob[0, 1, 2] = prob[0, 2, 1] = 0.91
    prob[0, 0, 3] = prob[0, 3, 0] = 0.99
    prob[0, 1, 3] = prob[0, 3, 1] = 0.5
    # image 1: no positive -> no pseudo label even where scores are high
    prob[1] = 0.99
    observed = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, -1.0, 0.0, -1.0]])
    out = intra_pseudo_labels(prob.double(), observed.double(), 0.95)
    assert out.tolist() == [[1.0, 1.0, 1.0, 0.0], [0.0, -1.0, 0.0, -1.0]]
    # an observed negative is never overridden, however high its score
    observed2 = torch.tensor([[1.0, 1.0, -1.0, 0.0]])
    out2 = intra_pseudo_labels(prob[:1].double(), observed2.double(), 0.5)
    assert out2.tolist() == [[1.0, 1.0, -1.0, 1.0]]


def test_cross_pseudo_labels_rules():
    bank = torch.zeros(3, 4, 2)
    bank[0, :] = torch.tensor([1.0, 0.0])            # full bank, all along x
    bank[1, :2] = torch.tensor([0.0, 1.0])           # half-empty bank: empty slots count 0
    bank[2, :] = torch.tensor([1.0, 0.0])
    features = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]],
                             [[1.0, 1.0], [0.0, 1.0], [-1.0, 0.0]]])
    observed = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    out = cross_pseudo_labels(features, observed, bank, 0.9)
    # (0,0): cos 1 -> 1; (0,1): mean (1+1+0+0)/4 = 0.5 -> 0; (0,2) observed negative stays -1;
    # (1,0): cos 0.707 -> 0; (1,1): 0.5 -> 0; (1,2): -1 -> 0
    assert out.tolist() == [[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]]
    assert cross_pseudo_labels(features, observed, bank, 0.5)[0, 1].item() == 1.0


def test_threshold_schedule():
    values = [threshold_at(e, 0.95, 0.025, 0.75, 5) for e in range(16)]
    assert values[:6] == [0.95] * 6
    assert values[6] == pytest.approx(0.925) and values[7] == pytest.approx(0.9)
    assert values[13] == pytest.approx(0.75) and values[15] == 0.75


def test_feature_bank_fifo():
    bank = FeatureBank(num_classes=2, capacity=3, dim=1)

    def push(values, positive):
        bank.push(torch.tensor(values, dtype=torch.float32)[:, :, None], torch.tensor(positive))

    def stored(c):
        return sorted(v for v in bank.features[c, :, 0].tolist() if v != 0)

    push([[1, 10], [2, 20]], [[True, False], [True, True]])
    assert stored(0) == [1, 2] and stored(1) == [20] and bank.count.tolist() == [2, 1]
    push([[3, 30], [4, 40]], [[True, True], [True, False]])          # class 0 overflows: 1 is evicted
    assert stored(0) == [2, 3, 4] and stored(1) == [20, 30]
    push([[5, 50]], [[True, False]])                                 # then 2
    assert stored(0) == [3, 4, 5] and bank.count.tolist() == [3, 2]
    push([[6, 0], [7, 0], [8, 0], [9, 0]], [[True, False]] * 4)      # more than K at once: the last K stay
    assert stored(0) == [7, 8, 9]
    push([[11, 0]], [[True, False]])                                 # and the oldest of those goes next
    assert stored(0) == [8, 9, 11]
    bank.clear()
    assert bank.features.abs().sum().item() == 0 and bank.count.tolist() == [0, 0]


def test_label_graph_from_partial_labels():
    observed = torch.tensor([[1, 1, 0], [1, -1, 1], [1, 0, 1], [-1, 1, 1]], dtype=torch.int8)
    g = label_graph(observed)
    # P(1 | 0): images with 0 positive and 1 observed: rows 0, 1 -> one positive -> 0.5
    assert g[0, 1].item() == pytest.approx(0.5)
    # P(2 | 0): rows 1, 2 have 2 observed and 0 positive -> 2 / 2
    assert g[0, 2].item() == pytest.approx(1.0)
    # P(0 | 2): rows 1, 2, 3 -> 2 / 3
    assert g[2, 0].item() == pytest.approx(2 / 3)
    assert torch.equal(torch.diagonal(g), torch.ones(3))


# -- the method end to end on a stub backbone -----------------------------------------------------

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


def _method(num_classes=5, pseudo_start=0, bank_size=4, observed=None):
    torch.manual_seed(0)
    args = argparse.Namespace(dim=32, ffn=64, dropout=0.0, lr_linear=1e-3, lr_classifier=1e-3, batch_size=6,
                              seed=0, dataset="test", sst_threshold=0.95, sst_threshold_step=0.025,
                              sst_threshold_floor=0.75, sst_pseudo_start_epoch=pseudo_start,
                              sst_bank_size=bank_size, sst_intra_weight=1.0, sst_inter_weight=1.0,
                              sst_cooc_weight=10.0, sst_distance_weight=0.05)
    if observed is None:
        observed = torch.randint(-1, 2, (24, num_classes), dtype=torch.int8)
    ctx = MethodContext(backbone=StubBackbone(), num_classes=num_classes, num_samples=observed.shape[0],
                        observed=observed, args=args, device=torch.device("cpu"),
                        amp=AmpPolicy(torch.device("cpu"), False), image_size=32)
    return SST(ctx)


def _batch(num_classes=5, b=6):
    g = torch.Generator().manual_seed(1)
    labels = (torch.rand(b, num_classes, generator=g) < 0.4).float()
    keep = torch.rand(b, num_classes, generator=g) < 0.6
    observed = torch.where(keep, labels * 2 - 1, torch.zeros_like(labels))
    return {"image": torch.randn(b, 3, 32, 32, generator=g), "observed": observed, "labels": labels,
            "index": torch.arange(b)}


def test_sst_train_steps_reduce_loss_and_predict_shape():
    method = _method(pseudo_start=0)
    batch = _batch()
    optimizer = torch.optim.Adam(method.param_groups())
    method.train()
    method.start_epoch(1)        # past the first epoch's ramp: every term at full weight
    first = method.train_step(batch, optimizer)
    keys = set(first)
    assert {"loss", "loss_cls", "loss_cooc", "loss_dist", "loss_intra", "loss_inter", "pseudo_intra",
            "pseudo_inter"} <= keys
    for _ in range(15):
        stats = method.train_step(batch, optimizer)
        assert set(stats) == keys and all(not v.requires_grad for v in stats.values())
    assert stats["loss_cls"].item() < first["loss_cls"].item()
    assert stats["loss"].item() < first["loss"].item()
    method.eval()
    logits = method.predict_logits(batch["image"])
    assert logits.shape == (6, 5) and torch.isfinite(logits).all()
    # 16 pushes of the batch's observed positives, capped at the capacity; none for a class without any
    positives = (batch["observed"] > 0).sum(0)
    assert torch.equal(method.bank.count, (16 * positives).clamp(max=4))


def test_sst_pseudo_labels_wait_for_start_epoch():
    method = _method(pseudo_start=2)
    batch = _batch()
    f_high = method.backbone(batch["image"])[1]
    method.start_epoch(1)
    _, stats = method.losses(f_high, batch["observed"])
    assert stats["loss_intra"].item() == 0.0 and stats["loss_inter"].item() == 0.0
    method.start_epoch(2)
    assert method.threshold() == 0.95
    _, stats = method.losses(f_high, batch["observed"])
    assert stats["loss_intra"].item() > 0.0
    method.start_epoch(4)
    assert method.threshold() == pytest.approx(0.9)


def test_sst_pseudo_terms_match_partial_bce_of_augmented_labels():
    method = _method(pseudo_start=0)
    method.ctx.args.sst_threshold = 0.0          # every unknown becomes a pseudo positive
    method.ctx.args.sst_threshold_floor = 0.0
    batch = _batch()
    f_high = method.backbone(batch["image"])[1]
    method.start_epoch(1)
    with torch.no_grad():
        logits = method.net(f_high)
    _, stats = method.losses(f_high, batch["observed"])
    has_positive = (batch["observed"] > 0).any(dim=1, keepdim=True)
    intra_expected = torch.where((batch["observed"] == 0) & has_positive, torch.ones_like(batch["observed"]),
                                 batch["observed"])
    assert stats["loss_intra"].item() == pytest.approx(partial_bce(logits, intra_expected).item(), rel=1e-5)
    assert stats["pseudo_intra"].item() == ((batch["observed"] == 0) & has_positive).sum().item()


def test_semantic_decoupling_is_an_attention_average():
    method = _method()
    sd = method.net.decoupling
    sd.eval()
    x = torch.randn(2, 16, 1, 1).expand(2, 16, 3, 3).contiguous()    # every position the same
    out = sd(x)
    reduced = sd.reduce(x)[:, :, 0, 0]
    assert out.shape == (2, 5, 32)
    torch.testing.assert_close(out, reduced[:, None, :].expand(2, 5, 32), rtol=1e-5, atol=1e-5)
