"""The kernel benchmarks under pytest-benchmark:

    .venv/bin/python -m pytest bench --benchmark-only                        # quick shapes
    .venv/bin/python -m pytest bench --benchmark-only --bench-shapes full    # the scripts' full grids
    .venv/bin/python -m pytest bench --benchmark-only --benchmark-save=NAME  # then --benchmark-compare

Shapes and peers come from bench/shapes.py, as in bench/masked_attention.py and
bench/label_contrastive.py; each benchmark group is one shape and pass, its rows the op and its
peers. The CI suite (`pytest -q tests`) never collects this folder; a bare `pytest` at the repo root
would, so these benchmarks are skipped unless --benchmark-only (timed) or --benchmark-disable (each
case run once, a smoke test) is given.
"""
from __future__ import annotations

import pytest


def pytest_addoption(parser):
    parser.addoption("--bench-shapes", choices=("quick", "full"), default="quick",
                     help="bench/shapes.py grid for the kernel benchmarks (default quick)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("benchmark_only") or config.getoption("benchmark_disable"):
        return
    skip = pytest.mark.skip(reason="kernel benchmarks: run with `pytest bench --benchmark-only`")
    for item in items:
        if "benchmark" in getattr(item, "fixturenames", ()):
            item.add_marker(skip)
