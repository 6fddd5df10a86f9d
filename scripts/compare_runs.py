"""One figure comparing runs epoch by epoch: validation mAP (summary.csv) and the label estimator's
mAP over its unknown entries against the true training labels (diagnostics.csv, where the run has an
estimator).

    python scripts/compare_runs.py OUT.png RUN_DIR[=LABEL] [RUN_DIR[=LABEL] ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scob_fast.reporting.plots import _figure, _number, _save, read_summary  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="PNG file to write")
    parser.add_argument("runs", nargs="+", help="run directories, each optionally =LABEL")
    args = parser.parse_args(argv)
    figure = _figure(11.0, 4.2)
    val_axes, est_axes = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for number, item in enumerate(args.runs):
        colour = f"C{number % 10}"  # the same run has the same colour in both panels
        path, _, label = item.partition("=")
        run = Path(path)
        label = label or run.name
        summary = run / "summary.csv"
        if not summary.is_file():
            parser.error(f"{run}: no summary.csv (not a run directory?)")
        rows = read_summary(summary)
        val_axes.plot([int(r["epoch"]) for r in rows], [100 * _number(r.get("val_mAP")) for r in rows],
                      marker=".", label=label, color=colour)
        diagnostics = run / "diagnostics.csv"
        if diagnostics.is_file():
            rows = read_summary(diagnostics)
            if rows and "estimator_mAP_unknown" in rows[0]:
                est_axes.plot([int(r["epoch"]) for r in rows], [_number(r["estimator_mAP_unknown"]) for r in rows],
                              marker=".", label=label, color=colour)
    for axes, title in ((val_axes, "validation mAP %"), (est_axes, "estimator mAP % on its unknown entries")):
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.subplots_adjust(wspace=0.2)
    _save(figure, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
