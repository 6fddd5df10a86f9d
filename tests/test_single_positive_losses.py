"""Single-positive baselines: each loss's value and gradient against explicit per-entry formulas
written out here with the math module (closed-form derivatives worked by hand), plus the behaviour
each paper specifies (which labels LL-* reject, ROLE's initialisation, SPLC's warm-up, APL's counts)."""
import copy
import math

import numpy as np

import pytest
import torch
import torch.nn.functional as F

from scob_fast.methods.base import HeadOptions, LearningRates, MethodContext
from scob_fast.methods.single_positive import EM, EM_APL
from scob_fast.methods.single_positive.config import BaselineConfig
from scob_fast.methods.single_positive.losses import (
    EM_APL_DATASET_HPARAMS,
    SINGLE_POSITIVE_LOSSES,
    build_single_positive_loss,
)

# (atol, rtol) of a loss value or gradient against the float64 formulas below, by logits dtype.
TOLERANCES = {torch.float64: (1e-12, 1e-10), torch.float32: (1e-6, 1e-5)}
K = 1.5  # expected positives per image used by EPR / ROLE in these tests

# A fixed example, B = 3 images, C = 4 classes, one observed positive per row.
X = [[2.0, -1.0, 0.5, -3.0],
     [-0.5, 1.5, -2.0, 0.25],
     [0.0, 3.0, -1.25, 1.0]]
Y = [[1, 0, 0, 0],
     [0, 0, 1, 0],
     [0, 1, 0, 0]]


def sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def bce(x, t):
    p = sig(x)
    return -t * math.log(p) - (1 - t) * math.log(1 - p)


def entries(rows):
    return [(b, c) for b in range(len(rows)) for c in range(len(rows[0]))]


def run(loss_obj, x_rows, y_rows, epoch, index=None, dtype=torch.float64):
    x = torch.tensor(x_rows, dtype=dtype, requires_grad=True)
    y = torch.tensor(y_rows, dtype=torch.float32)
    if index is None:
        index = torch.arange(len(x_rows))
    value = loss_obj.loss(x, y, index, epoch)
    value.backward()
    return value, x.grad


def assert_close(actual, expected, dtype=torch.float64):
    atol, rtol = TOLERANCES[dtype]
    expected = torch.as_tensor(expected, dtype=torch.float64)
    actual = actual.detach().to(torch.float64)
    bad = ~torch.isclose(actual, expected, atol=atol, rtol=rtol)
    assert not bad.any(), (f"{int(bad.sum())} of {bad.numel()} differ; first at "
                           f"{bad.nonzero()[:3].tolist()}: {actual[bad][:3].tolist()} vs {expected[bad][:3].tolist()}")


def random_example(batch, classes, density, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, classes, generator=gen, dtype=torch.float64) * 2).tolist()
    y = (torch.rand(batch, classes, generator=gen) < density).float()
    y[torch.arange(batch), torch.randint(0, classes, (batch,), generator=gen)] = 1  # >= 1 positive
    return x, y.int().tolist()


# ----- explicit formulas (value, d value / d x) ---------------------------------------------------

def formula_an(x, y, smoothing=0.0, weighted=False):
    n, C = len(x) * len(x[0]), len(x[0])
    value, grad = 0.0, [[0.0] * C for _ in x]
    for b, c in entries(x):
        t = (1 - smoothing) if y[b][c] else smoothing
        w = 1.0 if (y[b][c] or not weighted) else 1.0 / (C - 1)
        value += w * bce(x[b][c], t) / n
        grad[b][c] = w * (sig(x[b][c]) - t) / n
    return value, grad


def formula_epr(x, y, k):
    B, C = len(x), len(x[0])
    n = B * C
    mean_count = sum(sig(v) for row in x for v in row) / B
    value = sum(-math.log(sig(x[b][c])) for b, c in entries(x) if y[b][c]) / n
    value += ((mean_count - k) / C) ** 2
    grad = [[(-y[b][c] * (1 - sig(x[b][c])) / n
              + 2 * (mean_count - k) / C ** 2 * sig(x[b][c]) * (1 - sig(x[b][c])) / B)
             for c in range(C)] for b in range(B)]
    return value, grad


def formula_em(x, y, alpha, pseudo=None, beta=0.0):
    """pseudo: {(b, c): soft target} for APL's pseudo-negatives."""
    pseudo = pseudo or {}
    n, C = len(x) * len(x[0]), len(x[0])
    value, grad = 0.0, [[0.0] * C for _ in x]
    for b, c in entries(x):
        v, p = x[b][c], sig(x[b][c])
        if y[b][c]:
            value += -math.log(p) / n
            grad[b][c] = (p - 1) / n
        elif (b, c) in pseudo:
            t = pseudo[(b, c)]
            value += beta * bce(v, t) / n
            grad[b][c] = beta * (p - t) / n
        else:
            value += alpha * (p * math.log(p) + (1 - p) * math.log(1 - p)) / n
            grad[b][c] = alpha * p * (1 - p) * v / n  # d/dx of -H(p) is p (1 - p) x
    return value, grad


def formula_splc(x, y, epoch, tau=0.6, margin=1.0, gamma=2.0, corrected_margin=False, reduction="sum"):
    n, C = (len(x) * len(x[0]) if reduction == "mean" else 1), len(x[0])
    value, grad = 0.0, [[0.0] * C for _ in x]
    for b, c in entries(x):
        v = x[b][c]
        corrected = not y[b][c] and epoch >= 1 and sig(v) > tau
        if y[b][c] or corrected:
            q = sig(v - margin if (y[b][c] or corrected_margin) else v)
            value += -(1 - q) ** gamma * math.log(q) / n
            grad[b][c] = (gamma * (1 - q) ** gamma * q * math.log(q) - (1 - q) ** (gamma + 1)) / n
        else:
            p = sig(v)
            value += -p ** gamma * math.log(1 - p) / n
            grad[b][c] = (-gamma * p ** gamma * (1 - p) * math.log(1 - p) + p ** (gamma + 1)) / n
    return value, grad


def formula_large_loss(x, y, k, mode, selection="published"):
    """mode 'reject' or 'correct'. published: every entry whose masked BCE (0 on observed entries) is
    >= the k-th largest is modified; topk: the k largest assumed-negative BCEs. Returns the entries
    corrected for good too (published: strictly above the k-th)."""
    n, C = len(x) * len(x[0]), len(x[0])
    if selection == "topk":
        unknown = sorted((bce(x[b][c], 0.0), (b, c)) for b, c in entries(x) if not y[b][c])
        chosen = {bc for _, bc in unknown[len(unknown) - k:]} if k else set()
        kept = chosen
    else:
        masked = {(b, c): 0.0 if y[b][c] else bce(x[b][c], 0.0) for b, c in entries(x)}
        kth = sorted(masked.values(), reverse=True)[k - 1] if k else float("inf")
        chosen = {bc for bc, v in masked.items() if v >= kth}
        kept = {bc for bc, v in masked.items() if v > kth}
    value, grad = 0.0, [[0.0] * C for _ in x]
    for b, c in entries(x):
        if (b, c) in chosen:
            if mode == "correct":
                t = 1.0 - y[b][c]
                value += bce(x[b][c], t) / n
                grad[b][c] = (sig(x[b][c]) - t) / n
        else:
            value += bce(x[b][c], y[b][c]) / n
            grad[b][c] = (sig(x[b][c]) - y[b][c]) / n
    return value, grad, kept


# ----- value and gradient of every loss -------------------------------------------------------------

STATELESS = {
    "an": lambda x, y, e: formula_an(x, y),
    "an-ls": lambda x, y, e: formula_an(x, y, smoothing=0.1),
    "wan": lambda x, y, e: formula_an(x, y, weighted=True),
    "epr": lambda x, y, e: formula_epr(x, y, K),
    "em": lambda x, y, e: formula_em(x, y, alpha=0.1),
    "splc": lambda x, y, e: formula_splc(x, y, e),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("epoch", [0, 1])
@pytest.mark.parametrize("name", sorted(STATELESS))
def test_stateless_hand_example(name, epoch, dtype):
    value, grad = run(SINGLE_POSITIVE_LOSSES[name](5, 4, K), X, Y, epoch, dtype=dtype)
    expected_value, expected_grad = STATELESS[name](X, Y, epoch)
    assert_close(value, expected_value, dtype)
    assert_close(grad, expected_grad, dtype)


@pytest.mark.parametrize("shape", [(1, 3), (6, 20), (16, 80)])
@pytest.mark.parametrize("density", [0.0, 0.3])
@pytest.mark.parametrize("name", sorted(STATELESS))
def test_stateless_random(name, shape, density):
    x, y = random_example(*shape, density, seed=100 * shape[0] + shape[1])
    value, grad = run(SINGLE_POSITIVE_LOSSES[name](shape[0], shape[1], K), x, y, epoch=2)
    expected_value, expected_grad = STATELESS[name](x, y, 2)
    assert_close(value, expected_value)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("corrected_margin, reduction", [(True, "sum"), (False, "mean"), (True, "mean")])
def test_splc_variants(corrected_margin, reduction):
    # The paper's equation puts the margin on corrected labels too; the authors' code does not.
    loss = SINGLE_POSITIVE_LOSSES["splc"](5, 4, corrected_margin=corrected_margin, reduction=reduction)
    value, grad = run(loss, X, Y, epoch=1)
    expected_value, expected_grad = formula_splc(X, Y, 1, corrected_margin=corrected_margin, reduction=reduction)
    assert_close(value, expected_value)
    assert_close(grad, expected_grad)
    assert abs(expected_value - formula_splc(X, Y, 1, reduction=reduction)[0]) > 1e-3 or not corrected_margin


def test_role_hand_example():
    N, C = 5, 4
    index = [3, 0, 4]
    G = [[0.3 * (r - c) for c in range(C)] for r in range(N)]
    loss = SINGLE_POSITIVE_LOSSES["role"](N, C, K)
    loss.to(torch.float64)
    loss.load_state_dict({"estimator": torch.tensor(G, dtype=torch.float64), "seen": torch.ones(N, dtype=torch.bool)})
    value, grad_x = run(loss, X, Y, epoch=0, index=torch.tensor(index))

    B, n = len(X), len(X) * C
    P = [[sig(v) for v in row] for row in X]
    E = [[sig(G[r][c]) for c in range(C)] for r in index]
    count_p = sum(map(sum, P)) / B
    count_e = sum(map(sum, E)) / B
    expected = 0.0
    want_x = [[0.0] * C for _ in range(B)]
    want_g = [[0.0] * C for _ in range(N)]
    for b, c in entries(X):
        p, e, y = P[b][c], E[b][c], Y[b][c]
        expected += 0.5 * (-y * math.log(p) - e * math.log(p) - (1 - e) * math.log(1 - p)) / n
        expected += 0.5 * (-y * math.log(e) - p * math.log(e) - (1 - p) * math.log(1 - e)) / n
        want_x[b][c] = 0.5 * ((-y * (1 - p) + p - e) / n + 2 * (count_p - K) / C ** 2 * p * (1 - p) / B)
        want_g[index[b]][c] = 0.5 * ((-y * (1 - e) + e - p) / n + 2 * (count_e - K) / C ** 2 * e * (1 - e) / B)
    expected += 0.5 * ((count_p - K) / C) ** 2 + 0.5 * ((count_e - K) / C) ** 2
    assert_close(value, expected)
    assert_close(grad_x, want_x)
    assert_close(loss.estimator.grad, want_g)  # rows outside the batch get exactly zero


@pytest.mark.parametrize("name, mode", [("ll-r", "reject"), ("ll-ct", "correct")])
@pytest.mark.parametrize("epoch, k", [(0, 0), (1, 2), (2, 3), (20, 12)])
@pytest.mark.parametrize("selection", ["published", "topk"])
def test_large_loss_hand_example(name, mode, epoch, k, selection):
    # delta_rel = 0.1: k = ceil(12 * (1 - clean_rate)), capped at B * C = 12. At epoch 20 the published
    # threshold is 0, so the 3 observed positives are modified too; topk stops at the 9 unknowns.
    value, grad = run(SINGLE_POSITIVE_LOSSES[name](5, 4, delta_rel=0.1, selection=selection), X, Y, epoch)
    expected_value, expected_grad, _ = formula_large_loss(X, Y, min(k, 9) if selection == "topk" else k, mode,
                                                          selection)
    assert_close(value, expected_value)
    assert_close(grad, expected_grad)


@pytest.mark.parametrize("selection, per_step", [("published", 1), ("topk", 2)])
def test_ll_cp_hand_example_and_persistence(selection, per_step):
    # k = ceil(0.1 * 12) = 2 entries modified per step; published: the one strictly above the 2nd
    # largest loss is corrected for good, topk: both.
    loss = SINGLE_POSITIVE_LOSSES["ll-cp"](5, 4, delta_rel=0.1, selection=selection)
    index = torch.tensor([4, 1, 2])
    value, grad = run(loss, X, Y, epoch=0, index=index)
    assert_close(value, formula_an(X, Y)[0])
    assert not loss.corrected.any()

    value, grad = run(loss, X, Y, epoch=1, index=index)
    expected_value, expected_grad, first = formula_large_loss(X, Y, 2, "correct", selection)
    assert_close(value, expected_value)
    assert_close(grad, expected_grad)
    stored = {(int(index[b]), c) for b, c in first}
    assert len(stored) == per_step
    assert {tuple(bc) for bc in loss.corrected.nonzero().tolist()} == stored

    # Next step: the corrected labels are positives now, and more unknowns get corrected.
    y2 = [[1 if (Y[b][c] or (b, c) in first) else 0 for c in range(4)] for b in range(3)]
    expected_value, expected_grad, second = formula_large_loss(X, y2, 2, "correct", selection)
    value, grad = run(loss, X, Y, epoch=5, index=index)
    assert_close(value, expected_value)
    assert_close(grad, expected_grad)
    assert not (second & first) and int(loss.corrected.sum()) == 2 * per_step

    restored = SINGLE_POSITIVE_LOSSES["ll-cp"](5, 4, delta_rel=0.1, selection=selection)
    restored.load_state_dict(copy.deepcopy(loss.state_dict()))
    assert torch.equal(restored.corrected, loss.corrected)
    assert_close(run(restored, X, Y, 5, index)[0], run(loss, X, Y, 5, index)[0])


def test_em_apl_hand_example():
    loss = SINGLE_POSITIVE_LOSSES["em-apl"](3, 4, alpha=0.2, beta=0.5)
    state = loss.state_dict()
    state["pseudo_mask"][0, 2] = state["pseudo_mask"][2, 3] = True
    state["pseudo_target"][0, 2], state["pseudo_target"][2, 3] = 0.0625, 0.125  # exact in float32
    state["pseudo_mask"][1, 2] = True  # an observed positive stays a positive
    loss.load_state_dict(state)
    value, grad = run(loss, X, Y, epoch=6)
    expected_value, expected_grad = formula_em(X, Y, 0.2, {(0, 2): 0.0625, (2, 3): 0.125}, beta=0.5)
    assert_close(value, expected_value)
    assert_close(grad, expected_grad)


# ----- behaviour -------------------------------------------------------------------------------------

@pytest.mark.parametrize("density", [0.0, 0.1, 0.5])
def test_an_is_bce_with_unknowns_as_zeros(density):
    x, y = random_example(8, 20, density, seed=1)
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    got = SINGLE_POSITIVE_LOSSES["an"](8, 20).loss(x, y, torch.arange(8), 0)
    assert torch.equal(got, F.binary_cross_entropy_with_logits(x, y))


@pytest.mark.parametrize("name", ["ll-r", "ll-ct"])
def test_large_loss_modifies_exactly_the_top_k_unknown_losses(name):
    B, C, epoch, delta = 8, 20, 3, 0.01
    x, y = random_example(B, C, 0.0, seed=7)
    loss = SINGLE_POSITIVE_LOSSES[name](100, C, delta_rel=delta)
    k = math.ceil(epoch * delta * B * C)  # 5
    assert loss.num_modified(B, epoch) == k == 5
    _, grad = run(loss, x, y, epoch)
    unknown_losses = sorted(((bce(x[b][c], 0.0), (b, c)) for b, c in entries(x) if not y[b][c]), reverse=True)
    top = {bc for _, bc in unknown_losses[:k]}
    for b, c in entries(x):
        unchanged = (sig(x[b][c]) - y[b][c]) / (B * C)
        if (b, c) not in top:
            assert grad[b][c] == pytest.approx(unchanged, rel=1e-9, abs=1e-15)
        elif name == "ll-r":
            assert grad[b][c] == 0.0
        else:
            assert grad[b][c] == pytest.approx((sig(x[b][c]) - 1) / (B * C), rel=1e-9)


def test_large_loss_rate_schedule():
    llr = SINGLE_POSITIVE_LOSSES["ll-r"](10, 80)  # default delta_rel = 0.2 % per epoch
    assert llr.delta_rel == 0.002
    assert [llr.num_modified(16, e) for e in (0, 1, 2, 5)] == [0, 3, 6, 13]  # ceil(e * 0.002 * 1280)
    llcp = SINGLE_POSITIVE_LOSSES["ll-cp"](10, 80)
    assert [llcp.num_modified(16, e) for e in (0, 1, 2, 5)] == [0, 3, 3, 3]
    # 3 * 0.1 * 10 is 3.0000000000000004 in floating point: still 3 labels, not 4.
    assert SINGLE_POSITIVE_LOSSES["ll-r"](10, 5, delta_rel=0.1).num_modified(2, 3) == 3


def test_large_loss_when_k_exceeds_the_unknowns():
    y = [[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1]]
    # topk never touches a positive; the published threshold (0 here) takes the positives too.
    _, grad = run(SINGLE_POSITIVE_LOSSES["ll-r"](3, 4, delta_rel=1.0, selection="topk"), X, y, epoch=1)
    for b, c in entries(X):
        assert (grad[b][c] == 0) == (y[b][c] == 0)
    value, grad = run(SINGLE_POSITIVE_LOSSES["ll-r"](3, 4, delta_rel=1.0), X, y, epoch=1)
    assert float(value.detach()) == 0.0 and not grad.any()


def test_role_estimator_initialisation():
    N, C = 4000, 10
    low, high = math.log(0.2 / 0.8), math.log(0.8 / 0.2)
    observed = torch.zeros(N, C)
    observed[torch.arange(N), torch.arange(N) % C] = 1
    role = SINGLE_POSITIVE_LOSSES["role"](N, C, 2.0, observed_labels=observed, seed=0, init_width=0.3)
    est = role.estimator.detach()
    assert [tuple(p.shape) for p in role.parameters()] == [(N, C)]
    assert torch.allclose(est[observed == 1], torch.tensor(math.log(0.995 / 0.005)))
    unknown = est[observed == 0]
    assert unknown.min() >= low and unknown.max() <= high
    assert unknown.min() < low + 0.01 and unknown.max() > high - 0.01  # uniform over the whole range
    assert abs(float(unknown.mean())) < 0.05
    narrow = SINGLE_POSITIVE_LOSSES["role"](N, C, 2.0, seed=0).estimator.detach()
    assert narrow.abs().max() <= math.log(0.6 / 0.4)  # the default: Cole et al.'s models.py w = 0.1, 0.4..0.6
    assert narrow.abs().max() > math.log(0.6 / 0.4) - 0.01


def test_role_without_observed_labels_sets_positives_on_first_sight():
    N, C = 6, 4
    role = SINGLE_POSITIVE_LOSSES["role"](N, C, K, seed=1)
    before = role.estimator.detach().clone()
    index = torch.tensor([5, 2, 0])
    role.loss(torch.tensor(X), torch.tensor(Y, dtype=torch.float32), index, 0)
    after = role.estimator.detach()
    positive_logit = math.log(0.995 / 0.005)
    for b, r in enumerate(index.tolist()):
        for c in range(C):
            assert float(after[r, c]) == pytest.approx(positive_logit if Y[b][c] else float(before[r, c]))
    assert torch.equal(after[[1, 3, 4]], before[[1, 3, 4]]) and role.seen.tolist() == [1, 0, 1, 0, 0, 1]
    # A second sight must not reset what the optimiser has learned since.
    with torch.no_grad():
        role.estimator[5, 0] = -2.0
    role.loss(torch.tensor(X), torch.tensor(Y, dtype=torch.float32), index, 0)
    assert float(role.estimator.detach()[5, 0]) == -2.0


def test_splc_corrects_only_after_warmup_and_above_tau():
    x = [[-0.1, 0.3, 0.5, 2.0]]  # sigmoid: 0.475, 0.574, 0.622, 0.881
    y = [[0, 0, 0, 0]]
    _, grad0 = run(SINGLE_POSITIVE_LOSSES["splc"](1, 4), x, y, epoch=0)
    _, grad1 = run(SINGLE_POSITIVE_LOSSES["splc"](1, 4), x, y, epoch=1)
    assert (grad0 > 0).all()  # every unknown pushed down during warm-up
    assert grad1[0, :2].gt(0).all() and grad1[0, 2:].lt(0).all()  # p > 0.6 pushed up afterwards


def test_em_apl_pseudo_labelling_schedule():
    N, C, W, E = 40, 3, 2, 6
    gen = torch.Generator().manual_seed(3)
    observed = torch.zeros(N, C)
    observed[torch.arange(N), torch.randint(0, C, (N,), generator=gen)] = 1
    apl = SINGLE_POSITIVE_LOSSES["em-apl"](N, C, theta=0.8, warmup_epochs=W, num_epochs=E,
                                          observed_labels=observed)
    probs = torch.rand(N, C, generator=gen)
    apl.record_predictions(probs, torch.arange(N))
    per_step = torch.tensor([math.floor(0.8 * int(u) / (E - W)) for u in (observed == 0).sum(0)])
    assert torch.equal(apl.pseudo_labels_per_step(), per_step)

    apl.start_epoch(1)  # still warming up
    assert not apl.pseudo_mask.any()
    apl.start_epoch(W)
    for c in range(C):
        candidates = sorted((float(probs[n, c]), n) for n in range(N) if observed[n, c] == 0)
        want = {n for _, n in candidates[:int(per_step[c])]}
        assert set(apl.pseudo_mask[:, c].nonzero().flatten().tolist()) == want
    assert torch.equal(apl.pseudo_target[apl.pseudo_mask], probs[apl.pseudo_mask])
    assert not (apl.pseudo_mask & (observed == 1)).any()
    first = apl.pseudo_mask.clone()
    apl.start_epoch(W)  # a repeated call for the same epoch changes nothing
    assert torch.equal(apl.pseudo_mask, first)
    apl.start_epoch(W + 1)  # the next lowest unknowns join
    assert torch.equal(apl.pseudo_mask.sum(0), 2 * per_step) and (apl.pseudo_mask >= first).all()

    restored = SINGLE_POSITIVE_LOSSES["em-apl"](N, C, theta=0.8, warmup_epochs=W, num_epochs=E)
    restored.load_state_dict(apl.state_dict())
    restored.start_epoch(W + 1)
    assert torch.equal(restored.pseudo_mask, apl.pseudo_mask)


def test_em_apl_records_training_predictions():
    apl = SINGLE_POSITIVE_LOSSES["em-apl"](6, 4, warmup_epochs=1, num_epochs=3)
    index = torch.tensor([5, 0, 2])
    x = torch.tensor(X)
    apl.loss(x, torch.tensor(Y, dtype=torch.float32), index, 0)
    assert torch.allclose(apl.predictions[index], torch.sigmoid(x))
    assert apl.predicted.tolist() == [1, 0, 1, 0, 0, 1]
    assert apl.observed_mask[index].tolist() == [[bool(v) for v in row] for row in Y]
    apl.start_epoch(1)  # unseen samples 1, 3, 4 are never pseudo-labelled
    assert not apl.pseudo_mask[[1, 3, 4]].any() and apl.pseudo_mask.any()


# ROLE is left out on purpose: its value depends on the logits through stop-gradient terms (the
# estimator's targets), so finite differences of the value are not its gradient; the hand example
# checks both of its gradients instead.
@pytest.mark.parametrize("name", sorted(set(SINGLE_POSITIVE_LOSSES) - {"role"}))
def test_gradcheck_float64(name):
    x, y = random_example(3, 5, 0.2, seed=11)
    loss = SINGLE_POSITIVE_LOSSES[name](4, 5, K, delta_rel=0.1) if name.startswith("ll") else \
        SINGLE_POSITIVE_LOSSES[name](4, 5, K)
    loss.to(torch.float64)
    y, index = torch.tensor(y, dtype=torch.float64), torch.tensor([3, 1, 0])
    # A fresh copy per call: LL-Cp and EM+APL update their state inside `loss`.
    fn = lambda logits: copy.deepcopy(loss).loss(logits, y, index, 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (torch.tensor(x, dtype=torch.float64, requires_grad=True),))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(SINGLE_POSITIVE_LOSSES))
def test_low_precision_logits_are_computed_in_float32(name, dtype):
    x, y = random_example(4, 6, 0.2, seed=5)
    x = torch.tensor(x, dtype=torch.float64).to(dtype)
    y, index = torch.tensor(y, dtype=torch.float32), torch.arange(4)
    loss = SINGLE_POSITIVE_LOSSES[name](4, 6, K, seed=0) if name == "role" else SINGLE_POSITIVE_LOSSES[name](4, 6, K)
    low = x.clone().requires_grad_(True)
    high = x.float().requires_grad_(True)
    value_low = copy.deepcopy(loss).loss(low, y, index, 2)
    value_high = copy.deepcopy(loss).loss(high, y, index, 2)
    (value_low + value_high).backward()
    assert value_low.dtype == torch.float32 and low.grad.dtype == dtype
    assert torch.equal(value_low, value_high)
    assert torch.equal(low.grad, high.grad.to(dtype))


# ----- interface ---------------------------------------------------------------------------------

def test_registry_interface_and_state_round_trip():
    assert set(SINGLE_POSITIVE_LOSSES) == {"an", "an-ls", "wan", "epr", "role", "ll-r", "ll-ct", "ll-cp",
                                           "splc", "em", "em-apl"}
    observed = torch.zeros(6, 4)
    observed[torch.arange(6), torch.tensor([0, 1, 2, 3, 0, 1])] = 1
    for name, factory in SINGLE_POSITIVE_LOSSES.items():
        loss = factory(6, 4, K, observed_labels=observed, device="cpu")
        assert isinstance(loss.parameters(), list)
        assert len(loss.parameters()) == (1 if name == "role" else 0)
        for epoch in range(3):
            loss.start_epoch(epoch)
            loss.loss(torch.randn(3, 4), observed[:3], torch.arange(3), epoch)
        twin = factory(6, 4, K)
        twin.load_state_dict(loss.state_dict())
        for key, value in loss.state_dict().items():
            assert torch.equal(twin.state_dict()[key], value), (name, key)
    assert EM_APL_DATASET_HPARAMS["voc"]["alpha"] == 0.2
    assert build_single_positive_loss("EM-APL", 6, 4, None, **EM_APL_DATASET_HPARAMS["cub"]).beta == 0.4


def test_bad_arguments_name_themselves():
    an = SINGLE_POSITIVE_LOSSES["an"](6, 4)
    x, y, idx = torch.zeros(3, 4), torch.zeros(3, 4), torch.arange(3)
    cases = [
        (lambda: an.loss(torch.zeros(12), y, idx, 0), "logits"),
        (lambda: an.loss(torch.zeros(3, 5), y, idx, 0), "logits"),
        (lambda: an.loss(torch.zeros(3, 4, dtype=torch.long), y, idx, 0), "logits"),
        (lambda: an.loss(x, torch.zeros(3, 5), idx, 0), "observed"),
        (lambda: an.loss(x, torch.full((3, 4), 2.0), idx, 0), "observed"),
        (lambda: an.loss(x, y, torch.arange(2), 0), "index"),
        (lambda: an.loss(x, y, torch.zeros(3), 0), "index"),
        (lambda: an.loss(x, y, idx, -1), "epoch"),
        (lambda: SINGLE_POSITIVE_LOSSES["role"](6, 4, K).loss(x, y, torch.tensor([0, 1, 6]), 0), "index"),
        (lambda: SINGLE_POSITIVE_LOSSES["epr"](6, 4, None), "expected_positives"),
        (lambda: SINGLE_POSITIVE_LOSSES["role"](6, 4, K, observed_labels=torch.zeros(5, 4)), "observed_labels"),
        (lambda: SINGLE_POSITIVE_LOSSES["ll-r"](6, 4, delta_rel=0.0), "delta_rel"),
        (lambda: SINGLE_POSITIVE_LOSSES["em-apl"](6, 4, warmup_epochs=10, num_epochs=10), "warmup_epochs"),
        (lambda: build_single_positive_loss("nope", 6, 4), "nope"),
    ]
    for call, word in cases:
        with pytest.raises((ValueError, TypeError), match=word):
            call()
    with pytest.raises(TypeError):
        SINGLE_POSITIVE_LOSSES["an"](6, 4, K, delta_rel=0.1)  # an unknown hyper-parameter is an error


# ----- the authors' public code, transcribed (torch, in the structure of their files) ------------
# Each function below is written from the public file it names, independently of our losses: the
# same boolean-mask assignments, the same epsilon, the same reduction. Our losses must agree with
# them value for value and gradient for gradient on random inputs.

PUBLIC_LOG_EPSILON = 1e-5  # Cole losses.py and SPML-AckTheUnknown losses.py: LOG_EPSILON


def public_neg_log(x):
    return -torch.log(x + PUBLIC_LOG_EPSILON)


def public_epr_reg(preds, expected_num_pos):
    # Cole losses.py expected_positive_regularizer, norm '2'
    return (preds.sum(1).mean(0) - expected_num_pos) ** 2


def cole_batch_loss(loss, preds, observed, P, estimated=None):
    """elijahcole/single-positive-multi-label losses.py: loss_<name> then compute_batch_loss."""
    B, C = preds.shape
    loss_mtx = torch.zeros_like(observed)
    reg = None
    pos, unk = observed == 1, observed == 0
    if loss == "an":
        loss_mtx[pos] = public_neg_log(preds[pos])
        loss_mtx[unk] = public_neg_log(1.0 - preds[unk])
    elif loss == "an_ls":
        loss_mtx[pos] = (1.0 - P["ls_coef"]) * public_neg_log(preds[pos]) + P["ls_coef"] * public_neg_log(1.0 - preds[pos])
        loss_mtx[unk] = (1.0 - P["ls_coef"]) * public_neg_log(1.0 - preds[unk]) + P["ls_coef"] * public_neg_log(preds[unk])
    elif loss == "wan":
        loss_mtx[pos] = public_neg_log(preds[pos])
        loss_mtx[unk] = public_neg_log(1.0 - preds[unk]) / float(C - 1)
    elif loss == "epr":
        loss_mtx[pos] = public_neg_log(preds[pos])
        reg = public_epr_reg(preds, P["expected_num_pos"]) / (C ** 2)
    elif loss == "role":
        loss_mtx_pos_1 = torch.zeros_like(observed)
        loss_mtx_pos_1[pos] = public_neg_log(preds[pos])
        est_d = estimated.detach()
        loss_mtx_cross_1 = est_d * public_neg_log(preds) + (1.0 - est_d) * public_neg_log(1.0 - preds)
        reg_1 = public_epr_reg(preds, P["expected_num_pos"]) / (C ** 2)
        loss_mtx_pos_2 = torch.zeros_like(observed)
        loss_mtx_pos_2[pos] = public_neg_log(estimated[pos])
        preds_d = preds.detach()
        loss_mtx_cross_2 = preds_d * public_neg_log(estimated) + (1.0 - preds_d) * public_neg_log(1.0 - estimated)
        reg_2 = public_epr_reg(estimated, P["expected_num_pos"]) / (C ** 2)
        reg = 0.5 * (reg_1 + reg_2)
        loss_mtx = 0.5 * (loss_mtx_pos_1 + loss_mtx_pos_2)
        loss_mtx = loss_mtx + 0.5 * (loss_mtx_cross_1 + loss_mtx_cross_2)
    denom = (C * B) * torch.ones_like(preds)
    main = (loss_mtx / denom).sum()
    return main + reg if reg is not None else main


def zhou_batch_loss(loss, preds, observed, P):
    """Correr-Zhou/SPML-AckTheUnknown losses.py: loss_EM / loss_EM_APL then compute_batch_loss;
    `observed` holds -t for an APL soft negative with target t (main.py aysmmetric_pseudo_labeling)."""
    B, C = preds.shape
    loss_mtx = torch.zeros_like(preds)
    pos, unk = observed == 1, observed == 0
    loss_mtx[pos] = public_neg_log(preds[pos])
    loss_mtx[unk] = -P["alpha"] * (preds[unk] * public_neg_log(preds[unk])
                                   + (1 - preds[unk]) * public_neg_log(1 - preds[unk]))
    if loss == "EM_APL":
        soft = -observed[observed < 0]
        loss_mtx[observed < 0] = P["beta"] * (soft * public_neg_log(preds[observed < 0])
                                              + (1 - soft) * public_neg_log(1 - preds[observed < 0]))
    return (loss_mtx / ((C * B) * torch.ones_like(preds))).sum()


def kim_batch_loss(preds, label_vec, P):
    """snucml/LargeLossMatters losses.py compute_batch_loss ("preds" are logits). `P['mod_scheme']` is
    compared with `==` here where their code writes `is`: see test_public_ll_cp_path_is_ll_ct."""
    B, C = preds.shape
    unobserved_mask = label_vec == 0
    observed = label_vec.clip(0)
    loss_matrix = F.binary_cross_entropy_with_logits(preds, observed, reduction="none")
    corrected_loss_matrix = F.binary_cross_entropy_with_logits(preds, torch.logical_not(observed).to(preds.dtype),
                                                               reduction="none")
    correction_idx = None
    if P["clean_rate"] == 1:
        final = loss_matrix
    else:
        if P["mod_scheme"] == "LL-Cp":
            k = math.ceil(B * C * P["delta_rel"])
        else:
            k = math.ceil(B * C * (1 - P["clean_rate"]))
        unobserved_loss = unobserved_mask.bool() * loss_matrix
        topk = torch.topk(unobserved_loss.flatten(), k)
        topk_lossvalue = topk.values[-1]
        correction_idx = torch.where(unobserved_loss > topk_lossvalue)
        if P["mod_scheme"] in ["LL-Ct", "LL-Cp"]:
            final = torch.where(unobserved_loss < topk_lossvalue, loss_matrix, corrected_loss_matrix)
        else:
            final = torch.where(unobserved_loss < topk_lossvalue, loss_matrix, torch.zeros_like(loss_matrix))
    return final.mean(), correction_idx


def zhang_splc(logits, targets, epoch, tau=0.6, change_epoch=1, margin=1.0, gamma=2.0, reduction="sum"):
    """xinyu1205/robust-loss-mlml src/loss_functions/losses.py class SPLC, forward (without .cuda())."""
    logits = torch.where(targets == 1, logits - margin, logits)
    if epoch >= change_epoch:
        targets = torch.where(torch.sigmoid(logits) > tau, torch.tensor(1, dtype=targets.dtype), targets)
    pred = torch.sigmoid(logits)
    pt = (1 - pred) * targets + pred * (1 - targets)
    focal_weight = pt ** gamma
    los_pos = targets * F.logsigmoid(logits)
    los_neg = (1 - targets) * F.logsigmoid(-logits)
    loss = -(los_pos + los_neg)
    loss = loss * focal_weight
    return loss.mean() if reduction == "mean" else loss.sum()


def random_batch(seed, batch=6, classes=9, density=0.0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, classes, generator=gen, dtype=torch.float64) * scale
    y = (torch.rand(batch, classes, generator=gen) < density).double()
    y[torch.arange(batch), torch.randint(0, classes, (batch,), generator=gen)] = 1.0
    return x, y


def value_and_grad(fn, x):
    x = x.clone().requires_grad_(True)
    value = fn(x)
    value.backward()
    return value.detach(), x.grad


COLE_NAMES = {"an": "an", "an-ls": "an_ls", "wan": "wan", "epr": "epr"}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(COLE_NAMES))
def test_cole_losses_match_the_public_code(name, seed):
    x, y = random_batch(seed, density=0.2 * (seed % 2))
    P = {"ls_coef": 0.1, "expected_num_pos": 2.9}
    ours = SINGLE_POSITIVE_LOSSES[name](8, x.shape[1], 2.9, log_epsilon=PUBLIC_LOG_EPSILON)
    got = value_and_grad(lambda v: ours.loss(v, y, torch.arange(x.shape[0]), 1), x)
    want = value_and_grad(lambda v: cole_batch_loss(COLE_NAMES[name], torch.sigmoid(v), y, P), x)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])
    # the default (exact logs) is not the public value: log_epsilon is what reproduces it
    exact = SINGLE_POSITIVE_LOSSES[name](8, x.shape[1], 2.9).loss(x, y, torch.arange(x.shape[0]), 1)
    assert float(exact) != float(want[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_role_matches_the_public_code(seed):
    N, C = 10, 9
    x, y = random_batch(seed, classes=C)
    index = torch.tensor([7, 2, 9, 0, 4, 5])
    ours = SINGLE_POSITIVE_LOSSES["role"](N, C, 2.9, log_epsilon=PUBLIC_LOG_EPSILON, seed=seed)
    ours.to(torch.float64)
    with torch.no_grad():  # models.py LabelEstimator: observed positives start at inverse_sigmoid(0.995)
        ours.estimator[index] = torch.where(y.bool(), torch.tensor(math.log(0.995 / 0.005), dtype=torch.float64),
                                            ours.estimator[index])
        ours.seen[index] = True
    G = ours.estimator.detach().clone().requires_grad_(True)
    got_value, got_grad = value_and_grad(lambda v: ours.loss(v, y, index, 0), x)

    xp = x.clone().requires_grad_(True)
    want = cole_batch_loss("role", torch.sigmoid(xp), y, {"expected_num_pos": 2.9}, torch.sigmoid(G[index]))
    want.backward()
    assert_close(got_value, want.detach())
    assert_close(got_grad, xp.grad)
    assert_close(ours.estimator.grad, G.grad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_em_and_apl_match_the_public_code(seed):
    x, y = random_batch(seed, classes=7)
    B, C = x.shape
    P = {"alpha": 0.2, "beta": 0.02}
    em = SINGLE_POSITIVE_LOSSES["em"](B, C, alpha=0.2, log_epsilon=PUBLIC_LOG_EPSILON)
    got = value_and_grad(lambda v: em.loss(v, y, torch.arange(B), 0), x)
    want = value_and_grad(lambda v: zhou_batch_loss("EM", torch.sigmoid(v), y, P), x)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])

    # APL: a few unknown entries are soft negatives with target t (stored as -t in the public code)
    gen = torch.Generator().manual_seed(seed)
    pseudo = (torch.rand(B, C, generator=gen) < 0.3) & (y == 0)
    targets = torch.rand(B, C, generator=gen, dtype=torch.float64) * 0.5
    apl = SINGLE_POSITIVE_LOSSES["em-apl"](B, C, alpha=0.2, beta=0.02, log_epsilon=PUBLIC_LOG_EPSILON,
                                           warmup_epochs=1, num_epochs=3)
    apl.to(torch.float64)
    state = apl.state_dict()
    state["pseudo_mask"] = pseudo
    state["pseudo_target"] = torch.where(pseudo, targets, torch.zeros_like(targets))
    apl.load_state_dict(state)
    public_observed = torch.where(pseudo, -targets, y)
    got = value_and_grad(lambda v: apl.loss(v, y, torch.arange(B), 2), x)
    want = value_and_grad(lambda v: zhou_batch_loss("EM_APL", torch.sigmoid(v), public_observed, P), x)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


def test_apl_selection_matches_the_public_code():
    """main.py aysmmetric_pseudo_labeling after each epoch >= warmup_epoch (1-based), on the same
    predictions: per class the int(neg_proportion * unlabel_num / (num_epochs - warmup)) lowest
    still-unknown predictions get -prediction."""
    N, C, W, E = 30, 4, 2, 5
    gen = torch.Generator().manual_seed(4)
    observed = torch.zeros(N, C, dtype=torch.float64)
    observed[torch.arange(N), torch.randint(0, C, (N,), generator=gen)] = 1
    public_obs = observed.numpy().copy()
    unlabel_num = [int((public_obs[:, i] == 0).sum()) for i in range(C)]
    apl = SINGLE_POSITIVE_LOSSES["em-apl"](N, C, theta=0.9, warmup_epochs=W, num_epochs=E, observed_labels=observed)
    for epoch in range(1, E + 1):                       # the public code's 1-based epochs
        preds = torch.rand(N, C, generator=gen, dtype=torch.float64).numpy()
        if epoch >= W:
            for i in range(C):
                idx = np.arange(N)
                unlabel_preds, unlabel_idx = preds[public_obs[:, i] == 0, i], idx[public_obs[:, i] == 0]
                num = int(0.9 * unlabel_num[i] / (E - W))
                for loc in np.argsort(unlabel_preds)[:num]:
                    public_obs[unlabel_idx[loc], i] = -unlabel_preds[loc]
            apl.record_predictions(torch.from_numpy(preds), torch.arange(N))
            apl.start_epoch(epoch)                       # before our 0-based epoch `epoch`
        ours = np.where(apl.pseudo_mask.numpy(), -apl.pseudo_target.double().numpy(), observed.numpy())
        np.testing.assert_allclose(ours, public_obs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("epoch", [0, 1, 2, 4])
@pytest.mark.parametrize("name, scheme", [("ll-r", "LL-R"), ("ll-ct", "LL-Ct")])
def test_large_loss_matches_the_public_code(name, scheme, epoch, seed):
    x, y = random_batch(seed, batch=8, classes=20, density=0.05)
    delta_rel = 0.4 / 100  # config.py: --delta_rel 0.4 is divided by 100
    P = {"mod_scheme": scheme, "delta_rel": delta_rel, "clean_rate": 1}
    for _ in range(epoch):  # train.py: P['clean_rate'] -= P['delta_rel'] after each epoch
        P["clean_rate"] -= P["delta_rel"]
    ours = SINGLE_POSITIVE_LOSSES[name](8, 20, delta_rel=delta_rel)
    got = value_and_grad(lambda v: ours.loss(v, y, torch.arange(8), epoch), x)
    want = value_and_grad(lambda v: kim_batch_loss(v, y, P)[0], x)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


def test_large_loss_ties_follow_the_public_code():
    # Duplicated images give tied losses: the public threshold modifies every tied entry.
    x, y = random_batch(3, batch=4, classes=10)
    x, y = torch.cat([x, x]), torch.cat([y, y])
    P = {"mod_scheme": "LL-R", "delta_rel": 0.05, "clean_rate": 1 - 0.05}
    ours = SINGLE_POSITIVE_LOSSES["ll-r"](8, 10, delta_rel=0.05)   # epoch 1: k = ceil(80 * 0.05) = 4
    got = value_and_grad(lambda v: ours.loss(v, y, torch.arange(8), 1), x)
    want = value_and_grad(lambda v: kim_batch_loss(v, y, P)[0], x)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])
    assert int((want[1] == 0).sum()) > 4  # the ties did widen the selection


def test_ll_cp_matches_the_intended_public_path():
    """LL-Cp as losses.py and train.py mean it (mod_scheme == 'LL-Cp'): per step k = ceil(B C delta),
    the dataset's observed labels are set to 1 at correction_idx; three epochs over 24 samples."""
    N, C, B = 24, 12, 6
    gen = torch.Generator().manual_seed(9)
    logits_of = torch.randn(N, C, generator=gen, dtype=torch.float64) * 3
    observed = torch.zeros(N, C, dtype=torch.float64)
    observed[torch.arange(N), torch.randint(0, C, (N,), generator=gen)] = 1
    public_obs = observed.clone()
    delta_rel = 0.02
    P = {"mod_scheme": "LL-Cp", "delta_rel": delta_rel, "clean_rate": 1}
    ours = SINGLE_POSITIVE_LOSSES["ll-cp"](N, C, delta_rel=delta_rel)
    for epoch in range(3):
        order = torch.randperm(N, generator=gen)
        for start in range(0, N, B):
            idx = order[start:start + B]
            x = logits_of[idx] + 0.1 * epoch
            got = value_and_grad(lambda v: ours.loss(v, observed[idx], idx, epoch), x)
            want = value_and_grad(lambda v: kim_batch_loss(v, public_obs[idx], P)[0], x)
            assert_close(got[0], want[0])
            assert_close(got[1], want[1])
            _, correction_idx = kim_batch_loss(x, public_obs[idx], P)
            if correction_idx is not None:
                public_obs[idx[correction_idx[0]], correction_idx[1]] = 1.0
        P["clean_rate"] -= P["delta_rel"]
    assert torch.equal(torch.maximum(observed, ours.corrected.double()), public_obs)
    assert ours.corrected.any()


def test_public_ll_cp_path_is_ll_ct():
    """The public code tests `P['mod_scheme'] is 'LL-Cp'` (losses.py, train.py). A flag value is a
    string built at run time, never the very object of the literal, so that test is False: the k of
    LL-R/Ct is used and no label is corrected for good, while `in ['LL-Ct', 'LL-Cp']` (equality)
    still picks the correction. That run is our ll-ct."""
    flag = "".join(["LL-", "Cp"])  # as argparse hands it over: equal to the literal, another object
    literal = "LL-Cp"
    assert flag == literal and (flag is literal) is False
    x, y = random_batch(5, batch=8, classes=20)
    P = {"mod_scheme": "LL-Ct", "delta_rel": 0.004, "clean_rate": 1 - 2 * 0.004}   # the path `is` leads to
    ours = SINGLE_POSITIVE_LOSSES["ll-ct"](8, 20, delta_rel=0.004)
    got = value_and_grad(lambda v: ours.loss(v, y, torch.arange(8), 2), x)
    want = value_and_grad(lambda v: kim_batch_loss(v, y, P)[0], x)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("epoch", [0, 1, 3])
def test_splc_matches_the_public_code(seed, epoch):
    x, y = random_batch(seed, batch=8, classes=15, density=0.1)
    ours = SINGLE_POSITIVE_LOSSES["splc"](8, 15)
    got = value_and_grad(lambda v: ours.loss(v, y, torch.arange(8), epoch), x)
    want = value_and_grad(lambda v: zhang_splc(v, y, epoch), x)
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])
    mean = SINGLE_POSITIVE_LOSSES["splc"](8, 15, reduction="mean")
    assert_close(value_and_grad(lambda v: mean.loss(v, y, torch.arange(8), epoch), x)[0], want[0] / (8 * 15))


class _StubBackbone(torch.nn.Module):
    channels = (8, 16)

    def __init__(self):
        super().__init__()
        self.low = torch.nn.Conv2d(3, 8, 4, stride=4)
        self.high = torch.nn.Conv2d(3, 16, 8, stride=8)


@pytest.mark.parametrize("family", sorted(EM_APL_DATASET_HPARAMS))
@pytest.mark.parametrize("cls", [EM, EM_APL])
def test_em_alpha_is_per_dataset_for_plain_em_too(cls, family):
    # SPML-AckTheUnknown main.py sets P['alpha'] per dataset whatever the loss.
    from scob_fast.engine.amp import AmpPolicy
    observed = torch.zeros(12, 5, dtype=torch.int8)
    observed[torch.arange(12), torch.arange(12) % 5] = 1
    ctx = MethodContext(backbone=_StubBackbone(), num_classes=5, num_samples=12, observed=observed,
                        config=BaselineConfig(), device=torch.device("cpu"), amp=AmpPolicy(torch.device("cpu"), False),
                        image_size=32, heads=HeadOptions(dim=32, ffn=64, dropout=0.0), lr=LearningRates(),
                        epochs=10, hparam_family=family)
    assert cls(ctx).criterion.alpha == EM_APL_DATASET_HPARAMS[family]["alpha"]
    ctx.config = BaselineConfig(loss_hparams="alpha=0.5")
    assert cls(ctx).criterion.alpha == 0.5
