"""Scob's building blocks: estimator, losses, correlation, Grad-CAM++, keep masks, prototype bank, EMA."""
import math

import pytest
import torch
import torch.nn.functional as F

from scob_fast.methods.losses import expected_positive_regulariser
from scob_fast.methods.scob import scob_supervised_loss
from scob_fast.methods.scob.cam import cam_keep_masks, grad_cam_plus_plus, keep_masks_from_full, target_classes
from scob_fast.methods.scob.correlation import contrastive_weights, correlation, correlation_loop
from scob_fast.methods.scob.prototype_bank import PrototypeBank
from scob_fast.models.label_estimator import LabelEstimator


def test_estimator_initialisation():
    observed = torch.zeros(50, 6, dtype=torch.int8)
    observed[torch.arange(50), torch.arange(50) % 6] = 1
    est = LabelEstimator(observed, seed=3)
    p = torch.sigmoid(est.logits.detach())
    assert torch.allclose(p[observed == 1], torch.full((50,), 0.995))
    free = p[observed != 1]
    assert free.min() >= 0.2 - 1e-6 and free.max() <= 0.8 + 1e-6
    assert free.std() > 0.1  # really spread over the interval
    assert torch.equal(LabelEstimator(observed, seed=3).logits, est.logits)
    # --estimator-init-width 0.1: ROLE's narrower start, 0.4..0.6
    narrow = torch.sigmoid(LabelEstimator(observed, seed=3, init_width=0.1).logits.detach())[observed != 1]
    assert narrow.min() >= 0.4 - 1e-6 and narrow.max() <= 0.6 + 1e-6 and narrow.std() > 0.03
    with pytest.raises(ValueError, match="init width"):
        LabelEstimator(observed, init_width=0.5)


def test_supervised_loss_hand_computed():
    logits = torch.tensor([[2.0, -1.0]])
    est = torch.tensor([[0.5, 0.0]])
    observed = torch.tensor([[1, 0]])
    k = 1.5
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    p, g = [sig(2.0), sig(-1.0)], [sig(0.5), sig(0.0)]

    def bce(x, y):
        return -sum(yi * math.log(xi) + (1 - yi) * math.log(1 - xi) for xi, yi in zip(x, y)) / 2

    def epr(x):
        return -math.log(x[0]) / 2 + ((sum(x) - k) / 2) ** 2

    expected = 0.5 * ((bce(p, g) + epr(p)) + (bce(g, p) + epr(g)))
    loss = scob_supervised_loss(logits, est, observed, k)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_supervised_loss_gradients_stop_at_targets():
    logits = torch.randn(4, 5, requires_grad=True)
    est = torch.randn(4, 5, requires_grad=True)
    observed = torch.zeros(4, 5)
    observed[:, 0] = 1
    scob_supervised_loss(logits, est, observed, 2.0).backward()
    # d/dlogits comes from L1 only: bce(p, sg(g)) + EPR(p), halved
    logits2 = logits.detach().clone().requires_grad_(True)
    l1 = F.binary_cross_entropy_with_logits(logits2, torch.sigmoid(est.detach())) + \
        expected_positive_regulariser(logits2, observed, 2.0)
    (0.5 * l1).backward()
    assert torch.allclose(logits.grad, logits2.grad, atol=1e-7)


def test_correlation_matches_loop_and_hard_weights():
    torch.manual_seed(0)
    x = torch.rand(100, 7)
    r = correlation(x)
    assert torch.allclose(r, correlation_loop(x), atol=1e-6)
    assert torch.allclose(torch.diagonal(r), torch.ones(7))
    w = contrastive_weights(r, hard=True)
    assert torch.allclose(w, 1 - torch.eye(7))  # off-diagonal correlations of soft labels are < 1
    x2 = x.clone()
    x2[:, 3] = x2[:, 1]  # class 3 present whenever ... R[1,3] = mean(x1^2)/mean(x1) < 1 still
    ws = contrastive_weights(correlation(x2), hard=False)
    assert ws[1, 3] < 1 and ws[1, 3] > 0


def _direct_grad_cam_pp(a, g):
    """Grad-CAM++ for one image, written per channel with loops."""
    k, h, w = a.shape
    cam = torch.zeros(h, w, dtype=torch.float64)
    for c in range(k):
        s = a[c].sum()
        weight = 0.0
        for i in range(h):
            for j in range(w):
                gij = g[c, i, j]
                if gij != 0:
                    alpha = gij ** 2 / (2 * gij ** 2 + s * gij ** 3 + 1e-6)   # grad_cam_plusplus.py eps
                    weight += alpha * max(gij, 0.0)
        cam += weight * a[c]
    cam = cam.clamp(min=0)
    cam = cam - cam.min()
    return cam / (cam.max() + 1e-7)


def test_grad_cam_plus_plus_matches_direct_on_tiny_model():
    torch.manual_seed(0)
    a = torch.rand(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 5)).double()
    logits = head(torch.tanh(a))
    classes = torch.tensor([1, 3])
    grads, = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), a)
    cam = grad_cam_plus_plus(a.detach(), grads)
    for b in range(2):
        assert torch.allclose(cam[b].double(), _direct_grad_cam_pp(a[b].detach(), grads[b]), atol=1e-5)


def test_keep_masks_corners_threshold_and_shapes():
    cam = torch.ones(2, 4, 4)          # layer-resolution maps, upsampled to 64 px
    cam[0, 0, 0] = 0                   # a minimum for the second min-max (in a corner cell)
    cam[1] = 0
    low, high = cam_keep_masks(cam, 64, [(8, 8), (4, 4)])
    assert low.shape == (2, 64) and high.shape == (2, 16) and low.dtype == torch.bool
    grid = high[0].view(4, 4)
    assert not grid[0, 0] and not grid[0, -1] and not grid[-1, 0] and not grid[-1, -1]
    assert grid.sum() == 12 and not high[1].any()
    # a constant map is 0 after the published min-max: nothing kept
    assert not cam_keep_masks(torch.ones(1, 4, 4), 64, [(4, 4)])[0].any()
    # kept where the pooled value is >= the threshold (cam.py generate_binary_mask), not only above it
    exact = torch.full((1, 64, 64), 0.5)
    assert keep_masks_from_full(exact, [(4, 4)], threshold=0.5)[0].sum() == 12
    assert keep_masks_from_full(exact - 1e-3, [(4, 4)], threshold=0.5)[0].sum() == 0


def test_target_classes():
    observed = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 0, 0]])
    probs = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.9, 0.7], [0.1, 0.2, 0.8]])
    assert target_classes(observed, probs).tolist() == [1, 2, 2]


def test_prototype_bank_keeps_topk_of_distinct_images_and_matches_sequential():
    torch.manual_seed(0)
    seq, vec = PrototypeBank(4, 3, 8), PrototypeBank(4, 3, 8)
    all_items = []
    for step in range(6):
        b = 10
        feats = torch.randn(b, 8)
        labels = torch.randint(0, 4, (b,))
        conf = torch.rand(b).round(decimals=1)  # ties on purpose
        index = torch.randint(0, 25, (b,))  # repeats on purpose
        seq.update_sequential(feats, labels, conf, index)
        vec.update(feats, labels, conf, index)
        all_items += list(zip(labels.tolist(), conf.tolist(), index.tolist()))
        assert torch.equal(seq.image_index, vec.image_index)
        assert torch.equal(seq.confidence, vec.confidence)
        assert torch.equal(seq.features, vec.features)
    for c in range(4):
        stored = [i for i in seq.image_index[c].tolist() if i >= 0]
        assert len(stored) == len(set(stored))  # distinct images
        best = {}
        for label, conf, img in all_items:
            if label == c and img not in best:
                best[img] = conf
        top = sorted(best.values(), reverse=True)[:3]
        assert seq.confidence[c, :len(top)].tolist() == pytest.approx(top)
    protos, valid = seq.prototypes()
    assert protos.shape == (4, 8) and valid.all()
    seq.clear()
    assert not seq.prototypes()[1].any()


def test_prototype_bank_state_round_trip_and_shape_error():
    bank = PrototypeBank(3, 2, 4)
    bank.update(torch.randn(2, 4), torch.tensor([0, 2]), torch.tensor([0.5, 0.7]), torch.tensor([1, 2]))
    other = PrototypeBank(3, 2, 4)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.features, bank.features)
    with pytest.raises(ValueError, match="features must be"):
        bank.update(torch.randn(2, 5), torch.tensor([0, 1]), torch.rand(2), torch.tensor([0, 1]))


def test_estimator_drift_is_zero_at_start_and_measures_unknown_entries():
    observed = torch.zeros(6, 3, dtype=torch.int8)
    observed[:, 0] = 1
    est = LabelEstimator(observed, seed=1)
    index = torch.arange(6)
    assert est.drift(index, observed > 0).item() == 0.0
    with torch.no_grad():
        est.logits[:, 0] += 5.0      # observed positives moving does not count
    assert est.drift(index, observed > 0).item() == 0.0
    with torch.no_grad():
        est.logits[:, 1:] = 20.0     # every unknown estimate pushed to ~1
    expected = (1.0 - torch.sigmoid(est.initial_logits[:, 1:])).mean().item()
    assert est.drift(index, observed > 0).item() == pytest.approx(expected, rel=1e-5)
    assert "initial_logits" not in est.state_dict()
