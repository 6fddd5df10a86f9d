"""Render bench/results/*.json as the markdown tables quoted in the README, and one table of every
ratio against its goal (the "no path slower than its peer" issue).

    python bench/report.py                      # every results file, then the goals table
    python bench/report.py masked_attention     # chosen files (names under bench/results/), then the goals
    python bench/report.py goals                # the goals table only

A benchmark's --quick run writes NAME_quick.json (bench/masked_attention.py, bench/label_contrastive.py).

Goals (ratio = peer time / our time, so > 1 is faster; the op "as called" is the `auto` row, or the
C++ row of results measured before that row existed):
  masked attention forward-only, keep 1.0      >= 1.0x SDPA + mask   every benchmarked (B, L)
  masked attention fwd+bwd, keep 0.3, L = 784  >= 3.3x SDPA + mask
  label contrastive, both passes               >= 1.0x the dense reference, every benchmarked (N, D)
  train step, fast engine, 128 px              >= 3x the reference procedure
  DALI pipeline                                >= 1.5x the PIL DataLoader
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

COLUMNS = {
    "masked_attention": ["B", "L", "keep", "pass", "backend", "ran", "median_ms", "peak_mem_mb", "speedup", "vs_sdpa"],
    "label_contrastive": ["n", "d", "pass", "backend", "ran", "median_ms", "peak_mem_mb", "speedup"],
    "pipeline": ["workers", "backend", "median_ms", "images_per_s", "peak_mem_mb", "speedup"],
    "train_step": ["engine", "amp", "precision", "image_size", "batch_size", "images_per_s", "speedup",
                   "vs_sdpa_procedure"],
}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "" if value is None else str(value)


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def describe(data: dict) -> str:
    """When, where and how a results file was measured (older files lack some of it: '?')."""
    env = data.get("environment", {})
    commit = (env.get("git_commit") or "?")[:10] + ("+dirty" if env.get("git_dirty") else "")
    return (f"{env.get('date', '?')}, commit {commit}, {env.get('cpu_model', '?')} ({env.get('cpu_count', '?')} CPUs, "
            f"{env.get('cpu_capability', '?')}), torch {env.get('torch', '?')}, {env.get('torch_threads', '?')} "
            f"threads (OMP_NUM_THREADS={env.get('omp_num_threads', '?')})")


def attention_pivot(data: dict) -> str:
    """One line per (B, L, keep, pass): every method's median and the op's ratios."""
    groups: dict = {}
    for r in data["results"]:
        groups.setdefault((r["B"], r["L"], r["keep"], r["pass"]), {})[r["backend"]] = r
    lines = ["| B | L | keep | pass | auto ms (ran) | C++ ms | SDPA+mask ms | gather+SDPA ms | reference ms | "
             "auto vs SDPA | C++ vs SDPA | C++ vs gather | C++ vs reference | peak MB C++ / SDPA / ref |",
             "|" + "---|" * 14]
    nan = float("nan")
    for (b, length, keep, kind), rows in sorted(groups.items()):
        auto, cpp, sdpa, gather, ref = (rows.get(k, {}) for k in ("auto", "cpp", "sdpa_mask", "gather_sdpa",
                                                                    "reference"))
        ms = lambda r: r.get("median_ms", nan)  # noqa: E731
        lines.append(f"| {b} | {length} | {keep} | {kind} | {_fmt(ms(auto))} ({auto.get('ran', '-')}) | "
                     f"{_fmt(ms(cpp))} | {_fmt(ms(sdpa))} | {_fmt(ms(gather))} | {_fmt(ms(ref))} | "
                     f"{_fmt(ms(sdpa) / ms(auto))}x | {_fmt(ms(sdpa) / ms(cpp))}x | {_fmt(ms(gather) / ms(cpp))}x | "
                     f"{_fmt(ms(ref) / ms(cpp))}x | {_fmt(cpp.get('peak_mem_mb', 0))} / "
                     f"{_fmt(sdpa.get('peak_mem_mb', 0))} / {_fmt(ref.get('peak_mem_mb', 0))} |")
    return "\n".join(lines)


def table(name: str) -> str:
    data = load(name)
    if data is None:
        raise SystemExit(f"bench/report.py: no bench/results/{name}.json (run the benchmark first)")
    if data.get("benchmark") == "masked_attention":
        return attention_pivot(data) + f"\n\n_{name}: {describe(data)}_"
    rows = data["results"]
    kind = data.get("benchmark", name)
    columns = [c for c in COLUMNS.get(kind, list(rows[0])) if any(c in r for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    lines.append(f"\n_{name}: {describe(data)}_")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Goals

def _op_rows(rows: list[dict]) -> list[dict]:
    """The op as called: its `auto` rows where measured, else (older files) its C++ rows."""
    auto = [r for r in rows if r["backend"] == "auto"]
    return auto or [r for r in rows if r["backend"] == "cpp"]


def goal_rows() -> list[dict]:
    """One row per measured case of every goal: goal, case, ratio, target, met, file, environment.
    A benchmark's full results (NAME.json) and its --quick results (NAME_quick.json) both count; where
    both measured a case, the newer one does."""
    found: dict = {}

    def add(goal, case, ratio, target, name, data, ran=None):
        env = data.get("environment", {})
        row = {"goal": goal, "case": case, "ran": ran, "ratio": ratio, "target": target,
               "met": None if ratio is None else ratio >= target, "file": name, "source": env}
        key = (goal, case)
        if key not in found or env.get("date", "") > found[key]["source"].get("date", ""):
            found[key] = row

    for name in ("masked_attention", "masked_attention_quick"):
        attention = load(name)
        if not attention:
            continue
        rows = _op_rows(attention["results"])
        for r in sorted((r for r in rows if r["pass"] == "fwd" and r["keep"] == 1.0), key=lambda r: (r["B"], r["L"])):
            add("masked attention fwd-only, keep 1.0 vs SDPA+mask", f"B={r['B']} L={r['L']}", r.get("vs_sdpa"), 1.0,
                name, attention, r.get("ran", r["backend"]))
        for r in (r for r in rows if r["pass"] == "fwd+bwd" and r["keep"] == 0.3 and r["L"] == 784):
            add("masked attention fwd+bwd, keep 0.3, L=784 vs SDPA+mask", f"B={r['B']}", r.get("vs_sdpa"), 3.3,
                name, attention, r.get("ran", r["backend"]))
    for name in ("label_contrastive", "label_contrastive_quick"):
        contrastive = load(name)
        if not contrastive:
            continue
        for r in sorted(_op_rows(contrastive["results"]), key=lambda r: (r["d"], r["n"], r["pass"])):
            add("label contrastive vs dense reference", f"N={r['n']} D={r['d']} {r['pass']}", r.get("speedup"), 1.0,
                name, contrastive, r.get("ran", r["backend"]))
    dropout = load("hash_dropout")
    if dropout:
        for r in dropout["results"]:
            if r.get("backend") == "auto":
                add("hash dropout vs torch dropout", f"{r['shape']} {r['pass']}", r.get("speedup"), 1.0,
                    "hash_dropout", dropout, r.get("ran"))
    train = load("train_step")
    if train:
        for r in train["results"]:
            if r.get("engine") == "fast" and r.get("image_size") == 128:
                precision = r.get("precision", "bfloat16" if r.get("amp") else "float32")
                add("train step fast vs reference, 128 px", f"--amp {r.get('amp')} ({precision})", r.get("speedup"),
                    3.0, "train_step", train)
    pipeline = load("pipeline")
    if pipeline:
        for r in pipeline["results"]:
            if r.get("backend") == "dali":
                add("DALI vs PIL DataLoader", f"{r.get('workers')} worker(s)", r.get("speedup"), 1.5, "pipeline",
                    pipeline)
    return list(found.values())


def goals_table() -> str:
    rows = goal_rows()
    if not rows:
        return "no results in bench/results/"
    lines = ["| goal | case | ran | ratio | target | met | results file (date, threads, commit) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        env = r["source"]
        source = (f"{r['file']} ({env.get('date', '?')[:10]}, {env.get('torch_threads', '?')} thr, "
                  f"{(env.get('git_commit') or '?')[:8]})")
        met = "?" if r["met"] is None else ("yes" if r["met"] else "**no**")
        ratio = "?" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"| {r['goal']} | {r['case']} | {r['ran'] or ''} | {ratio} | >= {r['target']}x | {met} | "
                     f"{source} |")
    met = sum(1 for r in rows if r["met"])
    lines.append(f"\n_{met} of {len(rows)} cases meet their goal_")
    return "\n".join(lines)


def main() -> None:
    names = sys.argv[1:] or [p.stem for p in sorted(RESULTS.glob("*.json"))]
    for name in names:
        if name != "goals":
            print(f"### {name}\n\n{table(name)}\n")
    print(f"### goals\n\n{goals_table()}")


if __name__ == "__main__":
    main()
