"""Per-class results of an evaluated split: AP (scob_fast.engine.metrics, the number mAP averages),
positives, precision / recall / F1 at a threshold; PR curves; per-class thresholds that maximise F1."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from scob_fast.engine.metrics import mean_average_precision

PER_CLASS_COLUMNS = ("split", "epoch", "class", "AP", "positives", "predicted", "precision", "recall", "f1",
                     "threshold")


def per_class_rows(scores: np.ndarray, targets: np.ndarray, class_names: list[str], threshold, *,
                   split: str, epoch: int) -> list[dict]:
    """One dict per class. `threshold`: a number or one per class; `epoch` 1-based (0: unknown).
    AP is nan for a class without positives (it is left out of mAP by default)."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(targets) > 0
    if scores.shape != truth.shape or scores.ndim != 2 or scores.shape[1] != len(class_names):
        raise ValueError(f"scores {scores.shape}, targets {truth.shape} and {len(class_names)} class names "
                         "do not match")
    _, ap = mean_average_precision(scores, truth.astype(np.float64))
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (scores.shape[1],))
    predicted = scores >= thresholds[None, :]
    tp = (predicted & truth).sum(0)
    n_pred, n_true = predicted.sum(0), truth.sum(0)
    rows = []
    for c, name in enumerate(class_names):
        precision = tp[c] / n_pred[c] if n_pred[c] else 0.0
        recall = tp[c] / n_true[c] if n_true[c] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        rows.append({"split": split, "epoch": int(epoch), "class": name, "AP": float(ap[c]),
                     "positives": int(n_true[c]), "predicted": int(n_pred[c]), "precision": float(precision),
                     "recall": float(recall), "f1": float(f1), "threshold": float(thresholds[c])})
    return rows


def _format(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def rows_to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=PER_CLASS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _format(row[k]) for k in PER_CLASS_COLUMNS})
    return buffer.getvalue()


def read_per_class(path: str | Path) -> list[dict]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in ("AP", "precision", "recall", "f1", "threshold"):
            row[key] = float(row[key])
        for key in ("epoch", "positives", "predicted"):
            row[key] = int(row[key])
    return rows


def pr_curve(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at each distinct score of one class, highest score first: the points
    whose recall-weighted precision is metrics.average_precision."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(targets) > 0
    positives = truth.sum()
    if positives == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="mergesort")
    scores, truth = scores[order], truth[order]
    last_of_run = np.r_[np.diff(scores) != 0, True]
    tp = np.cumsum(truth)[last_of_run]
    predicted = np.arange(1, len(scores) + 1)[last_of_run]
    return tp / positives, tp / predicted


def f1_thresholds(scores: np.ndarray, targets: np.ndarray, fallback: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the threshold that maximises F1 on (scores, targets) and that F1.

    Candidates are the distinct scores (predict >= score); the threshold is placed halfway between
    the chosen score and the next lower one (so scores a little below the chosen one still count). A
    class without positives gets `fallback` (F1 nan)."""
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(targets) > 0
    thresholds = np.full(scores.shape[1], float(fallback))
    best_f1 = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        positives = truth[:, c].sum()
        if positives == 0:
            continue
        order = np.argsort(-scores[:, c], kind="mergesort")
        s, t = scores[order, c], truth[order, c]
        last_of_run = np.r_[np.diff(s) != 0, True]
        tp = np.cumsum(t)[last_of_run]
        predicted = np.arange(1, len(s) + 1)[last_of_run]
        f1 = 2 * tp / (predicted + positives)
        k = int(np.argmax(f1))
        distinct = s[last_of_run]
        below = distinct[k + 1] if k + 1 < len(distinct) else distinct[k] - 1e-6
        thresholds[c] = float((distinct[k] + below) / 2)
        best_f1[c] = float(f1[k])
    return thresholds, best_f1
