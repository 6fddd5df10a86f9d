"""Render bench/results/*.json as the markdown tables quoted in the README.

    python bench/report.py [attention contrastive pipeline train_step]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

COLUMNS = {
    "attention": ["B", "L", "keep", "pass", "backend", "median_ms", "peak_mem_mb", "speedup", "vs_sdpa"],
    "contrastive": ["N", "D", "pass", "backend", "median_ms", "peak_mem_mb", "speedup"],
    "pipeline": ["workers", "backend", "median_ms", "images_per_s", "peak_mem_mb", "speedup"],
    "train_step": ["engine", "amp", "image_size", "batch_size", "images_per_s", "speedup", "vs_sdpa_procedure"],
}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def table(name: str) -> str:
    data = json.loads((RESULTS / f"{name}.json").read_text())
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
