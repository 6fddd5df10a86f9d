"""Reporting options (flags generated from this dataclass)."""
from __future__ import annotations

from dataclasses import dataclass

from scob_fast.cli_options import option

PROGRESS_MODES = ("auto", "bar", "lines", "none")


@dataclass
class ReportOptions:
    tensorboard: bool = option(True, "write TensorBoard event files into <out>/tensorboard (losses per step, "
                               "metrics, learning rates, images/s per epoch); needs the tensorboard package, "
                               "skipped with a note when it is not installed")
    progress: str = option("auto", "training progress on stderr: bar (tqdm), lines (plain lines, for log "
                           "files), none; auto: bar on a terminal, else lines (--quiet: none)",
                           choices=PROGRESS_MODES)
    progress_percent: int = option(10, "lines mode: a line every this many percent of an epoch")
    progress_seconds: float = option(60.0, "lines mode: and at least one line every this many seconds")
    threshold: float = option(0.5, "score threshold of the per-class precision/recall in per_class.csv")
    plots: bool = option(True, "write PNG plots into the run directory at the end (per-class AP, PR curves, "
                         "mAP and losses over epochs)")
    diagnostics: bool = option(True, "write diagnostics.csv each epoch: the label estimator's mAP against the true "
                               "training labels and its drift, CAM keep-mask precision/recall where the dataset "
                               "has object masks (demo-coco), loss-term shares, prototype bank fill/purity")
