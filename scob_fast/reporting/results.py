"""A run's evaluated scores on disk and what is derived from them: per_class.csv and the PNG plots.

    scores_val.npz    the best validation epoch's sigmoid scores, full labels, class names, epoch
    scores_test.npz   the test split's, of the best epoch's weights
    per_class.csv     split, epoch, class, AP, positives, predicted, precision, recall, f1, threshold
    plot_ap_<split>.png, plot_pr_<split>.png, plot_training.png

`python -m scob_fast.reporting RUN_DIR` rewrites per_class.csv and the plots from these files.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from scob_fast.atomic_file import atomic_write

from .per_class import per_class_rows, rows_to_csv

log = logging.getLogger("scob_fast.reporting")

SPLITS = ("val", "test")
PER_CLASS_FILE = "per_class.csv"
TRAINING_PLOT = "plot_training.png"


def scores_path(run_dir: str | Path, split: str) -> Path:
    return Path(run_dir) / f"scores_{split}.npz"


def save_scores(run_dir: str | Path, split: str, epoch: int, scores, targets, class_names: list[str]) -> Path:
    """`epoch` 1-based."""
    meta = np.array(json.dumps({"split": split, "epoch": int(epoch), "class_names": list(class_names)}))
    return atomic_write(scores_path(run_dir, split), lambda handle: np.savez_compressed(
        handle, scores=np.asarray(scores, dtype=np.float32), targets=np.asarray(targets, dtype=np.uint8), meta=meta))


def load_scores(run_dir: str | Path, split: str) -> dict | None:
    path = scores_path(run_dir, split)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return {**meta, "scores": data["scores"].astype(np.float64), "targets": data["targets"]}


def write_per_class(run_dir: str | Path, threshold: float) -> Path | None:
    """per_class.csv from the stored scores of every split there is (val first, then test)."""
    rows = []
    for split in SPLITS:
        saved = load_scores(run_dir, split)
        if saved is not None:
            rows += per_class_rows(saved["scores"], saved["targets"], saved["class_names"], threshold,
                                   split=split, epoch=saved["epoch"])
    if not rows:
        return None
    text = rows_to_csv(rows)
    return atomic_write(Path(run_dir) / PER_CLASS_FILE, lambda handle: handle.write(text.encode()))


def write_plots(run_dir: str | Path, threshold: float = 0.5) -> list[Path]:
    """Every plot the run's files allow; a plot that fails is logged, not raised (it must not end a run)."""
    from . import plots
    run_dir = Path(run_dir)
    written = []

    def attempt(what, make):
        try:
            written.append(make())
        except Exception as exc:  # a plotting problem must never lose a finished run
            log.warning("plot %s not written: %s: %s", what, type(exc).__name__, exc)

    summary = run_dir / "summary.csv"
    if summary.exists():
        attempt(TRAINING_PLOT, lambda: plots.plot_training_curves(summary, run_dir / TRAINING_PLOT))
    for split in SPLITS:
        saved = load_scores(run_dir, split)
        if saved is None:
            continue
        title = f"{split} (epoch {saved['epoch']})"
        rows = per_class_rows(saved["scores"], saved["targets"], saved["class_names"], threshold, split=split,
                              epoch=saved["epoch"])
        attempt(f"plot_ap_{split}.png", lambda: plots.plot_ap_bars(rows, run_dir / f"plot_ap_{split}.png", title))
        attempt(f"plot_pr_{split}.png", lambda: plots.plot_pr_curves(
            saved["scores"], saved["targets"], saved["class_names"], run_dir / f"plot_pr_{split}.png", title))
    return written
