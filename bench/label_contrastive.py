"""Benchmark of label_contrastive_loss: the op against the dense reference, measured in the same run.

    .venv/bin/python -m bench.label_contrastive                # N = M in {512, 4096, 16384}, D in {256, 1024}
    .venv/bin/python -m bench.label_contrastive --quick        # N = M in {256, 512, 1024}, D in {256, 1024}
    .venv/bin/python -m bench.label_contrastive --sizes 512 --dims 256 --backends cpp,reference

(The shapes live in bench/shapes.py, shared with `pytest bench --benchmark-only`.)
Configuration: separate candidates [M, D] with labels over C = 80 classes, a C x C weight matrix
(exp form), one extra positive logit per anchor, gradients to anchors and candidates (SADCL's
prototype-to-sample and SupCon with weights exercise the same paths). For each shape and pass
(forward; forward+backward) every backend reports its median time, its peak memory (tensor
allocations seen by the profiler during one call) and its speedup / memory ratio against the
reference. Backends: auto (the op as a caller runs it, no backend forced; column `ran` says what
its dispatch chose: dense for moderate N x M with a backward, cpp otherwise), cpp (what auto ran
before the dense rule), dense, reference (the peer). Backends take turns call by call.
Results go to bench/results/label_contrastive.json (or --output NAME; --out-dir DIR puts it in DIR).
--device cuda (scripts/gpu_check.sh) runs the same inputs on the GPU (default backends auto, triton,
cuda, reference; one that cannot run there is listed under "skipped"), synchronising around every
timed call.
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

from bench._common import (add_device_arguments, device_name, merge_runs, median_time_s,  # noqa: E402
                           peak_memory_bytes, print_table, resolve_device, runnable, synchronized,
                           write_results)
from bench.shapes import CONTRASTIVE_BACKENDS, CONTRASTIVE_CLASSES, contrastive_shapes  # noqa: E402
from scob_fast.ops import last_backend  # noqa: E402
from scob_fast.ops.label_contrastive import label_contrastive_loss  # noqa: E402

COLUMNS = ["n", "m", "d", "c", "pass", "backend", "ran", "median_ms", "peak_mem_mb", "speedup", "mem_ratio"]
BACKENDS = ("auto", "cpp", "dense", "reference", "triton", "cuda")
GPU_BACKENDS = ("auto", "triton", "cuda", "reference")


def make_inputs(n: int, m: int, d: int, c: int, seed: int = 0, device=torch.device("cpu")) -> dict:
    """Drawn on the CPU and moved, so every device times the same numbers."""
    g = torch.Generator().manual_seed(seed)
    return {name: t.to(device) for name, t in {
        "anchors": F.normalize(torch.randn(n, d, generator=g), dim=1),
        "anchor_labels": torch.randint(0, c, (n,), generator=g),
        "candidates": F.normalize(torch.randn(m, d, generator=g), dim=1),
        "candidate_labels": torch.randint(0, c, (m,), generator=g),
        "class_weights": torch.rand(c, c, generator=g),
        "extra_positive": torch.rand(n, generator=g) * 2 - 1,
    }.items()}


def step(inputs: dict, backend: str, backward: bool, temperature: float) -> str:
    """One call (and its backward); returns the backend that ran."""
    a = inputs["anchors"].detach().requires_grad_(backward)
    c = inputs["candidates"].detach().requires_grad_(backward)
    loss = label_contrastive_loss(a, inputs["anchor_labels"], c, inputs["candidate_labels"], temperature=temperature,
                                  class_weights=inputs["class_weights"], extra_positive=inputs["extra_positive"],
                                  backend=None if backend == "auto" else backend)
    ran = last_backend("label_contrastive")
    if backend != "auto" and backend != ran:
        raise RuntimeError(f"asked for {backend}, ran {ran}")
    if backward:
        loss.backward()
    return ran


def available(inputs: dict, backends: list[str], args) -> tuple[list[str], dict]:
    """The backends whose forward+backward runs here, and {backend: reason} for the others."""
    return runnable({b: (lambda b=b: step(inputs, b, True, args.temperature)) for b in backends})


def run_grid(shapes, backends, args, device=torch.device("cpu"), skipped=None) -> list[dict]:
    """One whole run over the shapes: rows of (shape, pass, backend)."""
    rows = []
    for n, d in shapes:
        inputs = make_inputs(n, n, d, args.classes, device=device)
        if device.type == "cuda":
            backends, missing = available(inputs, backends, args)
            if skipped is not None:
                skipped.update(missing)
        repeats = args.repeats or (2 if n >= 16384 else 5)
        warmup = 0 if n >= 16384 else 1
        for backward in (False, True):
            samples = {b: [] for b in backends}
            ran = {}
            for _ in range(warmup):
                for backend in backends:
                    step(inputs, backend, backward, args.temperature)
            # backends take turns call by call: a burst of outside load hits them all alike
            for _ in range(repeats):
                for backend in backends:
                    holder = {}
                    samples[backend].append(median_time_s(synchronized(
                        lambda: holder.update(ran=step(inputs, backend, backward, args.temperature)), device),
                        repeats=1, warmup=0))
                    ran[backend] = holder["ran"]
            measured = {}
            for backend in backends:
                seconds = statistics.median(samples[backend])
                peak = peak_memory_bytes(lambda: step(inputs, backend, backward, args.temperature), device)
                measured[backend] = (seconds, peak)
                print(f"n={n} d={d} {'fwd+bwd' if backward else 'fwd'} {backend} ({ran[backend]}): "
                      f"{seconds * 1e3:.1f} ms, {peak / 2**20:.1f} MiB", flush=True)
            ref_s, ref_peak = measured["reference"]
            for backend, (seconds, peak) in measured.items():
                rows.append({"n": n, "m": n, "d": d, "c": args.classes,
                             "pass": "forward+backward" if backward else "forward", "backend": backend,
                             "ran": ran[backend], "median_ms": seconds * 1e3, "peak_mem_mb": peak / 2**20,
                             "speedup": ref_s / seconds, "mem_ratio": peak / ref_peak if ref_peak else None})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = M in {256, 512, 1024}, D in {256, 1024}")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="N = M values (default: bench/shapes.py)")
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="D values (default: bench/shapes.py)")
    parser.add_argument("--classes", type=int, default=CONTRASTIVE_CLASSES)
    parser.add_argument("--backends", default=None,
                        help="comma-separated from " + ",".join(BACKENDS) + "; 'reference' is the baseline "
                             "(default " + ",".join(CONTRASTIVE_BACKENDS) + "; --device cuda: "
                             + ",".join(GPU_BACKENDS) + ")")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per measurement (default 5, or 2 at N >= 16384)")
    parser.add_argument("--runs", type=int, default=1,
                        help="whole runs; each row then holds the median over runs of its time and ratios")
    parser.add_argument("--output", default=None,
                        help="results name under bench/results/ (default: label_contrastive[_quick])")
    add_device_arguments(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    backends = (args.backends or ",".join(GPU_BACKENDS if device.type == "cuda" else CONTRASTIVE_BACKENDS)).split(",")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if "reference" not in backends:
        backends.append("reference")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    shapes = contrastive_shapes(args.quick)
    if args.sizes or args.dims:
        sizes = args.sizes or sorted({n for n, _ in shapes})
        dims = args.dims or sorted({d for _, d in shapes})
        shapes = [(n, d) for d in dims for n in sizes]

    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    skipped = {}
    runs = [run_grid(shapes, backends, args, device, skipped) for _ in range(args.runs)]
    rows = merge_runs(runs, ("n", "d", "pass", "backend"), ("median_ms", "peak_mem_mb", "speedup", "mem_ratio"))
    print_table(rows, COLUMNS)
    extra = {"config": "candidates + labels (C classes), C x C exp-form weights, extra positive logit, "
                       "gradients to anchors and candidates",
             "temperature": args.temperature, "quick": args.quick, "runs": args.runs,
             "device": device_name(device), "skipped": skipped, "command": " ".join(sys.argv)}
    goal = [r for r in rows if r["n"] == 16384 and r["d"] == 256 and r["pass"] == "forward+backward"
            and r["backend"] == "cpp"]
    if goal:
        met = goal[0]["speedup"] >= 1.5 and goal[0]["mem_ratio"] <= 0.10
        extra["goal"] = {"n": 16384, "d": 256, "speedup": goal[0]["speedup"], "mem_ratio": goal[0]["mem_ratio"],
                         "met": met, "target": "speedup >= 1.5 and mem_ratio <= 0.10 (forward+backward)"}
        print(f"goal (N=16384, D=256, fwd+bwd: >= 1.5x faster, <= 10% memory): "
              f"{goal[0]['speedup']:.2f}x, {goal[0]['mem_ratio'] * 100:.1f}% -> {'met' if met else 'NOT met'}")
    name = args.output or ("label_contrastive_quick" if args.quick else "label_contrastive")
    write_results(name, rows, extra, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
