"""One training run from a TrainConfig: the only module that wires data, backbone, method and loop.

    from scob_fast.config import parse_args
    from scob_fast.training import run
    final = run(parse_args(["--dataset", "demo"]))

Under torchrun (scob_fast.engine.distributed) every rank runs this same function: rank 0 makes what
the others then find (the demo data, the run directory, the feature cache: `main_first`) and alone
writes files; --batch-size is the global batch, split over the ranks.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch

from scob_fast import _ext
from scob_fast.cli_options import flat_options
from scob_fast.config import TrainConfig
from scob_fast.data import build_loader, load_observed, observe_labels, save_observed
from scob_fast.data.preflight import check_images, describe
from scob_fast.data.protocols import Draw, load_splits, protocol_splits, save_splits, splits_of, splits_path
from scob_fast.data.loaders.cached import (CachedFeatureLoader, CleanViewFeatures, FeatureCache, cached, disk_shortfall,
                                          feature_bytes_per_image)
from scob_fast.data.registry import dataset_spec
from scob_fast.engine import checkpoint, distributed
from scob_fast.engine.amp import AmpPolicy
from scob_fast.engine.distributed import SINGLE, DataParallelAmp, DistContext
from scob_fast.engine.run_directory import RunDirectory, write_text_atomic
from scob_fast.engine.trainer import FitProgress, evaluate, fit, resume
from scob_fast.methods import method_class
from scob_fast.methods.base import MethodContext
from scob_fast.models.backbone import Backbone, build_backbone
from scob_fast.reporting import build_diagnostics, build_observers

log = logging.getLogger("scob_fast.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _no_observed(dataset) -> np.ndarray:
    return np.zeros(dataset.labels.shape, dtype=np.int8)


def build_splits(config: TrainConfig):
    """[train, val, test] of the dataset under --protocol (scob_fast.data.protocols); the train split
    carries its ProtocolSplits (the whole official list the labels are drawn on)."""
    d = config.data
    options = dataset_spec(d.dataset).reader_options(config.flat())
    splits = protocol_splits(d.protocol, d.dataset, d.data_root, **options)
    log.info("protocol %s: %s", d.protocol, splits.protocol.description)
    return [splits.train, splits.val, splits.test]


class BadImages(ValueError):
    """The pre-flight check found images that cannot be trained on (policy: stop)."""


def check_splits(config: TrainConfig, splits: list, *, full_decode: bool = False) -> tuple[list, int]:
    """Every split's unreadable, truncated, oversized or missing images, found before any heavy work
    and reported all at once: --bad-images stop raises with the report, skip drops them from their
    split (the other images keep the labels the protocol drew for them). -> (splits, bad count)."""
    d = config.data
    checked, reports, total = [], [], 0
    for name, dataset in zip(("train", "val", "test"), splits):
        bad = check_images(dataset, full_decode=full_decode, max_pixels=d.max_image_pixels)
        total += len(bad)
        if bad:
            reports.append(f"{name} split: " + describe(bad, dataset))
            if d.bad_images == "skip" and not d.check_data:
                dataset = dataset.without(b.path for b in bad)
                log.warning("--bad-images skip: %d image(s) dropped from the %s split (%d left)", len(bad), name,
                            len(dataset))
        checked.append(dataset)
    if reports:
        report = "\n".join(reports)
        if d.check_data:
            print(report)
        elif d.bad_images == "stop":
            log.error("%s", report)
            raise BadImages(f"{total} image(s) cannot be read (listed above; first: {report.splitlines()[1]}); "
                            "fix them, or pass --bad-images skip to train without them")
        else:
            log.warning("%s", report)
    return checked, total


def observed_labels(config: TrainConfig, train_set, run_dir: RunDirectory, save: bool = True,
                    val_set=None, test_set=None) -> np.ndarray:
    """The run's observed labels: the resumed run's file when there is one, else a fresh draw by the
    protocol (on the whole official training list, then the train rows). Writes observed_labels.npz
    and splits.json (every split's image files in row order, the protocol and the draw)."""
    d, resume_path = config.data, config.run.resume
    splits = splits_of(train_set)
    resumed = Path(resume_path).parent if resume_path else None
    if resumed is not None and splits is not None and splits_path(resumed).exists():
        if load_splits(resumed)["train"] != splits.manifest(train=train_set)["train"]:
            raise ValueError(f"--resume {resume_path}: its {splits_path(resumed).name} lists other training images "
                             f"than --protocol {d.protocol} gives now; resume with the run's own data and protocol")
    if resumed is not None and (resumed / "observed_labels.npz").exists():
        observed, meta = load_observed(resumed, with_meta=True)
        draw = Draw(d.labels, meta.get("seed"), meta.get("seed_source", "protocol"),
                    meta.get("procedure", f"reused from {resumed / 'observed_labels.npz'}"))
    elif splits is not None:
        observed, draw = splits.observe(d.labels, d.label_seed, train=train_set)
        if d.label_seed is not None:
            log.info("--label-seed %d replaces the %s protocol's own seed of the %s draw", d.label_seed,
                     d.protocol, d.labels)
    else:
        observed = observe_labels(train_set.labels, d.labels, seed=d.label_seed)
        draw = Draw(d.labels, d.label_seed, "protocol" if d.label_seed is None else "--label-seed",
                    "scob_fast.data.labels.observe_labels on the training split")
    if observed.shape != train_set.labels.shape:
        raise ValueError(f"observed labels {observed.shape} do not match the training split {train_set.labels.shape}")
    if save:
        save_observed(run_dir.path, observed, regime=d.labels, seed=draw.seed, seed_source=draw.seed_source,
                      procedure=draw.procedure, protocol=d.protocol, dataset=d.dataset,
                      class_names=list(train_set.class_names))
        if splits is not None:
            save_splits(run_dir.path, splits, draw, train=train_set, val=val_set, test=test_set)
    return observed


def build_run_backbone(config: TrainConfig, device) -> Backbone:
    """The backbone a run with this config trains (and a saved run is rebuilt with): its stages,
    BatchNorm mode, and BN left unfolded when the method runs it on batch statistics."""
    m = config.model
    fold = not method_class(m.method).needs_unfolded_batchnorm(config.method)
    return build_backbone(m.backbone, m.backbone_weights, fold_batchnorm=fold, train_from=m.train_backbone,
                          bn_mode=m.bn_mode).to(device).use_channels_last()


def build_method(config: TrainConfig, backbone, num_classes: int, observed: np.ndarray, device, amp,
                 dist: DistContext = SINGLE):
    cls = method_class(config.model.method)
    o = config.optim
    ctx = MethodContext(backbone=backbone, num_classes=num_classes, num_samples=observed.shape[0],
                        observed=torch.from_numpy(observed), device=device, amp=amp,
                        image_size=config.data.image_size, config=config.method, heads=config.heads,
                        lr=config.learning_rates, expected_positives=o.expected_positives, seed=o.seed,
                        epochs=o.epochs, batch_size=o.batch_size,
                        hparam_family=dataset_spec(config.data.dataset).hparam_family, dist=dist)
    return cls(ctx).to(device)


def build_loaders(config: TrainConfig, method, backbone, splits, observed, run_dir: RunDirectory,
                  dist: DistContext = SINGLE):
    d, o = config.data, config.optim
    spec = backbone.spec
    options = dict(batch_size=o.batch_size, image_size=d.image_size, mean=spec.mean, std=spec.std,
                   loader=d.loader, workers=d.workers, seed=o.seed, max_bad_fraction=d.max_bad_fraction,
                   max_pixels=d.max_image_pixels, shard=dist.shard)
    if d.cache_features:
        loaders = _cached_loaders(config, method, backbone, options, observed, splits, run_dir, dist)
        if loaders is not None:
            return loaders
    train_set, val_set, test_set = splits
    return (build_loader(train_set, observed, train=True, hard_view=method.needs_hard_view, **options),
            build_loader(val_set, _no_observed(val_set), train=False, hard_view=False, **options),
            build_loader(test_set, _no_observed(test_set), train=False, hard_view=False, **options))


def _cached_loaders(config: TrainConfig, method, backbone, options, observed, splits, run_dir: RunDirectory,
                    dist: DistContext = SINGLE):
    d, m = config.data, config.model
    problem = method.feature_cache_problem()
    if problem is not None:
        raise SystemExit(f"--cache-features: method {m.method} cannot train from cached features: {problem}; "
                         "run it without --cache-features")
    cache_root = Path(d.cache_dir) if d.cache_dir else run_dir.path / "feature_cache"
    keys = []
    for split, dataset in zip(("train", "val", "test"), splits):
        # Which images, in which order: a shared --cache-dir must never serve another split's features.
        digest = hashlib.sha256("\n".join(dataset.image_paths).encode()).hexdigest()[:16]
        keys.append({"dataset": d.dataset, "root": str(d.data_root), "split": split, "images": len(dataset),
                     "protocol": d.protocol, "paths_sha256": digest,
                     "backbone": m.backbone, "weights": str(m.backbone_weights), "image_size": d.image_size})
    # The fallback when the cache would not fit: train from the images, as without the flag.
    missing = [(len(dataset), 2 if split == "train" else 1)
               for split, dataset, key in zip(("train", "val", "test"), splits, keys) if not cached(cache_root / split, key)]
    if missing:
        per_view = feature_bytes_per_image(backbone, d.image_size, 1)       # one probe forward
        needed = sum(n * views * per_view for n, views in missing)
        shortfall = disk_shortfall(cache_root, needed)
        if shortfall is not None:
            log.warning("--cache-features: %s; training without the cache (the backbone runs on every batch)", shortfall)
            return None
    loaders = []
    for split, dataset, flips, key in zip(("train", "val", "test"), splits, (True, False, False), keys):
        # The cache holds every image: rank 0 builds it from an unsharded pass, the others then open it.
        source = build_loader(dataset, _no_observed(dataset), train=False, hard_view=False,
                              **{**options, "shard": (0, 1)})
        log.info("feature cache: %s split (%d images, flips=%s)", split, len(dataset), flips)
        with dist.main_first():
            cache = FeatureCache.build(cache_root / split, backbone, source, len(dataset), flips, key)
        if split == "train" and method.feature_cache_keeps_images:
            # The hard view is made from the images; the cache spares the clean view's backbone pass.
            images = build_loader(dataset, observed, train=True, hard_view=method.needs_hard_view, **options)
            loaders.append(CleanViewFeatures(images, cache))
            continue
        loaders.append(CachedFeatureLoader(cache, dataset.labels, observed if split == "train" else None,
                                           config.optim.batch_size, train=split == "train", seed=config.optim.seed,
                                           shard=dist.shard))
    return loaders


# Options that may change when a run is resumed or evaluated: where and how it runs, not what it trains.
RESUMABLE_CHANGES = frozenset({"out", "overwrite", "resume", "eval_only", "quiet", "debug", "max_steps", "epochs",
                               "workers", "loader", "device", "compile", "cache_dir", "data_root",
                               "max_bad_fraction", "max_nonfinite_steps", "checkpoint_every", "check_data"})


def _model_keys(config: TrainConfig) -> set[str]:
    """What shapes the network: evaluation needs only these to match."""
    keys = set(flat_options(config.model)) - {"dropout", "init_from"}
    if config.method is not None:
        keys |= set(flat_options(config.method))
    return keys | {"dataset", "image_size"}


def check_resume_arguments(saved: dict, config: TrainConfig, path: str) -> None:
    """A checkpoint continues only the run it came from: list every flag that differs (for
    --eval-only, every flag that shapes the network)."""
    before, now = saved.get("args") or {}, config.flat()
    keys = before.keys() & now.keys()
    keys = keys & _model_keys(config) if config.run.eval_only else keys - RESUMABLE_CHANGES - set(
        flat_options(config.report))                 # what a run reports never changes what it trains
    differing = sorted(k for k in keys if before[k] != now[k])
    if differing:
        listed = ", ".join(f"--{k.replace('_', '-')} {before[k]!r} -> {now[k]!r}" for k in differing)
        raise ValueError(f"--resume {path}: the checkpoint was trained with other options: {listed}; "
                         "pass the run's own flags (see its args.yaml)")


def prepare_run_directory(config: TrainConfig) -> RunDirectory:
    """Refuse to write over another run unless asked; clear it with --overwrite."""
    r = config.run
    out = Path(r.out)
    if not r.eval_only and RunDirectory.holds_run(out):
        resumes_here = r.resume is not None and Path(r.resume).resolve().parent == out.resolve()
        if not (resumes_here or r.overwrite):
            raise ValueError(f"--out {out} already holds a run (args.yaml, checkpoints, logs); continue it with "
                             f"--resume {out / 'last.pth'}, replace it with --overwrite, or choose another --out")
    run_dir = RunDirectory(out)
    if r.overwrite and not r.eval_only and r.resume is None:
        run_dir.clear_run()
    return run_dir


def warn_if_slow_build() -> None:
    """Without scob_fast._C every op runs its pure-PyTorch reference: correct but many times slower;
    built from older sources, it runs kernels that are not the checkout's."""
    reason = _ext.load_error()
    if reason:
        log.warning("WARNING: %s.\nEvery op falls back to its pure-PyTorch reference (masked attention and the "
                    "contrastive loss several times slower; the Scob step up to 6x slower at 256 px).", reason)
    stale = _ext.stale_sources()
    if stale:
        log.warning("WARNING: scob_fast._C is older than %d source file(s) of this checkout (%s); rebuild it: %s",
                    len(stale), ", ".join(stale[:3]) + (", ..." if len(stale) > 3 else ""), _ext.BUILD_HINT)


def run(config: TrainConfig) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    d, m, o, r = config.data, config.model, config.optim, config.run
    if d.check_data:                       # a report, no run: nothing is written
        splits = build_splits(config)
        _, bad = check_splits(config, splits, full_decode=True)
        print(f"--check-data: {bad} bad image(s) among {sum(len(s) for s in splits)} (train/val/test)")
        return {"check_data": {"bad_images": bad}}
    warn_if_slow_build()
    seed_everything(o.seed)
    device = torch.device(o.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if o.amp and device.type == "cpu":
        from scob_fast.env import cpu_bf16
        cpu_bf16()  # a bad SCOB_FAST_CPU_BF16 value stops here, before any data or model work
    dist = distributed.init_from_env(device.type)
    try:
        return _run(config, _rank_device(device, dist), dist)
    finally:
        distributed.shutdown(dist)


def _rank_device(device: torch.device, dist: DistContext) -> torch.device:
    """This rank's device: its own GPU (LOCAL_RANK) under torchrun."""
    if dist.enabled and device.type == "cuda":
        if device.index is not None and device.index != dist.local_rank:
            log.warning("--device %s: under torchrun each rank uses its LOCAL_RANK's GPU (cuda:%d)", device,
                        dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    return device


def check_world(config: TrainConfig, dist: DistContext) -> None:
    """What a world size of N asks of the flags, before any work."""
    if config.optim.batch_size % dist.world:
        raise ValueError(f"--batch-size {config.optim.batch_size} is the global batch and must be a multiple of the "
                         f"{dist.world} processes (torchrun's world size); e.g. --batch-size "
                         f"{dist.world * max(1, config.optim.batch_size // dist.world)}")


def _run(config: TrainConfig, device: torch.device, dist: DistContext) -> dict:
    d, m, o, r = config.data, config.model, config.optim, config.run
    if dist.enabled:
        check_world(config, dist)
        if not dist.is_main:      # one log: rank 0's; warnings and errors still show
            logging.getLogger("scob_fast").setLevel(logging.WARNING)
        r.out = dist.broadcast_object(r.out)    # a default --out carries a time stamp: rank 0's
        log.info("torchrun: %d processes, global batch %d (%d per process)", dist.world, o.batch_size,
                 o.batch_size // dist.world)
    if r.resume == "auto":
        latest = Path(r.out) / "last.pth"
        r.resume = dist.broadcast_object(str(latest) if latest.exists() else None)
        log.info("--resume auto: %s", f"continuing {latest}" if r.resume else f"no {latest} yet, starting")
    saved = checkpoint.load(r.resume) if r.resume else None
    if saved is not None:
        check_resume_arguments(saved, config, r.resume)
        if not r.eval_only:
            distributed.check_world_size(saved, dist, r.resume)
    with dist.main_first():
        run_dir = prepare_run_directory(config) if dist.is_main else RunDirectory(r.out, writes=False)

    with dist.main_first():          # rank 0 generates the demo set (if needed) before the others read it
        splits, _ = check_splits(config, build_splits(config))
    train_set = splits[0]
    observed = observed_labels(config, train_set, run_dir, save=not r.eval_only and dist.is_main,
                               val_set=splits[1], test_set=splits[2])
    if not r.eval_only:
        run_dir.write_args(config.flat())

    backbone = build_run_backbone(config, device)
    if dist.enabled:
        amp = DataParallelAmp(dist, device, o.amp, o.amp_cuda_dtype, clip_grad_norm=o.clip_grad_norm)
    else:
        amp = AmpPolicy(device, o.amp, o.amp_cuda_dtype, clip_grad_norm=o.clip_grad_norm)
    method = build_method(config, backbone, len(train_set.class_names), observed, device, amp, dist)
    if o.compile:
        method.compile()
    train_loader, val_loader, test_loader = build_loaders(config, method, backbone, splits, observed, run_dir,
                                                          dist)

    # The trainable backbone stages (if any) are one more group, so that no method needs code for them.
    optimizer = torch.optim.Adam(method.param_groups() + backbone.param_groups(o.lr_backbone),
                                 weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.lr_step, gamma=0.1)
    if dist.enabled:
        # The model is built alike on every rank; from here on the ranks draw different dropout masks
        # (a resume restores each rank's own RNG state instead).
        torch.manual_seed(distributed.rank_seed(o.seed, dist.rank))
    state = FitProgress()
    if saved is not None:
        state = resume(method, optimizer, scheduler, amp, saved, dist)
        log.info("resumed from %s at epoch %d", r.resume, state.start_epoch)
    elif m.init_from:
        # A warm start (Cole et al.'s linear_init: the end-to-end stage starts from the linear
        # stage's best weights and label estimates, with a fresh optimiser).
        method.load_checkpoint_state(checkpoint.load(m.init_from)["model"], require_backbone=False)
        log.info("--init-from %s: model weights loaded; optimiser and schedule start fresh", m.init_from)
    dist.broadcast_state(method)         # every rank starts from rank 0's model, as under DDP

    if r.eval_only:
        result = {"checkpoint": str(r.resume),
                  "val": evaluate(method, val_loader, device, amp, r.map_empty_class, ap=r.ap, dist=dist),
                  "test": evaluate(method, test_loader, device, amp, r.map_empty_class, ap=r.ap, dist=dist),
                  "modes": {"ap": r.ap, "map_empty_class": r.map_empty_class}}
        if dist.is_main:
            write_text_atomic(run_dir.path / f"eval-{Path(r.resume).stem}.json", json.dumps(result, indent=2))
            print(json.dumps(result, indent=2))
        return result
    run_dir.keep_epochs_up_to(state.start_epoch)

    log.info("train %d / val %d / test %d images, %d classes, labels=%s, method=%s, backbone=%s, device=%s",
             len(train_set), len(splits[1]), len(splits[2]), len(train_set.class_names), d.labels,
             method.describe(), backbone.describe(), device)
    # The other ranks report nothing: their observers would write into rank 0's directory.
    observers = build_observers(config, run_dir, list(train_set.class_names)) if dist.is_main else []
    selected_on = "test" if r.select == "test-best-epoch" else "val"
    # --select test-best-epoch evaluates the test split every epoch, unless the protocol's val split
    # is that very list (scob, sst): then the val metrics are the test metrics already.
    same_list = list(splits[1].image_paths) == list(splits[2].image_paths)
    select_loader = test_loader if selected_on == "test" and not same_list else None
    diagnostics = build_diagnostics(config, run_dir, method, train_set, observed, observers) if dist.is_main else None
    if diagnostics is not None:
        observers.append(diagnostics)
    try:
        state = fit(method, optimizer, scheduler, train_loader, val_loader, run_dir, device=device, amp=amp,
                    epochs=o.epochs, state=state, max_steps=r.max_steps, quiet=r.quiet or not dist.is_main,
                    empty_class=r.map_empty_class, checkpoint_args=config.flat(),
                    max_nonfinite_steps=r.max_nonfinite_steps, checkpoint_every=r.checkpoint_every,
                    observers=observers, ap=r.ap, select_loader=select_loader,
                    select_split="test" if select_loader is not None else "val", dist=dist)
        # Which modes produced the number: the selection rule and the AP definition.
        final = {"best_epoch": state.best_epoch + 1, f"best_{selected_on}_mAP": state.best_map,
                 "modes": {"select": r.select, "selected_on": selected_on, "ap": r.ap,
                           "map_empty_class": r.map_empty_class}}
        best_path = run_dir.path / "best.pth"
        if dist.broadcast_object(best_path.exists()):
            if dist.is_main:               # the file is rank 0's; its weights reach the others by broadcast
                method.load_checkpoint_state(checkpoint.load(best_path)["model"])
            dist.broadcast_state(method)
            final["test"] = evaluate(method, test_loader, device, amp, r.map_empty_class, split="test",
                                     epoch=state.best_epoch, observers=observers, ap=r.ap, dist=dist)
            log.info("test (best %s epoch %d): mAP %.4f", selected_on, state.best_epoch + 1, final["test"]["mAP"])
        run_dir.write_final(final)
    finally:
        for observer in observers:
            observer.close()
    return final
