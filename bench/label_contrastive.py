"""Benchmark of label_contrastive_loss: C++ kernel vs the dense reference, measured in the same run.

    .venv/bin/python -m bench.label_contrastive                # N = M in {512, 4096, 16384}, D in {256, 1024}
    .venv/bin/python -m bench.label_contrastive --sizes 512 --dims 256 --backends cpp,reference

Configuration: separate candidates [M, D] with labels over C = 80 classes, a C x C weight matrix
(exp form), one extra positive logit per anchor, gradients to anchors and candidates (SADCL's
prototype-to-sample and SupCon with weights exercise the same paths). For each shape and pass
(forward; forward+backward) every backend reports its median time, its peak memory (tensor
allocations seen by the profiler during one call) and its speedup / memory ratio against the
reference. Results go to bench/results/label_contrastive.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench._common import median_time_s, peak_memory_bytes, print_table, write_results
else:
    from bench._common import median_time_s, peak_memory_bytes, print_table, write_results

from scob_fast.ops import last_backend
from scob_fast.ops.label_contrastive import label_contrastive_loss

COLUMNS = ["n", "m", "d", "c", "pass", "backend", "median_ms", "peak_mem_mb", "speedup", "mem_ratio"]


def make_inputs(n: int, m: int, d: int, c: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "anchors": F.normalize(torch.randn(n, d, generator=g), dim=1),
        "anchor_labels": torch.randint(0, c, (n,), generator=g),
        "candidates": F.normalize(torch.randn(m, d, generator=g), dim=1),
        "candidate_labels": torch.randint(0, c, (m,), generator=g),
        "class_weights": torch.rand(c, c, generator=g),
        "extra_positive": torch.rand(n, generator=g) * 2 - 1,
    }


def step(inputs: dict, backend: str, backward: bool, temperature: float) -> None:
    a = inputs["anchors"].detach().requires_grad_(backward)
    c = inputs["candidates"].detach().requires_grad_(backward)
    loss = label_contrastive_loss(a, inputs["anchor_labels"], c, inputs["candidate_labels"], temperature=temperature,
                                  class_weights=inputs["class_weights"], extra_positive=inputs["extra_positive"],
                                  backend=backend)
    if backend != last_backend("label_contrastive"):
        raise RuntimeError(f"asked for {backend}, ran {last_backend('label_contrastive')}")
    if backward:
        loss.backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 4096, 16384], help="N = M values")
    parser.add_argument("--dims", type=int, nargs="+", default=[256, 1024], help="D values")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--backends", default="cpp,reference", help="comma-separated; 'reference' is the baseline")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per measurement (default 5, or 2 at N >= 16384)")
    parser.add_argument("--output", default="label_contrastive", help="results name under bench/results/")
    args = parser.parse_args()
    backends = args.backends.split(",")
    if "reference" not in backends:
        backends.append("reference")

    rows = []
    for d in args.dims:
        for n in args.sizes:
            inputs = make_inputs(n, n, d, args.classes)
            repeats = args.repeats or (2 if n >= 16384 else 5)
            warmup = 0 if n >= 16384 else 1
            for backward in (False, True):
                measured = {}
                for backend in backends:
                    fn = lambda: step(inputs, backend, backward, args.temperature)  # noqa: E731
                    seconds = median_time_s(fn, repeats=repeats, warmup=warmup)
                    peak = peak_memory_bytes(fn)
                    measured[backend] = (seconds, peak)
                    print(f"n={n} d={d} {'fwd+bwd' if backward else 'fwd'} {backend}: {seconds * 1e3:.1f} ms, "
                          f"{peak / 2**20:.1f} MiB", flush=True)
                ref_s, ref_peak = measured["reference"]
                for backend, (seconds, peak) in measured.items():
                    rows.append({"n": n, "m": n, "d": d, "c": args.classes,
                                 "pass": "forward+backward" if backward else "forward", "backend": backend,
                                 "median_ms": seconds * 1e3, "peak_mem_mb": peak / 2**20,
                                 "speedup": ref_s / seconds, "mem_ratio": peak / ref_peak if ref_peak else None})
    print_table(rows, COLUMNS)
    goal = [r for r in rows if r["n"] == 16384 and r["d"] == 256 and r["pass"] == "forward+backward"
            and r["backend"] == "cpp"]
    extra = {"config": "candidates + labels (C classes), C x C exp-form weights, extra positive logit, "
                       "gradients to anchors and candidates",
             "temperature": args.temperature}
    if goal:
        met = goal[0]["speedup"] >= 1.5 and goal[0]["mem_ratio"] <= 0.10
        extra["goal"] = {"n": 16384, "d": 256, "speedup": goal[0]["speedup"], "mem_ratio": goal[0]["mem_ratio"],
                         "met": met, "target": "speedup >= 1.5 and mem_ratio <= 0.10 (forward+backward)"}
        print(f"goal (N=16384, D=256, fwd+bwd: >= 1.5x faster, <= 10% memory): "
              f"{goal[0]['speedup']:.2f}x, {goal[0]['mem_ratio'] * 100:.1f}% -> {'met' if met else 'NOT met'}")
    write_results(args.output, rows, extra)


if __name__ == "__main__":
    main()
