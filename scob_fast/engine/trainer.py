"""The training loop: data, method, optimiser, per-epoch evaluation, logs and checkpoints."""
from __future__ import annotations

import csv
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from scob_fast.data import build_dataset, build_loader, load_observed, observe_labels, save_observed
from scob_fast.engine import checkpoint
from scob_fast.engine.amp import AmpPolicy
from scob_fast.engine.feature_cache import CachedFeatureLoader, FeatureCache
from scob_fast.engine.metrics import multilabel_metrics
from scob_fast.engine.progress import Progress
from scob_fast.methods import method_class
from scob_fast.methods.base import MethodContext
from scob_fast.models.backbone import build_backbone

log = logging.getLogger("scob_fast.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


@torch.no_grad()
def evaluate(method, loader, device, empty_class: str = "exclude") -> dict:
    method.eval()
    scores, targets = [], []
    for batch in loader:
        batch = _to_device(batch, device)
        with method.ctx.amp.autocast():
            logits = method.predict_batch(batch)
        scores.append(torch.sigmoid(logits.float()).cpu())
        targets.append(batch["labels"].cpu())
    method.train()
    metrics = multilabel_metrics(torch.cat(scores).numpy(), torch.cat(targets).numpy(), empty_class=empty_class)
    metrics["skipped_images"] = int(getattr(loader, "skipped", 0))
    return metrics


class RunDirectory:
    """args.yaml, summary.csv (one row per epoch), log.jsonl, last.pth / best.pth, observed labels."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def write_args(self, args) -> None:
        tmp = self.path / "args.yaml.tmp"
        tmp.write_text(yaml.safe_dump(vars(args), sort_keys=True))
        os.replace(tmp, self.path / "args.yaml")

    def append_summary(self, row: dict) -> None:
        path = self.path / "summary.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        with open(self.path / "log.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")


def compile_heads(method) -> int:
    """torch.compile every transformer head of the method in place (Module.compile keeps the
    parameter names, so checkpoints are unchanged); the custom ops have fake kernels for tracing."""
    from scob_fast.models.scob_net import MidHead
    heads = [m for m in method.modules() if isinstance(m, MidHead)]
    for head in heads:
        head.compile(dynamic=False)
    log.info("--compile: %d heads compiled lazily on first use", len(heads))
    return len(heads)


def _no_observed(dataset) -> np.ndarray:
    return np.zeros(dataset.labels.shape, dtype=np.int8)


def _cached_loaders(args, cls, backbone, loader_opts, observed, train_set, val_set, test_set, run_dir):
    if not cls.supports_feature_cache:
        raise SystemExit(f"--cache-features: method {args.method} needs image-space views (e.g. Scob's hard view), "
                         "which cached features cannot give; run it without --cache-features")
    loaders = []
    for split, dataset, flips in (("train", train_set, True), ("val", val_set, False), ("test", test_set, False)):
        key = {"dataset": args.dataset, "root": str(args.data_root), "split": split, "images": len(dataset),
               "backbone": args.backbone, "weights": str(args.backbone_weights), "image_size": args.image_size}
        source = build_loader(dataset, _no_observed(dataset), train=False, hard_view=False, **loader_opts)
        log.info("feature cache: %s split (%d images, flips=%s)", split, len(dataset), flips)
        cache_root = Path(args.cache_dir) if args.cache_dir else run_dir.path / "feature_cache"
        cache = FeatureCache.build(cache_root / split, backbone, source, len(dataset), flips, key)
        loaders.append(CachedFeatureLoader(cache, dataset.labels, observed if split == "train" else None,
                                           args.batch_size, train=split == "train", seed=args.seed))
    return loaders


def run(args) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seed_everything(args.seed)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run_dir = RunDirectory(args.out)
    resume_state = checkpoint.load(args.resume) if args.resume else None

    opts = {}
    if args.dataset == "demo":
        opts = {"train_images": args.demo_images, "val_images": max(args.demo_images * 3 // 10, 1)}
    train_set = build_dataset(args.dataset, args.data_root, "train", **opts)
    val_set = build_dataset(args.dataset, args.data_root, "val", **opts)
    test_set = build_dataset(args.dataset, args.data_root, "test", **opts)
    if args.resume and (Path(args.resume).parent / "observed_labels.npz").exists():
        observed = load_observed(Path(args.resume).parent)
    else:
        observed = observe_labels(train_set.labels, args.labels, seed=args.label_seed)
    if observed.shape != train_set.labels.shape:
        raise ValueError(f"observed labels {observed.shape} do not match the training split {train_set.labels.shape}")
    save_observed(run_dir.path, observed, regime=args.labels, seed=args.label_seed, dataset=args.dataset,
                  class_names=list(train_set.class_names))
    run_dir.write_args(args)

    backbone = build_backbone(args.backbone, args.backbone_weights).to(device).use_channels_last()
    amp = AmpPolicy(device, args.amp, args.amp_cuda_dtype)
    cls = method_class(args.method)
    ctx = MethodContext(backbone=backbone, num_classes=len(train_set.class_names), num_samples=len(train_set),
                        observed=torch.from_numpy(observed), args=args, device=device, amp=amp,
                        image_size=args.image_size)
    method = cls(ctx).to(device)
    method.move_state_to(device)
    if args.compile:
        compile_heads(method)

    spec = backbone.spec
    loader_opts = dict(batch_size=args.batch_size, image_size=args.image_size, mean=spec.mean, std=spec.std,
                       loader=args.loader, workers=args.workers, seed=args.seed,
                       max_bad_fraction=args.max_bad_fraction)
    if args.cache_features:
        train_loader, val_loader, test_loader = _cached_loaders(args, cls, backbone, loader_opts, observed,
                                                                train_set, val_set, test_set, run_dir)
    else:
        train_loader = build_loader(train_set, observed, train=True, hard_view=cls.needs_hard_view, **loader_opts)
        val_loader = build_loader(val_set, _no_observed(val_set), train=False, hard_view=False, **loader_opts)
        test_loader = build_loader(test_set, _no_observed(test_set), train=False, hard_view=False, **loader_opts)

    optimizer = torch.optim.Adam(method.param_groups())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=0.1)
    start_epoch, best_map, best_epoch = 0, -1.0, -1
    if resume_state is not None:
        method.load_checkpoint_state(resume_state["model"])
        method.load_extra_state(resume_state["extra"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        amp.load_state_dict(resume_state["amp"])
        checkpoint.set_rng_state(resume_state["rng"])
        start_epoch = resume_state["epoch"] + 1
        best_map, best_epoch = resume_state["best_map"], resume_state["best_epoch"]
        log.info("resumed from %s at epoch %d", args.resume, start_epoch)

    if args.eval_only:
        result = {"val": evaluate(method, val_loader, device, args.map_empty_class),
                  "test": evaluate(method, test_loader, device, args.map_empty_class)}
        print(json.dumps(result, indent=2))
        return result

    log.info("train %d / val %d / test %d images, %d classes, labels=%s, method=%s (%s), backbone=%s, device=%s",
             len(train_set), len(val_set), len(test_set), len(train_set.class_names), args.labels, args.method,
             getattr(args, "engine", "-"), args.backbone, device)
    for epoch in range(start_epoch, args.epochs):
        train_loader.set_epoch(epoch)
        method.train()
        method.start_epoch(epoch)
        steps = len(train_loader) if args.max_steps is None else min(args.max_steps, len(train_loader))
        progress = Progress(steps, f"epoch {epoch + 1}/{args.epochs}", enabled=not args.quiet)
        sums: dict[str, float] = {}
        start = time.perf_counter()
        for step, batch in enumerate(train_loader):
            if step >= steps:
                break
            batch = _to_device(batch, device)
            stats = method.train_step(batch, optimizer)
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + value.detach()
            progress.update(step, batch["index"].shape[0], stats)
        images_per_s = progress.close()
        train_time = time.perf_counter() - start
        scheduler.step()
        metrics = evaluate(method, val_loader, device, args.map_empty_class)
        row = {"epoch": epoch + 1, **{k: float(v) / max(steps, 1) for k, v in sums.items()},
               "train_images_per_s": round(images_per_s, 2), "train_time_s": round(train_time, 1),
               "train_skipped_images": int(getattr(train_loader, "skipped", 0)),
               **{f"val_{k}": v for k, v in metrics.items()}}
        run_dir.append_summary(row)
        improved = metrics["mAP"] > best_map
        if improved:
            best_map, best_epoch = metrics["mAP"], epoch
        state = {"model": method.state_dict_for_checkpoint(), "extra": method.extra_state(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "amp": amp.state_dict(),
                 "rng": checkpoint.rng_state(), "epoch": epoch, "best_map": best_map, "best_epoch": best_epoch,
                 "args": {k: v for k, v in vars(args).items()}}
        checkpoint.atomic_save(state, run_dir.path / "last.pth")
        if improved:
            checkpoint.atomic_save(state, run_dir.path / "best.pth")
        log.info("epoch %d: val mAP %.4f (best %.4f @ %d), CF1 %.4f, OF1 %.4f, %.1f img/s, %.0f s",
                 epoch + 1, metrics["mAP"], best_map, best_epoch + 1, metrics["CF1"], metrics["OF1"],
                 images_per_s, train_time)

    final = {"best_epoch": best_epoch + 1, "best_val_mAP": best_map}
    best_path = run_dir.path / "best.pth"
    if best_path.exists():
        method.load_checkpoint_state(checkpoint.load(best_path)["model"])
        final["test"] = evaluate(method, test_loader, device, args.map_empty_class)
        log.info("test (best val epoch %d): mAP %.4f", best_epoch + 1, final["test"]["mAP"])
    tmp = run_dir.path / "final.json.tmp"
    tmp.write_text(json.dumps(final, indent=2))
    os.replace(tmp, run_dir.path / "final.json")
    return final
