"""Benchmark of hash_dropout against torch's dropout (the peer), measured in the same run.

    .venv/bin/python -m bench.hash_dropout                 # the Scob heads' activation shapes
    .venv/bin/python -m bench.hash_dropout --backends auto,torch

(The shapes live in bench/shapes.py, shared with `pytest bench --benchmark-only`.) For each shape
and pass (forward; forward+backward) every backend reports its median time, its peak memory
(tensor allocations seen by the profiler during one call) and its speedup against torch's
F.dropout in training mode. Backends: auto (the op as the heads run it; column `ran` says what its
dispatch chose), reference (the pure-PyTorch definition), torch (the peer). Backends take turns
call by call. Results go to bench/results/hash_dropout.json (or --output NAME; --out-dir DIR).
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

from bench._common import add_device_arguments, device_name, interleaved_samples, peak_memory_bytes, print_table, resolve_device, synchronized, write_results  # noqa: E402,E501
from bench.shapes import DROPOUT_BACKENDS, DROPOUT_P, DROPOUT_SHAPES  # noqa: E402
from scob_fast.ops import last_backend  # noqa: E402
from scob_fast.ops.hash_dropout import hash_dropout  # noqa: E402

PASSES = ("forward", "forward+backward")
COLUMNS = ["shape", "pass", "backend", "ran", "median_ms", "peak_mib", "speedup"]


def make_call(x: torch.Tensor, backend: str, pass_: str):
    """A no-argument call of one backend and pass on x (x requires grad for forward+backward)."""
    def forward():
        if backend == "torch":
            return F.dropout(x, DROPOUT_P, training=True)
        return hash_dropout(x, DROPOUT_P, seed=12345, backend=None if backend == "auto" else backend)

    if pass_ == "forward":
        def call():
            with torch.no_grad():
                return forward()
        return call
    grad = torch.ones_like(x)

    def call():
        x.grad = None
        forward().backward(grad)
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(DROPOUT_BACKENDS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output", default="hash_dropout")
    add_device_arguments(parser)
    args = parser.parse_args()
    device = resolve_device(args.device)
    backends = [b for b in args.backends.split(",") if b]
    if "torch" not in backends:
        parser.error("--backends must include the peer, torch")
    rows = []
    for shape in DROPOUT_SHAPES:
        x = torch.randn(shape, device=device, requires_grad=True)
        for pass_ in PASSES:
            calls = {b: synchronized(make_call(x, b, pass_), device) for b in backends}
            ran = {}
            for b, call in calls.items():
                call()
                call()   # warm-up
                ran[b] = last_backend("hash_dropout") if b == "auto" else None
            samples = interleaved_samples(calls, args.repeats)
            medians = {b: statistics.median(s) for b, s in samples.items()}
            for b in backends:
                rows.append({"shape": "x".join(map(str, shape)), "pass": pass_, "backend": b, "ran": ran[b],
                             "median_ms": medians[b] * 1e3,
                             "peak_mib": peak_memory_bytes(calls[b], device) / 2 ** 20,
                             "speedup": medians["torch"] / medians[b]})
    print_table(rows, COLUMNS)
    write_results(args.output, rows, {"device": device_name(device), "p": DROPOUT_P, "repeats": args.repeats,
                                      "threads": torch.get_num_threads()}, out_dir=args.out_dir)


if __name__ == "__main__":
    main()
