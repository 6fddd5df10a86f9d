"""The observers a training run attaches to the loop (scob_fast.engine.trainer.Observer):

- `ProgressSettings`: applies --progress / --progress-percent / --progress-seconds for the run;
- `PerClassReport`: per_class.csv and scores_{val,test}.npz (best validation epoch and test), the
  per-class F1 thresholds of the best epoch, and the PNG plots at the end;
- `TensorBoardObserver`: event files under <out>/tensorboard.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from scob_fast.engine import progress
from scob_fast.engine.metrics import multilabel_metrics
from scob_fast.engine.trainer import Observer

from . import results
from .per_class import f1_thresholds
from .thresholds import save_thresholds

log = logging.getLogger("scob_fast.reporting")


class ProgressSettings(Observer):
    def __init__(self, mode: str, percent: int, seconds: float):
        self.previous = progress.configure(mode, percent, seconds)

    def close(self) -> None:
        if self.previous is not None:
            progress.restore(self.previous)
            self.previous = None


def _best_val_map(run_dir: Path) -> float:
    """The best finite val mAP already in summary.csv (a resumed run continues its selection)."""
    summary = run_dir / "summary.csv"
    if not summary.exists():
        return -1.0
    from .plots import read_summary
    values = [float(r.get("val_mAP", "nan") or "nan") for r in read_summary(summary)]
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) if finite else -1.0


class PerClassReport(Observer):
    """Keeps the validation scores of the best epoch (the trainer's rule: highest finite val mAP) and
    the test scores; writes per_class.csv whenever either changes, plots and thresholds at close."""

    def __init__(self, run_dir, class_names: list[str], threshold: float = 0.5, plots: bool = True):
        self.run_dir = Path(run_dir)
        self.class_names = list(class_names)
        self.threshold, self.plots = float(threshold), bool(plots)
        self.best_map = _best_val_map(self.run_dir)
        self.latest_val = None
        self.best_val = None

    def on_scores(self, split: str, epoch: int, scores, targets) -> None:
        if split == "val":
            self.latest_val = (epoch, scores, targets)
        elif split == "test":
            results.save_scores(self.run_dir, "test", epoch + 1, scores, targets, self.class_names)
            results.write_per_class(self.run_dir, self.threshold)

    def on_epoch(self, epoch: int, row: dict) -> None:
        value = float(row.get("val_mAP", float("nan")))
        if self.latest_val is None or self.latest_val[0] != epoch:
            return
        if math.isfinite(value) and value > self.best_map:
            self.best_map = value
            self.best_val = self.latest_val
            best_epoch, scores, targets = self.best_val
            results.save_scores(self.run_dir, "val", best_epoch + 1, scores, targets, self.class_names)
            results.write_per_class(self.run_dir, self.threshold)

    def close(self) -> None:
        best = self.run_dir / "best.pth"
        if self.best_val is not None and best.exists():
            epoch, scores, targets = self.best_val
            thresholds, f1 = f1_thresholds(scores, targets, fallback=self.threshold)
            save_thresholds(self.run_dir, best, self.class_names, thresholds, f1, epoch=epoch + 1)
        if self.plots:
            results.write_plots(self.run_dir, self.threshold)


def tensorboard_available() -> str | None:
    """None when torch's SummaryWriter can be used, else why not."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except Exception as exc:  # any import problem means "not usable here"
        return f"{type(exc).__name__}: {exc}"
    return None


def _scalar_tag(key: str) -> str | None:
    if key == "epoch":
        return None
    for prefix in ("lr_", "val_", "train_", "test_"):
        if key.startswith(prefix):
            return f"{prefix[:-1]}/{key[len(prefix):]}"
    return f"train/{key}"      # the method's own stats (losses, keep fractions, ...): epoch means


class TensorBoardObserver(Observer):
    """Per step: every stat the method returns (step/<key>) and images/s (step/images_per_s, over the
    last `flush_every` steps); per epoch (x axis: epoch): every numeric key of the epoch's row
    (train/..., lr/<group>, val/<metric>); after training: test/<metric>.

    Step values stay on their device and are read in one transfer every `flush_every` steps. The
    global step is epoch * steps_per_epoch + step; steps_per_epoch is learnt at the end of the first
    epoch seen (a run resumed after epoch 0 writes its first epoch's steps when that epoch ends)."""

    def __init__(self, log_dir, empty_class: str = "exclude", flush_every: int = 50, ap: str = "sklearn"):
        from torch.utils.tensorboard import SummaryWriter
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.empty_class, self.flush_every = empty_class, max(int(flush_every), 1)
        self.ap = ap     # --ap: test/mAP is the number final.json reports
        self.pending: list[tuple] = []
        self.steps_per_epoch: int | None = None
        self.last_step: dict[int, int] = {}
        self.window_images, self.window_start = 0, None

    def on_step(self, epoch: int, step: int, stats: dict, images: int) -> None:
        now = time.perf_counter()
        if self.window_start is None:      # the rate counts the steps after the first one seen
            self.window_start = now
        else:
            self.window_images += int(images)
        keys = tuple(stats)
        values = None
        if keys:
            tensors = [torch.as_tensor(v).detach().float().reshape(()) for v in stats.values()]
            device = tensors[0].device
            values = torch.stack([t.to(device, non_blocking=True) for t in tensors])
        self.pending.append((epoch, step, keys, values, now))
        self.last_step[epoch] = max(step, self.last_step.get(epoch, -1))
        if len(self.pending) >= self.flush_every:
            self._flush()

    def _global_step(self, epoch: int, step: int) -> int | None:
        if epoch == 0:
            return step
        return None if self.steps_per_epoch is None else epoch * self.steps_per_epoch + step

    def _flush(self, force: bool = False) -> None:
        if not self.pending:
            return
        if force and self.steps_per_epoch is None:
            self.steps_per_epoch = max(self.last_step.values()) + 1
        ready = [p for p in self.pending if self._global_step(p[0], p[1]) is not None]
        if not ready:
            return
        self.pending = [p for p in self.pending if self._global_step(p[0], p[1]) is None]
        with_values = [p for p in ready if p[3] is not None]
        read = torch.stack([p[3] for p in with_values]).cpu().tolist() if with_values else []
        for (epoch, step, keys, _, _), row in zip(with_values, read):
            global_step = self._global_step(epoch, step)
            for key, value in zip(keys, row):
                self.writer.add_scalar(f"step/{key}", value, global_step)
        epoch, step, _, _, stamp = ready[-1]
        elapsed = stamp - self.window_start
        if elapsed > 0:
            self.writer.add_scalar("step/images_per_s", self.window_images / elapsed, self._global_step(epoch, step))
        self.window_images, self.window_start = 0, stamp

    def on_epoch(self, epoch: int, row: dict) -> None:
        if self.steps_per_epoch is None and epoch in self.last_step:
            self.steps_per_epoch = self.last_step[epoch] + 1
        self._flush()
        for key, value in row.items():
            tag = _scalar_tag(key)
            if tag is not None and isinstance(value, (int, float, np.integer, np.floating)) \
                    and not isinstance(value, bool):
                self.writer.add_scalar(tag, float(value), epoch + 1)
        self.writer.flush()

    def on_scores(self, split: str, epoch: int, scores, targets) -> None:
        if split != "test":
            return
        metrics = multilabel_metrics(scores, targets, empty_class=self.empty_class, ap=self.ap)
        for key, value in metrics.items():
            self.writer.add_scalar(f"test/{key}", float(value), epoch + 1)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is None:
            return
        self._flush(force=True)
        self.writer.close()
        self.writer = None
