"""Compiles every Triton kernel of scob_fast ahead of time for sm_80, sm_86, sm_89 and sm_90, with no GPU.

    .venv/bin/python scripts/aot_compile_check.py            # everything (2376 kernels: ~1 h on 2 cores)
    .venv/bin/python scripts/aot_compile_check.py --reuse bench/results/aot_compile.json --verify 8   # CI
    .venv/bin/python scripts/aot_compile_check.py --targets 90 --ops masked_attention --dtypes bfloat16
    .venv/bin/python scripts/aot_compile_check.py --search --ops masked_attention --out /tmp/search.json

What is compiled is what the launchers launch. Each op's launcher (scob_fast/kernels/<op>.py
`forward` / `backward`) runs on small CPU tensors while `targets.arch_of` answers the target's compute
capability (so the selection function `launch_config` picks for that target, as on such a GPU), and
its `kernel[grid](...)` launches are recorded instead of run. Each launch is then bound and
specialised as Triton's JIT does (its binder: argument types, 16-byte divisibility of pointers and
integers, the constexprs, num_warps and num_stages the launcher passed) and compiled with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` down to a cubin by Triton's own
ptxas (the one a launch uses). Per kernel: registers and spill bytes from that ptxas's -v report,
shared memory from the compiled metadata (what Triton requests at launch).

Cases: bfloat16, float16 and float32; masked_attention at one head dim per BLOCK_D (16 ... 256), dropout
off and on; label_contrastive at one feature width per BLOCK_D (16, 32, 64) and every combination of
its options that label_contrastive_loss accepts (class weights, extra positive, logit form, label
positives, self exclusion: 24 forward and 16 backward kernels each).

Fails (exit 1) on: a compilation error, any spill (none is tolerated: a spill in these loops is
local-memory traffic on every tile), shared memory above the target's per-block opt-in limit
(scob_fast/kernels/targets.py, with its source), registers x threads above 64 K per block, or (with
--verify) a reused record that a fresh compile does not reproduce.
Exit 2: Triton's CUDA backend or its ptxas is not usable here (nothing was checked).

--reuse FILE (repeatable) takes the record of every kernel whose Triton cache key is in FILE instead of
compiling it again. The key hashes the source text and first line number of the kernel and of every
jit function it calls (so an edited comment inside one, or a line added above one, makes a new
kernel), the specialisation, constexprs, options, target, and the Triton and ptxas versions; not the
checkout's path. --verify N still recompiles N of those, one per (target, kernel function) pair in turn
(8 cover the 4 targets and 6 functions), and fails if one differs. So CI compiles only what changed.
Writes --out (default bench/results/aot_compile.json) and prints one line per kernel.

--search (with --out FILE for its compile records) makes the _CONFIGS tables instead of checking them:
per table cell, the first of the module's CANDIDATES with num_stages 3, 2, 1 for which every kernel of
the cell passes the check above; it prints the table rows (paste them, then run the check).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The kernels must be real @triton.jit functions, not the interpreter's: decided when they are imported.
if os.environ.pop("TRITON_INTERPRET", None) not in (None, "", "0"):
    print("aot_compile_check: ignoring TRITON_INTERPRET (kernels are compiled, not interpreted)")

OPS = ("masked_attention", "label_contrastive")
DTYPES = ("bfloat16", "float16", "float32")
MA_HEAD_DIMS = (16, 32, 64, 128, 256)      # one per BLOCK_D the launcher can pick (the op takes D <= 256)
LC_FEATURE_DIMS = (16, 32, 256)            # one per BLOCK_D (16, 32, 64)
# label_contrastive_loss's options, in the order of the kernels' constexprs HAS_W, HAS_EXTRA,
# LOGIT_FORM, LABEL_POS, EXCL_SELF; positives="extra_only" (LABEL_POS off) needs an extra positive.
LC_OPTIONS = ("class_weights", "extra_positive", "logit_form", "label_positives", "exclude_self")
LC_COMBINATIONS = [c for c in itertools.product((False, True), repeat=5) if c[3] or c[1]]
REPRODUCED = ("registers", "spill_stores", "spill_loads", "stack_bytes", "shared", "num_warps", "num_stages", "maxnreg")
_PTXAS = {"registers": re.compile(r"Used (\d+) registers"),
          "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
          "spill_stores": re.compile(r"(\d+) bytes spill stores"),
          "spill_loads": re.compile(r"(\d+) bytes spill loads")}


@dataclass(frozen=True)
class Case:
    """One call of an op's launchers (forward, then backward) on one target."""
    op: str
    target: int
    dtype: str
    dim: int
    options: tuple     # masked_attention: (dropout,); label_contrastive: flags in LC_OPTIONS order

    def describe(self) -> dict:
        names = ("dropout",) if self.op == "masked_attention" else LC_OPTIONS
        return {"op": self.op, "target": f"sm_{self.target}", "dtype": self.dtype, "dim": self.dim,
                **dict(zip(names, self.options))}


@dataclass
class Launch:
    fn: object       # the @triton.jit function
    args: tuple
    kwargs: dict     # constexprs, num_warps, num_stages as the launcher passed them


def cases(ops, targets, dtypes) -> list[Case]:
    out = []
    for target, dtype in itertools.product(targets, dtypes):
        if "masked_attention" in ops:
            out += [Case("masked_attention", target, dtype, d, (p,)) for d in MA_HEAD_DIMS for p in (False, True)]
        if "label_contrastive" in ops:
            out += [Case("label_contrastive", target, dtype, d, c) for d in LC_FEATURE_DIMS for c in LC_COMBINATIONS]
    return out


# ------------------------------------------------------------------------------------------------
# Recording the launches of one case

def _run_launchers(case: Case) -> None:
    import torch
    dtype = getattr(torch, case.dtype)
    g = torch.Generator().manual_seed(0)
    if case.op == "masked_attention":
        from scob_fast.kernels import masked_attention as kernels
        (dropout,) = case.options
        # Scob's layout: q, k, v are [B, H, L, D] views of one [B, L, 3, H, D] projection; L = 14 x 14.
        B, H, L, D = 2, 2, 196, case.dim
        qkv = torch.randn(B, L, 3, H, D, generator=g).to(dtype)
        q, k, v = (qkv[:, :, i].permute(0, 2, 1, 3) for i in range(3))
        keep = torch.rand(B, L, generator=g) < 0.5
        p = 0.1 if dropout else 0.0
        out, lse = kernels.forward(q, k, v, keep, D ** -0.5, p, 7)
        kernels.backward(torch.randn(out.shape, generator=g).to(dtype), q, k, v, keep, out, lse, D ** -0.5, p, 7)
        return
    from scob_fast.kernels import label_contrastive as kernels
    has_w, has_extra, logit_form, label_pos, exclude_self = case.options
    n, m, c = 256, 80, 20   # anchors, candidates (e.g. class prototypes), classes
    a = torch.randn(n, case.dim, generator=g).to(dtype)
    cand = torch.randn(m, case.dim, generator=g).to(dtype)
    ya, yc = torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (m,), generator=g)
    w = torch.rand(c, c, generator=g) + 0.5 if has_w else None
    extra = torch.randn(n, generator=g) if has_extra else None
    form = (1.0, logit_form, label_pos, exclude_self)   # logit_shift, logit_form, label_positives, exclude_self
    loss, lse, count = kernels.forward(a, ya, cand, yc, w, extra, 0.2, *form)
    kernels.backward(torch.ones(n), a, ya, cand, yc, w, extra, lse, count, 0.2, *form, True, True, has_extra)


@contextlib.contextmanager
def _recording(target: int):
    """Launchers see `target` as their device's compute capability; kernel launches are recorded."""
    from triton.runtime import jit as triton_jit
    from scob_fast.kernels import targets
    launches: list[Launch] = []

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, args, dict(kwargs)))

    saved = triton_jit.JITFunction.run, targets.arch_of
    triton_jit.JITFunction.run, targets.arch_of = record, (lambda device: target)
    try:
        yield launches
    finally:
        triton_jit.JITFunction.run, targets.arch_of = saved


def launches_of(case: Case) -> list[Launch]:
    with _recording(case.target) as launches:
        _run_launchers(case)
    return launches


# ------------------------------------------------------------------------------------------------
# Binding and compiling one launch as Triton's JIT does (triton/runtime/jit.py: JITFunction.run,
# _pack_args, _do_compile; triton/compiler/compiler.py: compile)

_BACKENDS = {}   # arch -> Triton's CUDA backend object (its hash() runs ptxas --version once)
_BINDERS = {}    # (jit function, arch) -> Triton's argument binder (generated code, made once)


def _source(launch: Launch, arch: int):
    """(ASTSource, GPUTarget, options dict, Triton cache key) of the launch on `arch`."""
    from triton import knobs
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime import jit as triton_jit
    from triton.runtime.cache import get_cache_key
    fn = launch.fn
    target = GPUTarget("cuda", arch, 32)
    backend = _BACKENDS.get(arch) or _BACKENDS.setdefault(arch, make_backend(target))
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = _BINDERS.get((fn, arch))
    if binder is None:
        binder = _BINDERS[(fn, arch)] = triton_jit.create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    src = ASTSource(fn, signature, constexprs, attrs)
    parsed = backend.parse_options(dict(options.__dict__))
    key = hashlib.sha256(get_cache_key(src, backend, parsed, get_cache_invalidating_env_vars()).encode()).hexdigest()
    return src, target, options.__dict__, key


def compile_launch(launch: Launch, arch: int) -> dict:
    import triton
    from triton import knobs
    src, target, options, key = _source(launch, arch)
    knobs.nvidia.dump_ptxas_log = True   # Triton prints ptxas's -v report after assembling
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        kernel = triton.compile(src, target=target, options=options)
    seconds = time.perf_counter() - start
    report = log.getvalue()
    found = {name: int(m.group(1)) if (m := pattern.search(report)) else None for name, pattern in _PTXAS.items()}
    if found["registers"] is None:
        raise RuntimeError("no ptxas -v report (was the kernel in Triton's cache?)")
    if kernel.hash != key:
        raise RuntimeError(f"Triton's cache key {kernel.hash} differs from the one computed here {key}")
    return {**found, "shared": kernel.metadata.shared, "num_warps": kernel.metadata.num_warps,
            "num_stages": kernel.metadata.num_stages, "maxnreg": kernel.metadata.maxnreg, "compile_s": round(seconds, 2)}


def problems(record: dict, arch: int) -> list[str]:
    from scob_fast.kernels import targets
    if record.get("error"):
        return [record["error"]]
    found = []
    if record["spill_stores"] or record["spill_loads"]:
        found.append(f"spills {record['spill_stores']} B stores / {record['spill_loads']} B loads")
    limit = targets.SHARED_MEMORY_PER_BLOCK[arch]
    if record["shared"] > limit:
        found.append(f"shared memory {record['shared']} B > {limit} B (sm_{arch} per-block opt-in)")
    # Registers are allocated per warp in units of 256 (8 per thread).
    per_block = -(-record["registers"] // 8) * 8 * 32 * record["num_warps"]
    if per_block > targets.REGISTERS_PER_BLOCK:
        found.append(f"{per_block} registers per block > {targets.REGISTERS_PER_BLOCK}")
    return found


@dataclass
class Job:
    case: Case
    index: int          # which of the case's launches
    kernel: str
    constexprs: dict
    key: str            # Triton's cache key
    reused: dict | None = None
    verify: bool = False


def _constexprs(launch: Launch) -> dict:
    return {p.name: launch.kwargs[p.name] for p in launch.fn.params if p.is_constexpr and p.name in launch.kwargs}


def _compiled_record(case: Case, launch: Launch, key: str) -> dict:
    """The record of one fresh compile (its figures, or the compiler's error), without `problems`."""
    base = {**case.describe(), "kernel": launch.fn.__name__, "constexprs": _constexprs(launch), "triton_key": key}
    try:
        return {**base, **compile_launch(launch, case.target), "source": "compiled"}
    except Exception as exc:  # noqa: BLE001 - any compiler failure is a result to report
        lines = str(exc).strip().splitlines()
        return {**base, "error": f"compile error: {type(exc).__name__}: {lines[0] if lines else ''}"[:400],
                "source": "compiled"}


def _run_job(job: Job) -> dict:
    base = {**job.case.describe(), "kernel": job.kernel, "constexprs": job.constexprs, "triton_key": job.key}
    if job.reused is not None and not job.verify:
        record = {**base, **{k: job.reused[k] for k in (*REPRODUCED, "compile_s")}, "source": "reused"}
    else:
        record = _compiled_record(job.case, launches_of(job.case)[job.index], job.key)
        if job.verify and "error" not in record:
            differs = {k: (job.reused[k], record[k]) for k in REPRODUCED if job.reused[k] != record[k]}
            record["source"] = "verified" if not differs else "compiled"
            if differs:
                record["error"] = f"a fresh compile differs from the reused record: {differs}"
    record["problems"] = problems(record, job.case.target)
    return record


def plan(ops, targets, dtypes, reuse: dict, verify: int) -> list[Job]:
    """Every distinct kernel (several cases launch the same one: label_contrastive's backward does not
    depend on the extra positive), with the reusable records attached."""
    jobs, seen = [], set()
    for case in cases(ops, targets, dtypes):
        for index, launch in enumerate(launches_of(case)):
            key = _source(launch, case.target)[3]
            if key in seen:
                continue
            seen.add(key)
            old = reuse.get(key)
            jobs.append(Job(case, index, launch.fn.__name__, _constexprs(launch), key,
                            old if old is not None and all(k in old for k in (*REPRODUCED, "compile_s"))
                            and not old.get("error") else None))
    # The kernels to recompile: one per (target, kernel function) pair in turn, the pairs ordered so
    # that 8 picks cover the 4 targets and the 6 kernel functions; within a pair, spread over dtypes,
    # widths and options.
    groups = {}
    for job in jobs:
        if job.reused is not None:
            groups.setdefault((job.case.target, job.kernel), []).append(job)
    ts, ks = sorted({t for t, _ in groups}), sorted({k for _, k in groups})
    period = math.lcm(len(ts), len(ks)) if groups else 1
    pairs = [(ts[i % len(ts)], ks[(i + i // period) % len(ks)]) for i in range(len(ts) * len(ks))]
    picked = 0
    for turn in itertools.count():
        unpicked = [[job for job in groups.get(pair, ()) if not job.verify] for pair in pairs]
        if picked >= verify or not any(unpicked):
            break
        for i, candidates in enumerate(unpicked):
            if candidates and picked < verify:
                candidates[(7919 * (turn + i)) % len(candidates)].verify = True
                picked += 1
    return jobs


# ------------------------------------------------------------------------------------------------
# --search: how the _CONFIGS tables of scob_fast/kernels/<op>.py are made. A table cell is (kernel,
# 16-bit or float32 inputs, dropout for masked_attention, target, BLOCK_D); its entry is the first of
# the module's CANDIDATES, each with num_stages 3, 2, 1, for which every kernel the cell launches (both
# 16-bit dtypes, every option combination) compiles without a problem above. A row's cells are searched
# from the narrowest BLOCK_D up; with --prune N, a cell whose BLOCK_D is above N starts from the entry
# of the one before (what failed at a narrower BLOCK_D is not tried). Shared memory only grows with
# BLOCK_D; spills nearly always do, not always (label_contrastive's float32 fwd on sm_80 spills 260 B
# at 64x64w4s1 with BLOCK_D 32, none with 64), so a pruned cell may miss an earlier fitting entry but
# never takes one that does not fit. It keeps masked_attention's float32 BLOCK_D 256 cells (ptxas takes
# minutes on a tile that spills kilobytes) to minutes instead of hours.

SEARCH_STAGES = (3, 2, 1)
_FOUND = {}   # in a search process: Triton cache key -> record (the --reuse files and its own compiles)


def _kernels_of(op: str):
    from scob_fast.kernels import label_contrastive, masked_attention
    return masked_attention if op == "masked_attention" else label_contrastive


def _cell(job: Job) -> tuple:
    op = job.case.op
    return (op, job.kernel[len(f"_{op}_"):-len("_kernel")], "32" if job.case.dtype == "float32" else "16",
            job.case.options[0] if op == "masked_attention" else None, job.case.target, job.constexprs["BLOCK_D"])


def _load_records(paths) -> dict:
    found = {}
    for path in paths or ():
        found.update((r["triton_key"], r) for r in json.loads(Path(path).read_text())["results"] if "triton_key" in r)
    return found


def _init_search(reuse_paths) -> None:
    _FOUND.update(_load_records(reuse_paths))


def _search_row(cells: list, prune_above) -> list:
    """[(cell, its entry or None, the records compiled here)] of one table row; `cells`: (cell, members)
    from the narrowest BLOCK_D up, members the (case, launch index) of every kernel the cell launches,
    the likeliest to fail first."""
    module = _kernels_of(cells[0][0][0])
    entries = [f"{candidate}s{stages}" for candidate, stages in itertools.product(module.CANDIDATES, SEARCH_STAGES)]
    first, found = 0, []
    for cell, members in cells:
        first = first if prune_above is not None and cell[5] > prune_above else 0
        launches = [(case, launches_of(case)[index]) for case, index in members]
        compiled = []
        for first in range(first, len(entries)):
            for case, launch in launches:
                trial = Launch(launch.fn, launch.args, {**launch.kwargs, **module.parse_entry(entries[first])})
                key = _source(trial, case.target)[3]
                if key not in _FOUND:
                    _FOUND[key] = _compiled_record(case, trial, key)
                    compiled.append(_FOUND[key])
                if problems(_FOUND[key], case.target):
                    break
            else:
                found.append((cell, entries[first], compiled))
                break
        else:
            first = len(entries)
            found.append((cell, None, compiled))
    return found


def _table_rows(answers: dict) -> list[str]:
    """_CONFIGS rows, the targets with equal entries grouped ("?": not searched, "NONE": nothing fits)."""
    rows, searched = [], sorted({cell[4] for cell in answers})
    for op in OPS:
        module = _kernels_of(op)
        for kernel, inputs, dropout in itertools.product(module.KERNELS, ("16", "32"),
                                                         (False, True) if op == "masked_attention" else (None,)):
            groups = {}
            for target in searched:
                cells = [(op, kernel, inputs, dropout, target, block_d) for block_d in module.BLOCK_DS]
                if any(cell in answers for cell in cells):
                    entries = tuple(answers.get(cell, "?") or "NONE" for cell in cells)
                    groups.setdefault(entries, []).append(target)
            for entries, group in groups.items():
                name = ", ".join(repr(x) for x in (kernel, inputs) + ((dropout,) if dropout is not None else ()))
                rows.append(f"    ({name}, {tuple(group)}): ({', '.join(repr(e) for e in entries)}),")
    return rows


def search(args) -> int:
    start = time.perf_counter()
    cells = {}
    for job in plan(args.ops, args.targets, args.dtypes, {}, 0):
        cells.setdefault(_cell(job), []).append(job)
    rows = {}
    for cell in sorted(cells, key=lambda c: c[5]):
        # In a cell, the most options first (the likeliest to fail).
        jobs = sorted(cells[cell], key=lambda j: (-sum(j.case.options), j.case.dtype))
        members = [(job.case, job.index) for job in jobs]
        rows.setdefault(cell[:5], []).append((cell, members))
    # float32 rows first: the longest.
    tasks = [rows[row] for row in sorted(rows, key=lambda r: (r[2] != "32", r))]
    print(f"aot_compile_check --search: {len(cells)} table cells in {len(tasks)} rows, {args.jobs} process(es)",
          flush=True)
    answers, records = {}, []

    def save():
        lines = ",\n".join(json.dumps(r, sort_keys=True) for r in records)
        Path(args.out).write_text(f'{{"check": "aot_search", "results": [\n{lines}\n]}}\n')

    with tempfile.TemporaryDirectory(prefix="scob_fast_aot_") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_search,
                                 initargs=(args.reuse,)) as pool:
            for future in as_completed([pool.submit(_search_row, task, args.prune) for task in tasks]):
                for cell, entry, compiled in future.result():
                    answers[cell] = entry
                    records += [{**r, "problems": problems(r, cell[4])} for r in compiled]
                    print(f"  sm_{cell[4]} {cell[1]} {cell[2]}-bit dropout={cell[3]} BLOCK_D={cell[5]}: "
                          f"{entry or 'NONE'} ({len(compiled)} compiled)", flush=True)
                save()
    print("\n".join(_table_rows(answers)))
    missing = [c for c, e in answers.items() if e is None]
    print(f"aot_compile_check --search: {len(answers)} cells in {time.perf_counter() - start:.0f} s, "
          f"{len(records)} kernels compiled (in {args.out}), {len(missing)} cells with no fitting candidate")
    return 1 if missing else 0


# ------------------------------------------------------------------------------------------------

def backend_missing() -> str | None:
    """None when Triton's CUDA backend and its ptxas are usable here, else why not."""
    try:
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        make_backend(GPUTarget("cuda", 90, 32))
        ptxas = knobs.nvidia.ptxas.path
    except Exception as exc:  # noqa: BLE001
        return f"Triton's CUDA backend does not load: {type(exc).__name__}: {exc}"
    if not ptxas or not os.access(ptxas, os.X_OK):
        return f"Triton's ptxas is missing ({ptxas})"
    return None


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="80,86,89,90", help="comma-separated compute capabilities")
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset of " + ",".join(DTYPES))
    parser.add_argument("--jobs", type=int, default=2, help="compiler processes (default 2)")
    parser.add_argument("--reuse", action="append", default=[],
                        help="a previous --out (repeatable): take its records of unchanged kernels")
    parser.add_argument("--verify", type=int, default=0, help="with --reuse: recompile this many reused kernels")
    parser.add_argument("--limit", type=int, default=None, help="only the first N kernels (smoke runs)")
    parser.add_argument("--brief", action="store_true", help="table rows only for compiled or failed kernels")
    parser.add_argument("--search", action="store_true",
                        help="instead of checking the tables, search each cell's first fitting candidate and print "
                             "the _CONFIGS rows (needs --out: where its compile records go, for --reuse)")
    parser.add_argument("--prune", type=int, default=None, metavar="BLOCK_D",
                        help="with --search: cells whose BLOCK_D is above this start at the entry of the same "
                             "row's next narrower BLOCK_D (much faster; may miss an earlier fitting entry)")
    parser.add_argument("--out", default=None, help="the record to write (default bench/results/aot_compile.json)")
    args = parser.parse_args(argv)
    from scob_fast.kernels import targets
    try:
        args.targets = [int(t) for t in args.targets.split(",")]
    except ValueError:
        parser.error(f"--targets: expected comma-separated integers such as 80,90, got {args.targets!r}")
    if set(args.targets) - set(targets.TARGETS):
        parser.error(f"--targets: {sorted(set(args.targets) - set(targets.TARGETS))} not among {list(targets.TARGETS)}")
    for name, allowed in (("ops", OPS), ("dtypes", DTYPES)):
        values = getattr(args, name).split(",")
        if set(values) - set(allowed):
            parser.error(f"--{name}: {sorted(set(values) - set(allowed))} not among {list(allowed)}")
        setattr(args, name, values)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.verify and not args.reuse:
        parser.error("--verify needs --reuse")
    for path in args.reuse:
        if not Path(path).is_file():
            parser.error(f"--reuse: {path} does not exist")
    if args.search and (args.out is None or args.verify or args.limit is not None):
        parser.error("--search needs --out FILE (not the committed record) and takes neither --verify nor --limit")
    if args.prune is not None and not args.search:
        parser.error("--prune goes with --search")
    args.out = args.out or str(ROOT / "bench" / "results" / "aot_compile.json")
    return args


COLUMNS = (("target", 6), ("kernel", 31), ("dtype", 8), ("dim", 3), ("flags", 6), ("blocks", 10), ("warps", 5),
           ("stages", 6), ("regs", 4), ("spill", 5), ("smem_kb", 7), ("source", 8), ("status", 6))


def _row(r: dict) -> dict:
    cx = r["constexprs"]
    flags = [n for n in ("dropout", *LC_OPTIONS) if n in r]
    return {"target": r["target"], "kernel": r["kernel"].strip("_").replace("_kernel", ""), "dtype": r["dtype"],
            "dim": r["dim"], "flags": "".join("1" if r[n] else "0" for n in flags),
            "blocks": "x".join(str(cx[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D") if k in cx),
            "warps": r.get("num_warps", ""), "stages": r.get("num_stages", ""), "regs": r.get("registers", ""),
            "spill": (r.get("spill_stores") or 0) + (r.get("spill_loads") or 0) if "registers" in r else "",
            "smem_kb": f"{r['shared'] / 1024:.1f}" if "shared" in r else "", "source": r["source"],
            "status": "ok" if not r["problems"] else "FAIL: " + "; ".join(r["problems"])}


def _ptxas_version(path: str) -> str:
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    match = re.search(r"release ([\d.]+), (V[\d.]+)", text)
    return f"{match.group(1)} ({match.group(2)})" if match else text.strip().splitlines()[-1]


def main(argv=None) -> int:
    args = _parse_args(argv)
    missing = backend_missing()
    if missing:
        print(f"aot_compile_check: {missing}; nothing checked")
        return 2
    if args.search:
        return search(args)
    import triton
    from triton import knobs
    start = time.perf_counter()
    reuse = _load_records(args.reuse)
    jobs = plan(args.ops, args.targets, args.dtypes, reuse, args.verify)[:args.limit]
    to_compile = sum(job.reused is None or job.verify for job in jobs)
    print(f"aot_compile_check: {len(jobs)} kernels ({to_compile} to compile, {len(jobs) - to_compile} reused), "
          f"targets {args.targets}, {args.jobs} process(es), triton {triton.__version__}, "
          f"ptxas {_ptxas_version(knobs.nvidia.ptxas.path)}", flush=True)
    print("  ".join(name.ljust(width) for name, width in COLUMNS))
    records = []
    with tempfile.TemporaryDirectory(prefix="scob_fast_aot_") as cache:
        # An empty cache: every kernel is really compiled, so ptxas reports on each.
        os.environ["TRITON_CACHE_DIR"] = cache
        with contextlib.ExitStack() as stack:
            if args.jobs == 1 or to_compile < 2:
                results = map(_run_job, jobs)
            else:
                # spawn: the parent ran torch ops (OpenMP threads), which a fork would inherit half-alive.
                pool = stack.enter_context(ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")))
                results = pool.map(_run_job, jobs, chunksize=2)
            for record in results:   # in job order, as they complete
                records.append(record)
                if not args.brief or record["source"] != "reused" or record["problems"]:
                    row = _row(record)
                    print("  ".join(str(row[name]).ljust(width) for name, width in COLUMNS), flush=True)
    wall = time.perf_counter() - start
    failed = [r for r in records if r["problems"]]
    summary = {"kernels": len(records), "failed": len(failed),
               "compiled": sum(r["source"] != "reused" for r in records), "wall_s": round(wall, 1),
               "compile_s_total": round(sum(r.get("compile_s", 0) for r in records if r["source"] != "reused"), 1),
               "jobs": args.jobs, "targets": [f"sm_{t}" for t in args.targets], "dtypes": args.dtypes,
               "ops": args.ops, "complete": args.limit is None and len(args.targets) == 4 and len(args.dtypes) == 3
               and len(args.ops) == 2, "triton": triton.__version__,
               "ptxas": _ptxas_version(knobs.nvidia.ptxas.path), "python": sys.version.split()[0],
               "command": " ".join(["scripts/aot_compile_check.py", *(sys.argv[1:] if argv is None else argv)])}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # One record per line: a readable diff when a few kernels change.
    lines = ",\n".join(json.dumps(r, sort_keys=True) for r in records)
    out.write_text(f'{{"check": "aot_compile", "summary": {json.dumps(summary)},\n"results": [\n{lines}\n]}}\n')
    print(f"aot_compile_check: {len(records)} kernels ({summary['compiled']} compiled) in {wall:.0f} s, "
          f"{len(failed)} failed; wrote {out}")
    stale = sum(job.reused is None for job in jobs)
    if args.reuse and stale:
        # Triton's key covers each kernel's source text and first line, and those of the jit functions
        # it calls: a comment edited in a kernel, or lines added above one, makes it a new kernel.
        print(f"aot_compile_check: {stale} kernels are not in {', '.join(args.reuse)} (new or changed since): "
              f"compiled here; refresh the committed record with: .venv/bin/python scripts/aot_compile_check.py "
              f"--reuse bench/results/aot_compile.json")
    for r in failed:
        print(f"FAILED {r['target']} {r['kernel']} {r['dtype']} dim={r['dim']} {r['constexprs']}: "
              + "; ".join(r["problems"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
