"""Masked attention at Scob's shapes: the op against PyTorch, all measured in the same run.

    python bench/masked_attention.py            # B in {8, 32}, H=8, D=64, L in {196, 784}, keep in {0.3, 0.5, 1.0}
    python bench/masked_attention.py --quick    # B=8, L in {196, 784}, keep in {0.3, 1.0}; auto, cpp, sdpa_mask

(The shapes live in bench/shapes.py, shared with `pytest bench --benchmark-only`.)
Methods (float32, CPU):
  auto          scob_fast masked_attention as a caller runs it (no backend forced): row `ran` says
                which backend its dispatch chose (the rule for forward-only calls that mask no key:
                bench/masked_attention_rule.py)
  cpp           scob_fast masked_attention, backend="cpp" (forced)
  reference     masked_attention_reference (dense masked softmax; the op's definition)
  sdpa_mask     F.scaled_dot_product_attention with the same boolean key mask (the peer)
  gather_sdpa   the smart pure-PyTorch peer: gather each sample's kept keys (padded to the batch's
                largest count, padding masked) and call SDPA on them
Methods take turns call by call (this machine is shared; a burst of outside load then hits all of
them alike), for at least --repeats rounds and more while a shape's rounds stay under 3 s.
Rows: pass ("fwd" without autograd, "fwd+bwd" with the three input gradients), median_ms,
peak_mem_mb (peak of torch-allocated bytes during the call, inputs excluded), speedup (reference
time / this time, when the reference ran) and vs_sdpa (sdpa_mask time / this time).
Writes bench/results/masked_attention.json (or --output NAME; --out-dir DIR puts it in DIR).
--device cuda (scripts/gpu_check.sh) runs the same cases on the GPU with the op's triton and cuda
backends in place of cpp (a backend that cannot run there is listed under "skipped" in the JSON),
synchronising around every timed call; peak memory is then the caching allocator's high-water mark.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import (add_device_arguments, device_name, interleaved_samples, merge_runs,  # noqa: E402
                           peak_memory_bytes, print_table, resolve_device, runnable, synchronized,
                           write_results)
from bench.shapes import (ATTENTION_HEAD_DIM, ATTENTION_HEADS, ATTENTION_METHODS_FULL,  # noqa: E402
                          ATTENTION_METHODS_QUICK, attention_shapes)
from scob_fast.ops import last_backend  # noqa: E402
from scob_fast.ops.masked_attention import masked_attention, masked_attention_reference  # noqa: E402

PASSES = ("fwd", "fwd+bwd")
ROUND_BUDGET_S = 3.0   # per shape and pass: keep adding rounds of calls while under this


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
    valid = torch.arange(n, device=keep.device)[None, :] < counts[:, None]
    return F.scaled_dot_product_attention(q, kc, vc, attn_mask=valid[:, None, None, :])


METHODS = {
    "auto": lambda q, k, v, keep: masked_attention(q, k, v, keep),
    "cpp": lambda q, k, v, keep: masked_attention(q, k, v, keep, backend="cpp"),
    "triton": lambda q, k, v, keep: masked_attention(q, k, v, keep, backend="triton"),
    "cuda": lambda q, k, v, keep: masked_attention(q, k, v, keep, backend="cuda"),
    "reference": masked_attention_reference,
    "sdpa_mask": sdpa_mask,
    "gather_sdpa": gather_sdpa,
}


def make_inputs(B, H, L, D, keep_fraction, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
    if keep_fraction >= 1.0:
        keep = torch.ones(B, L, dtype=torch.bool)   # no key masked
    else:
        keep = torch.rand(B, L, generator=g) < keep_fraction
        keep[:, 0] = True  # SDPA would give NaN for a sample that keeps nothing
    return q, k, v, keep, torch.randn(B, H, L, D, generator=g)


# --device cuda: the GPU backends of the op take the place of the CPU kernel
GPU_METHODS_FULL = ("auto", "triton", "cuda", "reference", "sdpa_mask", "gather_sdpa")
GPU_METHODS_QUICK = ("auto", "triton", "cuda", "sdpa_mask")


def make_calls(B, L, keep_fraction, methods, device=torch.device("cpu")) -> tuple[dict, torch.Tensor]:
    """{method: {pass: zero-argument call}} on one set of inputs (also what bench/test_kernels.py times);
    the inputs are drawn on the CPU and moved, so every device times the same numbers."""
    q, k, v, keep, grad = (t.to(device) for t in make_inputs(B, ATTENTION_HEADS, L, ATTENTION_HEAD_DIM,
                                                             keep_fraction))
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    calls = {}
    for name in methods:
        fn = METHODS[name]

        def forward(fn=fn):
            with torch.no_grad():
                fn(q, k, v, keep)

        def forward_backward(fn=fn):
            torch.autograd.grad(fn(qg, kg, vg, keep), (qg, kg, vg), grad)

        calls[name] = {"fwd": synchronized(forward, device), "fwd+bwd": synchronized(forward_backward, device)}
    return calls, keep


def available(calls: dict, methods: list[str]) -> tuple[list[str], dict]:
    """The methods whose passes both run here, and {method: reason} for the others."""
    return runnable({name: (lambda passes=calls[name]: [call() for call in passes.values()]) for name in methods})


def bench_config(B, L, keep_fraction, repeats, methods, device=torch.device("cpu"), skipped=None):
    calls, keep = make_calls(B, L, keep_fraction, methods, device)
    if device.type == "cuda":
        methods, missing = available(calls, methods)
        if skipped is not None:
            skipped.update(missing)
    rows = []
    for pass_name in PASSES:
        ran = {}   # the backend each scob_fast method's dispatch chose (None for the PyTorch peers)
        for name in methods:
            calls[name][pass_name]()  # warm-up
            ran[name] = last_backend("masked_attention") if name in ("auto", "cpp", "triton", "cuda") else None
        # at least `repeats` rounds, more (up to 8x) while they take under ROUND_BUDGET_S: cheap shapes
        # get enough samples for their median to mean something on a noisy machine
        samples = interleaved_samples({name: calls[name][pass_name] for name in methods}, repeats, ROUND_BUDGET_S,
                                      8 * repeats)
        for name in methods:
            peak = peak_memory_bytes(calls[name][pass_name], device)
            rows.append(dict(B=B, H=ATTENTION_HEADS, L=L, D=ATTENTION_HEAD_DIM, keep=keep_fraction,
                             kept_max=int(keep.sum(1).max()), pass_=pass_name, backend=name, ran=ran[name],
                             median_ms=statistics.median(samples[name]) * 1e3, peak_mem_mb=peak / 2 ** 20))
    for row in rows:
        same = {r["backend"]: r["median_ms"] for r in rows if r["pass_"] == row["pass_"]}
        row["speedup"] = same["reference"] / row["median_ms"] if "reference" in same else None
        row["vs_sdpa"] = same["sdpa_mask"] / row["median_ms"] if "sdpa_mask" in same else None
    return rows


COLUMNS = ["B", "L", "keep", "pass_", "backend", "ran", "median_ms", "peak_mem_mb", "speedup", "vs_sdpa"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="B=8, keep in {0.3, 1.0}; methods auto, cpp, sdpa_mask")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per method (default 5; --quick 3)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated subset of " + ",".join(METHODS) + " (default: all; --quick: "
                             + ",".join(ATTENTION_METHODS_QUICK) + ")")
    parser.add_argument("--output", default=None,
                        help="results name under bench/results/ (default: masked_attention[_quick])")
    parser.add_argument("--runs", type=int, default=1,
                        help="whole runs; each row then holds the median over runs of its time and ratios")
    parser.add_argument("--no-write", action="store_true", help="print only (for tuning runs)")
    parser.add_argument("--case", nargs=3, metavar=("B", "L", "KEEP"), default=None,
                        help="one case instead of the grid (e.g. a smoke run: --case 2 16 0.5)")
    add_device_arguments(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cuda":
        defaults = GPU_METHODS_QUICK if args.quick else GPU_METHODS_FULL
    else:
        defaults = ATTENTION_METHODS_QUICK if args.quick else ATTENTION_METHODS_FULL
    methods = args.methods.split(",") if args.methods else list(defaults)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    repeats = args.repeats or (3 if args.quick else 5)
    cases = ([(int(args.case[0]), int(args.case[1]), float(args.case[2]))] if args.case
             else attention_shapes(args.quick))
    runs, skipped = [], {}
    for run in range(args.runs):
        rows = []
        for B, L, keep_fraction in cases:
            new = bench_config(B, L, keep_fraction, repeats, methods, device, skipped)
            print_table(new, COLUMNS)
            rows += new
        for row in rows:
            row["pass"] = row.pop("pass_")
        runs.append(rows)
    rows = merge_runs(runs, ("B", "L", "keep", "pass", "backend"), ("median_ms", "peak_mem_mb", "speedup", "vs_sdpa"))
    print("\nsummary (ms):")
    print_table(rows, ["B", "L", "keep", "pass", "backend", "ran", "median_ms", "speedup", "vs_sdpa"])
    if not args.no_write:
        name = args.output or ("masked_attention_quick" if args.quick else "masked_attention")
        write_results(name, rows, extra={"dtype": "float32", "H": ATTENTION_HEADS, "D": ATTENTION_HEAD_DIM,
                                         "quick": args.quick, "repeats": repeats, "runs": args.runs,
                                         "device": device_name(device), "skipped": skipped,
                                         "command": " ".join(sys.argv)}, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
