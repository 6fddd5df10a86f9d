"""Multi-label metrics: mAP and the CP/CR/CF1/OP/OR/OF1 family (threshold and top-3).

Average precision follows scikit-learn's definition (step-wise precision at each distinct score,
weighted by the recall increment). A class with no positive in the evaluated split has no defined
AP: by default it is left out of the mean and reported (`empty_classes`); `empty_class="zero"`
counts it as 0 the way the single-positive benchmark code does.
"""
from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """AP of one class; nan when the class has no positive."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0
    positives = targets.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, targets = scores[order], targets[order]
    # Only the last index of each run of tied scores is a threshold.
    last_of_run = np.r_[np.diff(scores) != 0, True]
    tp = np.cumsum(targets)[last_of_run]
    predicted = (np.arange(1, len(scores) + 1))[last_of_run]
    precision = tp / predicted
    recall = tp / positives
    recall_step = np.diff(np.r_[0.0, recall])
    return float((recall_step * precision).sum())


def mean_average_precision(scores: np.ndarray, targets: np.ndarray, empty_class: str = "exclude") -> tuple[float, np.ndarray]:
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be [N, C]")
    if empty_class not in ("exclude", "zero"):
        raise ValueError(f"empty_class must be 'exclude' or 'zero', got {empty_class!r}")
    ap = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    if empty_class == "zero":
        return float(np.nan_to_num(ap, nan=0.0).mean()), ap
    valid = ~np.isnan(ap)
    return (float(ap[valid].mean()) if valid.any() else float("nan")), ap


def _prf(predicted: np.ndarray, targets: np.ndarray, prefix: str) -> dict:
    tp = (predicted & targets).sum(axis=0).astype(np.float64)
    n_pred = predicted.sum(axis=0).astype(np.float64)
    n_true = targets.sum(axis=0).astype(np.float64)
    # A class never predicted (or never present) contributes precision (recall) 0.
    cp = np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0).mean()
    cr = np.divide(tp, n_true, out=np.zeros_like(tp), where=n_true > 0).mean()
    op = tp.sum() / n_pred.sum() if n_pred.sum() else 0.0
    orr = tp.sum() / n_true.sum() if n_true.sum() else 0.0
    f1 = lambda p, r: 2 * p * r / (p + r) if p + r > 0 else 0.0  # noqa: E731
    return {f"{prefix}CP": float(cp), f"{prefix}CR": float(cr), f"{prefix}CF1": float(f1(cp, cr)),
            f"{prefix}OP": float(op), f"{prefix}OR": float(orr), f"{prefix}OF1": float(f1(op, orr))}


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray, threshold: float = 0.5, top_k: int = 3,
                       empty_class: str = "exclude") -> dict:
    """scores: probabilities [N, C]; targets: {0,1} [N, C]. Top-k metrics predict the k highest scores
    of each image regardless of the threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0
    mAP, ap = mean_average_precision(scores, targets, empty_class)
    out = {"mAP": mAP, "empty_classes": int(np.isnan(ap).sum())}
    out.update(_prf(scores >= threshold, targets, ""))
    k = min(top_k, scores.shape[1])
    top = np.zeros_like(targets)
    np.put_along_axis(top, np.argsort(-scores, axis=1)[:, :k], True, axis=1)
    out.update(_prf(top, targets, f"top{top_k}_"))
    return out
