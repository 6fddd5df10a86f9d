"""The generic training loop: `fit` runs `train_one_epoch` and `evaluate` per epoch, logs a row and
saves last/best checkpoints (and, with `checkpoint_every`, mid-epoch ones). It knows a method only
through the hooks of scob_fast.methods.base (train_step, predict_batch, start_epoch,
continue_epoch, state_dict_for_checkpoint, ...), never by name.

A checkpoint's `position` is where training continues: (epoch, step) = the next step to run. A
SIGTERM or SIGINT lets the current step finish, writes last.pth at that position and stops with
`TrainingInterrupted`; `resume` continues from it at the exact batch.

Under torchrun (`dist`, scob_fast.engine.distributed) every rank runs this loop on its shard of
each batch: the stop decision is taken over all ranks (they stop at the same step), the epoch's
log sums are averaged and its images summed over the ranks, evaluation gathers every rank's
scores, and only rank 0's run directory writes (last/best.pth, with every rank's RNG state and
running sums, so that a resume with the same world size continues exactly).
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from scob_fast.engine import checkpoint
from scob_fast.engine.amp import AmpPolicy, NonFiniteTraining
from scob_fast.engine.distributed import SINGLE, DistContext
from scob_fast.engine.metrics import multilabel_metrics
from scob_fast.engine.progress import Progress
from scob_fast.engine.run_directory import RunDirectory

log = logging.getLogger("scob_fast.train")


class TrainingInterrupted(RuntimeError):
    """A signal stopped training after a checkpoint was written."""


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


class Observer:
    """What a logger, plotter or progress display sees of a run (every hook optional)."""

    def on_step(self, epoch: int, step: int, stats: dict, images: int) -> None:
        """After each training step; `stats` are device tensors (reading them syncs)."""

    def on_epoch(self, epoch: int, row: dict) -> None:
        """After an epoch's row (losses, images/s, validation metrics) was written."""

    def on_scores(self, split: str, epoch: int, scores, targets) -> None:
        """Sigmoid scores [N, C] and full labels [N, C] (numpy) of an evaluated split."""

    def close(self) -> None:
        """At the end of the run (also after an error)."""


@torch.no_grad()
def predict_scores(method, loader, device, amp: AmpPolicy, dist: DistContext = SINGLE) -> tuple:
    """(sigmoid scores [N, C], labels [N, C]) as numpy arrays, in the loader's order; with several
    ranks, every rank's shard gathered, padding dropped, in dataset-index order (an eval loader's)."""
    method.eval()
    scores, targets, indices = [], [], []
    for batch in loader:
        batch = to_device(batch, device)
        with amp.autocast():
            logits = method.predict_batch(batch)
        scores.append(torch.sigmoid(logits.float()).cpu())
        targets.append(batch["labels"].cpu())
        if dist.enabled:
            indices.append(batch["index"].cpu())
    method.train()
    scores, targets = torch.cat(scores), torch.cat(targets)
    if dist.enabled:
        index = dist.gather(torch.cat(indices)).numpy()
        first = torch.from_numpy(np.unique(index, return_index=True)[1])   # the padding repeats an image
        scores, targets = dist.gather(scores)[first], dist.gather(targets)[first]
    return scores.numpy(), targets.numpy()


def evaluate(method, loader, device, amp: AmpPolicy, empty_class: str = "exclude", *, split: str = "val",
             epoch: int = -1, observers=(), ap: str = "sklearn", dist: DistContext = SINGLE) -> dict:
    scores, targets = predict_scores(method, loader, device, amp, dist)
    for observer in observers:
        observer.on_scores(split, epoch, scores, targets)
    metrics = multilabel_metrics(scores, targets, empty_class=empty_class, ap=ap)
    metrics["skipped_images"] = int(dist.sum(torch.tensor(int(getattr(loader, "skipped", 0)))))
    return metrics


@dataclass
class FitProgress:
    """Where a run stands: the next (epoch, step) to train, the best validation epoch so far, and the
    running sums of the epoch in progress (so that its log row is the same after a resume)."""
    start_epoch: int = 0
    best_map: float = -1.0
    best_epoch: int = -1
    start_step: int = 0
    epoch_sums: dict = field(default_factory=dict)
    epoch_time_s: float = 0.0
    epoch_images: int = 0


class _StopSignal:
    """SIGTERM / SIGINT set a flag that the loop reads between steps (main thread only)."""

    def __init__(self):
        self.received: int | None = None

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum, _frame):
            if self.received is not None:       # a second signal: stop at once
                signal.signal(signum, previous[signum])
                raise KeyboardInterrupt
            self.received = signum
        for s in previous:
            signal.signal(s, handler)
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _checkpoint_state(method, optimizer, scheduler, amp, state: FitProgress, epoch: int, step: int,
                      args: dict, world_size: int = 1) -> dict:
    return {"model": method.state_dict_for_checkpoint(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "amp": amp.state_dict(), "rng": checkpoint.rng_state(),
            "epoch": epoch - 1, "position": {"epoch": epoch, "step": step},   # "epoch": the last one completed
            "best_map": state.best_map, "best_epoch": state.best_epoch,
            "epoch_sums": dict(state.epoch_sums), "epoch_time_s": state.epoch_time_s,
            "epoch_images": state.epoch_images, "args": dict(args), "world_size": world_size}


def _rank_state(state: FitProgress) -> dict:
    """What differs between ranks and a resume must restore per rank: RNG states (dropout) and the
    running sums of the epoch in progress."""
    return {"rng": checkpoint.rng_state(), "epoch_sums": dict(state.epoch_sums), "epoch_images": state.epoch_images}


def _epoch_totals(sums: dict, images: int, skipped: int, dist: DistContext) -> tuple[dict, int, int]:
    """The epoch's sums averaged over the ranks (each rank's mean loss is the global batch's, or its
    own share), its images and skipped images summed; one process: as they are."""
    if not dist.enabled:
        return {k: float(v) for k, v in sums.items()}, images, skipped
    keys = sorted(sums)
    total = dist.sum(torch.tensor([float(sums[k]) for k in keys] + [images, skipped], dtype=torch.float64))
    values = total.tolist()
    return ({k: v / dist.world for k, v in zip(keys, values)}, int(round(values[-2])), int(round(values[-1])))


def train_one_epoch(method, loader, optimizer, device, *, epoch: int, epochs: int, max_steps: int | None = None,
                    quiet: bool = False, amp: AmpPolicy | None = None, max_nonfinite_steps: int = 5,
                    state: FitProgress | None = None, after_step=None, observers=(),
                    dist: DistContext = SINGLE) -> dict:
    """One pass over `loader` (at most `max_steps` steps) -> mean stats, images/s and time.

    Starts at `state.start_step` (a resumed epoch: the loader skips the batches already trained,
    the method continues instead of starting the epoch). Steps that `amp` skipped for a non-finite
    loss or gradient are counted; `max_nonfinite_steps` of them in a row stop the run
    (NonFiniteTraining) before anything is saved. `after_step(done, snapshot)` runs after every step
    (mid-epoch checkpoints, stop requests) and may raise to stop; it calls `snapshot()` before saving
    so that the running sums (read back from the device only then) go into the checkpoint."""
    state = state if state is not None else FitProgress(start_epoch=epoch)
    first = state.start_step
    steps = len(loader) if max_steps is None else min(max_steps, len(loader))
    if first:
        loader.set_epoch(epoch, start_batch=first)
        method.continue_epoch(epoch, first)
    else:
        loader.set_epoch(epoch)
        method.start_epoch(epoch)
        state.epoch_sums, state.epoch_time_s, state.epoch_images = {}, 0.0, 0
    method.train()
    skipped_before = amp.skipped_steps if amp is not None else 0
    progress = Progress(steps - first, f"epoch {epoch + 1}/{epochs}", enabled=not quiet)
    sums = {k: torch.tensor(v) for k, v in state.epoch_sums.items()}
    start = time.perf_counter()
    elapsed_before = state.epoch_time_s
    step = first
    for step, batch in enumerate(loader, start=first):
        if step >= steps:
            break
        batch = to_device(batch, device)
        stats = method.train_step(batch, optimizer)
        dist.broadcast_batchnorm_statistics(method)      # rank 0's running statistics everywhere (DDP's rule)
        if amp is not None and amp.consecutive_skipped >= max_nonfinite_steps:
            progress.close()
            raise NonFiniteTraining(
                f"{amp.consecutive_skipped} consecutive steps had a non-finite loss or gradient (epoch {epoch + 1}, "
                f"step {step + 1}); stopped without saving, earlier checkpoints are kept. Lower the learning "
                f"rates, add --clip-grad-norm, or try without --amp")
        for key, value in stats.items():
            sums[key] = sums.get(key, 0.0) + value.detach()
        state.epoch_images += int(batch["index"].shape[0])
        progress.update(step - first, batch["index"].shape[0], stats)
        for observer in observers:
            observer.on_step(epoch, step, stats, int(batch["index"].shape[0]))
        if after_step is not None:
            def snapshot() -> None:
                state.epoch_sums = {k: float(v) for k, v in sums.items()}
                state.epoch_time_s = elapsed_before + time.perf_counter() - start
            # A batch whose images all failed is not yielded: the loader's own position is the truth.
            after_step(int(getattr(loader, "next_batch", step + 1)), snapshot)
    progress.close()
    train_time = elapsed_before + time.perf_counter() - start
    state.start_step = 0
    totals, images, skipped = _epoch_totals(sums, state.epoch_images, int(getattr(loader, "skipped", 0)), dist)
    return {**{k: v / max(steps, 1) for k, v in totals.items()},
            "train_images_per_s": round(images / max(train_time, 1e-9), 2),
            "train_time_s": round(train_time, 1),
            "train_skipped_images": skipped,
            "train_nonfinite_steps": (amp.skipped_steps - skipped_before) if amp is not None else 0}


def fit(method, optimizer, scheduler, train_loader, val_loader, run_dir: RunDirectory, *, device, amp: AmpPolicy,
        epochs: int, state: FitProgress | None = None, max_steps: int | None = None, quiet: bool = False,
        empty_class: str = "exclude", checkpoint_args: dict | None = None, max_nonfinite_steps: int = 5,
        checkpoint_every: int | None = None, observers=(), ap: str = "sklearn", select_loader=None,
        select_split: str = "val", dist: DistContext = SINGLE) -> FitProgress:
    """Train from `state` to `epochs`, evaluating on `val_loader` after every epoch; best.pth holds the
    epoch with the highest (finite) selection mAP, last.pth the latest position. The selection mAP
    is the validation mAP, or with `select_loader` that loader's (logged as `<select_split>_*`
    columns): e.g. the test split, for the test-best-epoch reporting of some public codes."""
    state = state or FitProgress()
    args = checkpoint_args or {}
    stop = _StopSignal()

    def save(epoch: int, step: int, improved: bool = False) -> None:
        ranks = dist.gather_objects(_rank_state(state)) if dist.enabled else None   # every rank takes part
        if not run_dir.writes:
            return
        saved = _checkpoint_state(method, optimizer, scheduler, amp, state, epoch, step, args, dist.world)
        if ranks is not None:
            saved["ranks"] = ranks
        checkpoint.save_last_and_best(saved, run_dir.path, improved)

    def stop_signal() -> int:
        """The signal that stops the run (0: none); every rank stops at the same step."""
        return dist.max_int(stop.received or 0)

    with stop.installed():
        for epoch in range(state.start_epoch, epochs):
            def after_step(done: int, snapshot, epoch=epoch) -> None:
                due = checkpoint_every is not None and done % checkpoint_every == 0
                received = stop_signal()
                if received or due:
                    snapshot()
                    save(epoch, done)
                if received:
                    name = signal.Signals(received).name
                    raise TrainingInterrupted(
                        f"{name}: stopped after step {done} of epoch {epoch + 1}; checkpoint written to "
                        f"{run_dir.path / 'last.pth'} (continue with --resume {run_dir.path / 'last.pth'})")

            row = {"epoch": epoch + 1, **train_one_epoch(
                method, train_loader, optimizer, device, epoch=epoch, epochs=epochs, max_steps=max_steps,
                quiet=quiet, amp=amp, max_nonfinite_steps=max_nonfinite_steps, state=state, after_step=after_step,
                observers=observers, dist=dist)}
            row.update({f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)})
            scheduler.step()
            metrics = evaluate(method, val_loader, device, amp, empty_class, split="val", epoch=epoch,
                               observers=observers, ap=ap, dist=dist)
            row.update({f"val_{k}": v for k, v in metrics.items()})
            selected = metrics
            if select_loader is not None:
                # Not shown to the observers: their test-split reports are of the final weights.
                selected = evaluate(method, select_loader, device, amp, empty_class, split=select_split,
                                    epoch=epoch, ap=ap, dist=dist)
                row.update({f"{select_split}_{k}": v for k, v in selected.items()})
            run_dir.append_summary(row)
            for observer in observers:
                observer.on_epoch(epoch, row)
            improved = math.isfinite(selected["mAP"]) and selected["mAP"] > state.best_map
            if improved:
                state.best_map, state.best_epoch = selected["mAP"], epoch
            state.start_epoch = epoch + 1
            state.epoch_sums, state.epoch_time_s, state.epoch_images = {}, 0.0, 0
            save(epoch + 1, 0, improved)
            log.info("epoch %d: val mAP %.4f (best %s %.4f @ %d), CF1 %.4f, OF1 %.4f, %.1f img/s, %.0f s",
                     epoch + 1, metrics["mAP"], select_split, state.best_map, state.best_epoch + 1, metrics["CF1"],
                     metrics["OF1"], row["train_images_per_s"], row["train_time_s"])
            received = stop_signal()
            if received:
                raise TrainingInterrupted(f"{signal.Signals(received).name}: stopped after epoch {epoch + 1}; "
                                          f"continue with --resume {run_dir.path / 'last.pth'}")
    return state


def resume(method, optimizer, scheduler, amp: AmpPolicy, saved: dict, dist: DistContext = SINGLE) -> FitProgress:
    """Load everything `fit` saved; the run continues exactly where it stopped (each rank with its
    own RNG state and running sums when the checkpoint holds them)."""
    method.load_checkpoint_state(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    amp.load_state_dict(saved["amp"])
    mine = saved["ranks"][dist.rank] if dist.enabled and "ranks" in saved else saved
    checkpoint.set_rng_state(mine["rng"])
    position = saved.get("position", {"epoch": saved["epoch"] + 1, "step": 0})
    return FitProgress(start_epoch=position["epoch"], best_map=saved["best_map"], best_epoch=saved["best_epoch"],
                       start_step=position["step"], epoch_sums=dict(mine.get("epoch_sums", {})),
                       epoch_time_s=float(saved.get("epoch_time_s", 0.0)),
                       epoch_images=int(mine.get("epoch_images", 0)))
