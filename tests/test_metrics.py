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
