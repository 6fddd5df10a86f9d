"""python -m scob_fast.reporting RUN_DIR [--threshold T]: rewrite per_class.csv and the PNG plots of a
run from its summary.csv and scores_{val,test}.npz."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .results import write_per_class, write_plots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scob_fast.reporting", description=__doc__)
    parser.add_argument("run", help="run directory (train.py --out)")
    parser.add_argument("--threshold", type=float, default=0.5, help="precision/recall threshold (default 0.5)")
    parser.add_argument("--no-plots", action="store_true", help="only per_class.csv")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not (run / "summary.csv").exists() and not any(run.glob("scores_*.npz")):
        parser.error(f"{run}: no summary.csv or scores_*.npz (is it a run directory?)")
    written = [write_per_class(run, args.threshold)]
    if not args.no_plots:
        written += write_plots(run, args.threshold)
    for path in written:
        if path is not None:
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
