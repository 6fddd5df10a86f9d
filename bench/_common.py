"""Shared timing / memory / reporting helpers for the benchmark scripts.

Times are medians over repeats (this machine is shared and noisy: compare ratios measured in the
same run). Peak memory is the high-water mark of tensor allocations made through torch's CPU
allocator during one call, read from the profiler's memory events (scratch that a kernel takes with
malloc/std::vector is invisible to it, so kernels take scratch with at::empty).
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:   # the scripts run as files (python bench/x.py) and as modules
    sys.path.insert(0, str(REPO))
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def median_time_s(fn: Callable[[], object], repeats: int = 7, warmup: int = 2, min_time_s: float = 0.0) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    start_all = time.perf_counter()
    while len(samples) < repeats or (time.perf_counter() - start_all) < min_time_s:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
        if len(samples) >= 10 * repeats:
            break
    return statistics.median(samples)


def interleaved_samples(calls: dict[str, Callable[[], object]], min_rounds: int, budget_s: float = 0.0,
                        max_rounds: int | None = None) -> dict[str, list[float]]:
    """Seconds of each call, the calls taking turns round by round (a burst of outside load on this
    shared machine then hits them all alike): at least min_rounds rounds, more while the rounds so
    far took under budget_s, up to max_rounds (default min_rounds)."""
    samples = {name: [] for name in calls}
    limit = min_rounds if max_rounds is None else max_rounds
    start, rounds = time.perf_counter(), 0
    while rounds < min_rounds or (time.perf_counter() - start < budget_s and rounds < limit):
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
        rounds += 1
    return samples


def add_device_arguments(parser) -> None:
    """--device and --out-dir, shared by the benchmark scripts (scripts/gpu_check.sh passes both)."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the tensors live and the backends run (default cpu)")
    parser.add_argument("--out-dir", default=None,
                        help="write the results JSON into this folder instead of bench/results/")


def resolve_device(name: str) -> torch.device:
    """The benchmark's device; --device cuda without a visible GPU ends the run with one line, exit 2."""
    if name == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible to torch", file=sys.stderr)
        raise SystemExit(2)
    return torch.device(name)


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`fn` followed by a device synchronisation, so that wall-clock timing covers the kernels."""
    if device.type != "cuda":
        return fn

    def call():
        out = fn()
        torch.cuda.synchronize(device)
        return out
    return call


def runnable(first_calls: dict[str, Callable[[], object]]) -> tuple[list[str], dict[str, str]]:
    """The names whose first call runs here, and {name: reason} for the others (an unbuilt CUDA
    extension, a Triton compile error): a backend that cannot run is reported, not fatal."""
    ok, skipped = [], {}
    for name, call in first_calls.items():
        try:
            call()
        except Exception as error:
            skipped[name] = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            print(f"skipped {name}: {skipped[name]}", file=sys.stderr)
        else:
            ok.append(name)
    return ok, skipped


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | None = None) -> int:
    """Peak of live bytes allocated through torch's allocator while `fn` runs (baseline 0): on CUDA
    the caching allocator's high-water mark above what was allocated before the call."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


# /proc/cpuinfo flags worth recording: the vector ISAs that decide which kernels (and dtypes) run fast
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8", "asimd", "sve", "sve2", "bf16", "i8mm")


def _git(*args: str) -> str | None:
    try:
        # --no-optional-locks: `status` must not rewrite the index of a checkout others are working in
        done = subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(distribution: str) -> str | None:
    # the installed distribution's version, without importing it (DALI and Triton import slowly)
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """What a benchmark figure depends on, recorded in every results file: when, which commit
    (dirty = uncommitted changes), the CPU and its vector ISA, library versions, thread counts."""
    from scob_fast.engine.amp import cpu_bf16_support, cpu_flags

    flags = cpu_flags() or frozenset()
    native_bf16, bf16_evidence = cpu_bf16_support()
    dali = next((v for v in map(_version, ("nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali-cuda130",
                                           "nvidia-dali")) if v), None)
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_isa": [f for f in ISA_FLAGS if f in flags],
        "cpu_native_bf16": native_bf16,
        "cpu_bf16_evidence": bf16_evidence,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "dali": dali,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "mkl_num_threads": os.environ.get("MKL_NUM_THREADS"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def merge_runs(runs: list[list[dict]], key: tuple[str, ...], medians: tuple[str, ...]) -> list[dict]:
    """Rows of several whole runs of one benchmark (--runs N) as one row per case: each field in
    `medians` (times and ratios, each ratio taken within its own run) becomes its median over the
    runs, with the per-run values kept in `<field>_runs`."""
    if len(runs) == 1:
        return runs[0]
    merged = []
    for row in runs[0]:
        same = [next(r for r in run if all(r[k] == row[k] for k in key)) for run in runs]
        out = dict(row)
        for field in medians:
            values = [r.get(field) for r in same]
            if all(isinstance(v, (int, float)) for v in values):
                out[field] = statistics.median(values)
                out[f"{field}_runs"] = values
        merged.append(out)
    return merged


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_results(name: str, rows: list[dict], extra: dict | None = None, out_dir: str | Path | None = None) -> Path:
    folder = Path(out_dir) if out_dir is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = {"benchmark": name, "environment": environment(), **(extra or {}), "results": rows}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    print(f"wrote {path}")
    return path
