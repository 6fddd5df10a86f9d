import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from scob_fast.engine.metrics import average_precision, mean_average_precision, multilabel_metrics


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    scores = rng.random((200, 7))
    if ties:
        scores = np.round(scores, 1)  # many tied scores: thresholds must group them like sklearn
    targets = (rng.random((200, 7)) < 0.3).astype(int)
    for c in range(7):
        assert average_precision(scores[:, c], targets[:, c]) == pytest.approx(
            average_precision_score(targets[:, c], scores[:, c]), abs=1e-12)


def test_map_empty_class_exclude_and_zero():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 4))
    targets = (rng.random((50, 4)) < 0.4).astype(int)
    targets[:, 2] = 0  # a class with no positive in this split
    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in (0, 1, 3)])
    m, ap = mean_average_precision(scores, targets, "exclude")
    assert np.isnan(ap[2]) and m == pytest.approx(expected)
    m0, _ = mean_average_precision(scores, targets, "zero")
    assert m0 == pytest.approx(expected * 3 / 4)
    assert multilabel_metrics(scores, targets)["empty_classes"] == 1


def test_threshold_and_top3_metrics_by_hand():
    scores = np.array([[0.9, 0.6, 0.1, 0.2], [0.2, 0.7, 0.8, 0.4]])
    targets = np.array([[1, 0, 0, 1], [0, 1, 1, 0]])
    m = multilabel_metrics(scores, targets, threshold=0.5, top_k=3)
    # threshold predictions: img0 {0,1}, img1 {1,2}; TP per class [1,1,1,0], predicted [1,2,1,0], true [1,1,1,1]
    assert m["CP"] == pytest.approx((1 + 0.5 + 1 + 0) / 4)
    assert m["CR"] == pytest.approx(3 / 4)
    assert m["OP"] == pytest.approx(3 / 4) and m["OR"] == pytest.approx(3 / 4)
    assert m["OF1"] == pytest.approx(0.75)
    # top-3: img0 {0,1,3}, img1 {1,2,3}: TP 4 of 6 predicted, 4 true
    assert m["top3_OP"] == pytest.approx(4 / 6) and m["top3_OR"] == pytest.approx(1.0)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="must both be"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))


# -- VOC-style interpolated AP (SST's evaluation) ------------------------------------------------------

def public_voc2012_ap(confidence, ground_truth):
    """Transcription of HCP-MLR-PL utils/metrics.py for one class: Compute_mAP_VOC2012's ranking
    (images by descending confidence; TP = label > 0, FP = label <= 0; cumulative sums; recall =
    TP / objectNum, precision = TP / max(TP + FP, eps)) and ComputeAP_VOC (append recall 0/1 and
    precision 0/0, make precision non-increasing from the right in a loop, sum the recall steps)."""
    order = np.argsort(-confidence, kind="stable")
    sorted_label = [ground_truth[i] for i in order]
    tp = np.array([1.0 if v > 0 else 0.0 for v in sorted_label])
    fp = np.array([1.0 if v <= 0 else 0.0 for v in sorted_label])
    object_num, tp, fp = sum(tp), np.cumsum(tp), np.cumsum(fp)
    recall, precision = tp / float(object_num), tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    rec, prec = np.concatenate(([0.], recall, [1.])), np.concatenate(([0.], precision, [0.]))
    for index in range(prec.size - 1, 0, -1):
        prec[index - 1] = np.maximum(prec[index - 1], prec[index])
    index = np.where(rec[1:] != rec[:-1])[0]
    return np.sum((rec[index + 1] - rec[index]) * prec[index + 1])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("positive_rate", [0.05, 0.3, 0.9])
def test_voc_interpolated_ap_matches_the_public_formula(seed, positive_rate):
    rng = np.random.default_rng(seed)
    scores = rng.random((150, 6))
    if seed % 2:
        scores = np.round(scores, 1)     # ties: both rank them in row order (a stable sort)
    targets = (rng.random((150, 6)) < positive_rate).astype(int)
    targets[0] = 1                       # every class has a positive
    m, ap = mean_average_precision(scores, targets, ap="voc-interpolated")
    expected = [public_voc2012_ap(scores[:, c], targets[:, c]) for c in range(6)]
    np.testing.assert_allclose(ap, expected, rtol=0, atol=1e-12)
    assert m == pytest.approx(np.mean(expected), abs=1e-12)
    assert multilabel_metrics(scores, targets, ap="voc-interpolated")["mAP"] == pytest.approx(m, abs=1e-12)


def test_voc_interpolated_ap_by_hand_and_where_it_differs_from_sklearn():
    # ranks: negative, positive, positive. precision 0, 1/2, 2/3; the envelope lifts the first two to 2/3.
    scores, targets = np.array([[0.9], [0.8], [0.7]]), np.array([[0], [1], [1]])
    _, voc = mean_average_precision(scores, targets, ap="voc-interpolated")
    _, skl = mean_average_precision(scores, targets, ap="sklearn")
    assert voc[0] == pytest.approx(2 / 3) and skl[0] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    empty = np.zeros((3, 1), dtype=int)
    m, ap = mean_average_precision(scores, empty, "zero", ap="voc-interpolated")
    assert np.isnan(ap[0]) and m == 0.0            # the empty-class policy applies as to sklearn's AP
    with pytest.raises(ValueError, match="ap must be one of"):
        mean_average_precision(scores, targets, ap="voc07")
