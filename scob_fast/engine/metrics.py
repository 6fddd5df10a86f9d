"""Multi-label metrics: mAP and the CP/CR/CF1/OP/OR/OF1 family (threshold and top-3).

Average precision, `ap=`:
- "sklearn" (default): scikit-learn's definition (step-wise precision at each distinct score,
  weighted by the recall increment; tied scores form one threshold);
- "voc-interpolated": all-point interpolated AP, VOC 2010-2012 style, as SST's public code computes
  mAP (HCP-MLR-PL utils/metrics.py Compute_mAP_VOC2012 + ComputeAP_VOC): rank the images by score,
  precision and recall after every rank, precision replaced by its maximum at any higher recall,
  summed over the recall increments between (0, 0) and (1, 0) appended at the ends. Ties are
  ranked in row order (a stable sort; the public code's np.argsort leaves their order unspecified).
A class with no positive in the evaluated split has no defined AP: by default it is left out of the
mean and reported (`empty_classes`); `empty_class="zero"` counts it as 0 the way the single-positive
benchmark code does.

Which epoch is the result (`SELECTION_MODES`, applied by the trainer): "val", the best held-out val
mAP, or "test-best-epoch", the best mAP on the test split itself, as the public Scob, SST and SADCL
codes report it.
"""
from __future__ import annotations

import numpy as np

AP_MODES = ("sklearn", "voc-interpolated")
SELECTION_MODES = ("val", "test-best-epoch")


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


def voc_interpolated_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """All-point interpolated AP of one class (VOC 2010-2012; see the module docstring); nan when
    the class has no positive."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0
    positives = targets.sum()
    if positives == 0:
        return float("nan")
    ranked = targets[np.argsort(-scores, kind="stable")]
    tp = np.cumsum(ranked)
    precision = tp / np.arange(1, len(ranked) + 1)
    recall = np.r_[0.0, tp / positives, 1.0]
    # The precision envelope: at each rank, the best precision at this or any later rank.
    envelope = np.maximum.accumulate(np.r_[0.0, precision, 0.0][::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(((recall[steps + 1] - recall[steps]) * envelope[steps + 1]).sum())


AP_FUNCTIONS = {"sklearn": average_precision, "voc-interpolated": voc_interpolated_average_precision}


def mean_average_precision(scores: np.ndarray, targets: np.ndarray, empty_class: str = "exclude",
                           ap: str = "sklearn") -> tuple[float, np.ndarray]:
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be [N, C]")
    if empty_class not in ("exclude", "zero"):
        raise ValueError(f"empty_class must be 'exclude' or 'zero', got {empty_class!r}")
    if ap not in AP_FUNCTIONS:
        raise ValueError(f"ap must be one of {', '.join(AP_MODES)}, got {ap!r}")
    per_class = AP_FUNCTIONS[ap]
    ap = np.array([per_class(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
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
                       empty_class: str = "exclude", ap: str = "sklearn") -> dict:
    """scores: probabilities [N, C]; targets: {0,1} [N, C]. Top-k metrics predict the k highest scores
    of each image regardless of the threshold; `ap` is the per-class AP of mAP (AP_MODES)."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0
    mAP, ap = mean_average_precision(scores, targets, empty_class, ap)
    out = {"mAP": mAP, "empty_classes": int(np.isnan(ap).sum())}
    out.update(_prf(scores >= threshold, targets, ""))
    k = min(top_k, scores.shape[1])
    top = np.zeros_like(targets)
    np.put_along_axis(top, np.argsort(-scores, axis=1)[:, :k], True, axis=1)
    out.update(_prf(top, targets, f"top{top_k}_"))
    return out
