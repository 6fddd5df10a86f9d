"""Training images/s of Scob's fast engine vs the reference procedure, same model, batch and data.

Three rows per precision: `reference` (the published procedure with the definitional pure-PyTorch
attention and contrastive ops), `reference+sdpa` (the same procedure with torch's SDPA + boolean
mask as attention, which is what the public code's nn.MultiheadAttention runs: the fairer peer),
and `fast`. `speedup` is against `reference`, `vs_sdpa_procedure` against `reference+sdpa`.

    python bench/train_step.py [--image-size 128 --batch-size 16 --steps 6]

Both engines start from the same weights and see the same batches in the same run; float32 and
--amp (bfloat16 autocast on CPU) are both measured. Per-phase time (summed over the timed steps)
shows where each engine spends it. Writes bench/results/train_step.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import print_table, write_results  # noqa: E402
from scob_fast.engine.amp import AmpPolicy  # noqa: E402
from scob_fast.methods.base import HeadOptions, LearningRates, MethodContext  # noqa: E402
from scob_fast.methods.scob import Scob, ScobConfig  # noqa: E402
from scob_fast.models.backbone import build_backbone  # noqa: E402


def make_method(engine, backbone, observed, args, amp):
    # The published defaults (ScobConfig's, LearningRates') with the benchmark's head width.
    ctx = MethodContext(backbone=backbone, num_classes=args.classes, num_samples=args.samples, observed=observed,
                        config=ScobConfig(engine=engine), device=torch.device("cpu"), amp=AmpPolicy("cpu", amp),
                        image_size=args.image_size, heads=HeadOptions(dim=args.dim, ffn=args.ffn, dropout=0.1),
                        lr=LearningRates(), expected_positives=2.5, seed=0)
    torch.manual_seed(0)
    return Scob(ctx)


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
    args = p.parse_args()

    backbone = build_backbone(args.backbone, pretrained=args.backbone == "efficientnet_lite0").use_channels_last()
    observed = torch.zeros(args.samples, args.classes, dtype=torch.int8)
    observed[torch.arange(args.samples), torch.arange(args.samples) % args.classes] = 1
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.steps + 2):
        index = torch.randperm(args.samples, generator=g)[:args.batch_size]
        batches.append({"image": torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g),
                        "image_hard": torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g),
                        "observed": observed[index].float(), "index": index})
    rows = []
    for amp in (False, True):
        reference_rate = sdpa_rate = None
        for engine in ("reference", "reference+sdpa", "fast"):
            method = make_method(engine.split("+")[0], backbone, observed, args, amp)
            if engine == "reference+sdpa":
                method.net.set_attention_backend("sdpa")
            optimizer = torch.optim.Adam(method.param_groups())
            method.train()
            method.start_epoch(0)
            for batch in batches[:2]:
                method.train_step(dict(batch), optimizer)
            method.timer.enabled = True
            method.timer.reset()
            start = time.perf_counter()
            for batch in batches[2:]:
                method.train_step(dict(batch), optimizer)
            elapsed = time.perf_counter() - start
            rate = args.steps * args.batch_size / elapsed
            if engine == "reference":
                reference_rate = rate
            if engine == "reference+sdpa":
                sdpa_rate = rate
            row = {"engine": engine, "amp": amp, "image_size": args.image_size, "batch_size": args.batch_size,
                   "dim": args.dim, "backbone": args.backbone, "images_per_s": rate,
                   "median_ms": 1000 * elapsed / args.steps, "speedup": rate / reference_rate,
                   "vs_sdpa_procedure": rate / sdpa_rate if sdpa_rate else None}
            for phase, seconds in sorted(method.timer.totals.items()):
                row[f"{phase}_ms_per_step"] = 1000 * seconds / args.steps
            rows.append(row)
    phases = sorted({k for r in rows for k in r if k.endswith("_ms_per_step")})
    print_table(rows, ["engine", "amp", "images_per_s", "speedup", "vs_sdpa_procedure", *phases])
    write_results("train_step", rows, {"command": " ".join(sys.argv)})


if __name__ == "__main__":
    main()
