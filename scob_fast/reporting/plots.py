"""PNG plots of a run with matplotlib's Agg canvas (no pyplot, no global backend change):
per-class AP bars, PR curves of the best and worst classes, mAP and losses over epochs."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .per_class import pr_curve


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    figure.savefig(tmp, format="png", bbox_inches="tight")
    tmp.replace(path)
    return path


def plot_ap_bars(rows: list[dict], path: str | Path, title: str) -> Path:
    """Horizontal bars of per-class AP, best class on top; classes without positives are listed as n/a."""
    valid = [r for r in rows if not math.isnan(r["AP"])]
    empty = [r for r in rows if math.isnan(r["AP"])]
    valid.sort(key=lambda r: r["AP"])
    n = len(valid) + len(empty)
    figure = _figure(7.0, min(max(2.5, 0.22 * n + 1.2), 120.0))
    axes = figure.add_subplot(1, 1, 1)
    names = [r["class"] + " (n/a)" for r in empty] + [r["class"] for r in valid]
    values = [0.0] * len(empty) + [r["AP"] for r in valid]
    colours = ["#bbbbbb"] * len(empty) + ["#3b75af"] * len(valid)
    axes.barh(np.arange(n), values, color=colours)
    axes.set_yticks(np.arange(n))
    axes.set_yticklabels(names, fontsize=8)
    axes.set_xlim(0, 1)
    axes.set_xlabel("average precision")
    mean = np.mean([r["AP"] for r in valid]) if valid else float("nan")
    if valid:
        axes.axvline(mean, color="#c44e52", linestyle="--", linewidth=1)
    axes.set_title(f"{title}: mAP {mean:.4f} over {len(valid)} classes")
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def plot_pr_curves(scores: np.ndarray, targets: np.ndarray, class_names: list[str], path: str | Path,
                   title: str, count: int = 3) -> Path:
    """Precision-recall curves of the `count` best and `count` worst classes by AP."""
    from scob_fast.engine.metrics import average_precision
    ap = np.array([average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    order = [int(c) for c in np.argsort(-np.nan_to_num(ap, nan=-1.0)) if not np.isnan(ap[c])]
    best = order[:count]
    worst = [c for c in order[::-1][:count] if c not in best]
    figure = _figure(6.0, 5.0)
    axes = figure.add_subplot(1, 1, 1)
    for classes, style in ((best, "-"), (worst, "--")):
        for c in classes:
            recall, precision = pr_curve(scores[:, c], targets[:, c])
            axes.step(np.r_[0.0, recall], np.r_[precision[:1], precision], where="post", linestyle=style,
                      label=f"{class_names[c]} (AP {ap[c]:.3f})")
    axes.set_xlim(0, 1.0)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(f"{title}: best (solid) and worst (dashed) classes")
    if best or worst:
        axes.legend(fontsize=8, loc="lower left")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def read_summary(path: str | Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def plot_training_curves(summary_csv: str | Path, path: str | Path) -> Path:
    """Validation mAP and the training losses (epoch means) over epochs, from summary.csv."""
    rows = read_summary(summary_csv)
    epochs = [_number(r.get("epoch")) for r in rows]
    figure = _figure(10.0, 4.0)
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for key, label in (("val_mAP", "val mAP"), ("val_CF1", "val CF1"), ("val_OF1", "val OF1")):
        if rows and key in rows[0]:
            left.plot(epochs, [_number(r[key]) for r in rows], marker="o", label=label)
    left.set_xlabel("epoch")
    left.set_ylabel("validation metric")
    left.set_title("validation")
    left.grid(alpha=0.3)
    losses = [k for k in (rows[0] if rows else {}) if k.startswith("loss")]
    for key in losses:
        right.plot(epochs, [_number(r[key]) for r in rows], marker="o", label=key)
    right.set_xlabel("epoch")
    right.set_ylabel("epoch mean")
    right.set_title("training losses")
    right.grid(alpha=0.3)
    for axes in (left, right):
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
        if len(epochs) <= 20:
            axes.set_xticks([e for e in epochs if not math.isnan(e)])
    return _save(figure, path)


_DIAGNOSTIC_PANELS = (
    ("label estimator vs true training labels", ("estimator_mAP", "estimator_mAP_unknown"), "mAP %"),
    ("estimates of unknown entries", ("estimate_unknown_pos", "estimate_neg", "estimator_drift"), "probability"),
    ("CAM keep masks vs object masks", ("cam0_precision", "cam0_recall", "cam0_chance", "cam1_precision",
                                        "cam1_recall", "cam1_chance"), "share"),
    ("loss shares and prototype bank", None, "share"),
)


def plot_diagnostics(diagnostics_csv: str | Path, path: str | Path, title: str = "") -> Path:
    """The per-epoch columns of diagnostics.csv (TrainingDiagnostics) in four panels; a panel shows only
    the columns the run has (no CAM panel lines for methods without masks)."""
    rows = read_summary(diagnostics_csv)
    epochs = [int(r["epoch"]) for r in rows]
    columns = list(rows[0]) if rows else []
    figure = _figure(11.0, 7.5)
    for slot, (name, keys, unit) in enumerate(_DIAGNOSTIC_PANELS, start=1):
        axes = figure.add_subplot(2, 2, slot)
        if keys is None:
            keys = [k for k in columns if k.startswith("share_") or k.startswith("bank_")]
        shown = [k for k in keys if k in columns]
        for key in shown:
            axes.plot(epochs, [_number(r.get(key)) for r in rows], marker=".", label=key)
        axes.set_title(name, fontsize=10)
        axes.set_xlabel("epoch")
        axes.set_ylabel(unit)
        axes.grid(alpha=0.3)
        if shown:
            axes.legend(fontsize=7)
        else:
            axes.text(0.5, 0.5, "not recorded by this run", ha="center", va="center", transform=axes.transAxes)
    figure.subplots_adjust(hspace=0.35, wspace=0.25)
    if title:
        figure.suptitle(title)
    return _save(figure, path)
