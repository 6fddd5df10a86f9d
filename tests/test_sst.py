"""SST (Chen et al., AAAI 2022): every loss term on hand-computed examples and against independent
transcriptions of the authors' public code (HCPLab-SYSU/HCP-MLR-PL: loss/SST.py, model/SST.py,
utils/dataloader.py, SST.py), the pseudo-label rules, the bank, the label graph, the preset, and a
few training steps of the whole method on a stub backbone.

The `public_*` functions below are written from the public code's equations, in its own style
(getConcatIndex loops, boolean indexing, in-place thresholding); they call nothing of ours."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scob_fast.engine.amp import AmpPolicy
from scob_fast.methods.base import HeadOptions, LearningRates, MethodContext
from scob_fast.methods.losses import partial_bce
from scob_fast.methods.sst import (SST, FeatureBank, SSTConfig, cooccurrence_loss, cross_pseudo_labels,
                                   feature_distance_loss, intra_pseudo_labels, label_graph, pair_index, pair_matrix,
                                   threshold_at)

ROOT = Path(__file__).resolve().parents[1]


def softplus(x):
    return math.log1p(math.exp(x))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# -- independent transcriptions of the public code ------------------------------------------------

def public_concat_index(n):
    """loss/SST.py / model/SST.py getConcatIndex."""
    res = [[], []]
    for index in range(n - 1):
        res[0] += [index for _ in range(n - index - 1)]
        res[1] += [i for i in range(index + 1, n)]
    return res


def public_bce(input, target, margin=0.0):
    """loss/SST.py BCELoss(margin, reduce=True, size_average=True)."""
    positive_mask = (target > margin).float()
    negative_mask = (target < -margin).float()
    positive_loss = F.binary_cross_entropy_with_logits(input, target, reduction="none")
    negative_loss = F.binary_cross_entropy_with_logits(-input, -target, reduction="none")
    loss = positive_mask * positive_loss + negative_mask * negative_loss
    if torch.sum(positive_mask + negative_mask) != 0:
        return torch.mean(loss[(positive_mask > 0) | (negative_mask > 0)])
    return torch.mean(loss)


def public_intra_asymmetric(input, target, gamma_neg=2, gamma_pos=1, clip=0.05, eps=1e-8):
    """loss/SST.py intraAsymmetricLoss (as SST.py builds it: gamma_neg=2, gamma_pos=1)."""
    index = public_concat_index(target.shape[1])
    t = target.numpy()
    t1, t2 = (t[:, index[0]] > 0).astype(np.float64), (t[:, index[1]] > 0).astype(np.float64)
    target = torch.tensor(t1 * t2, dtype=input.dtype)
    p = torch.sigmoid(input)
    p_pos, p_neg = p, 1 - p
    if clip is not None and clip > 0:
        p_neg = (p_neg + clip).clamp(max=1)
    loss = -1 * (target * torch.log(p_pos.clamp(min=eps)) + (1 - target) * torch.log(p_neg.clamp(min=eps)))
    prob = p_pos * target + p_neg * (1 - target)
    loss = loss * torch.pow(1 - prob, gamma_pos * target + gamma_neg * (1 - target))
    return torch.mean(loss)


def public_contrastive(input, target, negneg_perm=None, push_perm=None):
    """loss/SST.py ContrastiveLoss(batchSize, reduce=True, size_average=True). `*_perm(mask)` stands for
    torch.randperm(n) over the entries selected by the flattened boolean `mask` (default torch.randperm)."""
    index = public_concat_index(input.shape[0])
    t = target.clone()
    t[t != 1] = 0
    pos2pos = t[index[0]] * t[index[1]]
    pos2neg = 1 - pos2pos
    pos2neg[(target[index[0]] == 0) | (target[index[1]] == 0)] = 0
    pos2neg[(target[index[0]] == -1) & (target[index[1]] == -1)] = 0
    t = -1 * target.clone()
    t[t != 1] = 0
    neg2neg = t[index[0]] * t[index[1]]
    distance = F.cosine_similarity(input[index[0]], input[index[1]], dim=2, eps=1e-9)
    pp = (1 - distance)[pos2pos == 1]
    pn = (1 + distance)[pos2neg == 1]
    nn_ = (1 + distance)[neg2neg == 1]
    negneg_perm = negneg_perm or (lambda mask: torch.randperm(int(mask.sum())))
    push_perm = push_perm or (lambda mask: torch.randperm(int(mask.sum())))
    if pp.size(0) != 0:
        if nn_.size(0) != 0:
            nn_ = torch.cat((torch.index_select(nn_, 0, negneg_perm((neg2neg == 1).flatten())[:2 * pp.size(0)]),
                             torch.sort(nn_, descending=True)[0][:pp.size(0)]), 0)
        if pn.size(0) != 0:
            pn = torch.cat((torch.index_select(pn, 0, push_perm((pos2neg == 1).flatten())[:2 * pp.size(0)]),
                            torch.sort(pn, descending=True)[0][:pp.size(0)]), 0)
    loss = torch.cat((pp, pn, nn_), 0)
    return torch.mean(loss)          # NaN when empty (ours returns 0 there)


def public_intra_pseudo(intra_cooccurrence, target, margin):
    """loss/SST.py getIntraPseudoLabel."""
    batch, classes = target.shape
    prob = torch.sigmoid(intra_cooccurrence)
    start, end, pseudo = 0, 0, torch.zeros((batch, classes, classes), dtype=prob.dtype)
    for i in range(classes):
        pseudo[:, i, i] = 1
        start = end
        end += classes - i - 1
        pseudo[:, i, i + 1:] = prob[:, start:end]
        pseudo[:, i + 1:, i] = prob[:, start:end]
    t = target.clone()
    t[t != 1] = 0
    pseudo = torch.sum(pseudo * t.view(batch, 1, classes).repeat(1, classes, 1), dim=2)
    pseudo = pseudo / torch.clamp(torch.sum(t, dim=1), min=1).view(batch, 1).repeat(1, classes)
    pseudo = torch.clamp(pseudo, min=-1, max=1)
    pseudo[pseudo >= margin] = 1
    pseudo[pseudo <= margin] = 0
    pseudo[target != 0] = 0
    return target.clone() + pseudo


def public_inter_pseudo(feature, target, pos_feature, margin):
    """loss/SST.py getInterPseudoLabel."""
    _, _, dim = feature.shape
    examples, pseudo = pos_feature.size(1), target.clone()
    f1 = feature[target == 0].view(-1, 1, dim).repeat(1, examples, 1)
    f2 = pos_feature[torch.where(target == 0)[1]]
    distance = torch.mean(F.cosine_similarity(f1, f2, dim=2, eps=1e-9), dim=1)
    distance[distance >= margin] = 1
    distance[distance <= margin] = 0
    pseudo[target == 0] = distance
    return pseudo


def public_update_feature(pos_feature, feature, target, examples):
    """model/SST.py updateFeature (pos_feature None -> zeros)."""
    classes = target.shape[1]
    if pos_feature is None:
        pos_feature = torch.zeros((classes, examples, feature.size(-1)))
    feature = feature.detach().clone()
    for c in range(classes):
        new = feature[:, c][target[:, c] == 1]
        pos_feature[c] = torch.cat((new, pos_feature[c]), dim=0)[:examples]
    return pos_feature


def public_graph(labels):
    """utils/dataloader.py get_graph_file."""
    graph = np.zeros((labels.shape[1], labels.shape[1]), dtype=np.float64)
    for index in range(labels.shape[0]):
        indexs = np.where(labels[index] == 1)[0]
        for i in indexs:
            for j in indexs:
                graph[i, j] += 1
    for i in range(labels.shape[1]):
        graph[i] /= graph[i, i]
    return graph


def public_margins(epochs, margin=0.95, generate_label_epoch=5):
    """SST.py main: the margin each epoch trains with."""
    used = []
    for epoch in range(epochs):
        used.append(margin)
        if epoch >= generate_label_epoch:
            margin = max(0.75, margin - 0.025)
    return used


def random_partial(shape, generator, p_known=0.6, p_pos=0.35):
    labels = torch.rand(shape, generator=generator) < p_pos
    keep = torch.rand(shape, generator=generator) < p_known
    return torch.where(keep, labels.double() * 2 - 1, torch.zeros(shape, dtype=torch.float64))


def keys_perm(keys_row):
    """A uniformly random permutation of the entries selected by a mask: their order by `keys_row`."""
    return lambda mask: torch.argsort(keys_row[mask])


# -- partial BCE -----------------------------------------------------------------------------------

def test_partial_bce_ignores_unknown():
    logits = torch.tensor([[0.5, -1.0, 2.0], [0.3, 0.0, -0.7]])
    targets = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    # observed: (0,0) positive, (0,2) negative, (1,2) positive
    expected = (softplus(-0.5) + softplus(2.0) + softplus(0.7)) / 3
    assert partial_bce(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    assert partial_bce(logits, torch.zeros_like(targets)).item() == 0.0


@pytest.mark.parametrize("margin", [0.0, 0.75, 0.95])
def test_partial_bce_matches_public_bceloss(margin):
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        logits = torch.randn(8, 10, generator=g, dtype=torch.float64) * 3
        target = random_partial((8, 10), g)
        torch.testing.assert_close(partial_bce(logits, target).double(), public_bce(logits, target, margin),
                                   rtol=1e-6, atol=1e-7)


# -- co-occurrence loss ----------------------------------------------------------------------------

def _asl_pos(x):   # -log(p) * (1 - p)^1
    p = sigmoid(x)
    return -math.log(p) * (1 - p)


def _asl_neg(x):   # -log(min(1, 1 - p + 0.05)) * (1 - that)^2
    q = min(1.0, 1 - sigmoid(x) + 0.05)
    return -math.log(q) * (1 - q) ** 2


def test_cooccurrence_loss_all_pairs_by_hand():
    # image 0: labels (1, 1, 0): pair (0,1) positive, (0,2) and (1,2) negatives (unknown label)
    # image 1: labels (1, -1, 1): (0,1) negative, (0,2) positive, (1,2) negative
    observed = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 1.0]])
    pair_logits = torch.tensor([[0.4, -2.0, 3.0], [1.0, 0.2, -0.5]])     # pairs (0,1), (0,2), (1,2)
    expected = (_asl_pos(0.4) + _asl_neg(-2.0) + _asl_neg(3.0) + _asl_neg(1.0) + _asl_pos(0.2) + _asl_neg(-0.5)) / 6
    assert cooccurrence_loss(pair_logits, observed).item() == pytest.approx(expected, rel=1e-5)


def test_cooccurrence_loss_observed_variant_only_pairs_with_both_labels_observed():
    observed = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 1.0]])
    pair_logits = torch.tensor([[0.4, -2.0, 3.0], [1.0, 0.2, -0.5]])
    expected = (_asl_pos(0.4) + _asl_neg(1.0) + _asl_pos(0.2) + _asl_neg(-0.5)) / 4
    assert cooccurrence_loss(pair_logits, observed, "observed").item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        cooccurrence_loss(pair_logits, observed, "some")


def test_cooccurrence_loss_matches_public_intra_asymmetric_loss():
    g = torch.Generator().manual_seed(4)
    for classes in (2, 5, 9):
        pairs = classes * (classes - 1) // 2
        for _ in range(4):
            target = random_partial((7, classes), g, p_pos=0.5)
            logits = torch.randn(7, pairs, generator=g, dtype=torch.float64) * 4
            torch.testing.assert_close(cooccurrence_loss(logits, target).double(),
                                       public_intra_asymmetric(logits, target), rtol=1e-6, atol=1e-8)


# -- feature distance loss -------------------------------------------------------------------------

def test_feature_distance_loss_balanced_variant():
    f = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]], [[0.0, -1.0]]])      # [B=3, C=1, 2]
    observed = torch.tensor([[1.0], [1.0], [-1.0]])
    c01, c02, c12 = 1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)
    expected = (1 - c01) + ((1 + c02) + (1 + c12)) / 2
    assert feature_distance_loss(f, observed, pairs="balanced").item() == pytest.approx(expected, rel=1e-6)
    # unknown labels take part in no pair
    assert feature_distance_loss(f, torch.tensor([[1.0], [0.0], [0.0]]), pairs="balanced").item() == 0.0


def test_feature_distance_loss_published_by_hand():
    # class 0, labels (+, +, -): one pull entry (0,1), push (0,2), (1,2); class 1, labels (-, -, ?): negneg
    # (0,1). k = 1, so each set keeps a random 2 plus its 1 hardest: push keeps both plus the harder
    # again, negneg its only entry twice; one mean over the 6 kept entries.
    f = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, -1.0]], [[0.0, -1.0], [3.0, 3.0]]])
    observed = torch.tensor([[1.0, -1.0], [1.0, -1.0], [-1.0, 0.0]])
    s = 1 / math.sqrt(2)
    pull = 1 - s                                  # cos(f0, f1) = s
    push = [1 + 0.0, 1 - s]                       # cos(f0, f2) = 0, cos(f1, f2) = -s
    negneg = 1 + s                                # class 1: cos(f0, f1) = s
    expected = (pull + sum(push) + max(push) + 2 * negneg) / 6
    assert feature_distance_loss(f, observed).item() == pytest.approx(expected, rel=1e-6)
    # nothing observed: 0 (the public code gives NaN)
    assert feature_distance_loss(f, torch.zeros_like(observed)).item() == 0.0


@pytest.mark.parametrize("p_pos", [0.5, 0.2, 0.0])
def test_feature_distance_loss_matches_public_contrastive_loss(p_pos):
    """Random features and labels; the transcription's two torch.randperm draws are the permutations
    that the same random keys define (any uniform permutation is the public draw in distribution).
    p_pos 0.0: no pull pairs, so nothing is subsampled."""
    g = torch.Generator().manual_seed(5)
    for batch, classes in ((8, 6), (5, 3), (2, 4)):
        for _ in range(3):
            features = torch.randn(batch, classes, 7, generator=g, dtype=torch.float64)
            target = random_partial((batch, classes), g, p_known=0.7, p_pos=p_pos)
            entries = batch * (batch - 1) // 2 * classes
            keys = torch.rand(2, entries, generator=g, dtype=torch.float64)
            ours = feature_distance_loss(features, target, keys)
            public = public_contrastive(features, target, keys_perm(keys[0]), keys_perm(keys[1]))
            if torch.isnan(public):
                assert ours.item() == 0.0
            else:
                torch.testing.assert_close(ours.double(), public, rtol=1e-6, atol=1e-7)


def test_feature_distance_loss_public_randperm_when_the_draw_takes_everything():
    # many positives: 2k >= every push/negneg set, so the public torch.randperm draw keeps all of them
    g = torch.Generator().manual_seed(6)
    features = torch.randn(6, 3, 5, generator=g, dtype=torch.float64)
    target = torch.tensor([[1, 1, -1], [1, 1, 1], [1, -1, 1], [-1, 1, 1], [1, 1, -1], [1, -1, -1]],
                          dtype=torch.float64)
    torch.testing.assert_close(feature_distance_loss(features, target).double(), public_contrastive(features, target),
                               rtol=1e-6, atol=1e-7)


def test_feature_distance_loss_gradient_matches_public():
    g = torch.Generator().manual_seed(7)
    features = torch.randn(8, 5, 6, generator=g, dtype=torch.float64)
    target = random_partial((8, 5), g, p_known=0.8, p_pos=0.4)
    keys = torch.rand(2, 28 * 5, generator=g, dtype=torch.float64)
    a, b = features.clone().requires_grad_(), features.clone().requires_grad_()
    feature_distance_loss(a, target, keys).backward()
    public_contrastive(b, target, keys_perm(keys[0]), keys_perm(keys[1])).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-8)


# -- pair layout -----------------------------------------------------------------------------------

def test_pair_matrix_symmetric_and_ordered():
    i, j = pair_index(4)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert [i.tolist(), j.tolist()] == public_concat_index(4)
    values = torch.arange(6.0)[None]
    m = pair_matrix(values, 4)
    assert torch.equal(m[0], m[0].t())
    assert m[0, 1, 3].item() == 4.0 and m[0, 2, 2].item() == 1.0


# -- pseudo labels ---------------------------------------------------------------------------------

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
    # a threshold of 1 never fires (the public "<= margin -> 0" after ">= margin -> 1")
    assert torch.equal(intra_pseudo_labels(torch.ones(2, c, c).double(), observed.double(), 1.0), observed.double())


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.75, 0.9, 0.95, 1.0])
def test_intra_pseudo_labels_match_public(threshold):
    g = torch.Generator().manual_seed(8)
    for classes in (3, 6):
        pairs = classes * (classes - 1) // 2
        target = random_partial((9, classes), g, p_known=0.5, p_pos=0.5)
        logits = torch.randn(9, pairs, generator=g, dtype=torch.float64) * 3 + 1.0
        ours = intra_pseudo_labels(pair_matrix(torch.sigmoid(logits), classes), target, threshold)
        assert torch.equal(ours, public_intra_pseudo(logits, target, threshold))


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


@pytest.mark.parametrize("threshold", [-0.2, 0.0, 0.2, 0.5, 0.75, 0.95, 1.0])
def test_cross_pseudo_labels_match_public(threshold):
    g = torch.Generator().manual_seed(9)
    batch, classes, dim, k = 7, 5, 6, 4
    centre = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    bank = centre[:, None, :] + 0.6 * torch.randn(classes, k, dim, generator=g, dtype=torch.float64)
    bank[1, 2:] = 0                                   # empty slots
    bank[3] = 0                                       # an empty class bank
    features = centre[None] * torch.rand(batch, classes, 1, generator=g, dtype=torch.float64) * 2 \
        + torch.randn(batch, classes, dim, generator=g, dtype=torch.float64)
    target = random_partial((batch, classes), g, p_known=0.4)
    ours = cross_pseudo_labels(features, target, bank, threshold)
    assert torch.equal(ours.double(), public_inter_pseudo(features, target, bank.clone(), threshold))


def test_threshold_schedule_matches_public_margins():
    values = [threshold_at(e, 0.95, 0.025, 0.75, 5) for e in range(20)]
    assert values[:6] == [0.95] * 6
    assert values[6] == pytest.approx(0.925) and values[7] == pytest.approx(0.9)
    assert values[13] == pytest.approx(0.75) and values[19] == 0.75
    assert values == pytest.approx(public_margins(20), abs=1e-12)
    assert [threshold_at(e, 0.95, 0.025, 0.75, 1) for e in range(6)] == \
        pytest.approx(public_margins(6, generate_label_epoch=1), abs=1e-12)


# -- bank ------------------------------------------------------------------------------------------

def test_feature_bank_newest_first():
    bank = FeatureBank(num_classes=2, capacity=3, dim=1)

    def push(values, positive):
        bank.push(torch.tensor(values, dtype=torch.float32)[:, :, None], torch.tensor(positive))

    def stored(c):
        return bank.features[c, :, 0].tolist()

    push([[1, 10], [2, 20]], [[True, False], [True, True]])
    assert stored(0) == [1, 2, 0] and stored(1) == [20, 0, 0] and bank.count.tolist() == [2, 1]
    push([[3, 30], [4, 40]], [[True, True], [True, False]])          # class 0 overflows: the oldest (2) goes
    assert stored(0) == [3, 4, 1] and stored(1) == [30, 20, 0]
    push([[5, 50]], [[True, False]])                                 # then 1
    assert stored(0) == [5, 3, 4] and bank.count.tolist() == [3, 2]
    push([[6, 0], [7, 0], [8, 0], [9, 0]], [[True, False]] * 4)      # more than K at once: the first K stay
    assert stored(0) == [6, 7, 8]
    push([[11, 0]], [[True, False]])                                 # and the last of those goes next
    assert stored(0) == [11, 6, 7]
    bank.clear()
    assert bank.features.abs().sum().item() == 0 and bank.count.tolist() == [0, 0]


def test_feature_bank_matches_public_update_feature():
    g = torch.Generator().manual_seed(10)
    classes, k, dim = 4, 5, 3
    bank, public = FeatureBank(classes, k, dim), None
    for step in range(12):
        batch = 1 + step % 7
        features = torch.randn(batch, classes, dim, generator=g)
        target = random_partial((batch, classes), g, p_known=0.7, p_pos=0.6)
        bank.push(features, target > 0)
        public = public_update_feature(public, features, target, k)
        assert torch.equal(bank.features, public)
        assert torch.equal(bank.count, (public.abs().sum(-1) > 0).sum(-1))


# -- label graph -----------------------------------------------------------------------------------

def test_label_graph_from_partial_labels():
    observed = torch.tensor([[1, 1, 0], [1, -1, 1], [1, 0, 1], [-1, 1, 1]], dtype=torch.int8)
    g = label_graph(observed)
    # N(0+) = 3 (rows 0-2): with 1+ in row 0 -> 1/3, with 2+ in rows 1, 2 -> 2/3
    assert g[0, 1].item() == pytest.approx(1 / 3) and g[0, 2].item() == pytest.approx(2 / 3)
    # N(2+) = 3 (rows 1-3): 0+ in rows 1, 2 -> 2/3; 1+ in row 3 -> 1/3
    assert g[2, 0].item() == pytest.approx(2 / 3) and g[2, 1].item() == pytest.approx(1 / 3)
    assert torch.equal(torch.diagonal(g), torch.ones(3))
    # a class without observed positives: a zero row, 1 on the diagonal (public: NaN)
    g2 = label_graph(torch.tensor([[1, -1, 0], [1, 0, 1]], dtype=torch.int8))
    assert g2[1].tolist() == [0.0, 1.0, 0.0]


def test_label_graph_matches_public_get_graph_file():
    g = torch.Generator().manual_seed(11)
    observed = random_partial((60, 7), g, p_known=0.5, p_pos=0.4).to(torch.int8)
    observed[:7] = torch.eye(7, dtype=torch.int8)     # every class has a positive (else public NaN)
    public = public_graph(observed.numpy())
    torch.testing.assert_close(label_graph(observed).double(), torch.from_numpy(public), rtol=1e-6, atol=1e-7)


# -- preset ----------------------------------------------------------------------------------------

def test_preset_parses_with_the_published_optimiser():
    from scob_fast.config import parse_args
    config = parse_args(["--config", str(ROOT / "configs/sst-coco2014.yaml"), "--dataset", "demo"])
    o, a = config.optim, config.method
    assert config.model.method == "sst" and config.data.labels == "partial:0.5"
    assert config.data.protocol == "sst" and config.data.label_seed is None    # the protocol's seed: 0
    assert (o.lr_linear, o.lr_classifier, o.weight_decay, o.lr_step, o.epochs, o.batch_size) == \
        (1e-5, 1e-5, 5e-4, 10, 20, 8)
    assert (a.threshold, a.threshold_step, a.threshold_floor, a.pseudo_start_epoch, a.bank_size) == \
        (0.95, 0.025, 0.75, 5, 100)
    assert (a.cooc_weight, a.cooc_pairs, a.distance_weight, a.distance_pairs, a.pool) == \
        (10.0, "all", 0.05, "published", "always")
    assert a.intra_weight == 1.0 and a.inter_weight == 1.0 and a.class_embeddings is None


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


def _method(num_classes=5, pseudo_start=0, bank_size=4, observed=None, threshold=0.95, threshold_floor=0.75,
            **options):
    torch.manual_seed(0)
    config = SSTConfig(threshold=threshold, threshold_step=0.025, threshold_floor=threshold_floor,
                       pseudo_start_epoch=pseudo_start,
                       bank_size=bank_size, intra_weight=1.0, inter_weight=1.0, cooc_weight=10.0,
                       distance_weight=0.05, **options)
    if observed is None:
        observed = torch.randint(-1, 2, (24, num_classes), dtype=torch.int8)
    ctx = MethodContext(backbone=StubBackbone(), num_classes=num_classes, num_samples=observed.shape[0],
                        observed=observed, config=config, device=torch.device("cpu"),
                        amp=AmpPolicy(torch.device("cpu"), False), image_size=32,
                        heads=HeadOptions(dim=32, ffn=64, dropout=0.0),
                        lr=LearningRates(linear=1e-3, classifier=1e-3), batch_size=6, seed=0)
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
    # threshold 0: every unknown becomes a pseudo positive (an image without positives scores 0 >= 0 too)
    method = _method(pseudo_start=0, threshold=0.0, threshold_floor=0.0)
    batch = _batch()
    f_high = method.backbone(batch["image"])[1]
    method.start_epoch(1)
    with torch.no_grad():
        logits = method.net(f_high)
    _, stats = method.losses(f_high, batch["observed"])
    unknown = batch["observed"] == 0
    intra_expected = torch.where(unknown, torch.ones_like(batch["observed"]), batch["observed"])
    assert stats["loss_intra"].item() == pytest.approx(partial_bce(logits, intra_expected).item(), rel=1e-5)
    assert stats["pseudo_intra"].item() == unknown.sum().item()


def test_sst_objective_matches_public_train_step():
    """The whole SST.py Train objective of one step from the network's outputs, written with the
    transcriptions: BCE + intra BCE + 10 x co-occurrence ASL + inter BCE + 0.05 x contrastive, the
    bank updated before the inter pseudo labels are read."""
    method = _method(pseudo_start=1, threshold=0.5, threshold_floor=0.5, bank_size=3)
    batch = _batch()
    f_high = method.backbone(batch["image"])[1]
    target = batch["observed"].double()
    method.train()
    method.start_epoch(0)
    for step in range(3):                                              # fill the bank a little (epoch 0)
        method.continue_epoch(0, step)
        method.losses(f_high[step:step + 3], batch["observed"][step:step + 3])
    method.start_epoch(2)
    public_bank = method.bank.features.clone().double()
    keys = method.distance_keys(6).double()
    with torch.no_grad():
        output, semantic = method.net.classify(f_high)
        cooc = method.net.pair_logits(semantic)
    output, semantic, cooc = output.double(), semantic.double(), cooc.double()
    public_bank = public_update_feature(public_bank, semantic, target, 3)
    margin = method.threshold()
    intra_target = public_intra_pseudo(cooc, target, margin)
    inter_target = public_inter_pseudo(semantic, target, public_bank, margin)
    expected = (public_bce(output, target) + public_bce(output, intra_target, margin)
                + 10.0 * public_intra_asymmetric(cooc, target)
                + public_bce(output, inter_target, margin)
                + 0.05 * public_contrastive(semantic, target, keys_perm(keys[0]), keys_perm(keys[1])))
    total, stats = method.losses(f_high, batch["observed"], batch["labels"])
    assert total.item() == pytest.approx(expected.item(), rel=1e-4)
    torch.testing.assert_close(method.bank.features.double(), public_bank, rtol=1e-5, atol=1e-6)


def test_sst_first_epoch_ramp_is_batch_index_over_batches():
    method = _method(pseudo_start=5)
    batch = _batch()
    f_high = method.backbone(batch["image"])[1]
    assert method.steps_per_epoch == 24 // 6          # drop_last, as the public DataLoader
    values = []
    for step in range(4):
        method.continue_epoch(0, step)
        _, stats = method.losses(f_high, batch["observed"])
        values.append((stats["loss_cooc"].item(), stats["loss_dist"].item()))
    method.start_epoch(1)
    _, full = method.losses(f_high, batch["observed"])
    assert values[0] == (0.0, 0.0)
    for step in (1, 2, 3):     # the network has not changed: the terms scale with step / 4
        assert values[step][0] == pytest.approx(full["loss_cooc"].item() * step / 4, rel=1e-4)


def test_sst_distance_draw_is_reproducible_by_seed_and_step():
    a, b = _method(), _method()
    a.continue_epoch(1, 2)
    b.continue_epoch(1, 2)
    assert torch.equal(a.distance_keys(6), b.distance_keys(6))
    b.continue_epoch(1, 3)
    assert not torch.equal(a.distance_keys(6), b.distance_keys(6))


def test_semantic_decoupling_is_an_attention_average():
    method = _method()
    sd = method.net.decoupling
    sd.eval()
    x = torch.randn(2, 16, 1, 1).expand(2, 16, 3, 3).contiguous()    # every position the same
    out = sd(x)
    reduced = sd.reduce(x)[:, :, 0, 0]
    assert out.shape == (2, 5, 32)
    torch.testing.assert_close(out, reduced[:, None, :].expand(2, 5, 32), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool, grid, positions", [("auto", 4, 16), ("auto", 8, 16), ("auto", 14, 49),
                                                   ("always", 4, 4), ("always", 14, 49), ("never", 14, 196)])
def test_semantic_decoupling_pooling(pool, grid, positions):
    method = _method(pool=pool)
    sd = method.net.decoupling
    sd.eval()
    x = torch.randn(2, 16, grid, grid)
    seen = {}

    def hook(module, inputs, output):
        seen["input"] = inputs[0]

    handle = sd.reduce.register_forward_hook(hook)
    out = sd(x)
    handle.remove()
    assert seen["input"].shape[2] * seen["input"].shape[3] == positions and out.shape == (2, 5, 32)
    if positions < grid * grid:   # mean of each 2x2 block (stride 2) before the 1x1 conv + BN
        blocks = x[:, :, :grid // 2 * 2, :grid // 2 * 2].unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2))
        torch.testing.assert_close(seen["input"], blocks)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_fixed_class_embeddings_from_a_file(tmp_path, suffix):
    table = torch.randn(5, 300)
    path = tmp_path / f"glove{suffix}"
    if suffix == ".npy":
        np.save(path, table.numpy())
    else:
        torch.save(table, path)
    method = _method(class_embeddings=str(path))
    embedding = method.net.decoupling.class_embedding
    torch.testing.assert_close(embedding, table)
    trained = {id(p) for group in method.param_groups() for p in group["params"]}
    assert id(embedding) not in trained and not embedding.requires_grad
    assert "net.decoupling.class_embedding" in method.state_dict()
    optimizer = torch.optim.Adam(method.param_groups())
    method.train()
    method.start_epoch(1)
    method.train_step(_batch(), optimizer)
    torch.testing.assert_close(method.net.decoupling.class_embedding, table)
    # learned otherwise
    learned = _method().net.decoupling.class_embedding
    assert learned.requires_grad and learned.shape == (5, 300)


def test_class_embeddings_file_errors(tmp_path):
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros((4, 300), dtype=np.float32))
    with pytest.raises(ValueError, match=r"expected shape \[5, D\]"):
        _method(class_embeddings=str(path))
    with pytest.raises(ValueError, match="cannot read"):
        _method(class_embeddings=str(tmp_path / "missing.npy"))
