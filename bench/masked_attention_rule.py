"""The automatic CPU rule of masked_attention at keep 1.0, forward-only: SDPA or the C++ kernel?

    .venv/bin/python -m bench.masked_attention_rule            # the shapes below, float32 and bfloat16
    OMP_NUM_THREADS=1 .venv/bin/python -m bench.masked_attention_rule --output masked_attention_rule_1thr

Every shape masks no key and records no gradient, the calls the rule decides (see
scob_fast/ops/masked_attention.py). Backends take turns call by call: sdpa (torch's
scaled_dot_product_attention without a mask: the peer, and what the rule runs for float32 below
SDPA_RULE_MAX_WORK multiply-adds and bfloat16 from SDPA_RULE_BF16_MIN_HEAD_DIM on), cpp (the C++
kernel, forced) and auto (the op as callers run it; `ran` says what the rule chose). Rows: shape, dtype, work (B*H*L*L*D), median_ms, peak_mib and
speedup (sdpa time / this time). Results go to bench/results/masked_attention_rule.json (or --output NAME;
--out-dir DIR puts it in DIR).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import interleaved_samples, peak_memory_bytes, print_table, write_results  # noqa: E402
from scob_fast.ops import last_backend  # noqa: E402
from scob_fast.ops.masked_attention import SDPA_RULE_BF16_MIN_HEAD_DIM, SDPA_RULE_MAX_WORK, masked_attention  # noqa: E402,E501

# (B, H, L, D): the overhead-bound small calls, the demo heads' levels (8 heads of 16 at d = 256:
# 4 x 4, 8 x 8 and 16 x 16 maps), heads of 32 (d = 512), and bench/masked_attention.py's shapes
# (8 heads of 64)
SHAPES = ((1, 8, 49, 64), (16, 8, 16, 16), (4, 8, 64, 16), (16, 8, 64, 16), (16, 8, 256, 16),
          (16, 8, 64, 32), (8, 8, 196, 32), (8, 8, 196, 64), (32, 8, 196, 64), (8, 8, 784, 64),
          (32, 8, 784, 64))
DTYPES = (torch.float32, torch.bfloat16)
COLUMNS = ["shape", "dtype", "work", "backend", "ran", "median_ms", "peak_mib", "speedup"]


def calls(q, k, v, keep) -> dict:
    def sdpa():
        return F.scaled_dot_product_attention(q, k, v)

    def cpp():
        return masked_attention(q, k, v, keep, backend="cpp")

    def auto():
        return masked_attention(q, k, v, keep)
    return {"sdpa": sdpa, "cpp": cpp, "auto": auto}


def bench_shape(B, H, L, D, dtype, min_rounds: int, budget_s: float) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g).to(dtype) for _ in range(3))
    keep = torch.ones(B, L, dtype=torch.bool)
    fns = calls(q, k, v, keep)
    ran = {}
    with torch.no_grad():
        for name, fn in fns.items():
            fn()
            fn()
            ran[name] = last_backend("masked_attention") if name == "auto" else name
        times = interleaved_samples(fns, min_rounds, budget_s, 20 * min_rounds)
        peaks = {name: peak_memory_bytes(fn) for name, fn in fns.items()}
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    rounds = len(times["sdpa"])
    return [{"shape": f"{B}x{H}x{L}x{D}", "B": B, "H": H, "L": L, "D": D, "dtype": str(dtype).split(".")[-1],
             "work": B * H * L * L * D, "backend": name, "ran": ran[name], "median_ms": medians[name] * 1e3,
             "peak_mib": peaks[name] / 2 ** 20, "speedup": medians["sdpa"] / medians[name], "rounds": rounds}
            for name in fns]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="at least this many interleaved rounds per shape")
    parser.add_argument("--budget-s", type=float, default=2.0, help="keep adding rounds while a shape is under this")
    parser.add_argument("--shapes", default=None, help="B,H,L,D;B,H,L,D;... instead of the built-in list")
    parser.add_argument("--output", default="masked_attention_rule")
    parser.add_argument("--out-dir", default=None, help="write the JSON here instead of bench/results/")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    try:
        shapes = (SHAPES if args.shapes is None else
                  [tuple(int(x) for x in item.split(",")) for item in args.shapes.split(";")])
    except ValueError:
        parser.error(f"--shapes: expected B,H,L,D;B,H,L,D;... of integers, got {args.shapes!r}")
    if any(len(shape) != 4 or min(shape) < 1 for shape in shapes):
        parser.error(f"--shapes: each shape is four positive integers B,H,L,D, got {args.shapes!r}")
    rows = []
    for dtype in DTYPES:
        for B, H, L, D in shapes:
            new = bench_shape(B, H, L, D, dtype, args.rounds, args.budget_s)
            print_table(new, COLUMNS)
            rows += new
    if not args.no_write:
        write_results(args.output, rows, {"threads": torch.get_num_threads(), "rule_max_work": SDPA_RULE_MAX_WORK,
                                          "rule_bf16_min_head_dim": SDPA_RULE_BF16_MIN_HEAD_DIM,
                                          "rounds": args.rounds, "budget_s": args.budget_s}, args.out_dir)


if __name__ == "__main__":
    main()
