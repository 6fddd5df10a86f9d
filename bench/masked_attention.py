"""Masked attention at Scob's shapes: the C++ kernel against PyTorch, all measured in the same run.

    python bench/masked_attention.py            # B in {8, 32}, H=8, D=64, L in {196, 784}, keep in {0.3, 0.5, 1.0}
    python bench/masked_attention.py --quick    # B=8, L=784 only

Methods (float32, CPU):
  cpp           scob_fast masked_attention, backend="cpp"
  reference     masked_attention_reference (dense masked softmax; the op's definition)
  sdpa_mask     F.scaled_dot_product_attention with the same boolean key mask
  gather_sdpa   the smart pure-PyTorch peer: gather each sample's kept keys (padded to the batch's
                largest count, padding masked) and call SDPA on them
Methods take turns call by call (this machine is shared; a burst of outside load then hits all of
them alike). Rows: pass ("fwd" without autograd, "fwd+bwd" with the three input gradients), median_ms,
peak_mem_mb (fwd+bwd rows: peak of torch-allocated bytes during the call, inputs excluded),
speedup (reference time / this time) and vs_sdpa (sdpa_mask time / this time).
Writes bench/results/masked_attention.json.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import median_time_s, peak_memory_bytes, print_table, write_results  # noqa: E402
from scob_fast.ops.masked_attention import masked_attention, masked_attention_reference  # noqa: E402


def sdpa_mask(q, k, v, keep):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])


def gather_sdpa(q, k, v, keep):
    B, H, L, D = q.shape
    counts = keep.sum(1)
    n = int(counts.max())
    # Kept positions first (stable), then the first n of them; positions past a sample's count are masked.
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :n]
    index = order[:, None, :, None].expand(B, H, n, D)
    kc, vc = k.gather(2, index), v.gather(2, index)
    valid = torch.arange(n)[None, :] < counts[:, None]
    return F.scaled_dot_product_attention(q, kc, vc, attn_mask=valid[:, None, None, :])


METHODS = {
    "cpp": lambda q, k, v, keep: masked_attention(q, k, v, keep, backend="cpp"),
    "reference": masked_attention_reference,
    "sdpa_mask": sdpa_mask,
    "gather_sdpa": gather_sdpa,
}


def make_inputs(B, H, L, D, keep_fraction, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
    keep = torch.rand(B, L, generator=g) < keep_fraction
    keep[:, 0] = True  # SDPA would give NaN for a sample that keeps nothing
    return q, k, v, keep, torch.randn(B, H, L, D, generator=g)


def bench_config(B, H, L, D, keep_fraction, repeats, methods):
    q, k, v, keep, grad = make_inputs(B, H, L, D, keep_fraction)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    calls = {}
    for name in methods:
        fn = METHODS[name]

        def forward(fn=fn):
            with torch.no_grad():
                fn(q, k, v, keep)

        def forward_backward(fn=fn):
            torch.autograd.grad(fn(qg, kg, vg, keep), (qg, kg, vg), grad)

        calls[name] = {"fwd": forward, "fwd+bwd": forward_backward}
    rows = []
    for pass_name in ("fwd", "fwd+bwd"):
        # Methods take turns call by call, so a burst of load from other processes on this shared
        # machine hits them all alike instead of whichever happened to be running.
        samples = {name: [] for name in methods}
        for name in methods:
            calls[name][pass_name]()  # warm-up
        for _ in range(repeats):
            for name in methods:
                samples[name].append(median_time_s(calls[name][pass_name], repeats=1, warmup=0))
        for name in methods:
            peak = peak_memory_bytes(calls[name][pass_name])
            rows.append(dict(B=B, H=H, L=L, D=D, keep=keep_fraction, kept_max=int(keep.sum(1).max()),
                             pass_=pass_name, backend=name, median_ms=statistics.median(samples[name]) * 1e3,
                             peak_mem_mb=peak / 2 ** 20))
    for row in rows:
        same = {r["backend"]: r["median_ms"] for r in rows if r["pass_"] == row["pass_"]}
        row["speedup"] = same["reference"] / row["median_ms"] if "reference" in same else None
        row["vs_sdpa"] = same["sdpa_mask"] / row["median_ms"] if "sdpa_mask" in same else None
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="B=8, L=784 only")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--no-write", action="store_true", help="print only (for tuning runs)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    batches, lengths = ([8], [784]) if args.quick else ([8, 32], [196, 784])
    rows = []
    for B in batches:
        for L in lengths:
            for keep_fraction in (0.3, 0.5, 1.0):
                new = bench_config(B, 8, L, 64, keep_fraction, args.repeats, methods)
                print_table(new, ["B", "L", "keep", "pass_", "backend", "median_ms", "peak_mem_mb", "speedup", "vs_sdpa"])
                rows += new
    for row in rows:
        row["pass"] = row.pop("pass_")
    print("\nsummary (fwd+bwd, ms):")
    print_table([r for r in rows if r["pass"] == "fwd+bwd"],
                ["B", "L", "keep", "backend", "median_ms", "peak_mem_mb", "speedup", "vs_sdpa"])
    if not args.no_write:
        write_results("masked_attention", rows, extra={"dtype": "float32", "H": 8, "D": 64})


if __name__ == "__main__":
    main()
