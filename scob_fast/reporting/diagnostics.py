"""Per-epoch training diagnostics against the truth the method does not see: `diagnostics.csv` (and
TensorBoard's `diag/<name>` when that observer is attached) in the run directory.

Written for the methods that train against their own label estimates (Scob, ROLE), because their
failure modes are invisible in the losses:
- estimator quality: mAP of the label estimator against the TRUE training labels, over all entries
  and over the unknown ones only (observed positives excluded: they are pinned near 1), the mean
  estimate of unknown true positives and of true negatives, and the drift (mean |change| of the
  unknown estimates since initialisation);
- CAM keep masks (Scob, on datasets whose generator knows the object masks, e.g. demo-coco): per token
  grid, precision = share of kept cells that contain part of the target class's object, recall =
  share of the object's pixels that fall in kept cells, and the chance precision (share of all cells
  touching the object: what a random mask of any keep rate would score);
- the share of each loss term (`loss_*` step stats, summed over the epoch; a stat the method
  declares the sum of others in `loss_parts` is left out);
- whatever the method's `diagnostics(true_labels)` hook adds (Scob: prototype bank fill and purity).

The method exposes what it has through duck-typed attributes, so the engine and the other methods
know nothing of this: a `LabelEstimator` submodule, `last_cam` (the last step's keep masks, see
Scob.train_step) and `diagnostics(true_labels)`.
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scob_fast.engine.metrics import mean_average_precision
from scob_fast.engine.trainer import Observer
from scob_fast.models.label_estimator import LabelEstimator

log = logging.getLogger("scob_fast.reporting")


def label_estimates(method) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(current, initial) estimator logits [N, C] of the method's per-sample label estimator, or None:
    Scob's `LabelEstimator` (logits, initial_logits) or ROLE's criterion (estimator, initial_estimator)."""
    for module in method.modules():
        if isinstance(module, LabelEstimator):
            return module.logits.detach(), module.initial_logits
        current = getattr(module, "estimator", None)
        if isinstance(current, torch.nn.Parameter) and current.dim() == 2:
            return current.detach(), getattr(module, "initial_estimator", None)
    return None


def estimator_quality(estimates: np.ndarray, initial: np.ndarray | None, observed: np.ndarray,
                      truth: np.ndarray) -> dict[str, float]:
    """estimates, initial: [N, C] probabilities; observed, truth: [N, C] (1 = positive)."""
    known = observed > 0
    positive = truth > 0
    out = {"estimator_mAP": mean_average_precision(estimates, truth)[0] * 100.0}
    # Unknown entries only: rank them within each class (observed positives are left out, not negated).
    masked = np.where(known, -np.inf, estimates)
    kept_truth = np.where(known, 0, truth)
    aps = []
    for c in range(truth.shape[1]):
        rows = ~known[:, c]
        if kept_truth[rows, c].any():
            aps.append(mean_average_precision(masked[rows, c:c + 1], kept_truth[rows, c:c + 1])[0])
    out["estimator_mAP_unknown"] = float(np.mean(aps)) * 100.0 if aps else math.nan
    unknown = ~known
    out["estimate_unknown_pos"] = float(estimates[unknown & positive].mean()) if (unknown & positive).any() else math.nan
    out["estimate_neg"] = float(estimates[~positive].mean()) if (~positive).any() else math.nan
    if initial is not None:
        out["estimator_drift"] = float(np.abs(estimates - initial)[unknown].mean()) if unknown.any() else 0.0
    return out


def keep_mask_scores(keep: torch.Tensor, grid: tuple[int, int], object_maps: torch.Tensor) -> tuple[float, float, float]:
    """keep: bool [B, h*w]; object_maps: bool [B, m, m], the target class's pixels (in the image as the
    model saw it). -> sums over the batch of (precision, recall, chance precision), NaN-free: images
    whose object is invisible at m x m, or whose mask keeps nothing, count only where defined."""
    h, w = grid
    maps = object_maps.float()[:, None]
    coverage = F.adaptive_avg_pool2d(maps, (h, w)).flatten(1)          # object share of each cell
    touches = coverage > 0
    keep = keep.to(touches.device).bool()
    kept = keep.sum(1)
    # Each cell's share of the m x m pixels, to turn cell coverage into object pixels per cell.
    pixels = coverage * (maps.shape[-1] * maps.shape[-2] / (h * w))
    object_pixels = maps.flatten(1).sum(1)
    has_object = object_pixels > 0
    precision = ((keep & touches).sum(1).float() / kept.clamp(min=1))[(kept > 0) & has_object]
    recall = ((pixels * keep).sum(1) / object_pixels.clamp(min=1))[has_object]
    chance = touches.float().mean(1)[(kept > 0) & has_object]
    return precision.tolist(), recall.tolist(), chance.tolist()


class TrainingDiagnostics(Observer):
    """`true_labels`: [N, C] full labels of the training rows (the method's sample indices);
    `observed`: [N, C] what the method sees; `object_maps`: uint8 [N, m, m] class maps (0 background,
    v = class column v - 1) or None; `tensorboard`: an attached TensorBoardObserver or None."""

    FILE = "diagnostics.csv"

    def __init__(self, run_dir, method, true_labels: np.ndarray, observed: np.ndarray,
                 object_maps: np.ndarray | None = None, tensorboard=None, plots: bool = False):
        self.path = Path(run_dir) / self.FILE
        self.plots = plots
        self.method = method
        self.truth = np.asarray(true_labels) > 0
        self.observed = np.asarray(observed)
        self.object_maps = None if object_maps is None else torch.from_numpy(np.asarray(object_maps))
        self.tensorboard = tensorboard
        self._reset()

    def _reset(self):
        self.loss_sums: dict[str, float] = {}
        self.cam: dict[str, list] = {}

    def on_step(self, epoch: int, step: int, stats: dict, images: int) -> None:
        for key, value in stats.items():
            if key.startswith("loss_"):
                self.loss_sums[key] = self.loss_sums.get(key, 0.0) + abs(float(value))
        last = getattr(self.method, "last_cam", None)
        if last is None or self.object_maps is None:
            return
        index = last["indices"].cpu()
        targets = last["targets"].cpu()
        maps = self.object_maps[index] == (targets + 1)[:, None, None].to(self.object_maps.dtype)
        flips = last.get("flip")
        if flips is not None:
            flips = flips.cpu().bool()
            maps = torch.where(flips[:, None, None], maps.flip(-1), maps)
        for level, (keep, grid) in enumerate(zip(last["keep"], last["grids"])):
            p, r, c = keep_mask_scores(keep.cpu(), grid, maps)
            for name, values in ((f"cam{level}_precision", p), (f"cam{level}_recall", r), (f"cam{level}_chance", c)):
                self.cam.setdefault(name, []).extend(values)
        self.method.last_cam = None  # each step's masks are scored once

    def epoch_values(self) -> dict[str, float]:
        values: dict[str, float] = {}
        found = label_estimates(self.method)
        if found is not None:
            current, initial = found
            estimates = torch.sigmoid(current.float()).cpu().numpy()
            initial = None if initial is None else torch.sigmoid(initial.float()).cpu().numpy()
            values.update(estimator_quality(estimates, initial, self.observed, self.truth))
        for name, samples in self.cam.items():
            values[name] = float(np.mean(samples)) if samples else math.nan
        # A stat that is the sum of others the method also logs (its `loss_parts`) is left out, so the
        # shares add up to 1.
        totals = {k for k, parts in getattr(self.method, "loss_parts", {}).items()
                  if all(p in self.loss_sums for p in parts)}
        sums = {k: v for k, v in self.loss_sums.items() if k not in totals}
        total = sum(sums.values())
        for key, value in sums.items():
            values[f"share_{key}"] = value / total if total > 0 else math.nan
        hook = getattr(self.method, "diagnostics", None)
        if callable(hook):
            values.update(hook(torch.from_numpy(self.truth)))
        return values

    def on_epoch(self, epoch: int, row: dict) -> None:
        values = {"epoch": epoch + 1, **self.epoch_values()}
        self._reset()
        rows, fields = [], list(values)
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                # A resumed run redoes the epoch it was in: its rows from that epoch on are replaced.
                rows = [r for r in reader if int(r["epoch"]) < epoch + 1]
            fields = header + [k for k in fields if k not in header]
        rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()})
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        tmp.replace(self.path)
        if self.tensorboard is not None:
            for key, value in values.items():
                if key != "epoch" and isinstance(value, float) and math.isfinite(value):
                    self.tensorboard.writer.add_scalar(f"diag/{key}", value, epoch + 1)

    def close(self) -> None:
        """diagnostics.png beside the CSV (with --plots); a plotting failure only costs the picture."""
        if not (self.plots and self.path.exists()):
            return
        from .plots import plot_diagnostics
        try:
            plot_diagnostics(self.path, self.path.with_suffix(".png"), title=getattr(self.method, "name", ""))
        except Exception as exc:  # matplotlib missing or a broken file: the run itself is fine
            log.info("diagnostics.png not written: %s", exc)
