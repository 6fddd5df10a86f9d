"""Render bench/results/*.json as the markdown tables quoted in the README.

    python bench/report.py [masked_attention label_contrastive pipeline train_step]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

COLUMNS = {
    "masked_attention": ["B", "L", "keep", "pass", "backend", "median_ms", "peak_mem_mb", "speedup", "vs_sdpa"],
    "label_contrastive": ["n", "d", "pass", "backend", "median_ms", "peak_mem_mb", "speedup"],
    "pipeline": ["workers", "backend", "median_ms", "images_per_s", "peak_mem_mb", "speedup"],
    "train_step": ["engine", "amp", "image_size", "batch_size", "images_per_s", "speedup", "vs_sdpa_procedure"],
}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def attention_pivot(data: dict) -> str:
    """One line per (B, L, keep, pass): every backend's median and the C++ kernel's ratios."""
    groups: dict = {}
    for r in data["results"]:
        groups.setdefault((r["B"], r["L"], r["keep"], r["pass"]), {})[r["backend"]] = r
    lines = ["| B | L | keep | pass | C++ ms | SDPA+mask ms | gather+SDPA ms | reference ms | C++ vs SDPA | "
             "C++ vs gather | C++ vs reference | peak MB C++ / SDPA / ref |", "|" + "---|" * 12]
    for (b, length, keep, kind), rows in sorted(groups.items()):
        cpp, sdpa, gather, ref = (rows.get(k, {}) for k in ("cpp", "sdpa_mask", "gather_sdpa", "reference"))
        ms = lambda r: r.get("median_ms", float("nan"))  # noqa: E731
        lines.append(f"| {b} | {length} | {keep} | {kind} | {_fmt(ms(cpp))} | {_fmt(ms(sdpa))} | {_fmt(ms(gather))} | "
                     f"{_fmt(ms(ref))} | {_fmt(ms(sdpa) / ms(cpp))}x | {_fmt(ms(gather) / ms(cpp))}x | "
                     f"{_fmt(ms(ref) / ms(cpp))}x | {_fmt(cpp.get('peak_mem_mb', 0))} / "
                     f"{_fmt(sdpa.get('peak_mem_mb', 0))} / {_fmt(ref.get('peak_mem_mb', 0))} |")
    return "\n".join(lines)


def table(name: str) -> str:
    data = json.loads((RESULTS / f"{name}.json").read_text())
    if name == "masked_attention":
        env = data.get("environment", {})
        return attention_pivot(data) + f"\n\n_{name}: {env.get('date', '?')}, {env.get('cpu_count', '?')} CPUs_"
    rows = data["results"]
    columns = [c for c in COLUMNS.get(name, list(rows[0])) if any(c in r for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    env = data.get("environment", {})
    lines.append(f"\n_{name}: {env.get('date', '?')}, {env.get('cpu_count', '?')} CPUs, torch {env.get('torch', '?')}_")
    return "\n".join(lines)


def main() -> None:
    names = sys.argv[1:] or [p.stem for p in sorted(RESULTS.glob("*.json"))]
    for name in names:
        print(f"### {name}\n\n{table(name)}\n")


if __name__ == "__main__":
    main()
