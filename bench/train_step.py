"""Training images/s of Scob's fast engine vs the reference procedure, same model, batch and data.

Three rows per precision: `reference` (the published procedure with the definitional pure-PyTorch
attention and contrastive ops), `reference+sdpa` (the same procedure with torch's SDPA + boolean
mask as attention, which is what the public code's nn.MultiheadAttention runs: the fairer peer),
and `fast`. `speedup` is against `reference`, `vs_sdpa_procedure` against `reference+sdpa`.

    python bench/train_step.py [--image-size 128 --batch-size 16 --steps 6]

Both engines start from the same weights and see the same batches in the same run; float32 and
--amp (bfloat16 autocast on CPU where the CPU has bfloat16 instructions, else float32: column
`precision`; `amp_speedup` on the float32 rows is --amp's images/s ratio) are both measured. Per-phase
time (summed over the timed steps) shows where each engine spends it. Writes
bench/results/train_step.json.

`--backbone-training` instead measures what training the backbone costs: the AN baseline's step
(default `--head linear`, the published baselines' model) with the backbone frozen (`none`), its
layer4 trained and all of it trained (`--train-modes none,layer4,all`, `--bn-mode`), same weights
and batches in the same run, random backbone weights (`pretrained=False`; Lite0: its packaged
ones). `--peak-rss` runs each mode in a fresh process and adds its peak resident memory
(ru_maxrss, everything the process held: weights, activations, optimiser state, allocator slack).

    python bench/train_step.py --backbone-training --backbone resnet50 --image-size 128 --batch-size 8
    python bench/train_step.py --backbone-training --backbone resnet101 --image-size 448 --batch-size 8 \
        --train-modes all --steps 1 --warmup 1 --peak-rss

Writes bench/results/train_step_backbone.json (or --results NAME).

`--vs-published` times the fast engine against a replica of the cost of the authors' public Scob
iteration (bench/published_replica.py: backbone BN on batch statistics after the CAM pass, the hard
view built inside the step and its contrastive backward through the frozen backbone to the pixels,
Grad-CAM++ through a full extra forward, SDPA attention), and the reference engine beside them, at
each of `--sizes` in float32 and with --amp: ResNet-50 with random weights, the published heads
(d = 1024, FFN 2048), 80 classes, batch 8 unless given. `speedup` is against the replica.

    python bench/train_step.py --vs-published --sizes 256,448 --steps 2 --warmup 1

Writes bench/results/train_step_vs_published.json (or --results NAME).

`--device cuda` runs the default mode on the GPU (backbone, heads, estimator and batches there,
--amp as float16 autocast with a gradient scaler, a synchronisation before each clock read);
`--out-dir DIR` writes the JSON into DIR instead of bench/results/.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import add_device_arguments, device_name, print_table, resolve_device, write_results  # noqa: E402
from scob_fast.engine.amp import AmpPolicy  # noqa: E402
from scob_fast.methods.base import HeadOptions, LearningRates, MethodContext  # noqa: E402
from scob_fast.methods.scob import Scob, ScobConfig  # noqa: E402
from scob_fast.methods.single_positive import AN, BaselineConfig  # noqa: E402
from scob_fast.models.backbone import build_backbone  # noqa: E402


def backbone_training_step_rate(args, mode: str) -> dict:
    """images/s (and, in a child process, peak RSS) of AN's training step with `--train-backbone mode`."""
    import resource
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone, pretrained=args.backbone == "efficientnet_lite0", train_from=mode,
                              bn_mode=args.bn_mode if mode != "none" else "frozen").use_channels_last()
    observed = torch.zeros(args.samples, args.classes, dtype=torch.int8)
    observed[torch.arange(args.samples), torch.arange(args.samples) % args.classes] = 1
    ctx = MethodContext(backbone=backbone, num_classes=args.classes, num_samples=args.samples, observed=observed,
                        config=BaselineConfig(head=args.head), device=torch.device("cpu"),
                        amp=AmpPolicy("cpu", args.amp), image_size=args.image_size,
                        heads=HeadOptions(dim=args.dim, ffn=args.ffn, dropout=0.1), lr=LearningRates(),
                        expected_positives=2.5, seed=0)
    torch.manual_seed(0)
    method = AN(ctx)
    optimizer = torch.optim.Adam(method.param_groups() + backbone.param_groups(1e-5))
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.steps + args.warmup):
        index = torch.randperm(args.samples, generator=g)[:args.batch_size]
        batches.append({"image": torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g),
                        "observed": observed[index].float(), "index": index})
    method.train()
    method.start_epoch(0)
    for batch in batches[:args.warmup]:
        method.train_step(dict(batch), optimizer)
    start = time.perf_counter()
    for batch in batches[args.warmup:]:
        method.train_step(dict(batch), optimizer)
    elapsed = time.perf_counter() - start
    row = {"train_backbone": mode, "bn_mode": args.bn_mode if mode != "none" else "frozen", "backbone": args.backbone,
           "head": args.head, "amp": args.amp, "image_size": args.image_size, "batch_size": args.batch_size,
           "trainable_backbone_params": sum(p.numel() for p in backbone.trainable_parameters()),
           "images_per_s": args.steps * args.batch_size / elapsed, "ms_per_step": 1000 * elapsed / args.steps}
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # kB on Linux
    return row


def backbone_training(args) -> None:
    import json
    import subprocess
    rows = []
    for mode in args.train_modes.split(","):
        if args.peak_rss:
            # A fresh process per mode, so that ru_maxrss is that mode's own high-water mark.
            argv = [a for a in sys.argv[1:] if a != "--peak-rss"]
            argv = [a for i, a in enumerate(argv) if a != "--train-modes" and (i == 0 or argv[i - 1] != "--train-modes")]
            out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--train-modes", mode,
                                  "--child"], check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
        else:
            rows.append(backbone_training_step_rate(args, mode))
    if args.child:
        print(json.dumps(rows[0]))
        return
    frozen = next((r["images_per_s"] for r in rows if r["train_backbone"] == "none"), None)
    for row in rows:
        row["vs_frozen"] = row["images_per_s"] / frozen if frozen else None
        if not args.peak_rss:
            row.pop("peak_rss_gib")   # one process for every mode: not a per-mode figure
    columns = ["train_backbone", "bn_mode", "trainable_backbone_params", "images_per_s", "ms_per_step", "vs_frozen"]
    print_table(rows, columns + (["peak_rss_gib"] if args.peak_rss else []))
    write_results(args.results or "train_step_backbone", rows, {"command": " ".join(sys.argv), "device": "cpu"},
                  out_dir=args.out_dir)


def make_method(engine, backbone, observed, args, amp, config=None, method_class=Scob, device=torch.device("cpu")):
    # The published defaults (ScobConfig's, LearningRates') with the benchmark's head width.
    ctx = MethodContext(backbone=backbone, num_classes=args.classes, num_samples=args.samples, observed=observed,
                        config=config or ScobConfig(engine=engine), device=device,
                        amp=AmpPolicy(device, amp), image_size=args.image_size,
                        heads=HeadOptions(dim=args.dim, ffn=args.ffn, dropout=0.1),
                        lr=LearningRates(), expected_positives=2.5, seed=0)
    torch.manual_seed(0)
    method = method_class(ctx)
    return method.to(device) if device.type != "cpu" else method


def clock(device: torch.device) -> float:
    """perf_counter after the device's queued work has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def random_batches(args, observed, count):
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        index = torch.randperm(args.samples, generator=g)[:args.batch_size]
        batches.append({"image": torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g),
                        "image_hard": torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g),
                        "observed": observed[index].float(), "index": index})
    return batches


def timed_steps(method, batches, warmup: int) -> tuple[float, dict]:
    """Seconds for the steps after `warmup` untimed ones, and the method's per-phase totals."""
    optimizer = torch.optim.Adam(method.param_groups())
    method.train()
    method.start_epoch(0)
    for batch in batches[:warmup]:
        method.train_step(dict(batch), optimizer)
    method.timer.enabled = True
    method.timer.reset()
    start = time.perf_counter()
    for batch in batches[warmup:]:
        method.train_step(dict(batch), optimizer)
    return time.perf_counter() - start, dict(method.timer.totals)


def vs_published(args) -> None:
    from bench.published_replica import PublishedIterationScob
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        args.image_size = size
        observed = torch.zeros(args.samples, args.classes, dtype=torch.int8)
        observed[torch.arange(args.samples), torch.arange(args.samples) % args.classes] = 1
        batches = random_batches(args, observed, args.steps + args.warmup)
        for amp in (False, True):
            replica_rate = None
            for engine in ("published-replica", "reference", "fast"):
                torch.manual_seed(0)
                replica = engine == "published-replica"
                # The same random weights in every row; BN folded for our engines (their default).
                backbone = build_backbone(args.backbone, pretrained=False, fold_batchnorm=not replica)
                backbone = backbone.use_channels_last()
                if replica:
                    config = ScobConfig(engine="reference", published_bn=True, published_ema=True, published_bank=True)
                    method = make_method("reference", backbone, observed, args, amp, config, PublishedIterationScob)
                    method.net.set_attention_backend("sdpa")
                else:
                    method = make_method(engine, backbone, observed, args, amp)
                elapsed, phases = timed_steps(method, batches, args.warmup)
                rate = args.steps * args.batch_size / elapsed
                replica_rate = rate if replica else replica_rate
                row = {"engine": engine, "amp": amp, "precision": "bfloat16" if method.ctx.amp.enabled else "float32",
                       "image_size": size, "batch_size": args.batch_size, "dim": args.dim, "ffn": args.ffn,
                       "classes": args.classes, "backbone": args.backbone, "images_per_s": rate,
                       "median_ms": 1000 * elapsed / args.steps, "speedup": rate / replica_rate}
                for phase, seconds in sorted(phases.items()):
                    row[f"{phase}_ms_per_step"] = 1000 * seconds / args.steps
                rows.append(row)
                print(f"{engine:18s} size {size} amp {amp}: {rate:.3f} img/s, {rate / replica_rate:.2f}x the replica",
                      flush=True)
    phases = sorted({k for r in rows for k in r if k.endswith("_ms_per_step")})
    print_table(rows, ["engine", "image_size", "amp", "precision", "images_per_s", "speedup", *phases])
    write_results(args.results or "train_step_vs_published", rows, {"command": " ".join(sys.argv), "device": "cpu"},
                  out_dir=args.out_dir)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--ffn", type=int, default=512)
    p.add_argument("--classes", type=int, default=12)
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--steps", type=int, default=6, help="timed steps per engine (after 2 warm-up steps)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--backbone-training", action="store_true", help="frozen vs trainable backbone (see above)")
    p.add_argument("--train-modes", default="none,layer4,all", help="--backbone-training: the --train-backbone values")
    p.add_argument("--bn-mode", default="train", choices=("frozen", "train"))
    p.add_argument("--head", default="linear", choices=("linear", "two-level"))
    p.add_argument("--amp", action="store_true", help="--backbone-training: bfloat16 autocast")
    p.add_argument("--warmup", type=int, default=2, help="--backbone-training / --vs-published: untimed steps first")
    p.add_argument("--peak-rss", action="store_true", help="--backbone-training: each mode in its own process")
    p.add_argument("--results", default=None, help="--backbone-training: results file name")
    p.add_argument("--vs-published", action="store_true",
                   help="fast engine vs a replica of the public iteration's cost (see above)")
    p.add_argument("--sizes", default="256,448", help="--vs-published: image sizes")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    add_device_arguments(p)
    args = p.parse_args()
    if args.device == "cuda" and (args.vs_published or args.backbone_training):
        mode = "--vs-published" if args.vs_published else "--backbone-training"
        print(f"--device cuda: {mode} times the CPU only; run the default mode on the GPU", file=sys.stderr)
        raise SystemExit(2)
    device = resolve_device(args.device)
    if args.vs_published:
        # The published model unless given: ResNet-50, d = 1024, FFN 2048, 80 classes, batch 8.
        for flag, name, value in (("--backbone", "backbone", "resnet50"), ("--dim", "dim", 1024),
                                  ("--ffn", "ffn", 2048), ("--classes", "classes", 80),
                                  ("--batch-size", "batch_size", 8), ("--steps", "steps", 2),
                                  ("--warmup", "warmup", 1)):
            if flag not in sys.argv:
                setattr(args, name, value)
        vs_published(args)
        return
    if args.backbone_training:
        backbone_training(args)
        return

    backbone = build_backbone(args.backbone, pretrained=args.backbone == "efficientnet_lite0").use_channels_last()
    backbone = backbone.to(device) if device.type != "cpu" else backbone
    observed = torch.zeros(args.samples, args.classes, dtype=torch.int8)
    observed[torch.arange(args.samples), torch.arange(args.samples) % args.classes] = 1
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.steps + 2):
        index = torch.randperm(args.samples, generator=g)[:args.batch_size]
        batches.append({"image": torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g),
                        "image_hard": torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g),
                        "observed": observed[index].float(), "index": index})
    if device.type != "cpu":
        batches = [{k: v.to(device) for k, v in batch.items()} for batch in batches]
    rows = []
    for amp in (False, True):
        reference_rate = sdpa_rate = None
        for engine in ("reference", "reference+sdpa", "fast"):
            method = make_method(engine.split("+")[0], backbone, observed, args, amp, device=device)
            if engine == "reference+sdpa":
                method.net.set_attention_backend("sdpa")
            optimizer = torch.optim.Adam(method.param_groups())
            method.train()
            method.start_epoch(0)
            for batch in batches[:2]:
                method.train_step(dict(batch), optimizer)
            method.timer.enabled = True
            method.timer.reset()
            start = clock(device)
            for batch in batches[2:]:
                method.train_step(dict(batch), optimizer)
            elapsed = clock(device) - start
            rate = args.steps * args.batch_size / elapsed
            if engine == "reference":
                reference_rate = rate
            if engine == "reference+sdpa":
                sdpa_rate = rate
            policy = method.ctx.amp
            # what --amp ran: bfloat16 autocast only where the CPU has bfloat16 (engine/amp.py)
            precision = str(policy.dtype).removeprefix("torch.") if policy.enabled else "float32"
            row = {"engine": engine, "amp": amp, "precision": precision, "device": device_name(device),
                   "image_size": args.image_size, "batch_size": args.batch_size,
                   "dim": args.dim, "backbone": args.backbone, "images_per_s": rate,
                   "median_ms": 1000 * elapsed / args.steps, "speedup": rate / reference_rate,
                   "vs_sdpa_procedure": rate / sdpa_rate if sdpa_rate else None}
            for phase, seconds in sorted(method.timer.totals.items()):
                row[f"{phase}_ms_per_step"] = 1000 * seconds / args.steps
            rows.append(row)
    phases = sorted({k for r in rows for k in r if k.endswith("_ms_per_step")})
    print_table(rows, ["engine", "amp", "precision", "images_per_s", "speedup", "vs_sdpa_procedure", *phases])
    amp_rate = {r["engine"]: r["images_per_s"] for r in rows if r["amp"]}
    for row in rows:
        if not row["amp"]:   # --amp's effect on the same engine, same run (> 1: --amp is faster)
            row["amp_speedup"] = amp_rate[row["engine"]] / row["images_per_s"]
    print("--amp vs float32, images/s ratio: " + ", ".join(f"{r['engine']} {r['amp_speedup']:.2f}x"
                                                           for r in rows if "amp_speedup" in r))
    write_results("train_step", rows, {"command": " ".join(sys.argv), "device": device_name(device)},
                  out_dir=args.out_dir)


if __name__ == "__main__":
    main()
